//! Replacing a subscription behind a barrier: [`Session::resubscribe`].
//!
//! A plain [`Session::subscribe`] of a subscribed channel replaces the subscription in place
//! on the server. A resubscribe instead draws a line first: the session sends its own
//! `unsubscribe` of the channel and keeps the new subscription's `subscribe` back until that
//! `unsubscribe` is answered. The server answers requests in order, so by then every reply and
//! every message of the old subscription (an older `subscribe` still in flight, a history
//! replay, live messages) has arrived, and the session has dropped them: until its own
//! `subscribed` reply the new subscription takes none of the channel's messages or gaps. So
//! nothing of the old subscription, and no position it reached, leaks into the new one.
//!
//! The invariant: a subscription with a barrier has sent nothing on the current connection,
//! and its channel's frames are not its own until the `subscribed` reply of a `subscribe`
//! sent after the barrier's reply. The barrier is only an `unsubscribe` of the current
//! connection: when the connection ends, the next one starts with nothing subscribed, so every
//! barrier is dropped and the `subscribe` goes out on the next connection like any other.

use super::error::SessionError;
use super::event::RequestId;
use super::requests::{Kind, Origin, Pending};
use super::subscriptions::Subscription;
use super::Session;
use crate::offset::Offset;

impl Session {
    /// Subscribes to `channel` from `from`, first ending whatever the current connection may
    /// still have of it. Use it to replace a subscription (e.g. to replay from an older
    /// offset), or to resume one whose messages the application had to drop, with the last
    /// offset it kept (`Offset::Id(last)`): delivery then continues right after it.
    ///
    /// When connected and the channel is subscribed, its `subscribe` is in flight or waits
    /// for a retry, or an `unsubscribe` of it is unanswered, the session sends `unsubscribe`,
    /// drops the channel's messages and gaps from then on, and sends `subscribe` from `from`
    /// once the `unsubscribed` reply came (any reply: a refusal such as `not_found` means
    /// nothing stood). Otherwise it is a plain [`Session::subscribe`], sent at once or on the
    /// next connection.
    ///
    /// The returned [`RequestId`] behaves exactly like `subscribe`'s, with the same outcome
    /// events: [`Event::Subscribed`](super::Event::Subscribed) (`resumed: false`) or
    /// [`Event::RequestFailed`](super::Event::RequestFailed) (a refusal, handled and retried
    /// like a subscribe's; [`RequestError::Timeout`](super::RequestError::Timeout) when no reply
    /// came within the request timeout of this call, the wait for `unsubscribed` included).
    /// An unanswered earlier subscribe or resubscribe of the channel fails with
    /// [`RequestError::Cancelled`](super::RequestError::Cancelled): the last call wins, and a
    /// second call while the first still waits for `unsubscribed` waits for the same reply.
    /// If the connection drops while waiting, the next connection subscribes from `from`. The
    /// session's own `unsubscribe` reports nothing; when it goes unanswered past the request
    /// timeout the connection is considered dead and the session reconnects.
    pub fn resubscribe(
        &mut self,
        channel: impl Into<String>,
        from: Offset,
    ) -> Result<RequestId, SessionError> {
        let (channel, sub) = self.plain(channel.into(), from)?;
        Ok(self.replace_subscription(channel, sub))
    }

    /// [`Session::resubscribe`] starting with the channel's last `rewind` messages, then live
    /// (see [`Session::subscribe_rewind`]), behind the same barrier.
    pub fn resubscribe_rewind(
        &mut self,
        channel: impl Into<String>,
        rewind: u64,
    ) -> Result<RequestId, SessionError> {
        let (channel, _) = self.plain(channel.into(), Offset::Latest)?;
        crate::history::validate_rewind(rewind, false, false)?;
        Ok(self.replace_subscription(channel, Subscription::new_rewind(rewind)))
    }

    /// [`Session::resubscribe`] for a consumer group: joins `group` of `channel` as `consumer`
    /// (see [`Session::subscribe_group`]; `from` is where the group starts if this creates
    /// it), behind the same barrier.
    pub fn resubscribe_group(
        &mut self,
        channel: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        from: Offset,
    ) -> Result<RequestId, SessionError> {
        let (channel, sub) = self.grouped(channel.into(), group.into(), consumer.into(), from)?;
        Ok(self.replace_subscription(channel, sub))
    }

    /// Registers `sub` behind a barrier when something of the channel may stand on the
    /// current connection, else like a subscribe.
    fn replace_subscription(&mut self, channel: String, mut sub: Subscription) -> RequestId {
        let old = self.subs.get(&channel);
        sub.barrier = match old.and_then(|s| s.barrier) {
            // Already waiting: the new subscription waits for the same reply.
            Some(barrier) => Some(barrier),
            None if self.is_connected()
                && (old.is_some() || self.subs.is_unsubscribing(&channel)) =>
            {
                let id = self.alloc_id();
                let kind = Kind::Unsubscribe {
                    channel: channel.clone(),
                };
                let mut pending = Pending::new(kind, Origin::Internal);
                pending.sent = true;
                // Timed from the next input, like a caller's request: `now` may be stale.
                self.requests.insert(id, pending, None);
                self.send_unsubscribe(id, &channel);
                Some(id)
            }
            None => None,
        };
        self.start_subscription(channel, sub)
    }

    /// The session's own `unsubscribe` `id` of `channel` was answered (either way): the
    /// subscription waiting for it, if it still does, sends its `subscribe` now.
    pub(super) fn release_barrier(&mut self, channel: &str, id: u64) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.barrier != Some(id) {
            return;
        }
        sub.barrier = None;
        if self.is_connected() {
            self.send_subscribe(channel);
        }
    }
}
