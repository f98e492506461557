//! Model-based tests of the server's delivery core: random sequences of subscribes (at any
//! offset), replacing subscribes, unsubscribes, cancelled subscribes, publishes with `maxlen`
//! (trimming), stalls (no draining while the live queue overflows) and drains, run against a
//! real [`Feed`] with its hub and engine — the embedded engine and a real redis-server — and
//! compared with what must have been delivered:
//!
//! - per subscription, offsets arrive strictly increasing, each an acknowledged entry after the
//!   subscription's start, never inside a gap reported to it;
//! - for every subscription alive at the end, every acknowledged entry after its start is
//!   delivered or inside a reported gap;
//! - once the feed is dropped, the hub watches no channel (no leaked registration, cancelled
//!   subscribes included).
//!
//! `PROPTEST_CASES` sets the number of cases (default 48 on the embedded engine, 12 on Redis).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use redistribute_protocol::{Fields, Offset, StreamId};
use redistribute_server::internals::{Core, Delivery, Feed, PublishRequest, Start};
use redistribute_server::{Config, Server};
use redistribute_testkit::RedisServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Channels per case: few, so operations collide.
const CHANNELS: usize = 2;

#[derive(Debug, Clone)]
enum At {
    Latest,
    Earliest,
    /// The n-th acknowledged entry of the channel (modulo how many there are).
    Acked(usize),
    /// Just before the n-th acknowledged entry.
    BeforeAcked(usize),
    /// Beyond anything assigned.
    Future,
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(usize, At),
    Unsubscribe(usize),
    /// A subscribe whose caller goes away at its first wait.
    CancelledSubscribe(usize, At),
    Publish {
        channel: usize,
        count: usize,
        large: bool,
        maxlen: Option<u64>,
    },
    Drain,
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        2 => Just(At::Latest),
        2 => Just(At::Earliest),
        3 => any::<usize>().prop_map(At::Acked),
        1 => any::<usize>().prop_map(At::BeforeAcked),
        1 => Just(At::Future),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let channel = 0..CHANNELS;
    prop_oneof![
        4 => (channel.clone(), at()).prop_map(|(c, a)| Op::Subscribe(c, a)),
        1 => channel.clone().prop_map(Op::Unsubscribe),
        1 => (channel.clone(), at()).prop_map(|(c, a)| Op::CancelledSubscribe(c, a)),
        5 => (channel, 1..60usize, any::<bool>(), prop::option::weighted(0.4, 1..20u64))
            .prop_map(|(channel, count, large, maxlen)| Op::Publish { channel, count, large, maxlen }),
        3 => Just(Op::Drain),
    ]
}

/// One subscription as the model sees it.
#[derive(Debug)]
struct Sub {
    channel: usize,
    start: StreamId,
    delivered: Vec<StreamId>,
    gaps: Vec<(StreamId, StreamId)>,
    alive: bool,
}

impl Sub {
    fn position(&self) -> StreamId {
        let d = self.delivered.last().copied().unwrap_or(self.start);
        let g = self.gaps.last().map_or(self.start, |g| g.1);
        d.max(g).max(self.start)
    }

    fn covered(&self, id: StreamId) -> bool {
        self.delivered.binary_search(&id).is_ok()
            || self.gaps.iter().any(|(from, to)| id > *from && id <= *to)
    }
}

struct Run {
    core: Arc<Core>,
    feed: Option<Feed>,
    names: Vec<String>,
    acked: Vec<Vec<StreamId>>,
    subs: Vec<Sub>,
    /// The current subscription of each channel (index into `subs`).
    current: HashMap<usize, usize>,
}

/// Bounds every wait of the test.
const STEP: Duration = Duration::from_secs(20);

impl Run {
    fn feed(&mut self) -> &mut Feed {
        self.feed.as_mut().expect("the feed lives until the end")
    }

    fn offset(&self, channel: usize, at: &At) -> Offset {
        let acked = &self.acked[channel];
        match at {
            At::Latest => Offset::Latest,
            At::Earliest => Offset::Earliest,
            At::Acked(n) if !acked.is_empty() => Offset::Id(acked[n % acked.len()]),
            At::BeforeAcked(n) if !acked.is_empty() => {
                let id = acked[n % acked.len()];
                Offset::Id(id.predecessor().unwrap_or(StreamId::ZERO))
            }
            At::Future => Offset::Id(StreamId::new(u64::MAX / 2, 0)),
            _ => Offset::Earliest,
        }
    }

    /// Takes whatever the feed has collected (without waiting) and records it.
    fn take(&mut self) -> Result<usize> {
        let out = self.feed().take();
        let mut n = 0;
        for delivery in out.deliveries() {
            n += 1;
            let (channel, id, gap_to) = match delivery {
                Delivery::Message(channel, id, _) => (channel, id, None),
                Delivery::Gap(channel, from, to) => (channel, from, Some(to)),
            };
            let index = self
                .names
                .iter()
                .position(|n| **n == **channel)
                .context("delivery for an unknown channel")?;
            let Some(&sub) = self.current.get(&index) else {
                bail!("delivery on {channel} with no subscription: {delivery:?}");
            };
            let sub = &mut self.subs[sub];
            match gap_to {
                None => {
                    ensure!(
                        id > sub.position(),
                        "{id} delivered at position {} on {channel}",
                        sub.position()
                    );
                    ensure!(
                        self.acked[index].binary_search(&id).is_ok(),
                        "{id} delivered on {channel} was never acknowledged"
                    );
                    sub.delivered.push(id);
                }
                Some(to) => {
                    ensure!(
                        id == sub.position() && to > id,
                        "gap ({id}, {to}] at position {} on {channel}",
                        sub.position()
                    );
                    sub.gaps.push((id, to));
                }
            }
        }
        Ok(n)
    }

    /// Drains what arrives within a short quiet period.
    async fn drain(&mut self, quiet: Duration) -> Result<()> {
        for _ in 0..10_000 {
            self.take()?;
            let feed = self.feed.as_mut().expect("feed");
            if tokio::time::timeout(quiet, feed.ready()).await.is_err() {
                return Ok(());
            }
        }
        bail!("the feed never went quiet")
    }

    fn end_current(&mut self, channel: usize) {
        if let Some(sub) = self.current.remove(&channel) {
            self.subs[sub].alive = false;
        }
    }

    fn started(&mut self, channel: usize, start: Start) {
        let mut sub = Sub {
            channel,
            start: start.after,
            delivered: Vec::new(),
            gaps: Vec::new(),
            alive: true,
        };
        if let Some((from, to)) = start.gap {
            // Reported with the reply; the subscription starts after it.
            sub.gaps.push((from, to));
        }
        self.subs.push(sub);
        self.current.insert(channel, self.subs.len() - 1);
    }

    async fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::Subscribe(channel, at) => {
                // As on every transport: what was collected is written before a reply.
                self.take()?;
                let offset = self.offset(*channel, at);
                let name = self.names[*channel].clone();
                self.end_current(*channel);
                let start = tokio::time::timeout(STEP, self.feed().subscribe(&name, offset, true))
                    .await
                    .context("subscribe timed out")??;
                self.started(*channel, start);
            }
            Op::CancelledSubscribe(channel, at) => {
                self.take()?;
                let offset = self.offset(*channel, at);
                let name = self.names[*channel].clone();
                // Subscribing replaces (ends) the current subscription at once.
                self.end_current(*channel);
                let attempt = self.feed().subscribe(&name, offset, true);
                if let Ok(result) = tokio::time::timeout(Duration::from_micros(1), attempt).await {
                    self.started(*channel, result?);
                }
            }
            Op::Unsubscribe(channel) => {
                self.take()?;
                let name = self.names[*channel].clone();
                let had = self.current.contains_key(channel);
                let removed = self.feed().unsubscribe(&name);
                ensure!(
                    removed == had,
                    "unsubscribe of {name}: {removed}, expected {had}"
                );
                self.end_current(*channel);
            }
            Op::Publish {
                channel,
                count,
                large,
                maxlen,
            } => {
                let pad = "p".repeat(if *large { 3_000 } else { 8 });
                for n in 0..*count {
                    let fields: Fields = json!({"n": n, "pad": pad})
                        .as_object()
                        .expect("object")
                        .clone();
                    let request = PublishRequest {
                        channel: &self.names[*channel],
                        fields: &fields,
                        maxlen: *maxlen,
                        idempotency_key: None,
                    };
                    let id = tokio::time::timeout(STEP, self.core.engine.publish(request))
                        .await
                        .context("publish timed out")??;
                    self.acked[*channel].push(id);
                }
            }
            Op::Drain => self.drain(Duration::from_millis(5)).await?,
        }
        Ok(())
    }

    /// Lets every live subscription reach the channel's last entry, then checks the model.
    async fn finish(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            self.drain(Duration::from_millis(20)).await?;
            let behind = self.subs.iter().filter(|s| s.alive).any(|s| {
                self.acked[s.channel]
                    .last()
                    .is_some_and(|last| *last > s.position())
            });
            if !behind {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "live subscriptions never caught up: {:?}",
                self.subs.iter().filter(|s| s.alive).collect::<Vec<_>>()
            );
        }
        // Nothing more (a duplicate would show up here).
        self.drain(Duration::from_millis(50)).await?;
        for sub in self.subs.iter().filter(|s| s.alive) {
            let missing: Vec<_> = self.acked[sub.channel]
                .iter()
                .filter(|id| **id > sub.start && !sub.covered(**id))
                .collect();
            ensure!(
                missing.is_empty(),
                "{} acknowledged entries neither delivered nor in a gap, first {:?}: {sub:?}",
                missing.len(),
                missing.first()
            );
        }
        drop(self.feed.take());
        ensure!(
            self.core.hub.channel_count() == 0,
            "{} channels still registered with the hub after the feed was dropped",
            self.core.hub.channel_count()
        );
        Ok(())
    }
}

/// A configuration that makes lag, paging and byte limits happen in small cases.
fn config(redis: Option<String>) -> Config {
    let mut config = Config {
        redis: redis.map(Into::into),
        ..Config::default()
    };
    config.limits.queue_batches = 3;
    config.limits.queue_bytes = 8 * 1024;
    config.limits.catch_up_page = 7;
    // Small `maxlen`s must trim, below the server's default floor.
    config.retention.set_min_maxlen(0);
    config
}

static CASE: AtomicU64 = AtomicU64::new(0);

fn run_case(redis: Option<String>, ops: &[Op]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let core = Server::start(config(redis), shutdown.clone())
            .await?
            .core()
            .clone();
        let case = CASE.fetch_add(1, Ordering::Relaxed);
        let mut run = Run {
            feed: Some(Feed::new(core.clone(), "test")),
            core,
            names: (0..CHANNELS).map(|c| format!("model{case}:{c}")).collect(),
            acked: vec![Vec::new(); CHANNELS],
            subs: Vec::new(),
            current: HashMap::new(),
        };
        let result = async {
            for op in ops {
                run.apply(op).await.with_context(|| format!("at {op:?}"))?;
            }
            run.finish().await
        }
        .await;
        shutdown.cancel();
        result
    })
}

fn check(redis: Option<String>, default_cases: u32) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        run_case(redis.clone(), &ops).map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// The model on the embedded engine.
#[test]
fn feed_matches_the_model_on_the_embedded_engine() {
    check(None, 48);
}

/// The model on a real redis-server.
#[test]
fn feed_matches_the_model_on_redis() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = runtime
        .block_on(RedisServer::start())
        .expect("redis-server starts");
    check(Some(redis.url()), 12);
    drop(redis);
}
