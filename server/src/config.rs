//! Server configuration: a plain struct with documented units and defaults, built from
//! command-line flags, `REDISTRIBUTE_*` environment variables and a TOML file (flags win over
//! the environment, which wins over the file), and validated with errors that name the key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest inbound frame in bytes (default 1 MiB); larger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Most subscriptions per connection (default 1,000).
    pub max_subscriptions: usize,
    /// Capacity of a connection's live queue, in batches (default 1,024). When it is full the
    /// subscription switches to catch-up reads instead of growing memory.
    pub queue_batches: usize,
    /// Capacity of a connection's live queue in encoded bytes (default 4 MiB); like
    /// `queue_batches`, a full queue switches the subscription to catch-up reads.
    pub queue_bytes: usize,
    /// Consecutive bad frames tolerated before closing with 1008 (default 20).
    pub max_bad_frames: u32,
    /// How long a request may wait on the engine before answering `unavailable` (default 5 s).
    pub request_timeout: Duration,
    /// Entries per catch-up (history) read (default 500).
    pub catch_up_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 1_000,
            queue_batches: 1_024,
            queue_bytes: 4 << 20,
            max_bad_frames: 20,
            request_timeout: Duration::from_secs(5),
            catch_up_page: 500,
        }
    }
}

/// Settings of the HTTP transports and back-end API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Browser origins allowed to call the HTTP transports (CORS); `*` allows any. Empty: no
    /// cross-origin access.
    pub allowed_origins: Vec<String>,
    /// Whether `/poll` answers JSONP (`callback=`) (default off).
    pub jsonp: bool,
    /// API keys for `/api/*`; empty leaves the API open (development).
    pub api_keys: Vec<String>,
    /// Secret for signed task ids (`<id>.<hex HMAC-SHA256(secret, id)>`); `None` accepts any id.
    pub task_secret: Option<String>,
    /// Interval of SSE comment heartbeats (default 15 s).
    pub sse_heartbeat: Duration,
    /// Default long-poll hold time when the request names none (default 25 s).
    pub poll_timeout: Duration,
    /// Longest long-poll hold time a request may ask for (default 120 s).
    pub poll_max_timeout: Duration,
    /// Newline keepalive interval of task watches; `None` disables it (default 10 s).
    pub task_keepalive: Option<Duration>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            jsonp: false,
            api_keys: Vec::new(),
            task_secret: None,
            sse_heartbeat: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(25),
            poll_max_timeout: Duration::from_secs(120),
            task_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Redis URL; `None` runs the embedded engine.
    pub redis: Option<String>,
    /// Prefix of stream keys in Redis (default `rd:`).
    pub prefix: String,
    /// How long a Redis reader blocks in `XREAD` (default 10 s).
    pub redis_block: Duration,
    /// Most channels per Redis reader connection (default 256).
    pub redis_keys_per_reader: usize,
    /// How long idempotency keys are remembered (default 600 s).
    pub idempotency_ttl: Duration,
    /// Per-connection limits.
    pub limits: Limits,
    /// HTTP transports and API.
    pub http: HttpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis: None,
            prefix: "rd:".into(),
            redis_block: Duration::from_secs(10),
            redis_keys_per_reader: 256,
            idempotency_ttl: Duration::from_secs(600),
            limits: Limits::default(),
            http: HttpConfig::default(),
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for this config (unknown key, wrong type).
    #[error("config file {path}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// Why, naming the key.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key (flag name without dashes, snake case in files).
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Values as given by flags, environment or file; `None` means not given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigValues {
    /// See [`Config::listen`].
    pub listen: Option<String>,
    /// See [`Config::redis`].
    pub redis: Option<Vec<String>>,
    /// See [`Config::prefix`].
    pub prefix: Option<String>,
    /// See [`Config::redis_block`], in ms.
    pub redis_block_ms: Option<u64>,
    /// See [`Config::redis_keys_per_reader`].
    pub redis_keys_per_reader: Option<usize>,
    /// See [`Config::idempotency_ttl`], in seconds.
    pub idempotency_ttl_secs: Option<u64>,
    /// See [`Limits::max_frame_bytes`].
    pub max_frame_bytes: Option<usize>,
    /// See [`Limits::max_subscriptions`].
    pub max_subscriptions: Option<usize>,
    /// See [`Limits::queue_batches`].
    pub queue_batches: Option<usize>,
    /// See [`Limits::queue_bytes`].
    pub queue_bytes: Option<usize>,
    /// See [`Limits::request_timeout`], in ms.
    pub request_timeout_ms: Option<u64>,
    /// See [`HttpConfig::allowed_origins`].
    pub allowed_origin: Option<Vec<String>>,
    /// See [`HttpConfig::jsonp`].
    pub jsonp: Option<bool>,
    /// See [`HttpConfig::api_keys`].
    pub api_key: Option<Vec<String>>,
    /// See [`HttpConfig::task_secret`].
    pub task_secret: Option<String>,
    /// See [`HttpConfig::sse_heartbeat`], in seconds.
    pub sse_heartbeat_secs: Option<u64>,
    /// See [`HttpConfig::poll_timeout`], in seconds.
    pub poll_timeout_secs: Option<u64>,
    /// See [`HttpConfig::task_keepalive`], in seconds; 0 turns it off.
    pub task_keepalive_secs: Option<u64>,
}

impl ConfigValues {
    /// Reads values from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.display().to_string(),
            reason: e.message().to_owned(),
        })
    }

    /// Values given here win over `other`'s.
    pub fn or(self, other: ConfigValues) -> ConfigValues {
        ConfigValues {
            listen: self.listen.or(other.listen),
            redis: self.redis.filter(|r| !r.is_empty()).or(other.redis),
            prefix: self.prefix.or(other.prefix),
            redis_block_ms: self.redis_block_ms.or(other.redis_block_ms),
            redis_keys_per_reader: self.redis_keys_per_reader.or(other.redis_keys_per_reader),
            idempotency_ttl_secs: self.idempotency_ttl_secs.or(other.idempotency_ttl_secs),
            max_frame_bytes: self.max_frame_bytes.or(other.max_frame_bytes),
            max_subscriptions: self.max_subscriptions.or(other.max_subscriptions),
            queue_batches: self.queue_batches.or(other.queue_batches),
            queue_bytes: self.queue_bytes.or(other.queue_bytes),
            request_timeout_ms: self.request_timeout_ms.or(other.request_timeout_ms),
            allowed_origin: self
                .allowed_origin
                .filter(|o| !o.is_empty())
                .or(other.allowed_origin),
            jsonp: self.jsonp.or(other.jsonp),
            api_key: self.api_key.filter(|k| !k.is_empty()).or(other.api_key),
            task_secret: self.task_secret.or(other.task_secret),
            sse_heartbeat_secs: self.sse_heartbeat_secs.or(other.sse_heartbeat_secs),
            poll_timeout_secs: self.poll_timeout_secs.or(other.poll_timeout_secs),
            task_keepalive_secs: self.task_keepalive_secs.or(other.task_keepalive_secs),
        }
    }

    /// Validates the values and fills in defaults.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        self.build_http(&mut config.http)?;
        if let Some(listen) = self.listen {
            config.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                key: "listen",
                reason: format!("{listen:?} is not an address like 127.0.0.1:8080 ({e})"),
            })?;
        }
        match self.redis.as_deref() {
            None | Some([]) => {}
            Some([url]) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(ConfigError::Invalid {
                        key: "redis",
                        reason: format!("{url:?} is not a redis:// or rediss:// URL"),
                    });
                }
                config.redis = Some(url.clone());
            }
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key: "redis",
                    reason: "give one Redis URL".into(),
                })
            }
        }
        if let Some(prefix) = self.prefix {
            if prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b"{}#".contains(&b))
            {
                return Err(ConfigError::Invalid {
                    key: "prefix",
                    reason: "must not contain whitespace, '{', '}' or '#'".into(),
                });
            }
            config.prefix = prefix;
        }
        if let Some(ms) = self.redis_block_ms {
            config.redis_block = Duration::from_millis(positive("redis_block_ms", ms)?);
        }
        if let Some(n) = self.redis_keys_per_reader {
            config.redis_keys_per_reader = positive("redis_keys_per_reader", n as u64)? as usize;
        }
        if let Some(s) = self.idempotency_ttl_secs {
            config.idempotency_ttl = Duration::from_secs(positive("idempotency_ttl_secs", s)?);
        }
        if let Some(n) = self.max_frame_bytes {
            if n < 1024 {
                return Err(ConfigError::Invalid {
                    key: "max_frame_bytes",
                    reason: "must be at least 1024".into(),
                });
            }
            config.limits.max_frame_bytes = n;
        }
        if let Some(n) = self.max_subscriptions {
            config.limits.max_subscriptions = positive("max_subscriptions", n as u64)? as usize;
        }
        if let Some(n) = self.queue_batches {
            config.limits.queue_batches = positive("queue_batches", n as u64)? as usize;
        }
        if let Some(n) = self.queue_bytes {
            config.limits.queue_bytes = positive("queue_bytes", n as u64)? as usize;
        }
        if let Some(ms) = self.request_timeout_ms {
            config.limits.request_timeout =
                Duration::from_millis(positive("request_timeout_ms", ms)?);
        }
        Ok(config)
    }

    fn build_http(&self, http: &mut HttpConfig) -> Result<(), ConfigError> {
        if let Some(origins) = &self.allowed_origin {
            for origin in origins {
                let ok = origin == "*"
                    || ((origin.starts_with("http://") || origin.starts_with("https://"))
                        && !origin.ends_with('/'));
                if !ok {
                    return Err(ConfigError::Invalid {
                        key: "allowed_origin",
                        reason: format!(
                            "{origin:?} is not an origin like https://app.example.com (or *)"
                        ),
                    });
                }
            }
            http.allowed_origins = origins.clone();
        }
        if let Some(jsonp) = self.jsonp {
            http.jsonp = jsonp;
        }
        if let Some(keys) = &self.api_key {
            if keys.iter().any(|k| k.len() < 16) {
                return Err(ConfigError::Invalid {
                    key: "api_key",
                    reason: "API keys must be at least 16 characters".into(),
                });
            }
            http.api_keys = keys.clone();
        }
        if let Some(secret) = &self.task_secret {
            if secret.len() < 16 {
                return Err(ConfigError::Invalid {
                    key: "task_secret",
                    reason: "must be at least 16 characters".into(),
                });
            }
            http.task_secret = Some(secret.clone());
        }
        if let Some(s) = self.sse_heartbeat_secs {
            http.sse_heartbeat = Duration::from_secs(positive("sse_heartbeat_secs", s)?);
        }
        if let Some(s) = self.poll_timeout_secs {
            let s = positive("poll_timeout_secs", s)?;
            http.poll_timeout = Duration::from_secs(s);
            http.poll_max_timeout = http.poll_max_timeout.max(http.poll_timeout);
        }
        if let Some(s) = self.task_keepalive_secs {
            http.task_keepalive = (s > 0).then(|| Duration::from_secs(s));
        }
        Ok(())
    }
}

fn positive(key: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(ConfigError::Invalid {
            key,
            reason: "must be greater than 0".into(),
        })
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let config = ConfigValues::default().build().unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert!(config.redis.is_none());
        let err = ConfigValues {
            listen: Some("nope".into()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("`listen`"), "{err}");
        let err = ConfigValues {
            redis: Some(vec!["http://x".into()]),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("`redis`"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = toml::from_str::<ConfigValues>("lisen = \"x\"").unwrap_err();
        assert!(err.message().contains("lisen"), "{}", err.message());
    }

    #[test]
    fn flags_win_over_file() {
        let flags = ConfigValues {
            prefix: Some("a:".into()),
            ..Default::default()
        };
        let file = ConfigValues {
            prefix: Some("b:".into()),
            max_subscriptions: Some(5),
            ..Default::default()
        };
        let config = flags.or(file).build().unwrap();
        assert_eq!(config.prefix, "a:");
        assert_eq!(config.limits.max_subscriptions, 5);
    }
}
