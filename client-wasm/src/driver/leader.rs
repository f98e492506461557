//! The leader tab: the one real connection of the tabs that share it (see `sharing.rs`).
//!
//! The leader is a [`Driver`] whose session talks to the server; instead of page events, its
//! session events go to the protocol crate's
//! [`Multiplexer`](redistribute_protocol::multiplex::Multiplexer), which serves each tab's
//! virtual connection and makes every decision (what to answer, when to subscribe, replace or
//! end the session's subscriptions). This module is its I/O: bus messages in (`hello`, `locked`,
//! `c`, `bye`), its outputs out as bus messages (`open`, `down`, `cf`, `s`), and a Web Lock
//! watch per tab that says `bye` on a tab's behalf when it goes away without saying so.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Reflect;
use redistribute_protocol::lite::{decode_client, encode_server};
use redistribute_protocol::multiplex::{Multiplexer, Output};
use redistribute_protocol::queue::Queue;
use redistribute_protocol::session::{Config, Event, Session};
use wasm_bindgen::prelude::*;
use web_sys::BroadcastChannel;

use super::sharing::{bus_name, tab_lock};
use super::{field, post, Driver, Inner, Link};
use crate::browser::{request_lock, LockManager};

/// The leader's side of the tabs' bus.
pub(super) struct Leader {
    pub(super) ch: BroadcastChannel,
    /// This leader's id on the bus (tabs ignore a `down` of an earlier leader).
    id: String,
    locks: LockManager,
    /// Tabs whose lock is watched.
    watched: Vec<String>,
    mux: Multiplexer,
}

impl Leader {
    /// Posts `kind` with this leader's id, to one tab or all.
    fn notice(&self, kind: &str, to: Option<&str>) {
        post(&self.ch, kind, to, &[("id", self.id.as_str().into())]);
    }
}

impl Driver {
    /// The driver of a leader tab: connects to the server and announces itself on the bus.
    pub(super) fn new_leader(
        config: Config,
        seed: u64,
        scope: &str,
        locks: LockManager,
        provider: Option<js_sys::Function>,
    ) -> Option<Driver> {
        let session = Session::new(config, seed).ok()?;
        let ch = BroadcastChannel::new(&bus_name(scope)).ok()?;
        let leader = Leader {
            ch,
            id: format!("{seed:016x}"),
            locks,
            watched: Vec::new(),
            mux: Multiplexer::new(),
        };
        leader.notice("leader", None);
        let driver = Driver(Rc::new(RefCell::new(Inner {
            session,
            started: false,
            link: Link::Ws(None),
            handlers: None,
            timer: None,
            waiting: Vec::new(),
            listeners: Default::default(),
            objects: Vec::new(),
            next_object: 0,
            cache: None,
            encode: None,
            decode: None,
            queue: Queue::new(),
            dispatching: false,
            leader: Some(Box::new(leader)),
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

    /// Ends the leader: tabs hear `down`, the socket closes.
    pub(super) fn close_leader(&self) {
        {
            let mut inner = self.0.borrow_mut();
            inner.session.close();
            if let Some(leader) = &inner.leader {
                leader.notice("down", None);
            }
        }
        self.pump();
        if let Some(leader) = &self.0.borrow().leader {
            leader.ch.set_onmessage(None);
            leader.ch.close();
        }
    }
}

impl Inner {
    /// A bus message, seen by the leader.
    pub(super) fn leader_input(&mut self, msg: &JsValue) {
        let (Some(kind), Some(tab)) = (field(msg, "k"), field(msg, "from")) else {
            return;
        };
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let session = &mut self.session;
        match kind.as_str() {
            "hello" => {
                leader.mux.tab_joined(session, &tab);
                // Watched once the tab holds its own lock: a watch requested before the tab's
                // own request would be granted as if the tab were gone.
                let locked = Reflect::get(msg, &"locked".into()).is_ok_and(|v| v.is_truthy());
                if locked {
                    watch(leader, tab);
                }
            }
            "locked" if leader.mux.knows(&tab) => watch(leader, tab),
            "bye" => leader.mux.tab_left(session, &tab),
            "c" => {
                if let Some(frame) = field(msg, "d").and_then(|d| decode_client(&d).ok()) {
                    leader.mux.handle_frame(session, &tab, frame);
                }
            }
            _ => {}
        }
        leader.flush();
    }

    /// The leader session's events, for the multiplexer.
    pub(super) fn leader_event(&mut self, event: Event) {
        if let Some(leader) = self.leader.as_mut() {
            leader.mux.handle_event(&mut self.session, event);
            leader.flush();
        }
    }
}

impl Leader {
    /// Carries out the multiplexer's outputs on the bus.
    fn flush(&mut self) {
        while let Some(output) = self.mux.poll_output() {
            match output {
                Output::Open { tab } => self.notice("open", Some(&tab)),
                Output::Close { tab } => self.notice("down", Some(&tab)),
                Output::Down => self.notice("down", None),
                Output::ConnectFailed { target, reason } => {
                    let message = format!("connecting to {target}: {reason}");
                    post(&self.ch, "cf", None, &[("message", message.into())]);
                }
                Output::Send { tab, frame } => {
                    let text = JsValue::from(encode_server(&frame));
                    post(&self.ch, "s", Some(&tab), &[("d", text)]);
                }
                Output::Broadcast { frame } => {
                    let text = JsValue::from(encode_server(&frame));
                    post(&self.ch, "s", None, &[("d", text)]);
                }
            }
        }
    }
}

/// Forgets a tab when its lock is released, i.e. when it is gone.
fn watch(leader: &mut Leader, tab: String) {
    if leader.watched.contains(&tab) {
        return;
    }
    leader.watched.push(tab.clone());
    let name = leader.ch.name();
    request_lock(&leader.locks, &tab_lock(&tab), false, move |_| {
        // Said on the tab's behalf through a second channel object, so the leader's own
        // handler hears it (a channel object does not hear itself).
        if let Ok(other) = BroadcastChannel::new(&name) {
            post(&other, "bye", None, &[("from", tab.as_str().into())]);
            other.close();
        }
        JsValue::UNDEFINED
    });
}
