//! The errors the page sees: every rejected promise and every `error` event carries a JS
//! `Error` whose `code` property is one of the strings here, so pages branch on `err.code`,
//! never on the message text.
//!
//! Server codes pass through unchanged (`bad_request`, `unauthorized`, `forbidden`,
//! `not_found`, `too_large`, `rate_limited`, `unavailable`, `internal`); the client adds its own.

use redistribute_protocol::session::{DisconnectReason, RequestError, SessionError};
use redistribute_protocol::StreamId;

use crate::cache::CacheError;

/// No reply within the request timeout (for a publish: it may or may not have been stored).
pub const TIMEOUT: &str = "timeout";
/// The connection dropped while a request that cannot be re-sent safely was in flight.
pub const CONNECTION_LOST: &str = "connection_lost";
/// The client was closed.
pub const CLOSED: &str = "closed";
/// A later `subscribe`/`unsubscribe` of the same channel superseded this request.
pub const CANCELLED: &str = "cancelled";
/// Too many requests are waiting for replies.
pub const BACKPRESSURE: &str = "backpressure";
/// The options given to `new Client` cannot work.
pub const BAD_CONFIG: &str = "bad_config";
/// An argument is invalid (bad channel, bad offset, fields not an object, …); same code as
/// the server's.
pub const BAD_REQUEST: &str = "bad_request";
/// A connection attempt failed; the client retries after a backoff delay.
pub const CONNECT_FAILED: &str = "connect_failed";
/// Messages of a channel were trimmed before this client saw them (`from`/`to` say which).
pub const GAP: &str = "gap";
/// A subscription could not be re-established after a reconnect (a permanent refusal, or
/// more transient failures than `subscribeRetryLimit`) and was dropped.
pub const SUBSCRIPTION_LOST: &str = "subscription_lost";
/// A frame of a subscribed channel could not be decoded: the subscription ended, and the
/// message names the last delivered offset (subscribe again from it to recover the rest).
pub const UNDECODABLE: &str = "undecodable";
/// The page's `decode` threw for a message; the message was skipped.
pub const DECODE_FAILED: &str = "decode_failed";
/// localStorage was full: old cache entries were evicted, or the cache was not updated.
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
/// A cache entry could not be read and was removed.
pub const CACHE_CORRUPT: &str = "cache_corrupt";
/// The outbox holds its maximum number of messages (option `outboxSize`).
pub const OUTBOX_FULL: &str = "outbox_full";
/// localStorage cannot be used; the client works without a cache.
pub const STORAGE_UNAVAILABLE: &str = "storage_unavailable";
/// `newSubscription` for a channel that has a subscription object already.
pub const DUPLICATE_SUBSCRIPTION: &str = "duplicate_subscription";

/// Every code the client adds, in the README's order.
pub const CLIENT_CODES: [&str; 16] = [
    TIMEOUT,
    CONNECTION_LOST,
    CLOSED,
    CANCELLED,
    BACKPRESSURE,
    BAD_CONFIG,
    CONNECT_FAILED,
    GAP,
    SUBSCRIPTION_LOST,
    UNDECODABLE,
    DECODE_FAILED,
    QUOTA_EXCEEDED,
    CACHE_CORRUPT,
    OUTBOX_FULL,
    STORAGE_UNAVAILABLE,
    DUPLICATE_SUBSCRIPTION,
];

/// An error as the page sees it: a code, a message and, when it concerns one, a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// One of the codes of this module or a server code.
    pub code: &'static str,
    /// For humans; wording may change.
    pub message: String,
    /// The channel concerned, if any.
    pub channel: Option<String>,
    /// For [`GAP`]: the removed range `(from, to]`.
    pub range: Option<(StreamId, StreamId)>,
}

impl ErrorInfo {
    /// An error with a code and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ErrorInfo {
            code,
            message: message.into(),
            channel: None,
            range: None,
        }
    }

    /// The same error, about `channel`.
    pub fn on(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// A request that ended without success.
    pub fn request(e: &RequestError) -> Self {
        let code = match e {
            RequestError::Server { code, .. } => code.as_str(),
            RequestError::Timeout => TIMEOUT,
            RequestError::ConnectionLost => CONNECTION_LOST,
            RequestError::Closed => CLOSED,
            RequestError::Cancelled => CANCELLED,
            RequestError::Undecodable { .. } => UNDECODABLE,
        };
        let message = match e {
            RequestError::Server { message, .. } => message.clone(),
            other => other.to_string(),
        };
        ErrorInfo::new(code, message)
    }

    /// A command the session refused before sending anything.
    pub fn session(e: &SessionError) -> Self {
        let code = match e {
            SessionError::Invalid(_) => BAD_REQUEST,
            SessionError::Backpressure { .. } => BACKPRESSURE,
            SessionError::Closed => CLOSED,
            SessionError::Config(_) => BAD_CONFIG,
        };
        ErrorInfo::new(code, e.to_string())
    }

    /// A problem of the cache.
    pub fn cache(e: &CacheError) -> Self {
        let (code, channel) = match e {
            CacheError::Corrupt { channel, .. } => (CACHE_CORRUPT, Some(channel)),
            CacheError::QuotaExceeded { channel, .. } => (QUOTA_EXCEEDED, Some(channel)),
            CacheError::Unavailable(_) => (STORAGE_UNAVAILABLE, None),
        };
        ErrorInfo {
            channel: channel.cloned(),
            ..ErrorInfo::new(code, e.to_string())
        }
    }

    /// A failed connection attempt.
    pub fn connect_failed(target: &str, reason: &DisconnectReason) -> Self {
        ErrorInfo::new(CONNECT_FAILED, format!("connecting to {target}: {reason}"))
    }

    /// Messages `(from, to]` of `channel` were trimmed before delivery.
    pub fn gap(channel: &str, from: StreamId, to: StreamId) -> Self {
        ErrorInfo {
            range: Some((from, to)),
            ..ErrorInfo::new(
                GAP,
                format!("messages after {from} up to {to} were trimmed before delivery"),
            )
            .on(channel)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redistribute_protocol::{ErrorCode, ProtocolError};

    #[test]
    fn server_codes_pass_through() {
        let e = ErrorInfo::request(&RequestError::Server {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        });
        assert_eq!((e.code, e.message.as_str()), ("forbidden", "no"));
        assert_eq!(ErrorInfo::request(&RequestError::Timeout).code, TIMEOUT);
        assert_eq!(ErrorInfo::request(&RequestError::Closed).code, CLOSED);
    }

    /// The codes of a `type X = | 'a' | 'b';` declaration of the package's TypeScript types.
    fn union(name: &str) -> Vec<String> {
        let types = include_str!("bindings/types.rs");
        let start = types
            .find(&format!("export type {name} ="))
            .unwrap_or_else(|| panic!("no type {name}"));
        let decl = &types[start..];
        decl[..decl.find(';').unwrap()]
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The TypeScript unions name every code, so a code added here or to the protocol crate
    /// fails this test until the types (and the README's table) have it.
    #[test]
    fn typescript_unions_name_every_code() {
        let server: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(union("ServerErrorCode"), server);
        assert_eq!(union("ClientErrorCode"), CLIENT_CODES);
        let readme = include_str!("../npm/README.md");
        for code in server.iter().chain(&CLIENT_CODES) {
            assert!(readme.contains(&format!("`{code}`")), "README lacks {code}");
        }
    }

    #[test]
    fn refused_commands_map_to_client_codes() {
        let invalid = SessionError::Invalid(ProtocolError::BadChannel("x y".into()));
        assert_eq!(ErrorInfo::session(&invalid).code, BAD_REQUEST);
        assert_eq!(
            ErrorInfo::session(&SessionError::Config("x")).code,
            BAD_CONFIG
        );
        let e = ErrorInfo::cache(&CacheError::QuotaExceeded {
            channel: "c".into(),
            evicted: 0,
            dropped: 1,
            stored: true,
        });
        assert_eq!((e.code, e.channel.as_deref()), (QUOTA_EXCEEDED, Some("c")));
        let gap = ErrorInfo::gap("c", StreamId::new(1, 0), StreamId::new(5, 0));
        assert_eq!(gap.range, Some((StreamId::new(1, 0), StreamId::new(5, 0))));
    }
}
