//! Redis failover hazards and reader-pool growth on a single Redis (issue "No silent loss",
//! items 10 and 12).
//!
//! A failover to a replica that lacks the tail is simulated by rewriting the stream behind the
//! server's back (the promoted replica's state: a shorter stream, or one whose IDs are lower)
//! and, where a real failover would, dropping the server's connections (`CLIENT KILL`).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use common::{client, publish_seq, seqs, setup, Backend, STEP};
use redistribute_testkit::{http_get, RedisServer, WsClient};
use serde_json::{json, Value};
use tokio::time::Instant;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `(ms, seq)` of an offset.
fn parse(offset: &str) -> Result<(u64, u64)> {
    let (ms, seq) = offset.split_once('-').context("malformed offset")?;
    Ok((ms.parse()?, seq.parse()?))
}

/// The stream's `last-generated-id`, if it exists.
async fn last_generated(redis: &RedisServer, key: &str) -> Result<Option<String>> {
    let info = redis.command(&["XINFO", "STREAM", key]).await?;
    let Some(items) = info.as_array() else {
        return Ok(None);
    };
    Ok(items
        .chunks(2)
        .find(|kv| kv[0].as_str() == Some("last-generated-id"))
        .and_then(|kv| kv[1].as_str().map(str::to_owned)))
}

/// Replaces `key` with a stream holding only `ids` (what a promoted replica that lacked the
/// rest would hold).
async fn rewrite_stream(redis: &RedisServer, key: &str, ids: &[&str]) -> Result<()> {
    redis.command(&["DEL", key]).await?.into_result()?;
    for (n, id) in ids.iter().enumerate() {
        let seq = n.to_string();
        redis
            .command(&["XADD", key, id, "seq", &seq])
            .await?
            .into_result()?;
    }
    Ok(())
}

/// Subscribes from `offset`; returns the `subscribed` reply.
async fn subscribe_from(c: &mut WsClient, channel: &str, offset: &str) -> Result<Value> {
    let reply = c
        .request(json!({"type": "subscribe", "channel": channel, "offset": offset}))
        .await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    Ok(reply)
}

/// Publishes `seq`, retrying while the server answers `unavailable` (its connections were
/// just dropped).
async fn publish_retrying(c: &mut WsClient, channel: &str, seq: u64) -> Result<String> {
    let deadline = Instant::now() + STEP;
    loop {
        let reply = c
            .request(
                json!({"type": "publish", "channel": channel, "fields": {"seq": seq},
                            "idempotency_key": format!("{channel}-{seq}")}),
            )
            .await?;
        match reply["type"].as_str() {
            Some("published") => return Ok(reply["offset"].as_str().context("offset")?.into()),
            Some("error") if reply["code"] == "unavailable" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => bail!("unexpected reply {reply}"),
        }
    }
}

/// Item 10 (a): subscribers positioned past the promoted replica's last ID resume from their
/// own offset, with no replay of the stream, and receive every entry published afterwards;
/// an offset too far ahead of the clock starts at the tip, flagged, also without replay.
#[tokio::test]
async fn subscribers_past_the_promoted_tail_resume_from_their_offset_without_replay() -> Result<()>
{
    let setup = setup(Backend::Redis, &[]).await?;
    let redis = setup.redis.as_ref().context("redis")?;
    let mut publisher = client(&setup.server).await?;
    let offsets = publish_seq(&mut publisher, "tail", 0..6).await?;
    // The promoted replica had only the first two entries.
    rewrite_stream(redis, "rd:tail", &[&offsets[0], &offsets[1]]).await?;

    // HTTP history from past the tip: from the offset, nothing replayed, not truncated.
    let path = format!("/api/history?channel=tail&from={}", offsets[3]);
    let history = http_get(setup.server.addr(), &path, STEP).await?.json()?;
    ensure!(
        history["messages"] == json!([]) && history["offsets"]["tail"] == offsets[3],
        "{history}"
    );
    ensure!(history.get("truncated").is_none(), "{history}");

    // At the tip, one past it, and the furthest acknowledged offset.
    let mut subs = Vec::new();
    for at in [&offsets[1], &offsets[2], &offsets[5]] {
        let mut c = client(&setup.server).await?;
        let reply = subscribe_from(&mut c, "tail", at).await?;
        ensure!(reply["offset"] == **at, "{reply}");
        ensure!(reply["truncated"] == false, "{reply}");
        subs.push(c);
    }
    // Far beyond the clock (a bogus or hostile offset): from the tip, flagged, and the
    // channel's IDs are not pushed there.
    let future = format!("{}-0", now_ms() + 3_600_000);
    let mut bogus = client(&setup.server).await?;
    let reply = subscribe_from(&mut bogus, "tail", &future).await?;
    ensure!(reply["truncated"] == true, "{reply}");
    ensure!(reply["offset"] == offsets[5], "{reply}");
    let last = last_generated(redis, "rd:tail")
        .await?
        .context("no stream")?;
    ensure!(parse(&last)? == parse(&offsets[5])?, "raised to {last}");

    let fresh = publish_seq(&mut publisher, "tail", 100..103).await?;
    for offset in &fresh {
        ensure!(
            parse(offset)? > parse(&offsets[5])?,
            "{offset} not after the lost tail"
        );
    }
    subs.push(bogus);
    for c in &mut subs {
        // The first messages are the new ones: nothing of the stream is replayed.
        let got = c.recv_messages("tail", 3, STEP).await?;
        ensure!(seqs(&got) == [100, 101, 102], "{got:?}");
        c.expect_silence(Duration::from_millis(300)).await?;
    }
    Ok(())
}

/// Item 10 (b): the promoted primary's stream has IDs lower than a live reader's cursor and its
/// clock is behind that cursor (here the cursor is an hour ahead). After the reconnect the
/// reader raises the stream above its cursor, so every new entry reaches live subscribers, and
/// a subscriber resuming inside the lost range is told the exact gap.
#[tokio::test]
async fn live_readers_past_a_set_back_stream_receive_every_new_entry() -> Result<()> {
    // The entry from the clock-ahead primary is appended by another producer, straight into
    // the stream: the default per-channel readers see it live (shard-log readers would at
    // their next catch-up only).
    let setup = setup(Backend::Redis, &[]).await?;
    let redis = setup.redis.as_ref().context("redis")?;
    let mut live = client(&setup.server).await?;
    live.subscribe("clock", None).await?;
    let mut publisher = client(&setup.server).await?;
    publish_seq(&mut publisher, "clock", 0..2).await?;
    // A producer on the old primary, whose clock ran an hour ahead.
    let ahead = format!("{}-0", now_ms() + 3_600_000);
    redis
        .command(&["XADD", "rd:clock", &ahead, "seq", "2"])
        .await?
        .into_result()?;
    let got = live.recv_messages("clock", 3, STEP).await?;
    ensure!(seqs(&got) == [0, 1, 2], "{got:?}");

    // Failover to a replica that has only an old entry, then the connections drop.
    rewrite_stream(redis, "rd:clock", &["1-1"]).await?;
    redis
        .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .await?
        .into_result()?;
    let deadline = Instant::now() + STEP;
    loop {
        let last = last_generated(redis, "rd:clock")
            .await?
            .context("no stream")?;
        if parse(&last)? >= parse(&ahead)? {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the stream stayed at {last}, below the reader's cursor {ahead}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut fresh = Vec::new();
    for seq in 10..15 {
        fresh.push(publish_retrying(&mut publisher, "clock", seq).await?);
    }
    for offset in &fresh {
        ensure!(
            parse(offset)? > parse(&ahead)?,
            "{offset} not after {ahead}"
        );
    }
    let got = live.recv_messages("clock", 5, STEP).await?;
    ensure!(seqs(&got) == [10, 11, 12, 13, 14], "{got:?}");
    live.expect_silence(Duration::from_millis(300)).await?;

    // Resuming after seq 1 (inside the lost range): an exact gap up to the lost tail's end.
    let mut resumed = client(&setup.server).await?;
    let reply = resumed
        .request(json!({"type": "subscribe", "channel": "clock", "offset": "1-1"}))
        .await?;
    ensure!(
        reply["truncated"] == true && reply["offset"] == ahead,
        "{reply}"
    );
    let gap = resumed
        .recv_until(|f| f["type"] == "gap", STEP)
        .await
        .context("no gap frame")?;
    ensure!(gap["from"] == "1-1" && gap["to"] == ahead, "{gap}");
    let got = resumed.recv_messages("clock", 5, STEP).await?;
    ensure!(seqs(&got) == [10, 11, 12, 13, 14], "{got:?}");
    Ok(())
}

/// The value of a metric line (summing all label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Subscribes `c` to every channel, pipelined, and waits for every reply.
async fn subscribe_many(c: &mut WsClient, channels: &[String]) -> Result<()> {
    for (id, channel) in channels.iter().enumerate() {
        // Request ids need not be unique across calls: each reply is awaited here.
        c.send_json(&json!({"type": "subscribe", "id": id + 1, "channel": channel}))
            .await?;
    }
    let mut replies = 0;
    while replies < channels.len() {
        let frame = c.recv_json_timeout(STEP).await?;
        ensure!(frame["type"] == "subscribed", "{frame}");
        replies += 1;
    }
    Ok(())
}

/// Waits until `/metrics` shows at most `readers` readers and Redis at most two connections
/// more (the writer and the pages client); fails with the last values seen on timeout.
async fn wait_for_readers(setup: &common::Setup, readers: f64) -> Result<()> {
    let redis = setup.redis.as_ref().context("redis")?;
    let deadline = Instant::now() + STEP;
    loop {
        let text = http_get(setup.server.addr(), "/metrics", STEP)
            .await?
            .text();
        let now = metric(&text, "redistribute_engine_readers");
        let info = redis.command(&["INFO", "clients"]).await?;
        let clients: f64 = info
            .as_str()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("connected_clients:")))
            .and_then(|v| v.trim().parse().ok())
            .context("connected_clients")?;
        // The INFO connection itself is one of them.
        if now <= readers && clients - 1.0 <= now + 2.0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{now} readers (want ≤ {readers}), {} connections (want ≤ readers + 2)",
            clients - 1.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `seq` 0, 1, … round-robin over `channels` until told to stop; returns how many
/// went to each.
async fn publish_until(
    mut c: WsClient,
    channels: Vec<String>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<u64> {
    let mut seq = 0;
    while stop.try_recv().is_err() {
        for channel in &channels {
            c.publish(channel, json!({ "seq": seq })).await?;
        }
        seq += 1;
    }
    Ok(seq)
}

/// Redis connections of the server (`connected_clients` less the connection asking) and the
/// clients blocked in `XREAD` (the live readers).
async fn connections_and_xreads(redis: &RedisServer) -> Result<(usize, usize)> {
    let info = redis.command(&["INFO", "clients"]).await?;
    let clients: usize = info
        .as_str()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("connected_clients:")))
        .and_then(|v| v.trim().parse().ok())
        .context("connected_clients")?;
    let list = redis.command(&["CLIENT", "LIST"]).await?;
    let xreads = list
        .as_str()
        .context("CLIENT LIST")?
        .lines()
        .filter(|l| l.contains(" cmd=xread"))
        .count();
    Ok((clients - 1, xreads))
}

/// Shard-log readers (`--redis-live-readers log`): as the watched channels grow from 10 to 10,000, the
/// instance keeps one reader and three Redis connections (writer, pages, the reader blocked on
/// the log), nothing is registered in Redis per channel, and a message published to the newest
/// channel at each step reaches its subscriber once.
#[tokio::test]
async fn log_readers_and_connections_stay_flat_from_10_to_10000_channels() -> Result<()> {
    let setup = setup(
        Backend::Redis,
        &[
            "--redis-live-readers",
            "log",
            "--max-subscriptions",
            "10000",
            // 10,000 pipelined subscribes on one connection, however slow the machine.
            "--subscribe-rate",
            "1000000",
            "--subscribe-burst",
            "1000000",
        ],
    )
    .await?;
    let redis = setup.redis.as_ref().context("redis")?;
    let mut sub = client(&setup.server).await?;
    let mut publisher = client(&setup.server).await?;
    let mut counts = Vec::new();
    let mut from = 0;
    for to in [10, 100, 1_000, 10_000] {
        let channels: Vec<String> = (from..to).map(|i| format!("user:{i}")).collect();
        subscribe_many(&mut sub, &channels).await?;
        from = to;
        let newest = channels.last().context("channels")?;
        publisher.publish(newest, json!({ "seq": to })).await?;
        let got = sub.recv_messages(newest, 1, STEP).await?;
        ensure!(seqs(&got) == [to as u64], "{newest}: {got:?}");
        let text = http_get(setup.server.addr(), "/metrics", STEP)
            .await?
            .text();
        let readers = metric(&text, "redistribute_engine_readers");
        let watched = metric(&text, "redistribute_engine_watched_channels");
        let (connections, xreads) = connections_and_xreads(redis).await?;
        eprintln!(
            "{to} channels: {readers} readers, {watched} watched, {connections} Redis \
             connections, {xreads} blocked in XREAD"
        );
        counts.push((to, readers, connections, xreads));
    }
    for &(channels, readers, connections, xreads) in &counts {
        ensure!(readers == 1.0, "{channels} channels: {readers} readers");
        ensure!(
            connections <= 3 && xreads <= 1,
            "{channels} channels: {connections} connections, {xreads} in XREAD"
        );
    }
    ensure!(
        counts.iter().all(|c| c.2 == counts[0].2),
        "connections changed with the channel count: {counts:?}"
    );
    // Nothing per watched channel in Redis: the streams of the 4 channels published to, the
    // shard log and its counter.
    let keys = redis.command(&["KEYS", "*"]).await?;
    let mut keys: Vec<&str> = keys
        .as_array()
        .context("KEYS")?
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    ensure!(
        keys == [
            "rd:#log",
            "rd:#logseq",
            "rd:user:9",
            "rd:user:99",
            "rd:user:999",
            "rd:user:9999"
        ],
        "{keys:?}"
    );
    Ok(())
}

/// Item 12 (a): 1,000 watched channels take 20 readers (50 keys each). Unwatching 980 of them
/// (one kept on each reader) merges the readers, cursors moving with their channels, and
/// retires the rest: the pool returns to its floor (the kept channels fit one reader, plus at
/// most one idle reader) and their connections close, while the kept channels, published to
/// throughout, deliver every message once and in order. Watching again works.
#[tokio::test]
async fn reader_pool_shrinks_to_its_floor_after_channels_are_unwatched() -> Result<()> {
    let setup = setup(Backend::Redis, &["--redis-keys-per-reader", "50"]).await?;
    let channels: Vec<String> = (0..1000).map(|i| format!("many:{i}")).collect();
    let mut watchers = Vec::new();
    for chunk in channels.chunks(500) {
        let mut c = client(&setup.server).await?;
        subscribe_many(&mut c, chunk).await?;
        watchers.push(c);
    }
    let kept: Vec<String> = channels.iter().step_by(50).cloned().collect();
    let mut keeper = client(&setup.server).await?;
    subscribe_many(&mut keeper, &kept).await?;
    let text = http_get(setup.server.addr(), "/metrics", STEP)
        .await?
        .text();
    let peak = metric(&text, "redistribute_engine_readers");
    ensure!(peak == 20.0, "{peak} readers for 1,000 channels");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(publish_until(
        client(&setup.server).await?,
        kept.clone(),
        stop_rx,
    ));
    for c in watchers {
        c.close().await?;
    }
    wait_for_readers(&setup, 2.0).await?;
    let _ = stop_tx.send(());
    let rounds = tokio::time::timeout(STEP, publisher).await???;
    let mut after = client(&setup.server).await?;
    for channel in &kept {
        after.publish(channel, json!({ "seq": rounds })).await?;
    }
    let mut got: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let total = kept.len() * (rounds as usize + 1);
    let mut seen = 0;
    while seen < total {
        let frame = keeper.recv_json_timeout(STEP).await.with_context(|| {
            let short: Vec<_> = kept
                .iter()
                .map(|c| (c, got.get(c).map_or(0, Vec::len)))
                .filter(|(_, n)| *n <= rounds as usize)
                .collect();
            format!(
                "{seen} of {total} messages; {} rounds; short: {short:?}",
                rounds + 1
            )
        })?;
        ensure!(frame["type"] == "messages", "{frame}");
        let list = frame["messages"].as_array().context("messages")?;
        seen += list.len();
        got.entry(frame["channel"].as_str().context("channel")?.into())
            .or_default()
            .extend(seqs(list));
    }
    keeper.expect_silence(Duration::from_millis(300)).await?;
    for channel in &kept {
        let want: Vec<u64> = (0..=rounds).collect();
        ensure!(
            got.get(channel) == Some(&want),
            "{channel}: {:?}",
            got.get(channel)
        );
    }

    // Watching again still works.
    let mut again = client(&setup.server).await?;
    again.subscribe("many:7", None).await?;
    publish_seq(&mut after, "many:7", 0..3).await?;
    let got = again.recv_messages("many:7", 3, STEP).await?;
    ensure!(seqs(&got) == [0, 1, 2], "{got:?}");
    Ok(())
}
