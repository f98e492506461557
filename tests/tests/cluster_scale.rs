//! Scale-out on Redis Cluster (issue 9, "Must show" 1 and 3): several server instances on one
//! 3-primary cluster deliver every message of 1,000 channels in order on every instance, the
//! channels' streams land on every primary, and the readers of an instance are bounded by the
//! shard count, not the channel count.

mod cluster_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cluster_support::{
    collect, publish_all, readers_and_connections, start_instance, subscribe_all, Seen,
};
use redistribute_server::redis_keys as keys;
use redistribute_testkit::{RedisCluster, WsClient};
use tokio::time::Instant;

const STEP: Duration = Duration::from_secs(30);

#[tokio::test]
async fn three_instances_deliver_every_message_of_1000_channels_in_order() -> Result<()> {
    const CHANNELS: usize = 1_000;
    const PER_CHANNEL: u64 = 3;
    let mut cluster = RedisCluster::start(3, 0).await?;
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start_instance(&cluster, &[]).await?);
    }
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("room:{i}")).collect();

    // Two subscribers per instance, each on half of the channels: every channel is read on
    // every instance.
    let mut subscribers = Vec::new();
    for instance in &instances {
        for half in 0..2 {
            let mine: Vec<String> = channels
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == half)
                .map(|(_, c)| c.clone())
                .collect();
            let mut client = WsClient::connect(&instance.ws_url()).await?;
            subscribe_all(&mut client, &mine, STEP).await?;
            subscribers.push((client, mine));
        }
    }

    // Channel i is published through instance i % 3, seq 0, 1, 2 in order (pipelined).
    let mut acked = HashMap::new();
    let mut publishing = Vec::new();
    for (k, instance) in instances.iter().enumerate() {
        let items: Vec<(String, u64)> = (0..PER_CHANNEL)
            .flat_map(|seq| {
                channels
                    .iter()
                    .enumerate()
                    .filter(move |(i, _)| i % 3 == k)
                    .map(move |(_, c)| (c.clone(), seq))
            })
            .collect();
        let mut client = WsClient::connect(&instance.ws_url()).await?;
        publishing.push(tokio::spawn(async move {
            publish_all(&mut client, &items, STEP).await
        }));
    }
    for task in publishing {
        acked.extend(task.await??);
    }
    assert_eq!(acked.len(), CHANNELS * PER_CHANNEL as usize);

    // Every subscriber gets every message of each of its channels, once, in order.
    let mut tasks = Vec::new();
    for (mut client, mine) in subscribers {
        tasks.push(tokio::spawn(async move {
            let total = mine.len() * PER_CHANNEL as usize;
            collect(&mut client, total, STEP).await.map(|r| (r, mine))
        }));
    }
    for task in tasks {
        let (received, mine) = task.await??;
        for channel in &mine {
            let got = received.get(channel).cloned().unwrap_or_default();
            let expected: Vec<Seen> = (0..PER_CHANNEL)
                .map(|seq| Seen {
                    offset: acked[&(channel.clone(), seq)],
                    seq,
                })
                .collect();
            ensure!(
                got == expected,
                "{channel}: got {got:?}, expected {expected:?}"
            );
        }
    }

    // The streams are spread over all three primaries, one hash tag (slot) per shard.
    // (`rd:{*}:*`: the channels' streams, not the shard logs `rd:{<shard>}#log[seq]`.)
    let per_primary = cluster.keys_per_primary("rd:{*}:*").await?;
    eprintln!("stream keys per primary (port → keys): {per_primary:?}");
    ensure!(per_primary.len() == 3, "{per_primary:?}");
    ensure!(
        per_primary.values().all(|&n| n > 0),
        "a primary holds no stream: {per_primary:?}"
    );
    ensure!(per_primary.values().sum::<usize>() == CHANNELS);
    let mut tags = BTreeSet::new();
    for port in cluster.primaries().await? {
        for key in cluster.keys(port, "rd:*").await? {
            if let Some(log) = key.strip_suffix("#log").or(key.strip_suffix("#logseq")) {
                // One shard log (and its counter) per shard, in the shard's slot.
                let shard: u16 = log
                    .strip_prefix("rd:{")
                    .and_then(|s| s.strip_suffix('}'))
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("unexpected key {key}"))?;
                ensure!(shard < keys::DEFAULT_SHARDS, "unexpected key {key}");
                continue;
            }
            let channel = key.split_once("}:").map(|(_, c)| c).unwrap_or_default();
            ensure!(
                key == keys::stream_key("rd:", channel, Some(keys::DEFAULT_SHARDS)),
                "unexpected key {key}"
            );
            tags.insert(keys::shard_of(channel, keys::DEFAULT_SHARDS));
        }
    }
    ensure!(
        tags.len() == keys::DEFAULT_SHARDS as usize,
        "shards used: {tags:?}"
    );
    Ok(())
}

#[tokio::test]
async fn readers_per_instance_are_bounded_by_shards_not_channels() -> Result<()> {
    const SHARDS: usize = 8;
    let mut cluster = RedisCluster::start(3, 0).await?;
    let instance = start_instance(&cluster, &["--redis-shards", "8"]).await?;
    let idle = readers_and_connections(&mut cluster).await?;
    eprintln!("idle instance, per node (readers, connections): {idle:?}");

    let mut counts = Vec::new();
    let mut clients = Vec::new();
    for (from, to) in [(0, 100), (100, 1_000), (1_000, 2_000)] {
        let channels: Vec<String> = (from..to).map(|i| format!("c:{i}")).collect();
        let mut client = WsClient::connect(&instance.ws_url()).await?;
        subscribe_all(&mut client, &channels, STEP).await?;
        clients.push(client);
        // Readers block in XREAD once they have applied their new channels.
        let deadline = Instant::now() + STEP;
        let per_node = loop {
            let per_node = readers_and_connections(&mut cluster).await?;
            let readers: usize = per_node.values().map(|(r, _)| r).sum();
            if readers == SHARDS || Instant::now() >= deadline {
                break per_node;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let readers: usize = per_node.values().map(|(r, _)| r).sum();
        let connections: usize = per_node.values().map(|(_, c)| c).sum();
        eprintln!(
            "{to} channels: {readers} readers, {connections} Redis connections; per node \
             (readers, connections): {per_node:?}"
        );
        counts.push((to, readers, connections));
    }
    // One reader per shard (each shard's channels are far below 256 keys per reader), however
    // many channels: 8 readers for 100, 1,000 and 2,000 channels; the writer and the pages
    // client (history and catch-up reads) add one connection per primary and one for slot
    // discovery each.
    for &(channels, readers, connections) in &counts {
        ensure!(readers == SHARDS, "{channels} channels: {readers} readers");
        ensure!(
            connections <= SHARDS + 2 * 3 + 2,
            "{channels} channels: {connections} connections"
        );
    }
    ensure!(counts[0].2 == counts[2].2, "connections grew: {counts:?}");
    Ok(())
}
