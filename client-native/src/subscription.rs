//! [`Client::subscribe`](crate::Client::subscribe)'s subscription: a [`Stream`] of one
//! channel's messages, over a [`ChannelSubscription`] whose other events it skips and which
//! ends instead of going `unsubscribed`.
//!
//! # A slow application
//!
//! Each subscription buffers at most [`ClientBuilder::subscription_buffer`] events. The
//! driver never waits for the application: when the buffer is full it stops buffering that
//! channel, remembers the offset of the last message it buffered, drops what follows and emits
//! [`Event::Overflow`](crate::Event::Overflow). Once the application has taken half of the
//! buffer, the driver re-subscribes from that offset (`unsubscribe`, then `subscribe` after the
//! reply) and the server replays the rest from the stream (its own slow-consumer rule,
//! one level up). So memory stays bounded, the application still sees every message once and
//! in order, and the only cost is the replay. If the stream was trimmed past that offset
//! meanwhile, the messages are gone and an [`Event::Gap`](crate::Event::Gap) says so.
//!
//! [`ClientBuilder::subscription_buffer`]: crate::ClientBuilder::subscription_buffer

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use redistribute_protocol::{Message, StreamId};

use crate::channel::{ChannelSubscription, Subscribed, SubscriptionEvent};

/// A subscribed channel: a [`Stream`] of its messages, in offset order, each once, across
/// reconnects and failovers.
///
/// The stream ends when the channel is unsubscribed, subscribed again (the new subscription
/// replaces this one), refused by the server after a reconnect
/// ([`Event::SubscriptionLost`](crate::Event::SubscriptionLost)), or when the client stops.
/// Dropping it unsubscribes. Gaps (trimmed messages) are reported as
/// [`Event::Gap`](crate::Event::Gap) on [`Client::events`](crate::Client::events).
///
/// It is a [`ChannelSubscription`] (see [`Subscription::object`]) whose stream yields only the
/// messages and ends at its `Unsubscribed` event.
#[derive(Debug)]
pub struct Subscription {
    object: ChannelSubscription,
    start: Subscribed,
    last: Option<StreamId>,
    ended: bool,
}

impl Subscription {
    pub(crate) fn new(object: ChannelSubscription, start: Subscribed) -> Self {
        Subscription {
            object,
            start,
            last: None,
            ended: false,
        }
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        self.object.channel()
    }

    /// The subscription object underneath: its state and state watch. (Reading events from
    /// it is not possible: this stream takes them.)
    pub fn object(&self) -> &ChannelSubscription {
        &self.object
    }

    /// Where delivery started: the first message has a greater offset. For
    /// [`Offset::Latest`](crate::Offset::Latest) this is the channel's tip when subscribed.
    pub fn start_offset(&self) -> StreamId {
        self.start.offset
    }

    /// Whether messages after the requested offset had already been trimmed when the
    /// subscription started (an [`Event::Gap`](crate::Event::Gap) names them).
    pub fn truncated(&self) -> bool {
        self.start.truncated
    }

    /// The offset of the last message this stream returned: save it to resume later with
    /// `subscribe(channel, Offset::Id(offset))`.
    pub fn last_offset(&self) -> Option<StreamId> {
        self.last
    }

    /// How many events (mostly messages) wait in the buffer (at most
    /// [`ClientBuilder::subscription_buffer`](crate::ClientBuilder::subscription_buffer)).
    pub fn queued(&self) -> usize {
        self.object.queued()
    }

    /// The next message; `None` when the subscription has ended. The same as
    /// `StreamExt::next`.
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.object.poll_event(cx) {
                Poll::Ready(Some(SubscriptionEvent::Message(message))) => {
                    self.last = Some(message.offset);
                    return Poll::Ready(Some(message));
                }
                Poll::Ready(Some(SubscriptionEvent::Unsubscribed { .. }) | None) => {
                    self.ended = true;
                }
                Poll::Ready(Some(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_message(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.object.queued(), None)
    }
}
