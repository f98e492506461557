//! Connection-level events for the application ([`Client::events`](crate::Client::events)) and
//! the connection state ([`Client::state`](crate::Client::state)).

use redistribute_protocol::session::DisconnectReason;
use redistribute_protocol::{ErrorCode, PresenceMember, StreamId};
use tokio::sync::broadcast;

use crate::error::Error;

/// Something that happened to the client's connection or subscriptions. Messages are not
/// events: they arrive on each [`Subscription`](crate::Subscription).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection is ready; subscriptions are being re-established on it.
    Connected {
        /// The target it goes to.
        target: String,
    },
    /// The connection announced by the last [`Event::Connected`] ended; the client reconnects
    /// (after a backoff delay, to the next target) unless it was closed.
    Disconnected {
        /// The target it went to.
        target: String,
        /// Why (a close code such as 1012 "restart" is in it when the server sent one).
        reason: DisconnectReason,
    },
    /// An attempt to connect failed; the client tries the next target after a backoff delay.
    ConnectFailed {
        /// The target that failed.
        target: String,
        /// Why: TCP, TLS or WebSocket-upgrade error, timeout, or the server's refusal.
        reason: DisconnectReason,
    },
    /// After a reconnect, a subscription was re-established from its last delivered offset.
    Resubscribed {
        /// Channel name.
        channel: String,
        /// Delivery continues after this offset.
        offset: StreamId,
        /// Messages after the last delivered offset were trimmed meanwhile; an [`Event::Gap`]
        /// names them.
        truncated: bool,
    },
    /// Messages in `(from, to]` of a subscribed channel were removed (trimmed) before they
    /// could be delivered. The subscription goes on with the oldest retained message.
    Gap {
        /// Channel name.
        channel: String,
        /// The last offset delivered before the gap (exclusive).
        from: StreamId,
        /// The highest removed offset (inclusive).
        to: StreamId,
    },
    /// A subscription ended without the application asking, and its
    /// [`Subscription`](crate::Subscription) stream has ended: the server refused to
    /// re-establish it after a reconnect with a permanent error (e.g. the token no longer
    /// allows it: `forbidden`), it failed transiently more often than
    /// [`ClientBuilder::subscribe_retry_limit`](crate::ClientBuilder::subscribe_retry_limit)
    /// allows, or a frame of its channel could not be decoded ([`Error::Undecodable`], which
    /// names the last delivered offset). Transient errors never end a subscription otherwise.
    SubscriptionLost {
        /// Channel name.
        channel: String,
        /// The server's answer.
        error: Error,
    },
    /// Re-establishing (or establishing) a subscription failed with a transient server error
    /// (`unavailable` while Redis restarts, `rate_limited`, `internal`). The subscription
    /// stays and is subscribed again from its last delivered offset after `retry_in` (and on
    /// every new connection); nothing is lost.
    SubscribeRetrying {
        /// Channel name.
        channel: String,
        /// The server's answer.
        error: Error,
        /// Consecutive failed attempts so far (1 for the first).
        attempt: u32,
        /// The delay before the next attempt.
        retry_in: std::time::Duration,
    },
    /// Members joined or left a subscribed presence channel (with
    /// [`ClientBuilder::join_leave`](crate::ClientBuilder::join_leave)), coalesced by the
    /// server. With `missed`, that many changes were too many to list: call
    /// [`Client::presence`](crate::Client::presence) for the current members.
    Presence {
        /// Channel name.
        channel: String,
        /// Members that joined.
        joins: Vec<PresenceMember>,
        /// Members that left (unsubscribed, disconnected, or their server instance died).
        leaves: Vec<PresenceMember>,
        /// Changes not listed.
        missed: Option<u64>,
    },
    /// The application did not keep up with a subscription and its buffer filled: the client
    /// stopped buffering the channel and will re-subscribe from `resume_after` once half the
    /// buffer was taken (nothing is lost; see [`Subscription`](crate::Subscription)).
    Overflow {
        /// Channel name.
        channel: String,
        /// The offset of the last buffered message.
        resume_after: Option<StreamId>,
    },
    /// The server sent an `error` frame that answers no request.
    ServerError {
        /// The wire code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The [token provider](crate::ClientBuilder::token_provider) failed or timed out when
    /// called to renew the token of a live connection. The connection keeps its token until
    /// the server ends it at that token's expiry; the next connection calls the provider
    /// again.
    TokenRefreshFailed {
        /// What went wrong.
        reason: String,
    },
    /// The client stopped: closed by the application (`error: None`) or gave up after
    /// [`ClientBuilder::give_up_after`](crate::ClientBuilder::give_up_after) without a
    /// connection ([`Error::Unreachable`]). Every subscription stream has ended.
    Closed {
        /// Why, when it was not [`Client::close`](crate::Client::close).
        error: Option<Error>,
    },
    /// This receiver fell behind and `missed` events were dropped for it (events are kept in a
    /// bounded buffer; see [`ClientBuilder::event_buffer`](crate::ClientBuilder::event_buffer)).
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// A receiver of [`Event`]s from [`Client::events`](crate::Client::events): it sees the events
/// that happen after it was created.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Events { rx }
    }

    /// The next event; `None` once the client has stopped and every event was received. A
    /// receiver that falls more than the event buffer behind gets [`Event::Lagged`] instead
    /// of the events it missed.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        match self.rx.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(_) => None,
        }
    }
}

/// Where the client stands with its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting, or waiting before the next attempt.
    Connecting,
    /// Connected to this target.
    Connected {
        /// The target URL.
        target: String,
    },
    /// Stopped; `error` says why when it was not [`Client::close`](crate::Client::close).
    Closed {
        /// [`Error::Unreachable`] when the client gave up.
        error: Option<Error>,
    },
}
