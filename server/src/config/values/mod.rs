//! The raw configuration values (flags, `REDISTRIBUTE_*` variables, TOML file), how they are
//! merged, and their validation into a [`Config`] with errors that name the key.
//!
//! This module owns the values and their merging (flags over environment over file); `build`
//! their validation.

mod build;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, RedisUrl, Secret};
// The fields' documentation links to what each one becomes.
#[cfg(doc)]
use super::{AuthConfig, Config, HttpConfig, Limits, TlsFiles};
#[cfg(doc)]
use crate::presence::PresenceConfig;
#[cfg(doc)]
use crate::TrustedProxies;

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
    /// See [`PresenceConfig::channels`]: channel patterns with presence.
    pub presence_channels: Option<Vec<String>>,
    /// See [`PresenceConfig::ttl`], in seconds.
    pub presence_ttl_secs: Option<u64>,
    /// See [`PresenceConfig::max_members`].
    pub presence_max_members: Option<usize>,
    /// See [`PresenceConfig::max_info_bytes`].
    pub presence_max_info_bytes: Option<usize>,
    /// See [`PresenceConfig::window`], in ms.
    pub presence_window_ms: Option<u64>,
    /// See [`PresenceConfig::max_events`].
    pub presence_max_events: Option<usize>,
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
            presence_channels: self
                .presence_channels
                .filter(|c| !c.is_empty())
                .or(other.presence_channels),
            presence_ttl_secs: self.presence_ttl_secs.or(other.presence_ttl_secs),
            presence_max_members: self.presence_max_members.or(other.presence_max_members),
            presence_max_info_bytes: self
                .presence_max_info_bytes
                .or(other.presence_max_info_bytes),
            presence_window_ms: self.presence_window_ms.or(other.presence_window_ms),
            presence_max_events: self.presence_max_events.or(other.presence_max_events),
        }
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
