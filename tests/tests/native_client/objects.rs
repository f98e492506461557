//! Subscription objects ([`ChannelSubscription`]) end to end against real servers on Redis:
//! their states and events across a server restart with exactly-once delivery, a resubscribe
//! the server refuses after the restart (a clear `Unsubscribed` with the error, never silence),
//! one object per channel, unsubscribe and subscribe again without a gap, and a buffer that
//! overflows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redistribute_client::{
    ChannelSubscription, ConnectionState, ErrorCode, SubscribeOptions, Subscribed,
    SubscriptionEvent, SubscriptionState,
};

use super::*;
use common::jwt;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// The next event of an object, within [`STEP`].
async fn event(sub: &mut ChannelSubscription) -> Result<SubscriptionEvent> {
    within("next event", sub.next())
        .await?
        .context("the object's stream ended")
}

/// Waits until the object's state is `want`.
async fn state_becomes(sub: &ChannelSubscription, want: SubscriptionState) -> Result<()> {
    let mut watch = sub.state_watch();
    within(&format!("state {want:?}"), watch.wait_for(|s| *s == want)).await??;
    Ok(())
}

/// Reads events until `n` messages arrived; returns them and every other event in order.
async fn messages(
    sub: &mut ChannelSubscription,
    n: usize,
) -> Result<(Vec<Message>, Vec<SubscriptionEvent>)> {
    let (mut got, mut other) = (Vec::new(), Vec::new());
    while got.len() < n {
        match event(sub).await? {
            SubscriptionEvent::Message(m) => got.push(m),
            e => other.push(e),
        }
    }
    Ok((got, other))
}

/// No message arrives for a moment (no duplicate after the last one).
async fn no_more_messages(sub: &mut ChannelSubscription) -> Result<()> {
    let quiet = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match sub.next().await {
                Some(SubscriptionEvent::Message(m)) => return Some(m),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    if let Ok(Some(extra)) = quiet {
        bail!("unexpected extra message {}", extra.offset);
    }
    Ok(())
}

/// States go unsubscribed → subscribing → subscribed; a server restart moves the object to
/// subscribing (and the client to connecting) and back to subscribed with `recovered`, and
/// the 2,000 messages published meanwhile through another server arrive once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_states_and_exactly_once_delivery_across_a_server_restart() -> Result<()> {
    const TOTAL: u64 = 2_000;
    let redis = RedisServer::start().await?;
    let mut server = start_server(Some(&redis), &[]).await?;
    let other = start_server(Some(&redis), &[]).await?;
    let subscriber = connect(&[server.ws_url()]).await?;
    let mut feed = within(
        "new_subscription",
        subscriber.new_subscription("feed", SubscribeOptions::new()),
    )
    .await??;
    ensure!(feed.state() == SubscriptionState::Unsubscribed);
    let start = within("subscribe", feed.subscribe()).await??;
    ensure!(
        !start.recovered && !start.truncated,
        "{start:?}: `$` recovers nothing"
    );
    ensure!(feed.state() == SubscriptionState::Subscribed);
    let first = event(&mut feed).await?;
    ensure!(
        first == SubscriptionEvent::Subscribed(start),
        "first event {first:?}"
    );

    let publisher = connect(&[other.ws_url()]).await?;
    let publishing = tokio::spawn(publish_steady(publisher.clone(), "feed", TOTAL));
    let (mut got, mut other_events) = messages(&mut feed, 500).await?;
    server.kill().await?;
    state_becomes(&feed, SubscriptionState::Subscribing).await?;
    ensure!(subscriber.state() == ConnectionState::Connecting);
    server.restart().await?;
    let (rest, more) = messages(&mut feed, TOTAL as usize - got.len()).await?;
    got.extend(rest);
    other_events.extend(more);
    let offsets = within("publisher", publishing).await???;
    check_exact(&got, &offsets)?;
    no_more_messages(&mut feed).await?;
    ensure!(feed.state() == SubscriptionState::Subscribed);
    ensure!(
        matches!(
            other_events.as_slice(),
            [SubscriptionEvent::Subscribed(Subscribed {
                recovered: true,
                truncated: false,
                ..
            })]
        ),
        "one recovered resubscribe expected: {other_events:?}"
    );
    drop(feed);
    subscriber.close().await;
    Ok(())
}

/// After a restart the token no longer allows one channel: that object ends `Unsubscribed`
/// with an error event and the `forbidden` error in its `Unsubscribed` event; the other
/// object resumes, recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resubscribe_ends_the_object_with_the_error() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut server =
        start_server(Some(&redis), &["--jwt-secret", SECRET, "--allow-open-api"]).await?;
    let allow_chat = Arc::new(AtomicBool::new(true));
    let allowed = allow_chat.clone();
    let client = Client::builder()
        .target(server.ws_url())
        .token_provider(move || {
            let channels: &[&str] = if allowed.load(Ordering::SeqCst) {
                &["chat", "news"]
            } else {
                &["news"]
            };
            let token = jwt(SECRET, "reader", channels, &["*"], 600);
            async move { Ok::<_, std::io::Error>(token) }
        })
        .connect()
        .await?;
    let mut chat = client
        .new_subscription("chat", SubscribeOptions::new())
        .await?;
    let mut news = client
        .new_subscription("news", SubscribeOptions::new())
        .await?;
    within("chat", chat.subscribe()).await??;
    within("news", news.subscribe()).await??;
    let sent = within("publish", news.publish(json!({"n": 1}))).await??;
    let (got, _) = messages(&mut news, 1).await?;
    ensure!(got[0].offset == sent);

    server.kill().await?;
    state_becomes(&chat, SubscriptionState::Subscribing).await?;
    allow_chat.store(false, Ordering::SeqCst);
    server.restart().await?;
    state_becomes(&chat, SubscriptionState::Unsubscribed).await?;
    let forbidden = |e: &Error| {
        matches!(
            e,
            Error::Server {
                code: ErrorCode::Forbidden,
                ..
            }
        )
    };
    let mut seen = Vec::new();
    loop {
        let e = event(&mut chat).await?;
        let end = matches!(e, SubscriptionEvent::Unsubscribed { .. });
        seen.push(e);
        if end {
            break;
        }
    }
    let n = seen.len();
    ensure!(n >= 3, "events: {seen:?}");
    ensure!(
        matches!(&seen[n - 2], SubscriptionEvent::Error(e) if forbidden(e)),
        "an error event first: {seen:?}"
    );
    ensure!(
        matches!(&seen[n - 1], SubscriptionEvent::Unsubscribed { error: Some(e) } if forbidden(e)),
        "unsubscribed with the error: {seen:?}"
    );
    // The other channel goes on.
    state_becomes(&news, SubscriptionState::Subscribed).await?;
    let sent = within("publish", news.publish(json!({"n": 2}))).await??;
    let (got, other) = messages(&mut news, 1).await?;
    ensure!(got[0].offset == sent);
    ensure!(
        matches!(
            other.as_slice(),
            [SubscriptionEvent::Subscribed(Subscribed {
                recovered: true,
                ..
            })]
        ),
        "{other:?}"
    );
    // Subscribing again is refused the same way, and says so.
    let again = within("subscribe again", chat.subscribe()).await?;
    ensure!(matches!(&again, Err(e) if forbidden(e)), "{again:?}");
    client.close().await;
    Ok(())
}

/// One object per channel; unsubscribe and subscribe again continues after the last message
/// with nothing lost or repeated (`recovered`); `Client::subscribe` replaces an object, which
/// ends `Unsubscribed` with `Cancelled`; closing the client ends objects with `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_object_per_channel_and_subscribe_again_without_a_gap() -> Result<()> {
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let client = connect(&[server.ws_url()]).await?;
    let mut a = client
        .new_subscription("a", SubscribeOptions::new())
        .await?;
    let twice = client.new_subscription("a", SubscribeOptions::new()).await;
    ensure!(
        matches!(&twice, Err(Error::DuplicateSubscription { channel }) if channel == "a"),
        "{twice:?}"
    );
    let bad = client.new_subscription("", SubscribeOptions::new()).await;
    ensure!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");

    within("subscribe", a.subscribe()).await??;
    let mut offsets = Vec::new();
    for n in 0..3 {
        offsets.push(within("publish", a.publish(json!({ "seq": n }))).await??);
    }
    let (mut got, _) = messages(&mut a, 3).await?;
    within("unsubscribe", a.unsubscribe()).await??;
    ensure!(a.state() == SubscriptionState::Unsubscribed);
    let ended = event(&mut a).await?;
    ensure!(
        ended == SubscriptionEvent::Unsubscribed { error: None },
        "{ended:?}"
    );
    // Published while unsubscribed: delivered after the next subscribe.
    for n in 3..5 {
        offsets.push(within("publish", client.publish("a", json!({ "seq": n }))).await??);
    }
    let again = within("subscribe again", a.subscribe()).await??;
    ensure!(again.recovered, "{again:?}");
    let (rest, _) = messages(&mut a, 2).await?;
    got.extend(rest);
    check_exact(&got, &offsets)?;
    no_more_messages(&mut a).await?;

    // The old API replaces the object.
    let mut stream = within("subscribe", client.subscribe("a", Offset::Latest)).await??;
    let replaced = event(&mut a).await?;
    ensure!(
        replaced
            == SubscriptionEvent::Unsubscribed {
                error: Some(Error::Cancelled)
            },
        "{replaced:?}"
    );
    ensure!(within("end", a.next()).await?.is_none(), "the stream ends");
    ensure!(a.state() == SubscriptionState::Unsubscribed);
    let late = within("subscribe", a.subscribe()).await?;
    ensure!(late == Err(Error::Cancelled), "{late:?}");
    let sent = within("publish", client.publish("a", json!({"seq": 5}))).await??;
    ensure!(next(&mut stream).await?.offset == sent);
    ensure!(stream.object().state() == SubscriptionState::Subscribed);
    drop(stream);
    drop(a);

    // The channel is free again once the stream is dropped.
    let mut b = client
        .new_subscription("a", SubscribeOptions::new())
        .await?;
    within("subscribe", b.subscribe()).await??;
    client.close().await;
    let mut last = None;
    while let Some(e) = within("events until the end", b.next()).await? {
        last = Some(e);
    }
    ensure!(
        last == Some(SubscriptionEvent::Unsubscribed {
            error: Some(Error::Closed)
        }),
        "{last:?}"
    );
    ensure!(b.state() == SubscriptionState::Unsubscribed);
    Ok(())
}

/// A buffer of 8 events and a reader that pauses: the object overflows, resumes from the
/// stream (its state back to subscribed, `recovered`) and still yields every message once,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_overflows_resumes_without_loss() -> Result<()> {
    const TOTAL: u64 = 600;
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let client = within(
        "connect",
        Client::builder()
            .target(server.ws_url())
            .subscription_buffer(8)
            .connect(),
    )
    .await??;
    let mut feed = client
        .new_subscription("feed", SubscribeOptions::new().offset(Offset::Latest))
        .await?;
    within("subscribe", feed.subscribe()).await??;
    let publisher = connect(&[server.ws_url()]).await?;
    let offsets = publish_steady(publisher, "feed", TOTAL).await?;
    let mut got = Vec::new();
    let mut recovered = 0;
    while got.len() < TOTAL as usize {
        match event(&mut feed).await? {
            SubscriptionEvent::Message(m) => {
                got.push(m);
                if got.len() % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            SubscriptionEvent::Subscribed(s) if s.recovered => recovered += 1,
            SubscriptionEvent::Subscribed(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    check_exact(&got, &offsets)?;
    no_more_messages(&mut feed).await?;
    ensure!(recovered > 0, "the buffer never overflowed");
    ensure!(feed.state() == SubscriptionState::Subscribed);
    client.close().await;
    Ok(())
}

/// An object unsubscribed while its buffer is overflowed (a resume pending) ends cleanly:
/// the buffered messages, then `Unsubscribed` with no error, no resume behind its back; a
/// later subscribe continues after the last buffered message, and every message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_an_overflowed_object_then_subscribing_again_loses_nothing() -> Result<()> {
    const TOTAL: u64 = 200;
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let client = within(
        "connect",
        Client::builder()
            .target(server.ws_url())
            .subscription_buffer(4)
            .connect(),
    )
    .await??;
    let mut feed = client
        .new_subscription("feed", SubscribeOptions::new())
        .await?;
    within("subscribe", feed.subscribe()).await??;
    let publisher = connect(&[server.ws_url()]).await?;
    // Nobody reads meanwhile: the buffer overflows at once.
    let mut offsets = publish_steady(publisher.clone(), "feed", TOTAL / 2).await?;
    within("unsubscribe", feed.unsubscribe()).await??;
    ensure!(feed.state() == SubscriptionState::Unsubscribed);
    let mut got = Vec::new();
    loop {
        match event(&mut feed).await? {
            SubscriptionEvent::Message(m) => got.push(m),
            SubscriptionEvent::Unsubscribed { error: None } => break,
            SubscriptionEvent::Subscribed(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(got.len() < offsets.len(), "the buffer did overflow");
    // Nothing arrives while unsubscribed, even after the driver's resume delay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        feed.queued() == 0,
        "{} events while unsubscribed",
        feed.queued()
    );
    ensure!(feed.state() == SubscriptionState::Unsubscribed);

    for seq in TOTAL / 2..TOTAL {
        offsets.push(within("publish", publisher.publish("feed", json!({ "seq": seq }))).await??);
    }
    let again = within("subscribe again", feed.subscribe()).await??;
    ensure!(again.recovered, "{again:?}");
    while got.len() < TOTAL as usize {
        match event(&mut feed).await? {
            SubscriptionEvent::Message(m) => got.push(m),
            SubscriptionEvent::Subscribed(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    check_exact(&got, &offsets)?;
    no_more_messages(&mut feed).await?;
    client.close().await;
    Ok(())
}
