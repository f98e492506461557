//! Errors of the session: commands refused up front ([`SessionError`]) and requests that ended
//! without success ([`RequestError`]).

use thiserror::Error;

use crate::error::{ErrorCode, ProtocolError};
use crate::offset::StreamId;

/// A command the session refused before sending anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// The request breaks a protocol rule (bad channel name, empty fields, `maxlen` 0, bad
    /// idempotency key): fix it; retrying as is cannot succeed.
    #[error("invalid request: {0}")]
    Invalid(#[from] ProtocolError),
    /// Too many requests are waiting for an outcome: wait for some to finish, then retry.
    #[error("too many pending requests (limit {limit})")]
    Backpressure {
        /// The configured [`Config::max_pending`](super::Config::max_pending).
        limit: usize,
    },
    /// [`Session::close`](super::Session::close) was called: create a new session.
    #[error("session is closed")]
    Closed,
    /// The [`Config`](super::Config) cannot work: fix the named value.
    #[error("invalid session config: {0}")]
    Config(&'static str),
}

/// Why a request ended without success, carried by
/// [`Event::RequestFailed`](super::Event::RequestFailed); or why a subscription ended without the
/// caller asking, carried by [`Event::SubscriptionLost`](super::Event::SubscriptionLost).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The server answered with an `error` frame.
    #[error("server error {code}: {message}")]
    Server {
        /// The wire code, e.g. `forbidden`.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// No reply within [`Config::request_timeout`](super::Config::request_timeout) of the
    /// command. For a publish, it may or may not have been stored.
    #[error("request timed out")]
    Timeout,
    /// The connection dropped while the request was in flight and the request cannot be safely
    /// re-sent (a publish without idempotency key, a ping). A publish may or may not have been
    /// stored.
    #[error("connection lost before the reply")]
    ConnectionLost,
    /// The session was closed before the reply.
    #[error("session closed")]
    Closed,
    /// A later command superseded this one: a new `subscribe` or an `unsubscribe` of the same
    /// channel before this subscribe was answered.
    #[error("superseded by a later command on the same channel")]
    Cancelled,
    /// A frame of the subscription's channel could not be decoded (e.g. JSON nested deeper
    /// than the decoder allows). Nothing after `after` was delivered: the subscription ended
    /// there, so resubscribing from `after` (or reading the channel by other means) recovers
    /// exactly what was missed. `None`: no position was known yet.
    #[error("{}", undecodable_message(*.after, reason))]
    Undecodable {
        /// The last delivered offset (or the server's resume point) of the channel.
        after: Option<StreamId>,
        /// What the decoder said.
        reason: String,
    },
}

impl RequestError {
    /// Whether the failure may pass on its own and the same request may succeed later: a
    /// server error with a transient code ([`ErrorCode::is_transient`]), a timeout, or a lost
    /// connection. The session retries transient subscribe failures with backoff (see the
    /// [module documentation](super#transient-and-permanent-errors)).
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Server { code, .. } => code.is_transient(),
            RequestError::Timeout | RequestError::ConnectionLost => true,
            RequestError::Closed | RequestError::Cancelled | RequestError::Undecodable { .. } => {
                false
            }
        }
    }
}

fn undecodable_message(after: Option<StreamId>, reason: &str) -> String {
    match after {
        Some(after) => {
            format!("undecodable frame from the server; delivered up to {after}: {reason}")
        }
        None => format!("undecodable frame from the server; nothing delivered yet: {reason}"),
    }
}
