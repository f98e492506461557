//! The raw configuration values (flags, `REDISTRIBUTE_*` variables, TOML file), how they are
//! merged, and their validation into a [`Config`] with errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{AuthConfig, Config, ConfigError, HttpConfig, LogFormat, TlsFiles};

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
                redis_url("redis", url)?;
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
            redis_url("redis_cluster", url)?;
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
            reason: format!("{url:?} is not a redis:// URL"),
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
