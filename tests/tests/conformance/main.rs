//! The engine conformance suite: the same checks against the embedded engine, the Redis
//! engine (real redis-server) and the Redis engine in cluster mode (a real 3-primary Redis
//! Cluster), so all keep the same offset, trim, idempotency and live-feed semantics (issue 3,
//! "Must show" 8; issue 9).
//!
//! This file holds the engines under test ([`Subject`]), the helpers the checks share and the
//! macros that run each check against every engine; the checks live in `history`,
//! `history_back`, `live`,
//! `groups` and `redis_only`.

mod groups;
mod history;
mod history_back;
mod live;
mod presence;
mod redis_only;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use redistribute_protocol::{decode_server, Fields, Message, Offset, ServerFrame, StreamId};
use redistribute_server::internals::{
    Batch, Engine, EngineConfig, GroupRead, GroupTurn, LiveSink, Page, PublishRequest, Ready,
    MAX_BATCH_BYTES, MAX_ENTRY_BYTES, MAX_TRIM_PER_PUBLISH,
};
use redistribute_server::internals::{EmbeddedEngine, LiveReaders, RedisConfig, RedisEngine};
use redistribute_server::redis_keys as keys;
use redistribute_testkit::{RedisCluster, RedisServer};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use groups::{
    groups_deliver_each_entry_once_and_keep_it_pending_until_acked,
    idle_entries_are_claimed_with_delivery_counts_then_dead_lettered,
    new_group_entries_go_to_consumers_in_turn,
};
use history::{
    channels_are_created_only_when_allowed, idempotency_keys_return_the_first_offset,
    ids_increase_and_history_reads_after_an_offset, pages_are_bounded_by_bytes,
    position_reports_last_id_and_trim_watermark, trims_during_catch_up_are_reported_as_gaps,
};
use history_back::{
    offset_back_counts_entries_back_from_an_offset,
    reverse_pages_go_back_from_an_offset_within_bounds, reverse_pages_report_the_trim_watermark,
};
use live::{
    live_reader_reports_trims_and_cuts_batches_by_bytes,
    many_channels_feed_live_and_new_watches_start_at_once,
    watched_channels_feed_new_entries_in_order,
};
use presence::{
    presence_caps_hold_under_a_storm_of_joins,
    presence_members_join_leave_and_expire_with_each_change_logged_once,
};

/// Records what the engine feeds to its sink. While its [`Gate`] is closed, `deliver` blocks
/// (only in multi-threaded tests), holding the engine's live reader like a slow consumer.
struct Recorder(mpsc::UnboundedSender<Arc<Batch>>, Arc<Gate>);

impl LiveSink for Recorder {
    fn deliver(&self, batch: Arc<Batch>) {
        self.1.pass();
        let _ = self.0.send(batch);
    }
}

/// Holds a live reader inside `deliver` while closed.
#[derive(Default)]
struct Gate {
    closed: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
    /// Set once a delivery waited at the closed gate.
    held: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.changed.notify_all();
    }

    /// Waits while closed (at most 30 s, so a failing test cannot hang). On a multi-thread
    /// runtime the worker thread is handed over first ([`tokio::task::block_in_place`]), so
    /// tasks it had queued (one the reader woke just before delivering) keep running on
    /// another thread instead of waiting for the gate.
    fn pass(&self) {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread && *self.closed.lock().unwrap() {
            tokio::task::block_in_place(|| self.wait_open());
        } else {
            self.wait_open();
        }
    }

    fn wait_open(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut closed = self.closed.lock().unwrap();
        while *closed && std::time::Instant::now() < deadline {
            self.held.store(true, std::sync::atomic::Ordering::SeqCst);
            closed = self
                .changed
                .wait_timeout(closed, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }

    /// Waits until a delivery is held at the gate.
    async fn wait_held(&self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.held.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .context("no delivery reached the closed gate")
    }
}

/// An engine under test with its live feed and (for Redis) its server.
struct Subject {
    engine: Arc<dyn Engine>,
    live: mpsc::UnboundedReceiver<Arc<Batch>>,
    gate: Arc<Gate>,
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
    /// A Redis engine with per-channel readers ([`LiveReaders::Channel`]).
    channel_readers: bool,
}

async fn embedded() -> Result<Subject> {
    let (tx, live) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate::default());
    let engine = EmbeddedEngine::start(
        Arc::new(Recorder(tx, gate.clone())),
        EngineConfig::default(),
    );
    Ok(Subject {
        engine,
        live,
        gate,
        redis: None,
        cluster: None,
        channel_readers: false,
    })
}

/// A Redis engine reading the shard logs (`--redis-live-readers log`).
async fn redis() -> Result<Subject> {
    redis_with(LiveReaders::Log, |_| {}).await
}

/// A Redis engine with per-channel readers (the default).
async fn redis_channel_readers() -> Result<Subject> {
    redis_with(LiveReaders::Channel, |_| {}).await
}

async fn redis_with(live: LiveReaders, tune: impl FnOnce(&mut RedisConfig)) -> Result<Subject> {
    let server = RedisServer::start().await?;
    let config = RedisConfig::new(server.url());
    redis_subject(config, live, tune, Some(server), None).await
}

/// A Redis Cluster engine reading the shard logs (`--redis-live-readers log`).
async fn redis_cluster() -> Result<Subject> {
    redis_cluster_with(LiveReaders::Log, |_| {}).await
}

/// A Redis Cluster engine with per-channel readers (the default).
async fn redis_cluster_channel_readers() -> Result<Subject> {
    redis_cluster_with(LiveReaders::Channel, |_| {}).await
}

async fn redis_cluster_with(
    live: LiveReaders,
    tune: impl FnOnce(&mut RedisConfig),
) -> Result<Subject> {
    let cluster = RedisCluster::start(3, 0).await?;
    let config = RedisConfig::cluster(cluster.urls());
    redis_subject(config, live, tune, None, Some(cluster)).await
}

/// A Redis engine with `config` (reading with `live`, then tuned by `tune`) connected to the
/// single Redis `redis` or the cluster `cluster`, which the subject keeps alive.
async fn redis_subject(
    mut config: RedisConfig,
    live: LiveReaders,
    tune: impl FnOnce(&mut RedisConfig),
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
) -> Result<Subject> {
    let (tx, live_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate::default());
    config.block = Duration::from_secs(30);
    config.live = live;
    tune(&mut config);
    let engine = RedisEngine::connect(config, Arc::new(Recorder(tx, gate.clone()))).await?;
    Ok(Subject {
        engine,
        live: live_rx,
        gate,
        redis,
        cluster,
        channel_readers: live == LiveReaders::Channel,
    })
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().expect("an object").clone()
}

fn messages(batch: &Batch) -> Vec<Message> {
    match decode_server(batch.frame()).expect("batch frames decode") {
        ServerFrame::Messages { messages, .. } => messages,
        other => panic!("not a messages frame: {other:?}"),
    }
}

async fn publish(s: &Subject, channel: &str, value: serde_json::Value) -> Result<StreamId> {
    let f = fields(value);
    Ok(s.engine
        .publish(PublishRequest {
            channel,
            fields: &f,
            maxlen: None,
            idempotency_key: None,
        })
        .await?)
}

async fn publish_maxlen(
    s: &Subject,
    channel: &str,
    value: serde_json::Value,
    maxlen: u64,
) -> Result<StreamId> {
    let f = fields(value);
    Ok(s.engine
        .publish(PublishRequest {
            channel,
            fields: &f,
            maxlen: Some(maxlen),
            idempotency_key: None,
        })
        .await?)
}

/// Checks a sequence of deliveries (each an optional gap and a batch, in order, starting after
/// `start`) against the acknowledged offsets: gaps and batches move strictly forward, a gap is
/// below its batch's first entry, and every acknowledged offset was delivered once or lies in a
/// reported gap. Returns how many offsets were covered by gaps.
fn check_no_silent_loss(
    start: StreamId,
    deliveries: &[(Option<StreamId>, Option<Arc<Batch>>)],
    acked: &[StreamId],
) -> Result<usize> {
    let mut last = start;
    let mut delivered = std::collections::BTreeSet::new();
    let mut gaps = Vec::new();
    for (gap, batch) in deliveries {
        if let Some(gap) = *gap {
            ensure!(gap > last, "gap through {gap} does not move past {last}");
            if let Some(batch) = batch {
                ensure!(
                    gap < batch.first_id(),
                    "gap {gap} reaches {}",
                    batch.first_id()
                );
            }
            gaps.push((last, gap));
            last = gap;
        }
        if let Some(batch) = batch {
            ensure!(
                batch.first_id() > last,
                "batch repeats offsets up to {last}"
            );
            delivered.extend(batch.ids().iter().copied());
            last = batch.last_id();
        }
    }
    let mut in_gaps = 0;
    for id in acked {
        if delivered.contains(id) {
            continue;
        }
        ensure!(
            gaps.iter().any(|(from, to)| from < id && id <= to),
            "offset {id} was neither delivered nor reported in a gap (gaps {gaps:?})"
        );
        in_gaps += 1;
    }
    Ok(in_gaps)
}

async fn read_all(s: &Subject, channel: &str, after: StreamId) -> Result<Vec<Message>> {
    let channel: Arc<str> = channel.into();
    Ok(s.engine
        .read(&channel, after, 10_000, usize::MAX)
        .await?
        .batch
        .map(|b| messages(&b))
        .unwrap_or_default())
}

/// Collects live batches until every offset in `want` arrived or was passed.
async fn collect_live(
    s: &mut Subject,
    want: &std::collections::HashMap<String, StreamId>,
) -> Result<Vec<Arc<Batch>>> {
    let mut got = Vec::new();
    let mut reached = std::collections::HashSet::new();
    while reached.len() < want.len() {
        let batch = tokio::time::timeout(Duration::from_secs(15), s.live.recv())
            .await
            .with_context(|| format!("live feed stalled; reached {reached:?} of {want:?}"))?
            .context("feed closed")?;
        if want
            .get(&**batch.channel())
            .is_some_and(|id| batch.last_id() >= *id)
        {
            reached.insert(batch.channel().to_string());
        }
        got.push(batch);
    }
    Ok(got)
}

async fn watch_ready(s: &Subject, channel: &str) -> Result<StreamId> {
    let (tx, mut ready) = watch::channel(Ready::Pending);
    s.engine.watch(channel.into(), tx);
    let fixed = *tokio::time::timeout(
        Duration::from_secs(10),
        ready.wait_for(|r| *r != Ready::Pending),
    )
    .await
    .context("watch never became ready")??;
    match fixed {
        Ready::At(position) => Ok(position.last_id),
        other => anyhow::bail!("a new watch is ready with {other:?}"),
    }
}

/// Generates module `$module` with one test (under the attribute `$test`) per check, each run
/// against the engine `$subject` builds.
macro_rules! engine_tests {
    ($module:ident, $subject:ident, #[$test:meta], $($check:ident),*) => {
        mod $module {
            $(
                #[$test]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::$subject().await?).await
                }
            )*
        }
    };
}

/// Generates, under the attribute `$test`, one module per engine (named in the order embedded,
/// Redis, Redis Cluster, Redis with channel readers, Redis Cluster with channel readers) with
/// one test per check.
macro_rules! every_engine {
    (
        #[$test:meta],
        $embedded:ident, $redis:ident, $cluster:ident, $channel:ident, $cluster_channel:ident,
        $($check:ident),*
    ) => {
        engine_tests!($embedded, embedded, #[$test], $($check),*);
        engine_tests!($redis, redis, #[$test], $($check),*);
        engine_tests!($cluster, redis_cluster, #[$test], $($check),*);
        engine_tests!($channel, redis_channel_readers, #[$test], $($check),*);
        engine_tests!($cluster_channel, redis_cluster_channel_readers, #[$test], $($check),*);
    };
}

/// Generates one test per engine for each conformance check that holds a live reader up (a
/// blocking sink needs a multi-threaded runtime).
macro_rules! conformance_threaded {
    ($($check:ident),* $(,)?) => {
        every_engine!(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)],
            embedded_engine_threaded,
            redis_engine_threaded,
            redis_cluster_engine_threaded,
            redis_channel_readers_threaded,
            redis_cluster_channel_readers_threaded,
            $($check),*
        );
    };
}

conformance_threaded!(live_reader_reports_trims_and_cuts_batches_by_bytes);

/// Generates one test per engine for each conformance check.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        every_engine!(
            #[tokio::test],
            embedded_engine,
            redis_engine,
            redis_cluster_engine,
            redis_channel_readers,
            redis_cluster_channel_readers,
            $($check),*
        );
    };
}

conformance!(
    trims_during_catch_up_are_reported_as_gaps,
    pages_are_bounded_by_bytes,
    ids_increase_and_history_reads_after_an_offset,
    position_reports_last_id_and_trim_watermark,
    idempotency_keys_return_the_first_offset,
    watched_channels_feed_new_entries_in_order,
    many_channels_feed_live_and_new_watches_start_at_once,
    groups_deliver_each_entry_once_and_keep_it_pending_until_acked,
    idle_entries_are_claimed_with_delivery_counts_then_dead_lettered,
    new_group_entries_go_to_consumers_in_turn,
    channels_are_created_only_when_allowed,
    reverse_pages_go_back_from_an_offset_within_bounds,
    reverse_pages_report_the_trim_watermark,
    offset_back_counts_entries_back_from_an_offset,
    presence_members_join_leave_and_expire_with_each_change_logged_once,
    presence_caps_hold_under_a_storm_of_joins,
);
