//! Who may do what: JWT verification ([`jwt`]), channel patterns ([`pattern`]) and the
//! authorization policy ([`Authorizer`]) that every transport consults before subscribing or
//! publishing. The default policy enforces the token's claims when tokens are configured and
//! allows everything otherwise (development); a library user can replace it with their own
//! hook ([`crate::ServerBuilder::authorize`]).

pub mod jwt;
pub mod pattern;

use std::net::SocketAddr;
use std::sync::Arc;

use redistribute_protocol::{ErrorCode, Fields};

use crate::error::RequestError;
pub use jwt::{Claims, TokenError, Verifier};

/// What a client asks to do. New variants may be added: match with a `_` arm.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Action<'a> {
    /// Subscribe to a channel (from any transport; a task watch subscribes to `task:<id>`).
    Subscribe {
        /// The channel.
        channel: &'a str,
    },
    /// Read a channel's stored entries (`/api/history`, a task poll reading `task:<id>`). The
    /// default policy allows it where subscribing is allowed.
    History {
        /// The channel.
        channel: &'a str,
    },
    /// Acknowledge entries of a consumer group. The default policy allows it where
    /// subscribing is allowed.
    Ack {
        /// The channel.
        channel: &'a str,
        /// The consumer group.
        group: &'a str,
    },
    /// Publish a message to a channel.
    Publish {
        /// The channel.
        channel: &'a str,
        /// The message.
        fields: &'a Fields,
    },
}

/// Who asks.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// The verified token's claims, if the client presented one.
    pub claims: Option<Arc<Claims>>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// `ws`, `sse`, `poll`, `task`, `api`.
    pub transport: &'static str,
    /// What the caller proved.
    pub credential: Credential,
}

impl AuthContext {
    /// The user a client-chosen key (a long-poll `client_id`, a task watch) belongs to: the
    /// token's subject, or `None` without one (authentication off, an API key, a signed task
    /// id). Only the same user may take such a key over.
    pub fn owner(&self) -> Option<&str> {
        match self.credential {
            Credential::Token => self.claims.as_ref()?.subject.as_deref(),
            _ => None,
        }
    }
}

/// What a caller proved, decided by the route's access class before a request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Nothing, and nothing is needed: authentication is off, or the path was explicitly
    /// opened (`--allow-open-api`).
    Open,
    /// Nothing yet, but authentication is required: a WebSocket before its `connect` frame.
    /// Every request is refused `unauthorized`.
    Missing,
    /// A valid token; [`AuthContext::claims`] says what it allows.
    Token,
    /// A back-end API key: full rights.
    ApiKey,
    /// A task id signed with the task secret: rights to that task's channel only.
    SignedTask,
}

/// Refusal from an [`Authorizer`]: the code (`forbidden` or `unauthorized`) and a message for
/// the client.
#[derive(Debug, Clone)]
pub struct Denied {
    /// Wire code.
    pub code: ErrorCode,
    /// Message for the client.
    pub message: String,
}

impl Denied {
    /// An `unauthorized` refusal (no valid credential).
    pub fn unauthorized(message: impl Into<String>) -> Denied {
        Denied {
            code: ErrorCode::Unauthorized,
            message: message.into(),
        }
    }

    /// A `forbidden` refusal.
    pub fn forbidden(message: impl Into<String>) -> Denied {
        Denied {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
}

impl From<Denied> for RequestError {
    fn from(d: Denied) -> Self {
        RequestError::new(d.code, d.message)
    }
}

/// Decides whether an action is allowed.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` to allow.
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), Denied>;
}

impl<F> Authorizer for F
where
    F: Fn(&AuthContext, Action<'_>) -> Result<(), Denied> + Send + Sync + 'static,
{
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), Denied> {
        self(ctx, action)
    }
}

/// The default policy: a token's claims decide what it may do (history and acks where it
/// may subscribe); an API key, a signed task id (checked against its channel before this) and
/// an open path allow everything; a caller without a credential is refused `unauthorized`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimsPolicy;

impl Authorizer for ClaimsPolicy {
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), Denied> {
        let claims = match (ctx.credential, &ctx.claims) {
            (Credential::Open | Credential::ApiKey | Credential::SignedTask, _) => return Ok(()),
            (Credential::Token, Some(claims)) => claims,
            (Credential::Missing | Credential::Token, _) => {
                return Err(Denied::unauthorized("a credential is required"))
            }
        };
        let (allowed, verb, channel) = match action {
            Action::Subscribe { channel } => {
                (claims.may_subscribe(channel), "subscribing to", channel)
            }
            Action::History { channel } => (claims.may_subscribe(channel), "reading", channel),
            Action::Ack { channel, .. } => {
                (claims.may_subscribe(channel), "acknowledging on", channel)
            }
            Action::Publish { channel, .. } => {
                (claims.may_publish(channel), "publishing to", channel)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::forbidden(format!(
                "the token does not allow {verb} {channel:?}"
            )))
        }
    }
}
