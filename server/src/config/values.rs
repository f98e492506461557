//! The raw configuration values (flags, `REDISTRIBUTE_*` variables, TOML file), how they are
//! merged, and their validation into a [`Config`] with errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AuthConfig, Config, ConfigError, HttpConfig, LogFormat, RedisUrl, Secret, TlsFiles};
use crate::engine::retention::RetentionSpec;
use crate::listener::proxy::{CidrError, ClientIpHeader};

/// Smallest `max_header_bytes`: a request line, a host and a token must fit.
const MIN_HEADER_BYTES: usize = 4 * 1024;
/// Largest `max_header_bytes`: the connection's read buffer must hold the whole head.
const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Values as given by flags, environment or file; `None` means not given. Secrets are
/// [`Secret`]s and Redis URLs [`RedisUrl`]s, so printing these values never shows them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigValues {
    /// See [`Config::listen`].
    pub listen: Option<String>,
    /// See [`Config::redis`].
    pub redis: Option<Vec<RedisUrl>>,
    /// See [`Config::redis_cluster`].
    pub redis_cluster: Option<Vec<RedisUrl>>,
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
    /// See [`Config::redis_live_readers`]: `log` or `channel`.
    pub redis_live_readers: Option<String>,
    /// See [`Config::redis_log_maxlen`].
    pub redis_log_maxlen: Option<u64>,
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
    pub api_key: Option<Vec<Secret>>,
    /// See [`HttpConfig::allow_open_api`].
    pub allow_open_api: Option<bool>,
    /// See [`HttpConfig::task_secret`].
    pub task_secret: Option<Secret>,
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
    pub jwt_secret: Option<Secret>,
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
    /// Retention rules `PATTERN=SPEC`, first match wins (see [`Config::retention`]).
    pub retention: Option<Vec<String>>,
    /// Retention of channels no rule matches (`SPEC`, or `none`).
    pub retention_default: Option<String>,
    /// Lowest `maxlen` a publisher may ask for (0: none).
    pub min_maxlen: Option<u64>,
    /// See [`Config::admin_listen`].
    pub admin_listen: Option<String>,
    /// See [`TrustedProxies::networks`]: addresses or CIDR networks.
    pub trusted_proxy: Option<Vec<String>>,
    /// See [`TrustedProxies::header`]: `x-forwarded-for` or `forwarded`.
    pub client_ip_header: Option<String>,
    /// See [`Limits::max_header_bytes`].
    pub max_header_bytes: Option<usize>,
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
            reason: mask_strings(e.message()),
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
            redis_live_readers: self.redis_live_readers.or(other.redis_live_readers),
            redis_log_maxlen: self.redis_log_maxlen.or(other.redis_log_maxlen),
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
            allow_open_api: self.allow_open_api.or(other.allow_open_api),
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
            retention: self.retention.filter(|r| !r.is_empty()).or(other.retention),
            retention_default: self.retention_default.or(other.retention_default),
            min_maxlen: self.min_maxlen.or(other.min_maxlen),
            admin_listen: self.admin_listen.or(other.admin_listen),
            trusted_proxy: self
                .trusted_proxy
                .filter(|p| !p.is_empty())
                .or(other.trusted_proxy),
            client_ip_header: self.client_ip_header.or(other.client_ip_header),
            max_header_bytes: self.max_header_bytes.or(other.max_header_bytes),
        }
    }

    /// Validates the values and fills in defaults.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        self.build_http(&mut config.http)?;
        self.build_security(&mut config)?;
        self.build_edge(&mut config)?;
        if let Some(listen) = &self.listen {
            config.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                key: "listen",
                reason: format!("{listen:?} is not an address like 127.0.0.1:8080 ({e})"),
            })?;
        }
        match self.redis.as_deref() {
            None | Some([]) => {}
            Some([url]) => {
                redis_url("redis", url.expose())?;
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
        self.build_retention(&mut config)?;
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
        if let Some(mode) = &self.redis_live_readers {
            use crate::engine::redis::LiveReaders;
            config.redis_live_readers = match mode.as_str() {
                "log" => LiveReaders::Log,
                "channel" => LiveReaders::Channel,
                other => {
                    return Err(ConfigError::Invalid {
                        key: "redis_live_readers",
                        reason: format!("{other:?} is neither \"log\" nor \"channel\""),
                    })
                }
            };
        }
        if let Some(n) = self.redis_log_maxlen {
            config.redis_log_maxlen = positive("redis_log_maxlen", n)?;
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
            (Some(secret), None) if secret.expose().len() >= 32 => {
                AuthConfig::JwtSecret(secret.clone())
            }
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
        if !matches!(config.auth, AuthConfig::Open)
            && config.http.api_keys.is_empty()
            && !config.http.allow_open_api
        {
            return Err(ConfigError::Invalid {
                key: "api_key",
                reason: "client authentication is on (jwt_secret or jwt_public_key) but no API \
                         key is set, which would leave /api/publish, /api/history and /metrics \
                         open to anyone: set --api-key, or --allow-open-api to serve them \
                         without credentials on purpose"
                    .into(),
            });
        }
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

    /// The retention keys: `retention`, `retention_default`, `min_maxlen`.
    fn build_retention(&self, config: &mut Config) -> Result<(), ConfigError> {
        let retention = &mut config.retention;
        for rule in self.retention.iter().flatten() {
            retention
                .add_rule(rule)
                .map_err(|reason| ConfigError::Invalid {
                    key: "retention",
                    reason,
                })?;
        }
        if let Some(spec) = &self.retention_default {
            let spec = RetentionSpec::parse(spec).map_err(|reason| ConfigError::Invalid {
                key: "retention_default",
                reason,
            })?;
            retention.set_default(spec);
        }
        if let Some(floor) = self.min_maxlen {
            retention.set_min_maxlen(floor);
        }
        Ok(())
    }

    /// The listener's edge: the admin listener, trusted proxies and the request head limit.
    fn build_edge(&self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(addr) = &self.admin_listen {
            let addr: std::net::SocketAddr = addr.parse().map_err(|e| ConfigError::Invalid {
                key: "admin_listen",
                reason: format!("{addr:?} is not an address like 127.0.0.1:9090 ({e})"),
            })?;
            if addr == config.listen {
                return Err(ConfigError::Invalid {
                    key: "admin_listen",
                    reason: format!(
                        "{addr} is also `listen`; give the admin listener its own port"
                    ),
                });
            }
            config.admin_listen = Some(addr);
        }
        for net in self.trusted_proxy.iter().flatten() {
            let net = net.parse().map_err(|e: CidrError| ConfigError::Invalid {
                key: "trusted_proxy",
                reason: e.to_string(),
            })?;
            config.proxies.networks.push(net);
        }
        config.proxies.header = match self.client_ip_header.as_deref() {
            None => ClientIpHeader::default(),
            Some(h) if h.eq_ignore_ascii_case("x-forwarded-for") => ClientIpHeader::XForwardedFor,
            Some(h) if h.eq_ignore_ascii_case("forwarded") => ClientIpHeader::Forwarded,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "client_ip_header",
                    reason: format!("{other:?} is neither \"x-forwarded-for\" nor \"forwarded\""),
                })
            }
        };
        if let Some(n) = self.max_header_bytes {
            if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) {
                return Err(ConfigError::Invalid {
                    key: "max_header_bytes",
                    reason: format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
                });
            }
            config.limits.max_header_bytes = n;
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
            redis_url("redis_cluster", url.expose())?;
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
        if let Some(open) = self.allow_open_api {
            http.allow_open_api = open;
        }
        if let Some(keys) = &self.api_key {
            if keys.iter().any(|k| k.expose().len() < 16) {
                return Err(ConfigError::Invalid {
                    key: "api_key",
                    reason: "API keys must be at least 16 characters".into(),
                });
            }
            http.api_keys = keys.clone();
        }
        if let Some(secret) = &self.task_secret {
            if secret.expose().len() < 16 {
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

/// A parse error's message with its quoted strings masked: serde quotes the value it could not
/// use (`invalid type: string "…", expected a sequence`), which may be a secret given with the
/// wrong type (`api_key = "…"`).
fn mask_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    out.push_str(parts.next().unwrap_or_default());
    for (i, part) in parts.enumerate() {
        out.push('"');
        out.push_str(if i % 2 == 0 { super::REDACTED } else { part });
    }
    out
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

/// Checks a Redis URL of `key`: `redis://` only. `rediss://` is refused because this build
/// has no TLS towards Redis, and the Redis client would otherwise connect in plaintext to a
/// URL that asks for TLS.
fn redis_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("rediss://") {
        return Err(ConfigError::Invalid {
            key,
            reason: "rediss:// (TLS to Redis) is not supported by this build; use redis:// \
                     over a private network or a local TLS tunnel (see docs/redis.md)"
                .into(),
        });
    }
    if !url.starts_with("redis://") {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{:?} is not a redis:// URL", super::redact_url(url)),
        });
    }
    Ok(())
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

    /// A secret given with the wrong type or scheme is not quoted back in the error.
    #[test]
    fn errors_do_not_quote_secrets() {
        let file = std::env::temp_dir().join(format!("rd-bad-config-{}.toml", std::process::id()));
        for text in [
            "api_key = \"wrong-type-secret-123\"",
            "jwt_secret = [\"wrong-type-secret-123\"]",
            "task_secret = 5\napi_key = [\"ok-key-0123456789\", 7]",
            "redis = \"redis://:wrong-type-secret-123@h\"",
        ] {
            std::fs::write(&file, text).unwrap();
            let err = ConfigValues::from_file(&file).unwrap_err().to_string();
            assert!(!err.contains("secret-123"), "{err}");
            assert!(!err.contains("ok-key"), "{err}");
        }
        let _ = std::fs::remove_file(&file);
        let err = ConfigValues {
            redis: Some(vec!["http://user:scheme-secret-123@h".into()]),
            ..Default::default()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("user:***@h") && !err.contains("secret-123"),
            "{err}"
        );
        assert_eq!(
            mask_strings(r#"invalid type: string "x", expected "y" or `z`"#),
            r#"invalid type: string "<redacted>", expected "<redacted>" or `z`"#
        );
    }

    #[test]
    fn edge_keys_parse_and_errors_name_the_key() {
        let config: ConfigValues = toml::from_str(
            "admin_listen = \"127.0.0.1:9090\"\n\
             trusted_proxy = [\"10.0.0.0/8\", \"::1\"]\n\
             client_ip_header = \"Forwarded\"\nmax_header_bytes = 8192",
        )
        .unwrap();
        let config = config.build().unwrap();
        assert_eq!(config.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(config.proxies.networks.len(), 2);
        assert!(config.proxies.trusts("10.9.8.7".parse().unwrap()));
        assert!(config.proxies.trusts("::1".parse().unwrap()));
        assert!(!config.proxies.trusts("127.0.0.1".parse().unwrap()));
        assert_eq!(config.proxies.header, ClientIpHeader::Forwarded);
        assert_eq!(config.limits.max_header_bytes, 8192);
        let defaults = ConfigValues::default().build().unwrap();
        assert!(defaults.admin_listen.is_none() && defaults.proxies.networks.is_empty());
        assert_eq!(defaults.proxies.header, ClientIpHeader::XForwardedFor);
        let bad = [
            (
                ConfigValues {
                    trusted_proxy: Some(vec!["10.0.0.0/33".into()]),
                    ..Default::default()
                },
                "`trusted_proxy`",
            ),
            (
                ConfigValues {
                    client_ip_header: Some("x-real-ip".into()),
                    ..Default::default()
                },
                "`client_ip_header`",
            ),
            (
                ConfigValues {
                    max_header_bytes: Some(100),
                    ..Default::default()
                },
                "`max_header_bytes`",
            ),
            (
                ConfigValues {
                    admin_listen: Some("nope".into()),
                    ..Default::default()
                },
                "`admin_listen`",
            ),
            (
                ConfigValues {
                    admin_listen: Some("127.0.0.1:8080".into()),
                    ..Default::default()
                },
                "`admin_listen`",
            ),
        ];
        for (values, key) in bad {
            let err = values.build().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
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
