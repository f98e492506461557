//! Tabs sharing one connection: the leader election and the follower side of the tabs' bus.
//!
//! Every tab's client runs its own session (its own subscriptions, positions, dedupe and
//! publish retries). With sharing on, that session's transport is a *virtual connection* over
//! a BroadcastChannel (`redistribute:bus:<scope>`) to the leader tab (`leader.rs`), which
//! holds the one real WebSocket and serves the tabs with the protocol crate's
//! [`Multiplexer`](redistribute_protocol::multiplex::Multiplexer). The leader is elected with
//! the Web Locks API: the tab holding `redistribute:leader:<scope>` leads until it goes away,
//! then the browser grants the lock to the next waiting tab, whose new leader announces itself
//! (`leader`); the other tabs' sessions see their virtual connection close, reconnect to the new
//! leader and re-subscribe from their own last offsets, so nothing is lost and nothing is
//! delivered twice.
//!
//! Bus messages are plain objects `{k, to?, from?, ...}`: from tabs `hello`, `locked`, `c` (a
//! client frame, JSON), `bye`; from the leader `leader`, `open`, `down`, `cf` (its connection
//! attempt failed), `s` (a server frame, JSON); between tabs `ack`/`nack` (an outbox message
//! was stored/refused, see `outbox.rs`).

use std::cell::RefCell;
use std::rc::Weak;

use js_sys::{Function, Reflect};
use redistribute_protocol::lite;
use redistribute_protocol::session::{Config, DisconnectReason};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::BroadcastChannel;

use super::{call, field, now, post, Bus, Driver, Inner, Link, Topic};
use crate::browser::{held, request_lock, LockManager};
use crate::errors::ErrorInfo;

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
    /// The real connection's configuration, for the leader driver.
    config: Config,
    seed: u64,
    pub(super) role: Role,
    leader: Option<Driver>,
    /// Resolves the promises that hold the leader lock and this tab's lock.
    release: Vec<Function>,
    closed: bool,
    /// The page's `tokenProvider`, for the leader driver.
    pub(super) provider: Option<Function>,
}

/// The name of the tabs' BroadcastChannel.
pub(super) fn bus_name(scope: &str) -> String {
    format!("redistribute:bus:{scope}")
}

/// The name of the lock a tab holds while it lives (the leader watches it).
pub(super) fn tab_lock(tab: &str) -> String {
    format!("redistribute:tab:{tab}")
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
            leader: None,
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

    /// Gives up the role for good (the client closes): releases the locks and returns the leader
    /// to close, if this tab leads.
    pub(super) fn resign(&mut self) -> Option<Driver> {
        self.closed = true;
        for release in self.release.drain(..) {
            call(&release, &[]);
        }
        self.leader.take()
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

/// The leader lock was granted: start the leader driver and hold the lock until the client closes or
/// the page goes away.
fn lead(weak: &Weak<RefCell<Inner>>) -> JsValue {
    let Some(rc) = weak.upgrade() else {
        return JsValue::UNDEFINED;
    };
    let leader = {
        let inner = rc.borrow();
        match &inner.shared {
            Some(s) if !s.closed => Driver::new_leader(
                s.config.clone(),
                s.seed.rotate_left(7) ^ 0x2545_f491_4f6c_dd1d,
                &s.scope,
                s.locks.clone(),
                s.provider.clone(),
            ),
            _ => None,
        }
    };
    let Some(leader) = leader else {
        return JsValue::UNDEFINED;
    };
    let (hold, release) = held();
    {
        let mut inner = rc.borrow_mut();
        if let Some(s) = inner.shared.as_mut() {
            s.leader = Some(leader);
            s.release.push(release);
            s.role = Role::Leader;
        }
        inner.emit(Topic::Leader, vec![]);
        inner.flush_outbox();
    }
    Driver(rc).pump();
    hold.into()
}

impl Inner {
    /// A message on the tabs' bus.
    pub(super) fn on_bus(&mut self, msg: &JsValue) {
        if self.leader.is_some() {
            return self.leader_input(msg);
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
                // Frames relayed by the leader; the same rule as on a socket.
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
            "ack" | "nack" => self.settle_remote(kind == "ack", msg),
            _ => {}
        }
    }
}

impl Driver {
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
