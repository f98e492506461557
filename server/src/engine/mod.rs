//! Storage engines: where channels live as streams.
//!
//! An [`Engine`] appends messages ([`Engine::publish`]), reads history ([`Engine::read`]),
//! reports a channel's [`Position`], and feeds newly appended entries of *watched* channels to
//! a [`LiveSink`] (the hub) in offset order, once per instance however many clients listen.
//! Two engines implement it with the same semantics: [`redis::RedisEngine`] (Redis Streams) and
//! [`embedded::EmbeddedEngine`] (in-process, the default).

pub(crate) mod batch;
pub(crate) mod embedded;
pub(crate) mod live_health;
pub(crate) mod redis;
pub(crate) mod retention;
pub(crate) mod shared_text;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redistribute_protocol::{Fields, Offset, StreamId};
use thiserror::Error;
use tokio::sync::watch;

pub use batch::Batch;
pub use batch::BatchBuilder;
pub use batch::MAX_BATCH_BYTES;
pub(crate) use batch::MAX_VALUE_DEPTH;
pub use live_health::LiveHealth;
pub(crate) use shared_text::SharedText;

/// Most fields one message may have.
pub(crate) const MAX_FIELDS: usize = 1024;

/// Largest entry the engines deliver, in bytes of its stored fields (the sum of each field
/// name's and each stored JSON value's length; a message's encoded `fields` object is always
/// larger, so publishes limited to this many bytes of encoded fields are always delivered).
/// A larger entry (only another producer writing into the stream can store one) is skipped by
/// reads and the live feed and covered by a gap ([`Page::gap_through`], [`Batch::gap_through`]).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Largest entry the engines deliver as encoded in a `messages` frame
/// (`{"offset":…,"fields":{…}}`): [`MAX_ENTRY_BYTES`] plus room for the JSON around the
/// stored names and values. Another producer's bytes that escaping makes larger than this are
/// skipped into a gap like an oversize entry. Publishes are limited to [`MAX_ENTRY_BYTES`] of
/// encoded entry, so they always fit.
pub(crate) const MAX_ENCODED_ENTRY_BYTES: usize = MAX_ENTRY_BYTES + 64 * 1024;

/// Most entries one publish trims from a Redis stream. A publish with a `maxlen` far below the
/// stream's length (say `maxlen: 1` on a million entries) removes at most this many and later
/// publishes continue, so no single publish stalls Redis; the watermark stays exact.
pub const MAX_TRIM_PER_PUBLISH: u64 = 2_000;

/// One catch-up read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Entries after the requested offset: at most `limit` of them, and the encoded items at
    /// most `max_bytes` (but always at least one entry when any exists). Undeliverable entries
    /// count towards `limit`, so a page that examined only those is `None` with a
    /// `gap_through`: the next read starts after `gap_through`.
    pub batch: Option<Batch>,
    /// Entries with offsets in `(after, gap_through]` are gone (trimmed: the watermark is read
    /// atomically with the entries; or skipped as undeliverable, see [`MAX_ENTRY_BYTES`]).
    /// `None` when nothing after `after` is known to be missing. Always lower than the batch's
    /// first entry.
    pub gap_through: Option<StreamId>,
}

impl Page {
    /// Builds a page, keeping `gap_through` only when it is above `after`, and lowering it below
    /// the batch's first entry.
    pub fn new(after: StreamId, batch: Option<Batch>, gap_through: Option<StreamId>) -> Page {
        let mut gap = gap_through.filter(|g| *g > after);
        if let (Some(g), Some(b)) = (gap, &batch) {
            let below = b.first_id().predecessor().unwrap_or(StreamId::ZERO);
            gap = Some(g.min(below)).filter(|g| *g > after);
        }
        Page {
            batch,
            gap_through: gap,
        }
    }
}

/// A request to append one message.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    /// Validated channel name.
    pub channel: &'a str,
    /// The message fields (non-empty).
    pub fields: &'a Fields,
    /// Keep about this many entries (trimming older ones), as the publisher asked: the engine
    /// honours it only within its [`EngineConfig::retention`] policy.
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
pub(crate) type ReadySender = watch::Sender<Ready>;

/// A storage engine; see the module docs.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Short name for logs and the startup line (`redis`, `embedded`).
    fn name(&self) -> &'static str;

    /// Appends a message; returns its offset only once it is stored.
    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamId, EngineError>;

    /// Reads entries with offsets greater than `after`: at most `limit` of them and at most
    /// `max_bytes` of encoded items (at least one entry when any exists), with the gap of
    /// trimmed or undeliverable entries right after `after` (see [`Page`]).
    async fn read(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError>;

    /// Reads the newest entries with offsets in `(after, through]`, going back from `through`:
    /// at most `limit` examined and at most `max_bytes` of encoded items (at least one entry
    /// when any is deliverable), as a batch in offset order (a reverse history page is its
    /// reversal). Undeliverable entries ([`MAX_ENTRY_BYTES`]) are left out and count towards
    /// `limit`. The page's `gap_through` is the trim watermark when it is above `after`, read
    /// atomically with the entries: entries in `(after, gap_through]` are gone.
    async fn read_back(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        through: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError>;

    /// The offset of the `n`-th newest entry at or before `through` (`n` ≥ 1; the first is the
    /// newest), or `None` when the channel holds fewer: where a subscribe that rewinds `n - 1`
    /// entries starts.
    async fn offset_back(
        &self,
        channel: &str,
        through: StreamId,
        n: usize,
    ) -> Result<Option<StreamId>, EngineError>;

    /// The channel's last assigned ID and trim watermark.
    async fn position(&self, channel: &str) -> Result<Position, EngineError>;

    /// Makes the channel's next IDs come after `to`, for a subscriber resuming beyond the
    /// channel's last ID (the tail it saw was lost in a failover): if the last ID is lower and
    /// `to` is at most [`MAX_CLOCK_SKEW`] ahead of the store's clock, the last ID becomes `to`
    /// (creating the channel if needed and `create` is set: a channel that does not exist is
    /// left alone otherwise). Nothing is recorded as removed, since the offset comes from a
    /// client. Returns the channel's position afterwards.
    async fn raise_last_id(
        &self,
        channel: &str,
        to: StreamId,
        create: bool,
    ) -> Result<Position, EngineError>;

    /// Starts feeding the channel's new entries to the sink; `ready` leaves [`Ready::Pending`]
    /// once the starting point is fixed. Must not block (it is called under the hub's lock).
    fn watch(&self, channel: Arc<str>, ready: ReadySender);

    /// Stops feeding the channel. Must not block.
    fn unwatch(&self, channel: &Arc<str>);

    /// The presence store over this engine's storage (same Redis, or in memory).
    fn presence_store(&self) -> Arc<dyn crate::presence::PresenceStore>;

    /// Creates consumer group `group` of the channel if it does not exist, starting after
    /// `start` (`$`: the tip, `0`: everything retained). A channel that does not exist is
    /// created too when `create` is set (like `XGROUP CREATE … MKSTREAM`); otherwise nothing
    /// is written and the answer is `None`. Returns the group's last delivered ID.
    async fn group_create(
        &self,
        channel: &str,
        group: &str,
        start: Offset,
        create: bool,
    ) -> Result<Option<StreamId>, EngineError>;

    /// Reads for `consumer` of `group` without blocking (`XREADGROUP`): with
    /// [`GroupRead::Pending`] the consumer's own delivered-but-unacknowledged entries after
    /// an ID (their delivery count grows by one), with [`GroupRead::New`] entries never
    /// delivered to the group (they become pending for the consumer, delivery count 1).
    /// Returns the entries with their delivery counts. Entries removed from the stream while
    /// pending are dropped from the pending list and not returned.
    async fn group_read(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<GroupBatch>, EngineError>;

    /// Hands entries never delivered to the group to consumers **in turn across instances**:
    /// records this instance's consumers (`turn.consumers`, each with its room; the record
    /// lasts `turn.lease` unless renewed, and consumers of this instance left out are
    /// removed), then, one entry at a time, gives the next entry to the group's consumer
    /// with the most room (ties: the one served least recently; `XREADGROUP … >` as that
    /// consumer), while that consumer is one of this instance's. When it belongs to another
    /// instance (which reads it itself when woken by the same entry), stops and reports
    /// whether undelivered entries remain. At most `turn.count` entries.
    async fn group_take_turns(
        &self,
        channel: &Arc<str>,
        group: &str,
        turn: &GroupTurn<'_>,
    ) -> Result<Turns, EngineError>;

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

    /// Whether the live readers deliver: cheap (no I/O, no lock while all are healthy), for
    /// `/readyz` and metrics. An engine without live readers of its own is always healthy.
    fn live_health(&self) -> LiveHealth {
        LiveHealth::default()
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

/// An instance's request to [`Engine::group_take_turns`].
#[derive(Debug, Clone)]
pub struct GroupTurn<'a> {
    /// This instance's ID (unique per process).
    pub instance: &'a str,
    /// Every local consumer of the group by name, with its room (0: none).
    pub consumers: &'a [(Arc<str>, usize)],
    /// How long the record of these consumers lasts unless renewed.
    pub lease: Duration,
    /// Most entries to hand out.
    pub count: usize,
}

/// What [`Engine::group_take_turns`] handed out.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    /// Entries per local consumer name (each delivered once).
    pub batches: Vec<(Arc<str>, Batch)>,
    /// It stopped at another instance's consumer while undelivered entries remain.
    pub deferred: bool,
}

/// What [`Engine::group_read`] delivered.
#[derive(Debug, Clone)]
pub struct GroupBatch {
    /// The entries, in ID order.
    pub batch: Batch,
    /// Delivery count of each entry (this read included), aligned with the batch.
    pub deliveries: Vec<u64>,
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
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

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
    /// What each publish trims (the operator's policy over publishers' `maxlen`).
    pub retention: Arc<retention::Retention>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            idempotency_ttl: Duration::from_secs(600),
            read_count: 512,
            retention: Arc::default(),
        }
    }
}

/// The channel's newest entry, if it has one.
pub(crate) async fn latest_entry(
    engine: &dyn Engine,
    channel: &Arc<str>,
) -> Result<Option<Batch>, EngineError> {
    let position = engine.position(channel).await?;
    let Some(before) = position.last_id.predecessor() else {
        return Ok(None);
    };
    let page = engine.read(channel, before, 1, MAX_ENTRY_BYTES).await?;
    Ok(page.batch.filter(|b| b.last_id() == position.last_id))
}

/// How many entries to trim at once past `maxlen`, so trimming is amortized (like `MAXLEN ~`);
/// at most half of [`MAX_TRIM_PER_PUBLISH`], so one publish brings a stream that grew one
/// entry past the slack back to `maxlen`.
pub(crate) fn trim_slack(maxlen: u64) -> u64 {
    (maxlen / 16).clamp(1, MAX_TRIM_PER_PUBLISH / 2)
}

/// Encodes each field value as the JSON text stored in the engine.
pub(crate) fn stored_fields(fields: &Fields) -> impl Iterator<Item = (&str, String)> {
    fields.iter().map(|(k, v)| {
        (
            k.as_str(),
            serde_json::to_string(v).expect("JSON values serialize"),
        )
    })
}
