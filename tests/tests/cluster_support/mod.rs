//! Helpers of the Redis Cluster end-to-end tests (issue 9): server instances on a cluster,
//! pipelined subscribes and publishes over many channels, and per-channel delivery checks.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use redistribute_testkit::{server_binary, RedisCluster, ServerProcess, WsClient};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Flags that lift the per-connection rate limits, which these tests are not about.
pub const NO_RATE_LIMITS: &[&str] = &[
    "--publish-rate",
    "1000000",
    "--publish-burst",
    "1000000",
    "--subscribe-rate",
    "1000000",
    "--subscribe-burst",
    "1000000",
];

/// Starts one server instance on `cluster` (every node given as a seed) with `extra` flags.
pub async fn start_instance(cluster: &RedisCluster, extra: &[&str]) -> Result<ServerProcess> {
    let mut args: Vec<String> = Vec::new();
    for url in cluster.urls() {
        args.push("--redis-cluster".into());
        args.push(url);
    }
    args.extend(NO_RATE_LIMITS.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    ServerProcess::start(&server_binary(), &args).await
}

/// A stream entry ID as numbers, for ordering.
pub fn offset(text: &str) -> Result<(u64, u64)> {
    let (ms, seq) = text
        .split_once('-')
        .with_context(|| format!("malformed offset {text:?}"))?;
    Ok((ms.parse()?, seq.parse()?))
}

/// Sends one request per item, pipelined (`request` builds it from its id), and waits within
/// `timeout` for every reply, each of type `expected`; returns the replies by item.
async fn pipeline<T: Clone + Eq + std::hash::Hash + std::fmt::Debug>(
    client: &mut WsClient,
    items: impl IntoIterator<Item = T>,
    expected: &str,
    timeout: Duration,
    request: impl Fn(u64, &T) -> Value,
) -> Result<HashMap<T, Value>> {
    let mut pending = HashMap::new();
    for item in items {
        let id = client.next_id();
        client.send_json(&request(id, &item)).await?;
        pending.insert(id, item);
    }
    let mut replies = HashMap::new();
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client
            .recv_json_timeout(left)
            .await
            .with_context(|| format!("{} requests still unanswered", pending.len()))?;
        let item = frame
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| pending.remove(&id))
            .with_context(|| format!("unexpected frame while waiting for {expected}: {frame}"))?;
        ensure!(frame["type"] == expected, "{item:?}: {frame}");
        replies.insert(item, frame);
    }
    Ok(replies)
}

/// Subscribes `client` to every channel (requests pipelined) and waits for every reply.
pub async fn subscribe_all(
    client: &mut WsClient,
    channels: &[String],
    timeout: Duration,
) -> Result<()> {
    pipeline(
        client,
        channels.iter().cloned(),
        "subscribed",
        timeout,
        |id, channel| json!({"type": "subscribe", "id": id, "channel": channel}),
    )
    .await?;
    Ok(())
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its offset.
    pub offset: (u64, u64),
    /// Its `seq` field.
    pub seq: u64,
}

/// Messages per channel, in arrival order.
pub type Received = BTreeMap<String, Vec<Seen>>;

/// Takes the messages of a `messages` frame into `received`; other frames are returned.
pub fn take(frame: Value, received: &mut Received) -> Result<Option<Value>> {
    if frame["type"] != "messages" {
        return Ok(Some(frame));
    }
    let channel = frame["channel"]
        .as_str()
        .context("messages without channel")?;
    let list = received.entry(channel.to_owned()).or_default();
    for m in frame["messages"]
        .as_array()
        .context("messages without a list")?
    {
        list.push(Seen {
            offset: offset(m["offset"].as_str().context("message without offset")?)?,
            seq: m["fields"]["seq"].as_u64().context("message without seq")?,
        });
    }
    Ok(None)
}

/// Reads `messages` frames until `total` messages arrived, within `timeout`.
pub async fn collect(client: &mut WsClient, total: usize, timeout: Duration) -> Result<Received> {
    let mut received = Received::new();
    let mut count = 0;
    let deadline = Instant::now() + timeout;
    while count < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client
            .recv_json_timeout(left)
            .await
            .with_context(|| format!("got {count} of {total} messages"))?;
        if let Some(other) = take(frame, &mut received)? {
            bail!("unexpected frame: {other}");
        }
        count = received.values().map(Vec::len).sum();
    }
    Ok(received)
}

/// Publishes `(channel, seq)` pairs pipelined on one connection and returns each one's
/// offset; any error reply fails.
pub async fn publish_all(
    client: &mut WsClient,
    items: &[(String, u64)],
    timeout: Duration,
) -> Result<HashMap<(String, u64), (u64, u64)>> {
    let replies = pipeline(client, items.iter().cloned(), "published", timeout, |id, (channel, seq)| {
        json!({"type": "publish", "id": id, "channel": channel, "fields": {"seq": seq}})
    })
    .await?;
    replies
        .into_iter()
        .map(|(item, reply)| {
            Ok((
                item,
                offset(reply["offset"].as_str().context("no offset")?)?,
            ))
        })
        .collect()
}

/// Blocked `XREAD` readers (`CLIENT LIST` entries with `cmd=xread`) and all client
/// connections, per node; the connection running `CLIENT LIST` is not counted.
pub async fn readers_and_connections(
    cluster: &mut RedisCluster,
) -> Result<BTreeMap<u16, (usize, usize)>> {
    let mut out = BTreeMap::new();
    for port in cluster.running_ports() {
        let list = cluster
            .command(port, &["CLIENT", "LIST"])
            .await?
            .into_result()?;
        let text = list.as_str().context("CLIENT LIST is not text")?;
        let clients: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("cmd=client|list"))
            .collect();
        let readers = clients.iter().filter(|l| l.contains("cmd=xread")).count();
        out.insert(port, (readers, clients.len()));
    }
    Ok(out)
}
