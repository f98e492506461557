//! Validation of [`ConfigValues`] into a [`Config`]: defaults, ranges, exclusive keys, and
//! errors that name the key (and never quote a secret).

use std::time::Duration;

use super::ConfigValues;
use crate::config::{AuthConfig, Config, ConfigError, HttpConfig, LogFormat, TlsFiles};
use crate::engine::retention::RetentionSpec;
use crate::listener::proxy::{CidrError, ClientIpHeader};

/// Smallest `max_header_bytes`: a request line, a host and a token must fit.
const MIN_HEADER_BYTES: usize = 4 * 1024;
/// Largest `max_header_bytes`: the connection's read buffer must hold the whole head.
const MAX_HEADER_BYTES: usize = 256 * 1024;

impl ConfigValues {
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
        self.build_presence(&mut config)?;
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

    /// The presence keys: `presence_channels`, `presence_ttl_secs`, `presence_max_members`,
    /// `presence_max_info_bytes`, `presence_window_ms`, `presence_max_events`.
    fn build_presence(&self, config: &mut Config) -> Result<(), ConfigError> {
        let presence = &mut config.presence;
        for pattern in self.presence_channels.iter().flatten() {
            presence
                .add_channels(pattern)
                .map_err(|reason| ConfigError::Invalid {
                    key: "presence_channels",
                    reason,
                })?;
        }
        if let Some(s) = self.presence_ttl_secs {
            let s = positive("presence_ttl_secs", s)?;
            if s < 3 {
                return Err(ConfigError::Invalid {
                    key: "presence_ttl_secs",
                    reason: "must be at least 3 (members are refreshed every third of it)".into(),
                });
            }
            presence.ttl = Duration::from_secs(s);
        }
        if let Some(n) = self.presence_max_members {
            presence.max_members = positive("presence_max_members", n as u64)? as usize;
        }
        if let Some(n) = self.presence_max_info_bytes {
            presence.max_info_bytes = n;
        }
        if let Some(ms) = self.presence_window_ms {
            presence.window = Duration::from_millis(positive("presence_window_ms", ms)?);
        }
        if let Some(n) = self.presence_max_events {
            presence.max_events = positive("presence_max_events", n as u64)? as usize;
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
            reason: format!("{:?} is not a redis:// URL", crate::config::redact_url(url)),
        });
    }
    Ok(())
}
