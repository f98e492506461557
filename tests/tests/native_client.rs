//! End-to-end tests of the native client (`redistribute-client`) and the `sub` / `pub`
//! commands against real redis-server and server processes (issue 4, "Must show"). Every
//! wait is bounded; ports are chosen at run time.

mod common;
#[path = "native_client/proxy.rs"]
mod proxy;

use std::future::Future;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::start_server;
use futures_util::StreamExt;
use redistribute_client::{Client, Error, Event, Message, Offset, StreamId, Subscription};
use redistribute_testkit::{server_binary, RedisServer, RespValue};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinHandle;

use proxy::Proxy;

/// A generous bound for one step on a noisy machine.
const STEP: Duration = Duration::from_secs(20);

/// Awaits `fut` for at most [`STEP`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("timed out after {STEP:?}: {what}"))
}

/// Connects a client with default settings to `targets`.
async fn connect(targets: &[String]) -> Result<Client> {
    Ok(within("connect", Client::builder().targets(targets).connect()).await??)
}

/// Publishes `{"seq": 0..n}` at a steady pace (bursts of 100, 20 ms apart), returning the
/// offsets.
async fn publish_steady(client: Client, channel: &'static str, n: u64) -> Result<Vec<StreamId>> {
    let mut offsets = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let offset = within("publish", client.publish(channel, json!({ "seq": seq }))).await??;
        offsets.push(offset);
        if seq % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(offsets)
}

/// Records every event with the time it arrived, until the client stops.
fn record_events(client: &Client) -> JoinHandle<Vec<(Instant, Event)>> {
    let mut events = client.events();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            let closed = matches!(event, Event::Closed { .. });
            seen.push((Instant::now(), event));
            if closed {
                break;
            }
        }
        seen
    })
}

/// The next message, within [`STEP`].
async fn next(sub: &mut Subscription) -> Result<Message> {
    within("next message", sub.next())
        .await?
        .context("the subscription ended")
}

/// Checks that `got` is exactly the messages published with `offsets`, seq 0.., in order.
fn check_exact(got: &[Message], offsets: &[StreamId]) -> Result<()> {
    for (i, (m, offset)) in got.iter().zip(offsets).enumerate() {
        ensure!(
            m.fields["seq"] == json!(i),
            "message {i} has seq {} (offset {}): lost or duplicated",
            m.fields["seq"],
            m.offset
        );
        ensure!(
            m.offset == *offset,
            "message {i}: offset {} != {offset}",
            m.offset
        );
    }
    ensure!(
        got.len() == offsets.len(),
        "{} messages received, {} published",
        got.len(),
        offsets.len()
    );
    Ok(())
}

/// Nothing more arrives for a moment (no duplicate after the last message).
async fn expect_silence(sub: &mut Subscription) -> Result<()> {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        bail!("unexpected extra message: {extra:?}");
    }
    Ok(())
}

/// Receives `total` messages, running `disrupt` once `at` messages have arrived; returns the
/// messages and when the disruption finished.
async fn receive_with_disruption<F: Future<Output = Result<()>>>(
    sub: &mut Subscription,
    total: usize,
    at: usize,
    disrupt: F,
) -> Result<(Vec<Message>, Instant)> {
    let mut got = Vec::with_capacity(total);
    while got.len() < at {
        got.push(next(sub).await?);
    }
    disrupt.await?;
    let disrupted = Instant::now();
    while got.len() < total {
        got.push(next(sub).await?);
    }
    Ok((got, disrupted))
}

/// When the first `Connected` event after `since` arrived.
fn reconnected_at(events: &[(Instant, Event)], since: Instant) -> Option<(Instant, String)> {
    events.iter().find_map(|(at, e)| match e {
        Event::Connected { target } if *at >= since => Some((*at, target.clone())),
        _ => None,
    })
}

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

/// The entries of a stream: `(offset, fields as field → value text)`.
async fn xrange(redis: &RedisServer, key: &str) -> Result<Vec<(String, Vec<String>)>> {
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

async fn xlen(redis: &RedisServer, key: &str) -> Result<i64> {
    redis
        .command(&["XLEN", key])
        .await?
        .as_integer()
        .context("XLEN reply")
}

/// Polls until the stream has `len` entries.
async fn wait_for_len(redis: &RedisServer, key: &str, len: i64) -> Result<()> {
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

/// Runs the `redistribute` binary with `args` (no inherited `REDISTRIBUTE_*` variables) and
/// waits for it to exit.
async fn run_cli(args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(server_binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REDISTRIBUTE_") {
            cmd.env_remove(key);
        }
    }
    within(&format!("redistribute {args:?}"), cmd.output())
        .await?
        .context("running redistribute")
}

fn stdout_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// 4. `redistribute pub` prints the offset, `sub --from 0 --count N` prints exactly N JSON
/// lines and exits 0; bad fields and unreachable targets exit non-zero with a clear message.
#[tokio::test]
async fn sub_and_pub_commands() -> Result<()> {
    let redis = RedisServer::start().await?;
    let server = start_server(Some(&redis), &[]).await?;
    let url = server.ws_url();

    let out = run_cli(&["pub", "chat", "text=hello", "n:=5", "--target", &url]).await?;
    ensure!(out.status.success(), "{}", describe(&out));
    let first = String::from_utf8(out.stdout.clone())?.trim().to_owned();
    StreamId::parse(&first).with_context(|| format!("pub printed {first:?}"))?;

    let client = connect(std::slice::from_ref(&url)).await?;
    let mut offsets = vec![first.clone()];
    for seq in 1..10 {
        let offset = within("publish", client.publish("chat", json!({ "seq": seq }))).await??;
        offsets.push(offset.to_string());
    }

    let out = run_cli(&[
        "sub", "chat", "--from", "0", "--count", "4", "--target", &url,
    ])
    .await?;
    ensure!(out.status.success(), "{}", describe(&out));
    let lines = stdout_lines(&out);
    ensure!(lines.len() == 4, "{}", describe(&out));
    ensure!(
        lines[0]
            == json!({"channel": "chat", "offset": first, "fields": {"text": "hello", "n": 5}}),
        "{}",
        lines[0]
    );

    let out = run_cli(&[
        "sub", "chat", "--from", "0", "--count", "10", "--target", &url,
    ])
    .await?;
    ensure!(out.status.success(), "{}", describe(&out));
    let printed: Vec<String> = stdout_lines(&out)
        .iter()
        .map(|l| l["offset"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(printed == offsets, "{printed:?} != {offsets:?}");

    // Resume after an offset: only what came after it.
    let out = run_cli(&[
        "sub",
        "chat",
        "--from",
        &offsets[7],
        "--count",
        "2",
        "--target",
        &url,
    ])
    .await?;
    let printed: Vec<Value> = stdout_lines(&out)
        .iter()
        .map(|l| l["offset"].clone())
        .collect();
    ensure!(
        printed == vec![json!(offsets[8]), json!(offsets[9])],
        "{}",
        describe(&out)
    );

    let out = run_cli(&["pub", "chat", "text", "--target", &url]).await?;
    ensure!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("\"text\"") && stderr.contains("key=value"),
        "{stderr}"
    );
    let out = run_cli(&["pub", "chat", "n:=nope", "--target", &url]).await?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not JSON"));

    // Port 1 (tcpmux) is never served here: connections are refused at once. A port that was
    // free a moment ago may meanwhile belong to another test's server or Redis.
    let dead = "ws://127.0.0.1:1/ws".to_owned();
    for args in [
        vec!["sub", "chat", "--target", &dead, "--give-up-after", "1"],
        vec![
            "pub",
            "chat",
            "a=b",
            "--target",
            &dead,
            "--give-up-after",
            "1",
        ],
    ] {
        let started = Instant::now();
        let out = run_cli(&args).await?;
        ensure!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains(&dead), "{stderr}");
        eprintln!(
            "{} against a dead target: exit after {:?}",
            args[0],
            started.elapsed()
        );
    }
    Ok(())
}

/// 5. wss: to the server's TLS listener with a test CA the client connects when it trusts the CA
/// (library and `--ca-file`), and fails with a clear TLS error when it does not.
#[tokio::test]
async fn wss_with_a_test_ca() -> Result<()> {
    let redis = RedisServer::start().await?;
    let pki = common::pki::Pki::generate()?;
    let server = pki
        .start_server(&["--redis", &redis.url(), "--publish-rate", "100000"])
        .await?;
    let url = format!("wss://127.0.0.1:{}/ws", server.port());

    let client = within(
        "connect over wss",
        Client::builder()
            .targets([url.clone()])
            .add_root_certificate(&pki.ca_pem)
            .connect(),
    )
    .await??;
    let mut secure = within("subscribe", client.subscribe("secure", Offset::Earliest)).await??;
    let mut offsets = Vec::new();
    for seq in 0..20u64 {
        offsets.push(within("publish", client.publish("secure", json!({ "seq": seq }))).await??);
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(next(&mut secure).await?);
    }
    check_exact(&got, &offsets)?;

    let err = within(
        "connect without the CA",
        Client::builder()
            .targets([url.clone()])
            .give_up_after(Duration::from_secs(1))
            .connect(),
    )
    .await?
    .err()
    .context("connected without trusting the CA")?;
    let text = err.to_string();
    ensure!(matches!(err, Error::Unreachable { .. }), "{text}");
    ensure!(
        text.contains(&url) && text.contains("TLS handshake") && text.contains("certificate"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("redistribute-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem)?;
    let ca = ca_file.to_string_lossy().into_owned();
    let out = run_cli(&[
        "sub",
        "secure",
        "--from",
        "0",
        "--count",
        "20",
        "--target",
        &url,
        "--ca-file",
        &ca,
    ])
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    ensure!(out.status.success(), "{}", describe(&out));
    ensure!(stdout_lines(&out).len() == 20, "{}", describe(&out));
    Ok(())
}

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

/// Publishes `{"seq": seq}` under the key `seq-<seq>`, retrying while the server cannot store
/// (Redis restarting); the key makes a retry after an unclear failure store it once.
async fn publish_keyed(client: &Client, channel: &str, seq: u64) -> Result<StreamId> {
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
