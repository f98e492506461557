//! The HTTP transports never leak and never lose (issue "No silent loss", items 4, 6, 9),
//! against the real binary and real Redis:
//!
//! - requests whose clients go away while their subscribes wait on Redis leave no
//!   subscription or watched channel behind (SSE, long-poll, task watch);
//! - a task watch racing the publish of `done` always answers;
//! - an SSE stream names its resume point at the opening, so a stream that drops before its
//!   first event resumes exactly; a long-poll that times out empty names its next offsets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{client, setup, Backend, STEP};
use redistribute_testkit::{http_get, HttpStream, WsClient};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `/status.json`'s channel and subscription counts.
async fn hub_counts(addr: SocketAddr) -> Result<(u64, u64)> {
    let status = http_get(addr, "/status.json", STEP).await?.json()?;
    Ok((
        status["channels"].as_u64().context("channels")?,
        status["subscriptions"].as_u64().context("subscriptions")?,
    ))
}

/// The engine's watched-channel gauge from `/metrics`.
async fn engine_watched(addr: SocketAddr) -> Result<u64> {
    let text = http_get(addr, "/metrics", STEP).await?.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("redistribute_engine_watched_channels "))
        .context("no watched-channels gauge")?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

/// Polls `check` until it holds, for at most [`STEP`].
async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 4: SSE, long-poll and task-watch requests whose clients reset while the subscribe
/// waits for the channel's position (Redis paused) are unsubscribed at once; nothing stays
/// watched once Redis answers again.
#[tokio::test]
async fn requests_reset_while_subscribing_leave_nothing_watched() -> Result<()> {
    const PER_TRANSPORT: usize = 60;
    let setup = setup(Backend::Redis, &["--request-timeout-ms", "120000"]).await?;
    let addr = setup.server.addr();
    let redis = setup.redis.as_ref().context("redis")?;
    // Connections to Redis are up before the pause.
    http_get(addr, "/poll?channel=warm-up&timeout=0", STEP).await?;
    assert_eq!(hub_counts(addr).await?, (0, 0));

    let mut admin = redis.connect().await?;
    // Position reads are scripts, which a write pause holds back.
    admin
        .command_timeout(&["CLIENT", "PAUSE", "120000", "WRITE"], STEP)
        .await?
        .into_result()?;
    let mut sockets = Vec::new();
    for i in 0..PER_TRANSPORT {
        for path in [
            format!("/sse?channel=leak-sse-{i}"),
            format!("/poll?channel=leak-poll-{i}&timeout=60&client_id=leak-{i}"),
            format!("/task/leak-{i}?watch"),
        ] {
            let mut socket = tokio::time::timeout(STEP, TcpStream::connect(addr)).await??;
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            tokio::time::timeout(STEP, socket.write_all(request.as_bytes())).await??;
            sockets.push(socket);
        }
    }
    let all = (3 * PER_TRANSPORT) as u64;
    wait_for("every request to wait in its subscribe", || async {
        Ok(hub_counts(addr).await? == (all, all))
    })
    .await?;

    for socket in sockets {
        // A reset, not a graceful close.
        socket.set_zero_linger()?;
        drop(socket);
    }
    // Redis is still paused: only cancelling the subscribes can release them.
    wait_for("the reset requests to be unsubscribed", || async {
        Ok(hub_counts(addr).await? == (0, 0))
    })
    .await?;
    admin
        .command_timeout(&["CLIENT", "UNPAUSE"], STEP)
        .await?
        .into_result()?;
    wait_for("the engine to stop watching", || async {
        Ok(engine_watched(addr).await? == 0)
    })
    .await?;

    // The server still serves, and the counts stay at zero once a request completes.
    let r = http_get(addr, "/poll?channel=after&timeout=0", STEP).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(hub_counts(addr).await?, (0, 0));
    Ok(())
}

/// Reads a task watch's body (keepalive newlines, then one JSON value).
async fn watch_body(addr: SocketAddr, path: &str) -> Result<Value> {
    let mut stream = HttpStream::open(addr, path, &[], STEP).await?;
    ensure!(stream.status == 200, "{path}: status {}", stream.status);
    let deadline = Instant::now() + STEP;
    let mut body = Vec::new();
    while let Some(chunk) = stream
        .next_chunk(deadline.saturating_duration_since(Instant::now()))
        .await
        .with_context(|| format!("watch {path} did not answer"))?
    {
        body.extend(chunk);
    }
    Ok(serde_json::from_str(String::from_utf8(body)?.trim())?)
}

/// Item 6: a watch racing the publish of `done` always answers with `done`, whether the task
/// had no entry before or a `running` one.
#[tokio::test]
async fn task_watch_racing_done_never_hangs() -> Result<()> {
    const ROUNDS: usize = 150;
    let setup = setup(Backend::Redis, &["--task-keepalive-secs", "0"]).await?;
    let addr = setup.server.addr();
    let url = setup.server.ws_url();
    let mut rounds = Vec::new();
    for i in 0..ROUNDS {
        let url = url.clone();
        rounds.push(tokio::spawn(async move {
            let mut publisher = WsClient::connect(&url).await?;
            let channel = format!("task:race-{i}");
            if i % 2 == 1 {
                publisher
                    .publish(&channel, json!({"status": "running"}))
                    .await?;
            }
            let path = format!("/task/race-{i}?watch");
            let watch = tokio::spawn(async move { watch_body(addr, &path).await });
            // Stagger the publish over the watch's own round trips.
            if i % 3 > 0 {
                tokio::time::sleep(Duration::from_millis((i % 3) as u64)).await;
            }
            let done = publisher
                .publish(&channel, json!({"status": "done"}))
                .await?;
            let body = watch.await??;
            ensure!(
                body["fields"]["status"] == "done" && body["offset"] == done,
                "round {i}: watch answered {body}, expected done at {done}"
            );
            anyhow::Ok(())
        }));
    }
    for round in rounds {
        round.await??;
    }
    Ok(())
}

/// Reads an SSE stream up to the first blank-line-terminated block that has an `id:` field and
/// returns that id; fails if an event with data comes first.
async fn opening_id(stream: &mut HttpStream) -> Result<String> {
    let deadline = Instant::now() + STEP;
    let mut text = String::new();
    loop {
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut id = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim_start().to_owned());
                }
                ensure!(
                    !line.starts_with("data:"),
                    "an event came before any id: {block:?}"
                );
            }
            if let Some(id) = id {
                return Ok(id);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no id within {STEP:?}; the stream sent {text:?}"
        );
        let chunk = stream
            .next_chunk(deadline.saturating_duration_since(Instant::now()))
            .await?
            .context("the stream ended before its opening id")?;
        text.push_str(std::str::from_utf8(&chunk)?);
    }
}

/// The data of the next `message` events, `count` of them.
async fn messages(stream: &mut HttpStream, count: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + STEP;
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < count {
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                out.push(serde_json::from_str(data)?);
            }
        }
        if out.len() >= count {
            break;
        }
        let chunk = stream
            .next_chunk(deadline.saturating_duration_since(Instant::now()))
            .await?
            .context("the stream ended early")?;
        text.push_str(std::str::from_utf8(&chunk)?);
    }
    Ok(out)
}

/// Item 9: an SSE stream opened at `$` names its starting positions with `id:` at the
/// opening; one that drops before its first event and reconnects with that `Last-Event-ID`
/// gets what was published meanwhile exactly once. Also for a resumed stream, and for a
/// channel that does not exist yet.
#[tokio::test]
async fn sse_opening_carries_the_resume_point() -> Result<()> {
    let setup = setup(Backend::Redis, &[]).await?;
    let addr = setup.server.addr();
    let mut c = client(&setup.server).await?;
    let before = c.publish("open-a", json!({"n": 0})).await?;
    let path = "/sse?channel=open-a&channel=open-b";

    let mut first = HttpStream::open(addr, path, &[], STEP).await?;
    assert_eq!(first.status, 200);
    let token = opening_id(&mut first).await?;
    assert_eq!(token, format!("{before},0-0"), "the tip of each channel");
    drop(first);

    let missed_a = c.publish("open-a", json!({"n": 1})).await?;
    let missed_b = c.publish("open-b", json!({"n": 2})).await?;
    let mut second = HttpStream::open(addr, path, &[("Last-Event-ID", &token)], STEP).await?;
    assert_eq!(second.status, 200);
    let resumed = opening_id(&mut second).await?;
    assert_eq!(resumed, token, "a resumed stream opens at its resume point");
    let later = c.publish("open-a", json!({"n": 3})).await?;
    let got = messages(&mut second, 3).await?;
    // Order holds within a channel; channels interleave freely.
    let of = |channel: &str| -> Vec<&str> {
        got.iter()
            .filter(|m| m["channel"] == channel)
            .filter_map(|m| m["offset"].as_str())
            .collect()
    };
    assert_eq!(
        (of("open-a"), of("open-b")),
        (
            vec![missed_a.as_str(), later.as_str()],
            vec![missed_b.as_str()]
        ),
        "each message exactly once: {got:?}"
    );
    Ok(())
}

/// Item 9 for long-polls: a poll that times out empty still names the next offset of every
/// channel (the tip for `$`, `0-0` for a channel without entries), and polling from them gets
/// exactly what was published in between.
#[tokio::test]
async fn empty_poll_names_its_next_offsets() -> Result<()> {
    let setup = setup(Backend::Redis, &[]).await?;
    let addr = setup.server.addr();
    let mut c = client(&setup.server).await?;
    let tip = c.publish("lp-a", json!({"n": 0})).await?;
    for timeout in ["0", "0.2"] {
        let r = http_get(
            addr,
            &format!("/poll?channel=lp-a&channel=lp-b&timeout={timeout}"),
            STEP,
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json()?;
        assert_eq!(body["messages"], json!([]));
        assert_eq!(body["offsets"], json!({"lp-a": tip, "lp-b": "0-0"}));
    }
    let a = c.publish("lp-a", json!({"n": 1})).await?;
    let b = c.publish("lp-b", json!({"n": 2})).await?;
    // A poll answers with what is ready first; poll on from its offsets until both came.
    let (mut from_a, mut from_b) = (tip, "0-0".to_owned());
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    while got.len() < 2 {
        ensure!(Instant::now() < deadline, "only {got:?} arrived");
        let path =
            format!("/poll?channel=lp-a&channel=lp-b&offset={from_a}&offset={from_b}&timeout=10");
        let body = http_get(addr, &path, STEP).await?.json()?;
        for m in body["messages"].as_array().context("messages")? {
            got.push(m["offset"].as_str().context("offset")?.to_owned());
        }
        from_a = body["offsets"]["lp-a"].as_str().context("lp-a")?.to_owned();
        from_b = body["offsets"]["lp-b"].as_str().context("lp-b")?.to_owned();
    }
    got.sort_by_key(|o| o == &b);
    assert_eq!(got, [a.clone(), b.clone()], "each message exactly once");
    assert_eq!((from_a, from_b), (a, b));
    Ok(())
}
