//! Tabs sharing one connection, on the virtual clock: a leader session and its fake server
//! ([`Pair`]), a [`Multiplexer`] fed the leader's events, and tabs that each run their own
//! [`Session`] over a virtual connection to it, wired the way the browser driver wires them
//! over its BroadcastChannel (frames cross as text, in order; a tab hears `open`, `down` and
//! frames only while its connection is in the matching state).

use std::collections::BTreeMap;
use std::time::Duration;

use redistribute_protocol::lite::{decode_client, encode_client, encode_server};
use redistribute_protocol::multiplex::{Multiplexer, Output};
use redistribute_protocol::session::{Action, Config, DisconnectReason, Event, Session};
use redistribute_protocol::{Offset, StreamId};

use crate::harness::{offsets, Pair};

/// A tab's virtual connection, as the browser's follower side keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No connection.
    Closed,
    /// `hello` said, waiting for `open`.
    Joining,
    /// Open.
    Open,
}

/// One tab.
pub struct Tab {
    /// The tab's own session.
    pub session: Session,
    /// Its virtual connection.
    pub link: Link,
    /// Every event of its session, in order.
    pub events: Vec<Event>,
}

impl Tab {
    /// The messages its session delivered for a channel, in order.
    pub fn delivered(&self, channel: &str) -> Vec<StreamId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Messages {
                    channel: c,
                    messages,
                } if c == channel => Some(offsets(messages)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The gaps its session reported for a channel.
    pub fn gaps(&self, channel: &str) -> Vec<(StreamId, StreamId)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Gap {
                    channel: c,
                    from,
                    to,
                } if c == channel => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    /// How many times its virtual connection became ready.
    pub fn connects(&self) -> usize {
        let connected = |e: &&Event| matches!(e, Event::Connected { .. });
        self.events.iter().filter(connected).count()
    }
}

/// The leader, its multiplexer and the tabs.
pub struct World {
    /// The leader's session and the server.
    pub pair: Pair,
    /// The multiplexer under test.
    pub mux: Multiplexer,
    /// The tabs by name.
    pub tabs: BTreeMap<String, Tab>,
    /// Every output of the multiplexer, in order.
    pub outputs: Vec<Output>,
    seed: u64,
}

/// A tab's session configuration: the browser's, with quick retries over the bus.
fn tab_config() -> Config {
    let mut config = Config::new(["bus"]);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(500);
    config
}

impl World {
    /// A leader that has started connecting, and no tab.
    pub fn new() -> World {
        let mut world = World {
            pair: Pair::new(Config::new(["ws://leader"]), 3),
            mux: Multiplexer::new(),
            tabs: BTreeMap::new(),
            outputs: Vec::new(),
            seed: 100,
        };
        world.pair.session.connect(world.pair.now);
        world.drive();
        world
    }

    /// A connected leader with these tabs connected to it.
    pub fn with_tabs(names: &[&str]) -> World {
        let mut world = World::new();
        assert!(world.pair.session.is_connected());
        for name in names {
            world.add_tab(name);
        }
        world
    }

    /// A new tab; it connects to the leader.
    pub fn add_tab(&mut self, name: &str) {
        self.seed += 1;
        let mut session = Session::new(tab_config(), self.seed).expect("valid config");
        session.connect(self.pair.now);
        let tab = Tab {
            session,
            link: Link::Closed,
            events: Vec::new(),
        };
        self.tabs.insert(name.to_owned(), tab);
        self.drive();
    }

    /// A tab goes away (closed, or the page was closed).
    pub fn remove_tab(&mut self, name: &str) {
        if let Some(mut tab) = self.tabs.remove(name) {
            tab.session.close();
            self.mux.tab_left(&mut self.pair.session, name);
            self.drive();
        }
    }

    /// A tab by name.
    pub fn tab(&mut self, name: &str) -> &mut Tab {
        self.tabs.get_mut(name).expect("a tab of that name")
    }

    /// Tab `name`'s session subscribes to `channel` from `from` (a command the session
    /// accepts).
    pub fn subscribe(&mut self, name: &str, channel: &str, from: Offset) {
        self.tab(name)
            .session
            .subscribe(channel, from)
            .expect("the session takes the subscribe");
    }

    /// Moves everything until nothing moves, firing the timers due now.
    pub fn drive(&mut self) {
        for _ in 0..100_000 {
            let mut moved = self.pair.pump_io();
            while let Some(event) = self.pair.session.poll_event() {
                moved = true;
                self.pair.events.push((self.pair.now, event.clone()));
                self.mux.handle_event(&mut self.pair.session, event);
            }
            while let Some(output) = self.mux.poll_output() {
                moved = true;
                self.outputs.push(output.clone());
                self.route(output);
            }
            let names: Vec<String> = self.tabs.keys().cloned().collect();
            for name in names {
                moved |= self.pump_tab(&name);
            }
            let now = self.pair.now;
            if self.pair.session.poll_timeout().is_some_and(|t| t <= now) {
                moved = true;
                self.pair.session.handle_timeout(now);
            }
            for tab in self.tabs.values_mut() {
                if tab.session.poll_timeout().is_some_and(|t| t <= now) {
                    moved = true;
                    tab.session.handle_timeout(now);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the world never settled");
    }

    /// A tab's actions, frames and events.
    fn pump_tab(&mut self, name: &str) -> bool {
        let mut moved = false;
        let Some(tab) = self.tabs.get_mut(name) else {
            return false;
        };
        while let Some(action) = tab.session.poll_action() {
            moved = true;
            match action {
                Action::Connect { .. } => {
                    tab.link = Link::Joining;
                    self.mux.tab_joined(&mut self.pair.session, name);
                }
                Action::Close => {
                    if tab.link != Link::Closed {
                        tab.link = Link::Closed;
                        self.mux.tab_left(&mut self.pair.session, name);
                    }
                }
                Action::RefreshToken => {}
            }
        }
        while let Some(frame) = tab.session.poll_transmit() {
            moved = true;
            if tab.link == Link::Open {
                // Over the bus as text, as the browser driver does.
                let frame = decode_client(&encode_client(&frame)).expect("a client frame");
                self.mux.handle_frame(&mut self.pair.session, name, frame);
            }
        }
        while let Some(event) = tab.session.poll_event() {
            moved = true;
            tab.events.push(event);
        }
        moved
    }

    /// Carries out one output of the multiplexer.
    fn route(&mut self, output: Output) {
        let now = self.pair.now;
        let closed = |why: &str| DisconnectReason::transport(None, why);
        match output {
            Output::Open { tab } => {
                if let Some(t) = self.tabs.get_mut(&tab).filter(|t| t.link == Link::Joining) {
                    t.link = Link::Open;
                    t.session.handle_transport_open(now);
                }
            }
            Output::Close { tab } => {
                if let Some(t) = self.tabs.get_mut(&tab).filter(|t| t.link == Link::Open) {
                    t.link = Link::Closed;
                    t.session
                        .handle_transport_closed(now, closed("closed by the leader"));
                }
            }
            Output::Down => {
                for t in self.tabs.values_mut().filter(|t| t.link == Link::Open) {
                    t.link = Link::Closed;
                    t.session
                        .handle_transport_closed(now, closed("the leader is down"));
                }
            }
            Output::ConnectFailed { .. } => {}
            Output::Send { tab, frame } => {
                if let Some(t) = self.tabs.get_mut(&tab).filter(|t| t.link == Link::Open) {
                    t.session.handle_text(&encode_server(&frame), now);
                }
            }
            Output::Broadcast { frame } => {
                let text = encode_server(&frame);
                for t in self.tabs.values_mut().filter(|t| t.link == Link::Open) {
                    t.session.handle_text(&text, now);
                }
            }
        }
    }

    /// Runs the virtual clock forward by `d`, firing every timer on its due time.
    pub fn advance(&mut self, d: Duration) {
        let end = self.pair.now + d;
        self.drive();
        for _ in 0..100_000 {
            let next = self
                .tabs
                .values()
                .filter_map(|t| t.session.poll_timeout())
                .chain(self.pair.session.poll_timeout())
                .min();
            match next {
                Some(at) if at <= end => {
                    self.pair.now = self.pair.now.max(at);
                    let now = self.pair.now;
                    self.pair.session.handle_timeout(now);
                    for t in self.tabs.values_mut() {
                        t.session.handle_timeout(now);
                    }
                    self.drive();
                }
                _ => {
                    self.pair.now = end;
                    self.drive();
                    return;
                }
            }
        }
        panic!("timers keep firing");
    }

    /// The leader loses the server; it reconnects after its backoff.
    pub fn drop_leader(&mut self) {
        if self.pair.transport.is_some() {
            self.pair.cut_transport();
            self.drive();
        }
    }

    /// Another producer appends `n` messages to a channel.
    pub fn append(&mut self, channel: &str, n: u64) -> Vec<StreamId> {
        let out = (0..n)
            .map(|i| self.pair.server.append(channel, crate::harness::body(i)))
            .collect();
        self.drive();
        out
    }

    /// The `subscribe` frames the server received, as (channel, offset asked).
    pub fn server_subscribes(&self) -> Vec<String> {
        self.pair
            .server
            .received_of("subscribe")
            .into_iter()
            .map(|f| encode_client(&f))
            .collect()
    }
}
