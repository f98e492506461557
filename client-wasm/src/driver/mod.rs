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
//!
//! Submodules: `transport` (the JS callbacks in, the socket and timer actions out) and `events`
//! (session events out to promises, the cache and page events).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::queue::Queue;
use redistribute_protocol::session::{Config, RequestId, Session, SessionError};
use redistribute_protocol::validate_channel;
use wasm_bindgen::prelude::*;
use web_sys::BroadcastChannel;

use crate::browser::performance_now;
use crate::cache::{Cache, CachedMessage};
use crate::errors::ErrorInfo;
use crate::outbox::Outbox;
use crate::storage::LocalStorage;

mod events;
mod leader;
mod objects;
mod outbox;
mod sharing;
mod token;
mod transport;

pub(crate) use objects::{SubOptions, SubTopic};
use transport::{Bus, Link};

/// The page events, in the order of their listener lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    Connect = 0,
    Disconnect = 1,
    Messages = 2,
    Error = 3,
    Leader = 4,
    Follower = 5,
    Outbox = 6,
    Presence = 7,
    State = 8,
}

impl Topic {
    /// The topic of an event name given to `on`/`off`.
    pub(crate) fn parse(name: &str) -> Option<Topic> {
        Some(match name {
            "connect" => Topic::Connect,
            "disconnect" => Topic::Disconnect,
            "messages" => Topic::Messages,
            "error" => Topic::Error,
            "leader" => Topic::Leader,
            "follower" => Topic::Follower,
            "outbox" => Topic::Outbox,
            "presence" => Topic::Presence,
            "state" => Topic::State,
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
    /// Share one connection between the tabs of the origin (when the browser can).
    pub(crate) share: bool,
    /// The persisted outbox, unless disabled or localStorage is unusable.
    pub(crate) outbox: Option<Outbox<LocalStorage>>,
    /// Names the tabs' lock and BroadcastChannel: tabs with the same targets and token share.
    pub(crate) scope: String,
    /// Random bits for outbox ids.
    pub(crate) outbox_seed: u64,
    /// The page's `tokenProvider`, if any.
    pub(crate) token_provider: Option<Function>,
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
    /// A history page.
    History,
    /// `PresenceMember[]` or `{clients, users}`.
    Presence,
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
    /// Decode and deliver messages of a channel (to the client's and the object's listeners).
    Messages(String, Vec<CachedMessage>),
    /// Decode a history page's messages into it (under `messages`), then resolve with it.
    Page(Function, JsValue, String, Vec<CachedMessage>),
    /// Call the listeners of a channel's subscription object.
    Sub(String, SubTopic, Vec<JsValue>),
}

/// The JS callbacks, created once per client. They hold a weak reference, so a client the
/// page drops is freed (and [`Inner`]'s `Drop` detaches them).
struct Handlers {
    open: Closure<dyn FnMut(web_sys::Event)>,
    message: Closure<dyn FnMut(web_sys::Event)>,
    close: Closure<dyn FnMut(web_sys::Event)>,
    timer: Closure<dyn FnMut()>,
    bus: Closure<dyn FnMut(web_sys::MessageEvent)>,
    retry: Closure<dyn FnMut()>,
    /// `online` and `visibilitychange`: reconnect at once instead of waiting out a backoff.
    wake: Closure<dyn FnMut(web_sys::Event)>,
}

struct Inner {
    session: Session,
    /// Whether `session.connect` ran (it runs from the first timer, so listeners registered
    /// right after `new Client` hear everything).
    started: bool,
    link: Link,
    handlers: Option<Handlers>,
    /// The armed `setTimeout` id and the session time it fires for.
    timer: Option<(JsValue, Duration)>,
    /// Promises by request id. A short list (requests settle within the request timeout), so
    /// a `Vec` beats a map in code size.
    waiting: Vec<(u64, Waiter)>,
    listeners: [Vec<Function>; 9],
    /// The page's subscription objects (a short list, like `waiting`).
    objects: Vec<objects::Object>,
    /// The id of the last object made.
    next_object: u32,
    cache: Option<Cache<LocalStorage>>,
    encode: Option<Function>,
    decode: Option<Function>,
    queue: Queue<Out>,
    dispatching: bool,
    /// Set on the leader tab's driver (the one that holds the real socket for the tabs).
    leader: Option<Box<leader::Leader>>,
    /// Tab sharing, when on.
    shared: Option<sharing::Shared>,
    outbox: Option<Outbox<LocalStorage>>,
    /// Promises of publishes that went to the outbox, by entry id.
    parcels: Vec<(String, Waiter)>,
    /// Outbox entries handed to the session: (request id, entry id).
    inflight: Vec<(u64, String)>,
    outbox_seed: u64,
    outbox_count: u64,
    retry_armed: bool,
    /// The page's `tokenProvider`, on a driver that holds a real socket.
    tokens: Option<token::Tokens>,
}

/// Posts `{k: kind, to?, ...fields}` on a BroadcastChannel.
pub(crate) fn post(
    ch: &BroadcastChannel,
    kind: &str,
    to: Option<&str>,
    fields: &[(&str, JsValue)],
) {
    let msg: JsValue = Object::new().into();
    set(&msg, "k", &kind.into());
    if let Some(to) = to {
        set(&msg, "to", &to.into());
    }
    for (k, v) in fields {
        set(&msg, k, v);
    }
    let _ = ch.post_message(&msg);
}

/// A string property of a bus message.
pub(crate) fn field(msg: &JsValue, key: &str) -> Option<String> {
    Reflect::get(msg, &key.into()).ok()?.as_string()
}

/// The session time: `performance.now()`, monotonic since the page started.
fn now() -> Duration {
    crate::browser::millis(performance_now())
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
        let sharing = if setup.share {
            sharing::Shared::open(&setup.scope, setup.config.clone(), setup.seed)
        } else {
            None
        };
        let mut config = setup.config;
        let (sharing, link) = match sharing {
            Some((mut shared, bus)) => {
                // The leader tab's driver holds the real socket and calls its provider.
                shared.provider = setup.token_provider.clone();
                // The virtual connection to the leader: no token (the leader sends its
                // own), and quick retries (they cost one BroadcastChannel message).
                config.token = None;
                config.backoff_initial = Duration::from_millis(20);
                config.backoff_max = Duration::from_millis(500);
                // The leader's session probes the real socket.
                config.ping_interval = None;
                (Some(shared), Link::Bus(bus))
            }
            None => (None, Link::Ws(None)),
        };
        let session = Session::new(config, setup.seed).map_err(|e| ErrorInfo::session(&e))?;
        let tokens = match link {
            Link::Ws(_) => setup.token_provider.map(token::Tokens::new),
            Link::Bus(_) => None,
        };
        let mut queue = Queue::new();
        if let Some(problem) = setup.cache_problem {
            queue.push_back(Out::Emit(Topic::Error, vec![js_error(&problem)]));
        }
        let driver = Driver(Rc::new(RefCell::new(Inner {
            session,
            started: false,
            link,
            handlers: None,
            timer: None,
            waiting: Vec::new(),
            listeners: Default::default(),
            objects: Vec::new(),
            next_object: 0,
            cache: setup.cache,
            encode: setup.encode,
            decode: setup.decode,
            queue,
            dispatching: false,
            leader: None,
            shared: sharing,
            outbox: setup.outbox,
            parcels: Vec::new(),
            inflight: Vec::new(),
            outbox_seed: setup.outbox_seed,
            outbox_count: 0,
            retry_armed: false,
            tokens,
        })));
        driver.attach();
        if driver.0.borrow().shared.is_some() {
            sharing::elect(Rc::downgrade(&driver.0));
        }
        Ok(driver)
    }

    /// Creates the JS callbacks, listens on the bus (if any) and arms the first timer.
    fn attach(&self) {
        let handlers = Handlers::new(Rc::downgrade(&self.0));
        let mut inner = self.0.borrow_mut();
        if let Some(tokens) = inner.tokens.as_mut() {
            tokens.weak = Rc::downgrade(&self.0);
        }
        if let Link::Bus(bus) = &inner.link {
            bus.ch
                .set_onmessage(Some(handlers.bus.as_ref().unchecked_ref()));
        }
        if let Some(leader) = &inner.leader {
            leader
                .ch
                .set_onmessage(Some(handlers.bus.as_ref().unchecked_ref()));
        }
        crate::browser::watch_lifecycle(handlers.wake.as_ref().unchecked_ref(), true);
        inner.handlers = Some(handlers);
        inner.arm_timer();
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

    /// The client state's name (`disconnected`, `connecting`, `connected`, `closed`).
    pub(crate) fn state(&self) -> &'static str {
        self.0.borrow().session.state().as_str()
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

    /// Reads a page of history; resolves with the page (its messages decoded like delivered
    /// ones, by [`Driver::dispatch`]).
    pub(crate) fn history(
        &self,
        channel: String,
        options: redistribute_protocol::history::HistoryOptions,
    ) -> Promise {
        self.request(Reply::History, |s| s.history(channel, options))
    }

    /// Unsubscribes; resolves `true`.
    pub(crate) fn unsubscribe(&self, channel: String) -> Promise {
        self.request(Reply::Done, |s| s.unsubscribe(channel))
    }

    /// Publishes; resolves with the stored offset. While disconnected (or while earlier
    /// publishes still wait in the outbox, to keep their order) the message goes to the outbox.
    pub(crate) fn publish(
        &self,
        channel: String,
        fields: redistribute_protocol::Fields,
        options: redistribute_protocol::session::PublishOptions,
    ) -> Promise {
        let offline = {
            let inner = self.0.borrow();
            inner.outbox.as_ref().is_some_and(|o| {
                !inner.session.is_closed() && (!inner.session.is_connected() || !o.is_empty())
            })
        };
        if offline {
            return self.enqueue(channel, fields, options);
        }
        self.request(Reply::Publish, |s| s.publish(channel, fields, options))
    }

    /// Asks who is subscribed to a presence channel (`stats`: how many).
    pub(crate) fn presence(&self, channel: String, stats: bool) -> Promise {
        self.request(Reply::Presence, |s| match stats {
            true => s.presence_stats(channel),
            false => s.presence(channel),
        })
    }

    /// Closes the client: pending promises reject with `closed`, the socket closes, no
    /// reconnect follows. Messages in the outbox stay there for the next client.
    pub(crate) fn close(&self) {
        let leader = {
            let mut inner = self.0.borrow_mut();
            inner.session.close();
            for (_, w) in std::mem::take(&mut inner.parcels) {
                let info = ErrorInfo::new(crate::errors::CLOSED, "the client was closed");
                call(&w.reject, &[js_error(&info)]);
            }
            inner.shared.as_mut().and_then(|s| s.resign())
        };
        if let Some(leader) = leader {
            leader.close_leader();
        }
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
            let (out, listeners, objects) = {
                let mut inner = self.0.borrow_mut();
                let Some(out) = inner.queue.pop_front() else {
                    inner.dispatching = false;
                    return;
                };
                // The client's listeners, and the channel's object's.
                let (listeners, object) = match &out {
                    Out::Emit(topic, _) => (inner.listeners[*topic as usize].clone(), None),
                    Out::Messages(channel, _) => (
                        inner.listeners[Topic::Messages as usize].clone(),
                        Some((channel, SubTopic::Messages)),
                    ),
                    Out::Page(..) => (Vec::new(), None),
                    Out::Sub(channel, topic, _) => (Vec::new(), Some((channel, *topic))),
                };
                let objects = object
                    .and_then(|(c, t)| Some(inner.object(c)?.listeners[t as usize].clone()))
                    .unwrap_or_default();
                (out, listeners, objects)
            };
            let (args, object_args) = match out {
                Out::Emit(_, args) => (args, Vec::new()),
                Out::Sub(_, _, args) => (Vec::new(), args),
                Out::Messages(channel, messages) => {
                    let js = self.js_messages(&channel, &messages);
                    if js.length() == 0 {
                        continue;
                    }
                    (vec![channel.into(), js.clone().into()], vec![js.into()])
                }
                Out::Page(resolve, page, channel, messages) => {
                    set(&page, "messages", &self.js_messages(&channel, &messages));
                    call(&resolve, &[page]);
                    continue;
                }
            };
            for listener in &listeners {
                call(listener, &args);
            }
            for listener in &objects {
                call(listener, &object_args);
            }
        }
    }

    /// `[{offset, fields}]` with `fields` from the page's `decode` (default `JSON.parse`). A
    /// message whose fields fail to decode is skipped and reported.
    fn js_messages(&self, channel: &str, messages: &[CachedMessage]) -> Array {
        let decode = self.0.borrow().decode.clone();
        let out = Array::new();
        for m in messages {
            let text = JsValue::from(m.fields.as_str());
            let fields = match &decode {
                Some(f) => f.call1(&JsValue::UNDEFINED, &text),
                None => js_sys::JSON::parse(&m.fields),
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
