//! Consumer-group subscriptions for workers: [`GroupSubscription`] yields [`GroupMessage`]s,
//! each acknowledged with [`GroupMessage::ack`].
//!
//! ```no_run
//! use redistribute_client::{Client, Offset};
//!
//! # async fn run() -> Result<(), redistribute_client::Error> {
//! let client = Client::builder().targets(["ws://127.0.0.1:8080/ws"]).build()?;
//! let mut jobs = client
//!     .subscribe_group("jobs", "workers", "worker-1", Offset::Latest)
//!     .await?;
//! while let Some(job) = jobs.recv().await {
//!     println!("{} {:?}", job.offset, job.fields);
//!     job.ack().await?; // not acknowledged: delivered again later
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once: a message not acknowledged (the worker crashed, the connection
//! dropped before the `ack` reached the server, processing failed) comes back, to this
//! consumer after a reconnect or to another one after the server's idle time, until the
//! server's delivery limit moves it to the channel `<channel>:dead`. Make processing
//! idempotent, keyed by offset. Offsets within a group subscription need not increase.

use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use redistribute_protocol::{Message, StreamId};

use crate::client::Client;
use crate::error::Error;
use crate::subscription::Subscription;

/// A consumer-group subscription: a [`Stream`] of the messages the group assigns to this
/// consumer. Dropping it leaves the group (its unacknowledged messages go to other consumers
/// after the idle time).
#[derive(Debug)]
pub struct GroupSubscription {
    inner: Subscription,
    group: String,
    client: Client,
}

/// One message of a consumer group, to be acknowledged once processed.
#[derive(Debug, Clone)]
pub struct GroupMessage {
    message: Message,
    channel: String,
    group: String,
    client: Client,
}

impl GroupSubscription {
    pub(crate) fn new(inner: Subscription, group: String, client: Client) -> Self {
        GroupSubscription {
            inner,
            group,
            client,
        }
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        self.inner.channel()
    }

    /// The group name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group's last delivered offset when this consumer joined.
    pub fn start_offset(&self) -> StreamId {
        self.inner.start_offset()
    }

    /// The next message; `None` when the subscription has ended.
    pub async fn recv(&mut self) -> Option<GroupMessage> {
        let message = self.inner.recv().await?;
        Some(self.wrap(message))
    }

    fn wrap(&self, message: Message) -> GroupMessage {
        GroupMessage {
            message,
            channel: self.inner.channel().to_owned(),
            group: self.group.clone(),
            client: self.client.clone(),
        }
    }
}

impl Stream for GroupSubscription {
    type Item = GroupMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<GroupMessage>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(this.wrap(message))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl GroupMessage {
    /// Acknowledges the message so it is not delivered again; returns whether it was still
    /// pending (false if it had been reclaimed by another consumer meanwhile).
    pub async fn ack(&self) -> Result<bool, Error> {
        let count = self
            .client
            .ack(&self.channel, &self.group, vec![self.message.offset])
            .await?;
        Ok(count > 0)
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The message itself.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the message out (it can still be acknowledged with [`Client::ack`]).
    pub fn into_message(self) -> Message {
        self.message
    }
}

impl Deref for GroupMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}
