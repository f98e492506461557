//! Token lifetime: when a verified token stops being valid, and what every stream does then.
//!
//! A token is valid until its `exp` plus [`LEEWAY`] (allowance for clock skew between the
//! token's issuer and the server), the same bound [`Verifier`](super::Verifier) checks when
//! the token is presented. Every stream opened with a token (WebSocket, SSE, held long-poll,
//! task watch) ends at that moment with the code `unauthorized` and [`EXPIRED_MESSAGE`],
//! unless a WebSocket refreshed its token first ([`check_refresh`]). Transports call
//! [`deadline`] once and wait on [`expired`] next to their other events.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redistribute_protocol::ErrorCode;
use tokio::time::Instant;

use super::{Action, AuthContext, Authorizer, Claims, Credential};
use crate::error::RequestError;

/// How long after `exp` a token is still accepted (clock skew between issuer and server).
pub(crate) const LEEWAY: Duration = Duration::from_secs(5);

/// Longest time until a deadline (about 30 years): later `exp`s are treated as this.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The message of the `unauthorized` error that ends a stream whose token expired.
pub(crate) const EXPIRED_MESSAGE: &str = "token expired; reconnect with a new token";

/// When a stream authenticated with `claims` must end: `exp` + [`LEEWAY`], as a tokio instant
/// (`None` without claims: authentication is off, nothing expires).
pub(crate) fn deadline(claims: Option<&Claims>) -> Option<Instant> {
    let claims = claims?;
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let until = Duration::from_secs(claims.expires_at).saturating_add(LEEWAY);
    // Capped: an `exp` centuries away must not overflow the clock.
    let left = until.saturating_sub(now_unix).min(FAR_FUTURE);
    Some(Instant::now() + left)
}

/// Completes at `deadline`; never without one.
pub(crate) async fn expired(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The error that ends a stream at its token's expiry.
pub(crate) fn expired_error() -> RequestError {
    RequestError::new(ErrorCode::Unauthorized, EXPIRED_MESSAGE)
}

/// Checks a WebSocket's refreshed token (`claims`) against what the connection already does:
/// the new token must allow every channel it is subscribed to (`channels`). A refusal is
/// `forbidden` naming the first channel the new token does not allow.
pub(crate) fn check_refresh<'a>(
    authorizer: &dyn Authorizer,
    ctx: &AuthContext,
    claims: Arc<Claims>,
    channels: impl IntoIterator<Item = &'a str>,
) -> Result<AuthContext, RequestError> {
    let refreshed = AuthContext {
        claims: Some(claims),
        credential: Credential::Token,
        ..ctx.clone()
    };
    for channel in channels {
        authorizer
            .authorize(&refreshed, Action::Subscribe { channel })
            .map_err(|denied| {
                RequestError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "the new token does not allow the subscription to {channel:?}: {}",
                        denied.message
                    ),
                )
            })?;
    }
    Ok(refreshed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::pattern::ChannelPattern;
    use crate::auth::ClaimsPolicy;

    fn claims(expires_at: u64, subscribe: &[&str]) -> Arc<Claims> {
        Arc::new(Claims {
            subject: Some("u".into()),
            expires_at,
            subscribe: subscribe
                .iter()
                .map(|p| ChannelPattern::parse(p).unwrap())
                .collect(),
            publish: Vec::new(),
            info: None,
        })
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn the_deadline_is_exp_plus_the_leeway() {
        assert_eq!(deadline(None), None);
        let now = Instant::now();
        let at = deadline(Some(&claims(unix_now() + 60, &[]))).unwrap();
        let left = at - now;
        // exp is whole seconds: the deadline is within one second of exp + leeway.
        assert!(left > Duration::from_secs(60) + LEEWAY - Duration::from_secs(2));
        assert!(left <= Duration::from_secs(60) + LEEWAY + Duration::from_secs(1));
        // Long expired: the deadline has passed, never an underflow.
        let past = deadline(Some(&claims(1, &[]))).unwrap();
        assert!(past <= Instant::now());
        // Far future: no overflow.
        assert!(deadline(Some(&claims(u64::MAX, &[]))).is_some());
    }

    #[test]
    fn a_refresh_must_cover_every_subscription() {
        let ctx = AuthContext {
            claims: Some(claims(unix_now() + 60, &["a", "b"])),
            peer: None,
            transport: "ws",
            credential: Credential::Token,
        };
        let narrower = claims(unix_now() + 120, &["a"]);
        let ok = check_refresh(&ClaimsPolicy, &ctx, narrower.clone(), ["a"]).unwrap();
        assert_eq!(ok.claims.unwrap().expires_at, narrower.expires_at);
        let err = check_refresh(&ClaimsPolicy, &ctx, narrower, ["a", "b"]).unwrap_err();
        match err {
            RequestError::Protocol { code, message } => {
                assert_eq!(code, ErrorCode::Forbidden);
                assert!(message.contains("\"b\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
