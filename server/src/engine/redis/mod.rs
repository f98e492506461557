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

mod cursors;
mod group_commands;
pub(crate) mod keys;
mod log;
mod parse;
mod reader;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::{Builder, Client, Config, ReconnectPolicy};
use fred::types::config::{ClusterDiscoveryPolicy, Options, Server, ServerConfig};
use fred::types::{ClusterHash, CustomCommand, Value};
use redistribute_protocol::{Offset, StreamId};
use tracing::debug;

use super::{
    stored_fields, trim_slack, Claimed, Engine, EngineConfig, EngineError, EngineStats, GroupRead,
    LiveSink, Page, Position, PublishRequest, ReadySender, MAX_CLOCK_SKEW, MAX_ENTRY_BYTES,
    MAX_TRIM_PER_PUBLISH,
};
use crate::config::RedisUrl;
use log::LogPool;
use reader::ReaderPool;

/// Where the live feed reads new entries from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveReaders {
    /// One reader per shard blocked on the shard's log (opt-in): connections and Redis work
    /// per wake-up independent of the number of watched channels. Publishes append to the log
    /// too, so every instance of a deployment must use this mode, and entries other producers
    /// append to the streams directly are seen only at the next catch-up: choose it only when
    /// every write goes through the server.
    Log,
    /// Readers blocked on the watched channels' own streams, `keys_per_reader` each (the
    /// default): sees entries whoever appended them, at the cost of a connection per
    /// `keys_per_reader` channels and Redis work per wake-up growing with them. Publishes
    /// write no log.
    #[default]
    Channel,
}

/// Settings of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` URL of a single Redis; in cluster mode the first seed node
    /// (for logs; credentials come from each seed URL).
    pub url: RedisUrl,
    /// Redis Cluster mode: seed nodes and shard count. `None`: a single Redis at `url`.
    pub cluster: Option<ClusterConfig>,
    /// Prefix of stream keys (`rd:` by default).
    pub prefix: String,
    /// How long a reader blocks in `XREAD` before re-issuing it.
    pub block: Duration,
    /// Most channels one reader connection covers ([`LiveReaders::Channel`] only).
    pub keys_per_reader: usize,
    /// Where the live feed reads from.
    pub live: LiveReaders,
    /// About how many entries each shard log keeps ([`LiveReaders::Log`]); a reader that
    /// falls further behind catches its channels up from their streams.
    pub log_maxlen: u64,
    /// Timeout of ordinary commands (publish, history).
    pub command_timeout: Duration,
    /// Acknowledge a publish only once this many replicas have it (`WAIT`); 0 (the default)
    /// acknowledges once the primary stored it. See [`RedisEngine`] for the trade-off.
    pub wait_replicas: u32,
    /// How long `WAIT` may take before the publish fails with `unavailable`.
    pub wait_timeout: Duration,
    /// Settings shared with the embedded engine.
    pub engine: EngineConfig,
}

/// Redis Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port` URLs of some cluster nodes; the rest are discovered.
    pub nodes: Vec<RedisUrl>,
    /// Channels are spread over this many shards, one hash tag each ([`keys`]).
    pub shards: u16,
}

impl RedisConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<RedisUrl>) -> Self {
        RedisConfig {
            url: url.into(),
            cluster: None,
            prefix: "rd:".into(),
            block: Duration::from_secs(10),
            keys_per_reader: 256,
            live: LiveReaders::Channel,
            log_maxlen: DEFAULT_LOG_MAXLEN,
            command_timeout: Duration::from_secs(5),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            engine: EngineConfig::default(),
        }
    }

    /// Defaults for a Redis Cluster reached through the seed `nodes`, with
    /// [`keys::DEFAULT_SHARDS`] shards.
    pub fn cluster<U: Into<RedisUrl>>(nodes: impl IntoIterator<Item = U>) -> Self {
        let nodes: Vec<RedisUrl> = nodes.into_iter().map(Into::into).collect();
        let first = nodes.first().cloned();
        let mut config = RedisConfig::new(first.unwrap_or_else(|| RedisUrl::new("")));
        config.cluster = Some(ClusterConfig {
            nodes,
            shards: keys::DEFAULT_SHARDS,
        });
        config
    }
}

/// Entries each shard log keeps by default.
pub(crate) const DEFAULT_LOG_MAXLEN: u64 = 10_000;

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
}

impl Shared {
    /// The shard count in cluster mode.
    fn shards(&self) -> Option<u16> {
        self.config.cluster.as_ref().map(|c| c.shards)
    }

    fn stream_key(&self, channel: &str) -> String {
        keys::stream_key(&self.config.prefix, channel, self.shards())
    }

    /// The log key of `shard`.
    fn log_key(&self, shard: u16) -> String {
        keys::log_key(&self.config.prefix, shard, self.shards())
    }

    /// Whether publishes append to the shard logs.
    fn logs(&self) -> bool {
        self.config.live == LiveReaders::Log && self.config.log_maxlen > 0
    }

    /// The channel's shard (always 0 with a single Redis).
    fn shard(&self, channel: &str) -> u16 {
        self.shards().map_or(0, |n| keys::shard_of(channel, n))
    }

    /// The cluster node that serves `shard`, from the writer's routing table.
    async fn node_for_shard(&self, shard: u16) -> Result<Server, EngineError> {
        let slot = keys::shard_slot(shard);
        let cached = || {
            self.writer
                .cached_cluster_state()
                .and_then(|state| state.get_server(slot).cloned())
        };
        if let Some(server) = cached() {
            return Ok(server);
        }
        self.refresh_routing().await;
        cached().ok_or_else(|| {
            EngineError::Unavailable(format!("no Redis Cluster node serves slot {slot}"))
        })
    }

    /// Re-reads the cluster's slot table (`CLUSTER SLOTS`) into the writer, at most once per
    /// 200 ms however many readers ask; a no-op with a single Redis.
    async fn refresh_routing(&self) {
        if self.config.cluster.is_none() {
            return;
        }
        let mut refreshed = self.routing_refreshed.lock().await;
        if refreshed.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        match tokio::time::timeout(self.config.command_timeout, self.writer.sync_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!(%err, "cannot refresh the cluster routing table"),
            Err(_) => debug!("refreshing the cluster routing table timed out"),
        }
        *refreshed = Some(std::time::Instant::now());
    }

    /// A new client for one reader connection: to the single Redis, or to cluster `node`. It
    /// does not reconnect by itself: the reader rebuilds it (re-resolving the node) on errors.
    fn reader_client(&self, node: Option<&Server>) -> Result<Client, EngineError> {
        let mut config = self.client_config.clone();
        if let Some(node) = node {
            config.server = ServerConfig::Centralized {
                server: node.clone(),
            };
        }
        Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.max_command_attempts = 1;
            })
            .build()
            .map_err(map_err)
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
        let reply: Value = eval(
            &self.writer,
            &self.options(),
            scripts::POSITION,
            vec![key.clone(), format!("{key}#trim")],
            Vec::new(),
        )
        .await
        .map_err(map_err)?;
        parse_position(&reply)
    }

    /// The positions of `channels` (all of one hash slot in cluster mode), in order, with one
    /// script ([`scripts::POSITIONS`]).
    async fn positions(&self, channels: &[Arc<str>]) -> Result<Vec<Position>, EngineError> {
        let mut keys = Vec::with_capacity(2 * channels.len());
        for channel in channels {
            let key = self.stream_key(channel);
            keys.push(format!("{key}#trim"));
            keys.insert(keys.len() - 1, key);
        }
        let reply: Value = eval(
            &self.writer,
            &self.options(),
            scripts::POSITIONS,
            keys,
            Vec::new(),
        )
        .await
        .map_err(map_err)?;
        match &reply {
            Value::Array(items) if items.len() == channels.len() => {
                items.iter().map(parse_position).collect()
            }
            _ => Err(EngineError::Internal(format!(
                "unexpected positions reply {reply:?}"
            ))),
        }
    }

    /// One page of history ([`Engine::read`]).
    async fn read_page(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        let key = self.stream_key(channel);
        let reply: Value = eval_as(
            "EVAL_RO",
            &self.pages,
            &self.options(),
            scripts::READ,
            vec![key.clone(), format!("{key}#trim")],
            vec![
                after.to_string(),
                limit.max(1).to_string(),
                max_bytes.to_string(),
                MAX_ENTRY_BYTES.to_string(),
            ],
        )
        .await
        .map_err(map_err)?;
        let unexpected = || EngineError::Internal(format!("unexpected read reply {reply:?}"));
        let Value::Array(parts) = &reply else {
            return Err(unexpected());
        };
        let [watermark, skipped, entries] = parts.as_slice() else {
            return Err(unexpected());
        };
        let gap = parse::optional_id(watermark)?
            .filter(|w| *w > after)
            .max(parse::optional_id(skipped)?);
        let encoded = parse::entries_bounded(channel, entries, max_bytes, 1, gap)?;
        let batch = encoded.batches.into_iter().next();
        let gap = gap.max(encoded.pending_gap);
        Ok(Page::new(after, batch, gap))
    }

    /// Runs [`scripts::RAISE`] over `(channel, ID)` pairs (all of one hash slot in cluster
    /// mode): `skew` bounds how far ahead of Redis' clock an ID may be (`None`: no bound),
    /// `record` marks the raised-over ranges as removed, `create` creates missing streams.
    /// Returns each channel's position and whether it was raised.
    async fn raise(
        &self,
        targets: &[(&str, StreamId)],
        skew: Option<Duration>,
        record: bool,
        create: bool,
    ) -> Result<Vec<(Position, bool)>, EngineError> {
        let mut keys = Vec::with_capacity(2 * targets.len());
        let mut args = Vec::with_capacity(3 + targets.len());
        args.push(skew.map_or(-1, |s| s.as_millis() as i64).to_string());
        args.push(if record { "1" } else { "0" }.to_owned());
        args.push(if create { "1" } else { "0" }.to_owned());
        for (channel, id) in targets {
            let key = self.stream_key(channel);
            keys.push(format!("{key}#trim"));
            keys.insert(keys.len() - 1, key);
            args.push(id.to_string());
        }
        let reply: Value = eval(&self.writer, &self.options(), scripts::RAISE, keys, args)
            .await
            .map_err(map_err)?;
        let unexpected = || EngineError::Internal(format!("unexpected raise reply {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(unexpected());
        };
        if items.len() != targets.len() {
            return Err(unexpected());
        }
        items
            .iter()
            .map(|item| match item {
                Value::Array(parts) if parts.len() == 3 => Ok((
                    position_of(&parts[0], &parts[1])?,
                    parts[2].as_i64() == Some(1),
                )),
                _ => Err(unexpected()),
            })
            .collect()
    }
}

/// Parses `{last-generated-id or '', watermark or ''}`.
fn parse_position(reply: &Value) -> Result<Position, EngineError> {
    let unexpected = || EngineError::Internal(format!("unexpected position reply {reply:?}"));
    let Value::Array(parts) = reply else {
        return Err(unexpected());
    };
    let [last, trim] = parts.as_slice() else {
        return Err(unexpected());
    };
    position_of(last, trim)
}

/// A position from a last-generated ID and a watermark (each `''` when there is none).
fn position_of(last: &Value, trim: &Value) -> Result<Position, EngineError> {
    Ok(Position {
        last_id: parse::optional_id(last)?.unwrap_or_default(),
        trimmed_through: parse::optional_id(trim)?,
    })
}

/// Most bytes of field values one publish reads while trimming (it stops trimming there; later
/// publishes continue), besides [`MAX_TRIM_PER_PUBLISH`].
const TRIM_BYTE_BUDGET: usize = 8 * 1024 * 1024;

/// Runs a Lua script with `EVAL` as a plain pipelined command.
///
/// fred's own `eval` marks scripts as not pipelinable, so each one waits for the previous reply
/// and, while Redis is down, sits in the router past its timeout and runs once Redis is back:
/// a publish answered `unavailable` would then still be stored. As a custom command it is
/// pipelined, fails fast while disconnected, and is never written after its timeout.
async fn eval(
    client: &Client,
    options: &Options,
    script: &'static str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, fred::error::Error> {
    eval_as("EVAL", client, options, script, keys, args).await
}

/// [`eval`] with `command` (`EVAL`, or `EVAL_RO` for a script that only reads).
async fn eval_as(
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

/// Client settings for a single Redis, or a cluster reached through its seed nodes.
fn client_config(config: &RedisConfig) -> Result<Config, EngineError> {
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
fn build_client(config: Config) -> Result<Client, EngineError> {
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

    fn stats(&self) -> EngineStats {
        match &self.readers {
            Readers::Log(pool) => pool.stats(),
            Readers::Channel(pool) => pool.stats(),
        }
    }
}
