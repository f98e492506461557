//! The Redis engine: channels are Redis Streams.
//!
//! - Writes go through one shared, multiplexed connection running the [`scripts::PUBLISH`]
//!   script (`XADD`, trimming with a watermark, idempotency keys), acknowledged only after Redis
//!   answered.
//! - History and catch-up pages come from the [`scripts::READ`] script (chunked `XRANGE`
//!   bounded by count and bytes, with the trim watermark read atomically) over a connection of
//!   their own, so a large page never holds up publishes.
//! - Live entries come, by default ([`LiveReaders::Channel`]), from [`reader`]s blocked in
//!   `XREAD` over the watched channels' own streams (each covering a bounded number of keys,
//!   retargeted with `CLIENT UNBLOCK`), so entries other producers append to the streams
//!   directly reach subscribers at once. With [`LiveReaders::Log`] (opt-in, for deployments
//!   where every write goes through the server) the publish script also appends each message
//!   to its shard's log, and one [`log`] reader per followed shard blocks in `XREAD` on that
//!   log, keeping the entries of watched channels, so Redis connections and wake-up work stay
//!   flat however many channels are watched.
//!
//! In Redis Cluster mode ([`RedisConfig::cluster`]) stream keys carry a per-shard hash tag
//! ([`keys`]), the writer is a cluster client (following `MOVED`/`ASK`), and each reader serves
//! the channels of one shard over one connection to the node that owns the shard's slot,
//! re-resolving the owner after any error (failover, resharding) and resuming from its cursors.

//!
//! Modules: [`config`] the settings, [`client`] building clients and running commands and
//! scripts, `shared` the state the engine and its readers share (keys, routing, positions,
//! pages, raises), [`connection`] a live reader's own connection, [`reader`] and [`log`] the
//! two kinds of live readers, `group_commands` the consumer-group commands, [`keys`] the key layout, `parse` and
//! `scripts` the reply parsers and Lua scripts.

mod client;
mod config;
mod connection;
mod cursors;
mod group_commands;
pub(crate) mod keys;
mod log;
mod parse;
mod presence;
mod reader;
mod scripts;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::ClientLike;
use fred::prelude::{Client, Config};
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};
use redistribute_protocol::{Offset, StreamId};

use super::live_health::HealthBoard;
use super::{
    stored_fields, trim_slack, Claimed, Engine, EngineError, EngineStats, GroupRead, LiveHealth,
    LiveSink, Page, Position, PublishRequest, ReadySender, MAX_CLOCK_SKEW, MAX_TRIM_PER_PUBLISH,
};
use client::{build_client, client_config, eval, eval_as, map_err};
pub use config::LiveReaders;
pub use config::RedisConfig;
pub(crate) use config::DEFAULT_LOG_MAXLEN;
use log::LogPool;
use reader::ReaderPool;

/// State shared by the engine and its readers.
struct Shared {
    config: RedisConfig,
    /// Client settings (servers, credentials) readers are built from.
    client_config: Config,
    /// The shared multiplexed client: position, history, `CLIENT UNBLOCK`, cluster routing.
    writer: Client,
    /// The client publishes go through: `writer`, or with `wait_replicas` a client of its own
    /// so that `WAIT`s (which hold their connection) do not delay reads and unblocks.
    publisher: Client,
    /// The client history and catch-up pages are read through (a connection of its own: a
    /// page of up to a MiB or more would otherwise delay the publishes queued behind it).
    pages: Client,
    /// When the cluster routing table was last refreshed (single-flight, throttled).
    routing_refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The live readers' health entries ([`Engine::live_health`]).
    health: Arc<HealthBoard>,
}

/// Most bytes of field values one publish reads while trimming (it stops trimming there; later
/// publishes continue), besides [`MAX_TRIM_PER_PUBLISH`].
const TRIM_BYTE_BUDGET: usize = 8 * 1024 * 1024;

/// The Redis Streams engine; see the module docs.
///
/// Publishes are acknowledged once the primary stored them. Redis replicates asynchronously, so
/// if a primary crashes, its replica may take over without the last writes it acknowledged.
/// With [`RedisConfig::wait_replicas`] > 0 a publish is acknowledged only after `WAIT` reports
/// that many replicas have it (else it fails with `unavailable`, though it may have been stored:
/// retry with an idempotency key), so a failover to one of those replicas keeps every
/// acknowledged message.
pub struct RedisEngine {
    shared: Arc<Shared>,
    readers: Readers,
}

/// The live readers of either kind ([`LiveReaders`]).
enum Readers {
    Log(LogPool),
    Channel(ReaderPool),
}

impl RedisEngine {
    /// Connects the writer (waiting up to `command_timeout` for Redis) and prepares the readers.
    pub async fn connect(
        config: RedisConfig,
        sink: Arc<dyn LiveSink>,
    ) -> Result<Arc<Self>, EngineError> {
        let client_config = client_config(&config)?;
        let connect = |client: Client| {
            let url = config.url.redacted();
            async move {
                client.init().await.map_err(|e| {
                    EngineError::Unavailable(format!("cannot connect to Redis at {url}: {e}"))
                })?;
                Ok::<_, EngineError>(client)
            }
        };
        let writer = connect(build_client(client_config.clone())?).await?;
        let publisher = if config.wait_replicas > 0 {
            connect(build_client(client_config.clone())?).await?
        } else {
            writer.clone()
        };
        let pages = connect(build_client(client_config.clone())?).await?;
        let shared = Arc::new(Shared {
            config,
            client_config,
            writer,
            publisher,
            pages,
            routing_refreshed: tokio::sync::Mutex::new(None),
            health: Arc::default(),
        });
        let readers = match shared.config.live {
            LiveReaders::Log => Readers::Log(LogPool::new(shared.clone(), sink)),
            LiveReaders::Channel => Readers::Channel(ReaderPool::new(shared.clone(), sink)),
        };
        Ok(Arc::new(RedisEngine { shared, readers }))
    }
}

impl RedisEngine {
    /// With `wait_replicas`, waits until that many replicas have the publisher connection's
    /// writes (`WAIT` on the connection to the node serving `slot`, the one that just ran the
    /// publish script).
    async fn wait_for_replicas(&self, slot: u16) -> Result<(), EngineError> {
        let config = &self.shared.config;
        if config.wait_replicas == 0 {
            return Ok(());
        }
        let cmd = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
        let wait_ms = config.wait_timeout.as_millis().max(1) as i64;
        let options = Options {
            timeout: Some(config.wait_timeout + config.command_timeout),
            ..self.shared.options()
        };
        let acked: i64 = self
            .shared
            .publisher
            .with_options(&options)
            .custom(
                cmd,
                vec![
                    Value::from(config.wait_replicas as i64),
                    Value::from(wait_ms),
                ],
            )
            .await
            .map_err(map_err)?;
        if acked < config.wait_replicas as i64 {
            return Err(EngineError::Unavailable(format!(
                "stored, but only {acked} of {} replicas confirmed it within {wait_ms} ms",
                config.wait_replicas
            )));
        }
        Ok(())
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        match &self.readers {
            Readers::Log(pool) => pool.stop(),
            Readers::Channel(pool) => pool.stop(),
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamId, EngineError> {
        let key = self.shared.stream_key(req.channel);
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let log = self.shared.log_key(self.shared.shard(req.channel));
        let mut keys = vec![format!("{key}#trim"), log, String::new()];
        keys[2] = format!("{}seq", keys[1]);
        keys.insert(0, key);
        if let Some(idem) = req.idempotency_key {
            keys.push(format!("{}#idem:{idem}", keys[0]));
        }
        let trim = self
            .shared
            .config
            .engine
            .retention
            .trim(req.channel, req.maxlen);
        let maxlen = trim.maxlen.unwrap_or(0);
        let mut args: Vec<String> = Vec::with_capacity(8 + 2 * req.fields.len());
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
        args.push(MAX_TRIM_PER_PUBLISH.to_string());
        args.push(TRIM_BYTE_BUDGET.to_string());
        args.push(trim.max_age.map_or(0, |age| age.as_millis()).to_string());
        let log_maxlen = if self.shared.logs() {
            self.shared.config.log_maxlen
        } else {
            0
        };
        args.push(log_maxlen.to_string());
        args.push(req.channel.to_owned());
        for (name, value) in stored_fields(req.fields) {
            args.push(name.to_owned());
            args.push(value);
        }
        // EVAL, not EVALSHA: a NOSCRIPT retry (after a Redis restart flushed the script
        // cache) could reorder a connection's pipelined publishes. Redis caches the compiled
        // script by its hash, so EVAL costs only hashing the short body.
        let reply: Value = eval(
            &self.shared.publisher,
            &self.shared.options(),
            scripts::PUBLISH,
            keys,
            args,
        )
        .await
        .map_err(map_err)?;
        let id = parse::stream_id(&reply)?;
        self.wait_for_replicas(slot).await?;
        Ok(id)
    }

    async fn read(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        self.shared
            .read_page(channel, after, limit, max_bytes)
            .await
    }

    async fn read_back(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        through: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        self.shared
            .read_page_back(channel, after, through, limit, max_bytes)
            .await
    }

    async fn offset_back(
        &self,
        channel: &str,
        through: StreamId,
        n: usize,
    ) -> Result<Option<StreamId>, EngineError> {
        self.shared.offset_back(channel, through, n).await
    }

    async fn position(&self, channel: &str) -> Result<Position, EngineError> {
        self.shared.position(channel).await
    }

    async fn raise_last_id(
        &self,
        channel: &str,
        to: StreamId,
        create: bool,
    ) -> Result<Position, EngineError> {
        let mut raised = self
            .shared
            .raise(&[(channel, to)], Some(MAX_CLOCK_SKEW), false, create)
            .await?;
        Ok(raised
            .pop()
            .map(|(position, _)| position)
            .unwrap_or_default())
    }

    async fn group_create(
        &self,
        channel: &str,
        group: &str,
        start: Offset,
        create: bool,
    ) -> Result<Option<StreamId>, EngineError> {
        self.shared
            .group_create(channel, group, start, create)
            .await
    }

    async fn group_read(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<super::GroupBatch>, EngineError> {
        self.shared
            .group_read(channel, group, consumer, from, count)
            .await
    }

    async fn group_take_turns(
        &self,
        channel: &Arc<str>,
        group: &str,
        turn: &super::GroupTurn<'_>,
    ) -> Result<super::Turns, EngineError> {
        self.shared.group_take_turns(channel, group, turn).await
    }

    async fn group_ack(
        &self,
        channel: &str,
        group: &str,
        ids: &[StreamId],
    ) -> Result<u64, EngineError> {
        self.shared.group_ack(channel, group, ids).await
    }

    async fn group_claim(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        start: StreamId,
        count: usize,
    ) -> Result<Claimed, EngineError> {
        self.shared
            .group_claim(channel, group, consumer, min_idle, start, count)
            .await
    }

    fn watch(&self, channel: Arc<str>, ready: ReadySender) {
        match &self.readers {
            Readers::Log(pool) => pool.watch(channel, ready),
            Readers::Channel(pool) => pool.watch(channel, ready),
        }
    }

    fn unwatch(&self, channel: &Arc<str>) {
        match &self.readers {
            Readers::Log(pool) => pool.unwatch(channel),
            Readers::Channel(pool) => pool.unwatch(channel),
        }
    }

    fn presence_store(&self) -> Arc<dyn crate::presence::PresenceStore> {
        Arc::new(presence::RedisPresence::new(self.shared.clone()))
    }

    fn stats(&self) -> EngineStats {
        match &self.readers {
            Readers::Log(pool) => pool.stats(),
            Readers::Channel(pool) => pool.stats(),
        }
    }

    fn live_health(&self) -> LiveHealth {
        self.shared.health.health()
    }
}
