//! Task ids: `/task/<id>` reads channel `task:<id>`. With a task secret configured an id may
//! be signed (`<id>.<hex HMAC-SHA256(secret, id)>`), which is a credential for that one task;
//! otherwise the caller's token must allow the channel.

use hmac::{Hmac, Mac};
use redistribute_protocol::ErrorCode;
use sha2::Sha256;

use crate::auth::{AuthContext, Credential};
use crate::core_state::Core;
use crate::error::RequestError;

/// The channel a task id names, and the caller as it then stands: a correctly signed id makes
/// the caller [`Credential::SignedTask`] (for the bare id's channel). Without a signature the
/// id is taken whole, and the caller keeps the credential it came with (a token, or none when
/// authentication is off); a caller with neither is refused (`forbidden` when only a secret is
/// configured, since the id is then the credential; `unauthorized` with tokens on).
pub(crate) fn resolve(
    core: &Core,
    caller: &mut AuthContext,
    id: &str,
) -> Result<String, RequestError> {
    let secret = core.config.http.task_secret.as_ref().map(|s| s.expose());
    if let Some(bare) = secret.and_then(|secret| verify(id, secret)) {
        caller.credential = Credential::SignedTask;
        return Ok(format!("task:{bare}"));
    }
    if caller.credential == Credential::Missing {
        let (code, message) = if core.auth_required() {
            (
                ErrorCode::Unauthorized,
                "a token or a signed task id is required",
            )
        } else {
            (
                ErrorCode::Forbidden,
                "task id must be signed: <id>.<hex HMAC-SHA256(secret, id)>",
            )
        };
        return Err(RequestError::new(code, message));
    }
    Ok(format!("task:{id}"))
}

/// The bare id of a correctly signed one.
fn verify<'a>(id: &'a str, secret: &str) -> Option<&'a str> {
    let (bare, signature) = id.rsplit_once('.')?;
    let signature = hex::decode(signature).ok()?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(bare.as_bytes());
    mac.verify_slice(&signature).ok()?;
    Some(bare)
}

/// Signs a task id with the secret (for back-ends that create tasks, and for tests).
pub fn sign_task_id(id: &str, secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    format!("{id}.{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secret = "0123456789abcdef";
        let signed = sign_task_id("job-7", secret);
        assert_eq!(verify(&signed, secret), Some("job-7"));
        assert_eq!(verify("job-7", secret), None);
        assert_eq!(verify("job-7.00ff", secret), None);
        assert_eq!(verify("job-7.zz", secret), None);
        let moved = sign_task_id("job-8", secret).replace("job-8", "job-7");
        assert_eq!(verify(&moved, secret), None);
        assert_eq!(verify(&signed, "another-secret-0123"), None);
    }
}
