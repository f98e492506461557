//! Values that must never be printed: [`Secret`] (API keys, the JWT secret, the task secret)
//! and [`RedisUrl`] (a Redis URL whose password is masked). Their `Debug`, `Display` and
//! `Serialize` print a mask, so a derived `Debug` of the configuration, a log field or the
//! TOML that `check-config` prints cannot leak them; the value itself is only reachable through
//! `expose()`, at the few places that use it (token verification, API key comparison, the
//! Redis client).

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What a [`Secret`] prints as.
pub(crate) const REDACTED: &str = "<redacted>";

/// A secret string; every way of printing it prints `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the code that uses it (never for printing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

/// A Redis URL that prints with its password masked (`redis://user:***@host:6379`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> RedisUrl {
        RedisUrl(url.into())
    }

    /// The URL with its password, for the Redis client (never for printing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password masked.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> RedisUrl {
        RedisUrl(url)
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> RedisUrl {
        RedisUrl(url.to_owned())
    }
}

/// `url` with the password of its user info (`redis://user:password@host`) replaced by `***`,
/// for logs, errors and `check-config`. User info without `:` (`redis://password@host`) is
/// masked whole; a string that is not a URL is masked whole when it holds an `@` (it might be
/// a mistyped URL with a password).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "***".to_owned()
        } else {
            url.to_owned()
        };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    // `user:password` keeps the user; user info without `:` is masked whole.
    let masked = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{masked}@{}", &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        let cases = [
            ("redis://u:secret@h:6379/2", "redis://u:***@h:6379/2"),
            ("redis://:secret@h", "redis://:***@h"),
            ("redis://secret@h", "redis://***@h"),
            ("redis://u:p@ss:w@h", "redis://u:***@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://h/a@b", "redis://h/a@b"),
            ("redis://u:s@h#frag@x", "redis://u:***@h#frag@x"),
            ("not a url", "not a url"),
            ("u:secret@h", "***"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        let url = RedisUrl::new("redis://u:hunter2@h:1");
        let printed = [
            format!("{secret:?} {secret} {secret:#?}"),
            format!("{url:?} {url} {url:#?}"),
            toml::to_string(&std::collections::BTreeMap::from([
                ("s", toml::Value::try_from(&secret).unwrap()),
                ("u", toml::Value::try_from(&url).unwrap()),
            ]))
            .unwrap(),
            serde_json::to_string(&(&secret, &url)).unwrap(),
        ];
        for text in printed {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert_eq!(secret.expose(), "hunter2-hunter2-hunter2");
        assert_eq!(url.expose(), "redis://u:hunter2@h:1");
        assert_eq!(url.to_string(), "redis://u:***@h:1");
    }
}
