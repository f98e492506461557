//! The Redis engine: channels are Redis Streams.
//!
//! - Writes go through one shared, multiplexed connection running the [`scripts::PUBLISH`]
//!   script (`XADD`, trimming with a watermark, idempotency keys), acknowledged only after Redis
//!   answered.
//! - History is `XRANGE key (after + COUNT n`.
//! - Live entries come from [`reader`]s: dedicated connections blocked in `XREAD` over the
//!   watched channels, each covering a bounded number of keys and retargeted at once with
//!   `CLIENT UNBLOCK` when its set changes.

mod cursors;
mod parse;
mod reader;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::bytes_utils::Str;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::prelude::{Builder, Client, Config, ReconnectPolicy};
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};
use redistribute_protocol::StreamId;

use super::{
    stored_fields, trim_slack, Batch, Engine, EngineConfig, EngineError, EngineStats, LiveSink,
    Position, PublishRequest, ReadySender,
};
use reader::ReaderPool;

/// Settings of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` URL.
    pub url: String,
    /// Prefix of stream keys (`rd:` by default).
    pub prefix: String,
    /// How long a reader blocks in `XREAD` before re-issuing it.
    pub block: Duration,
    /// Most channels one reader connection covers.
    pub keys_per_reader: usize,
    /// Timeout of ordinary commands (publish, history).
    pub command_timeout: Duration,
    /// Settings shared with the embedded engine.
    pub engine: EngineConfig,
}

impl RedisConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "rd:".into(),
            block: Duration::from_secs(10),
            keys_per_reader: 256,
            command_timeout: Duration::from_secs(5),
            engine: EngineConfig::default(),
        }
    }
}

/// State shared by the engine and its readers.
struct Shared {
    config: RedisConfig,
    writer: Client,
}

impl Shared {
    fn stream_key(&self, channel: &str) -> String {
        format!("{}{channel}", self.config.prefix)
    }

    /// Options for ordinary commands: fail at once while disconnected, never retry a write.
    fn options(&self) -> Options {
        Options {
            timeout: Some(self.config.command_timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    async fn position(&self, channel: &str) -> Result<Position, EngineError> {
        let key = self.stream_key(channel);
        let reply: Value = self
            .writer
            .with_options(&self.options())
            .eval(
                Str::from_static(scripts::POSITION),
                vec![key.clone(), format!("{key}#trim")],
                (),
            )
            .await
            .map_err(map_err)?;
        let Value::Array(parts) = &reply else {
            return Err(EngineError::Internal(format!(
                "unexpected position reply {reply:?}"
            )));
        };
        let [last, trim] = parts.as_slice() else {
            return Err(EngineError::Internal(format!(
                "unexpected position reply {reply:?}"
            )));
        };
        Ok(Position {
            last_id: parse::optional_id(last)?.unwrap_or_default(),
            trimmed_through: parse::optional_id(trim)?,
        })
    }
}

/// Maps a fred error to an engine error: an error reply from Redis (a bug, or a key of another
/// type) is `Internal`; anything about reaching Redis is `Unavailable`.
fn map_err(err: fred::error::Error) -> EngineError {
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

/// Builds a client for `url` that reconnects forever with capped exponential backoff.
fn build_client(url: &str) -> Result<Client, EngineError> {
    let config = Config::from_url(url)
        .map_err(|e| EngineError::Internal(format!("invalid Redis URL {url:?}: {e}")))?;
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build()
        .map_err(map_err)
}

/// The Redis Streams engine; see the module docs.
pub struct RedisEngine {
    shared: Arc<Shared>,
    readers: ReaderPool,
}

impl RedisEngine {
    /// Connects the writer (waiting up to `command_timeout` for Redis) and prepares the readers.
    pub async fn connect(
        config: RedisConfig,
        sink: Arc<dyn LiveSink>,
    ) -> Result<Arc<Self>, EngineError> {
        let writer = build_client(&config.url)?;
        writer.init().await.map_err(|e| {
            EngineError::Unavailable(format!("cannot connect to Redis at {}: {e}", config.url))
        })?;
        let shared = Arc::new(Shared { writer, config });
        let readers = ReaderPool::new(shared.clone(), sink);
        Ok(Arc::new(RedisEngine { shared, readers }))
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.readers.stop();
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamId, EngineError> {
        let key = self.shared.stream_key(req.channel);
        let mut keys = vec![format!("{key}#trim")];
        keys.insert(0, key);
        if let Some(idem) = req.idempotency_key {
            keys.push(format!("{}#idem:{idem}", keys[0]));
        }
        let maxlen = req.maxlen.unwrap_or(0);
        let mut args: Vec<String> = Vec::with_capacity(3 + 2 * req.fields.len());
        args.push(maxlen.to_string());
        args.push(
            self.shared
                .config
                .engine
                .idempotency_ttl
                .as_millis()
                .to_string(),
        );
        args.push(trim_slack(maxlen).to_string());
        for (name, value) in stored_fields(req.fields) {
            args.push(name.to_owned());
            args.push(value);
        }
        // EVAL, not EVALSHA: a NOSCRIPT retry (after a Redis restart flushed the script
        // cache) could reorder a connection's pipelined publishes. Redis caches the compiled
        // script by its hash, so EVAL costs only hashing the short body.
        let reply: Value = self
            .shared
            .writer
            .with_options(&self.shared.options())
            .eval(Str::from_static(scripts::PUBLISH), keys, args)
            .await
            .map_err(map_err)?;
        parse::stream_id(&reply)
    }

    async fn read(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
    ) -> Result<Option<Batch>, EngineError> {
        let cmd = CustomCommand::new_static("XRANGE", ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![
            self.shared.stream_key(channel).into(),
            format!("({after}").into(),
            "+".into(),
            "COUNT".into(),
            (limit as i64).into(),
        ];
        let reply: Value = self
            .shared
            .writer
            .with_options(&self.shared.options())
            .custom(cmd, args)
            .await
            .map_err(map_err)?;
        parse::entries(channel, &reply)
    }

    async fn position(&self, channel: &str) -> Result<Position, EngineError> {
        self.shared.position(channel).await
    }

    fn watch(&self, channel: Arc<str>, ready: ReadySender) {
        self.readers.watch(channel, ready);
    }

    fn unwatch(&self, channel: &Arc<str>) {
        self.readers.unwatch(channel);
    }

    fn stats(&self) -> EngineStats {
        self.readers.stats()
    }
}
