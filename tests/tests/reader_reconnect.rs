//! The Redis engine's live readers after Redis went away while they were not inside a command
//! (the chaos soak's `redis_kill` landing between a reader's `XREAD` reply and its next
//! command): a reader's connection never reconnects by itself, so a command sent on it after
//! the connection was lost is never answered. The reader must notice and reconnect, or every
//! live subscriber of the instance (WebSocket, SSE, long-poll) silently stops receiving.
//!
//! Deterministic form: the reader idles (its last channel was unsubscribed) while Redis is
//! killed and restarted, then a new subscription gives it work. `XREAD` blocks for 5 minutes
//! here, so a reader that sends it on the dead connection stalls far past the wait below.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{start_server, STEP};
use redistribute_testkit::{RedisServer, WsClient};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Sends `frame` until the server stops answering `unavailable` (its Redis clients
/// reconnecting after the restart); returns the reply.
async fn until_available(c: &mut WsClient, frame: Value) -> Result<Value> {
    for _ in 0..200 {
        let reply = c.request(frame.clone()).await?;
        if reply["type"] == "error" && reply["code"] == "unavailable" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        return Ok(reply);
    }
    bail!("still unavailable: {frame}")
}

#[tokio::test]
async fn a_reader_whose_connection_died_while_idle_reconnects_before_reading() -> Result<()> {
    let mut redis = RedisServer::start_persistent().await?;
    let server = start_server(Some(&redis), &["--redis-block-ms", "300000"]).await?;
    let mut publisher = WsClient::connect(&server.ws_url()).await?;

    // The instance's reader serves "first", then idles once it is unsubscribed.
    let mut sub = WsClient::connect(&server.ws_url()).await?;
    sub.subscribe("first", None).await?;
    publisher.publish("first", json!({"seq": 1})).await?;
    let first = sub.recv_messages("first", 1, STEP).await?;
    ensure!(first[0]["fields"]["seq"] == 1, "{first:?}");
    let reply = sub
        .request(json!({"type": "unsubscribe", "channel": "first"}))
        .await?;
    ensure!(reply["type"] == "unsubscribed", "{reply}");
    // The reader is idle once the server no longer watches any channel and no connection is
    // blocked in Redis (an idle reader sends nothing until it gets work).
    let deadline = Instant::now() + STEP;
    loop {
        let metrics =
            String::from_utf8_lossy(&server.http_get("/metrics").await?.body).into_owned();
        let unwatched = metrics
            .lines()
            .any(|l| l.starts_with("redistribute_engine_watched_channels") && l.ends_with(" 0"));
        let clients = redis.command(&["CLIENT", "LIST"]).await?;
        let clients = clients.as_str().unwrap_or_default().to_owned();
        let blocked = clients.lines().any(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
        });
        if unwatched && !blocked {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the reader did not go idle:\n{metrics}\n{clients}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis dies and comes back with its data while the reader has nothing to do.
    redis.stop().await?;
    redis.restart().await?;

    // New work for the reader: a subscription of a new channel, then messages.
    let reply =
        until_available(&mut sub, json!({"type": "subscribe", "channel": "second"})).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    for seq in 1..=3u64 {
        let reply = until_available(
            &mut publisher,
            json!({"type": "publish", "channel": "second", "fields": {"seq": seq},
                   "idempotency_key": format!("second-{seq}")}),
        )
        .await?;
        ensure!(reply["type"] == "published", "{reply}");
    }
    let got: Vec<Value> = sub
        .recv_messages("second", 3, STEP)
        .await
        .map_err(|e| anyhow::anyhow!("live delivery stalled after Redis restarted: {e}"))?;
    let got: Vec<u64> = got
        .iter()
        .map(|m| m["fields"]["seq"].as_u64().unwrap_or(0))
        .collect();
    ensure!(got == vec![1, 2, 3], "delivered {got:?}");
    Ok(())
}
