//! Tests of the configuration values: defaults, merging, validation errors that name the key
//! and never quote a secret.

use super::*;
use crate::listener::proxy::ClientIpHeader;

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
