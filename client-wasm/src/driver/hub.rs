//! The leader tab's hub: the one real connection of the tabs that share it, and a small
//! multiplexer that serves each tab's virtual connection (see `shared.rs`).
//!
//! The hub is a [`Driver`] whose session talks to the server; instead of page events, its
//! session events go to [`Inner::hub_event`]. Tabs' frames arrive over the bus:
//!
//! * `subscribe` from a tab at offset X: if the hub's subscription of the channel already stands
//!   at a position P ≤ X (or X is `$`), the tab is answered at once (from X, or from P for `$`);
//!   otherwise the hub re-subscribes from X (the server takes one subscription per channel and
//!   connection, so: `unsubscribe`, wait for its reply, `subscribe`), which replays X… to every
//!   tab of the channel, and each tab's session drops what it already has. So each tab gets
//!   every message after its own offset, once.
//! * `publish` is published by the hub's session (the tab's idempotency key is kept) and the
//!   reply goes back to the tab; `unsubscribe` ends the hub's subscription with the last tab.
//! * Messages are broadcast once per batch to all tabs; a tab's session ignores channels it
//!   does not subscribe to.
//!
//! A tab's virtual connection opens only while the hub is connected to the server, and all of
//! them close (`down`) when it loses the server, so every tab's `connect`/`disconnect` events
//! and outbox follow the real connection.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use js_sys::Reflect;
use redistribute_protocol::lite::{decode_client, encode_server};
use redistribute_protocol::session::{Config, Event, PublishOptions, RequestError, Session};
use redistribute_protocol::{ClientFrame, ErrorCode, Offset, ServerFrame, PROTOCOL_VERSION};
use wasm_bindgen::prelude::*;
use web_sys::BroadcastChannel;

use super::shared::{bus_name, request_lock, tab_lock, LockManager};
use super::{field, post, Driver, Inner, Link};

/// What the hub's session is doing about a channel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    /// Nothing in flight: subscribed (the session has a position) or not at all.
    Idle,
    /// `subscribe` in flight (request id, offset asked for).
    Subscribing(u64, Offset),
    /// `unsubscribe` in flight (request id).
    Unsubscribing(u64),
}

/// A channel some tabs subscribe to.
struct Chan {
    name: String,
    tabs: Vec<String>,
    /// Tabs' `subscribe` requests not answered yet: (tab, request id, offset).
    waiters: Vec<(String, u64, Offset)>,
    st: St,
}

pub(super) struct Hub {
    pub(super) ch: BroadcastChannel,
    id: String,
    locks: LockManager,
    /// Tabs that said `hello` and wait for the server connection.
    waiting: Vec<String>,
    open: Vec<String>,
    watched: Vec<String>,
    chans: Vec<Chan>,
    /// Tabs' publishes: (hub request id, tab, tab's request id).
    requests: Vec<(u64, String, u64)>,
}

impl Hub {
    fn send(&self, to: &str, frame: &ServerFrame) {
        let text = JsValue::from(encode_server(frame));
        post(&self.ch, "s", Some(to), &[("d", text)]);
    }

    fn broadcast(&self, frame: &ServerFrame) {
        post(&self.ch, "s", None, &[("d", encode_server(frame).into())]);
    }

    fn chan(&mut self, name: &str) -> Option<&mut Chan> {
        self.chans.iter_mut().find(|c| c.name == name)
    }

    fn error(&self, to: &str, id: u64, code: ErrorCode, message: String) {
        self.send(
            to,
            &ServerFrame::Error {
                id: Some(id),
                code,
                message,
            },
        );
    }
}

/// The oldest of two offsets to subscribe from.
fn oldest(a: Offset, b: Offset) -> Offset {
    match (a, b) {
        (Offset::Earliest, _) | (_, Offset::Earliest) => Offset::Earliest,
        (Offset::Id(x), Offset::Id(y)) => Offset::Id(x.min(y)),
        (Offset::Id(x), Offset::Latest) | (Offset::Latest, Offset::Id(x)) => Offset::Id(x),
        (Offset::Latest, Offset::Latest) => Offset::Latest,
    }
}

fn request_error(e: &RequestError) -> (ErrorCode, String) {
    match e {
        RequestError::Server { code, message } => (*code, message.clone()),
        other => (ErrorCode::Unavailable, other.to_string()),
    }
}

impl Driver {
    /// The hub of a leader tab: connects to the server and announces itself on the bus.
    pub(super) fn new_hub(
        config: Config,
        seed: u64,
        scope: &str,
        locks: LockManager,
        provider: Option<js_sys::Function>,
    ) -> Option<Driver> {
        let session = Session::new(config, seed).ok()?;
        let ch = BroadcastChannel::new(&bus_name(scope)).ok()?;
        let id = format!("{seed:016x}");
        post(&ch, "leader", None, &[("id", id.as_str().into())]);
        let hub = Hub {
            ch,
            id,
            locks,
            waiting: Vec::new(),
            open: Vec::new(),
            watched: Vec::new(),
            chans: Vec::new(),
            requests: Vec::new(),
        };
        let driver = Driver(Rc::new(RefCell::new(Inner {
            session,
            started: false,
            link: Link::Ws(None),
            handlers: None,
            timer: None,
            waiting: Vec::new(),
            listeners: Default::default(),
            cache: None,
            encode: None,
            decode: None,
            queue: VecDeque::new(),
            dispatching: false,
            hub: Some(Box::new(hub)),
            shared: None,
            outbox: None,
            parcels: Vec::new(),
            inflight: Vec::new(),
            outbox_seed: 0,
            outbox_count: 0,
            retry_armed: false,
            tokens: provider.map(super::token::Tokens::new),
        })));
        driver.attach();
        Some(driver)
    }

    /// Ends the hub: tabs hear `down`, the socket closes.
    pub(super) fn close_hub(&self) {
        {
            let mut inner = self.0.borrow_mut();
            inner.session.close();
            if let Some(hub) = &inner.hub {
                post(&hub.ch, "down", None, &[("id", hub.id.as_str().into())]);
            }
        }
        self.pump();
        if let Some(hub) = &self.0.borrow().hub {
            hub.ch.set_onmessage(None);
            hub.ch.close();
        }
    }
}

impl Inner {
    /// A bus message, seen by the hub.
    pub(super) fn hub_input(&mut self, msg: &JsValue) {
        let (Some(kind), Some(tab)) = (field(msg, "k"), field(msg, "from")) else {
            return;
        };
        match kind.as_str() {
            "hello" => {
                self.hub_drop_tab(&tab);
                let connected = self.session.is_connected();
                let Some(hub) = self.hub.as_mut() else { return };
                if connected {
                    post(
                        &hub.ch,
                        "open",
                        Some(&tab),
                        &[("id", hub.id.as_str().into())],
                    );
                    hub.open.push(tab.clone());
                } else {
                    hub.waiting.push(tab.clone());
                }
                let locked = Reflect::get(msg, &"locked".into()).is_ok_and(|v| v.is_truthy());
                if locked && !hub.watched.contains(&tab) {
                    hub.watched.push(tab.clone());
                    self.hub_watch(tab);
                }
            }
            "locked" => {
                let Some(hub) = self.hub.as_mut() else { return };
                let known = hub.open.contains(&tab) || hub.waiting.contains(&tab);
                if known && !hub.watched.contains(&tab) {
                    hub.watched.push(tab.clone());
                    self.hub_watch(tab);
                }
            }
            "bye" => self.hub_drop_tab(&tab),
            "c" => {
                let open = self.hub.as_ref().is_some_and(|h| h.open.contains(&tab));
                if let (true, Some(frame)) =
                    (open, field(msg, "d").and_then(|d| decode_client(&d).ok()))
                {
                    self.hub_frame(&tab, frame);
                }
            }
            _ => {}
        }
    }

    /// Forgets a tab when its lock is released, i.e. when it is gone.
    fn hub_watch(&self, tab: String) {
        let Some(hub) = &self.hub else { return };
        let name = hub.ch.name();
        request_lock(&hub.locks, &tab_lock(&tab), false, move |_| {
            // Said on the tab's behalf through a second channel object, so the hub's own
            // handler hears it (a channel object does not hear itself).
            if let Ok(other) = BroadcastChannel::new(&name) {
                post(&other, "bye", None, &[("from", tab.as_str().into())]);
                other.close();
            }
            JsValue::UNDEFINED
        });
    }

    /// Removes a tab from every channel (ending the hub's subscriptions nobody needs).
    fn hub_drop_tab(&mut self, tab: &str) {
        let Some(hub) = self.hub.as_mut() else { return };
        hub.waiting.retain(|t| t != tab);
        hub.open.retain(|t| t != tab);
        hub.requests.retain(|(_, t, _)| t != tab);
        let mut touched = Vec::new();
        for c in &mut hub.chans {
            if c.tabs.iter().any(|t| t == tab) {
                c.tabs.retain(|t| t != tab);
                c.waiters.retain(|(t, ..)| t != tab);
                touched.push(c.name.clone());
            }
        }
        for name in touched {
            self.hub_advance(&name);
        }
    }

    /// Moves a channel on: answers the tabs its subscription already serves, unsubscribes
    /// when nobody needs it or a tab needs older messages, subscribes from the oldest offset
    /// asked for, and forgets it when done.
    fn hub_advance(&mut self, channel: &str) {
        let position = self.session.offset(channel);
        let subscribed = self.session.subscriptions().any(|c| c == channel);
        let Some(hub) = self.hub.as_mut() else { return };
        let Some(i) = hub.chans.iter().position(|c| c.name == channel) else {
            return;
        };
        if hub.chans[i].st != St::Idle {
            return; // the reply moves it on
        }
        if hub.chans[i].tabs.is_empty() {
            if subscribed {
                if let Ok(rid) = self.session.unsubscribe(channel) {
                    hub.chans[i].st = St::Unsubscribing(rid.get());
                    return;
                }
            }
            hub.chans.swap_remove(i);
            return;
        }
        if subscribed {
            let Some(p) = position else { return };
            // Answer whom the standing subscription serves.
            let mut rest = Vec::new();
            for (tab, id, want) in std::mem::take(&mut hub.chans[i].waiters) {
                let at = match want {
                    Offset::Latest => p,
                    Offset::Id(x) if x >= p => x,
                    _ => {
                        rest.push((tab, id, want));
                        continue;
                    }
                };
                let frame = ServerFrame::Subscribed {
                    id,
                    channel: channel.to_owned(),
                    offset: at,
                    truncated: false,
                };
                hub.send(&tab, &frame);
            }
            let c = &mut hub.chans[i];
            c.waiters = rest;
            if !c.waiters.is_empty() {
                if let Ok(rid) = self.session.unsubscribe(channel) {
                    c.st = St::Unsubscribing(rid.get());
                }
            }
            return;
        }
        let c = &mut hub.chans[i];
        let Some(from) = c.waiters.iter().map(|w| w.2).reduce(oldest) else {
            return;
        };
        match self.session.subscribe(channel.to_owned(), from) {
            Ok(rid) => c.st = St::Subscribing(rid.get(), from),
            Err(e) => {
                let waiters = std::mem::take(&mut c.waiters);
                c.tabs.retain(|t| !waiters.iter().any(|(w, ..)| w == t));
                for (tab, id, _) in waiters {
                    hub.error(&tab, id, ErrorCode::BadRequest, e.to_string());
                }
                self.hub_advance(channel);
            }
        }
    }

    fn hub_frame(&mut self, tab: &str, frame: ClientFrame) {
        match frame {
            ClientFrame::Subscribe {
                id,
                channel,
                offset,
                ..
            } => self.hub_subscribe(tab, id, channel, offset.unwrap_or_default()),
            ClientFrame::Unsubscribe { id, channel } => {
                let Some(hub) = self.hub.as_mut() else { return };
                if let Some(c) = hub.chan(&channel) {
                    c.tabs.retain(|t| t != tab);
                    c.waiters.retain(|(t, ..)| t != tab);
                }
                hub.send(
                    tab,
                    &ServerFrame::Unsubscribed {
                        id,
                        channel: channel.clone(),
                    },
                );
                self.hub_advance(&channel);
            }
            ClientFrame::Publish {
                id,
                channel,
                fields,
                maxlen,
                idempotency_key,
            } => {
                let options = PublishOptions {
                    maxlen,
                    idempotency_key,
                };
                let result = self.session.publish(channel, fields, options);
                let Some(hub) = self.hub.as_mut() else { return };
                match result {
                    Ok(rid) => hub.requests.push((rid.get(), tab.to_owned(), id)),
                    Err(e) => hub.error(tab, id, ErrorCode::BadRequest, e.to_string()),
                }
            }
            ClientFrame::Ping { id } => {
                if let Some(hub) = &self.hub {
                    hub.send(tab, &ServerFrame::Pong { id });
                }
            }
            ClientFrame::Connect { id, .. } => {
                if let Some(hub) = &self.hub {
                    let client = tab.to_owned();
                    let version = PROTOCOL_VERSION;
                    hub.send(
                        tab,
                        &ServerFrame::Connected {
                            id,
                            client,
                            version,
                        },
                    );
                }
            }
            other => {
                if let Some(hub) = &self.hub {
                    let message = "consumer groups are not shared between tabs".to_owned();
                    hub.error(tab, other.id(), ErrorCode::BadRequest, message);
                }
            }
        }
    }

    fn hub_subscribe(&mut self, tab: &str, id: u64, channel: String, offset: Offset) {
        let Some(hub) = self.hub.as_mut() else { return };
        if hub.chan(&channel).is_none() {
            hub.chans.push(Chan {
                name: channel.clone(),
                tabs: Vec::new(),
                waiters: Vec::new(),
                st: St::Idle,
            });
        }
        let c = hub.chan(&channel).expect("just added");
        if !c.tabs.iter().any(|t| t == tab) {
            c.tabs.push(tab.to_owned());
        }
        c.waiters.retain(|(t, ..)| t != tab);
        c.waiters.push((tab.to_owned(), id, offset));
        self.hub_advance(&channel);
    }

    /// The hub session's events, turned into frames for the tabs.
    pub(super) fn hub_event(&mut self, event: Event) {
        let Some(hub) = self.hub.as_mut() else { return };
        match event {
            Event::Connected { .. } => {
                for tab in std::mem::take(&mut hub.waiting) {
                    post(
                        &hub.ch,
                        "open",
                        Some(&tab),
                        &[("id", hub.id.as_str().into())],
                    );
                    hub.open.push(tab);
                }
            }
            Event::ConnectFailed { target, reason } => {
                let message = format!("connecting to {target}: {reason}");
                post(&hub.ch, "cf", None, &[("message", message.into())]);
            }
            Event::Disconnected { .. } => {
                post(&hub.ch, "down", None, &[("id", hub.id.as_str().into())]);
                hub.open.clear();
            }
            Event::Subscribed {
                channel,
                offset,
                truncated,
                ..
            } => {
                let Some(c) = hub.chan(&channel) else { return };
                let St::Subscribing(_, from) = c.st else {
                    return;
                };
                c.st = St::Idle;
                // Answer the tabs this subscription serves; the rest wait for another round.
                let mut rest = Vec::new();
                for (tab, id, asked) in std::mem::take(&mut c.waiters) {
                    if oldest(from, asked) != from {
                        rest.push((tab, id, asked));
                        continue;
                    }
                    let offset = match asked {
                        Offset::Id(x) if !truncated && x > offset => x,
                        _ => offset,
                    };
                    let frame = ServerFrame::Subscribed {
                        id,
                        channel: channel.clone(),
                        offset,
                        truncated,
                    };
                    hub.send(&tab, &frame);
                }
                if let Some(c) = hub.chan(&channel) {
                    c.waiters = rest;
                }
                self.hub_advance(&channel);
            }
            Event::Unsubscribed { id, channel } => {
                let Some(c) = hub.chan(&channel) else { return };
                if c.st == St::Unsubscribing(id.get()) {
                    c.st = St::Idle;
                    self.hub_advance(&channel);
                }
            }
            Event::Messages { channel, messages } => {
                hub.broadcast(&ServerFrame::Messages { channel, messages });
            }
            Event::Gap { channel, from, to } => {
                hub.broadcast(&ServerFrame::Gap { channel, from, to });
            }
            Event::Published {
                id,
                channel,
                offset,
            } => {
                if let Some(i) = hub.requests.iter().position(|r| r.0 == id.get()) {
                    let (_, tab, id) = hub.requests.swap_remove(i);
                    hub.send(
                        &tab,
                        &ServerFrame::Published {
                            id,
                            channel,
                            offset,
                        },
                    );
                }
            }
            Event::RequestFailed { id, error } => {
                let (code, message) = request_error(&error);
                if let Some(i) = hub.requests.iter().position(|r| r.0 == id.get()) {
                    let (_, tab, id) = hub.requests.swap_remove(i);
                    hub.error(&tab, id, code, message);
                    return;
                }
                let Some(c) = hub.chans.iter_mut().find(|c| match c.st {
                    St::Subscribing(r, _) | St::Unsubscribing(r) => r == id.get(),
                    St::Idle => false,
                }) else {
                    return;
                };
                let name = c.name.clone();
                if let St::Subscribing(..) = std::mem::replace(&mut c.st, St::Idle) {
                    let waiters = std::mem::take(&mut c.waiters);
                    c.tabs.retain(|t| !waiters.iter().any(|(w, ..)| w == t));
                    for (tab, id, _) in waiters {
                        hub.error(&tab, id, code, message.clone());
                    }
                }
                self.hub_advance(&name);
            }
            Event::SubscriptionLost { channel, error } => {
                let (code, message) = request_error(&error);
                let message = format!("{channel}: {message}");
                hub.broadcast(&ServerFrame::Error {
                    id: None,
                    code,
                    message,
                });
            }
            _ => {}
        }
    }
}
