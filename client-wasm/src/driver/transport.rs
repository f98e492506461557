//! The transport side of the driver: the JS callbacks (socket events, timer) that feed the
//! session, and the session's actions carried out on the WebSocket and the timer.

use std::cell::RefCell;
use std::rc::Weak;
use std::time::Duration;

use redistribute_protocol::lite::{decode_server, encode_client};
use redistribute_protocol::session::{Action, DisconnectReason};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BroadcastChannel, CloseEvent, MessageEvent, WebSocket};

use super::token::Then;
use super::{now, post, Driver, Handlers, Inner};
use crate::browser::{clear_timeout, set_timeout};

/// Where the session's frames go: a WebSocket to the server, or the tabs' BroadcastChannel to
/// the leader tab (see `sharing`).
pub(super) enum Link {
    /// The current socket, if any.
    Ws(Option<WebSocket>),
    /// A virtual connection to the leader tab.
    Bus(Bus),
}

/// The follower side of a virtual connection over the tabs' BroadcastChannel.
pub(super) struct Bus {
    pub(super) ch: BroadcastChannel,
    /// This client's id on the bus.
    pub(super) tab: String,
    /// 0: no connection, 1: `hello` sent, waiting for `open`, 2: open.
    pub(super) state: u8,
    /// The id of the last leader heard of.
    pub(super) leader: String,
    /// Whether this tab holds its own lock yet (the leader watches it only then: a watch
    /// requested before the tab's own request would be granted as if the tab were gone).
    pub(super) locked: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Bus {
    /// Asks the leader for a virtual connection.
    pub(super) fn hello(&self) {
        let fields = [
            ("from", self.tab.as_str().into()),
            ("locked", self.locked.get().into()),
        ];
        post(&self.ch, "hello", None, &fields);
    }
}

impl Handlers {
    pub(super) fn new(weak: Weak<RefCell<Inner>>) -> Handlers {
        // Runs `input` on the state if the event comes from the current socket, then pumps.
        fn on_socket(
            weak: Weak<RefCell<Inner>>,
            input: impl Fn(&mut Inner, &web_sys::Event) + 'static,
        ) -> Closure<dyn FnMut(web_sys::Event)> {
            Closure::new(move |event: web_sys::Event| {
                let Some(rc) = weak.upgrade() else { return };
                {
                    let mut inner = rc.borrow_mut();
                    let from_current = match (inner.ws(), event.target()) {
                        (Some(ws), Some(target)) => {
                            &JsValue::from(target) == AsRef::<JsValue>::as_ref(ws)
                        }
                        _ => false,
                    };
                    if !from_current {
                        return;
                    }
                    input(&mut inner, &event);
                }
                Driver(rc).pump();
            })
        }
        let timer_weak = weak.clone();
        let bus_weak = weak.clone();
        let retry_weak = weak.clone();
        let wake_weak = weak.clone();
        Handlers {
            wake: Closure::new(move |event: web_sys::Event| {
                let Some(rc) = wake_weak.upgrade() else {
                    return;
                };
                // `online` always; `visibilitychange` only when the page became visible.
                if event.type_() != "online" && crate::browser::page_hidden() {
                    return;
                }
                {
                    let mut inner = rc.borrow_mut();
                    if !inner.started {
                        return;
                    }
                    // Only shortens a backoff wait: never a second connection.
                    inner.session.retry_now(now());
                }
                Driver(rc).pump();
            }),
            bus: Closure::new(move |event: MessageEvent| {
                let Some(rc) = bus_weak.upgrade() else { return };
                rc.borrow_mut().on_bus(&event.data());
                Driver(rc).pump();
            }),
            retry: Closure::new(move || {
                let Some(rc) = retry_weak.upgrade() else {
                    return;
                };
                {
                    let mut inner = rc.borrow_mut();
                    inner.retry_armed = false;
                    inner.flush_outbox();
                }
                Driver(rc).pump();
            }),
            open: on_socket(weak.clone(), |inner, _: &web_sys::Event| {
                inner.session.handle_transport_open(now());
            }),
            message: on_socket(weak.clone(), |inner, event| {
                // Text frames only; the server sends nothing else. Text that does not decode is
                // never skipped: the session ends its channel's subscription (or the
                // connection) and says so.
                let event: &MessageEvent = event.unchecked_ref();
                match event.data().as_string() {
                    Some(text) => inner.session.handle_text_with(&text, now(), decode_server),
                    None => inner
                        .session
                        .handle_bad_frame("a binary frame from the server", now()),
                }
            }),
            close: on_socket(weak, |inner, event| {
                let event: &CloseEvent = event.unchecked_ref();
                inner.detach_socket();
                let code = (event.code() != 0).then_some(event.code());
                let reason = match event.reason() {
                    r if r.is_empty() => "connection closed".to_owned(),
                    r => r,
                };
                let reason = DisconnectReason::transport(code, reason);
                inner.session.handle_transport_closed(now(), reason);
            }),
            timer: Closure::new(move || {
                let Some(rc) = timer_weak.upgrade() else {
                    return;
                };
                {
                    let mut inner = rc.borrow_mut();
                    inner.timer = None;
                    let t = now();
                    if !inner.started {
                        inner.started = true;
                        inner.session.connect(t);
                    }
                    inner.session.handle_timeout(t);
                }
                Driver(rc).pump();
            }),
        }
    }
}

impl Inner {
    /// Drains the session's actions, frames and events until it has nothing more to say, then
    /// re-arms the timer.
    pub(super) fn drive(&mut self) {
        loop {
            let mut busy = false;
            while let Some(action) = self.session.poll_action() {
                busy = true;
                match action {
                    Action::Connect { target } => match &mut self.link {
                        Link::Ws(_) => {
                            if !self.fetch_token(Then::Open(target.clone())) {
                                self.open_socket(&target);
                            }
                        }
                        Link::Bus(bus) => {
                            bus.state = 1;
                            bus.hello();
                        }
                    },
                    Action::Close => {
                        if let Some(tokens) = self.tokens.as_mut() {
                            tokens.cancel();
                        }
                        self.close_socket();
                    }
                    Action::RefreshToken => {
                        self.fetch_token(Then::Refresh);
                    }
                }
            }
            while let Some(frame) = self.session.poll_transmit() {
                busy = true;
                match &self.link {
                    // A failed send means the socket is closing: its close event follows.
                    Link::Ws(Some(ws)) => drop(ws.send_with_str(&encode_client(&frame))),
                    Link::Bus(bus) if bus.state == 2 => {
                        let text = JsValue::from(encode_client(&frame));
                        post(
                            &bus.ch,
                            "c",
                            None,
                            &[("from", bus.tab.as_str().into()), ("d", text)],
                        );
                    }
                    _ => {}
                }
            }
            while let Some(event) = self.session.poll_event() {
                busy = true;
                self.on_event(event);
            }
            if !busy {
                break;
            }
        }
        self.arm_timer();
    }

    pub(super) fn open_socket(&mut self, target: &str) {
        self.close_socket();
        match WebSocket::new(target) {
            Ok(ws) => {
                if let Some(h) = &self.handlers {
                    ws.set_onopen(Some(h.open.as_ref().unchecked_ref()));
                    ws.set_onmessage(Some(h.message.as_ref().unchecked_ref()));
                    ws.set_onclose(Some(h.close.as_ref().unchecked_ref()));
                }
                self.link = Link::Ws(Some(ws));
            }
            Err(e) => {
                let reason = DisconnectReason::transport(None, format!("{e:?}"));
                self.session.handle_transport_closed(now(), reason);
            }
        }
    }

    /// The current socket.
    fn ws(&self) -> Option<&WebSocket> {
        match &self.link {
            Link::Ws(ws) => ws.as_ref(),
            Link::Bus(_) => None,
        }
    }

    /// Forgets the current socket without closing it (it is closed already).
    fn detach_socket(&mut self) {
        let ws = match &mut self.link {
            Link::Ws(ws) => ws.take(),
            Link::Bus(_) => None,
        };
        if let Some(ws) = ws {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
        }
    }

    /// Closes the current socket (or virtual connection); nothing more is heard from it.
    pub(super) fn close_socket(&mut self) {
        if let Link::Bus(bus) = &mut self.link {
            if bus.state != 0 {
                bus.state = 0;
                post(&bus.ch, "bye", None, &[("from", bus.tab.as_str().into())]);
            }
            return;
        }
        if let Some(ws) = self.ws().cloned() {
            self.detach_socket();
            let _ = ws.close();
        }
    }

    /// Arms the timer for the session's next deadline (at once before the start).
    pub(super) fn arm_timer(&mut self) {
        let next = if self.started || self.session.is_closed() {
            self.session.poll_timeout()
        } else {
            Some(Duration::ZERO)
        };
        if self.timer.as_ref().map(|t| t.1) == next {
            return;
        }
        if let Some((id, _)) = self.timer.take() {
            clear_timeout(&id);
        }
        let (Some(at), Some(h)) = (next, &self.handlers) else {
            return;
        };
        let ms = (at.saturating_sub(now()).as_secs_f64() * 1000.0).ceil();
        let id = set_timeout(
            h.timer.as_ref().unchecked_ref(),
            ms.min(i32::MAX as f64) as i32,
        );
        self.timer = Some((id, at));
    }
}

impl Drop for Inner {
    /// A client the page dropped without `close()`: stop the timer and the socket so no
    /// callback outlives the state.
    fn drop(&mut self) {
        if let Some((id, _)) = self.timer.take() {
            clear_timeout(&id);
        }
        if let Some(handlers) = &self.handlers {
            crate::browser::watch_lifecycle(handlers.wake.as_ref().unchecked_ref(), false);
        }
        self.close_socket();
        if let Link::Bus(bus) = &self.link {
            bus.ch.set_onmessage(None);
            bus.ch.close();
        }
    }
}
