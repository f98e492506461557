//! Storage engines: where channels live as streams.
//!
//! An [`Engine`] appends messages ([`Engine::publish`]), reads history ([`Engine::read`]),
//! reports a channel's [`Position`], and feeds newly appended entries of *watched* channels to
//! a [`LiveSink`] (the hub) in offset order, once per instance however many clients listen.
//! Two engines implement it with the same semantics: [`redis::RedisEngine`] (Redis Streams) and
//! [`embedded::EmbeddedEngine`] (in-process, the default).

pub mod batch;
pub mod embedded;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redistribute_protocol::{Fields, Offset, StreamId};
use thiserror::Error;
use tokio::sync::watch;

pub use batch::{Batch, BatchBuilder};

/// Most fields one message may have.
pub const MAX_FIELDS: usize = 1024;

/// A request to append one message.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    /// Validated channel name.
    pub channel: &'a str,
    /// The message fields (non-empty).
    pub fields: &'a Fields,
    /// Keep about this many entries (trimming older ones).
    pub maxlen: Option<u64>,
    /// Deduplicates retried publishes.
    pub idempotency_key: Option<&'a str>,
}

/// Where a channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The last ID ever assigned in the channel (`0-0` if none).
    pub last_id: StreamId,
    /// The highest ID removed by trimming, if anything was trimmed.
    pub trimmed_through: Option<StreamId>,
}

/// Why an engine operation failed.
#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The backing store cannot be reached: retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backing store answered something unexpected (a bug or a foreign key type).
    #[error("storage error: {0}")]
    Internal(String),
}

/// Receives live entries of watched channels, in offset order per channel.
pub trait LiveSink: Send + Sync + 'static {
    /// Hands over newly appended entries of one channel.
    fn deliver(&self, batch: Arc<Batch>);
}

/// How far a watched channel's live feed is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The starting point is not fixed yet.
    Pending,
    /// Fixed now, at this position: every entry after `last_id` reaches the sink. The
    /// subscriber that started the watch may take it as its own position read.
    At(Position),
    /// Fixed, at a point read earlier (the channel was being read already).
    Started,
}

/// Signals that a watched channel's live feed has fixed its starting point: from then on every
/// entry appended after that point reaches the sink.
pub type ReadySender = watch::Sender<Ready>;

/// A storage engine; see the module docs.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Short name for logs and the startup line (`redis`, `embedded`).
    fn name(&self) -> &'static str;

    /// Appends a message; returns its offset only once it is stored.
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamId, EngineError>;

    /// Reads up to `limit` entries with offsets greater than `after`.
    async fn read(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
    ) -> Result<Option<Batch>, EngineError>;

    /// The channel's last assigned ID and trim watermark.
    async fn position(&self, channel: &str) -> Result<Position, EngineError>;

    /// Makes the channel's next IDs come after `to`, for a subscriber resuming beyond the
    /// channel's last ID (the tail it saw was lost in a failover): if the last ID is lower and
    /// `to` is at most [`MAX_CLOCK_SKEW`] ahead of the store's clock, the last ID becomes `to`
    /// (creating the channel if needed). Nothing is recorded as removed, since the offset comes
    /// from a client. Returns the channel's position afterwards.
    async fn raise_last_id(&self, channel: &str, to: StreamId) -> Result<Position, EngineError>;

    /// Starts feeding the channel's new entries to the sink; `ready` leaves [`Ready::Pending`]
    /// once the starting point is fixed. Must not block (it is called under the hub's lock).
    fn watch(&self, channel: Arc<str>, ready: ReadySender);

    /// Stops feeding the channel. Must not block.
    fn unwatch(&self, channel: &Arc<str>);

    /// Creates consumer group `group` of the channel if it does not exist (creating the
    /// channel too, like `XGROUP CREATE … MKSTREAM`), starting after `start` (`$`: the tip,
    /// `0`: everything retained). Returns the group's last delivered ID.
    async fn group_create(
        &self,
        channel: &str,
        group: &str,
        start: Offset,
    ) -> Result<StreamId, EngineError>;

    /// Reads for `consumer` of `group` without blocking (`XREADGROUP`): with
    /// [`GroupRead::Pending`] the consumer's own delivered-but-unacknowledged entries after
    /// an ID (their delivery count grows by one), with [`GroupRead::New`] entries never
    /// delivered to the group (they become pending for the consumer). Entries removed from
    /// the stream while pending are dropped from the pending list and not returned.
    async fn group_read(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<Batch>, EngineError>;

    /// Acknowledges entries (`XACK`); returns how many were pending.
    async fn group_ack(
        &self,
        channel: &str,
        group: &str,
        ids: &[StreamId],
    ) -> Result<u64, EngineError>;

    /// Transfers to `consumer` up to `count` pending entries idle for at least `min_idle`,
    /// scanning the pending list from `start` (`XAUTOCLAIM`); each claim counts as a delivery.
    async fn group_claim(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        start: StreamId,
        count: usize,
    ) -> Result<Claimed, EngineError>;

    /// Counters for tests and metrics.
    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}

/// Where a consumer-group read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRead {
    /// The consumer's own pending entries after this ID (`XREADGROUP … <id>`).
    Pending {
        /// Exclusive start; `0-0` for all of them.
        after: StreamId,
    },
    /// Entries never delivered to the group (`XREADGROUP … >`).
    New,
}

/// What [`Engine::group_claim`] transferred.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// The claimed entries, in ID order.
    pub batch: Option<Batch>,
    /// Delivery count of each claimed entry (this claim included), aligned with the batch.
    pub deliveries: Vec<u64>,
    /// Where the next scan of the pending list starts (`0-0`: it was scanned to the end).
    pub next: StreamId,
}

/// How far ahead of the store's clock a client's offset may raise a channel's last ID
/// ([`Engine::raise_last_id`]): enough for clock differences between Redis nodes, too little for
/// a client to push a channel's IDs far into the future.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Counters an engine exposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Live readers running (blocking connections for Redis).
    pub readers: usize,
    /// Channels being watched.
    pub watched: usize,
    /// `CLIENT UNBLOCK` commands that woke a reader.
    pub unblocks: u64,
}

/// Tuning shared by both engines.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Most entries a live read returns per channel.
    pub read_count: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            idempotency_ttl: Duration::from_secs(600),
            read_count: 512,
        }
    }
}

/// The channel's newest entry, if it has one.
pub async fn latest_entry(
    engine: &dyn Engine,
    channel: &Arc<str>,
) -> Result<Option<Batch>, EngineError> {
    let position = engine.position(channel).await?;
    let Some(before) = position.last_id.predecessor() else {
        return Ok(None);
    };
    let batch = engine.read(channel, before, 1).await?;
    Ok(batch.filter(|b| b.last_id() == position.last_id))
}

/// How many entries to trim at once past `maxlen`, so trimming is amortized (like `MAXLEN ~`).
pub fn trim_slack(maxlen: u64) -> u64 {
    (maxlen / 16).max(1)
}

/// Encodes each field value as the JSON text stored in the engine.
pub fn stored_fields(fields: &Fields) -> impl Iterator<Item = (&str, String)> {
    fields.iter().map(|(k, v)| {
        (
            k.as_str(),
            serde_json::to_string(v).expect("JSON values serialize"),
        )
    })
}
