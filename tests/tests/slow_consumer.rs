//! A subscriber that stops reading (issue 3, "Must show" 9): the server's memory stays bounded
//! while 50,000 messages flow, and when the subscriber reads again it receives every message in
//! order, caught up from the stream by its own offset.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{client, rss_kib, seqs, setup, Backend};
use redistribute_testkit::WsClient;
use serde_json::{json, Value};

const TOTAL: u64 = 50_000;
const PAYLOAD: usize = 1_000;

/// Publishes `TOTAL` messages with a window of outstanding requests.
async fn publish_all(c: &mut WsClient) -> Result<()> {
    let payload = "p".repeat(PAYLOAD);
    let window = 100u64;
    let mut sent = 0u64;
    let mut acked = 0u64;
    while acked < TOTAL {
        while sent < TOTAL && sent - acked < window {
            c.send_json(
                &json!({"type": "publish", "id": sent + 1, "channel": "firehose",
                                "fields": {"seq": sent, "pad": payload}}),
            )
            .await?;
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

#[tokio::test]
async fn stalled_subscriber_has_bounded_memory_and_loses_nothing() -> Result<()> {
    let setup = setup(Backend::Redis, &[]).await?;
    let pid = setup.server.pid();
    let mut slow = client(&setup.server).await?;
    slow.subscribe("firehose", None).await?;
    let baseline = rss_kib(pid)?;

    // The slow client now reads nothing while everything is published.
    let url = setup.server.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = WsClient::connect(&url).await?;
        publish_all(&mut p).await
    });
    let mut peak = baseline;
    while !publisher.is_finished() {
        peak = peak.max(rss_kib(pid)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.await??;
    peak = peak.max(rss_kib(pid)?);
    let payload_mib = TOTAL * PAYLOAD as u64 / (1 << 20);
    println!(
        "server RSS: baseline {baseline} KiB, peak {peak} KiB while {payload_mib} MiB were published"
    );
    ensure!(
        peak - baseline < 40 * 1024,
        "server RSS grew by {} KiB for one stalled subscriber",
        peak - baseline
    );

    // Now read: every message, in order, exactly once.
    let mut received = 0u64;
    let mut next_seq = 0u64;
    while received < TOTAL {
        let frame: Value = slow.recv_json_timeout(Duration::from_secs(30)).await?;
        if frame["type"] != "messages" {
            continue;
        }
        let batch = frame["messages"].as_array().context("no messages")?;
        for seq in seqs(batch) {
            ensure!(seq == next_seq, "expected seq {next_seq}, got {seq}");
            next_seq += 1;
            received += 1;
        }
    }
    slow.expect_silence(Duration::from_millis(500)).await?;
    Ok(())
}
