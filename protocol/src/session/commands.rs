//! The caller's commands: subscribe, unsubscribe, publish, ping and close.
//!
//! Each command checks the request locally with the same rules the server's decoder applies
//! (so a refused request never reaches the wire), takes a [`RequestId`], and sends its frame at
//! once when a connection is ready, or keeps it for the next connection.

use super::connection::request_frame;
use super::error::{RequestError, SessionError};
use super::event::{Action, DisconnectReason, Event, RequestId, SubscriptionState};
use super::requests::{Kind, Origin, Pending};
use super::subscriptions::Subscription;
use super::{PublishOptions, Session, State};
use crate::channel::validate_channel;
use crate::codec::validate_client;
use crate::frame::{ClientFrame, Fields};
use crate::offset::Offset;

impl Session {
    /// Subscribes to a channel from `offset`: [`Offset::Latest`] (`$`, only new messages),
    /// [`Offset::Earliest`] (`0`, all retained) or [`Offset::Id`] (after a saved offset, e.g.
    /// from [`Session::offsets`]). The session keeps the subscription across reconnects.
    /// Subscribing to an already subscribed channel replaces that subscription (a still
    /// unanswered earlier `subscribe` fails with [`RequestError::Cancelled`]).
    ///
    /// Outcome: [`Event::Subscribed`] or [`Event::RequestFailed`]; a failed subscribe is
    /// forgotten.
    pub fn subscribe(
        &mut self,
        channel: impl Into<String>,
        offset: Offset,
    ) -> Result<RequestId, SessionError> {
        let (channel, sub) = self.plain(channel.into(), offset)?;
        Ok(self.start_subscription(channel, sub))
    }

    /// Subscribes to a channel starting with its last `rewind` messages (at most
    /// [`MAX_REWIND`](crate::history::MAX_REWIND)), then live: the server resolves the start to
    /// the offset before those messages and names it in [`Event::Subscribed`], and every
    /// message after it is delivered once, in order (a message published while the subscribe
    /// is served is delivered after the rewound ones, never twice). `rewind: 1` gives a
    /// channel's latest value. After a reconnect the subscription resumes from its position
    /// like any other (it does not rewind again); a reconnect before the `subscribed` reply
    /// sends the rewind again. Otherwise like [`Session::subscribe`].
    pub fn subscribe_rewind(
        &mut self,
        channel: impl Into<String>,
        rewind: u64,
    ) -> Result<RequestId, SessionError> {
        let (channel, _) = self.plain(channel.into(), Offset::Latest)?;
        crate::history::validate_rewind(rewind, false, false)?;
        Ok(self.start_subscription(channel, Subscription::new_rewind(rewind)))
    }

    /// Reads one page of a channel's stored messages (see [`crate::history`] for the range and
    /// its bounds). Authorized like a subscribe; the channel need not be subscribed. A request
    /// in flight when the connection drops is sent again on the next connection (a read is
    /// safe to repeat), within the request timeout of the call. Outcome: [`Event::History`]
    /// or [`Event::RequestFailed`].
    pub fn history(
        &mut self,
        channel: impl Into<String>,
        options: crate::history::HistoryOptions,
    ) -> Result<RequestId, SessionError> {
        self.admit()?;
        let id = self.next_id;
        let kind = Kind::History {
            channel: channel.into(),
            options,
        };
        let frame = request_frame(id, &kind);
        validate_client(&frame)?;
        let id = self.alloc_id();
        self.submit(id, kind, frame);
        Ok(RequestId(id))
    }

    /// Joins consumer group `group` of `channel` as `consumer`: each message of the channel
    /// goes to one consumer of the group and stays pending until acknowledged with
    /// [`Session::ack`]. The server first delivers this consumer's own pending messages (after
    /// a reconnect too), then new ones; `offset` says where the group starts if this creates
    /// it. Messages are not deduplicated by offset (redeliveries are the point), and
    /// [`Session::offsets`] leaves the channel out. Otherwise like [`Session::subscribe`]
    /// (replacing, resubscribing after a reconnect, outcome events).
    pub fn subscribe_group(
        &mut self,
        channel: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        offset: Offset,
    ) -> Result<RequestId, SessionError> {
        let (channel, sub) = self.grouped(channel.into(), group.into(), consumer.into(), offset)?;
        Ok(self.start_subscription(channel, sub))
    }

    /// A checked plain subscription of `channel` (the session admits another request).
    pub(super) fn plain(
        &self,
        channel: String,
        offset: Offset,
    ) -> Result<(String, Subscription), SessionError> {
        self.admit()?;
        validate_channel(&channel)?;
        Ok((channel, Subscription::new(offset)))
    }

    /// A checked consumer-group subscription (the session admits another request).
    pub(super) fn grouped(
        &self,
        channel: String,
        group: String,
        consumer: String,
        offset: Offset,
    ) -> Result<(String, Subscription), SessionError> {
        self.admit()?;
        for name in [&channel, &group, &consumer] {
            validate_channel(name)?;
        }
        Ok((channel, Subscription::new_group(offset, group, consumer)))
    }

    /// Registers a (plain or group) subscription, replacing any earlier one of the channel,
    /// and sends its `subscribe` when connected, unless it waits for a barrier (see
    /// [`Session::resubscribe`]; replacing a subscription that waits for one waits too).
    pub(super) fn start_subscription(
        &mut self,
        channel: String,
        mut sub: Subscription,
    ) -> RequestId {
        let id = self.alloc_id();
        self.cancel_waiter(&channel);
        if sub.barrier.is_none() {
            sub.barrier = self.subs.get(&channel).and_then(|s| s.barrier);
        }
        let held = sub.barrier.is_some();
        sub.waiter = Some(id);
        sub.announced = self.subscription_state(&channel);
        self.subs.insert(channel.clone(), sub);
        self.announce(&channel, SubscriptionState::Subscribing);
        let kind = Kind::Subscribe {
            channel: channel.clone(),
        };
        self.requests
            .insert(id, Pending::new(kind, Origin::User), None);
        if self.is_connected() && !held {
            self.send_subscribe(&channel);
        }
        RequestId(id)
    }

    /// Acknowledges messages of consumer group `group` of `channel` by offset, so they are not
    /// delivered again. Sent again after a reconnect when no reply came (acknowledging twice
    /// is harmless). Outcome: [`Event::Acked`] or [`Event::RequestFailed`].
    pub fn ack(
        &mut self,
        channel: impl Into<String>,
        group: impl Into<String>,
        offsets: Vec<crate::offset::StreamId>,
    ) -> Result<RequestId, SessionError> {
        self.admit()?;
        let id = self.next_id;
        let kind = Kind::Ack {
            channel: channel.into(),
            group: group.into(),
            offsets,
        };
        let frame = request_frame(id, &kind);
        validate_client(&frame)?;
        let id = self.alloc_id();
        self.submit(id, kind, frame);
        Ok(RequestId(id))
    }

    /// Stops a subscription: no more messages of the channel are delivered from now on, and it
    /// is not re-subscribed after a reconnect. Outcome: [`Event::Unsubscribed`] (at once when
    /// disconnected, since the next connection will not subscribe it).
    pub fn unsubscribe(&mut self, channel: impl Into<String>) -> Result<RequestId, SessionError> {
        let channel = channel.into();
        self.admit()?;
        validate_channel(&channel)?;
        let id = self.alloc_id();
        self.cancel_waiter(&channel);
        if let Some(sub) = self.subs.remove(&channel) {
            self.announce_removed(&channel, &sub, None);
        }
        if self.is_connected() {
            let mut pending = Pending::new(
                Kind::Unsubscribe {
                    channel: channel.clone(),
                },
                Origin::User,
            );
            pending.sent = true;
            self.requests.insert(id, pending, None);
            self.send_unsubscribe(id, &channel);
        } else {
            self.events.push_back(Event::Unsubscribed {
                id: RequestId(id),
                channel,
            });
        }
        Ok(RequestId(id))
    }

    /// Publishes a message (a non-empty JSON object) to a channel. See the
    /// [publish retry policy](super#publish-retry-policy) for what happens across reconnects.
    /// Outcome: [`Event::Published`] with the stored offset, or [`Event::RequestFailed`].
    pub fn publish(
        &mut self,
        channel: impl Into<String>,
        fields: Fields,
        options: PublishOptions,
    ) -> Result<RequestId, SessionError> {
        self.admit()?;
        let id = self.next_id;
        let key = options.idempotency_key.or_else(|| {
            self.config
                .auto_idempotency
                .then(|| format!("{:016x}-{id}", self.key_prefix))
        });
        let kind = Kind::Publish {
            channel: channel.into(),
            fields,
            maxlen: options.maxlen,
            key,
        };
        let frame = request_frame(id, &kind);
        validate_client(&frame)?;
        let id = self.alloc_id();
        self.submit(id, kind, frame);
        Ok(RequestId(id))
    }

    /// Checks that the connection answers. Outcome: [`Event::Pong`] or
    /// [`Event::RequestFailed`] (a ping in flight when the connection drops fails with
    /// [`RequestError::ConnectionLost`]; one issued while disconnected waits for a connection).
    pub fn ping(&mut self) -> Result<RequestId, SessionError> {
        self.admit()?;
        let id = self.alloc_id();
        self.submit(id, Kind::Ping, ClientFrame::Ping { id });
        Ok(RequestId(id))
    }

    /// Asks who is subscribed to a presence-enabled `channel` (the caller need not be
    /// subscribed). Read-only, so it is re-sent after a reconnect. Outcome: [`Event::Presence`]
    /// or [`Event::RequestFailed`].
    pub fn presence(&mut self, channel: impl Into<String>) -> Result<RequestId, SessionError> {
        self.presence_request(channel.into(), false)
    }

    /// Asks how many clients and users are subscribed to a presence-enabled `channel`.
    /// Outcome: [`Event::PresenceStats`] or [`Event::RequestFailed`].
    pub fn presence_stats(
        &mut self,
        channel: impl Into<String>,
    ) -> Result<RequestId, SessionError> {
        self.presence_request(channel.into(), true)
    }

    fn presence_request(
        &mut self,
        channel: String,
        stats: bool,
    ) -> Result<RequestId, SessionError> {
        self.admit()?;
        validate_channel(&channel)?;
        let id = self.alloc_id();
        let kind = Kind::Presence { channel, stats };
        let frame = request_frame(id, &kind);
        self.submit(id, kind, frame);
        Ok(RequestId(id))
    }

    /// Ends the session: every pending request fails with [`RequestError::Closed`], the driver
    /// is told to close the transport ([`Action::Close`]) and no reconnect follows. The
    /// positions stay readable through [`Session::offsets`]. Later calls do nothing.
    pub fn close(&mut self) {
        if self.state == State::Closed {
            return;
        }
        if self.is_connected() {
            self.events.push_back(Event::Disconnected {
                reason: DisconnectReason::Closed,
            });
        }
        self.transmit.clear();
        for (_, sub) in self.subs.iter_mut() {
            sub.waiter = None;
            sub.inflight = None;
            sub.barrier = None;
        }
        for id in self.requests.ids() {
            if let Some(p) = self.requests.remove(id) {
                if p.origin == Origin::User {
                    self.fail(id, RequestError::Closed);
                }
            }
        }
        // The positions stay (for `offsets`), but nothing is subscribed any more.
        let kept: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.announced != SubscriptionState::Unsubscribed)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in kept {
            if let Some(sub) = self.subs.get_mut(&channel) {
                sub.announced = SubscriptionState::Unsubscribed;
            }
            self.events.push_back(Event::SubscriptionState {
                channel,
                state: SubscriptionState::Unsubscribed,
                error: Some(RequestError::Closed),
            });
        }
        self.actions.push_back(Action::Close);
        self.state = State::Closed;
        self.announce_client();
    }

    /// Refuses commands on a closed or saturated session.
    pub(super) fn admit(&self) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        if self.requests.user_count() >= self.config.max_pending {
            return Err(SessionError::Backpressure {
                limit: self.config.max_pending,
            });
        }
        Ok(())
    }

    /// Records a caller's request and sends it now if connected.
    fn submit(&mut self, id: u64, kind: Kind, frame: ClientFrame) {
        let mut pending = Pending::new(kind, Origin::User);
        if self.is_connected() {
            pending.sent = true;
            self.transmit.push_back(frame);
        }
        self.requests.insert(id, pending, None);
    }

    /// Sends `unsubscribe` `id` of `channel` on the open connection, remembering it as the
    /// channel's latest one (see [`Session::resubscribe`]).
    pub(super) fn send_unsubscribe(&mut self, id: u64, channel: &str) {
        self.subs.unsubscribe_sent(channel, id);
        self.transmit.push_back(ClientFrame::Unsubscribe {
            id,
            channel: channel.to_owned(),
        });
    }

    /// Fails the channel's unanswered caller `subscribe`, if any, as superseded.
    fn cancel_waiter(&mut self, channel: &str) {
        let waiter = self.subs.get_mut(channel).and_then(|s| s.waiter.take());
        if let Some(waiter) = waiter {
            if self.requests.remove(waiter).is_some() {
                self.fail(waiter, RequestError::Cancelled);
            }
        }
    }
}
