//! The engine conformance suite: the same checks against the embedded engine, the Redis
//! engine (real redis-server) and the Redis engine in cluster mode (a real 3-primary Redis
//! Cluster), so all keep the same offset, trim, idempotency and live-feed semantics (issue 3,
//! "Must show" 8; issue 9).

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
    let (tx, live_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate::default());
    let mut config = RedisConfig::new(server.url());
    config.block = Duration::from_secs(30);
    config.live = live;
    tune(&mut config);
    let engine = RedisEngine::connect(config, Arc::new(Recorder(tx, gate.clone()))).await?;
    Ok(Subject {
        engine,
        live: live_rx,
        gate,
        redis: Some(server),
        cluster: None,
        channel_readers: live == LiveReaders::Channel,
    })
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
    let (tx, live_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate::default());
    let mut config = RedisConfig::cluster(cluster.urls());
    config.block = Duration::from_secs(30);
    config.live = live;
    tune(&mut config);
    let engine = RedisEngine::connect(config, Arc::new(Recorder(tx, gate.clone()))).await?;
    Ok(Subject {
        engine,
        live: live_rx,
        gate,
        redis: None,
        cluster: Some(cluster),
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

async fn ids_increase_and_history_reads_after_an_offset(s: Subject) -> Result<()> {
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(publish(&s, "c", json!({"n": n, "nested": {"a": [1, "two", null]}})).await?);
    }
    ensure!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    let all = read_all(&s, "c", StreamId::ZERO).await?;
    assert_eq!(all.iter().map(|m| m.offset).collect::<Vec<_>>(), ids);
    assert_eq!(all[3].fields["n"], 3);
    assert_eq!(all[3].fields["nested"]["a"][1], "two");
    let after = read_all(&s, "c", ids[9]).await?;
    assert_eq!(after.first().map(|m| m.offset), Some(ids[10]));
    assert_eq!(after.len(), 10);
    // Pages.
    let channel: Arc<str> = "c".into();
    let page = s.engine.read(&channel, ids[0], 5, usize::MAX).await?;
    assert_eq!(page.gap_through, None);
    assert_eq!(page.batch.context("page")?.ids(), &ids[1..6]);
    let end = s.engine.read(&channel, ids[19], 5, usize::MAX).await?;
    assert!(end.batch.is_none() && end.gap_through.is_none());
    // Other channels are independent.
    assert!(read_all(&s, "elsewhere", StreamId::ZERO).await?.is_empty());
    Ok(())
}

async fn position_reports_last_id_and_trim_watermark(s: Subject) -> Result<()> {
    let empty = s.engine.position("nothing").await?;
    assert_eq!(empty.last_id, StreamId::ZERO);
    assert_eq!(empty.trimmed_through, None);
    let mut ids = Vec::new();
    for n in 0..100 {
        let f = fields(json!({ "n": n }));
        ids.push(
            s.engine
                .publish(PublishRequest {
                    channel: "t",
                    fields: &f,
                    maxlen: Some(10),
                    idempotency_key: None,
                })
                .await?,
        );
    }
    let pos = s.engine.position("t").await?;
    assert_eq!(pos.last_id, ids[99]);
    let retained = read_all(&s, "t", StreamId::ZERO).await?;
    ensure!(
        (10..=11).contains(&retained.len()),
        "retained {} entries for maxlen 10",
        retained.len()
    );
    let first = retained[0].offset;
    let index = ids
        .iter()
        .position(|id| *id == first)
        .context("first retained")?;
    // The watermark is exactly the last entry removed.
    assert_eq!(pos.trimmed_through, Some(ids[index - 1]));
    Ok(())
}

async fn idempotency_keys_return_the_first_offset(s: Subject) -> Result<()> {
    let f = fields(json!({"order": 17}));
    let request = PublishRequest {
        channel: "orders",
        fields: &f,
        maxlen: None,
        idempotency_key: Some("k-17"),
    };
    let first = s.engine.publish(request.clone()).await?;
    let again = s.engine.publish(request.clone()).await?;
    assert_eq!(first, again);
    // The key is per channel.
    let elsewhere = s
        .engine
        .publish(PublishRequest {
            channel: "other",
            ..request
        })
        .await?;
    assert_ne!(elsewhere, StreamId::ZERO);
    assert_eq!(read_all(&s, "orders", StreamId::ZERO).await?.len(), 1);
    assert_eq!(read_all(&s, "other", StreamId::ZERO).await?.len(), 1);
    Ok(())
}

async fn watched_channels_feed_new_entries_in_order(mut s: Subject) -> Result<()> {
    let before = publish(&s, "live", json!({"n": -1})).await?;
    let (ready_tx, mut ready) = watch::channel(Ready::Pending);
    s.engine.watch("live".into(), ready_tx);
    let fixed = *tokio::time::timeout(
        Duration::from_secs(10),
        ready.wait_for(|r| *r != Ready::Pending),
    )
    .await
    .context("watch never became ready")??;
    // A new watch reports the position it starts from (the first subscriber uses it).
    match fixed {
        Ready::At(position) => assert_eq!(position.last_id, before),
        other => panic!("a new watch is ready with {other:?}, not its position"),
    }
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(publish(&s, "live", json!({ "n": n })).await?);
    }
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let batch = tokio::time::timeout(Duration::from_secs(10), s.live.recv())
            .await
            .context("live feed stalled")?
            .context("feed closed")?;
        assert_eq!(&**batch.channel(), "live");
        seen.extend(messages(&batch).into_iter().map(|m| m.offset));
    }
    assert_eq!(
        seen, ids,
        "entries after the watch point, each once, in order"
    );
    assert!(!seen.contains(&before));

    s.engine.unwatch(&"live".into());
    // Unwatching takes effect before the next read; give it a moment, then nothing arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while s.live.try_recv().is_ok() {}
    publish(&s, "live", json!({"n": 99})).await?;
    let more = tokio::time::timeout(Duration::from_millis(500), s.live.recv()).await;
    ensure!(more.is_err(), "an unwatched channel was still fed");
    Ok(())
}

/// Channels of many shards are fed at once, and a channel watched while every reader is blocked
/// in `XREAD` (30 s) starts at once: the reader is woken with `CLIENT UNBLOCK` (sent, in
/// cluster mode, to the node holding it).
async fn many_channels_feed_live_and_new_watches_start_at_once(mut s: Subject) -> Result<()> {
    let names: Vec<String> = (0..40).map(|i| format!("many:{i}")).collect();
    let mut readies = Vec::new();
    for name in &names {
        let (tx, rx) = watch::channel(Ready::Pending);
        s.engine.watch(name.as_str().into(), tx);
        readies.push(rx);
    }
    for ready in &mut readies {
        tokio::time::timeout(
            Duration::from_secs(10),
            ready.wait_for(|r| *r != Ready::Pending),
        )
        .await
        .context("watch never became ready")??;
    }
    // Let the readers block in XREAD.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx, mut late) = watch::channel(Ready::Pending);
    s.engine.watch("many:late".into(), tx);
    tokio::time::timeout(
        Duration::from_secs(10),
        late.wait_for(|r| *r != Ready::Pending),
    )
    .await
    .context("a watch added while readers were blocked never became ready")??;
    let mut expected = std::collections::HashMap::new();
    for (i, name) in names
        .iter()
        .chain(["many:late".to_string()].iter())
        .enumerate()
    {
        let id = publish(&s, name, json!({ "i": i })).await?;
        expected.insert(name.clone(), id);
    }
    while !expected.is_empty() {
        let batch = tokio::time::timeout(Duration::from_secs(10), s.live.recv())
            .await
            .with_context(|| format!("live feed stalled; still waiting for {expected:?}"))?
            .context("feed closed")?;
        let channel = batch.channel().to_string();
        if let Some(id) = expected.get(&channel) {
            ensure!(batch.ids() == [*id], "{channel}: got {:?}", batch.ids());
            expected.remove(&channel);
        }
    }
    let stats = s.engine.stats();
    if s.channel_readers {
        ensure!(
            stats.unblocks > 0,
            "no CLIENT UNBLOCK woke a reader: {stats:?}"
        );
    }
    if s.cluster.is_some() {
        // One reader per shard at most (41 channels, 256 keys per reader).
        ensure!(stats.readers <= keys::DEFAULT_SHARDS as usize, "{stats:?}");
    }
    Ok(())
}

async fn group_read(
    s: &Subject,
    channel: &str,
    consumer: &str,
    from: GroupRead,
    count: usize,
) -> Result<Vec<StreamId>> {
    let channel: Arc<str> = channel.into();
    Ok(s.engine
        .group_read(&channel, "g", consumer, from, count)
        .await?
        .map(|b| b.batch.ids().to_vec())
        .unwrap_or_default())
}

const ALL_PENDING: GroupRead = GroupRead::Pending {
    after: StreamId::ZERO,
};

async fn groups_deliver_each_entry_once_and_keep_it_pending_until_acked(s: Subject) -> Result<()> {
    let created = s
        .engine
        .group_create("jobs", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    ensure!(created == StreamId::ZERO, "new group from 0: {created}");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(publish(&s, "jobs", json!({ "n": n })).await?);
    }
    assert_eq!(
        group_read(&s, "jobs", "c1", GroupRead::New, 2).await?,
        ids[..2]
    );
    assert_eq!(
        group_read(&s, "jobs", "c2", GroupRead::New, 10).await?,
        ids[2..]
    );
    assert!(group_read(&s, "jobs", "c1", GroupRead::New, 10)
        .await?
        .is_empty());
    // Each consumer's own pending entries, then paged after an ID.
    assert_eq!(
        group_read(&s, "jobs", "c1", ALL_PENDING, 10).await?,
        ids[..2]
    );
    let after = GroupRead::Pending { after: ids[2] };
    assert_eq!(group_read(&s, "jobs", "c2", after, 10).await?, ids[3..]);
    assert_eq!(s.engine.group_ack("jobs", "g", &ids[..1]).await?, 1);
    assert_eq!(s.engine.group_ack("jobs", "g", &ids[..2]).await?, 1);
    assert!(group_read(&s, "jobs", "c1", ALL_PENDING, 10)
        .await?
        .is_empty());
    // An existing group keeps its position; a new one from `$` starts at the tip.
    let again = s
        .engine
        .group_create("jobs", "g", Offset::Latest, true)
        .await?
        .context("the group was created")?;
    ensure!(again == ids[4], "existing group: {again}");
    let tip = s
        .engine
        .group_create("jobs", "late", Offset::Latest, true)
        .await?
        .context("the group was created")?;
    ensure!(tip == ids[4], "new group from $: {tip}");
    let next = publish(&s, "jobs", json!({"n": 5})).await?;
    let late = s
        .engine
        .group_read(&"jobs".into(), "late", "c", GroupRead::New, 10)
        .await?
        .map(|b| b.batch.ids().to_vec());
    assert_eq!(late, Some(vec![next]));
    // MKSTREAM: a group on a channel that has no entry yet.
    let empty = s
        .engine
        .group_create("fresh", "g", Offset::Latest, true)
        .await?
        .context("the group was created")?;
    ensure!(empty == StreamId::ZERO, "group on a new channel: {empty}");
    let first = publish(&s, "fresh", json!({"n": 1})).await?;
    assert_eq!(
        group_read(&s, "fresh", "c", GroupRead::New, 10).await?,
        [first]
    );
    Ok(())
}

async fn idle_entries_are_claimed_with_delivery_counts_then_dead_lettered(
    s: Subject,
) -> Result<()> {
    s.engine
        .group_create("work", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    let a = publish(&s, "work", json!({"job": "a"})).await?;
    let b = publish(&s, "work", json!({"job": "b"})).await?;
    let channel: Arc<str> = "work".into();
    let new = s
        .engine
        .group_read(&channel, "g", "c1", GroupRead::New, 10)
        .await?
        .context("new entries")?;
    assert_eq!(new.batch.ids(), [a, b]);
    assert_eq!(new.deliveries, [1, 1]);
    let hour = Duration::from_secs(3600);
    let none = s
        .engine
        .group_claim(&channel, "g", "c2", hour, StreamId::ZERO, 10)
        .await?;
    ensure!(none.batch.is_none(), "claimed entries that are not idle");
    let claimed = s
        .engine
        .group_claim(&channel, "g", "c2", Duration::ZERO, StreamId::ZERO, 10)
        .await?;
    assert_eq!(claimed.batch.map(|b| b.ids().to_vec()), Some(vec![a, b]));
    assert_eq!(claimed.deliveries, [2, 2]);
    assert_eq!(claimed.next, StreamId::ZERO);
    // Now they are c2's: c1 has nothing pending, c2's pending read is delivery 3.
    assert!(group_read(&s, "work", "c1", ALL_PENDING, 10)
        .await?
        .is_empty());
    let again = s
        .engine
        .group_read(&channel, "g", "c2", ALL_PENDING, 10)
        .await?
        .context("c2's pending entries")?;
    assert_eq!(again.batch.ids(), [a, b]);
    assert_eq!(again.deliveries, [3, 3], "a pending read counts a delivery");
    s.engine.group_ack("work", "g", &[b]).await?;
    // The next claim would be delivery 4 > 3: `a` goes to `work:dead` and is acknowledged.
    let outcome = redistribute_server::internals::claim_idle(
        s.engine.as_ref(),
        &channel,
        "g",
        "c3",
        Duration::ZERO,
        3,
        StreamId::ZERO,
        10,
    )
    .await?;
    ensure!(outcome.batch.is_none(), "a dead entry was delivered");
    assert_eq!(outcome.dead, [a]);
    let dead = read_all(&s, "work:dead", StreamId::ZERO).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].fields["job"], "a");
    assert_eq!(dead[0].fields["dead_letter"]["offset"], a.to_string());
    assert_eq!(dead[0].fields["dead_letter"]["deliveries"], 4);
    assert_eq!(dead[0].fields["dead_letter"]["group"], "g");
    for c in ["c1", "c2", "c3"] {
        assert!(group_read(&s, "work", c, ALL_PENDING, 10).await?.is_empty());
    }
    Ok(())
}

/// A catch-up reader that lags while `maxlen` trims past its position learns of every trimmed
/// entry from the page's gap (read atomically with the entries), at every page.
async fn trims_during_catch_up_are_reported_as_gaps(s: Subject) -> Result<()> {
    let channel: Arc<str> = "lagging".into();
    let mut acked = Vec::new();
    for n in 0..30 {
        acked.push(publish_maxlen(&s, &channel, json!({ "n": n }), 10).await?);
    }
    let mut deliveries = Vec::new();
    let mut last = StreamId::ZERO;
    for round in 0.. {
        let Page { batch, gap_through } = s.engine.read(&channel, last, 3, usize::MAX).await?;
        if let Some(gap) = gap_through {
            last = gap;
        }
        if let Some(b) = &batch {
            ensure!(b.len() <= 3, "a page of {} entries for limit 3", b.len());
            last = b.last_id();
        }
        let done = batch.is_none() && gap_through.is_none();
        deliveries.push((gap_through, batch.map(Arc::new)));
        if done {
            break;
        }
        // The producer outruns the reader for a while: 7 new entries per page of 3.
        if round < 8 {
            for n in 0..7 {
                acked.push(publish_maxlen(&s, &channel, json!({ "r": round, "n": n }), 10).await?);
            }
        }
    }
    let in_gaps = check_no_silent_loss(StreamId::ZERO, &deliveries, &acked)?;
    ensure!(in_gaps > 0, "nothing was trimmed under the reader");
    Ok(())
}

/// Catch-up pages are bounded by bytes (at least one entry), at and past the limit.
async fn pages_are_bounded_by_bytes(s: Subject) -> Result<()> {
    let channel: Arc<str> = "sizes".into();
    let sizes = [
        10, 1_000, 50_000, 120_000, 300_000, 5, 70_000, 260_000, 1, 2, 3, 90_000,
    ];
    let mut acked = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        acked.push(publish(&s, &channel, json!({ "i": i, "v": "x".repeat(*n) })).await?);
    }
    let all = s
        .engine
        .read(&channel, StreamId::ZERO, 1_000, usize::MAX)
        .await?
        .batch
        .context("entries")?;
    assert_eq!(all.ids(), acked);
    let item = |i: usize| all.item(i).len();
    // Exactly the first two entries' encoded items fit, one byte less leaves one.
    let two = item(0) + 1 + item(1);
    for (max_bytes, expected) in [(two, 2), (two - 1, 1), (0, 1), (1, 1)] {
        let page = s
            .engine
            .read(&channel, StreamId::ZERO, 10, max_bytes)
            .await?;
        let batch = page.batch.context("a page")?;
        ensure!(
            batch.len() == expected,
            "max_bytes {max_bytes}: {} entries, wanted {expected}",
            batch.len()
        );
        ensure!(page.gap_through.is_none());
    }
    for max_bytes in [1, 100, 50_000, 120_100, 262_144, 400_000, 1_000_000] {
        let mut after = StreamId::ZERO;
        let mut seen = Vec::new();
        while let Some(batch) = s
            .engine
            .read(&channel, after, 1_000, max_bytes)
            .await?
            .batch
        {
            ensure!(
                batch.items_len() <= max_bytes || batch.len() == 1,
                "max_bytes {max_bytes}: a page of {} entries holds {} bytes",
                batch.len(),
                batch.items_len()
            );
            let frame_items: usize = (0..batch.len()).map(|i| batch.item(i).len() + 1).sum();
            ensure!(batch.items_len() + 1 == frame_items);
            seen.extend(batch.ids().iter().copied());
            after = batch.last_id();
        }
        ensure!(
            seen == acked,
            "max_bytes {max_bytes}: pages lost or repeated entries"
        );
    }
    Ok(())
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

/// A live reader held up (a slow sink) while `maxlen: 1` trims a burst reports every entry it
/// missed as the gap of its next batch; a burst of large entries arrives in batches of at most
/// [`MAX_BATCH_BYTES`] (a single entry may exceed it).
async fn live_reader_reports_trims_and_cuts_batches_by_bytes(mut s: Subject) -> Result<()> {
    let start_trim = watch_ready(&s, "burst").await?;
    let start_big = watch_ready(&s, "large").await?;
    s.gate.set(true);
    let mut trimmed_acked = vec![publish_maxlen(&s, "burst", json!({"n": -1}), 1).await?];
    s.gate.wait_held().await?;
    // The reader is held inside `deliver`; everything below queues up behind it.
    for n in 0..100 {
        trimmed_acked.push(publish_maxlen(&s, "burst", json!({ "n": n }), 1).await?);
    }
    let sizes = [
        100_000,
        100_000,
        MAX_BATCH_BYTES,
        10,
        MAX_BATCH_BYTES - 200,
        1,
        300_000,
        20_000,
        200_000,
        60_000,
    ];
    let mut big_acked = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        big_acked.push(publish(&s, "large", json!({ "i": i, "v": "y".repeat(*n) })).await?);
    }
    s.gate.set(false);
    let want = [
        ("burst".to_string(), *trimmed_acked.last().unwrap()),
        ("large".to_string(), *big_acked.last().unwrap()),
    ]
    .into_iter()
    .collect();
    let got = collect_live(&mut s, &want).await?;
    let of = |channel: &str| -> Vec<(Option<StreamId>, Option<Arc<Batch>>)> {
        got.iter()
            .filter(|b| &**b.channel() == channel)
            .map(|b| (b.gap_through(), Some(b.clone())))
            .collect()
    };
    let in_gaps = check_no_silent_loss(start_trim, &of("burst"), &trimmed_acked)?;
    if s.channel_readers {
        ensure!(in_gaps >= 90, "only {in_gaps} trimmed entries in gaps");
    }
    let large = of("large");
    ensure!(check_no_silent_loss(start_big, &large, &big_acked)? == 0);
    for (gap, batch) in &large {
        let batch = batch.as_ref().unwrap();
        ensure!(gap.is_none(), "a gap in an untrimmed channel");
        ensure!(
            batch.items_len() <= MAX_BATCH_BYTES || batch.len() == 1,
            "a live batch of {} entries holds {} bytes",
            batch.len(),
            batch.items_len()
        );
    }
    Ok(())
}

/// Shard logs: a reader held up (inside `deliver`) until its log was trimmed far past it
/// notices the break in the log's sequence and catches every channel up from its stream: each
/// acknowledged entry arrives once, in order, or inside an exact gap (only where the channel's
/// own trim removed it), and later entries keep coming live.
async fn log_reader_behind_the_log_trim_catches_channels_up(mut s: Subject) -> Result<()> {
    let names = ["lag:trimmed", "lag:a", "lag:b", "lag:c"];
    let mut starts = Vec::new();
    for name in names {
        starts.push(watch_ready(&s, name).await?);
    }
    s.gate.set(true);
    let mut acked: Vec<Vec<StreamId>> = vec![Vec::new(); names.len()];
    acked[1].push(publish(&s, names[1], json!({"n": -1})).await?);
    s.gate.wait_held().await?;
    // The reader is held; the log (about 20 entries) is trimmed far past it meanwhile.
    for n in 0..600 {
        let i = n % names.len();
        let id = if i == 0 {
            publish_maxlen(&s, names[0], json!({ "n": n }), 3).await?
        } else {
            publish(&s, names[i], json!({ "n": n })).await?
        };
        acked[i].push(id);
    }
    s.gate.set(false);
    let want = names
        .iter()
        .zip(&acked)
        .map(|(n, a)| (n.to_string(), *a.last().unwrap()))
        .collect();
    let got = collect_live(&mut s, &want).await?;
    for (i, name) in names.iter().enumerate() {
        let deliveries: Vec<_> = got
            .iter()
            .filter(|b| &**b.channel() == *name)
            .map(|b| (b.gap_through(), Some(b.clone())))
            .collect();
        let in_gaps = check_no_silent_loss(starts[i], &deliveries, &acked[i])
            .with_context(|| format!("channel {name}"))?;
        if i == 0 {
            ensure!(in_gaps > 0, "the trimmed channel reported no gap");
        } else {
            ensure!(
                in_gaps == 0,
                "{name}: {in_gaps} entries in gaps, none trimmed"
            );
        }
    }
    // Live again: one more entry each arrives, alone.
    let mut want = std::collections::HashMap::new();
    for name in names {
        want.insert(
            name.to_string(),
            publish(&s, name, json!({"after": true})).await?,
        );
    }
    let got = collect_live(&mut s, &want).await?;
    for batch in got {
        if let Some(id) = want.get(&**batch.channel()) {
            ensure!(batch.ids().last() == Some(id), "{:?}", batch.ids());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_reader_behind_the_log_trim_catches_channels_up_redis() -> Result<()> {
    let s = redis_with(LiveReaders::Log, |c| c.log_maxlen = 20).await?;
    log_reader_behind_the_log_trim_catches_channels_up(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_reader_behind_the_log_trim_catches_channels_up_cluster() -> Result<()> {
    let s = redis_cluster_with(LiveReaders::Log, |c| {
        c.log_maxlen = 20;
        // One shard: every channel in the one log that is trimmed.
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.shards = 1;
        }
    })
    .await?;
    log_reader_behind_the_log_trim_catches_channels_up(s).await
}

/// Generates one test per engine for each conformance check that holds a live reader up (a
/// blocking sink needs a multi-threaded runtime).
macro_rules! conformance_threaded {
    ($($check:ident),* $(,)?) => {
        mod embedded_engine_threaded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::embedded().await?).await
                }
            )*
        }
        mod redis_engine_threaded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis().await?).await
                }
            )*
        }
        mod redis_cluster_engine_threaded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis_cluster().await?).await
                }
            )*
        }
        mod redis_channel_readers_threaded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis_channel_readers().await?).await
                }
            )*
        }
        mod redis_cluster_channel_readers_threaded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis_cluster_channel_readers().await?).await
                }
            )*
        }
    };
}

conformance_threaded!(live_reader_reports_trims_and_cuts_batches_by_bytes);

async fn new_group_entries_go_to_consumers_in_turn(s: Subject) -> Result<()> {
    s.engine
        .group_create("turns", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(publish(&s, "turns", json!({ "n": n })).await?);
    }
    let channel: Arc<str> = "turns".into();
    let take = |consumers: Vec<(Arc<str>, usize)>, count: usize| {
        let s = &s;
        let channel = channel.clone();
        async move {
            let turn = GroupTurn {
                instance: "i1",
                consumers: &consumers,
                lease: Duration::from_secs(60),
                count,
            };
            let turns = s.engine.group_take_turns(&channel, "g", &turn).await?;
            ensure!(!turns.deferred, "one instance never defers");
            anyhow::Ok(
                turns
                    .batches
                    .into_iter()
                    .map(|(name, b)| (name.to_string(), b.ids().to_vec()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    // Equal room: alternate (ties by name, then the one served least recently).
    let got = take(vec![("c1".into(), 2), ("c2".into(), 2)], 10).await?;
    assert_eq!(
        got,
        [
            ("c1".to_owned(), vec![ids[0], ids[2]]),
            ("c2".to_owned(), vec![ids[1], ids[3]])
        ]
    );
    // The most room first; `count` caps a call; no room, nothing.
    let got = take(vec![("c1".into(), 0), ("c2".into(), 5)], 1).await?;
    assert_eq!(got, [("c2".to_owned(), vec![ids[4]])]);
    assert!(take(vec![("c1".into(), 0), ("c2".into(), 0)], 10)
        .await?
        .is_empty());
    // c2 was served last: c1 goes first on a tie.
    let got = take(vec![("c1".into(), 1), ("c2".into(), 1)], 10).await?;
    assert_eq!(got, [("c1".to_owned(), vec![ids[5]])]);
    // Each is pending for its consumer, delivered once.
    let c2 = s
        .engine
        .group_read(&channel, "g", "c2", ALL_PENDING, 10)
        .await?
        .context("c2's pending entries")?;
    assert_eq!(c2.batch.ids(), [ids[1], ids[3], ids[4]]);
    assert_eq!(c2.deliveries, [2, 2, 2]);
    Ok(())
}

/// Generates one test per engine for each conformance check.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod embedded_engine {
            $(
                #[tokio::test]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::embedded().await?).await
                }
            )*
        }
        mod redis_engine {
            $(
                #[tokio::test]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis().await?).await
                }
            )*
        }
        mod redis_cluster_engine {
            $(
                #[tokio::test]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis_cluster().await?).await
                }
            )*
        }
        mod redis_channel_readers {
            $(
                #[tokio::test]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis_channel_readers().await?).await
                }
            )*
        }
        mod redis_cluster_channel_readers {
            $(
                #[tokio::test]
                async fn $check() -> anyhow::Result<()> {
                    super::$check(super::redis_cluster_channel_readers().await?).await
                }
            )*
        }
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
);

/// Without `create` (a client that may not publish to the channel), neither resuming beyond
/// the tip nor a consumer group creates a channel that does not exist, and on Redis no key is
/// written; on an existing channel both work as before, and with `create` both create it.
async fn channels_are_created_only_when_allowed(s: Subject) -> Result<()> {
    let ahead = StreamId::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64
            + 1_000,
        0,
    );
    let raised = s.engine.raise_last_id("absent", ahead, false).await?;
    ensure!(
        raised == Default::default(),
        "raised a missing channel: {raised:?}"
    );
    let group = s
        .engine
        .group_create("absent", "g", Offset::Earliest, false)
        .await?;
    ensure!(
        group.is_none(),
        "a group created a missing channel: {group:?}"
    );
    ensure!(s.engine.position("absent").await?.last_id == StreamId::ZERO);
    if let Some(redis) = &s.redis {
        let keys = redis.command(&["KEYS", "*"]).await?;
        ensure!(
            keys.as_array().is_some_and(<[_]>::is_empty),
            "refused creations wrote keys: {keys:?}"
        );
    }
    // An existing channel: both go ahead without `create`.
    let first = publish(&s, "present", json!({"n": 1})).await?;
    let group = s
        .engine
        .group_create("present", "g", Offset::Earliest, false)
        .await?;
    ensure!(group == Some(StreamId::ZERO), "{group:?}");
    let raised = s.engine.raise_last_id("present", ahead, false).await?;
    ensure!(raised.last_id == ahead && ahead > first, "{raised:?}");
    // With `create`, a missing channel is created.
    let group = s
        .engine
        .group_create("made", "g", Offset::Latest, true)
        .await?;
    ensure!(group == Some(StreamId::ZERO), "{group:?}");
    // (Watched, as a subscriber's channel is: the embedded engine frees unwatched empty
    // channels at once.)
    let (tx, _ready) = watch::channel(Ready::Pending);
    s.engine.watch("raised".into(), tx);
    let raised = s.engine.raise_last_id("raised", ahead, true).await?;
    ensure!(raised.last_id == ahead, "{raised:?}");
    ensure!(s.engine.position("raised").await?.last_id == ahead);
    if let Some(redis) = &s.redis {
        for key in ["rd:made", "rd:raised", "rd:present"] {
            let exists = redis.command(&["EXISTS", key]).await?;
            ensure!(exists.as_integer() == Some(1), "{key} missing");
        }
    }
    s.engine.unwatch(&"raised".into());
    Ok(())
}

/// Values written by another producer that are not JSON arrive as JSON strings (Redis only:
/// nothing else can write into the embedded engine).
#[tokio::test]
async fn foreign_non_json_values_arrive_as_strings() -> Result<()> {
    let s = redis().await?;
    let redis = s.redis.as_ref().unwrap();
    redis
        .command(&[
            "XADD",
            "rd:foreign",
            "*",
            "text",
            "plain words",
            "num",
            "42",
            "obj",
            "{\"a\":1}",
        ])
        .await?;
    let got = read_all(&s, "foreign", StreamId::ZERO).await?;
    assert_eq!(got[0].fields["text"], "plain words");
    assert_eq!(got[0].fields["num"], 42);
    assert_eq!(got[0].fields["obj"]["a"], 1);
    Ok(())
}

/// In cluster mode, foreign producers write to `<prefix>{<shard>}:<channel>` (the documented
/// key, [`keys::stream_key`]) and the engine reads it.
#[tokio::test]
async fn cluster_keys_are_the_documented_ones() -> Result<()> {
    let s = redis_cluster().await?;
    let mut cluster = s.cluster.expect("a cluster subject");
    let key = keys::stream_key("rd:", "foreign", Some(keys::DEFAULT_SHARDS));
    assert_eq!(
        key,
        format!("rd:{{{}}}:foreign", keys::fnv1a32(b"foreign") % 16)
    );
    let owner = cluster.primary_for_key(&key).await?;
    cluster
        .command(
            owner,
            &["XADD", &key, "*", "text", "plain words", "num", "42"],
        )
        .await?
        .into_result()?;
    let channel: Arc<str> = "foreign".into();
    let got = s
        .engine
        .read(&channel, StreamId::ZERO, 10, usize::MAX)
        .await?
        .batch
        .map(|b| messages(&b))
        .unwrap_or_default();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].fields["text"], "plain words");
    assert_eq!(got[0].fields["num"], 42);
    // What the engine writes lands on the same key.
    let id = s
        .engine
        .publish(PublishRequest {
            channel: "foreign",
            fields: &fields(json!({"n": 1})),
            maxlen: None,
            idempotency_key: None,
        })
        .await?;
    let len = cluster.command(owner, &["XLEN", &key]).await?;
    assert_eq!(len.as_integer(), Some(2), "{len}");
    assert_ne!(id, StreamId::ZERO);
    Ok(())
}

/// An entry another producer wrote past [`MAX_ENTRY_BYTES`] (of stored field names and values)
/// is never delivered: catch-up pages and the live feed skip it and cover it with a gap. One
/// at exactly the limit is delivered.
#[tokio::test]
async fn foreign_oversize_entries_are_skipped_into_gaps() -> Result<()> {
    // Entries other producers append reach the live feed of per-channel readers only.
    let mut s = redis_channel_readers().await?;
    let redis = s.redis.take().context("a single Redis")?;
    let xadd = |key: &'static str, value: String| {
        let redis = &redis;
        async move {
            let reply = redis
                .command(&["XADD", key, "*", "v", &value])
                .await?
                .into_result()?;
            StreamId::parse(reply.as_str().context("an ID")?).context("an ID")
        }
    };
    // "v" (1 byte) + the value: exactly the limit, then one byte past it.
    let small = xadd("rd:huge", "1".into()).await?;
    let at_limit = xadd("rd:huge", "2".repeat(MAX_ENTRY_BYTES - 1)).await?;
    let over = xadd("rd:huge", "3".repeat(MAX_ENTRY_BYTES)).await?;
    let over2 = xadd("rd:huge", "4".repeat(MAX_ENTRY_BYTES + 1000)).await?;
    let after = xadd("rd:huge", "5".into()).await?;
    let channel: Arc<str> = "huge".into();
    let big = 64 * MAX_ENTRY_BYTES;
    // A page ends before an oversize entry; the next one skips it into its gap.
    let first = s.engine.read(&channel, StreamId::ZERO, 10, big).await?;
    ensure!(first.gap_through.is_none());
    assert_eq!(first.batch.context("page")?.ids(), [small, at_limit]);
    let second = s.engine.read(&channel, at_limit, 10, big).await?;
    assert_eq!(second.gap_through, Some(over2));
    assert_eq!(second.batch.context("page")?.ids(), [after]);
    // Starting right at an oversize entry.
    let third = s.engine.read(&channel, over, 10, big).await?;
    assert_eq!(third.gap_through, Some(over2));
    // Live: an oversize entry, alone in its reply, is reported with the next batch.
    let start = watch_ready(&s, "huge").await?;
    assert_eq!(start, after);
    let live_over = xadd("rd:huge", "6".repeat(MAX_ENTRY_BYTES + 1)).await?;
    // Let the reader read it on its own before the next entry arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = publish(&s, "huge", json!({"n": 1})).await?;
    let live_over2 = xadd("rd:huge", "7".repeat(MAX_ENTRY_BYTES + 1)).await?;
    let last = publish(&s, "huge", json!({"n": 2})).await?;
    let want = [("huge".to_string(), last)].into_iter().collect();
    let got = collect_live(&mut s, &want).await?;
    let deliveries: Vec<_> = got
        .iter()
        .map(|b| (b.gap_through(), Some(b.clone())))
        .collect();
    check_no_silent_loss(after, &deliveries, &[live_over, next, live_over2, last])?;
    let delivered: Vec<StreamId> = got.iter().flat_map(|b| b.ids().to_vec()).collect();
    assert_eq!(delivered, [next, last]);
    assert_eq!(got[0].gap_through(), Some(live_over));
    Ok(())
}

/// A publish with `maxlen: 1` on a large stream trims at most [`MAX_TRIM_PER_PUBLISH`]
/// entries (bounded work per publish) and keeps the watermark exact at every step; later
/// publishes finish the job.
#[tokio::test]
async fn trimming_a_large_stream_is_bounded_per_publish() -> Result<()> {
    let s = redis().await?;
    let redis = s.redis.as_ref().context("a single Redis")?;
    const ENTRIES: usize = 200_000;
    redis
        .command(&[
            "EVAL",
            "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'n', i) end",
            "1",
            "rd:long",
            &ENTRIES.to_string(),
        ])
        .await?
        .into_result()?;
    let xlen = || async {
        let len = redis.command(&["XLEN", "rd:long"]).await?;
        len.as_integer().context("XLEN")
    };
    let head = |count: usize| async move {
        let reply = redis
            .command(&["XRANGE", "rd:long", "-", "+", "COUNT", &count.to_string()])
            .await?
            .into_result()?;
        reply
            .as_array()
            .context("XRANGE")?
            .iter()
            .map(|e| {
                let id = e
                    .as_array()
                    .and_then(|p| p.first())
                    .and_then(|v| v.as_str());
                StreamId::parse(id.context("an entry ID")?).context("an entry ID")
            })
            .collect::<Result<Vec<_>>>()
    };
    let cap = MAX_TRIM_PER_PUBLISH as usize;
    let mut publishes = 0;
    loop {
        let before = xlen().await?;
        let ids = head(cap + 1).await?;
        let new = publish_maxlen(&s, "long", json!({ "p": publishes }), 1).await?;
        publishes += 1;
        let after = xlen().await?;
        let trimmed = (before + 1 - after) as usize;
        ensure!(
            trimmed <= cap,
            "one publish trimmed {trimmed} entries (cap {cap})"
        );
        if trimmed > 0 {
            // Exactly the oldest `trimmed` entries went, and the watermark is the last of them.
            let first_kept = ids.get(trimmed).copied().unwrap_or(new);
            assert_eq!(head(1).await?.first(), Some(&first_kept));
            let position = s.engine.position("long").await?;
            assert_eq!(position.trimmed_through, Some(ids[trimmed - 1]));
        }
        if after <= 2 {
            break;
        }
        ensure!(publishes < 2 * ENTRIES / cap, "trimming does not converge");
    }
    ensure!(
        publishes >= ENTRIES / cap,
        "{publishes} publishes trimmed {ENTRIES} entries"
    );
    Ok(())
}

/// A trim watermark never outlives its stream: once the stream is deleted the position has no
/// watermark (and the `#trim` key is removed), and a recreated stream starts without one.
#[tokio::test]
async fn trim_watermarks_die_with_their_stream() -> Result<()> {
    let s = redis().await?;
    let redis = s.redis.as_ref().context("a single Redis")?;
    for round in 0..2 {
        for n in 0..30 {
            publish_maxlen(&s, "gone", json!({ "n": n }), 5).await?;
        }
        ensure!(s.engine.position("gone").await?.trimmed_through.is_some());
        redis.command(&["DEL", "rd:gone"]).await?.into_result()?;
        if round == 0 {
            // Read while deleted: no watermark, and the orphan key goes.
            let position = s.engine.position("gone").await?;
            assert_eq!(position.trimmed_through, None);
            assert_eq!(position.last_id, StreamId::ZERO);
            let exists = redis.command(&["EXISTS", "rd:gone#trim"]).await?;
            assert_eq!(exists.as_integer(), Some(0));
            let page = s
                .engine
                .read(&"gone".into(), StreamId::ZERO, 10, 1 << 20)
                .await?;
            ensure!(page.batch.is_none() && page.gap_through.is_none());
        }
        // Recreated (round 1: straight away, without a read in between).
        let id = publish(&s, "gone", json!({"again": round})).await?;
        let position = s.engine.position("gone").await?;
        assert_eq!(position.trimmed_through, None, "round {round}");
        assert_eq!(position.last_id, id);
        let page = s
            .engine
            .read(&"gone".into(), StreamId::ZERO, 10, 1 << 20)
            .await?;
        assert_eq!(page.gap_through, None, "round {round}");
        redis.command(&["DEL", "rd:gone"]).await?.into_result()?;
    }
    // A consumer group creating the stream again starts it without the old watermark too.
    for n in 0..30 {
        publish_maxlen(&s, "gone", json!({ "n": n }), 5).await?;
    }
    redis.command(&["DEL", "rd:gone"]).await?.into_result()?;
    s.engine
        .group_create("gone", "g", Offset::Earliest, true)
        .await?
        .context("the group was created")?;
    assert_eq!(s.engine.position("gone").await?.trimmed_through, None);
    Ok(())
}
