//! Native Rust client of redistribute: subscribe to channels, publish, and keep going across
//! reconnects and server failovers without losing or repeating a message.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use redistribute_client::{Client, Offset};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), redistribute_client::Error> {
//! let client = Client::builder()
//!     .targets(["ws://10.0.0.1:8080/ws", "ws://10.0.0.2:8080/ws"])
//!     .build()?;
//! let mut chat = client.subscribe("chat", Offset::Latest).await?;
//! let offset = client.publish("chat", json!({"text": "hi"})).await?;
//! while let Some(message) = chat.next().await {
//!     println!("{} {:?}", message.offset, message.fields);
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A [`Client`] is a cloneable handle on one driver task, which owns the WebSocket and the
//! protocol crate's sans-IO [`Session`](redistribute_protocol::session::Session). The session
//! makes every protocol decision; the driver only does I/O:
//!
//! - **Failover.** Targets are tried in order, then round-robin, with exponential backoff and
//!   full jitter between attempts (100 ms doubling up to 10 s by default).
//! - **Resume.** Every subscription remembers its last delivered offset and is re-subscribed
//!   from it on the next connection, whichever instance that is; duplicates are dropped by
//!   offset. A [`Subscription`] therefore yields each message once, in order. Trimmed
//!   messages are reported as [`Event::Gap`], never skipped silently.
//! - **Never give up, never skip.** Transient server errors (`unavailable` while Redis
//!   restarts, `rate_limited`, `internal`), timeouts and dropped connections never end a
//!   subscription: it is subscribed again from its last delivered offset with backoff
//!   ([`Event::SubscribeRetrying`]); only permanent errors end it ([`Event::SubscriptionLost`]).
//!   A server frame that cannot be decoded is never dropped silently: it ends its channel's
//!   subscription with [`Error::Undecodable`] naming the last delivered offset, or, when it
//!   names no channel (or exceeds [`MAX_FRAME_SIZE`]), the connection, which then resumes.
//! - **Publish retry.** Publishes get an automatic idempotency key: one interrupted by a
//!   disconnect, or issued while disconnected, is (re-)sent on the next connection and stored
//!   once; it fails with [`Error::Timeout`] if no reply came within the request timeout.
//!   Nothing is reported published that the server did not store.
//! - **Bounded memory.** Commands, events and each subscription's messages go through bounded
//!   buffers. A subscription whose application does not keep up is resumed from the stream
//!   instead of buffering without limit ([`Event::Overflow`]; see [`Subscription`]). The
//!   driver never waits for the application.
//! - **Subscription objects.** [`Client::new_subscription`] returns a [`ChannelSubscription`]:
//!   a state ([`SubscriptionState`], also as a `tokio::sync::watch`), a `Stream` of
//!   [`SubscriptionEvent`]s (`Subscribed { offset, truncated, recovered }`, `Message`, `Gap`,
//!   `Error`, `Unsubscribed`) and `subscribe`/`unsubscribe`/`publish`; see [`channel`].
//!   [`Client::subscribe`] is such an object whose stream yields only the messages.
//!   [`Client::state_watch`] watches the connection state.
//! - **Workers.** [`Client::subscribe_group`] joins a consumer group: each message goes to
//!   one worker of the group and is acknowledged with [`GroupMessage::ack`]; unacknowledged
//!   ones are delivered again (see [`group`]).
//! - **TLS.** `wss://` targets use rustls (ring provider) with the webpki roots and any root
//!   added with [`ClientBuilder::add_root_certificate`].

mod builder;
pub mod channel;
mod client;
mod driver;
mod error;
mod event;
pub mod group;
pub mod subscription;
mod tls;
mod token;
mod transport;

pub use builder::{
    ClientBuilder, DEFAULT_COMMAND_BUFFER, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_BUFFER,
    DEFAULT_SUBSCRIPTION_BUFFER,
};
pub use channel::{ChannelSubscription, SubscribeOptions, Subscribed, SubscriptionEvent};
pub use client::{Client, PresenceStats};
pub use error::{Error, TargetFailure};
pub use event::{ConnectionState, Event, Events};
pub use group::{GroupMessage, GroupSubscription};
pub use redistribute_protocol::history::{
    HistoryOptions, Page as HistoryPage, Removed, MAX_HISTORY_LIMIT, MAX_REWIND,
};
pub use redistribute_protocol::session::{DisconnectReason, PublishOptions, SubscriptionState};
pub use redistribute_protocol::{ErrorCode, Fields, Message, Offset, PresenceMember, StreamId};
pub use subscription::Subscription;
pub use token::{TokenError, TokenFuture};
pub use transport::MAX_FRAME_SIZE;
