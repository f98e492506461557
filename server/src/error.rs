//! The one mapping from internal failures to what clients see (wire code and message).
//! Internal details are logged, never sent.

use redistribute_protocol::ErrorCode;
use thiserror::Error;
use tracing::error;

use crate::engine::EngineError;

/// Why a client request failed.
#[derive(Debug, Error)]
pub enum RequestError {
    /// Answer the request with an `error` frame.
    #[error("{code}: {message}")]
    Protocol {
        /// Wire code.
        code: ErrorCode,
        /// Message for the client.
        message: String,
    },
    /// The socket failed while replying; the connection is over.
    #[error("socket closed")]
    Socket,
}

impl RequestError {
    /// An error reply with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        metrics::counter!(crate::metrics::ERRORS, "code" => code.as_str()).increment(1);
        RequestError::Protocol {
            code,
            message: message.into(),
        }
    }

    /// The `error` frame answering request `id`; a socket failure answers as `internal`.
    pub fn into_frame(self, id: u64) -> redistribute_protocol::ServerFrame {
        let (code, message) = match self {
            RequestError::Protocol { code, message } => (code, message),
            RequestError::Socket => (ErrorCode::Internal, "internal server error".into()),
        };
        redistribute_protocol::ServerFrame::Error {
            id: Some(id),
            code,
            message,
        }
    }

    /// A `bad_request` reply.
    pub fn bad_request(message: impl Into<String>) -> Self {
        RequestError::new(ErrorCode::BadRequest, message)
    }
}

impl From<EngineError> for RequestError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Unavailable(detail) => {
                tracing::warn!(%detail, "engine unavailable");
                RequestError::new(
                    ErrorCode::Unavailable,
                    "storage is unavailable; retry later",
                )
            }
            EngineError::Internal(detail) => {
                error!(%detail, "engine error");
                RequestError::new(ErrorCode::Internal, "internal server error")
            }
        }
    }
}
