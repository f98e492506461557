//! The client's error type: one enum, each variant saying what the caller can do about it.

use std::fmt;
use std::time::Duration;

use redistribute_protocol::session::{RequestError, SessionError};
use redistribute_protocol::{ErrorCode, ProtocolError, StreamId};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request breaks a protocol rule (bad channel name, empty fields, `maxlen` 0, an
    /// idempotency key of the wrong size): fix it; retrying as is cannot succeed.
    #[error("invalid request: {0}")]
    Invalid(#[from] ProtocolError),
    /// The message to publish is not a JSON object (fields must serialize to one).
    #[error("invalid fields: {0}")]
    Fields(String),
    /// The server answered with an `error` frame. [`ErrorCode`] says what to do (see
    /// `docs/protocol.md` §6): `unavailable`, `rate_limited` and `internal` are transient
    /// ([`ErrorCode::is_transient`]) and may be retried later, the others may not.
    #[error("server error {code}: {message}")]
    Server {
        /// The wire code, e.g. `unavailable`.
        code: ErrorCode,
        /// The server's explanation, for humans.
        message: String,
    },
    /// No reply within the request timeout of the call (connected or not). A publish may or
    /// may not have been stored; retrying it with the same idempotency key is safe.
    #[error("no reply within the request timeout")]
    Timeout,
    /// The connection dropped while a request that cannot be re-sent safely was in flight (a
    /// publish without idempotency key, a ping). A publish may or may not have been stored.
    #[error("connection lost before the reply; the request may or may not have taken effect")]
    ConnectionLost,
    /// Too many requests are waiting for a reply: wait for some to finish, then retry.
    #[error("too many pending requests (limit {limit})")]
    Backpressure {
        /// The configured limit
        /// ([`ClientBuilder::max_pending`](crate::ClientBuilder::max_pending)).
        limit: usize,
    },
    /// A later `subscribe` or `unsubscribe` of the same channel superseded this subscribe.
    #[error("superseded by a later subscribe or unsubscribe of the same channel")]
    Cancelled,
    /// [`Client::new_subscription`](crate::Client::new_subscription) for a channel that
    /// already has a subscription in this client: use (or drop) that one.
    #[error("the client already has a subscription of channel \"{channel}\"")]
    DuplicateSubscription {
        /// The channel.
        channel: String,
    },
    /// The client was closed ([`Client::close`](crate::Client::close)): build a new one.
    #[error("the client is closed")]
    Closed,
    /// No target accepted a connection for
    /// [`ClientBuilder::give_up_after`](crate::ClientBuilder::give_up_after); the client closed
    /// itself. Each target's last error says why (refused, TLS, timeout, …).
    #[error("{}", unreachable_message(*.after, failures))]
    Unreachable {
        /// How long the client tried without a connection.
        after: Duration,
        /// The last failure of each target tried, in target order.
        failures: Vec<TargetFailure>,
    },
    /// A frame of the subscription's channel could not be decoded, so the subscription ended
    /// where delivery stopped: nothing after `after` was delivered. Subscribe again from
    /// `after` (`Offset::Id`) to get exactly what was missed once the cause is fixed.
    #[error("{}", RequestError::Undecodable { after: *.after, reason: reason.clone() })]
    Undecodable {
        /// The last delivered offset of the channel (`None`: nothing delivered yet).
        after: Option<StreamId>,
        /// What the decoder said.
        reason: String,
    },
    /// The builder's settings cannot work (no targets, a URL that is not `ws://` or
    /// `wss://`, a zero timeout, no tokio runtime): fix the named setting.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A root certificate given to the builder could not be used (not PEM, not a
    /// certificate).
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The last failure of one target, in [`Error::Unreachable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFailure {
    /// The target URL.
    pub target: String,
    /// What went wrong, e.g. `TCP connect to 127.0.0.1:1: Connection refused (os error 111)`.
    pub reason: String,
}

impl fmt::Display for TargetFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.target, self.reason)
    }
}

fn unreachable_message(after: Duration, failures: &[TargetFailure]) -> String {
    let mut text = format!(
        "no connection to any target within {:.1} s",
        after.as_secs_f64()
    );
    if failures.is_empty() {
        text.push_str(" (no attempt finished)");
    }
    for failure in failures {
        text.push_str("; ");
        text.push_str(&failure.to_string());
    }
    text
}

impl From<SessionError> for Error {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Invalid(e) => Error::Invalid(e),
            SessionError::Backpressure { limit } => Error::Backpressure { limit },
            SessionError::Closed => Error::Closed,
            SessionError::Config(problem) => Error::Config(problem.to_owned()),
        }
    }
}

impl From<RequestError> for Error {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::Server { code, message } => Error::Server { code, message },
            RequestError::Timeout => Error::Timeout,
            RequestError::ConnectionLost => Error::ConnectionLost,
            RequestError::Closed => Error::Closed,
            RequestError::Cancelled => Error::Cancelled,
            RequestError::Undecodable { after, reason } => Error::Undecodable { after, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_names_every_target() {
        let err = Error::Unreachable {
            after: Duration::from_millis(2500),
            failures: vec![
                TargetFailure {
                    target: "ws://a/ws".into(),
                    reason: "refused".into(),
                },
                TargetFailure {
                    target: "wss://b/ws".into(),
                    reason: "TLS handshake failed".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "no connection to any target within 2.5 s; ws://a/ws: refused; \
             wss://b/ws: TLS handshake failed"
        );
    }

    #[test]
    fn maps_session_errors() {
        assert_eq!(Error::from(RequestError::Timeout), Error::Timeout);
        assert_eq!(
            Error::from(SessionError::Backpressure { limit: 3 }),
            Error::Backpressure { limit: 3 }
        );
        let server = Error::from(RequestError::Server {
            code: ErrorCode::Unavailable,
            message: "redis down".into(),
        });
        assert_eq!(server.to_string(), "server error unavailable: redis down");
    }
}
