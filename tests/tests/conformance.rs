//! The engine conformance suite: the same checks against the embedded engine, the Redis
//! engine (real redis-server) and the Redis engine in cluster mode (a real 3-primary Redis
//! Cluster), so all keep the same offset, trim, idempotency and live-feed semantics (issue 3,
//! "Must show" 8; issue 9).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use redistribute_protocol::{decode_server, Fields, Message, Offset, ServerFrame, StreamId};
use redistribute_server::engine::embedded::EmbeddedEngine;
use redistribute_server::engine::redis::{keys, RedisConfig, RedisEngine};
use redistribute_server::engine::{
    Batch, Engine, EngineConfig, GroupRead, GroupTurn, LiveSink, PublishRequest, Ready,
};
use redistribute_testkit::{RedisCluster, RedisServer};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Records what the engine feeds to its sink.
struct Recorder(mpsc::UnboundedSender<Arc<Batch>>);

impl LiveSink for Recorder {
    fn deliver(&self, batch: Arc<Batch>) {
        let _ = self.0.send(batch);
    }
}

/// An engine under test with its live feed and (for Redis) its server.
struct Subject {
    engine: Arc<dyn Engine>,
    live: mpsc::UnboundedReceiver<Arc<Batch>>,
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
}

async fn embedded() -> Result<Subject> {
    let (tx, live) = mpsc::unbounded_channel();
    let engine = EmbeddedEngine::start(Arc::new(Recorder(tx)), EngineConfig::default());
    Ok(Subject {
        engine,
        live,
        redis: None,
        cluster: None,
    })
}

async fn redis() -> Result<Subject> {
    let server = RedisServer::start().await?;
    let (tx, live) = mpsc::unbounded_channel();
    let mut config = RedisConfig::new(server.url());
    config.block = Duration::from_secs(30);
    let engine = RedisEngine::connect(config, Arc::new(Recorder(tx))).await?;
    Ok(Subject {
        engine,
        live,
        redis: Some(server),
        cluster: None,
    })
}

async fn redis_cluster() -> Result<Subject> {
    let cluster = RedisCluster::start(3, 0).await?;
    let (tx, live) = mpsc::unbounded_channel();
    let mut config = RedisConfig::cluster(cluster.urls());
    config.block = Duration::from_secs(30);
    let engine = RedisEngine::connect(config, Arc::new(Recorder(tx))).await?;
    Ok(Subject {
        engine,
        live,
        redis: None,
        cluster: Some(cluster),
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

async fn read_all(s: &Subject, channel: &str, after: StreamId) -> Result<Vec<Message>> {
    let channel: Arc<str> = channel.into();
    Ok(s.engine
        .read(&channel, after, 10_000)
        .await?
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
    let page = s.engine.read(&channel, ids[0], 5).await?.context("page")?;
    assert_eq!(page.ids(), &ids[1..6]);
    assert!(s.engine.read(&channel, ids[19], 5).await?.is_none());
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
    if s.engine.name() == "redis" {
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
    let created = s.engine.group_create("jobs", "g", Offset::Earliest).await?;
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
    let again = s.engine.group_create("jobs", "g", Offset::Latest).await?;
    ensure!(again == ids[4], "existing group: {again}");
    let tip = s
        .engine
        .group_create("jobs", "late", Offset::Latest)
        .await?;
    ensure!(tip == ids[4], "new group from $: {tip}");
    let next = publish(&s, "jobs", json!({"n": 5})).await?;
    let late = s
        .engine
        .group_read(&"jobs".into(), "late", "c", GroupRead::New, 10)
        .await?
        .map(|b| b.batch.ids().to_vec());
    assert_eq!(late, Some(vec![next]));
    // MKSTREAM: a group on a channel that has no entry yet.
    let empty = s.engine.group_create("fresh", "g", Offset::Latest).await?;
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
    s.engine.group_create("work", "g", Offset::Earliest).await?;
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
    let outcome = redistribute_server::groups::claim_idle(
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

async fn new_group_entries_go_to_consumers_in_turn(s: Subject) -> Result<()> {
    s.engine
        .group_create("turns", "g", Offset::Earliest)
        .await?;
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
    };
}

conformance!(
    ids_increase_and_history_reads_after_an_offset,
    position_reports_last_id_and_trim_watermark,
    idempotency_keys_return_the_first_offset,
    watched_channels_feed_new_entries_in_order,
    many_channels_feed_live_and_new_watches_start_at_once,
    groups_deliver_each_entry_once_and_keep_it_pending_until_acked,
    idle_entries_are_claimed_with_delivery_counts_then_dead_lettered,
    new_group_entries_go_to_consumers_in_turn,
);

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
        .read(&channel, StreamId::ZERO, 10)
        .await?
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
