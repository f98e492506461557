//! Subscription objects: [`ChannelSubscription`], one channel's subscription with a state
//! ([`SubscriptionState`], also as a [`watch`]) and a [`Stream`] of [`SubscriptionEvent`]s, that
//! can be subscribed, unsubscribed and subscribed again.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use redistribute_client::{Client, Offset, SubscribeOptions, SubscriptionEvent};
//!
//! # async fn run() -> Result<(), redistribute_client::Error> {
//! let client = Client::builder().targets(["ws://127.0.0.1:8080/ws"]).build()?;
//! let mut chat = client
//!     .new_subscription("chat", SubscribeOptions::new().offset(Offset::Latest))
//!     .await?;
//! let mut state = chat.state_watch(); // unsubscribed → subscribing → subscribed → …
//! chat.subscribe().await?;
//! chat.publish(serde_json::json!({"text": "hi"})).await?;
//! while let Some(event) = chat.next().await {
//!     match event {
//!         SubscriptionEvent::Subscribed(s) => println!("from {} (recovered: {})", s.offset, s.recovered),
//!         SubscriptionEvent::Message(m) => println!("{} {:?}", m.offset, m.fields),
//!         SubscriptionEvent::Gap { from, to } => println!("missed ({from}, {to}]"),
//!         SubscriptionEvent::Error(e) => println!("{e}"),
//!         SubscriptionEvent::Unsubscribed { error } => println!("ended: {error:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # States
//!
//! The states are the protocol session's ([`SubscriptionState`]): `Unsubscribed` (new, after
//! [`ChannelSubscription::unsubscribe`], after a permanent refusal, or once the client closed),
//! `Subscribing` (asked for, not confirmed on the current connection: in flight, waiting for
//! a connection or for a retry after a transient error) and `Subscribed`. A lost connection
//! moves a `Subscribed` subscription back to `Subscribing`; the re-subscribe after the
//! reconnect moves it on to `Subscribed` (a [`SubscriptionEvent::Subscribed`] says whether it
//! was `recovered`) or, when the server refuses it for good, to `Unsubscribed` with a
//! [`SubscriptionEvent::Error`] followed by [`SubscriptionEvent::Unsubscribed`] carrying the
//! error. It never ends silently.
//!
//! `recovered` is true when the subscription resumed from a known offset (its last delivered
//! message across a reconnect or a re-subscribe, or an [`Offset::Id`] given in the options) and
//! nothing after it was lost: not truncated, no gap.
//!
//! # One object per channel
//!
//! A client holds at most one subscription per channel: [`Client::new_subscription`] for a
//! channel that already has one (an object, or a stream of [`Client::subscribe`]) fails with
//! [`Error::DuplicateSubscription`]. [`Client::subscribe`] instead replaces whatever the
//! channel had, as it always did: a replaced object ends `Unsubscribed` with
//! [`Error::Cancelled`] and its stream ends. Dropping the object unsubscribes and frees the
//! channel.
//!
//! # Buffering
//!
//! Events wait in a buffer of [`ClientBuilder::subscription_buffer`] events, as for
//! [`Subscription`](crate::Subscription): when the application does not keep up, the client
//! stops buffering, drops what follows ([`Event::Overflow`](crate::Event::Overflow)) and, once
//! half the buffer was taken, re-subscribes after the last buffered message, so nothing is
//! lost or repeated (the state goes `Subscribing`, then `Subscribed` with `recovered`). Only
//! [`SubscriptionEvent::Unsubscribed`] is never dropped.
//!
//! [`Client::new_subscription`]: crate::Client::new_subscription
//! [`Client::subscribe`]: crate::Client::subscribe
//! [`ClientBuilder::subscription_buffer`]: crate::ClientBuilder::subscription_buffer
//! [`watch`]: tokio::sync::watch

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use redistribute_protocol::history::{HistoryOptions, Page as HistoryPage};
use redistribute_protocol::session::{PublishOptions, SubscriptionState};
use redistribute_protocol::{Message, Offset, StreamId};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};

use crate::client::Client;
use crate::driver::Command;
use crate::error::Error;

/// Options of [`Client::new_subscription`](crate::Client::new_subscription).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Where the first subscribe starts: [`Offset::Latest`] (the default: only new messages),
    /// [`Offset::Earliest`] (everything retained) or [`Offset::Id`] (after a saved offset).
    /// Later subscribes of the same object continue after its last buffered message.
    pub offset: Offset,
    /// Start with the channel's last this many messages (at most
    /// [`MAX_REWIND`](crate::MAX_REWIND)), then live, instead of [`SubscribeOptions::offset`]
    /// (which must then stay [`Offset::Latest`])
    /// (late joiners; a "latest value" channel is `rewind(1)`). The server resolves it to the
    /// offset before those messages, so every message after it arrives exactly once, in order,
    /// however publishes race the subscribe. Later subscribes of the object, and resumes after
    /// a reconnect, continue after its last message instead of rewinding again.
    pub rewind: Option<u64>,
}

impl SubscribeOptions {
    /// The defaults: from [`Offset::Latest`].
    pub fn new() -> Self {
        SubscribeOptions::default()
    }

    /// Sets [`SubscribeOptions::offset`].
    pub fn offset(mut self, offset: impl Into<Offset>) -> Self {
        self.offset = offset.into();
        self
    }

    /// Sets [`SubscribeOptions::rewind`].
    pub fn rewind(mut self, count: u64) -> Self {
        self.rewind = Some(count);
        self
    }
}

/// What the server said when it accepted a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Delivery continues after this offset (the channel's tip for [`Offset::Latest`]).
    pub offset: StreamId,
    /// Messages after the requested offset had already been trimmed; a
    /// [`SubscriptionEvent::Gap`] names them.
    pub truncated: bool,
    /// Resumed from a known offset with nothing lost (see the [module docs](self)).
    pub recovered: bool,
}

/// Something that happened to one subscription, in order with its messages.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// The server confirmed the subscription (after `subscribe`, and again after every
    /// reconnect or re-subscribe); the state is now `Subscribed`.
    Subscribed(Subscribed),
    /// The next message, in offset order, each once.
    Message(Message),
    /// Messages in `(from, to]` were trimmed before they could be delivered.
    Gap {
        /// The last offset delivered before the gap (exclusive).
        from: StreamId,
        /// The highest removed offset (inclusive).
        to: StreamId,
    },
    /// Establishing the subscription failed: a transient error (the client retries; the state
    /// stays `Subscribing`), or a permanent one, followed by
    /// [`SubscriptionEvent::Unsubscribed`].
    Error(Error),
    /// The subscription ended; the state is now `Unsubscribed`. `error` is `None` when the
    /// application unsubscribed, else why (a refusal such as `forbidden`, [`Error::Timeout`],
    /// [`Error::Undecodable`], [`Error::Cancelled`] when replaced, [`Error::Closed`]).
    Unsubscribed {
        /// Why, when the application did not ask for it.
        error: Option<Error>,
    },
}

/// State shared by a subscription's buffer reader and the driver.
#[derive(Debug, Default)]
pub(crate) struct SubShared {
    /// The driver dropped events because the buffer was full and waits to be told that
    /// there is room again.
    pub(crate) overflowed: AtomicBool,
    /// Events in the buffer (the driver counts up before sending, the reader down after
    /// taking one).
    pub(crate) queued: AtomicUsize,
}

/// The reading end of a subscription's buffer.
#[derive(Debug)]
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<SubscriptionEvent>,
    capacity: usize,
    shared: Arc<SubShared>,
    wake: Arc<Notify>,
}

impl Inbox {
    /// The next event; tells the driver when an overflowed buffer is half empty again.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionEvent>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &polled {
            let left = self.shared.queued.fetch_sub(1, Ordering::SeqCst) - 1;
            // SeqCst pairs with the driver's store-then-check of the same flag, so either it
            // sees the room we made or we see its flag.
            if self.shared.overflowed.load(Ordering::SeqCst) && left <= self.capacity / 2 {
                self.wake.notify_one();
            }
        }
        polled
    }

    /// Events waiting in the buffer.
    pub(crate) fn len(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }
}

/// The parts of a new subscription: what the driver keeps and what the object keeps.
pub(crate) struct Parts {
    pub(crate) tx: mpsc::UnboundedSender<SubscriptionEvent>,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) state: watch::Sender<SubscriptionState>,
}

/// One channel's subscription object. See the [module documentation](self).
#[derive(Debug)]
pub struct ChannelSubscription {
    channel: String,
    id: u64,
    inbox: Inbox,
    state: watch::Receiver<SubscriptionState>,
    client: Client,
}

impl ChannelSubscription {
    /// A new object and the driver's parts of it.
    pub(crate) fn create(
        channel: String,
        id: u64,
        capacity: usize,
        wake: Arc<Notify>,
        client: Client,
    ) -> (ChannelSubscription, Parts) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(SubShared::default());
        let (state_tx, state) = watch::channel(SubscriptionState::Unsubscribed);
        let inbox = Inbox {
            rx,
            capacity,
            shared: shared.clone(),
            wake,
        };
        let object = ChannelSubscription {
            channel,
            id,
            inbox,
            state,
            client,
        };
        let parts = Parts {
            tx,
            shared,
            state: state_tx,
        };
        (object, parts)
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The current state.
    pub fn state(&self) -> SubscriptionState {
        *self.state.borrow()
    }

    /// A watch of the state: `changed().await` wakes at every change, `borrow()` reads it.
    pub fn state_watch(&self) -> watch::Receiver<SubscriptionState> {
        self.state.clone()
    }

    /// Subscribes, and returns once the server confirmed it (at once when it already is).
    /// The first subscribe starts where [`SubscribeOptions::offset`] says; a subscribe after
    /// an unsubscribe continues after the last buffered message (so it is `recovered` when
    /// nothing was trimmed meanwhile). Fails when the subscription ends first: the server's
    /// permanent refusal, [`Error::Timeout`] (no confirmation within the request timeout),
    /// [`Error::Cancelled`] (unsubscribed or replaced meanwhile), [`Error::Closed`]. The
    /// same outcome also arrives as events.
    pub async fn subscribe(&self) -> Result<Subscribed, Error> {
        self.client
            .call(|reply| Command::Join {
                channel: self.channel.clone(),
                sub: self.id,
                reply,
            })
            .await
    }

    /// Unsubscribes (the state goes `Unsubscribed` at once, the event follows) and returns
    /// once the server confirmed it. Does nothing when already unsubscribed. The object stays
    /// usable: [`ChannelSubscription::subscribe`] again continues where it stopped.
    pub async fn unsubscribe(&self) -> Result<(), Error> {
        self.client
            .call(|reply| Command::Leave {
                channel: self.channel.clone(),
                sub: self.id,
                reply,
            })
            .await
    }

    /// Publishes a message to the channel (see [`Client::publish`](crate::Client::publish));
    /// works whatever the state.
    pub async fn publish(&self, fields: impl Serialize) -> Result<StreamId, Error> {
        self.client.publish(self.channel.as_str(), fields).await
    }

    /// [`ChannelSubscription::publish`] with options.
    pub async fn publish_with(
        &self,
        fields: impl Serialize,
        options: PublishOptions,
    ) -> Result<StreamId, Error> {
        self.client
            .publish_with(self.channel.as_str(), fields, options)
            .await
    }

    /// Reads one page of the channel's stored messages (see
    /// [`Client::history`](crate::Client::history)); works whatever the state.
    pub async fn history(&self, options: HistoryOptions) -> Result<HistoryPage, Error> {
        self.client.history(self.channel.as_str(), options).await
    }

    /// The next event; `None` once the object was replaced or the client stopped (after the
    /// final [`SubscriptionEvent::Unsubscribed`]). The same as `StreamExt::next`.
    pub async fn recv(&mut self) -> Option<SubscriptionEvent> {
        std::future::poll_fn(|cx| self.inbox.poll_event(cx)).await
    }

    /// How many events wait in the buffer.
    pub fn queued(&self) -> usize {
        self.inbox.len()
    }

    /// The next event, for [`Subscription`](crate::Subscription)'s stream.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionEvent>> {
        self.inbox.poll_event(cx)
    }
}

impl Stream for ChannelSubscription {
    type Item = SubscriptionEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubscriptionEvent>> {
        self.get_mut().inbox.poll_event(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.inbox.len(), None)
    }
}

impl Drop for ChannelSubscription {
    fn drop(&mut self) {
        self.client
            .dropped(std::mem::take(&mut self.channel), self.id);
    }
}
