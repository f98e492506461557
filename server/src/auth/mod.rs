//! Who may do what: JWT verification ([`jwt`]), channel patterns ([`pattern`]) and the
//! authorization policy ([`Authorizer`]) that every transport consults before subscribing or
//! publishing. The default policy enforces the token's claims when tokens are configured and
//! allows everything otherwise (development); a library user can replace it with their own
//! hook ([`crate::ServerBuilder::authorize`]). How long a token's streams live, and what a
//! WebSocket's token refresh must satisfy, is [`lifetime`].

pub(crate) mod jwt;
pub(crate) mod lifetime;
pub(crate) mod pattern;

use std::net::SocketAddr;
use std::sync::Arc;

use redistribute_protocol::{ErrorCode, Fields};

use crate::error::RequestError;
pub use jwt::Claims;
pub(crate) use jwt::Verifier;

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
    /// Ask who is subscribed to a presence-enabled channel (`presence`, `presence_stats`,
    /// `GET /api/presence`). The default policy allows it where subscribing is allowed.
    Presence {
        /// The channel.
        channel: &'a str,
    },
    /// Create a channel that does not exist without publishing to it: a subscriber resuming
    /// beyond the channel's tip, or a consumer group on a new channel. Refused, the request
    /// goes on without creating anything (the subscriber starts at the tip, flagged
    /// `truncated`; the group subscribe fails with `forbidden`). The default policy allows it
    /// where publishing is allowed.
    Create {
        /// The channel.
        channel: &'a str,
    },
}

/// Who asks.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// The verified token's claims, if the client presented one.
    pub claims: Option<Arc<Claims>>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// `ws`, `sse`, `poll`, `http` (a client's `POST /publish`), `task`, `api`.
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
            Action::Presence { channel } => (
                claims.may_subscribe(channel),
                "reading the presence of",
                channel,
            ),
            Action::Ack { channel, .. } => {
                (claims.may_subscribe(channel), "acknowledging on", channel)
            }
            Action::Publish { channel, .. } => {
                (claims.may_publish(channel), "publishing to", channel)
            }
            // Creating a channel that does not exist (a consumer group, or resuming beyond
            // its tip) needs publish permission.
            Action::Create { channel } if !claims.may_publish(channel) => {
                return Err(Denied::forbidden(format!(
                    "channel {channel:?} does not exist, and only a token that allows \
                     publishing to it may create it"
                )))
            }
            Action::Create { .. } => return Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(credential: Credential, claims: Option<Claims>) -> AuthContext {
        AuthContext {
            claims: claims.map(Arc::new),
            peer: None,
            transport: "test",
            credential,
        }
    }

    fn alice() -> Claims {
        Claims {
            subject: Some("alice".into()),
            expires_at: u64::MAX,
            subscribe: vec![pattern::ChannelPattern::parse("user:{sub}").unwrap()],
            publish: vec![pattern::ChannelPattern::parse("chat").unwrap()],
            info: None,
        }
    }

    fn code(ctx: &AuthContext, action: Action<'_>) -> Option<ErrorCode> {
        ClaimsPolicy.authorize(ctx, action).err().map(|d| d.code)
    }

    #[test]
    fn claims_decide_for_tokens_and_history_and_acks_follow_subscribe() {
        let token = ctx(Credential::Token, Some(alice()));
        let fields = Fields::new();
        let own = "user:alice";
        assert_eq!(code(&token, Action::Subscribe { channel: own }), None);
        assert_eq!(code(&token, Action::History { channel: own }), None);
        assert_eq!(code(&token, Action::Presence { channel: own }), None);
        let ack = Action::Ack {
            channel: own,
            group: "g",
        };
        assert_eq!(code(&token, ack), None);
        let bob = "user:bob";
        for action in [
            Action::Subscribe { channel: bob },
            Action::History { channel: bob },
            Action::Presence { channel: bob },
            Action::Ack {
                channel: bob,
                group: "g",
            },
            Action::Publish {
                channel: own,
                fields: &fields,
            },
        ] {
            assert_eq!(
                code(&token, action),
                Some(ErrorCode::Forbidden),
                "{action:?}"
            );
        }
        let chat = Action::Publish {
            channel: "chat",
            fields: &fields,
        };
        assert_eq!(code(&token, chat), None);
    }

    #[test]
    fn other_credentials() {
        let any = Action::History {
            channel: "user:bob",
        };
        for credential in [Credential::Open, Credential::ApiKey, Credential::SignedTask] {
            assert_eq!(code(&ctx(credential, None), any), None, "{credential:?}");
        }
        assert_eq!(
            code(&ctx(Credential::Missing, None), any),
            Some(ErrorCode::Unauthorized)
        );
        // A token credential without claims is no credential.
        assert_eq!(
            code(&ctx(Credential::Token, None), any),
            Some(ErrorCode::Unauthorized)
        );
        // Claims left over from a token do not restrict an API key.
        assert_eq!(code(&ctx(Credential::ApiKey, Some(alice())), any), None);
    }

    #[test]
    fn the_owner_is_a_tokens_subject() {
        assert_eq!(ctx(Credential::Token, Some(alice())).owner(), Some("alice"));
        assert_eq!(ctx(Credential::ApiKey, Some(alice())).owner(), None);
        assert_eq!(ctx(Credential::Open, None).owner(), None);
    }
}
