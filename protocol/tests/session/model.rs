//! Model-based test of the session: random interleavings of subscribes (any offset),
//! replacing subscribes and resubscribes, resumes after a local overflow, unsubscribes,
//! messages from other producers, publishes, lost replies, server frames held on the wire,
//! transient and permanent refusals, dropped transports, targets going down, undecodable
//! garbage and the passing of time, checked against what the application must see:
//!
//! - per subscription, messages arrive once, in offset order, and only stored ones; a resume
//!   after an overflow (the application dropped its last few messages and resubscribes after
//!   the last one it kept) continues the same subscription;
//! - every subscription the application still holds at the end (not unsubscribed, not ended by
//!   a permanent error) has received every message stored after its start;
//! - no subscription ends because of a transient error;
//! - every request ends exactly once (its success event or `RequestFailed`);
//! - subscription states: each change is announced once, messages and gaps arrive only while
//!   `subscribed`, a lost subscription is announced `unsubscribed` with its error right after
//!   the loss, [`Session::subscription_state`] and [`Session::state`] always agree with what
//!   was announced, and after healing every held subscription is `subscribed` and every ended
//!   one `unsubscribed`.
//!
//! [`Session::subscription_state`]: redistribute_protocol::session::Session::subscription_state
//! [`Session::state`]: redistribute_protocol::session::Session::state
//!
//! `PROPTEST_CASES` sets the number of cases (default 256).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use redistribute_protocol::session::{
    ClientState, Config, Event, PublishOptions, RequestId, SubscriptionState,
};
use redistribute_protocol::{ErrorCode, Offset, StreamId};

use crate::harness::{body, check_model, Pair};

const CHANNELS: [&str; 2] = ["a", "b"];
const TARGETS: [&str; 2] = ["ws://one", "ws://two"];

#[derive(Debug, Clone)]
enum At {
    Latest,
    Earliest,
    /// Where the session is (its own saved offset), as an application resuming would.
    Saved,
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(usize, At),
    /// `resubscribe` instead of `subscribe`: a new subscription behind a barrier.
    Resubscribe(usize, At),
    /// The application's buffer overflowed: it lost its last `n` messages and resumes.
    Resume(usize, u8),
    /// Hold the server's frames on the wire, or let them through.
    Hold(bool),
    Unsubscribe(usize),
    Append(usize, u8),
    Publish(usize),
    LoseReplies(&'static str, bool),
    RefuseTransient(usize, u8),
    Forbid(usize, bool),
    DropTransport,
    TargetDown(usize, bool),
    Garbage,
    /// The driver learnt the network is back (`online`, page visible): `retry_now`.
    RetryNow,
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let ch = 0..CHANNELS.len();
    let at = prop_oneof![Just(At::Latest), Just(At::Earliest), Just(At::Saved)];
    prop_oneof![
        3 => (ch.clone(), at.clone()).prop_map(|(c, a)| Op::Subscribe(c, a)),
        2 => (ch.clone(), at).prop_map(|(c, a)| Op::Resubscribe(c, a)),
        2 => (ch.clone(), 0..4u8).prop_map(|(c, n)| Op::Resume(c, n)),
        1 => any::<bool>().prop_map(Op::Hold),
        1 => ch.clone().prop_map(Op::Unsubscribe),
        4 => (ch.clone(), 1..5u8).prop_map(|(c, n)| Op::Append(c, n)),
        2 => ch.clone().prop_map(Op::Publish),
        1 => (prop_oneof![Just("subscribe"), Just("publish"), Just("unsubscribe")], any::<bool>())
            .prop_map(|(k, on)| Op::LoseReplies(k, on)),
        1 => (ch.clone(), 1..6u8).prop_map(|(c, n)| Op::RefuseTransient(c, n)),
        1 => (ch, any::<bool>()).prop_map(|(c, on)| Op::Forbid(c, on)),
        2 => Just(Op::DropTransport),
        1 => (0..TARGETS.len(), any::<bool>()).prop_map(|(t, on)| Op::TargetDown(t, on)),
        1 => Just(Op::Garbage),
        1 => Just(Op::RetryNow),
        3 => (1..20_000u16).prop_map(Op::Advance),
    ]
}

/// One subscription the application asked for.
#[derive(Debug)]
struct Epoch {
    request: RequestId,
    /// Delivery starts after this offset, once known.
    start: Option<StreamId>,
    delivered: Vec<StreamId>,
    /// Unsubscribed, replaced, refused or lost: nothing more is owed.
    ended: bool,
}

#[derive(Default)]
struct Model {
    epochs: BTreeMap<&'static str, Epoch>,
    /// Outcomes per request id.
    outcomes: HashMap<RequestId, u32>,
    requests: Vec<RequestId>,
    seen_events: usize,
    /// The subscription state announced last, per channel.
    states: HashMap<String, SubscriptionState>,
    /// Channels lost whose `unsubscribed` announcement is due.
    lost: HashSet<String>,
    /// The client state announced last.
    client: Option<ClientState>,
}

impl Model {
    fn on_event(&mut self, pair: &Pair, event: &Event) -> Result<(), String> {
        match event {
            Event::Subscribed {
                id,
                channel,
                offset,
                resumed,
                ..
            } => {
                if !resumed {
                    *self.outcomes.entry(*id).or_default() += 1;
                }
                if let Some(epoch) = self.epoch(channel) {
                    if epoch.request == *id && epoch.start.is_none() {
                        epoch.start = Some(*offset);
                    }
                }
            }
            Event::Messages { channel, messages } => {
                let stored = pair.server.stored(channel);
                let Some(epoch) = self.epoch(channel) else {
                    return Err(format!("messages on {channel} with no subscription"));
                };
                for m in messages {
                    if let Some(last) = epoch.delivered.last() {
                        if m.offset <= *last {
                            return Err(format!("{channel}: {} after {last}", m.offset));
                        }
                    }
                    if epoch.start.is_some_and(|s| m.offset <= s) {
                        return Err(format!("{channel}: {} at or before the start", m.offset));
                    }
                    if !stored.contains(&m.offset) {
                        return Err(format!("{channel}: {} was never stored", m.offset));
                    }
                    epoch.delivered.push(m.offset);
                }
            }
            Event::SubscriptionLost { channel, error } => {
                if error.is_transient() {
                    return Err(format!("{channel} lost to a transient error: {error}"));
                }
                if let Some(epoch) = self.epoch(channel) {
                    epoch.ended = true;
                }
            }
            Event::RequestFailed { id, .. } => {
                *self.outcomes.entry(*id).or_default() += 1;
                for epoch in self.epochs.values_mut() {
                    if epoch.request == *id {
                        epoch.ended = true;
                    }
                }
            }
            Event::Published { id, .. } | Event::Unsubscribed { id, .. } => {
                *self.outcomes.entry(*id).or_default() += 1;
            }
            _ => {}
        }
        self.check_states(event)
    }

    /// The state invariants of one event (see the module documentation).
    fn check_states(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::SubscriptionState {
                channel,
                state,
                error,
            } => {
                let last = self.states.insert(channel.clone(), *state);
                if last.unwrap_or(SubscriptionState::Unsubscribed) == *state {
                    return Err(format!("{channel}: {state:?} announced twice"));
                }
                if self.lost.remove(channel)
                    && (*state != SubscriptionState::Unsubscribed || error.is_none())
                {
                    return Err(format!("{channel} lost, then {state:?} ({error:?})"));
                }
            }
            Event::SubscriptionLost { channel, .. } => {
                self.lost.insert(channel.clone());
            }
            Event::Messages { channel, .. } | Event::Gap { channel, .. } => {
                let state = self.states.get(channel);
                if state != Some(&SubscriptionState::Subscribed) {
                    return Err(format!("{channel}: data while {state:?}"));
                }
            }
            Event::State { state } => {
                if self.client == Some(*state) {
                    return Err(format!("client state {state:?} announced twice"));
                }
                self.client = Some(*state);
            }
            _ => {}
        }
        Ok(())
    }

    /// The channel's live epoch.
    fn epoch(&mut self, channel: &str) -> Option<&mut Epoch> {
        self.epochs
            .iter_mut()
            .find(|(c, _)| **c == channel)
            .map(|(_, e)| e)
            .filter(|e| !e.ended)
    }

    fn observe(&mut self, pair: &Pair) -> Result<(), String> {
        while self.seen_events < pair.events.len() {
            let event = pair.events[self.seen_events].1.clone();
            self.seen_events += 1;
            self.on_event(pair, &event)?;
        }
        if !self.lost.is_empty() {
            return Err(format!("lost without an announcement: {:?}", self.lost));
        }
        for channel in CHANNELS {
            let announced = self
                .states
                .get(channel)
                .copied()
                .unwrap_or(SubscriptionState::Unsubscribed);
            if pair.session.subscription_state(channel) != announced {
                return Err(format!("{channel}: the session and its events disagree"));
            }
        }
        if self.client.is_some_and(|c| c != pair.session.state()) {
            return Err("the client state and its events disagree".into());
        }
        Ok(())
    }
}

/// Starts a new epoch of `channel` with a subscribe or resubscribe from `at`.
fn begin(pair: &mut Pair, model: &mut Model, channel: &'static str, at: &At, replace: bool) {
    let offset = match at {
        At::Latest => Offset::Latest,
        At::Earliest => Offset::Earliest,
        At::Saved => pair
            .session
            .offset(channel)
            .map_or(Offset::Earliest, Offset::Id),
    };
    let sent = match replace {
        true => pair.session.resubscribe(channel, offset),
        false => pair.session.subscribe(channel, offset),
    };
    let Ok(request) = sent else {
        return;
    };
    model.requests.push(request);
    if let Some(old) = model.epochs.get_mut(channel) {
        old.ended = true;
    }
    let start = match offset {
        Offset::Earliest => Some(StreamId::ZERO),
        Offset::Id(id) => Some(id),
        Offset::Latest => None,
    };
    model.epochs.insert(
        channel,
        Epoch {
            request,
            start,
            delivered: Vec::new(),
            ended: false,
        },
    );
}

/// The application dropped the last `lost` messages of `channel`'s live epoch (its buffer was
/// full) and resumes after the last one it kept: the same epoch goes on.
fn resume(pair: &mut Pair, model: &mut Model, channel: &'static str, lost: u8) {
    let Some(epoch) = model.epoch(channel) else {
        return;
    };
    let Some(start) = epoch.start else {
        return;
    };
    let keep = epoch.delivered.len().saturating_sub(usize::from(lost));
    let from = epoch.delivered.get(keep.wrapping_sub(1)).copied();
    let from = from.unwrap_or(start);
    if let Ok(request) = pair.session.resubscribe(channel, Offset::Id(from)) {
        epoch.delivered.truncate(keep);
        epoch.request = request;
        model.requests.push(request);
    }
}

fn apply(pair: &mut Pair, model: &mut Model, op: &Op) -> Result<(), String> {
    match op {
        Op::Subscribe(c, at) => begin(pair, model, CHANNELS[*c], at, false),
        Op::Resubscribe(c, at) => begin(pair, model, CHANNELS[*c], at, true),
        Op::Resume(c, lost) => resume(pair, model, CHANNELS[*c], *lost),
        Op::Hold(on) => pair.hold = *on,
        Op::Unsubscribe(c) => {
            let channel = CHANNELS[*c];
            if let Ok(request) = pair.session.unsubscribe(channel) {
                model.requests.push(request);
            }
            if let Some(epoch) = model.epochs.get_mut(channel) {
                epoch.ended = true;
            }
        }
        Op::Append(c, n) => {
            for i in 0..*n {
                pair.server.append(CHANNELS[*c], body(u64::from(i)));
            }
        }
        Op::Publish(c) => {
            if let Ok(request) =
                pair.session
                    .publish(CHANNELS[*c], body(7), PublishOptions::default())
            {
                model.requests.push(request);
            }
        }
        Op::LoseReplies(kind, on) => {
            if *on {
                pair.server.lose_replies.insert(kind);
            } else {
                pair.server.lose_replies.remove(kind);
            }
        }
        Op::RefuseTransient(c, n) => {
            let code = [
                ErrorCode::Unavailable,
                ErrorCode::RateLimited,
                ErrorCode::Internal,
            ][usize::from(*n) % 3];
            pair.server
                .refuse
                .insert(CHANNELS[*c].to_owned(), (code, usize::from(*n)));
        }
        Op::Forbid(c, on) => {
            if *on {
                pair.server.forbidden.insert(CHANNELS[*c].to_owned());
            } else {
                pair.server.forbidden.remove(CHANNELS[*c]);
            }
        }
        Op::DropTransport => {
            if pair.transport.is_some() {
                pair.drop_transport();
            }
        }
        Op::TargetDown(t, on) => {
            if *on {
                pair.server.down.insert(TARGETS[*t].to_owned());
            } else {
                pair.server.down.remove(TARGETS[*t]);
            }
        }
        Op::Garbage => {
            if pair.transport.is_some() {
                pair.server.raw.push_back("{\"type\":".into());
            }
        }
        Op::RetryNow => pair.session.retry_now(pair.now),
        Op::Advance(ms) => pair.advance(Duration::from_millis(u64::from(*ms))),
    }
    pair.drive();
    model.observe(pair)
}

fn run(ops: &[Op]) -> Result<(), String> {
    let mut config = Config::new(TARGETS);
    // Idle probes on: a connection whose frames are held too long is declared dead.
    config.ping_interval = Some(Duration::from_secs(5));
    let mut pair = Pair::new(config, 11);
    pair.start();
    let mut model = Model::default();
    for op in ops {
        apply(&mut pair, &mut model, op).map_err(|e| format!("after {op:?}: {e}"))?;
    }
    // Heal every fault and let time pass: everything owed must arrive.
    pair.hold = false;
    pair.server.down.clear();
    pair.server.lose_replies.clear();
    pair.server.forbidden.clear();
    pair.advance(Duration::from_secs(600));
    model.observe(&pair)?;
    if !pair.session.is_connected() {
        return Err("not connected after healing".into());
    }
    for (channel, epoch) in &model.epochs {
        if epoch.ended {
            continue;
        }
        let start = epoch
            .start
            .ok_or_else(|| format!("{channel}: the subscribe was never answered"))?;
        let owed: Vec<StreamId> = pair
            .server
            .stored(channel)
            .into_iter()
            .filter(|o| *o > start)
            .collect();
        if epoch.delivered != owed {
            return Err(format!(
                "{channel}: delivered {:?}, owed {owed:?} (start {start})",
                epoch.delivered
            ));
        }
    }
    for (channel, epoch) in &model.epochs {
        let want = if epoch.ended {
            SubscriptionState::Unsubscribed
        } else {
            SubscriptionState::Subscribed
        };
        if pair.session.subscription_state(channel) != want {
            return Err(format!("{channel}: {want:?} expected after healing"));
        }
    }
    for request in &model.requests {
        let n = model.outcomes.get(request).copied().unwrap_or(0);
        if n != 1 {
            return Err(format!("request {request:?} ended {n} times"));
        }
    }
    Ok(())
}

#[test]
fn the_session_matches_the_model() {
    check_model(prop::collection::vec(op(), 1..60), |ops| run(ops));
}
