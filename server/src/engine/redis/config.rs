//! Settings of the Redis engine: the Redis or Redis Cluster to use, key prefix, live reader
//! kind and their tuning, timeouts and replica acknowledgement.

use std::time::Duration;

use super::keys;
use crate::config::RedisUrl;
use crate::engine::EngineConfig;

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
