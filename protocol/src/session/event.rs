//! What the session tells its driver: [`Event`]s for the application, [`Action`]s on the
//! transport, and the identifiers they carry.

use std::fmt;

use super::error::RequestError;
use crate::error::ErrorCode;
use crate::frame::{Message, PresenceEvent, PresenceMember};
use crate::offset::StreamId;

/// Identifies one request of a session; also its `id` on the wire. Ids increase by one per
/// request, starting at 1, and are never reused within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The wire id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a connection ended or a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The driver reported the transport closed or failed (what drivers pass to
    /// [`Session::handle_transport_closed`](super::Session::handle_transport_closed)).
    Transport {
        /// The WebSocket close code, when there was one (e.g. 1012: resume elsewhere).
        code: Option<u16>,
        /// A description for logs.
        reason: String,
    },
    /// Opening the transport, the `connect` handshake or a request the session sent on its own
    /// (re-subscribe, liveness probe) took longer than the request timeout; the session asked
    /// the driver to close the transport.
    Timeout,
    /// The server answered `connect` with an error (e.g. `unauthorized`).
    Rejected {
        /// The wire code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// [`Session::close`](super::Session::close) was called.
    Closed,
    /// The server sent a frame the client could not read and could not attribute to one
    /// channel (not JSON, an unknown `type`, a reply that does not parse, a frame above the
    /// driver's size limit). The session closed the transport and resumes every subscription
    /// from its unchanged position after a backoff delay that keeps growing while such frames
    /// keep coming soon after connecting.
    BadFrame {
        /// What was wrong with it.
        reason: String,
    },
}

impl DisconnectReason {
    /// A transport-level close as seen by the driver.
    pub fn transport(code: Option<u16>, reason: impl Into<String>) -> Self {
        DisconnectReason::Transport {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Transport {
                code: Some(code),
                reason,
            } => write!(f, "transport closed ({code}): {reason}"),
            DisconnectReason::Transport { code: None, reason } => {
                write!(f, "transport closed: {reason}")
            }
            DisconnectReason::Timeout => f.write_str("timed out"),
            DisconnectReason::Rejected { code, message } => {
                write!(f, "rejected by server ({code}): {message}")
            }
            DisconnectReason::Closed => f.write_str("closed by the application"),
            DisconnectReason::BadFrame { reason } => {
                write!(f, "unreadable frame from the server: {reason}")
            }
        }
    }
}

/// Something the driver must do with the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a transport to this target, then report
    /// [`handle_transport_open`](super::Session::handle_transport_open) or
    /// [`handle_transport_closed`](super::Session::handle_transport_closed).
    Connect {
        /// One of [`Config::targets`](super::Config::targets).
        target: String,
    },
    /// Close the current transport, if any, and report nothing more about it: the session has
    /// already written it off. After [`Session::close`](super::Session::close)
    /// ([`Session::is_closed`](super::Session::is_closed)) the driver can also stop.
    Close,
    /// The token given to [`Session::refresh_token`](super::Session::refresh_token) ends
    /// soon: obtain a new one and pass it to `refresh_token`. Keep the connection as it is.
    RefreshToken,
}

/// Something that happened, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is ready (after the `connect` handshake when a token is configured).
    Connected {
        /// The target it goes to.
        target: String,
    },
    /// The connection announced by the last [`Event::Connected`] ended. The session reconnects
    /// on its own unless it was closed.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// An attempt to connect failed before [`Event::Connected`]; the session will try the next
    /// target after a backoff delay.
    ConnectFailed {
        /// The target that failed.
        target: String,
        /// Why.
        reason: DisconnectReason,
    },
    /// The server confirmed a subscription.
    Subscribed {
        /// The `subscribe` request this answers: the caller's, or one the session sent itself.
        id: RequestId,
        /// Channel name.
        channel: String,
        /// Delivery starts after this offset (the tip for `$`); the session resumes from here.
        offset: StreamId,
        /// Messages after the requested offset were already trimmed (a [`Event::Gap`] follows).
        truncated: bool,
        /// The session re-subscribed on its own after a reconnect (no caller request).
        resumed: bool,
        /// The subscribe asked for the messages after a known offset (the position kept
        /// across a reconnect, or an offset the caller gave) and the server still had all of
        /// them: nothing was lost (`truncated` is false, no gap follows). False for `$` and
        /// `0` before any position is known, for consumer groups, and when truncated.
        recovered: bool,
    },
    /// A subscription ended without the caller asking: the server refused to re-establish it
    /// after a reconnect with a permanent error (`forbidden`, `not_found`, …), it ran out of
    /// [`Config::subscribe_retry_limit`](super::Config::subscribe_retry_limit), or a frame of
    /// its channel could not be decoded ([`RequestError::Undecodable`], which names the last
    /// delivered offset). It is forgotten and will not be retried.
    SubscriptionLost {
        /// Channel name.
        channel: String,
        /// The server's answer.
        error: RequestError,
    },
    /// A `subscribe` the session keeps (a re-subscribe after a reconnect, or the caller's
    /// when [`Config::retry_subscribe`](super::Config::retry_subscribe) is on) failed with a
    /// transient error (`unavailable`, `rate_limited`, `internal`). The subscription stays;
    /// the session sends `subscribe` again from the same position after `retry_in`, and on
    /// every new connection.
    SubscribeRetrying {
        /// Channel name.
        channel: String,
        /// The server's answer.
        error: RequestError,
        /// Consecutive failed attempts so far (1 for the first).
        attempt: u32,
        /// The delay before the next attempt.
        retry_in: std::time::Duration,
    },
    /// An `unsubscribe` finished.
    Unsubscribed {
        /// The request.
        id: RequestId,
        /// Channel name.
        channel: String,
    },
    /// New messages of a subscribed channel, in offset order, never seen before.
    Messages {
        /// Channel name.
        channel: String,
        /// At least one message.
        messages: Vec<Message>,
    },
    /// Messages in `(from, to]` of a subscribed channel were removed before delivery.
    Gap {
        /// Channel name.
        channel: String,
        /// The last offset the subscriber had (exclusive).
        from: StreamId,
        /// The highest removed offset (inclusive).
        to: StreamId,
    },
    /// A publish was stored at this offset.
    Published {
        /// The request.
        id: RequestId,
        /// Channel name.
        channel: String,
        /// The stored message's offset.
        offset: StreamId,
    },
    /// An `ack` was answered.
    Acked {
        /// The request.
        id: RequestId,
        /// How many of the entries were pending and are now acknowledged (entries already
        /// acknowledged, or reclaimed by another consumer and acknowledged there, do not count).
        count: u64,
    },
    /// A `history` request was answered with one page.
    History {
        /// The request.
        id: RequestId,
        /// Channel name.
        channel: String,
        /// The page.
        page: crate::history::Page,
    },
    /// A ping was answered.
    Pong {
        /// The request.
        id: RequestId,
    },
    /// A `presence` request was answered.
    Presence {
        /// The request.
        id: RequestId,
        /// Channel name.
        channel: String,
        /// The channel's members.
        members: Vec<PresenceMember>,
    },
    /// A `presence_stats` request was answered.
    PresenceStats {
        /// The request.
        id: RequestId,
        /// Channel name.
        channel: String,
        /// Members (connections).
        clients: u64,
        /// Distinct users among them.
        users: u64,
    },
    /// Members joined or left a subscribed channel (with [`Config::join_leave`](super::Config::join_leave)
    /// on a presence-enabled channel), as the server's `presence_event` said. With `missed`,
    /// that many changes were not listed: ask [`Session::presence`](super::Session::presence)
    /// again.
    PresenceChanged(Box<PresenceEvent>),
    /// A request ended without success. Exactly one of this or its success event is emitted
    /// per request.
    RequestFailed {
        /// The request.
        id: RequestId,
        /// Why.
        error: RequestError,
    },
    /// The server sent an `error` frame that answers no request.
    ServerError {
        /// The wire code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The session's [`ClientState`] changed (see [`Session::state`](super::Session::state)).
    State {
        /// The new state.
        state: ClientState,
    },
    /// A channel's [`SubscriptionState`] changed (see
    /// [`Session::subscription_state`](super::Session::subscription_state)). It comes after the
    /// event that caused it (`Subscribed`, `Disconnected`, `SubscriptionLost`,
    /// `RequestFailed`, …).
    SubscriptionState {
        /// Channel name.
        channel: String,
        /// The new state.
        state: SubscriptionState,
        /// For [`SubscriptionState::Unsubscribed`]: why, when the caller did not ask for it
        /// (a refusal, a timeout, an undecodable frame, [`RequestError::Closed`]). `None` for
        /// the caller's own unsubscribe and for the other states.
        error: Option<RequestError>,
    },
}

/// Where the session stands with its connection, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// Not started yet ([`Session::connect`](super::Session::connect) was not called).
    Disconnected,
    /// Opening a connection, or waiting out a backoff delay before the next attempt.
    Connecting,
    /// A connection is ready.
    Connected,
    /// [`Session::close`](super::Session::close) was called: terminal.
    Closed,
}

impl ClientState {
    /// The name used by the bundled clients: `disconnected`, `connecting`, `connected`,
    /// `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Disconnected => "disconnected",
            ClientState::Connecting => "connecting",
            ClientState::Connected => "connected",
            ClientState::Closed => "closed",
        }
    }
}

/// Where one channel's subscription stands, as the application sees it.
///
/// * `Unsubscribed`: the session keeps no subscription of the channel (never subscribed,
///   unsubscribed by the caller, refused for good, or the session closed);
/// * `Subscribing`: the session keeps it and will deliver its messages, but the server has not
///   confirmed it on the current connection yet (its `subscribe` is in flight, waits for a
///   connection, for a retry after a transient error, or for a replaced subscription's
///   `unsubscribed`);
/// * `Subscribed`: the server confirmed it on the current connection.
///
/// A lost connection moves every `Subscribed` channel back to `Subscribing`; the re-subscribe
/// moves it on to `Subscribed` (from its position) or, when refused for good, to
/// `Unsubscribed` with the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    /// Not subscribed.
    Unsubscribed,
    /// Kept, waiting for the server's confirmation on this connection.
    Subscribing,
    /// Confirmed on this connection.
    Subscribed,
}

impl SubscriptionState {
    /// The name used by the bundled clients: `unsubscribed`, `subscribing`, `subscribed`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Unsubscribed => "unsubscribed",
            SubscriptionState::Subscribing => "subscribing",
            SubscriptionState::Subscribed => "subscribed",
        }
    }
}
