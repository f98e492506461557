//! Tabs sharing one connection, and the offline outbox.
//!
//! Every tab's client runs its own session (its own subscriptions, positions, dedupe and
//! publish retries). With sharing on, that session's transport is a *virtual connection* over
//! a BroadcastChannel (`redistribute:bus:<scope>`) to the leader tab's hub (`hub.rs`), which
//! holds the one real WebSocket. The leader is elected with the Web Locks API: the tab holding
//! `redistribute:leader:<scope>` leads until it goes away, then the browser grants the lock to
//! the next waiting tab, whose new hub announces itself (`leader`); the other tabs' sessions
//! see their virtual connection close, reconnect to the new hub and re-subscribe from their own
//! last offsets, so nothing is lost and nothing is delivered twice.
//!
//! Bus messages are plain objects `{k, to?, from?, ...}`: from tabs `hello`, `c` (a client
//! frame, JSON), `bye`; from the hub `leader`, `open`, `down`, `s` (a server frame, JSON);
//! between tabs `ack`/`nack` (an outbox message was stored/refused).
//!
//! The outbox (shared by the tabs through localStorage) is sent by every client whose session
//! is connected: all entries, oldest first, with their ids as idempotency keys, when the
//! session connects, after each new entry, and a second after a transient failure. Tabs do not
//! coordinate who sends what, because localStorage and BroadcastChannel are not ordered with
//! each other (a tab may not see another's entry yet): two tabs sending the same entry is
//! harmless, the server stores its key once, and since every tab sends the entries in the same
//! (append) order, the first copy of each reaches the server in that order too. A publish
//! promise settles in the tab that made it, by its own send or another tab's `ack`/`nack`, or,
//! when the tabs do not share a connection (no bus), by the outcome the sending tab recorded in
//! the outbox (see `crate::outbox::Outcome`), read when this tab's session connects.

use std::cell::RefCell;
use std::rc::Weak;

use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::session::{Config, DisconnectReason, PublishOptions, SessionError};
use redistribute_protocol::{json, lite, validate_channel, Fields};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::BroadcastChannel;

use super::{call, field, now, post, set, Bus, Driver, Inner, Link, Reply, Topic, Waiter};
use crate::errors::{ErrorInfo, BAD_REQUEST, CANCELLED, OUTBOX_FULL, QUOTA_EXCEEDED};
use crate::outbox::{Entry, OutboxError, Outcome};
use crate::storage::StorageError;

#[wasm_bindgen]
extern "C" {
    /// `navigator.locks`.
    #[derive(Clone)]
    pub(super) type LockManager;

    #[wasm_bindgen(method, js_name = request)]
    fn request(this: &LockManager, name: &str, options: &JsValue, callback: &JsValue) -> Promise;
}

/// This tab's part in the sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Pending,
    Follower,
    Leader,
}

pub(super) struct Shared {
    scope: String,
    locks: LockManager,
    /// The real connection's configuration, for a hub.
    config: Config,
    seed: u64,
    pub(super) role: Role,
    hub: Option<Driver>,
    /// Resolves the promises that hold the leader lock and this tab's lock.
    release: Vec<Function>,
    closed: bool,
    /// The page's `tokenProvider`, for a hub.
    pub(super) provider: Option<Function>,
}

/// The name of the tabs' BroadcastChannel.
pub(super) fn bus_name(scope: &str) -> String {
    format!("redistribute:bus:{scope}")
}

/// The name of the lock a tab holds while it lives (the hub watches it).
pub(super) fn tab_lock(tab: &str) -> String {
    format!("redistribute:tab:{tab}")
}

/// A promise that stays pending until the returned function is called.
fn held() -> (Promise, Function) {
    let mut slot = None;
    let promise = Promise::new(&mut |resolve, _| slot = Some(resolve));
    (promise, slot.expect("the executor runs synchronously"))
}

/// Requests a lock; `granted` runs once with the lock (or `null` with `ifAvailable`) and
/// returns what holds it (a promise) or `undefined` to release it at once.
pub(super) fn request_lock(
    locks: &LockManager,
    name: &str,
    if_available: bool,
    granted: impl FnOnce(JsValue) -> JsValue + 'static,
) {
    let options: JsValue = Object::new().into();
    if if_available {
        set(&options, "ifAvailable", &JsValue::TRUE);
    }
    let callback = Closure::once_into_js(granted);
    // Rejects only when the lock is stolen or aborted, which this client never does.
    let _ = locks.request(name, &options, &callback);
}

impl Shared {
    /// Sharing for this scope, or `None` where the browser lacks Web Locks or
    /// BroadcastChannel.
    pub(super) fn open(scope: &str, config: Config, seed: u64) -> Option<(Shared, Bus)> {
        let global = js_sys::global();
        let has = |o: &JsValue, k: &str| {
            Reflect::get(o, &k.into())
                .ok()
                .filter(|v| !v.is_undefined() && !v.is_null())
        };
        has(&global, "BroadcastChannel")?
            .dyn_into::<Function>()
            .ok()?;
        let locks: LockManager = has(&has(&global, "navigator")?, "locks")?.unchecked_into();
        let ch = BroadcastChannel::new(&bus_name(scope)).ok()?;
        let tab = format!("{:016x}", seed.rotate_left(23) ^ 0x9e37_79b9_7f4a_7c15);
        let (hold, release) = held();
        let locked = std::rc::Rc::new(std::cell::Cell::new(false));
        let flag = locked.clone();
        let (bus_ch, me) = (ch.clone(), tab.clone());
        request_lock(&locks, &tab_lock(&tab), false, move |_| {
            flag.set(true);
            post(&bus_ch, "locked", None, &[("from", me.as_str().into())]);
            hold.into()
        });
        let shared = Shared {
            scope: scope.to_owned(),
            locks,
            config,
            seed,
            role: Role::Pending,
            hub: None,
            release: vec![release],
            closed: false,
            provider: None,
        };
        let bus = Bus {
            ch,
            tab,
            state: 0,
            leader: String::new(),
            locked,
        };
        Some((shared, bus))
    }

    /// Gives up the role for good (the client closes): releases the locks and returns the hub
    /// to close, if this tab leads.
    pub(super) fn resign(&mut self) -> Option<Driver> {
        self.closed = true;
        for release in self.release.drain(..) {
            call(&release, &[]);
        }
        self.hub.take()
    }
}

/// Starts the election: lead at once if nobody does, else follow and queue for the lock.
pub(super) fn elect(weak: Weak<RefCell<Inner>>) {
    let Some(rc) = weak.upgrade() else { return };
    let (locks, name) = {
        let inner = rc.borrow();
        let Some(s) = &inner.shared else { return };
        (s.locks.clone(), format!("redistribute:leader:{}", s.scope))
    };
    let queue = locks.clone();
    request_lock(&locks, &name.clone(), true, move |lock| {
        if !lock.is_null() {
            return lead(&weak);
        }
        if let Some(rc) = weak.upgrade() {
            {
                let mut inner = rc.borrow_mut();
                if let Some(s) = inner.shared.as_mut() {
                    s.role = Role::Follower;
                }
                inner.emit(Topic::Follower, vec![]);
            }
            Driver(rc).dispatch();
        }
        request_lock(&queue, &name, false, move |_| lead(&weak));
        JsValue::UNDEFINED
    });
}

/// The leader lock was granted: start the hub and hold the lock until the client closes or
/// the page goes away.
fn lead(weak: &Weak<RefCell<Inner>>) -> JsValue {
    let Some(rc) = weak.upgrade() else {
        return JsValue::UNDEFINED;
    };
    let hub = {
        let inner = rc.borrow();
        match &inner.shared {
            Some(s) if !s.closed => Driver::new_hub(
                s.config.clone(),
                s.seed.rotate_left(7) ^ 0x2545_f491_4f6c_dd1d,
                &s.scope,
                s.locks.clone(),
                s.provider.clone(),
            ),
            _ => None,
        }
    };
    let Some(hub) = hub else {
        return JsValue::UNDEFINED;
    };
    let (hold, release) = held();
    {
        let mut inner = rc.borrow_mut();
        if let Some(s) = inner.shared.as_mut() {
            s.hub = Some(hub);
            s.release.push(release);
            s.role = Role::Leader;
        }
        inner.emit(Topic::Leader, vec![]);
        inner.flush_outbox();
    }
    Driver(rc).pump();
    hold.into()
}

/// A JS `Error` with a code that came over the bus.
fn remote_error(code: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    set(&err, "code", &code.into());
    err.into()
}

impl Inner {
    /// A message on the tabs' bus.
    pub(super) fn on_bus(&mut self, msg: &JsValue) {
        if self.hub.is_some() {
            return self.hub_input(msg);
        }
        let Some(kind) = field(msg, "k") else { return };
        let Link::Bus(bus) = &mut self.link else {
            return;
        };
        if field(msg, "to").is_some_and(|to| to != bus.tab) {
            return;
        }
        let t = now();
        let lost = |why: &str| DisconnectReason::transport(None, why);
        match kind.as_str() {
            "leader" => {
                let id = field(msg, "id").unwrap_or_default();
                if bus.leader != id {
                    bus.leader = id;
                    match bus.state {
                        2 => {
                            bus.state = 0;
                            let reason = lost("the leader tab changed");
                            self.session.handle_transport_closed(t, reason);
                        }
                        1 => bus.hello(),
                        _ => {}
                    }
                }
            }
            "open" if bus.state == 1 => {
                bus.state = 2;
                bus.leader = field(msg, "id").unwrap_or_default();
                self.session.handle_transport_open(t);
            }
            "down" if bus.state == 2 && field(msg, "id").is_some_and(|id| id == bus.leader) => {
                bus.state = 0;
                let reason = lost("the leader tab lost its connection");
                self.session.handle_transport_closed(t, reason);
            }
            "s" if bus.state == 2 => {
                // Frames relayed by the leader's hub; the same rule as on a socket.
                match field(msg, "d") {
                    Some(d) => self.session.handle_text_with(&d, t, lite::decode_server),
                    None => self
                        .session
                        .handle_bad_frame("a relayed frame without data", t),
                }
            }
            "cf" => {
                // The leader's connection attempt failed: the same `error` event as alone.
                let message = field(msg, "message").unwrap_or_default();
                let info = ErrorInfo::new(crate::errors::CONNECT_FAILED, message);
                self.emit(Topic::Error, vec![super::js_error(&info)]);
            }
            "ack" | "nack" => {
                let id = field(msg, "id").unwrap_or_default();
                // Every publish queued with this id (an idempotency key given twice).
                while let Some(i) = self.parcels.iter().position(|(p, _)| *p == id) {
                    let (_, w) = self.parcels.swap_remove(i);
                    if kind == "ack" {
                        call(
                            &w.resolve,
                            &[field(msg, "offset").unwrap_or_default().into()],
                        );
                    } else {
                        let code = field(msg, "code").unwrap_or_default();
                        let text = field(msg, "message").unwrap_or_default();
                        call(&w.reject, &[remote_error(&code, &text)]);
                    }
                }
                self.emit_outbox_size();
            }
            _ => {}
        }
    }

    /// Hands the outbox entries not yet in flight to the session, oldest first, when
    /// connected.
    pub(super) fn flush_outbox(&mut self) {
        if !self.session.is_connected() {
            return;
        }
        let entries = match &self.outbox {
            Some(o) => o.list(),
            None => return,
        };
        self.settle_done(&entries);
        for e in entries {
            if self.inflight.iter().any(|(_, id)| *id == e.id) {
                continue;
            }
            let options = PublishOptions {
                maxlen: e.maxlen,
                idempotency_key: Some(e.id.clone()),
            };
            match self.session.publish(e.channel, e.fields, options) {
                Ok(rid) => self.inflight.push((rid.get(), e.id)),
                Err(SessionError::Backpressure { .. }) => break,
                Err(err) => self.finish(&e.id, Err(ErrorInfo::session(&err))),
            }
        }
    }

    /// Settles this tab's outbox promises whose messages another tab sent or cancelled
    /// without telling it over the bus (tabs that do not share a connection): their
    /// messages no longer wait, and the outbox recorded how they ended.
    fn settle_done(&mut self, waiting: &[Entry]) {
        let Some(o) = &self.outbox else { return };
        let mut done = Vec::new();
        for (id, _) in &self.parcels {
            let gone =
                !waiting.iter().any(|e| e.id == *id) && !self.inflight.iter().any(|(_, e)| e == id);
            if gone && !done.iter().any(|(d, _)| d == id) {
                if let Some(outcome) = o.outcome(id) {
                    done.push((id.clone(), outcome));
                }
            }
        }
        for (id, outcome) in &done {
            while let Some(i) = self.parcels.iter().position(|(p, _)| p == id) {
                let (_, w) = self.parcels.swap_remove(i);
                match outcome {
                    Outcome::Stored(offset) => call(&w.resolve, &[offset.into()]),
                    Outcome::Refused { code, message } => {
                        call(&w.reject, &[remote_error(code, message)])
                    }
                }
            }
        }
        if !done.is_empty() {
            self.emit_outbox_size();
        }
    }

    /// Tries the outbox again in a second (after a transient failure while connected).
    pub(super) fn retry_later(&mut self) {
        if self.retry_armed {
            return;
        }
        if let Some(h) = &self.handlers {
            crate::bindings::set_timeout(h.retry.as_ref().unchecked_ref(), 1000);
            self.retry_armed = true;
        }
    }

    /// An outbox entry is done (stored, refused or cancelled): removes it, settles its
    /// promise here or in the tab that made it, and reports the new size.
    pub(super) fn finish(&mut self, id: &str, result: Result<String, ErrorInfo>) {
        if let Some(o) = &self.outbox {
            let outcome = match &result {
                Ok(offset) => Outcome::Stored(offset.clone()),
                Err(e) => Outcome::Refused {
                    code: e.code.to_owned(),
                    message: e.message.clone(),
                },
            };
            o.finish(id, &outcome, js_sys::Date::now());
        }
        if let (Link::Bus(bus), Some(_)) = (&self.link, &self.shared) {
            let (kind, fields): (&str, Vec<(&str, JsValue)>) = match &result {
                Ok(offset) => ("ack", vec![("offset", offset.into())]),
                Err(e) => (
                    "nack",
                    vec![
                        ("code", e.code.into()),
                        ("message", e.message.as_str().into()),
                    ],
                ),
            };
            let mut fields = fields;
            fields.push(("id", id.into()));
            post(&bus.ch, kind, None, &fields);
        }
        // Every publish queued with this id (an idempotency key given twice).
        while let Some(i) = self.parcels.iter().position(|(p, _)| p == id) {
            let (_, w) = self.parcels.swap_remove(i);
            match &result {
                Ok(offset) => call(&w.resolve, &[offset.into()]),
                Err(e) => call(&w.reject, &[super::js_error(e)]),
            }
        }
        self.emit_outbox_size();
    }

    pub(super) fn emit_outbox_size(&mut self) {
        if let Some(o) = &self.outbox {
            let n = o.len() as f64;
            self.emit(Topic::Outbox, vec![n.into()]);
        }
    }

    /// Puts a publish in the outbox; its promise settles when the server stored it.
    fn enqueue(
        &mut self,
        channel: String,
        fields: Fields,
        options: PublishOptions,
        waiter: Waiter,
    ) -> Result<(), ErrorInfo> {
        validate_channel(&channel).map_err(|e| ErrorInfo::session(&SessionError::Invalid(e)))?;
        if fields.is_empty() {
            return Err(ErrorInfo::new(BAD_REQUEST, "fields must not be empty"));
        }
        let id = match options.idempotency_key {
            Some(key) => key,
            None => {
                self.outbox_count += 1;
                format!("ob-{:016x}-{}", self.outbox_seed, self.outbox_count)
            }
        };
        let entry = Entry {
            id: id.clone(),
            channel,
            fields,
            maxlen: options.maxlen,
            created_at: js_sys::Date::now(),
        };
        let Some(outbox) = &self.outbox else {
            return Err(ErrorInfo::new(BAD_REQUEST, "no outbox"));
        };
        let n = outbox.push(entry).map_err(|e| {
            let code = match e {
                OutboxError::Full(_) => OUTBOX_FULL,
                OutboxError::Storage(StorageError::QuotaExceeded) => QUOTA_EXCEEDED,
                OutboxError::Storage(_) => crate::errors::STORAGE_UNAVAILABLE,
            };
            ErrorInfo::new(code, e.to_string())
        })?;
        self.parcels.push((id, waiter));
        self.emit(Topic::Outbox, vec![(n as f64).into()]);
        self.flush_outbox();
        Ok(())
    }
}

impl Driver {
    /// Publishes through the outbox.
    pub(super) fn enqueue(
        &self,
        channel: String,
        fields: Fields,
        options: PublishOptions,
    ) -> Promise {
        let mut slots = None;
        let promise = Promise::new(&mut |resolve, reject| slots = Some((resolve, reject)));
        let (resolve, reject) = slots.expect("the executor runs synchronously");
        let waiter = Waiter {
            resolve,
            reject: reject.clone(),
            reply: Reply::Publish,
        };
        let result = self
            .0
            .borrow_mut()
            .enqueue(channel, fields, options, waiter);
        if let Err(e) = result {
            call(&reject, &[super::js_error(&e)]);
        }
        self.pump();
        promise
    }

    /// The waiting messages: `[{id, channel, fields, createdAt}]`, oldest first.
    pub(crate) fn outbox(&self) -> Array {
        let (entries, decode) = {
            let inner = self.0.borrow();
            let entries = inner.outbox.as_ref().map(|o| o.list()).unwrap_or_default();
            (entries, inner.decode.clone())
        };
        let out = Array::new();
        for e in entries {
            let mut text = String::new();
            json::write_object(&mut text, &e.fields);
            let fields = match &decode {
                Some(f) => f.call1(&JsValue::UNDEFINED, &text.into()),
                None => js_sys::JSON::parse(&text),
            };
            let obj: JsValue = Object::new().into();
            set(&obj, "id", &e.id.into());
            set(&obj, "channel", &e.channel.into());
            set(&obj, "fields", &fields.unwrap_or(JsValue::NULL));
            set(&obj, "createdAt", &e.created_at.into());
            out.push(&obj);
        }
        out
    }

    /// Removes a waiting message unless this client is already sending it; its promise
    /// rejects with `cancelled`. Whether it was removed.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        let removed = {
            let mut inner = self.0.borrow_mut();
            let sending = inner.inflight.iter().any(|(_, e)| e == id);
            let present = inner
                .outbox
                .as_ref()
                .is_some_and(|o| o.list().iter().any(|e| e.id == id));
            if sending || !present {
                false
            } else {
                let info = ErrorInfo::new(CANCELLED, "the message was cancelled");
                inner.finish(id, Err(info));
                true
            }
        };
        self.dispatch();
        removed
    }

    /// `standalone`, `pending`, `leader` or `follower`.
    pub(crate) fn role(&self) -> &'static str {
        match self.0.borrow().shared.as_ref().map(|s| s.role) {
            None => "standalone",
            Some(Role::Pending) => "pending",
            Some(Role::Leader) => "leader",
            Some(Role::Follower) => "follower",
        }
    }
}
