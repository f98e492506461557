//! Primary failover on Redis Cluster during steady publishing (issue 9, "Must show" 2).
//!
//! A 3-primary cluster with one replica each, two server instances acknowledging a publish only
//! once a replica has it (`--redis-wait-replicas 1`). While publishers keep publishing, a
//! primary is killed (its replica takes over), restarted (it rejoins as a replica), and made
//! primary again by a manual `CLUSTER FAILOVER`. Each publish either succeeds with an offset or
//! fails with `unavailable` (then it is retried under the same idempotency key); in the end
//! every acknowledged message is stored and every subscriber, on both instances, received each
//! one exactly once and in order.
//!
//! Also: without the replicas `--redis-wait-replicas` asks for, publishes fail with
//! `unavailable` instead of being acknowledged.

mod cluster_support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cluster_support::{offset, start_instance, subscribe_all, take, Received};
use redistribute_server::engine::redis::keys;
use redistribute_testkit::{server_binary, RedisCluster, RedisServer, ServerProcess, WsClient};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

const STEP: Duration = Duration::from_secs(30);

/// Acknowledged offsets per channel, handed to the subscribers once publishing stopped.
type Target = Option<Arc<HashMap<String, BTreeSet<(u64, u64)>>>>;

/// Acknowledged `(seq, offset)`s per channel.
type Acked = HashMap<String, Vec<(u64, (u64, u64))>>;

/// What one publisher got acknowledged, and how many attempts failed with `unavailable`.
struct Published {
    acked: Vec<(String, u64, (u64, u64))>,
    unavailable: u64,
}

/// Publishes `seq` 0, 1, 2, … round-robin over `channels` until `stop`, one at a time, each
/// with an idempotency key; an `unavailable` reply is retried under the same key.
async fn publisher(
    mut client: WsClient,
    name: &'static str,
    channels: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Result<Published> {
    let mut out = Published {
        acked: Vec::new(),
        unavailable: 0,
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let channel = &channels[seq as usize % channels.len()];
        let frame = json!({"type": "publish", "channel": channel, "fields": {"seq": seq},
                           "idempotency_key": format!("{name}-{seq}")});
        let mut attempts = 0;
        loop {
            let reply = client.request(frame.clone()).await?;
            match reply["type"].as_str() {
                Some("published") => {
                    let at = offset(reply["offset"].as_str().context("no offset")?)?;
                    out.acked.push((channel.clone(), seq, at));
                    break;
                }
                Some("error") if reply["code"] == "unavailable" => {
                    out.unavailable += 1;
                    attempts += 1;
                    ensure!(attempts < 300, "{channel} seq {seq} never stored: {reply}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => bail!("unexpected reply to a publish: {reply}"),
            }
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(out)
}

/// Reads messages until every offset of `target` (once it is known) has arrived, then for a
/// further quiet half second to catch duplicates.
async fn subscriber(mut client: WsClient, mut target: watch::Receiver<Target>) -> Result<Received> {
    let mut received = Received::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        ensure!(
            Instant::now() < deadline,
            "subscriber timed out; target {:?}",
            target.borrow().as_ref().map(|t| t.len())
        );
        match client.recv_json_timeout(Duration::from_millis(200)).await {
            Ok(frame) => {
                if let Some(other) = take(frame, &mut received)? {
                    bail!("unexpected frame: {other}");
                }
                continue;
            }
            Err(err) if err.to_string().contains("timed out") => {}
            Err(err) => return Err(err),
        }
        let Some(wanted) = target.borrow_and_update().clone() else {
            continue;
        };
        let complete = wanted.iter().all(|(channel, offsets)| {
            let seen: BTreeSet<(u64, u64)> = received
                .get(channel)
                .map(|l| l.iter().map(|s| s.offset).collect())
                .unwrap_or_default();
            offsets.is_subset(&seen)
        });
        if complete {
            client.expect_silence(Duration::from_millis(500)).await?;
            return Ok(received);
        }
    }
}

#[tokio::test]
async fn primary_failover_during_steady_publishing_keeps_every_acknowledged_message() -> Result<()>
{
    let mut cluster = RedisCluster::start(3, 1).await?;
    let flags = [
        "--redis-wait-replicas",
        "1",
        "--redis-wait-timeout-ms",
        "500",
        "--request-timeout-ms",
        "2000",
    ];
    let a = start_instance(&cluster, &flags).await?;
    let b = start_instance(&cluster, &flags).await?;
    let channels: Vec<String> = (0..24).map(|i| format!("orders:{i}")).collect();

    let (target_tx, target_rx) = watch::channel(None);
    let mut subscribers = Vec::new();
    for instance in [&a, &b] {
        let mut client = WsClient::connect(&instance.ws_url()).await?;
        subscribe_all(&mut client, &channels, STEP).await?;
        subscribers.push(tokio::spawn(subscriber(client, target_rx.clone())));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (evens, odds): (Vec<_>, Vec<_>) = channels
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let publishers = vec![
        tokio::spawn(publisher(
            WsClient::connect(&a.ws_url()).await?,
            "a",
            evens.into_iter().map(|(_, c)| c).collect(),
            stop.clone(),
        )),
        tokio::spawn(publisher(
            WsClient::connect(&b.ws_url()).await?,
            "b",
            odds.into_iter().map(|(_, c)| c).collect(),
            stop.clone(),
        )),
    ];

    // The primary serving orders:0 crashes; its replica takes over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let key = keys::stream_key("rd:", "orders:0", Some(keys::DEFAULT_SHARDS));
    let victim = cluster.primary_for_key(&key).await?;
    let started = Instant::now();
    let promoted = cluster.kill_primary(victim).await?;
    eprintln!(
        "killed primary {victim}; replica {promoted} promoted after {:?}",
        started.elapsed()
    );
    // It comes back as a replica (so WAIT 1 can be satisfied again), then takes its slots back
    // in a manual failover, which moves the readers blocked on the new primary.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.restart(victim).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.failover(victim).await?;
    ensure!(cluster.primary_for_key(&key).await? == victim);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = Acked::new();
    let mut unavailable = 0;
    for task in publishers {
        let published = tokio::time::timeout(STEP, task).await???;
        unavailable += published.unavailable;
        for (channel, seq, at) in published.acked {
            acked.entry(channel).or_default().push((seq, at));
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    eprintln!("{total} publishes acknowledged, {unavailable} attempts answered unavailable");

    // Acknowledged means stored: every acknowledged offset is in its stream after both
    // failovers.
    for (channel, list) in &acked {
        let key = keys::stream_key("rd:", channel, Some(keys::DEFAULT_SHARDS));
        let owner = cluster.primary_for_key(&key).await?;
        let reply = cluster
            .command(owner, &["XRANGE", &key, "-", "+"])
            .await?
            .into_result()?;
        let stored: BTreeSet<(u64, u64)> = reply
            .as_array()
            .context("XRANGE reply")?
            .iter()
            .map(|e| offset(e.as_array().and_then(|p| p[0].as_str()).unwrap_or("")))
            .collect::<Result<_>>()?;
        for (seq, at) in list {
            ensure!(
                stored.contains(at),
                "{channel} seq {seq} at {at:?} was acknowledged but is not stored"
            );
        }
    }

    let target: HashMap<String, BTreeSet<(u64, u64)>> = acked
        .iter()
        .map(|(c, l)| (c.clone(), l.iter().map(|(_, at)| *at).collect()))
        .collect();
    target_tx.send_replace(Some(Arc::new(target)));
    for task in subscribers {
        let received = tokio::time::timeout(Duration::from_secs(120), task).await???;
        for (channel, list) in &acked {
            let got = received.get(channel).cloned().unwrap_or_default();
            ensure!(
                got.windows(2).all(|w| w[0].offset < w[1].offset),
                "{channel}: offsets out of order or repeated: {got:?}"
            );
            let offsets: BTreeSet<(u64, u64)> = got.iter().map(|s| s.offset).collect();
            for (seq, at) in list {
                ensure!(
                    offsets.contains(at),
                    "{channel}: seq {seq} at {at:?} missing"
                );
            }
            let extra: Vec<_> = got
                .iter()
                .filter(|s| !list.iter().any(|(_, at)| *at == s.offset))
                .collect();
            if !extra.is_empty() {
                // Stored by an attempt answered `unavailable` and lost with the crashed primary
                // before its retry: never acknowledged, so allowed, but reported.
                eprintln!("{channel}: unacknowledged entries delivered: {extra:?}");
            }
            ensure!(
                got.windows(2).all(|w| w[0].seq <= w[1].seq),
                "{channel}: seqs out of order: {got:?}"
            );
        }
    }
    Ok(())
}

/// With `--redis-wait-replicas 1` and no replica to confirm, a publish is stored by the primary
/// but not acknowledged: it fails with `unavailable` (as documented, it may have been stored),
/// and a retry under the same idempotency key writes nothing twice.
#[tokio::test]
async fn publishes_without_enough_replicas_fail_unavailable_and_retries_write_once() -> Result<()> {
    let redis = RedisServer::start().await?;
    let args: Vec<String> = [
        "--redis",
        &redis.url(),
        "--redis-wait-replicas",
        "1",
        "--redis-wait-timeout-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = ServerProcess::start(&server_binary(), &args).await?;
    let mut client = WsClient::connect(&server.ws_url()).await?;
    for _ in 0..2 {
        let reply = client
            .request(
                json!({"type": "publish", "channel": "durable", "fields": {"n": 1},
                            "idempotency_key": "once"}),
            )
            .await?;
        ensure!(
            reply["type"] == "error" && reply["code"] == "unavailable",
            "{reply}"
        );
    }
    let len = redis.command(&["XLEN", "rd:durable"]).await?;
    ensure!(len.as_integer() == Some(1), "stored {len} times");
    Ok(())
}
