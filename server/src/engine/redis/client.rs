//! Redis clients and commands: client settings from the configured URLs, building the
//! reconnecting shared clients, running Lua scripts as pipelined commands, and mapping fred's
//! errors to engine errors (`internal` for an error reply, `unavailable` for anything about
//! reaching Redis).

use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::prelude::{Builder, Client, Config, ReconnectPolicy};
use fred::types::config::{ClusterDiscoveryPolicy, Options, ServerConfig};
use fred::types::{ClusterHash, CustomCommand, Value};

use super::RedisConfig;
use crate::config::RedisUrl;
use crate::engine::EngineError;

/// Runs a Lua script with `EVAL` as a plain pipelined command.
///
/// fred's own `eval` marks scripts as not pipelinable, so each one waits for the previous reply
/// and, while Redis is down, sits in the router past its timeout and runs once Redis is back:
/// a publish answered `unavailable` would then still be stored. As a custom command it is
/// pipelined, fails fast while disconnected, and is never written after its timeout.
pub(super) async fn eval(
    client: &Client,
    options: &Options,
    script: &'static str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, fred::error::Error> {
    eval_as("EVAL", client, options, script, keys, args).await
}

/// [`eval`] with `command` (`EVAL`, or `EVAL_RO` for a script that only reads).
pub(super) async fn eval_as(
    command: &'static str,
    client: &Client,
    options: &Options,
    script: &'static str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, fred::error::Error> {
    let slot = keys
        .first()
        .map(|k| fred::util::redis_keyslot(k.as_bytes()))
        .unwrap_or(0);
    let cmd = CustomCommand::new_static(command, ClusterHash::Custom(slot), false);
    let mut values: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    values.push(Value::from_static_str(script));
    values.push(Value::Integer(keys.len() as i64));
    values.extend(keys.into_iter().map(Value::from));
    values.extend(args.into_iter().map(Value::from));
    client.with_options(options).custom(cmd, values).await
}

/// Maps a fred error to an engine error: an error reply from Redis (a bug, or a key of another
/// type) is `Internal`; anything about reaching Redis is `Unavailable`.
pub(super) fn map_err(err: fred::error::Error) -> EngineError {
    use fred::error::ErrorKind;
    let reply_error = match err.kind() {
        ErrorKind::InvalidArgument | ErrorKind::InvalidCommand | ErrorKind::Parse => true,
        ErrorKind::Unknown => {
            let details = err.details();
            ["ERR", "WRONGTYPE", "NOSCRIPT", "BUSY"]
                .iter()
                .any(|p| details.starts_with(p))
                && !details.contains("LOADING")
        }
        _ => false,
    };
    if reply_error {
        EngineError::Internal(format!("{:?}: {}", err.kind(), err.details()))
    } else {
        EngineError::Unavailable(format!("{:?}: {}", err.kind(), err.details()))
    }
}

/// Client settings for a single Redis, or a cluster reached through its seed nodes.
pub(super) fn client_config(config: &RedisConfig) -> Result<Config, EngineError> {
    // fred's URL errors may quote the URL: only the redacted form is printed.
    let parse = |url: &RedisUrl| {
        Config::from_url(url.expose()).map_err(|e| {
            let detail = e.details().replace(url.expose(), &url.redacted());
            EngineError::Internal(format!("invalid Redis URL {url:?}: {detail}"))
        })
    };
    let Some(cluster) = &config.cluster else {
        return parse(&config.url);
    };
    let first = cluster
        .nodes
        .first()
        .ok_or_else(|| EngineError::Internal("no Redis Cluster node given".into()))?;
    let mut base = parse(first)?;
    let mut hosts = Vec::with_capacity(cluster.nodes.len());
    for url in &cluster.nodes {
        match parse(url)?.server {
            ServerConfig::Centralized { server } => hosts.push(server),
            ServerConfig::Clustered { hosts: more, .. } => hosts.extend(more),
            _ => {
                return Err(EngineError::Internal(format!(
                    "{url:?} is not a Redis Cluster node URL"
                )))
            }
        }
    }
    base.server = ServerConfig::Clustered {
        hosts,
        // Try the nodes of the last known routing table too, not only the seeds.
        policy: ClusterDiscoveryPolicy::UseCache,
    };
    Ok(base)
}

/// Builds a client that reconnects forever with capped exponential backoff.
pub(super) fn build_client(config: Config) -> Result<Client, EngineError> {
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build()
        .map_err(map_err)
}
