//! Publishes across disconnects: each one stored exactly once or failed cleanly, checked
//! against the stream in Redis.

use super::*;

/// The entries of a stream: `(offset, fields as field → value text)`.
pub(super) async fn xrange(redis: &RedisServer, key: &str) -> Result<Vec<(String, Vec<String>)>> {
    let reply = redis.command(&["XRANGE", key, "-", "+"]).await?;
    let text = |v: &RespValue| v.as_str().map(str::to_owned).context("not a string");
    let mut entries = Vec::new();
    for entry in reply.as_array().context("XRANGE reply")? {
        let parts = entry.as_array().context("entry")?;
        let fields = parts[1]
            .as_array()
            .context("fields")?
            .iter()
            .map(text)
            .collect::<Result<_>>()?;
        entries.push((text(&parts[0])?, fields));
    }
    Ok(entries)
}

pub(super) async fn xlen(redis: &RedisServer, key: &str) -> Result<i64> {
    redis
        .command(&["XLEN", key])
        .await?
        .as_integer()
        .context("XLEN reply")
}

/// Polls until the stream has `len` entries.
pub(super) async fn wait_for_len(redis: &RedisServer, key: &str, len: i64) -> Result<()> {
    within(&format!("{key} reaching {len} entries"), async {
        while xlen(redis, key).await? < len {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await?
}

/// 3. Publishing across disconnects, per the documented policy (automatic idempotency keys,
/// re-sent on the next connection, or `Timeout`): nothing is reported published that Redis
/// did not store, and a publish re-sent after a lost reply is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_across_disconnects_are_stored_once_or_fail_cleanly() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut server = start_server(Some(&redis), &[]).await?;

    // A publish issued while no server answers, within its timeout, fails and is never stored.
    let short = within(
        "connect",
        Client::builder()
            .targets([server.ws_url()])
            .request_timeout(Duration::from_secs(1))
            .connect(),
    )
    .await??;
    server.kill().await?;
    within("disconnect noticed", async {
        while short.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let err = within("publish", short.publish("outbox", json!({"n": 1}))).await?;
    ensure!(err == Err(Error::Timeout), "{err:?}");

    // A publish issued while disconnected is sent when the server is back, and stored once.
    let patient = Client::builder()
        .targets([server.ws_url()])
        .request_timeout(STEP)
        .build()?;
    let pending = tokio::spawn({
        let patient = patient.clone();
        async move { patient.publish("outbox", json!({"n": 2})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await?;
    let offset = within("publish after restart", pending).await???;
    // The timed-out publish is not sent later by the reconnected client either.
    within("reconnect", short.wait_connected()).await??;
    within("ping", short.ping()).await??;
    let entries = xrange(&redis, "rd:outbox").await?;
    ensure!(
        entries == vec![(offset.to_string(), vec!["n".into(), "2".into()])],
        "{entries:?}"
    );

    // A reply lost in the network: the server stored the publish, the connection dies before
    // the client hears of it; the client re-sends with the same key and gets the first offset.
    let proxy = Proxy::start(server.addr()).await?;
    let client = within(
        "connect via proxy",
        Client::builder()
            .targets([proxy.ws_url()])
            .request_timeout(STEP)
            .connect(),
    )
    .await??;
    within("publish", client.publish("orders", json!({"n": 1}))).await??;
    proxy.swallow_replies(true);
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.publish("orders", json!({"n": 2})).await }
    });
    wait_for_len(&redis, "rd:orders", 2).await?;
    proxy.cut();
    proxy.swallow_replies(false);
    let offset = within("publish re-sent after a lost reply", pending).await???;
    let entries = xrange(&redis, "rd:orders").await?;
    ensure!(entries.len() == 2, "stored twice? {entries:?}");
    ensure!(
        entries[1].0 == offset.to_string(),
        "{entries:?} vs {offset}"
    );

    // Without idempotency keys the same loss is reported as ConnectionLost ("may or may not
    // have been stored"), never as success.
    let plain = within(
        "connect",
        Client::builder()
            .targets([proxy.ws_url()])
            .auto_idempotency(false)
            .connect(),
    )
    .await??;
    proxy.swallow_replies(true);
    let pending = tokio::spawn({
        let plain = plain.clone();
        async move { plain.publish("orders", json!({"n": 3})).await }
    });
    wait_for_len(&redis, "rd:orders", 3).await?;
    proxy.cut();
    proxy.swallow_replies(false);
    let result = within("publish without key", pending).await??;
    ensure!(result == Err(Error::ConnectionLost), "{result:?}");
    ensure!(xlen(&redis, "rd:orders").await? == 3);
    Ok(())
}
