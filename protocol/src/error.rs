//! Error codes of the wire protocol and the errors of decoding frames.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `code` of an `error` frame (`docs/protocol.md` §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: fix it before retrying.
    BadRequest,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Credentials are valid but do not allow this action.
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// A frame or message exceeds a size limit.
    TooLarge,
    /// Too many requests: slow down.
    RateLimited,
    /// The storage engine is unreachable: retry later.
    Unavailable,
    /// A server bug: report it.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of `docs/protocol.md` §6 (a test holds the two to each other,
    /// and the browser client's TypeScript union to this list).
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code of a wire spelling, e.g. `bad_request`.
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the condition may pass on its own, so the same request may succeed later:
    /// `unavailable`, `rate_limited` and `internal`. Clients retry these with backoff; the
    /// others (`bad_request`, `unauthorized`, `forbidden`, `not_found`, `too_large`) are
    /// permanent for the request as sent.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal
        )
    }

    /// The wire spelling, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame, offset or channel name was rejected. Every variant maps to `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The text is not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// The object has no string `type`.
    #[error("frame has no \"type\" field")]
    MissingType,
    /// `type` names no frame this side understands.
    #[error("unknown frame type \"{0}\"")]
    UnknownType(String),
    /// The frame's fields do not match its type.
    #[error("invalid {kind} frame: {reason}")]
    InvalidFrame {
        /// The frame's `type`.
        kind: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An offset outside the grammar `$`, `0`, `<ms>-<seq>`.
    #[error("invalid offset \"{0}\": expected \"$\", \"0\" or \"<ms>-<seq>\"")]
    BadOffset(String),
    /// A channel name outside the rules.
    #[error("invalid channel name: {0}")]
    BadChannel(String),
}

impl ProtocolError {
    /// The wire code for this error (always `bad_request`).
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` is the table of `docs/protocol.md` §6, and every code reads back from its wire
    /// spelling as itself (serde's spelling included).
    #[test]
    fn all_is_the_documented_table() {
        let doc = include_str!("../../docs/protocol.md");
        let table = &doc[doc.find("## 6. Errors").unwrap()..doc.find("## 7.").unwrap()];
        let documented: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| &l[..l.find('`').unwrap()])
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(all, documented);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
        }
    }
}
