//! The effective configuration as TOML, for `check-config`: every key `--config` reads, at its
//! effective value, secrets left out. The output reads back with `--config` to the same
//! configuration except for the secrets, which are listed as comments (`# jwt_secret =
//! "<redacted>"`) and must be given again (a file, a flag or an environment variable).

use super::{AuthConfig, Config, ConfigValues, LogFormat, REDACTED};
use crate::engine::redis::LiveReaders;
use crate::listener::proxy::ClientIpHeader;

impl ConfigValues {
    /// The values that build `config` (every key given, secrets included as [`super::Secret`]s).
    pub fn effective(config: &Config) -> ConfigValues {
        let limits = &config.limits;
        let http = &config.http;
        let retention = &config.retention;
        let (jwt_secret, jwt_public_key) = match &config.auth {
            AuthConfig::Open => (None, None),
            AuthConfig::JwtSecret(secret) => (Some(secret.clone()), None),
            AuthConfig::JwtPublicKey(path) => (None, Some(path.clone())),
        };
        ConfigValues {
            listen: Some(config.listen.to_string()),
            redis: Some(config.redis.iter().cloned().collect()),
            redis_cluster: Some(config.redis_cluster.clone()),
            redis_shards: Some(config.redis_shards),
            redis_wait_replicas: Some(config.redis_wait_replicas),
            redis_wait_timeout_ms: Some(config.redis_wait_timeout.as_millis() as u64),
            prefix: Some(config.prefix.clone()),
            redis_block_ms: Some(config.redis_block.as_millis() as u64),
            redis_keys_per_reader: Some(config.redis_keys_per_reader),
            redis_live_readers: Some(
                match config.redis_live_readers {
                    LiveReaders::Log => "log",
                    LiveReaders::Channel => "channel",
                }
                .into(),
            ),
            redis_log_maxlen: Some(config.redis_log_maxlen),
            idempotency_ttl_secs: Some(config.idempotency_ttl.as_secs()),
            group_claim_idle_ms: Some(config.group_claim_idle.as_millis() as u64),
            group_max_deliveries: Some(config.group_max_deliveries),
            max_frame_bytes: Some(limits.max_frame_bytes),
            max_subscriptions: Some(limits.max_subscriptions),
            queue_batches: Some(limits.queue_batches),
            queue_bytes: Some(limits.queue_bytes),
            request_timeout_ms: Some(limits.request_timeout.as_millis() as u64),
            allowed_origin: Some(http.allowed_origins.clone()),
            jsonp: Some(http.jsonp),
            allow_open_api: Some(http.allow_open_api),
            api_key: Some(http.api_keys.clone()),
            task_secret: http.task_secret.clone(),
            sse_heartbeat_secs: Some(http.sse_heartbeat.as_secs()),
            poll_timeout_secs: Some(http.poll_timeout.as_secs()),
            task_keepalive_secs: Some(http.task_keepalive.map_or(0, |d| d.as_secs())),
            tls_cert: config.tls.as_ref().map(|t| t.cert.clone()),
            tls_key: config.tls.as_ref().map(|t| t.key.clone()),
            jwt_secret,
            jwt_public_key,
            max_connections_per_ip: Some(limits.max_connections_per_ip),
            publish_rate: Some(limits.publish_rate),
            publish_burst: Some(limits.publish_burst),
            subscribe_rate: Some(limits.subscribe_rate),
            subscribe_burst: Some(limits.subscribe_burst),
            handshake_timeout_ms: Some(limits.handshake_timeout.as_millis() as u64),
            ws_ping_secs: Some(limits.ws_ping_interval.as_secs()),
            drain_timeout_ms: Some(config.drain_timeout.as_millis() as u64),
            log_format: Some(
                match config.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .into(),
            ),
            retention: Some(retention.rules().map(str::to_owned).collect()),
            retention_default: Some(retention.default_spec().to_string()),
            min_maxlen: Some(retention.min_maxlen()),
            admin_listen: config.admin_listen.map(|a| a.to_string()),
            trusted_proxy: Some(
                config
                    .proxies
                    .networks
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
            client_ip_header: Some(
                match config.proxies.header {
                    ClientIpHeader::XForwardedFor => "x-forwarded-for",
                    ClientIpHeader::Forwarded => "forwarded",
                }
                .into(),
            ),
            max_header_bytes: Some(limits.max_header_bytes),
            presence_channels: Some(config.presence.channels.clone()),
            presence_ttl_secs: Some(config.presence.ttl.as_secs()),
            presence_max_members: Some(config.presence.max_members),
            presence_max_info_bytes: Some(config.presence.max_info_bytes),
            presence_window_ms: Some(config.presence.window.as_millis() as u64),
            presence_max_events: Some(config.presence.max_events),
        }
    }

    /// These values as TOML that `--config` reads: secrets (API keys, task secret, JWT
    /// secret) become comments saying they are set, keys without a value (no TLS, no JWT
    /// public key) comments saying so; Redis URLs keep their user and lose their password.
    pub fn to_toml(&self) -> String {
        let mut public = self.clone();
        let mut notes = Vec::new();
        let api_keys = public.api_key.take().unwrap_or_default();
        public.api_key = Some(Vec::new());
        if !api_keys.is_empty() {
            let masked = vec![format!("\"{REDACTED}\""); api_keys.len()].join(", ");
            notes.push(format!(
                "# api_key = [{masked}]  (set; secrets are not printed)"
            ));
        }
        for (key, value) in [
            ("task_secret", public.task_secret.take()),
            ("jwt_secret", public.jwt_secret.take()),
        ] {
            notes.push(match value {
                Some(_) => format!("# {key} = \"{REDACTED}\"  (set; secrets are not printed)"),
                None => format!("# {key} is not set"),
            });
        }
        for (key, unset) in [
            ("tls_cert", public.tls_cert.is_none()),
            ("tls_key", public.tls_key.is_none()),
            ("jwt_public_key", public.jwt_public_key.is_none()),
        ] {
            if unset {
                notes.push(format!("# {key} is not set"));
            }
        }
        // Only strings, numbers, booleans and arrays of them: serializing cannot fail.
        let mut out = toml::to_string(&public).expect("config values serialize as TOML");
        out.push('\n');
        for note in notes {
            out.push_str(&note);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    /// Every secret is left out, and what is printed reads back to the same configuration.
    #[test]
    fn effective_toml_hides_secrets_and_reads_back() {
        let given: ConfigValues = toml::from_str(
            r#"
            redis = ["redis://user:url-password-1@127.0.0.1:6379/2"]
            api_key = ["api-key-secret-0001", "api-key-secret-0002"]
            task_secret = "task-secret-000001"
            jwt_secret = "jwt-secret-0123456789-0123456789-01"
            retention = ["chat:*=10000", "logs:**=5,age=1h"]
            retention_default = "age=7d"
            min_maxlen = 10
            jsonp = true
            "#,
        )
        .unwrap();
        let config = given.clone().build().unwrap();
        let printed = config.describe();
        for secret in [
            "url-password-1",
            "api-key-secret",
            "task-secret-000001",
            "jwt-secret-0123",
        ] {
            assert!(!printed.contains(secret), "{secret} in\n{printed}");
        }
        assert!(
            printed.contains("redis://user:***@127.0.0.1:6379/2"),
            "{printed}"
        );
        assert!(
            printed.contains("# jwt_secret = \"<redacted>\""),
            "{printed}"
        );
        assert!(
            printed.contains("retention_default = \"age=7d\""),
            "{printed}"
        );
        // Read back: the same configuration once the secrets are given again.
        let mut back: ConfigValues = toml::from_str(&printed).unwrap();
        back.redis = given.redis.clone();
        back.api_key = given.api_key.clone();
        back.task_secret = Some(Secret::new("task-secret-000001"));
        back.jwt_secret = given.jwt_secret.clone();
        let again = back.build().unwrap();
        assert_eq!(again.describe(), printed);
        assert_eq!(format!("{again:?}"), format!("{config:?}"));
        // And a derived `Debug` of the whole configuration shows none of them either.
        let debug = format!("{config:#?} {given:?}");
        for secret in [
            "url-password-1",
            "api-key-secret",
            "task-secret",
            "jwt-secret",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    /// The defaults print and read back as the defaults.
    #[test]
    fn defaults_read_back() {
        let printed = Config::default().describe();
        let back: ConfigValues = toml::from_str(&printed).unwrap();
        assert_eq!(back.build().unwrap().describe(), printed);
        assert!(printed.contains("min_maxlen = 1000"), "{printed}");
    }
}
