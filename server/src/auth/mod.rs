//! Who may do what: JWT verification ([`jwt`]), channel patterns ([`pattern`]) and the
//! authorization policy ([`Authorizer`]) that every transport consults before subscribing or
//! publishing. The default policy enforces the token's claims when tokens are configured and
//! allows everything otherwise (development); a library user can replace it with their own
//! hook ([`crate::ServerBuilder::authorize`]). How long a token's streams live, and what a
//! WebSocket's token refresh must satisfy, is [`lifetime`].

pub mod jwt;
pub mod lifetime;
pub mod pattern;

use std::net::SocketAddr;
use std::sync::Arc;

use redistribute_protocol::{ErrorCode, Fields};

use crate::error::RequestError;
pub use jwt::{Claims, TokenError, Verifier};

/// What a client asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Subscribe to a channel (from any transport).
    Subscribe {
        /// The channel.
        channel: &'a str,
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
    /// `ws`, `sse`, `poll`, `api`.
    pub transport: &'static str,
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

/// The default policy: with tokens configured, the claims decide; without, everything is
/// allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimsPolicy;

impl Authorizer for ClaimsPolicy {
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), Denied> {
        let Some(claims) = &ctx.claims else {
            // Only reachable without auth configured: transports require a token otherwise.
            return Ok(());
        };
        match action {
            Action::Subscribe { channel } if claims.may_subscribe(channel) => Ok(()),
            Action::Publish { channel, .. } if claims.may_publish(channel) => Ok(()),
            Action::Subscribe { channel } => Err(Denied::forbidden(format!(
                "the token does not allow subscribing to {channel:?}"
            ))),
            Action::Publish { channel, .. } => Err(Denied::forbidden(format!(
                "the token does not allow publishing to {channel:?}"
            ))),
        }
    }
}
