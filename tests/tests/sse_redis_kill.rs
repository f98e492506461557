//! An SSE stream whose subscriptions are catching up when Redis is SIGKILLed (the chaos soak's
//! `redis_kill`): the failing catch-up reads are logged with the transport that drives the feed
//! (connection ids are shared by every transport, so the id alone does not say which stream
//! it is), and once Redis is back (same port, same data) the stream delivers every message of
//! every channel, in order, exactly once, without a gap.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::start_server;
use redistribute_testkit::{HttpStream, RedisServer, WsClient};
use serde_json::{json, Value};
use tokio::time::Instant;

const CHANNELS: [&str; 3] = ["k0", "k1", "k2"];
/// Messages per channel before the kill: with the payload, far more than the socket buffers
/// and the live queue hold, so the unread stream's subscriptions fall back to catch-up.
const BEFORE: u64 = 700;
/// Messages per channel after Redis is back.
const AFTER: u64 = 20;
const PAYLOAD: usize = 8 * 1024;

/// Publishes `seqs` to every channel with a window of outstanding requests.
async fn publish(c: &mut WsClient, seqs: std::ops::Range<u64>, pad: &str) -> Result<()> {
    let mut frames = Vec::new();
    for seq in seqs {
        for channel in CHANNELS {
            frames.push(json!({"type": "publish", "channel": channel,
                               "fields": {"seq": seq, "pad": pad},
                               "idempotency_key": format!("{channel}-{seq}")}));
        }
    }
    let window = 64;
    let (mut sent, mut acked) = (0, 0);
    while acked < frames.len() {
        while sent < frames.len() && sent - acked < window {
            let mut frame = frames[sent].clone();
            frame["id"] = json!(sent + 1);
            c.send_json(&frame).await?;
            sent += 1;
        }
        let reply = c
            .recv_until(
                |f| f["type"] == "published" || f["type"] == "error",
                Duration::from_secs(30),
            )
            .await?;
        ensure!(reply["type"] == "published", "publish failed: {reply}");
        acked += 1;
    }
    Ok(())
}

/// Publishes `seqs` to every channel one at a time, retrying (same idempotency key) while the
/// server answers `unavailable` (its Redis client reconnecting).
async fn publish_retrying(c: &mut WsClient, seqs: std::ops::Range<u64>) -> Result<()> {
    for seq in seqs {
        for channel in CHANNELS {
            let frame = json!({"type": "publish", "channel": channel, "fields": {"seq": seq},
                               "idempotency_key": format!("{channel}-{seq}")});
            let mut stored = false;
            for _ in 0..100 {
                let reply = c.request(frame.clone()).await?;
                match reply["type"].as_str() {
                    Some("published") => {
                        stored = true;
                        break;
                    }
                    Some("error") if reply["code"] == "unavailable" => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => bail!("unexpected reply {reply}"),
                }
            }
            ensure!(stored, "{channel} seq {seq} was never stored");
        }
    }
    Ok(())
}

/// What the stream delivered: `seq`s per channel, in order of arrival.
#[derive(Default)]
struct Received {
    buffer: String,
    seqs: HashMap<String, Vec<u64>>,
}

impl Received {
    /// Reads one piece of the body and records its complete events.
    async fn read(&mut self, stream: &mut HttpStream) -> Result<()> {
        let chunk = stream
            .next_chunk(Duration::from_secs(20))
            .await?
            .context("the SSE stream ended")?;
        self.buffer.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    // No trimming here, so nothing but messages (a gap would be a loss).
                    ensure!(v == "message", "unexpected event in {block:?}");
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if data.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&data)?;
            let channel = value["channel"].as_str().context("channel")?.to_owned();
            let seq = value["fields"]["seq"].as_u64().context("seq")?;
            self.seqs.entry(channel).or_default().push(seq);
        }
        Ok(())
    }

    fn count(&self) -> usize {
        self.seqs.values().map(Vec::len).sum()
    }
}

#[tokio::test]
async fn sse_catching_up_across_a_redis_kill_logs_its_transport_and_resumes() -> Result<()> {
    let mut redis = RedisServer::start_persistent().await?;
    let server = start_server(
        Some(&redis),
        &[
            "--queue-batches",
            "2",
            "--request-timeout-ms",
            "2000",
            "--sse-heartbeat-secs",
            "1",
        ],
    )
    .await?;
    let query: Vec<String> = CHANNELS.iter().map(|c| format!("channel={c}")).collect();
    let path = format!("/sse?{}", query.join("&"));
    let mut stream = HttpStream::open(server.addr(), &path, &[], Duration::from_secs(10)).await?;
    ensure!(stream.status == 200, "SSE answered {}", stream.status);
    let mut received = Received::default();

    // The stream is not read while everything is published: its writer blocks, its live
    // queue overflows and the hub marks its subscriptions lagging.
    let pad = "p".repeat(PAYLOAD);
    let mut publisher = WsClient::connect(&server.ws_url()).await?;
    publish(&mut publisher, 0..BEFORE, &pad).await?;

    // Redis dies; reading the stream again makes the feed catch up, and its reads fail.
    redis.stop().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let logged = loop {
        let logs = server.logs();
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains("catch-up read failed"))
            .map(str::to_owned)
        {
            break line;
        }
        ensure!(
            Instant::now() < deadline,
            "no catch-up read failed while Redis was down; server logs:\n{logs}"
        );
        // Returns with the next delivery or heartbeat (reads are not cancel-safe: no timeout
        // around them but their own).
        received.read(&mut stream).await?;
    };
    ensure!(
        logged.contains("transport") && logged.contains("sse"),
        "the failing catch-up read does not name its transport: {logged}"
    );

    redis.restart().await?;
    publish_retrying(&mut publisher, BEFORE..BEFORE + AFTER).await?;
    let want = CHANNELS.len() * (BEFORE + AFTER) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.count() < want {
        ensure!(
            Instant::now() < deadline,
            "the SSE stream stalled after Redis came back: {} of {want} messages",
            received.count()
        );
        received.read(&mut stream).await?;
    }
    for channel in CHANNELS {
        let got = received.seqs.get(channel).cloned().unwrap_or_default();
        ensure!(
            got == (0..BEFORE + AFTER).collect::<Vec<_>>(),
            "{channel}: {} messages, not every seq once in order",
            got.len()
        );
    }
    Ok(())
}
