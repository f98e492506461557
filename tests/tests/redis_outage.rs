//! Redis going away and coming back (issue 3, "Must show" 7): publishes answer `unavailable`
//! while it is down, nothing unacknowledged is reported stored, and subscribers resume without
//! loss once it is back.

mod common;

use std::time::Duration;

use anyhow::{bail, Result};
use common::{client, seqs, setup, Backend, STEP};
use redistribute_testkit::WsClient;
use serde_json::{json, Value};

/// Publishes `seq` with an idempotency key, retrying while the server answers `unavailable`.
async fn publish_until_stored(c: &mut WsClient, seq: u64) -> Result<String> {
    for _ in 0..100 {
        let reply = c
            .request(
                json!({"type": "publish", "channel": "events", "fields": {"seq": seq},
                            "idempotency_key": format!("seq-{seq}")}),
            )
            .await?;
        match reply["type"].as_str() {
            Some("published") => return Ok(reply["offset"].as_str().unwrap().to_owned()),
            Some("error") if reply["code"] == "unavailable" => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            _ => bail!("unexpected reply {reply}"),
        }
    }
    bail!("seq {seq} was never stored")
}

#[tokio::test]
async fn publish_fails_while_redis_is_down_and_subscribers_resume() -> Result<()> {
    let mut setup = setup(Backend::Redis, &["--request-timeout-ms", "2000"]).await?;
    let mut sub = client(&setup.server).await?;
    sub.subscribe("events", None).await?;
    let mut publisher = client(&setup.server).await?;
    for seq in 0..10 {
        publish_until_stored(&mut publisher, seq).await?;
    }
    let before = sub.recv_messages("events", 10, STEP).await?;
    assert_eq!(seqs(&before), (0..10).collect::<Vec<_>>());

    let redis = setup.redis.as_mut().unwrap();
    redis.stop().await?;
    let reply: Value = publisher
        .request(json!({"type": "publish", "channel": "events", "fields": {"seq": 999}}))
        .await?;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(
        reply["code"],
        "unavailable",
        "{reply}\n{}",
        setup.server.logs()
    );
    // Subscribing needs the engine too, and says so instead of hanging.
    let mut late = client(&setup.server).await?;
    let reply = late
        .request(json!({"type": "subscribe", "channel": "other"}))
        .await?;
    assert_eq!(reply["code"], "unavailable", "{reply}");

    redis.restart().await?;
    for seq in 10..20 {
        publish_until_stored(&mut publisher, seq).await?;
    }
    let after = sub.recv_messages("events", 10, STEP).await?;
    assert_eq!(seqs(&after), (10..20).collect::<Vec<_>>());
    // The message that failed was never delivered.
    sub.expect_silence(Duration::from_millis(500)).await?;
    Ok(())
}
