//! The client across disruptions: a failover to the next target, a restart of the only
//! target, and a Redis restart under live subscriptions, each without loss or duplicates.

use super::*;

/// 1. Failover: a subscriber with targets [A, B] receives 5,000 messages published at a
/// steady rate through B while A is SIGKILLed mid-stream: all of them, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_target_loses_nothing() -> Result<()> {
    const TOTAL: u64 = 5_000;
    let redis = RedisServer::start().await?;
    let mut a = start_server(Some(&redis), &[]).await?;
    let b = start_server(Some(&redis), &[]).await?;
    let subscriber = connect(&[a.ws_url(), b.ws_url()]).await?;
    ensure!(
        subscriber.state()
            == redistribute_client::ConnectionState::Connected { target: a.ws_url() },
        "the first target is tried first"
    );
    let events = record_events(&subscriber);
    let mut feed = within("subscribe", subscriber.subscribe("feed", Offset::Latest)).await??;
    let publisher = connect(&[b.ws_url()]).await?;

    let started = Instant::now();
    let publishing = tokio::spawn(publish_steady(publisher.clone(), "feed", TOTAL));
    let mut killed = None;
    let (got, _) = receive_with_disruption(&mut feed, TOTAL as usize, 1_500, async {
        killed = Some(Instant::now());
        a.kill().await
    })
    .await?;
    let elapsed = started.elapsed();
    let offsets = within("publisher", publishing).await???;
    check_exact(&got, &offsets)?;
    expect_silence(&mut feed).await?;

    subscriber.close().await;
    let events = within("events", events).await??;
    let killed = killed.context("A was killed")?;
    let (at, target) = reconnected_at(&events, killed).context("no reconnect after the kill")?;
    ensure!(target == b.ws_url(), "failed over to {target}, not B");
    ensure!(
        events.iter().any(|(_, e)| matches!(e,
            Event::Resubscribed { channel, truncated: false, .. } if channel == "feed")),
        "no resubscribe event: {events:?}"
    );
    eprintln!(
        "failover: A killed -> connected to B in {:?}; {TOTAL} messages in {elapsed:?}",
        at - killed
    );
    Ok(())
}

/// 2. Restart: the same with the only target killed and restarted on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_the_only_target_loses_nothing() -> Result<()> {
    const TOTAL: u64 = 5_000;
    let redis = RedisServer::start().await?;
    let mut server = start_server(Some(&redis), &[]).await?;
    let other = start_server(Some(&redis), &[]).await?;
    let subscriber = connect(&[server.ws_url()]).await?;
    let events = record_events(&subscriber);
    let mut feed = within("subscribe", subscriber.subscribe("feed", Offset::Latest)).await??;
    let publisher = connect(&[other.ws_url()]).await?;

    let publishing = tokio::spawn(publish_steady(publisher.clone(), "feed", TOTAL));
    let mut killed = None;
    let (got, restarted) = receive_with_disruption(&mut feed, TOTAL as usize, 1_500, async {
        killed = Some(Instant::now());
        server.restart().await
    })
    .await?;
    let offsets = within("publisher", publishing).await???;
    check_exact(&got, &offsets)?;
    expect_silence(&mut feed).await?;

    subscriber.close().await;
    let events = within("events", events).await??;
    let killed = killed.context("killed")?;
    let (at, target) = reconnected_at(&events, killed).context("no reconnect")?;
    ensure!(target == server.ws_url());
    eprintln!(
        "restart: down for {:?} (kill to healthy), reconnected {:?} after the kill \
         ({:?} after the server was healthy again)",
        restarted - killed,
        at - killed,
        at.saturating_duration_since(restarted)
    );
    Ok(())
}

/// Publishes `{"seq": seq}` under the key `seq-<seq>`, retrying while the server cannot store
/// (Redis restarting); the key makes a retry after an unclear failure store it once.
pub(super) async fn publish_keyed(client: &Client, channel: &str, seq: u64) -> Result<StreamId> {
    let deadline = Instant::now() + STEP;
    loop {
        let options = redistribute_client::PublishOptions {
            maxlen: None,
            idempotency_key: Some(format!("seq-{seq}")),
        };
        let attempt = client.publish_with(channel, json!({ "seq": seq }), options);
        match within("publish", attempt).await? {
            Ok(offset) => return Ok(offset),
            Err(e) if Instant::now() < deadline => {
                eprintln!("publish {seq}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("publish {seq} never stored: {e}"),
        }
    }
}

/// 8. Redis is killed while subscribers are connected, and their connections drop meanwhile,
/// so they re-subscribe while the server can only answer `unavailable`; Redis comes back a few
/// seconds later (empty). The subscriptions survive (a `SubscribeRetrying` event per failed
/// attempt, never `SubscriptionLost`) and receive everything acknowledged before and
/// everything published after, once, in order; `redistribute sub` keeps running and prints it
/// all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_redis_restart() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &["--request-timeout-ms", "2000"]).await?;
    let proxy = Proxy::start(server.addr()).await?;
    let subscriber = within(
        "connect",
        Client::builder()
            .targets([proxy.ws_url()])
            .backoff(Duration::from_millis(50), Duration::from_millis(500))
            .connect(),
    )
    .await??;
    let mut events = subscriber.events();
    let recorded = record_events(&subscriber);
    let mut feed = within("subscribe", subscriber.subscribe("feed", Offset::Latest)).await??;

    let mut cli = tokio::process::Command::new(server_binary());
    cli.args(["sub", "feed", "--from", "0", "--target", &proxy.ws_url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut cli = cli.spawn().context("starting redistribute sub")?;
    let mut cli_out = tokio::io::BufReader::new(cli.stdout.take().context("sub stdout")?).lines();
    // From `0`: the CLI gets the first message whenever its subscribe lands.
    let publisher = connect(&[server.ws_url()]).await?;
    let mut published = vec![publish_keyed(&publisher, "feed", 0).await?];
    let first = within("sub prints", cli_out.next_line()).await??;
    ensure!(first.is_some(), "sub exited");
    for seq in 1..5 {
        published.push(publish_keyed(&publisher, "feed", seq).await?);
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut feed).await?);
    }

    redis.stop().await?;
    proxy.cut();
    within("a subscribe answered unavailable", async {
        while let Some(event) = events.recv().await {
            if let Event::SubscribeRetrying { channel, error, .. } = &event {
                if channel == "feed" {
                    return Ok(error.clone());
                }
            }
        }
        bail!("the client stopped")
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().await?;

    for seq in 5..10 {
        published.push(publish_keyed(&publisher, "feed", seq).await?);
    }
    for _ in 5..10 {
        got.push(next(&mut feed).await?);
    }
    check_exact(&got, &published)?;
    expect_silence(&mut feed).await?;

    let mut printed = vec![first.unwrap_or_default()];
    while printed.len() < 10 {
        match within("sub prints", cli_out.next_line()).await?? {
            Some(line) => printed.push(line),
            None => bail!("redistribute sub exited after {} lines", printed.len()),
        }
    }
    let seqs: Vec<Value> = printed
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).map(|v| v["fields"]["seq"].clone()))
        .collect::<Result<_, _>>()?;
    ensure!(
        seqs == (0..10).map(|n| json!(n)).collect::<Vec<_>>(),
        "{seqs:?}"
    );
    ensure!(cli.try_wait()?.is_none(), "redistribute sub exited");
    cli.start_kill()?;

    subscriber.close().await;
    let recorded = within("events", recorded).await??;
    ensure!(
        !recorded
            .iter()
            .any(|(_, e)| matches!(e, Event::SubscriptionLost { .. })),
        "{recorded:?}"
    );
    let retries = recorded
        .iter()
        .filter(|(_, e)| matches!(e, Event::SubscribeRetrying { .. }))
        .count();
    eprintln!("redis restart: {retries} subscribe attempt(s) answered unavailable, then resumed");
    Ok(())
}
