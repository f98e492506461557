//! End-to-end tests of replacing and resuming subscriptions in the native client against a real
//! server and redis-server: a replacement during a history replay, replacements in quick
//! succession while messages flow, a subscribe right behind an unsubscribe, and a tiny buffer
//! that overflows again and again during a replay, live publishing and a failover. Whatever
//! was still on the wire for the old subscription must never reach the new one; the current
//! subscription gets every message after its offset once, in order. Every wait is bounded.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::native::{check_offsets, expect_silence, within};
use common::start_server;
use futures_util::StreamExt;
use redistribute_client::{Client, Error, Event, Message, Offset, StreamId, Subscription};
use redistribute_testkit::RedisServer;
use serde_json::json;

/// A client of `targets` whose subscriptions buffer `buffer` messages.
async fn connect(targets: &[String], buffer: usize) -> Result<Client> {
    let builder = Client::builder()
        .targets(targets)
        .subscription_buffer(buffer)
        .event_buffer(100_000)
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    Ok(within("connect", builder.connect()).await??)
}

/// Publishes `{"seq": from..to}` one after the other, returning the offsets.
async fn publish(
    client: &Client,
    channel: &str,
    seqs: std::ops::Range<u64>,
) -> Result<Vec<StreamId>> {
    let mut offsets = Vec::new();
    for seq in seqs {
        let stored = client.publish(channel, json!({ "seq": seq }));
        offsets.push(within("publish", stored).await??);
    }
    Ok(offsets)
}

/// Reads `n` messages, pausing now and then so that a small buffer overflows.
async fn read(sub: &mut Subscription, n: usize, pause_every: usize) -> Result<Vec<Message>> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let message = within("next message", sub.next())
            .await?
            .with_context(|| format!("the subscription ended after {} messages", got.len()))?;
        got.push(message);
        if got.len() % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(got)
}

/// The replaced stream yields a prefix of what its own offset promised, then ends.
async fn ends_as_a_prefix(mut old: Subscription, owed: &[StreamId]) -> Result<()> {
    let mut got = Vec::new();
    while let Some(m) = within("the replaced stream", old.next()).await? {
        got.push(m.offset);
    }
    ensure!(
        owed.starts_with(&got),
        "the replaced stream yielded {} messages that are not a prefix of its own",
        got.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_during_a_replay_starts_exactly_at_the_new_offset() -> Result<()> {
    const HISTORY: u64 = 3_000;
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let publisher = connect(&[server.ws_url()], 16).await?;
    let stored = publish(&publisher, "replay", 0..HISTORY).await?;
    let subscriber = connect(&[server.ws_url()], 10_000).await?;

    let first = within(
        "subscribe",
        subscriber.subscribe("replay", Offset::Earliest),
    )
    .await??;
    // The replay of 3,000 messages is under way; the new subscription asks for the last 1,000.
    let at = stored[1_999];
    let mut second = within("replace", subscriber.subscribe("replay", at)).await??;
    ensure!(
        second.start_offset() == at,
        "started at {}",
        second.start_offset()
    );
    ends_as_a_prefix(first, &stored).await?;
    let live = publish(&publisher, "replay", HISTORY..HISTORY + 100).await?;
    let mut owed = stored[2_000..].to_vec();
    owed.extend(&live);
    let got = read(&mut second, owed.len(), usize::MAX).await?;
    check_offsets(&got, &owed)?;
    expect_silence(&mut second).await?;
    subscriber.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_of_quick_replacements_wins_while_messages_flow() -> Result<()> {
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let publisher = connect(&[server.ws_url()], 16).await?;
    let stored = publish(&publisher, "quick", 0..500).await?;
    let subscriber = connect(&[server.ws_url()], 10_000).await?;
    let _live = within("subscribe", subscriber.subscribe("quick", Offset::Latest)).await??;
    let flowing = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publish(&publisher, "quick", 500..1_500).await })
    };

    // Three replacements sent back to back (in this order), each from another offset.
    let (a, b, c) = tokio::join!(
        subscriber.subscribe("quick", Offset::Earliest),
        subscriber.subscribe("quick", stored[100]),
        subscriber.subscribe("quick", stored[399]),
    );
    for (name, earlier, from) in [("first", a, None), ("second", b, Some(100))] {
        match earlier {
            Err(Error::Cancelled) => {}
            Ok(stream) => {
                let owed = &stored[from.map_or(0, |f| f + 1)..];
                ends_as_a_prefix(stream, owed)
                    .await
                    .with_context(|| format!("the {name} replacement"))?;
            }
            Err(e) => anyhow::bail!("the {name} replacement failed with {e}"),
        }
    }
    let mut last = c.context("the last replacement")?;
    let live = within("publisher", flowing).await???;
    let mut owed = stored[400..].to_vec();
    owed.extend(&live);
    let got = read(&mut last, owed.len(), usize::MAX).await?;
    check_offsets(&got, &owed)?;
    expect_silence(&mut last).await?;
    subscriber.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_right_behind_an_unsubscribe_starts_clean() -> Result<()> {
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let publisher = connect(&[server.ws_url()], 16).await?;
    let stored = publish(&publisher, "behind", 0..2_000).await?;
    let subscriber = connect(&[server.ws_url()], 10_000).await?;
    let old = within(
        "subscribe",
        subscriber.subscribe("behind", Offset::Earliest),
    )
    .await??;
    // The unsubscribe is not awaited before the subscribe goes out.
    let (gone, again) = tokio::join!(
        subscriber.unsubscribe("behind"),
        subscriber.subscribe("behind", stored[1_499]),
    );
    gone.context("unsubscribe")?;
    let mut again = again.context("subscribe behind the unsubscribe")?;
    ends_as_a_prefix(old, &stored).await?;
    let got = read(&mut again, 500, usize::MAX).await?;
    check_offsets(&got, &stored[1_500..])?;
    expect_silence(&mut again).await?;
    subscriber.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_buffer_overflowing_through_a_replay_live_messages_and_a_failover_loses_nothing(
) -> Result<()> {
    const HISTORY: u64 = 1_000;
    const LIVE: u64 = 1_000;
    let redis = RedisServer::start().await?;
    let mut a = start_server(Some(&redis), &[]).await?;
    let b = start_server(Some(&redis), &[]).await?;
    let publisher = connect(&[b.ws_url()], 16).await?;
    let mut owed = publish(&publisher, "tiny", 0..HISTORY).await?;
    let subscriber = connect(&[a.ws_url(), b.ws_url()], 4).await?;
    let mut events = subscriber.events();
    let mut tiny = within("subscribe", subscriber.subscribe("tiny", Offset::Earliest)).await??;
    let flowing = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publish(&publisher, "tiny", HISTORY..HISTORY + LIVE).await })
    };
    let mut got = read(&mut tiny, 700, 3).await?;
    // The buffer is full and the rest waits on the server when A goes away.
    within("kill A", a.kill()).await??;
    got.extend(read(&mut tiny, (HISTORY + LIVE) as usize - 700, 25).await?);
    owed.extend(within("publisher", flowing).await???);
    check_offsets(&got, &owed)?;
    expect_silence(&mut tiny).await?;
    let mut overflows = 0;
    while let Some(event) = events.try_recv() {
        ensure!(!matches!(event, Event::Lagged { .. }), "events were lost");
        overflows += usize::from(matches!(event, Event::Overflow { .. }));
    }
    ensure!(overflows >= 2, "the buffer overflowed {overflows} times");
    eprintln!("tiny buffer: {overflows} overflows, each resumed from the stream");
    subscriber.close().await;
    Ok(())
}
