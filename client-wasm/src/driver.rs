//! The browser driver: one WebSocket, one timer and the event dispatch around the protocol
//! crate's sans-IO [`Session`].
//!
//! Every input (socket opened, frame, socket closed, timer) goes into the session with
//! `performance.now()`, then [`Driver::pump`] carries out the session's actions (open or close a
//! socket), sends its frames, turns its events into promise settlements, cache writes and
//! page events, and re-arms the timer from `poll_timeout`. No protocol decision is made here.
//!
//! Re-entrancy: page code (listeners, `decode`) may call back into the client, so it never
//! runs while the state is borrowed. Events go to a queue that [`Driver::dispatch`] drains with
//! no borrow held; a call made from a listener only adds to the queue, which the outer loop then
//! delivers in order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::Duration;

use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::session::Session;
use redistribute_protocol::session::{Config, DisconnectReason, Event, RequestId, SessionError};
use redistribute_protocol::{decode_server, encode_client, validate_channel};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::bindings::{clear_timeout, performance_now, set_timeout};
use crate::cache::{Cache, CachedMessage};
use crate::errors::{ErrorInfo, SUBSCRIPTION_LOST};
use crate::storage::LocalStorage;

/// The page events, in the order of their listener lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    Connect = 0,
    Disconnect = 1,
    Messages = 2,
    Error = 3,
}

impl Topic {
    /// The topic of an event name given to `on`/`off`.
    pub(crate) fn parse(name: &str) -> Option<Topic> {
        Some(match name {
            "connect" => Topic::Connect,
            "disconnect" => Topic::Disconnect,
            "messages" => Topic::Messages,
            "error" => Topic::Error,
            _ => return None,
        })
    }
}

/// What the page passed to `new Client`, checked.
pub(crate) struct Setup {
    pub(crate) config: Config,
    pub(crate) seed: u64,
    pub(crate) cache: Option<Cache<LocalStorage>>,
    /// A problem met while opening the cache, reported once listeners can hear it.
    pub(crate) cache_problem: Option<ErrorInfo>,
    pub(crate) encode: Option<Function>,
    pub(crate) decode: Option<Function>,
}

/// How a request's success is shown to the page.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// `{channel, offset, truncated}`.
    Subscribe,
    /// `true`.
    Done,
    /// The offset string.
    Publish,
}

/// A promise waiting for its request's outcome.
struct Waiter {
    resolve: Function,
    reject: Function,
    reply: Reply,
}

/// Something to hand to page code once no borrow is held.
enum Out {
    /// Call a topic's listeners with these arguments.
    Emit(Topic, Vec<JsValue>),
    /// Decode and deliver messages of a channel.
    Messages(String, Vec<CachedMessage>),
}

/// The JS callbacks, created once per client. They hold a weak reference, so a client the
/// page drops is freed (and [`Inner`]'s `Drop` detaches them).
struct Handlers {
    open: Closure<dyn FnMut(web_sys::Event)>,
    message: Closure<dyn FnMut(web_sys::Event)>,
    close: Closure<dyn FnMut(web_sys::Event)>,
    timer: Closure<dyn FnMut()>,
}

struct Inner {
    session: Session,
    /// Whether `session.connect` ran (it runs from the first timer, so listeners registered
    /// right after `new Client` hear everything).
    started: bool,
    socket: Option<WebSocket>,
    handlers: Option<Handlers>,
    /// The armed `setTimeout` id and the session time it fires for.
    timer: Option<(JsValue, Duration)>,
    /// Promises by request id. A short list (requests settle within the request timeout), so
    /// a `Vec` beats a map in code size.
    waiting: Vec<(u64, Waiter)>,
    listeners: [Vec<Function>; 4],
    cache: Option<Cache<LocalStorage>>,
    encode: Option<Function>,
    decode: Option<Function>,
    queue: VecDeque<Out>,
    dispatching: bool,
}

/// The session time: `performance.now()`, monotonic since the page started.
fn now() -> Duration {
    Duration::from_secs_f64(performance_now().max(0.0) / 1000.0)
}

/// A JS `Error` with `code` (and `channel`, `from`, `to` when known).
pub(crate) fn js_error(info: &ErrorInfo) -> JsValue {
    let err = js_sys::Error::new(&info.message);
    set(&err, "code", &info.code.into());
    if let Some(channel) = &info.channel {
        set(&err, "channel", &channel.into());
    }
    if let Some((from, to)) = info.range {
        set(&err, "from", &from.to_string().into());
        set(&err, "to", &to.to_string().into());
    }
    err.into()
}

/// Sets a property on an object we created (cannot fail).
pub(crate) fn set(target: &JsValue, key: &str, value: &JsValue) {
    let _ = Reflect::set(target, &key.into(), value);
}

/// Calls page code; an exception is surfaced as an unhandled rejection (visible in the
/// console) instead of breaking the client.
fn call(f: &Function, args: &[JsValue]) {
    let result = match args {
        [] => f.call0(&JsValue::UNDEFINED),
        [a] => f.call1(&JsValue::UNDEFINED, a),
        [a, b] => f.call2(&JsValue::UNDEFINED, a, b),
        _ => f.apply(&JsValue::UNDEFINED, &args.iter().collect::<Array>()),
    };
    if let Err(e) = result {
        let _ = Promise::reject(&e);
    }
}

/// Handle to the shared state; cloning it is cheap.
#[derive(Clone)]
pub(crate) struct Driver(Rc<RefCell<Inner>>);

impl Driver {
    /// A client that starts connecting on the next turn of the event loop.
    pub(crate) fn new(setup: Setup) -> Result<Driver, ErrorInfo> {
        let session = Session::new(setup.config, setup.seed).map_err(|e| ErrorInfo::session(&e))?;
        let mut queue = VecDeque::new();
        if let Some(problem) = setup.cache_problem {
            queue.push_back(Out::Emit(Topic::Error, vec![js_error(&problem)]));
        }
        let driver = Driver(Rc::new(RefCell::new(Inner {
            session,
            started: false,
            socket: None,
            handlers: None,
            timer: None,
            waiting: Vec::new(),
            listeners: Default::default(),
            cache: setup.cache,
            encode: setup.encode,
            decode: setup.decode,
            queue,
            dispatching: false,
        })));
        let handlers = Handlers::new(Rc::downgrade(&driver.0));
        let mut inner = driver.0.borrow_mut();
        inner.handlers = Some(handlers);
        inner.arm_timer();
        drop(inner);
        Ok(driver)
    }

    /// Adds a listener.
    pub(crate) fn on(&self, topic: Topic, listener: Function) {
        self.0.borrow_mut().listeners[topic as usize].push(listener);
    }

    /// Removes a listener added with [`Driver::on`].
    pub(crate) fn off(&self, topic: Topic, listener: &Function) {
        let mut inner = self.0.borrow_mut();
        let list = &mut inner.listeners[topic as usize];
        if let Some(i) = list.iter().position(|l| l == listener) {
            list.remove(i);
        }
    }

    /// Whether a connection is ready.
    pub(crate) fn is_connected(&self) -> bool {
        self.0.borrow().session.is_connected()
    }

    /// The page's `encode`, if any.
    pub(crate) fn encoder(&self) -> Option<Function> {
        self.0.borrow().encode.clone()
    }

    /// The cached messages and resume offset of a channel, as `{messages, lastOffset}`.
    pub(crate) fn load(&self, channel: &str) -> Result<JsValue, ErrorInfo> {
        validate_channel(channel).map_err(|e| ErrorInfo::session(&SessionError::Invalid(e)))?;
        let loaded = {
            let mut inner = self.0.borrow_mut();
            let result = inner.cache.as_ref().map(|c| c.load(channel));
            match result {
                None => Default::default(),
                Some(Ok(loaded)) => loaded,
                Some(Err(e)) => {
                    inner.emit(Topic::Error, vec![js_error(&ErrorInfo::cache(&e))]);
                    Default::default()
                }
            }
        };
        let messages = self.js_messages(channel, &loaded.messages);
        self.dispatch();
        let out: JsValue = Object::new().into();
        set(&out, "messages", &messages);
        let last = loaded.last_offset.map(|o| JsValue::from(o.to_string()));
        set(&out, "lastOffset", &last.unwrap_or(JsValue::UNDEFINED));
        Ok(out)
    }

    /// Subscribes; the promise settles with the server's reply.
    pub(crate) fn subscribe(
        &self,
        channel: String,
        offset: redistribute_protocol::Offset,
    ) -> Promise {
        self.request(Reply::Subscribe, |s| s.subscribe(channel, offset))
    }

    /// Unsubscribes; resolves `true`.
    pub(crate) fn unsubscribe(&self, channel: String) -> Promise {
        self.request(Reply::Done, |s| s.unsubscribe(channel))
    }

    /// Publishes; resolves with the stored offset.
    pub(crate) fn publish(
        &self,
        channel: String,
        fields: redistribute_protocol::Fields,
        options: redistribute_protocol::session::PublishOptions,
    ) -> Promise {
        self.request(Reply::Publish, |s| s.publish(channel, fields, options))
    }

    /// Closes the client: pending promises reject with `closed`, the socket closes, no
    /// reconnect follows.
    pub(crate) fn close(&self) {
        self.0.borrow_mut().session.close();
        self.pump();
    }

    /// Runs a session command and returns a promise for its outcome.
    fn request(
        &self,
        reply: Reply,
        command: impl FnOnce(&mut Session) -> Result<RequestId, SessionError>,
    ) -> Promise {
        let mut slots = None;
        let promise = Promise::new(&mut |resolve, reject| slots = Some((resolve, reject)));
        let (resolve, reject) = slots.expect("the executor runs synchronously");
        let result = {
            let mut inner = self.0.borrow_mut();
            let result = command(&mut inner.session);
            if let Ok(id) = result {
                let waiter = Waiter {
                    resolve,
                    reject: reject.clone(),
                    reply,
                };
                inner.waiting.push((id.get(), waiter));
            }
            result
        };
        match result {
            Ok(_) => self.pump(),
            Err(e) => call(&reject, &[js_error(&ErrorInfo::session(&e))]),
        }
        promise
    }

    /// Carries out what the session asks for, then delivers the page events.
    fn pump(&self) {
        self.0.borrow_mut().drive();
        self.dispatch();
    }

    /// Delivers queued events to page code, with no borrow held while it runs.
    fn dispatch(&self) {
        {
            let mut inner = self.0.borrow_mut();
            if inner.dispatching {
                return; // the outer loop delivers what was queued
            }
            inner.dispatching = true;
        }
        loop {
            let (out, listeners) = {
                let mut inner = self.0.borrow_mut();
                let Some(out) = inner.queue.pop_front() else {
                    inner.dispatching = false;
                    return;
                };
                let topic = match &out {
                    Out::Emit(topic, _) => *topic,
                    Out::Messages(..) => Topic::Messages,
                };
                let listeners = inner.listeners[topic as usize].clone();
                (out, listeners)
            };
            let args = match out {
                Out::Emit(_, args) => args,
                Out::Messages(channel, messages) => {
                    let js = self.js_messages(&channel, &messages);
                    if js.length() == 0 {
                        continue;
                    }
                    vec![channel.into(), js.into()]
                }
            };
            for listener in &listeners {
                call(listener, &args);
            }
        }
    }

    /// `[{offset, fields}]` with `fields` from the page's `decode` (default `JSON.parse`). A
    /// message whose fields fail to decode is skipped and reported.
    fn js_messages(&self, channel: &str, messages: &[CachedMessage]) -> Array {
        let decode = self.0.borrow().decode.clone();
        let out = Array::new();
        for m in messages {
            let text = JsValue::from(m.fields.get());
            let fields = match &decode {
                Some(f) => f.call1(&JsValue::UNDEFINED, &text),
                None => js_sys::JSON::parse(m.fields.get()),
            };
            match fields {
                Ok(fields) => {
                    let obj: JsValue = Object::new().into();
                    set(&obj, "offset", &m.offset.to_string().into());
                    set(&obj, "fields", &fields);
                    out.push(&obj);
                }
                Err(e) => {
                    let info = ErrorInfo::new(
                        crate::errors::DECODE_FAILED,
                        format!("decode threw for message {}: {:?}", m.offset, e),
                    )
                    .on(channel);
                    self.0
                        .borrow_mut()
                        .emit(Topic::Error, vec![js_error(&info)]);
                }
            }
        }
        out
    }
}

impl Handlers {
    fn new(weak: Weak<RefCell<Inner>>) -> Handlers {
        // Runs `input` on the state if the event comes from the current socket, then pumps.
        fn on_socket(
            weak: Weak<RefCell<Inner>>,
            input: impl Fn(&mut Inner, &web_sys::Event) + 'static,
        ) -> Closure<dyn FnMut(web_sys::Event)> {
            Closure::new(move |event: web_sys::Event| {
                let Some(rc) = weak.upgrade() else { return };
                {
                    let mut inner = rc.borrow_mut();
                    let from_current = match (&inner.socket, event.target()) {
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
        Handlers {
            open: on_socket(weak.clone(), |inner, _: &web_sys::Event| {
                inner.session.handle_transport_open(now());
            }),
            message: on_socket(weak.clone(), |inner, event| {
                // Text frames only; the server sends nothing else. Undecodable text is dropped.
                let event: &MessageEvent = event.unchecked_ref();
                if let Some(text) = event.data().as_string() {
                    if let Ok(frame) = decode_server(&text) {
                        inner.session.handle_frame(frame, now());
                    }
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
    fn drive(&mut self) {
        loop {
            let mut busy = false;
            while let Some(action) = self.session.poll_action() {
                busy = true;
                match action {
                    redistribute_protocol::session::Action::Connect { target } => {
                        self.open_socket(&target)
                    }
                    redistribute_protocol::session::Action::Close => self.close_socket(),
                }
            }
            while let Some(frame) = self.session.poll_transmit() {
                busy = true;
                if let Some(ws) = &self.socket {
                    // A failed send means the socket is closing: its close event follows.
                    let _ = ws.send_with_str(&encode_client(&frame));
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

    fn open_socket(&mut self, target: &str) {
        self.close_socket();
        match WebSocket::new(target) {
            Ok(ws) => {
                if let Some(h) = &self.handlers {
                    ws.set_onopen(Some(h.open.as_ref().unchecked_ref()));
                    ws.set_onmessage(Some(h.message.as_ref().unchecked_ref()));
                    ws.set_onclose(Some(h.close.as_ref().unchecked_ref()));
                }
                self.socket = Some(ws);
            }
            Err(e) => {
                let reason = DisconnectReason::transport(None, format!("{e:?}"));
                self.session.handle_transport_closed(now(), reason);
            }
        }
    }

    /// Forgets the current socket without closing it (it is closed already).
    fn detach_socket(&mut self) {
        if let Some(ws) = self.socket.take() {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
        }
    }

    /// Closes the current socket; nothing more is heard from it.
    fn close_socket(&mut self) {
        if let Some(ws) = self.socket.clone() {
            self.detach_socket();
            let _ = ws.close();
        }
    }

    /// Arms the timer for the session's next deadline (at once before the start).
    fn arm_timer(&mut self) {
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

    fn emit(&mut self, topic: Topic, args: Vec<JsValue>) {
        self.queue.push_back(Out::Emit(topic, args));
    }

    fn settle(&mut self, id: RequestId, value: Result<JsValue, ErrorInfo>) {
        let Some(i) = self.waiting.iter().position(|(w, _)| *w == id.get()) else {
            return;
        };
        let (_, w) = self.waiting.swap_remove(i);
        // Settling only queues promise reactions: no page code runs here.
        match value {
            Ok(v) => call(&w.resolve, &[v]),
            Err(e) => call(&w.reject, &[js_error(&e)]),
        }
    }

    fn reply(&self, id: RequestId) -> Option<Reply> {
        self.waiting
            .iter()
            .find(|(w, _)| *w == id.get())
            .map(|(_, w)| w.reply)
    }

    /// Writes to the cache; problems become `error` events.
    fn cache_store(&mut self, channel: &str, messages: &[CachedMessage]) {
        let Some(cache) = &self.cache else { return };
        let position = self.session.offset(channel);
        let problems = cache.store(channel, messages, position, js_sys::Date::now());
        for p in problems {
            self.emit(Topic::Error, vec![js_error(&ErrorInfo::cache(&p))]);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { target } => self.emit(Topic::Connect, vec![target.into()]),
            Event::Disconnected { reason } => {
                self.emit(Topic::Disconnect, vec![reason.to_string().into()])
            }
            Event::ConnectFailed { target, reason } => {
                let info = ErrorInfo::connect_failed(&target, &reason);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
            Event::Subscribed {
                id,
                channel,
                offset,
                truncated,
                ..
            } => {
                self.cache_store(&channel, &[]);
                if let Some(Reply::Subscribe) = self.reply(id) {
                    let v: JsValue = Object::new().into();
                    set(&v, "channel", &channel.into());
                    set(&v, "offset", &offset.to_string().into());
                    set(&v, "truncated", &truncated.into());
                    self.settle(id, Ok(v));
                }
            }
            Event::SubscriptionLost { channel, error } => {
                let info = ErrorInfo::new(
                    SUBSCRIPTION_LOST,
                    format!("could not resume the subscription: {error}"),
                )
                .on(channel);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
            Event::Unsubscribed { id, .. } | Event::Pong { id } => {
                self.settle(id, Ok(JsValue::TRUE))
            }
            Event::Messages { channel, messages } => {
                let cached: Vec<CachedMessage> =
                    messages.iter().map(CachedMessage::from_message).collect();
                self.cache_store(&channel, &cached);
                self.queue.push_back(Out::Messages(channel, cached));
            }
            Event::Gap { channel, from, to } => {
                let info = ErrorInfo::gap(&channel, from, to);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
            Event::Published { id, offset, .. } => self.settle(id, Ok(offset.to_string().into())),
            Event::RequestFailed { id, error } => self.settle(id, Err(ErrorInfo::request(&error))),
            Event::ServerError { code, message } => {
                let info = ErrorInfo::new(code.as_str(), message);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
        }
    }
}

impl Drop for Inner {
    /// A client the page dropped without `close()`: stop the timer and the socket so no
    /// callback outlives the state.
    fn drop(&mut self) {
        if let Some((id, _)) = self.timer.take() {
            clear_timeout(&id);
        }
        self.close_socket();
    }
}
