//! A subscription as a [`Stream`] of messages, with a bounded buffer between the driver and
//! the application.
//!
//! # A slow application
//!
//! Each subscription buffers at most [`ClientBuilder::subscription_buffer`] messages. The
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use redistribute_protocol::{Message, StreamId};
use tokio::sync::{mpsc, Notify};

use crate::driver::Command;

/// State shared by a subscription and the driver.
#[derive(Debug, Default)]
pub(crate) struct SubShared {
    /// The driver dropped messages because the buffer was full and waits to be told that
    /// there is room again.
    pub(crate) overflowed: AtomicBool,
}

/// What the server said when it accepted a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub(crate) offset: StreamId,
    pub(crate) truncated: bool,
}

/// A subscribed channel: a [`Stream`] of its messages, in offset order, each once, across
/// reconnects and failovers.
///
/// The stream ends when the channel is unsubscribed, subscribed again (the new subscription
/// replaces this one), refused by the server after a reconnect
/// ([`Event::SubscriptionLost`](crate::Event::SubscriptionLost)), or when the client stops.
/// Dropping it unsubscribes. Gaps (trimmed messages) are reported as
/// [`Event::Gap`](crate::Event::Gap) on [`Client::events`](crate::Client::events).
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    id: u64,
    rx: mpsc::Receiver<Message>,
    capacity: usize,
    shared: Arc<SubShared>,
    wake: Arc<Notify>,
    commands: mpsc::Sender<Command>,
    start: Start,
    last: Option<StreamId>,
}

impl Subscription {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        channel: String,
        id: u64,
        rx: mpsc::Receiver<Message>,
        capacity: usize,
        shared: Arc<SubShared>,
        wake: Arc<Notify>,
        commands: mpsc::Sender<Command>,
        start: Start,
    ) -> Self {
        Subscription {
            channel,
            id,
            rx,
            capacity,
            shared,
            wake,
            commands,
            start,
            last: None,
        }
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.channel
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

    /// How many messages wait in the buffer (at most
    /// [`ClientBuilder::subscription_buffer`](crate::ClientBuilder::subscription_buffer)).
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// The next message; `None` when the subscription has ended. The same as
    /// `StreamExt::next`.
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(message)) = &polled {
            self.last = Some(message.offset);
            // SeqCst pairs with the driver's store-then-check of the same flag, so either it
            // sees the room we made or we see its flag.
            if self.shared.overflowed.load(Ordering::SeqCst) && self.rx.len() <= self.capacity / 2 {
                self.wake.notify_one();
            }
        }
        polled
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_message(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.rx.len(), None)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Best effort: when the command queue is full the driver notices the closed buffer at
        // the next message of this channel and unsubscribes then.
        let _ = self.commands.try_send(Command::Dropped {
            channel: std::mem::take(&mut self.channel),
            sub: self.id,
        });
    }
}
