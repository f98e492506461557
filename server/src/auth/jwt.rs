//! JWT verification: HS256 with a shared secret, or RS256/ES256 with a PEM public key. The
//! claims `subscribe` and `publish` list the channel patterns a client may use.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

use super::pattern::ChannelPattern;

/// The claims redistribute reads from a token.
#[derive(Debug, Clone, Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    /// Presence info shown to other members (a JSON object).
    #[serde(default)]
    info: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A verified token's identity and permissions.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The subject (`sub`), substituted for `{sub}` in patterns.
    pub subject: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Channels the client may subscribe to.
    pub subscribe: Vec<ChannelPattern>,
    /// Channels the client may publish to.
    pub publish: Vec<ChannelPattern>,
    /// The `info` claim (a JSON object): what presence shows of this client to other members.
    pub info: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Claims {
    /// Whether the client may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe
            .iter()
            .any(|p| p.matches(channel, self.subject.as_deref()))
    }

    /// Whether the client may publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish
            .iter()
            .any(|p| p.matches(channel, self.subject.as_deref()))
    }
}

/// Why a token was refused (sent to the client as the `unauthorized` message).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TokenError {
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// Signature, algorithm or format is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A `subscribe`/`publish` pattern is malformed.
    #[error("invalid channel pattern {0:?} in token")]
    BadPattern(String),
}

/// Why the configured key cannot be used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The PEM file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The PEM is neither an RSA nor an EC public key.
    #[error("{path} holds no RSA or EC public key in PEM format")]
    NotAKey {
        /// File.
        path: String,
    },
}

/// Checks tokens against the configured key.
#[derive(Clone)]
pub struct Verifier {
    key: Arc<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 or ES256, chosen by the kind of public key in the PEM file.
    pub fn from_public_key_file(path: &str) -> Result<Verifier, KeyError> {
        let pem = std::fs::read(path).map_err(|e| KeyError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Verifier::new(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Verifier::new(key, Algorithm::ES256));
        }
        Err(KeyError::NotAKey {
            path: path.to_owned(),
        })
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = super::lifetime::LEEWAY.as_secs();
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier {
            key: Arc::new(key),
            validation,
        }
    }

    /// Verifies a token and compiles its patterns.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data =
            jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid(e.to_string()),
                }
            })?;
        let compile = |patterns: Vec<String>| {
            patterns
                .into_iter()
                .map(|p| ChannelPattern::parse(&p).ok_or(TokenError::BadPattern(p)))
                .collect::<Result<Vec<_>, _>>()
        };
        let raw = data.claims;
        Ok(Claims {
            subject: raw.sub,
            expires_at: raw.exp,
            subscribe: compile(raw.subscribe)?,
            publish: compile(raw.publish)?,
            info: raw.info,
        })
    }
}
