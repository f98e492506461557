//! Server configuration: a plain struct with documented units and defaults, built from
//! command-line flags, `REDISTRIBUTE_*` environment variables and a TOML file (flags win over
//! the environment, which wins over the file), and validated with errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Most simultaneous connections from one IP address (default 10,000).
    pub max_connections_per_ip: usize,
    /// Publishes per second per connection (default 1,000), with bursts of `publish_burst`.
    pub publish_rate: u32,
    /// Burst size of the publish rate limit (default 2,000).
    pub publish_burst: u32,
    /// Subscribes per second per connection (default 1,000), with bursts of `subscribe_burst`.
    pub subscribe_rate: u32,
    /// Burst size of the subscribe rate limit (default 1,000).
    pub subscribe_burst: u32,
    /// Time to finish the TLS handshake, the HTTP request head and, with auth on, the
    /// `connect` frame (default 10 s).
    pub handshake_timeout: Duration,
    /// Idle WebSocket connections are pinged this often and dropped after two pings go
    /// unanswered (default 25 s).
    pub ws_ping_interval: Duration,
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
            max_connections_per_ip: 10_000,
            publish_rate: 1_000,
            publish_burst: 2_000,
            subscribe_rate: 1_000,
            subscribe_burst: 1_000,
            handshake_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(25),
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

/// Where the TLS certificate chain and key are (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How clients authenticate.
#[derive(Debug, Clone, Default)]
pub enum AuthConfig {
    /// No authentication: every client may do everything (development).
    #[default]
    Open,
    /// HS256 tokens signed with this secret.
    JwtSecret(String),
    /// RS256 or ES256 tokens verified with the public key in this PEM file.
    JwtPublicKey(PathBuf),
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Redis URL; `None` (and no `redis_cluster`) runs the embedded engine.
    pub redis: Option<String>,
    /// Redis Cluster seed node URLs; non-empty runs the Redis engine in cluster mode (exclusive
    /// with `redis`).
    pub redis_cluster: Vec<String>,
    /// Shards channels are spread over in cluster mode, one hash tag each (default 16).
    pub redis_shards: u16,
    /// Replicas that must confirm a publish (`WAIT`) before it is acknowledged (default 0).
    pub redis_wait_replicas: u32,
    /// How long a publish waits for those replicas (default 1 s).
    pub redis_wait_timeout: Duration,
    /// Prefix of stream keys in Redis (default `rd:`).
    pub prefix: String,
    /// How long a Redis reader blocks in `XREAD` (default 10 s).
    pub redis_block: Duration,
    /// Most channels per Redis reader connection (default 256).
    pub redis_keys_per_reader: usize,
    /// How long idempotency keys are remembered (default 600 s).
    pub idempotency_ttl: Duration,
    /// Consumer-group entries left unacknowledged this long are reassigned to another live
    /// consumer (`XAUTOCLAIM` min-idle-time; default 30 s).
    pub group_claim_idle: Duration,
    /// An entry delivered more than this many times goes to `<channel>:dead` instead of being
    /// delivered again (default 5).
    pub group_max_deliveries: u64,
    /// Per-connection limits.
    pub limits: Limits,
    /// HTTP transports and API.
    pub http: HttpConfig,
    /// TLS on the listener, if configured.
    pub tls: Option<TlsFiles>,
    /// Client authentication.
    pub auth: AuthConfig,
    /// How long a drain (SIGTERM) may take before the process exits anyway (default 10 s).
    pub drain_timeout: Duration,
    /// Log format: human-readable text (default) or JSON lines.
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The effective configuration for `check-config`, with secrets masked.
    pub fn describe(&self) -> String {
        let mut text = format!("{self:#?}");
        let mut secrets: Vec<&str> = self.http.api_keys.iter().map(String::as_str).collect();
        secrets.extend(self.http.task_secret.as_deref());
        if let AuthConfig::JwtSecret(secret) = &self.auth {
            secrets.push(secret);
        }
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret, "***");
        }
        text
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis: None,
            redis_cluster: Vec::new(),
            redis_shards: crate::engine::redis::keys::DEFAULT_SHARDS,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_secs(1),
            prefix: "rd:".into(),
            redis_block: Duration::from_secs(10),
            redis_keys_per_reader: 256,
            idempotency_ttl: Duration::from_secs(600),
            group_claim_idle: Duration::from_secs(30),
            group_max_deliveries: 5,
            limits: Limits::default(),
            http: HttpConfig::default(),
            tls: None,
            auth: AuthConfig::Open,
            drain_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
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
    /// See [`Config::redis_cluster`].
    pub redis_cluster: Option<Vec<String>>,
    /// See [`Config::redis_shards`].
    pub redis_shards: Option<u16>,
    /// See [`Config::redis_wait_replicas`].
    pub redis_wait_replicas: Option<u32>,
    /// See [`Config::redis_wait_timeout`], in ms.
    pub redis_wait_timeout_ms: Option<u64>,
    /// See [`Config::prefix`].
    pub prefix: Option<String>,
    /// See [`Config::redis_block`], in ms.
    pub redis_block_ms: Option<u64>,
    /// See [`Config::redis_keys_per_reader`].
    pub redis_keys_per_reader: Option<usize>,
    /// See [`Config::idempotency_ttl`], in seconds.
    pub idempotency_ttl_secs: Option<u64>,
    /// See [`Config::group_claim_idle`], in ms.
    pub group_claim_idle_ms: Option<u64>,
    /// See [`Config::group_max_deliveries`].
    pub group_max_deliveries: Option<u64>,
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
    /// See [`TlsFiles::cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`TlsFiles::key`].
    pub tls_key: Option<PathBuf>,
    /// See [`AuthConfig::JwtSecret`].
    pub jwt_secret: Option<String>,
    /// See [`AuthConfig::JwtPublicKey`].
    pub jwt_public_key: Option<PathBuf>,
    /// See [`Limits::max_connections_per_ip`].
    pub max_connections_per_ip: Option<usize>,
    /// See [`Limits::publish_rate`].
    pub publish_rate: Option<u32>,
    /// See [`Limits::publish_burst`].
    pub publish_burst: Option<u32>,
    /// See [`Limits::subscribe_rate`].
    pub subscribe_rate: Option<u32>,
    /// See [`Limits::subscribe_burst`].
    pub subscribe_burst: Option<u32>,
    /// See [`Limits::handshake_timeout`], in ms.
    pub handshake_timeout_ms: Option<u64>,
    /// See [`Limits::ws_ping_interval`], in seconds.
    pub ws_ping_secs: Option<u64>,
    /// See [`Config::drain_timeout`], in ms.
    pub drain_timeout_ms: Option<u64>,
    /// See [`Config::log_format`]: `text` or `json`.
    pub log_format: Option<String>,
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
            redis_cluster: self
                .redis_cluster
                .filter(|r| !r.is_empty())
                .or(other.redis_cluster),
            redis_shards: self.redis_shards.or(other.redis_shards),
            redis_wait_replicas: self.redis_wait_replicas.or(other.redis_wait_replicas),
            redis_wait_timeout_ms: self.redis_wait_timeout_ms.or(other.redis_wait_timeout_ms),
            prefix: self.prefix.or(other.prefix),
            redis_block_ms: self.redis_block_ms.or(other.redis_block_ms),
            redis_keys_per_reader: self.redis_keys_per_reader.or(other.redis_keys_per_reader),
            idempotency_ttl_secs: self.idempotency_ttl_secs.or(other.idempotency_ttl_secs),
            group_claim_idle_ms: self.group_claim_idle_ms.or(other.group_claim_idle_ms),
            group_max_deliveries: self.group_max_deliveries.or(other.group_max_deliveries),
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
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            jwt_secret: self.jwt_secret.or(other.jwt_secret),
            jwt_public_key: self.jwt_public_key.or(other.jwt_public_key),
            max_connections_per_ip: self.max_connections_per_ip.or(other.max_connections_per_ip),
            publish_rate: self.publish_rate.or(other.publish_rate),
            publish_burst: self.publish_burst.or(other.publish_burst),
            subscribe_rate: self.subscribe_rate.or(other.subscribe_rate),
            subscribe_burst: self.subscribe_burst.or(other.subscribe_burst),
            handshake_timeout_ms: self.handshake_timeout_ms.or(other.handshake_timeout_ms),
            ws_ping_secs: self.ws_ping_secs.or(other.ws_ping_secs),
            drain_timeout_ms: self.drain_timeout_ms.or(other.drain_timeout_ms),
            log_format: self.log_format.or(other.log_format),
        }
    }

    /// Validates the values and fills in defaults.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        self.build_http(&mut config.http)?;
        self.build_security(&mut config)?;
        if let Some(listen) = &self.listen {
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
        self.build_cluster(&mut config)?;
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
        if let Some(ms) = self.group_claim_idle_ms {
            config.group_claim_idle = Duration::from_millis(positive("group_claim_idle_ms", ms)?);
        }
        if let Some(n) = self.group_max_deliveries {
            config.group_max_deliveries = positive("group_max_deliveries", n)?;
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

    fn build_security(&self, config: &mut Config) -> Result<(), ConfigError> {
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "tls_key",
                    reason: "tls_cert is set but tls_key is not; give both".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    reason: "tls_key is set but tls_cert is not; give both".into(),
                })
            }
        };
        config.auth = match (&self.jwt_secret, &self.jwt_public_key) {
            (None, None) => AuthConfig::Open,
            (Some(secret), None) if secret.len() >= 32 => AuthConfig::JwtSecret(secret.clone()),
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "jwt_secret",
                    reason: "must be at least 32 bytes for HS256".into(),
                })
            }
            (None, Some(path)) => AuthConfig::JwtPublicKey(path.clone()),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "jwt_public_key",
                    reason: "give either jwt_secret or jwt_public_key, not both".into(),
                })
            }
        };
        if let Some(ms) = self.drain_timeout_ms {
            config.drain_timeout = Duration::from_millis(positive("drain_timeout_ms", ms)?);
        }
        config.log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    reason: format!("{other:?} is neither \"text\" nor \"json\""),
                })
            }
        };
        let limits = &mut config.limits;
        if let Some(n) = self.max_connections_per_ip {
            limits.max_connections_per_ip = positive("max_connections_per_ip", n as u64)? as usize;
        }
        if let Some(n) = self.publish_rate {
            limits.publish_rate = positive("publish_rate", n.into())? as u32;
        }
        if let Some(n) = self.publish_burst {
            limits.publish_burst = positive("publish_burst", n.into())? as u32;
        }
        if let Some(n) = self.subscribe_rate {
            limits.subscribe_rate = positive("subscribe_rate", n.into())? as u32;
        }
        if let Some(n) = self.subscribe_burst {
            limits.subscribe_burst = positive("subscribe_burst", n.into())? as u32;
        }
        if let Some(ms) = self.handshake_timeout_ms {
            limits.handshake_timeout = Duration::from_millis(positive("handshake_timeout_ms", ms)?);
        }
        if let Some(s) = self.ws_ping_secs {
            limits.ws_ping_interval = Duration::from_secs(positive("ws_ping_secs", s)?);
        }
        Ok(())
    }

    /// The Redis Cluster and replication keys.
    fn build_cluster(&self, config: &mut Config) -> Result<(), ConfigError> {
        let nodes = self.redis_cluster.as_deref().unwrap_or_default();
        if !nodes.is_empty() && config.redis.is_some() {
            return Err(ConfigError::Invalid {
                key: "redis_cluster",
                reason: "`redis` and `redis_cluster` are mutually exclusive: give `redis` for \
                         a single Redis or `redis_cluster` (seed nodes) for a Redis Cluster"
                    .into(),
            });
        }
        for url in nodes {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ConfigError::Invalid {
                    key: "redis_cluster",
                    reason: format!("{url:?} is not a redis:// or rediss:// URL"),
                });
            }
        }
        config.redis_cluster = nodes.to_vec();
        if let Some(n) = self.redis_shards {
            config.redis_shards = positive("redis_shards", u64::from(n))? as u16;
        }
        if let Some(n) = self.redis_wait_replicas {
            config.redis_wait_replicas = n;
        }
        if let Some(ms) = self.redis_wait_timeout_ms {
            config.redis_wait_timeout =
                Duration::from_millis(positive("redis_wait_timeout_ms", ms)?);
        }
        Ok(())
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
    fn redis_and_redis_cluster_are_exclusive() {
        let err = ConfigValues {
            redis: Some(vec!["redis://a:1".into()]),
            redis_cluster: Some(vec!["redis://b:1".into()]),
            ..Default::default()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`redis`") && err.contains("`redis_cluster`"),
            "{err}"
        );
        let config: ConfigValues = toml::from_str(
            "redis_cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n\
             redis_shards = 32\nredis_wait_replicas = 1",
        )
        .unwrap();
        let config = config.build().unwrap();
        assert_eq!(config.redis_cluster.len(), 2);
        assert_eq!(config.redis_shards, 32);
        assert_eq!(config.redis_wait_replicas, 1);
        assert!(config.redis.is_none());
        let err = ConfigValues {
            redis_shards: Some(0),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("`redis_shards`"), "{err}");
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
