//! End-to-end tests of the core WebSocket server against the real binary, on both engines where
//! the behaviour is engine-independent (issue 3, "Must show").

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{assert_ordered, client, publish_seq, seqs, setup, start_server, Backend, STEP};
use redistribute_testkit::RedisServer;
use serde_json::json;

/// 1. A message published through instance B reaches subscribers on instance A, in order, with
/// the offset Redis assigned.
#[tokio::test]
async fn two_instances_share_channels_through_redis() -> Result<()> {
    let redis = RedisServer::start().await?;
    let a = start_server(Some(&redis), &[]).await?;
    let b = start_server(Some(&redis), &[]).await?;
    let mut sub = client(&a).await?;
    sub.subscribe("room", None).await?;
    let mut publisher = client(&b).await?;
    let offsets = publish_seq(&mut publisher, "room", 0..200).await?;
    let got = sub.recv_messages("room", 200, STEP).await?;
    assert_eq!(seqs(&got), (0..200).collect::<Vec<_>>());
    let got_offsets: Vec<&str> = got.iter().map(|m| m["offset"].as_str().unwrap()).collect();
    assert_eq!(got_offsets, offsets);
    // The offsets are the IDs Redis holds.
    let last = redis
        .command(&["XREVRANGE", "rd:room", "+", "-", "COUNT", "1"])
        .await?;
    assert!(last.to_string().contains(offsets.last().unwrap()), "{last}");
    Ok(())
}

async fn resume_without_loss(backend: Backend) -> Result<()> {
    const TOTAL: u64 = 10_000;
    let setup = setup(backend, &[]).await?;
    let server = &setup.server;
    let mut sub = client(server).await?;
    sub.subscribe("feed", Some("$")).await?;

    // Publish continuously in the background while the subscriber drops and resumes.
    let url = server.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = redistribute_testkit::WsClient::connect(&url).await?;
        publish_seq(&mut p, "feed", 0..TOTAL).await
    });

    let first = sub.recv_messages("feed", 3_000, STEP).await?;
    let last_offset = first.last().unwrap()["offset"].as_str().unwrap().to_owned();
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut resumed = client(server).await?;
    let reply = resumed.subscribe("feed", Some(&last_offset)).await?;
    assert_eq!(reply["truncated"], false);
    let rest = resumed
        .recv_messages("feed", (TOTAL - 3_000) as usize, Duration::from_secs(60))
        .await?;
    let mut all = first;
    all.extend(rest);
    assert_ordered(&all)?;
    assert_eq!(seqs(&all), (0..TOTAL).collect::<Vec<_>>());
    publisher.await??;
    resumed
        .expect_silence(Duration::from_millis(300))
        .await
        .context("a duplicate arrived after the last message")?;
    Ok(())
}

/// 2. Resume: exactly the messages in between, 10,000 messages, while publishing continues.
#[tokio::test]
async fn resume_without_loss_redis() -> Result<()> {
    resume_without_loss(Backend::Redis).await
}

/// 2. The same on the embedded engine.
#[tokio::test]
async fn resume_without_loss_embedded() -> Result<()> {
    resume_without_loss(Backend::Embedded).await
}

/// 3. A per-channel reader blocked in `XREAD` with a long BLOCK time picks up a newly
/// subscribed channel at once, through `CLIENT UNBLOCK`.
#[tokio::test]
async fn blocked_reader_is_retargeted_with_client_unblock() -> Result<()> {
    new_channel_is_picked_up_at_once(true).await
}

/// 3. The same with shard-log readers (`--redis-live-readers log`): the blocked reader already reads every
/// channel of its log, so a newly subscribed channel is live at once with no `CLIENT UNBLOCK`.
#[tokio::test]
async fn log_reader_picks_up_a_new_channel_without_unblocking() -> Result<()> {
    new_channel_is_picked_up_at_once(false).await
}

async fn new_channel_is_picked_up_at_once(channel_readers: bool) -> Result<()> {
    let mode = if channel_readers { "channel" } else { "log" };
    let setup = setup(
        Backend::Redis,
        &["--redis-block-ms", "60000", "--redis-live-readers", mode],
    )
    .await?;
    let redis = setup.redis.as_ref().unwrap();
    let mut sub = client(&setup.server).await?;
    sub.subscribe("first", None).await?;
    // Let the reader settle into its long XREAD.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.config_resetstat().await?;

    let started = Instant::now();
    sub.subscribe("second", None).await?;
    let mut publisher = client(&setup.server).await?;
    publisher.publish("second", json!({"seq": 1})).await?;
    let got = sub.recv_messages("second", 1, STEP).await?;
    let elapsed = started.elapsed();
    assert_eq!(seqs(&got), vec![1]);
    let stats = redis.info_commandstats().await?;
    let unblocks = stats.get("client|unblock").copied().unwrap_or(0);
    println!("new channel picked up after {elapsed:?} with {unblocks} CLIENT UNBLOCK call(s)");
    if channel_readers {
        ensure!(unblocks >= 1, "no CLIENT UNBLOCK was sent: {stats:?}");
    } else {
        ensure!(unblocks == 0, "a log reader was unblocked: {stats:?}");
    }
    // Without the unblock the reader would have waited out its 60 s BLOCK.
    ensure!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    Ok(())
}

/// A second `subscribe` to a channel replaces the first (both engines): its reply, then the new
/// subscription's messages — here its whole history from `0` — each once, then live ones.
async fn a_second_subscribe_replaces_the_first(backend: Backend) -> Result<()> {
    let setup = setup(backend, &[]).await?;
    let mut sub = client(&setup.server).await?;
    sub.subscribe("again", None).await?;
    let mut publisher = client(&setup.server).await?;
    for seq in 1..=2 {
        publisher.publish("again", json!({ "seq": seq })).await?;
    }
    assert_eq!(
        seqs(&sub.recv_messages("again", 2, STEP).await?),
        vec![1, 2]
    );
    let reply = sub.subscribe("again", Some("0")).await?;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(
        seqs(&sub.recv_messages("again", 2, STEP).await?),
        vec![1, 2]
    );
    for seq in 3..=4 {
        publisher.publish("again", json!({ "seq": seq })).await?;
    }
    // Once each: a subscription left behind would deliver 3 twice.
    assert_eq!(
        seqs(&sub.recv_messages("again", 2, STEP).await?),
        vec![3, 4]
    );
    Ok(())
}

#[tokio::test]
async fn a_second_subscribe_replaces_the_first_redis() -> Result<()> {
    a_second_subscribe_replaces_the_first(Backend::Redis).await
}

#[tokio::test]
async fn a_second_subscribe_replaces_the_first_embedded() -> Result<()> {
    a_second_subscribe_replaces_the_first(Backend::Embedded).await
}

/// The first subscriber of a channel takes the live reader's position read as its own: one
/// position script per new channel, not two; a later subscriber reads its own (the reader's is
/// older than its subscribe). Both get exactly what was published after they subscribed.
#[tokio::test]
async fn a_new_channel_costs_one_position_read() -> Result<()> {
    let setup = setup(Backend::Redis, &[]).await?;
    let redis = setup.redis.as_ref().unwrap();
    let mut publisher = client(&setup.server).await?;
    publisher.publish("fresh", json!({"seq": 0})).await?;
    redis.config_resetstat().await?;
    let mut first = client(&setup.server).await?;
    first.subscribe("fresh", None).await?;
    let evals =
        |stats: &std::collections::HashMap<String, u64>| stats.get("eval").copied().unwrap_or(0);
    let after_first = evals(&redis.info_commandstats().await?);
    ensure!(after_first == 1, "first subscriber: {after_first} EVALs");
    publisher.publish("fresh", json!({"seq": 1})).await?;
    let mut second = client(&setup.server).await?;
    second.subscribe("fresh", None).await?;
    let after_second = evals(&redis.info_commandstats().await?);
    ensure!(
        after_second == 3,
        "publish + second subscriber: {after_second} EVALs in all"
    );
    publisher.publish("fresh", json!({"seq": 2})).await?;
    assert_eq!(
        seqs(&first.recv_messages("fresh", 2, STEP).await?),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&second.recv_messages("fresh", 1, STEP).await?),
        vec![2]
    );
    Ok(())
}

/// Counts `XREAD` calls while `messages` messages are delivered to `subscribers` clients.
async fn xreads_for(subscribers: usize, messages: u64) -> Result<u64> {
    let setup = setup(Backend::Redis, &[]).await?;
    let redis = setup.redis.as_ref().unwrap();
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let mut c = client(&setup.server).await?;
        c.subscribe("wide", None).await?;
        subs.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.config_resetstat().await?;
    let mut publisher = client(&setup.server).await?;
    for seq in 0..messages {
        publisher.publish("wide", json!({"seq": seq})).await?;
        // Let each message be read on its own, the worst case for XREAD counts.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &mut subs {
        let got = c.recv_messages("wide", messages as usize, STEP).await?;
        assert_eq!(seqs(&got), (0..messages).collect::<Vec<_>>());
    }
    let stats = redis.info_commandstats().await?;
    Ok(stats.get("xread").copied().unwrap_or(0))
}

/// 4. Redis work does not grow with subscribers: 1 vs 200 subscribers of one channel cause the
/// same number of `XREAD` calls per published message, within a small constant.
#[tokio::test]
async fn redis_reads_do_not_grow_with_subscribers() -> Result<()> {
    const MESSAGES: u64 = 100;
    let one = xreads_for(1, MESSAGES).await?;
    let many = xreads_for(200, MESSAGES).await?;
    println!("XREAD calls for {MESSAGES} messages: 1 subscriber {one}, 200 subscribers {many}");
    ensure!(one <= MESSAGES + 5, "1 subscriber: {one} XREADs");
    ensure!(many <= MESSAGES + 5, "200 subscribers: {many} XREADs");
    Ok(())
}

async fn trimmed_history(backend: Backend) -> Result<()> {
    let setup = setup(backend, &[]).await?;
    let mut c = client(&setup.server).await?;
    let mut offsets = Vec::new();
    for seq in 0..100u64 {
        let reply = c
            .request(json!({"type": "publish", "channel": "short", "fields": {"seq": seq}, "maxlen": 10}))
            .await?;
        offsets.push(reply["offset"].as_str().context("no offset")?.to_owned());
    }
    // Find out what is retained: subscribe from the oldest.
    let mut probe = client(&setup.server).await?;
    let reply = probe.subscribe("short", Some("0")).await?;
    assert_eq!(reply["truncated"], false);
    let retained = probe.recv_messages("short", 10, STEP).await?;
    probe.expect_silence(Duration::from_millis(300)).await.ok();
    let oldest_retained = seqs(&retained)[0];
    ensure!(
        oldest_retained > 0 && oldest_retained <= 90,
        "retained from {oldest_retained}"
    );

    let mut sub = client(&setup.server).await?;
    let reply = sub.subscribe("short", Some(&offsets[5])).await?;
    assert_eq!(reply["truncated"], true, "{reply}");
    let gap = sub
        .recv_until(|f| f["type"] == "gap", STEP)
        .await
        .context("no gap frame")?;
    assert_eq!(gap["from"], offsets[5]);
    assert_eq!(gap["to"], offsets[oldest_retained as usize - 1]);
    let got = sub
        .recv_messages("short", (100 - oldest_retained) as usize, STEP)
        .await?;
    assert_eq!(seqs(&got), (oldest_retained..100).collect::<Vec<_>>());

    // Resuming from the last trimmed entry itself is not a gap.
    let mut exact = client(&setup.server).await?;
    let reply = exact
        .subscribe("short", Some(&offsets[oldest_retained as usize - 1]))
        .await?;
    assert_eq!(reply["truncated"], false, "{reply}");
    let got = exact
        .recv_messages("short", (100 - oldest_retained) as usize, STEP)
        .await?;
    assert_eq!(seqs(&got)[0], oldest_retained);
    Ok(())
}

/// 5. Subscribing from an offset older than the retained entries replies `truncated: true`,
/// sends a `gap` frame, and delivers from the oldest retained entry.
#[tokio::test]
async fn trimmed_history_is_reported_redis() -> Result<()> {
    trimmed_history(Backend::Redis).await
}

/// 5. The same on the embedded engine.
#[tokio::test]
async fn trimmed_history_is_reported_embedded() -> Result<()> {
    trimmed_history(Backend::Embedded).await
}

async fn idempotent_publish(backend: Backend) -> Result<()> {
    let setup = setup(backend, &[]).await?;
    let mut c = client(&setup.server).await?;
    let frame = json!({"type": "publish", "channel": "orders", "fields": {"seq": 1}, "idempotency_key": "order-17"});
    let first = c.request(frame.clone()).await?;
    let second = c.request(frame.clone()).await?;
    assert_eq!(first["type"], "published");
    assert_eq!(first["offset"], second["offset"]);
    let other = c
        .request(json!({"type": "publish", "channel": "orders", "fields": {"seq": 2}, "idempotency_key": "order-18"}))
        .await?;
    assert_ne!(other["offset"], first["offset"]);
    let mut sub = client(&setup.server).await?;
    sub.subscribe("orders", Some("0")).await?;
    let got = sub.recv_messages("orders", 2, STEP).await?;
    assert_eq!(seqs(&got), vec![1, 2]);
    sub.expect_silence(Duration::from_millis(300)).await?;
    if let Some(redis) = &setup.redis {
        assert_eq!(
            redis.command(&["XLEN", "rd:orders"]).await?.as_integer(),
            Some(2)
        );
    }
    Ok(())
}

/// 10. A publish retried with the same `idempotency_key` returns the same offset and writes
/// once.
#[tokio::test]
async fn idempotent_publish_writes_once_redis() -> Result<()> {
    idempotent_publish(Backend::Redis).await
}

/// 10. The same on the embedded engine.
#[tokio::test]
async fn idempotent_publish_writes_once_embedded() -> Result<()> {
    idempotent_publish(Backend::Embedded).await
}

async fn pipelined_publishes_keep_their_order(backend: Backend) -> Result<()> {
    const N: u64 = 500;
    let setup = setup(backend, &[]).await?;
    let mut c = client(&setup.server).await?;
    for seq in 0..N {
        c.send_json(
            &json!({"type": "publish", "id": seq + 1, "channel": "pipe", "fields": {"seq": seq}}),
        )
        .await?;
    }
    let mut offsets = vec![String::new(); N as usize];
    for _ in 0..N {
        let reply = c.recv_until(|f| f["type"] == "published", STEP).await?;
        let id = reply["id"].as_u64().context("reply id")?;
        offsets[(id - 1) as usize] = reply["offset"].as_str().context("offset")?.to_owned();
    }
    let mut sub = client(&setup.server).await?;
    sub.subscribe("pipe", Some("0")).await?;
    let got = sub.recv_messages("pipe", N as usize, STEP).await?;
    assert_eq!(
        seqs(&got),
        (0..N).collect::<Vec<_>>(),
        "stored in the order sent"
    );
    let stored: Vec<&str> = got.iter().map(|m| m["offset"].as_str().unwrap()).collect();
    assert_eq!(stored, offsets, "each reply names its own message's offset");
    Ok(())
}

/// Publishes sent back to back without waiting are stored in the order sent, and each reply
/// carries the offset of its own message.
#[tokio::test]
async fn pipelined_publishes_keep_their_order_redis() -> Result<()> {
    pipelined_publishes_keep_their_order(Backend::Redis).await
}

/// The same on the embedded engine.
#[tokio::test]
async fn pipelined_publishes_keep_their_order_embedded() -> Result<()> {
    pipelined_publishes_keep_their_order(Backend::Embedded).await
}
