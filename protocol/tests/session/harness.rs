//! A `Pair`-style harness: one [`Session`] wired to a scripted in-memory server on a virtual
//! clock. Frames cross instantly; time moves only through [`Pair::advance`], which fires the
//! session's timers in order, so minutes of backoff run in microseconds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use redistribute_protocol::history::PageFrame;
use redistribute_protocol::session::{Action, Config, DisconnectReason, Event, Session};
use redistribute_protocol::{
    decode_client, encode_client, encode_server, ClientFrame, ErrorCode, Fields, Message, Offset,
    PresenceMember, ServerFrame, StreamId, PROTOCOL_VERSION,
};

/// Milliseconds as a `Duration`.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A one-field message body `{"n": n}`.
pub fn body(n: u64) -> Fields {
    let mut f = Fields::new();
    f.insert("n".into(), n.into());
    f
}

/// The offsets of a list of messages.
pub fn offsets(messages: &[Message]) -> Vec<StreamId> {
    messages.iter().map(|m| m.offset).collect()
}

/// A server that behaves like the real one for one connection at a time, with fault knobs.
#[derive(Debug, Default)]
pub struct FakeServer {
    /// Every channel's entries, in offset order.
    pub streams: BTreeMap<String, Vec<Message>>,
    /// Next entry id's ms part.
    clock: u64,
    /// Idempotency keys already stored, with their offsets.
    keys: HashMap<String, StreamId>,
    /// Channels the current connection subscribes to.
    pub subs: BTreeSet<String>,
    /// Targets whose transport cannot be opened.
    pub down: HashSet<String>,
    /// Frame types received but never acted on or answered.
    pub swallow: HashSet<&'static str>,
    /// Frame types acted on whose reply is lost.
    pub lose_replies: HashSet<&'static str>,
    /// Token required in `connect`, when set.
    pub token: Option<String>,
    /// Channels whose `subscribe` is refused with `forbidden`.
    pub forbidden: HashSet<String>,
    /// Replay this many entries at or before the requested offset on subscribe (a sloppy seam).
    pub overlap: usize,
    /// Every frame received, with the target of its connection.
    pub received: Vec<(String, ClientFrame)>,
    /// Frames to deliver to the client.
    pub outbox: VecDeque<ServerFrame>,
    /// Raw texts to deliver to the client, each before the frames of `outbox`.
    pub raw: VecDeque<String>,
    /// Per channel: answer this many more `subscribe`s with this error code (not subscribing).
    pub refuse: HashMap<String, (ErrorCode, usize)>,
    /// Per channel: the highest offset trimmed away ([`FakeServer::trim`]).
    pub trimmed: HashMap<String, StreamId>,
}

/// The wire `type` of a client frame.
pub fn kind(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Connect { .. } => "connect",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Publish { .. } => "publish",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::History { .. } => "history",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::PresenceStats { .. } => "presence_stats",
    }
}

impl FakeServer {
    /// Appends an entry as another producer would, fanning it out to the live connection.
    pub fn append(&mut self, channel: &str, fields: Fields) -> StreamId {
        self.clock += 1;
        let offset = StreamId::new(1000 + self.clock, 0);
        let message = Message { offset, fields };
        self.streams
            .entry(channel.to_owned())
            .or_default()
            .push(message.clone());
        if self.subs.contains(channel) {
            self.outbox.push_back(ServerFrame::Messages {
                channel: channel.to_owned(),
                messages: vec![message],
            });
        }
        offset
    }

    /// Removes a channel's `n` oldest entries, as `maxlen` trimming would: a later subscribe
    /// from before them is answered `truncated` with a gap, as the real server does.
    pub fn trim(&mut self, channel: &str, n: usize) {
        let Some(stream) = self.streams.get_mut(channel) else {
            return;
        };
        let removed: Vec<Message> = stream.drain(..n.min(stream.len())).collect();
        if let Some(last) = removed.last() {
            self.trimmed.insert(channel.to_owned(), last.offset);
        }
    }

    /// The offsets stored in a channel.
    pub fn stored(&self, channel: &str) -> Vec<StreamId> {
        self.streams.get(channel).map_or(vec![], |s| offsets(s))
    }

    /// The frames of one type received so far.
    pub fn received_of(&self, kind_name: &str) -> Vec<ClientFrame> {
        self.received
            .iter()
            .filter(|(_, f)| kind(f) == kind_name)
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn reply(&mut self, frame_kind: &str, frame: ServerFrame) {
        if !self.lose_replies.contains(frame_kind) {
            self.outbox.push_back(frame);
        }
    }

    fn on_close(&mut self) {
        self.subs.clear();
        self.outbox.clear();
        self.raw.clear();
    }

    /// Handles one frame as the real server would.
    pub fn handle(&mut self, target: &str, frame: ClientFrame) {
        // Every frame the session sends must survive the wire and the server's decoder.
        let text = encode_client(&frame);
        assert_eq!(decode_client(&text).as_ref(), Ok(&frame), "{text}");
        self.received.push((target.to_owned(), frame.clone()));
        let k = kind(&frame);
        if self.swallow.contains(k) {
            return;
        }
        match frame {
            ClientFrame::Connect { id, token } => {
                let reply = if self.token.is_some() && token != self.token {
                    ServerFrame::Error {
                        id: Some(id),
                        code: ErrorCode::Unauthorized,
                        message: "bad token".into(),
                    }
                } else {
                    ServerFrame::Connected {
                        id,
                        client: "c1".into(),
                        version: PROTOCOL_VERSION,
                    }
                };
                self.reply(k, reply);
            }
            ClientFrame::Subscribe {
                id,
                channel,
                offset,
                rewind,
                ..
            } => {
                if let Some((code, n)) = self.refuse.get_mut(&channel).filter(|(_, n)| *n > 0) {
                    *n -= 1;
                    let reply = ServerFrame::Error {
                        id: Some(id),
                        code: *code,
                        message: format!("refused with {code}"),
                    };
                    return self.reply(k, reply);
                }
                if self.forbidden.contains(&channel) {
                    let reply = ServerFrame::Error {
                        id: Some(id),
                        code: ErrorCode::Forbidden,
                        message: "no".into(),
                    };
                    return self.reply(k, reply);
                }
                let stream = self.streams.get(&channel).cloned().unwrap_or_default();
                let trimmed_to = self.trimmed.get(&channel).copied();
                let tip = stream
                    .last()
                    .map(|m| m.offset)
                    .or(trimmed_to)
                    .unwrap_or(StreamId::ZERO);
                // The server resolves a rewind to the offset before the last `rewind` entries.
                let rewound = rewind.map(|n| {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    match stream.len().checked_sub(n + 1) {
                        Some(i) => Offset::Id(stream[i].offset),
                        None => Offset::Id(trimmed_to.unwrap_or(StreamId::ZERO)),
                    }
                });
                let asked = rewound.or(offset).unwrap_or(Offset::Latest);
                let after = match asked {
                    Offset::Latest => tip,
                    Offset::Earliest => StreamId::ZERO,
                    Offset::Id(x) => x,
                };
                self.subs.insert(channel.clone());
                // `0` asks for whatever is retained: never a gap.
                let trimmed = self
                    .trimmed
                    .get(&channel)
                    .copied()
                    .filter(|t| *t > after && asked != Offset::Earliest);
                let reply = ServerFrame::Subscribed {
                    id,
                    channel: channel.clone(),
                    offset: trimmed.unwrap_or(after),
                    truncated: trimmed.is_some(),
                };
                self.reply(k, reply);
                if let Some(to) = trimmed {
                    let gap = ServerFrame::Gap {
                        channel: channel.clone(),
                        from: after,
                        to,
                    };
                    self.outbox.push_back(gap);
                }
                let old = stream.iter().filter(|m| m.offset <= after).count();
                let from = old.saturating_sub(self.overlap);
                let history: Vec<Message> = stream[from..].to_vec();
                if !history.is_empty() {
                    self.outbox.push_back(ServerFrame::Messages {
                        channel,
                        messages: history,
                    });
                }
            }
            ClientFrame::Unsubscribe { id, channel } => {
                let reply = match self.subs.remove(&channel) {
                    true => ServerFrame::Unsubscribed { id, channel },
                    false => ServerFrame::Error {
                        id: Some(id),
                        code: ErrorCode::NotFound,
                        message: format!("not subscribed to {channel}"),
                    },
                };
                self.reply(k, reply);
            }
            ClientFrame::Publish {
                id,
                channel,
                fields,
                idempotency_key,
                ..
            } => {
                let known = idempotency_key.as_ref().and_then(|key| self.keys.get(key));
                let offset = match known {
                    Some(&offset) => offset,
                    None => {
                        let offset = self.append(&channel, fields);
                        if let Some(key) = idempotency_key {
                            self.keys.insert(key, offset);
                        }
                        offset
                    }
                };
                let reply = ServerFrame::Published {
                    id,
                    channel,
                    offset,
                };
                self.reply(k, reply);
            }
            ClientFrame::Ack { id, offsets, .. } => {
                let count = offsets.len() as u64;
                self.reply(k, ServerFrame::Acked { id, count });
            }
            ClientFrame::Ping { id } => self.reply(k, ServerFrame::Pong { id }),
            ClientFrame::History {
                id,
                channel,
                from,
                to,
                limit,
                reverse,
            } => {
                let stream = self.streams.get(&channel).cloned().unwrap_or_default();
                let after = from.and_then(Offset::after).unwrap_or(StreamId::ZERO);
                let through = to.unwrap_or(StreamId::MAX);
                let mut range: Vec<Message> = stream
                    .into_iter()
                    .filter(|m| m.offset > after && m.offset <= through)
                    .collect();
                if reverse {
                    range.reverse();
                }
                let limit = limit.unwrap_or(100) as usize;
                let more = range.len() > limit;
                range.truncate(limit);
                let next = match (range.last(), reverse) {
                    (Some(m), false) => m.offset,
                    (Some(m), true) => m.offset.predecessor().unwrap_or_default(),
                    (None, _) => after,
                };
                let reply = ServerFrame::HistoryPage(Box::new(PageFrame {
                    id,
                    channel,
                    messages: range,
                    next,
                    more,
                    truncated: false,
                    gap: None,
                }));
                self.reply(k, reply);
            }
            // Presence: this connection is the one member of every channel it subscribed.
            ClientFrame::Presence { id, channel } => {
                let members = match self.subs.contains(&channel) {
                    true => vec![PresenceMember {
                        client: "c1".into(),
                        user: None,
                        info: None,
                    }],
                    false => vec![],
                };
                let reply = ServerFrame::PresenceMembers {
                    id,
                    channel,
                    members,
                };
                self.reply(k, reply);
            }
            ClientFrame::PresenceStats { id, channel } => {
                let n = u64::from(self.subs.contains(&channel));
                let reply = ServerFrame::PresenceCounts {
                    id,
                    channel,
                    clients: n,
                    users: n,
                };
                self.reply(k, reply);
            }
        }
    }
}

/// A session and a fake server joined by an instant in-memory transport.
pub struct Pair {
    /// The session under test.
    pub session: Session,
    /// The scripted server.
    pub server: FakeServer,
    /// The virtual clock.
    pub now: Duration,
    /// The target of the open transport, if any.
    pub transport: Option<String>,
    /// Every event, in order, with its time.
    pub events: Vec<(Duration, Event)>,
    /// Every action, in order, with its time.
    pub actions: Vec<(Duration, Action)>,
    /// Keep the server's frames on the wire (not delivered) until cleared, as a slow link
    /// would: the session's frames still reach the server at once.
    pub hold: bool,
}

impl Pair {
    /// A pair whose session has not connected yet.
    pub fn new(config: Config, seed: u64) -> Pair {
        Pair {
            session: Session::new(config, seed).expect("valid config"),
            server: FakeServer::default(),
            now: Duration::ZERO,
            transport: None,
            events: Vec::new(),
            actions: Vec::new(),
            hold: false,
        }
    }

    /// A connected pair with default config over these targets.
    pub fn connected(targets: &[&str]) -> Pair {
        let mut pair = Pair::new(Config::new(targets.iter().copied()), 7);
        pair.start();
        assert!(pair.session.is_connected());
        pair
    }

    /// Calls `connect` and runs until quiet.
    pub fn start(&mut self) {
        self.session.connect(self.now);
        self.drive();
    }

    /// Moves every output to its destination until nothing moves, firing timers due now.
    pub fn drive(&mut self) {
        for _ in 0..100_000 {
            let mut moved = self.pump_io();
            while let Some(event) = self.session.poll_event() {
                moved = true;
                self.events.push((self.now, event));
            }
            if let Some(at) = self.session.poll_timeout() {
                if at <= self.now {
                    moved = true;
                    self.session.handle_timeout(self.now);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Carries out the session's actions and moves frames both ways, once; leaves its events
    /// and timers to the caller. Whether anything moved.
    pub fn pump_io(&mut self) -> bool {
        let mut moved = false;
        while let Some(action) = self.session.poll_action() {
            moved = true;
            self.actions.push((self.now, action.clone()));
            match action {
                Action::Connect { target } => {
                    assert!(
                        self.transport.is_none(),
                        "connect while a transport is open"
                    );
                    if self.server.down.contains(&target) {
                        let reason = DisconnectReason::transport(None, "refused");
                        self.session.handle_transport_closed(self.now, reason);
                    } else {
                        self.transport = Some(target);
                        self.session.handle_transport_open(self.now);
                    }
                }
                Action::Close => {
                    if self.transport.take().is_some() {
                        self.server.on_close();
                    }
                }
                // Recorded in `actions`; tests answer with `refresh_token`.
                Action::RefreshToken => {}
            }
        }
        while let Some(frame) = self.session.poll_transmit() {
            moved = true;
            let target = self
                .transport
                .clone()
                .expect("frame sent without transport");
            self.server.handle(&target, frame);
        }
        while let Some(text) = self.deliverable(|s| s.raw.pop_front()) {
            moved = true;
            assert!(self.transport.is_some(), "server frame without transport");
            self.session.handle_text(&text, self.now);
        }
        while let Some(frame) = self.deliverable(|s| s.outbox.pop_front()) {
            moved = true;
            assert!(self.transport.is_some(), "server frame without transport");
            // Over the wire as text, as drivers do.
            self.session.handle_text(&encode_server(&frame), self.now);
        }
        moved
    }

    /// The server's next frame of a queue, unless the wire holds them.
    fn deliverable<T>(&mut self, next: impl FnOnce(&mut FakeServer) -> Option<T>) -> Option<T> {
        if self.hold {
            return None;
        }
        next(&mut self.server)
    }

    /// Runs the virtual clock forward by `d`, firing every timer on its due time.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.drive();
        let mut fired = 0;
        while let Some(at) = self.session.poll_timeout() {
            if at > end {
                break;
            }
            fired += 1;
            assert!(fired < 100_000, "timers keep firing at {at:?}");
            self.now = self.now.max(at);
            self.session.handle_timeout(self.now);
            self.drive();
        }
        self.now = end;
        self.drive();
    }

    /// The transport drops (as a network failure would), and the session is told.
    pub fn drop_transport(&mut self) {
        self.cut_transport();
        self.drive();
    }

    /// The transport drops and the session is told; nothing else moves yet.
    pub fn cut_transport(&mut self) {
        self.transport.take().expect("no transport to drop");
        self.server.on_close();
        let reason = DisconnectReason::transport(Some(1006), "dropped");
        self.session.handle_transport_closed(self.now, reason);
    }

    /// Runs until the session is connected again, at most `limit` of virtual time.
    pub fn reconnect_within(&mut self, limit: Duration) {
        let end = self.now + limit;
        while !self.session.is_connected() {
            assert!(self.now < end, "not reconnected within {limit:?}");
            let step = self
                .session
                .poll_timeout()
                .expect("a timer while disconnected");
            self.advance(step.saturating_sub(self.now).max(Duration::from_micros(1)));
        }
    }

    /// Takes the events so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// The messages delivered so far for a channel, in order (events are kept).
    pub fn delivered(&self, channel: &str) -> Vec<StreamId> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Messages {
                    channel: c,
                    messages,
                } if c == channel => Some(offsets(messages)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The targets of every `Connect` action, with their times.
    pub fn connects(&self) -> Vec<(Duration, String)> {
        self.actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Connect { target } => Some((*t, target.clone())),
                Action::Close | Action::RefreshToken => None,
            })
            .collect()
    }
}

/// Runs a model-based test: `PROPTEST_CASES` (default 256) random op sequences drawn from
/// `ops`, each given to `run`, which returns what went wrong; panics with the shrunk failure.
pub fn check_model<S: proptest::strategy::Strategy>(
    ops: S,
    run: impl Fn(&S::Value) -> Result<(), String>,
) {
    use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(err) = runner.run(&ops, |ops| run(&ops).map_err(TestCaseError::fail)) {
        panic!("{err}");
    }
}
