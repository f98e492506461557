//! How a caller authenticates, by the access class of the route it called ([`Access`]): a
//! token (`Authorization: Bearer`, or `token=` in the query where browsers cannot set
//! headers), a back-end API key (`Authorization: Bearer` or `X-API-Key`), or a signed task id
//! (checked in [`super::task_id`]). The result is the [`AuthContext`] every request of the
//! call is made with.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use redistribute_protocol::ErrorCode;
use subtle::ConstantTimeEq;

use crate::auth::{AuthContext, Claims, Credential};
use crate::config::Secret;
use crate::core_state::Core;
use crate::error::RequestError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/healthz`, `/readyz`).
    Public,
    /// A WebSocket: a token on the upgrade (`Authorization: Bearer`) or, later, in the
    /// `connect` frame; until then every request is refused.
    Socket,
    /// A client transport (`/sse`, `/poll`): a token in `Authorization: Bearer` or `token=`.
    Client,
    /// The back-end API (`/api/*`): an API key (full rights) or a token whose claims allow the
    /// request. Open only without API keys and with authentication off or `--allow-open-api`.
    Backend,
    /// Task status (`/task/<id>`): a token allowing the task's channel, or an id signed with
    /// the task secret.
    Task,
    /// Operator pages (`/metrics`, `/status`, `/status.json`): an API key when authentication
    /// is on (open with `--allow-open-api` and no key).
    Ops,
}

/// Authenticates a call to a route of class `access` from `peer` (the route's `transport`
/// names it to the authorizer): the caller, or `unauthorized` (no or a bad credential) /
/// `forbidden` (a valid token on an API-key-only route).
pub(crate) fn authenticate(
    core: &Core,
    access: Access,
    transport: &'static str,
    headers: &HeaderMap,
    query: &[(String, String)],
    peer: Option<SocketAddr>,
) -> Result<AuthContext, RequestError> {
    let caller = |credential, claims| AuthContext {
        claims,
        peer,
        transport,
        credential,
    };
    let bearer = bearer(headers);
    let keys = &core.config.http.api_keys;
    let auth_on = core.auth_required();
    let open_api = keys.is_empty() && (!auth_on || core.config.http.allow_open_api);
    match access {
        Access::Public => Ok(caller(Credential::Open, None)),
        Access::Socket => match bearer {
            Some(token) => Ok(caller(Credential::Token, Some(verify(core, token)?))),
            None if auth_on => Ok(caller(Credential::Missing, None)),
            None => Ok(caller(Credential::Open, None)),
        },
        Access::Client | Access::Task => {
            let token = bearer.or_else(|| query_token(query));
            match token {
                Some(token) if auth_on => Ok(caller(Credential::Token, Some(verify(core, token)?))),
                // A task id may carry its own credential, checked with the id.
                None if access == Access::Task && core.config.http.task_secret.is_some() => {
                    Ok(caller(Credential::Missing, None))
                }
                None if auth_on => Err(unauthorized(
                    "a token is required: Authorization: Bearer <token> or token=",
                )),
                _ => Ok(caller(Credential::Open, None)),
            }
        }
        Access::Backend | Access::Ops => {
            let given = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .or(bearer);
            if given.is_some_and(|key| is_api_key(key, keys)) {
                return Ok(caller(Credential::ApiKey, None));
            }
            if open_api || (access == Access::Ops && !auth_on) {
                return Ok(caller(Credential::Open, None));
            }
            match bearer {
                Some(token) if auth_on => {
                    let claims = verify(core, token)?;
                    if access == Access::Ops {
                        return Err(RequestError::new(
                            ErrorCode::Forbidden,
                            "this page needs an API key, not a client token",
                        ));
                    }
                    Ok(caller(Credential::Token, Some(claims)))
                }
                Some(_) => Err(unauthorized("invalid API key")),
                None if given.is_some() => Err(unauthorized("invalid API key")),
                None => Err(unauthorized(
                    "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                )),
            }
        }
    }
}

/// Verifies a token (`unauthorized` naming why it is refused).
pub(crate) fn verify(core: &Core, token: &str) -> Result<Arc<Claims>, RequestError> {
    match core.authenticate(Some(token))? {
        Some(claims) => Ok(claims),
        None => Err(unauthorized("tokens are not configured on this server")),
    }
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn query_token(query: &[(String, String)]) -> Option<&str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str())
}

/// Whether `given` is one of the configured API keys, compared in constant time.
fn is_api_key(given: &str, keys: &[Secret]) -> bool {
    let mut ok = subtle::Choice::from(0);
    for key in keys {
        ok |= key.expose().as_bytes().ct_eq(given.as_bytes());
    }
    bool::from(ok)
}

fn unauthorized(message: &str) -> RequestError {
    RequestError::new(ErrorCode::Unauthorized, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_compare_whole_keys() {
        let keys = vec![Secret::new("0123456789abcdef")];
        assert!(is_api_key("0123456789abcdef", &keys));
        assert!(!is_api_key("0123456789abcde", &keys));
        assert!(!is_api_key("0123456789abcdefg", &keys));
        assert!(!is_api_key("", &keys));
        assert!(!is_api_key("0123456789abcdef", &[]));
    }

    #[test]
    fn bearer_needs_the_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
    }
}
