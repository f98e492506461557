//! The subscription table: per channel, where delivery resumes and which messages are new.
//!
//! Each channel keeps one *position*: the offset after which the next message must come. It is
//! the last delivered offset, or the resume point the server named in `subscribed` when that is
//! later. Re-subscribing after a reconnect asks for the messages after the position, so the new
//! connection continues exactly where the old one stopped; messages at or before the position
//! (a replay overlapping the seam, a duplicate) are dropped. Offsets compare numerically
//! ([`StreamId`]'s `Ord`).
//!
//! A `subscribed` reply with `truncated: true` does not move a known position: whether its
//! offset names the first deliverable entry or the last removed one, keeping the older position
//! can only cause a repeated gap report on a reconnect, never a lost or duplicated message.

use std::time::Duration;

use super::event::SubscriptionState;
use crate::frame::Message;
use crate::offset::{Offset, StreamId};
use crate::table::Map;

/// What the session knows about one subscribed channel.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// The offset the caller asked for.
    requested: Offset,
    /// Delivery continues after this offset; `None` until one is known (`$` or `0` before any
    /// reply or message).
    position: Option<StreamId>,
    /// The caller's `subscribe` request still waiting for its reply, if any.
    pub(crate) waiter: Option<u64>,
    /// The id of the `subscribe` frame in flight on the current connection, if any.
    pub(crate) inflight: Option<u64>,
    /// `(group, consumer)` of a consumer-group subscription.
    pub(crate) group: Option<(String, String)>,
    /// Consecutive transient failures of its `subscribe` (reset by `subscribed`).
    pub(crate) failures: u32,
    /// When to send `subscribe` again after a transient failure, on the open connection.
    pub(crate) retry_at: Option<Duration>,
    /// The session's own `unsubscribe` (its id) whose reply this subscription waits for
    /// before its `subscribe` goes out (see [`Session::resubscribe`](super::Session::resubscribe)).
    pub(crate) barrier: Option<u64>,
    /// Start with the channel's last this many messages (until a position is known).
    pub(crate) rewind: Option<u64>,
    /// The state last announced to the application ([`Event::SubscriptionState`]).
    ///
    /// [`Event::SubscriptionState`]: super::Event::SubscriptionState
    pub(crate) announced: SubscriptionState,
}

impl Subscription {
    /// A new subscription starting at `requested`. A concrete offset is a known position at
    /// once, so messages at or before it are never delivered.
    pub(crate) fn new(requested: Offset) -> Self {
        let position = match requested {
            Offset::Id(id) => Some(id),
            Offset::Latest | Offset::Earliest => None,
        };
        Subscription {
            requested,
            position,
            waiter: None,
            inflight: None,
            group: None,
            failures: 0,
            retry_at: None,
            barrier: None,
            rewind: None,
            announced: SubscriptionState::Unsubscribed,
        }
    }

    /// A subscription starting with the channel's last `rewind` messages, then live.
    pub(crate) fn new_rewind(rewind: u64) -> Self {
        Subscription {
            rewind: Some(rewind),
            ..Subscription::new(Offset::Latest)
        }
    }

    /// A consumer-group subscription as `consumer` of `group`; `requested` is where the group
    /// starts if the subscribe creates it. It has no position: the group decides what each
    /// consumer gets, and a redelivered entry is older than what came before it.
    pub(crate) fn new_group(requested: Offset, group: String, consumer: String) -> Self {
        Subscription {
            group: Some((group, consumer)),
            ..Subscription::new(requested)
        }
    }

    /// The offset to put in the next `subscribe` frame: the position when known, else what
    /// the caller asked for.
    pub(crate) fn resume_offset(&self) -> Offset {
        self.position.map_or(self.requested, Offset::Id)
    }

    /// The `offset` and `rewind` of the next `subscribe` frame: from the position when one is
    /// known (a rewound subscription resumes from it after a reconnect, it does not rewind
    /// again), else what the caller asked for.
    pub(crate) fn resume_from(&self) -> (Option<Offset>, Option<u64>) {
        match (self.position, self.rewind) {
            (None, Some(rewind)) => (None, Some(rewind)),
            _ => (Some(self.resume_offset()), None),
        }
    }

    /// The position, if known.
    pub(crate) fn position(&self) -> Option<StreamId> {
        self.position
    }

    /// Records the server's resume point from a `subscribed` reply.
    pub(crate) fn on_subscribed(&mut self, offset: StreamId, truncated: bool) {
        if self.group.is_some() {
            return;
        }
        match self.position {
            None => self.position = Some(offset),
            Some(p) if !truncated && offset > p => self.position = Some(offset),
            Some(_) => {}
        }
    }

    /// Whether its `subscribe` is unanswered on this connection (in flight, waiting to be sent
    /// again after a transient failure, or waiting for the old subscription's `unsubscribed`):
    /// until the reply, the channel's messages and gaps belong to a subscription this one
    /// replaces.
    pub(crate) fn awaiting_reply(&self) -> bool {
        self.inflight.is_some() || self.retry_at.is_some() || self.barrier.is_some()
    }

    /// Records a reported gap: the entries in `(from, to]` are gone, so the position moves to
    /// `to` when the gap starts at or before it (a resume then does not report it again).
    pub(crate) fn on_gap(&mut self, from: StreamId, to: StreamId) {
        if self.group.is_some() {
            return;
        }
        if let Some(p) = self.position {
            if from <= p && to > p {
                self.position = Some(to);
            }
        }
    }

    /// Keeps the messages after the position, in order, and advances the position past them.
    pub(crate) fn accept(&mut self, messages: Vec<Message>) -> Vec<Message> {
        if self.group.is_some() {
            // Redeliveries (pending entries after a reconnect, reclaimed entries) are the
            // point of a group: pass everything on.
            return messages;
        }
        let mut fresh = Vec::with_capacity(messages.len());
        for m in messages {
            if self.position.is_none_or(|p| m.offset > p) {
                self.position = Some(m.offset);
                fresh.push(m);
            }
        }
        fresh
    }
}

/// All subscriptions, by channel name (ordered, so re-subscribes go out in a stable order).
#[derive(Debug, Clone, Default)]
pub(crate) struct Subscriptions {
    by_channel: Map<String, Subscription>,
    /// Per channel, the latest `unsubscribe` sent on the current connection whose reply has not
    /// come yet (the caller's or the session's own): while one is unanswered the server may
    /// still send the channel's messages. Forgotten with the connection.
    unsubscribing: Map<String, u64>,
}

impl Subscriptions {
    /// The subscription of a channel.
    pub(crate) fn get(&self, channel: &str) -> Option<&Subscription> {
        self.by_channel.get(channel)
    }

    /// The subscription of a channel, mutably.
    pub(crate) fn get_mut(&mut self, channel: &str) -> Option<&mut Subscription> {
        self.by_channel.get_mut(channel)
    }

    /// Adds or replaces a channel's subscription, returning the old one.
    pub(crate) fn insert(&mut self, channel: String, sub: Subscription) -> Option<Subscription> {
        self.by_channel.insert(channel, sub)
    }

    /// Forgets a channel.
    pub(crate) fn remove(&mut self, channel: &str) -> Option<Subscription> {
        self.by_channel.remove(channel)
    }

    /// Every subscription, by channel order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Subscription)> {
        self.by_channel.iter()
    }

    /// Every subscription, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Subscription)> {
        self.by_channel.iter_mut()
    }

    /// How many channels are subscribed.
    pub(crate) fn len(&self) -> usize {
        self.by_channel.len()
    }

    /// Records an `unsubscribe` of `channel` sent on the current connection.
    pub(crate) fn unsubscribe_sent(&mut self, channel: &str, id: u64) {
        self.unsubscribing.insert(channel.to_owned(), id);
    }

    /// The reply to request `id` arrived: if it answers a channel's latest `unsubscribe`, that
    /// channel has nothing standing any more (replies come in request order, so the earlier
    /// ones were answered too).
    pub(crate) fn unsubscribe_answered(&mut self, id: u64) {
        self.unsubscribing.retain(|_, latest| *latest != id);
    }

    /// Whether an `unsubscribe` of `channel` is unanswered on the current connection.
    pub(crate) fn is_unsubscribing(&self, channel: &str) -> bool {
        self.unsubscribing.contains_key(channel)
    }

    /// The connection ended: nothing of it is subscribed or unsubscribing any more.
    pub(crate) fn connection_lost(&mut self) {
        self.unsubscribing.clear();
        for sub in self.by_channel.values_mut() {
            sub.inflight = None;
            sub.barrier = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ms: u64, seq: u64) -> Message {
        Message {
            offset: StreamId::new(ms, seq),
            fields: serde_json::Map::new(),
        }
    }

    fn offsets(ms: &[Message]) -> Vec<StreamId> {
        ms.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn a_gap_moves_the_position_to_its_end() {
        let mut s = Subscription::new(Offset::Id(StreamId::new(5, 0)));
        s.on_gap(StreamId::new(5, 0), StreamId::new(9, 0));
        assert_eq!(s.resume_offset(), Offset::Id(StreamId::new(9, 0)));
        // A gap that does not touch the position (an older one) changes nothing.
        s.on_gap(StreamId::new(1, 0), StreamId::new(4, 0));
        s.on_gap(StreamId::new(12, 0), StreamId::new(14, 0));
        assert_eq!(s.resume_offset(), Offset::Id(StreamId::new(9, 0)));
        assert_eq!(
            offsets(&s.accept(vec![msg(8, 0), msg(10, 0)])),
            [StreamId::new(10, 0)]
        );
    }

    #[test]
    fn latest_resumes_from_the_subscribed_offset() {
        let mut s = Subscription::new(Offset::Latest);
        assert_eq!(s.resume_offset(), Offset::Latest);
        s.on_subscribed(StreamId::new(5, 0), false);
        assert_eq!(s.resume_offset(), Offset::Id(StreamId::new(5, 0)));
    }

    #[test]
    fn drops_messages_at_or_before_the_position_numerically() {
        let mut s = Subscription::new(Offset::Id(StreamId::new(9, 0)));
        let fresh = s.accept(vec![
            msg(8, 5),
            msg(9, 0),
            msg(10, 0),
            msg(10, 0),
            msg(10, 1),
        ]);
        assert_eq!(
            offsets(&fresh),
            vec![StreamId::new(10, 0), StreamId::new(10, 1)]
        );
        assert_eq!(s.position(), Some(StreamId::new(10, 1)));
        assert!(s.accept(vec![msg(9, 99), msg(10, 1)]).is_empty());
    }

    #[test]
    fn group_subscriptions_pass_redeliveries_and_keep_no_position() {
        let mut s = Subscription::new_group(Offset::Latest, "g".into(), "c".into());
        s.on_subscribed(StreamId::new(5, 0), false);
        assert_eq!(s.position(), None);
        assert_eq!(s.accept(vec![msg(9, 0)]).len(), 1);
        assert_eq!(offsets(&s.accept(vec![msg(3, 0), msg(9, 0)])).len(), 2);
        assert_eq!(s.resume_offset(), Offset::Latest);
    }

    #[test]
    fn earliest_accepts_everything_first() {
        let mut s = Subscription::new(Offset::Earliest);
        assert_eq!(s.resume_offset(), Offset::Earliest);
        assert_eq!(s.accept(vec![msg(1, 0)]).len(), 1);
        assert_eq!(s.resume_offset(), Offset::Id(StreamId::new(1, 0)));
    }

    #[test]
    fn subscribed_never_moves_the_position_back_and_truncated_keeps_it() {
        let mut s = Subscription::new(Offset::Id(StreamId::new(7, 0)));
        s.on_subscribed(StreamId::new(3, 0), false);
        assert_eq!(s.position(), Some(StreamId::new(7, 0)));
        s.on_subscribed(StreamId::new(20, 0), true);
        assert_eq!(s.position(), Some(StreamId::new(7, 0)));
        s.on_subscribed(StreamId::new(8, 0), false);
        assert_eq!(s.position(), Some(StreamId::new(8, 0)));
    }
}
