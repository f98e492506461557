//! Subscription lifecycle: a slow subscriber resumed from the stream, and subscriptions
//! replaced, ended and dropped cleanly.

use super::*;

/// A subscriber that does not keep up is not buffered without bound: with a 16-message
/// buffer and 600 messages published while it is not reading, it still gets every message,
/// in order, once (the client resumes it from the stream).
#[tokio::test]
async fn a_slow_subscriber_is_resumed_from_the_stream() -> Result<()> {
    const TOTAL: u64 = 600;
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let subscriber = within(
        "connect",
        Client::builder()
            .targets([server.ws_url()])
            .subscription_buffer(16)
            .connect(),
    )
    .await??;
    let events = record_events(&subscriber);
    let mut slow = within("subscribe", subscriber.subscribe("slow", Offset::Latest)).await??;
    let publisher = connect(&[server.ws_url()]).await?;
    let offsets = publish_steady(publisher, "slow", TOTAL).await?;
    ensure!(slow.queued() <= 16, "buffered {}", slow.queued());
    let mut got = Vec::new();
    while got.len() < TOTAL as usize {
        got.push(next(&mut slow).await?);
        if got.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    check_exact(&got, &offsets)?;
    expect_silence(&mut slow).await?;
    subscriber.close().await;
    let overflows = within("events", events)
        .await??
        .iter()
        .filter(|(_, e)| matches!(e, Event::Overflow { .. }))
        .count();
    ensure!(overflows >= 1, "the buffer never overflowed");
    eprintln!("slow subscriber: {overflows} overflow(s), each resumed from the stream");
    Ok(())
}

/// The API around subscriptions: subscribing again replaces (the old stream ends, the new one
/// starts where it asked), dropping a subscription unsubscribes, `unsubscribe` ends the
/// stream; invalid requests fail locally with typed errors.
#[tokio::test]
async fn subscriptions_replace_end_and_drop_cleanly() -> Result<()> {
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let client = connect(&[server.ws_url()]).await?;

    let mut first = within("subscribe", client.subscribe("x", Offset::Latest)).await??;
    let one = within("publish", client.publish("x", json!({"seq": 0}))).await??;
    ensure!(next(&mut first).await?.offset == one);
    ensure!(first.last_offset() == Some(one));

    let mut second = within("subscribe again", client.subscribe("x", Offset::Earliest)).await??;
    ensure!(
        within("old stream", first.next()).await?.is_none(),
        "the replaced subscription's stream should end"
    );
    let two = within("publish", client.publish("x", json!({"seq": 1}))).await??;
    let got = vec![next(&mut second).await?, next(&mut second).await?];
    check_exact(&got, &[one, two])?;

    within("unsubscribe", client.unsubscribe("x")).await??;
    ensure!(within("ended stream", second.next()).await?.is_none());
    within("unsubscribe again", client.unsubscribe("x")).await??;

    // Dropping unsubscribes, so the channel can be subscribed again at once.
    drop(within("subscribe", client.subscribe("y", Offset::Latest)).await??);
    let mut again = within(
        "subscribe after drop",
        client.subscribe("y", Offset::Latest),
    )
    .await??;
    let three = within("publish", client.publish("y", json!({"seq": 0}))).await??;
    ensure!(next(&mut again).await?.offset == three);

    within("ping", client.ping()).await??;
    let bad = within("bad channel", client.publish("no spaces", json!({"a": 1}))).await?;
    ensure!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
    let bad = within("bad fields", client.publish("x", json!([1]))).await?;
    ensure!(matches!(bad, Err(Error::Fields(_))), "{bad:?}");
    let bad = within("empty fields", client.publish("x", json!({}))).await?;
    ensure!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");

    client.close().await;
    let closed = within("publish after close", client.publish("x", json!({"a": 1}))).await?;
    ensure!(closed == Err(Error::Closed), "{closed:?}");
    ensure!(within("ended by close", again.next()).await?.is_none());
    Ok(())
}
