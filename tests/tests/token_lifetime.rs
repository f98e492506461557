//! Token lifetime against the real binary: every stream (WebSocket, SSE, held long-poll, task
//! watch) ends at its token's expiry (`exp` + 5 s leeway) with the documented code
//! (`unauthorized`, "token expired"); expired tokens are refused on every transport; a
//! WebSocket `connect` with a new token on a live connection replaces its permissions and its
//! expiry without disturbing its subscriptions; the native client's token provider keeps a
//! subscription running across many short token lifetimes without a gap or a reconnect.
//!
//! Short-lived tokens are minted with `exp` a few seconds in the past: the server accepts them
//! for the rest of the leeway, so they live about two seconds. Every wait is generous.

mod common;

use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use common::{client, jwt, setup, Backend, STEP};
use futures_util::StreamExt;
use redistribute_client::{Client, Event, Offset};
use redistribute_testkit::{http_get, HttpStream, ServerProcess, WsClient};
use serde_json::{json, Value};
use tokio::time::Instant;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// A token valid for about `left` more seconds (counting the server's 5 s leeway).
fn token_left(left: i64, subscribe: &[&str], publish: &[&str]) -> String {
    jwt(SECRET, "u", subscribe, publish, left - 5)
}

/// A token that expired long ago (beyond any leeway).
fn expired_token() -> String {
    jwt(SECRET, "u", &["*"], &["*"], -120)
}

async fn start() -> Result<common::Setup> {
    setup(
        Backend::Embedded,
        &["--jwt-secret", SECRET, "--allow-open-api"],
    )
    .await
}

/// Asserts an `{"error":{"code":"unauthorized","message":"token expired…"}}` body.
fn assert_expired_body(body: &Value) -> Result<()> {
    ensure!(body["error"]["code"] == "unauthorized", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    ensure!(message.contains("expired"), "{body}");
    Ok(())
}

/// The text of an SSE stream up to and including the first event named `event`, or an error
/// when the stream ends first or nothing arrives within [`STEP`].
async fn sse_until(stream: &mut HttpStream, event: &str) -> Result<String> {
    let mut text = String::new();
    let marker = format!("event: {event}\n");
    loop {
        if let Some(at) = text.find(&marker) {
            if text[at..].contains("\n\n") {
                return Ok(text);
            }
        }
        let chunk = stream
            .next_chunk(STEP)
            .await?
            .with_context(|| format!("SSE stream ended before `event: {event}`: {text:?}"))?;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The `data:` of the first event named `event` in `text`, parsed.
fn sse_data(text: &str, event: &str) -> Result<Value> {
    let at = text
        .find(&format!("event: {event}\n"))
        .context("no such event")?;
    let data = text[at..]
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .context("event without data")?;
    Ok(serde_json::from_str(data)?)
}

/// Publishes one message on `channel` with a long-lived token, through a fresh connection.
async fn publish_one(server: &ServerProcess, channel: &str, seq: u64) -> Result<String> {
    let mut c = client(server).await?;
    let token = token_left(600, &[], &["*"]);
    let reply = c
        .request(json!({"type": "connect", "token": token}))
        .await?;
    ensure!(reply["type"] == "connected", "{reply}");
    c.publish(channel, json!({ "seq": seq })).await
}

async fn ws_stream_ends(server: &ServerProcess) -> Result<()> {
    let mut c = client(server).await?;
    let reply = c
        .request(json!({"type": "connect", "token": token_left(2, &["*"], &[])}))
        .await?;
    ensure!(reply["type"] == "connected", "{reply}");
    c.subscribe("ws-expiry", None).await?;
    let started = Instant::now();
    let error = c
        .recv_until(|f| f["type"] == "error", STEP)
        .await
        .context("no error frame at expiry")?;
    ensure!(error["code"] == "unauthorized", "{error}");
    ensure!(error.get("id").is_none_or(Value::is_null), "{error}");
    ensure!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{error}"
    );
    ensure!(c.expect_close(STEP).await? == 1008);
    // It lived until about its expiry, not shorter (a second of slack for whole-second `exp`).
    ensure!(started.elapsed() >= Duration::from_millis(500));
    Ok(())
}

async fn sse_stream_ends(server: &ServerProcess) -> Result<()> {
    let path = format!(
        "/sse?channel=sse-expiry&token={}",
        token_left(2, &["*"], &[])
    );
    let mut stream = HttpStream::open(server.addr(), &path, &[], STEP).await?;
    ensure!(stream.status == 200, "SSE answered {}", stream.status);
    // Messages flow before the expiry.
    publish_one(server, "sse-expiry", 1).await?;
    let text = sse_until(&mut stream, "message").await?;
    ensure!(sse_data(&text, "message")?["fields"]["seq"] == 1, "{text}");
    let text = sse_until(&mut stream, "error").await?;
    assert_expired_body(&sse_data(&text, "error")?)?;
    // Then the stream ends.
    let rest = stream.next_chunk(STEP).await?;
    ensure!(rest.is_none(), "data after the expiry error: {rest:?}");
    Ok(())
}

async fn poll_ends(server: &ServerProcess) -> Result<()> {
    let path = format!(
        "/poll?channel=poll-expiry&timeout=60&token={}",
        token_left(2, &["*"], &[])
    );
    let started = Instant::now();
    let response = http_get(server.addr(), &path, STEP * 2).await?;
    ensure!(response.status == 401, "{response:?}");
    assert_expired_body(&response.json()?)?;
    ensure!(
        started.elapsed() < Duration::from_secs(50),
        "held to its timeout"
    );
    Ok(())
}

async fn task_watch_ends(server: &ServerProcess) -> Result<()> {
    let path = format!(
        "/task/expiry-job?watch&token={}",
        token_left(2, &["task:*"], &[])
    );
    let response = http_get(server.addr(), &path, STEP * 2).await?;
    ensure!(response.status == 200, "{response:?}");
    assert_expired_body(&response.json()?)?;
    Ok(())
}

/// Per transport: a stream opened with a token living ~2 s ends at its expiry with the
/// documented code.
#[tokio::test]
async fn every_stream_ends_at_its_tokens_expiry() -> Result<()> {
    let setup = start().await?;
    let server = &setup.server;
    let (ws, sse, poll, task) = tokio::join!(
        ws_stream_ends(server),
        sse_stream_ends(server),
        poll_ends(server),
        task_watch_ends(server),
    );
    ws.context("WebSocket")?;
    sse.context("SSE")?;
    poll.context("poll")?;
    task.context("task watch")?;
    Ok(())
}

/// Per transport: an expired token is refused with `unauthorized` (401 on HTTP, an error
/// frame and close 1008 on the WebSocket), before any stream starts.
#[tokio::test]
async fn expired_tokens_are_refused_on_every_transport() -> Result<()> {
    let setup = start().await?;
    let server = &setup.server;
    let token = expired_token();

    let mut c = client(server).await?;
    let reply = c
        .request(json!({"type": "connect", "token": token}))
        .await?;
    ensure!(reply["code"] == "unauthorized", "{reply}");
    ensure!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{reply}"
    );
    ensure!(c.expect_close(STEP).await? == 1008);

    for path in [
        format!("/sse?channel=a&token={token}"),
        format!("/poll?channel=a&timeout=30&token={token}"),
        format!("/task/job?watch&token={token}"),
    ] {
        let response = http_get(server.addr(), &path, STEP).await?;
        ensure!(response.status == 401, "{path}: {response:?}");
        assert_expired_body(&response.json()?).with_context(|| path.clone())?;
    }
    // The bearer header is checked the same way.
    let stream = HttpStream::open(
        server.addr(),
        "/sse?channel=a",
        &[("Authorization", &format!("Bearer {token}"))],
        STEP,
    )
    .await?;
    ensure!(
        stream.status == 401,
        "SSE with an expired bearer: {}",
        stream.status
    );
    Ok(())
}

/// Sends `connect` with `token` and returns the reply.
async fn refresh(c: &mut WsClient, token: &str) -> Result<Value> {
    c.request(json!({"type": "connect", "token": token})).await
}

/// A `connect` with a new token on a live WebSocket replaces its expiry, in both directions,
/// and the subscription goes on without a gap or a duplicate.
#[tokio::test]
async fn a_refresh_on_a_live_websocket_replaces_the_expiry() -> Result<()> {
    let setup = start().await?;
    let server = &setup.server;
    let mut c = client(server).await?;
    let reply = refresh(&mut c, &token_left(3, &["live"], &["live"])).await?;
    ensure!(reply["type"] == "connected", "{reply}");
    let client_id = reply["client"].clone();
    c.subscribe("live", Some("0")).await?;
    c.publish("live", json!({"seq": 0})).await?;

    // Extend: the first token would end the connection within ~3 s.
    let reply = refresh(&mut c, &token_left(600, &["live"], &["live"])).await?;
    ensure!(reply["type"] == "connected", "{reply}");
    ensure!(
        reply["client"] == client_id,
        "a refresh keeps the client id: {reply}"
    );
    // Publish past the first token's expiry; every message arrives once, in order.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seq = 1;
    while Instant::now() < deadline {
        c.publish("live", json!({ "seq": seq })).await?;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = c.recv_messages("live", seq as usize, STEP).await?;
    let seqs: Vec<u64> = got
        .iter()
        .map(|m| m["fields"]["seq"].as_u64().unwrap())
        .collect();
    ensure!(seqs == (0..seq).collect::<Vec<_>>(), "{seqs:?}");
    ensure!(c.closed().is_none(), "closed at the old token's expiry");

    // Shorten: a token living ~2 s now ends the connection at its own expiry.
    let reply = refresh(&mut c, &token_left(2, &["live"], &["live"])).await?;
    ensure!(reply["type"] == "connected", "{reply}");
    let error = c.recv_until(|f| f["type"] == "error", STEP).await?;
    ensure!(error["code"] == "unauthorized", "{error}");
    ensure!(c.expect_close(STEP).await? == 1008);
    Ok(())
}

/// A refresh with an invalid or expired token, or with one that does not allow a current
/// subscription, is refused (`unauthorized` / `forbidden`, answering the `connect`) and the
/// connection closes with 1008; a narrower token that still covers every subscription is taken
/// and its narrower permissions apply at once.
#[tokio::test]
async fn refused_refreshes_close_the_connection() -> Result<()> {
    let setup = start().await?;
    let server = &setup.server;
    let full = token_left(600, &["a", "b"], &["a", "b"]);

    for (bad, code) in [
        (expired_token(), "unauthorized"),
        ("not.a.token".to_owned(), "unauthorized"),
        (token_left(600, &["a"], &["a"]), "forbidden"),
    ] {
        let mut c = client(server).await?;
        ensure!(refresh(&mut c, &full).await?["type"] == "connected");
        c.subscribe("a", None).await?;
        c.subscribe("b", None).await?;
        let reply = refresh(&mut c, &bad).await?;
        ensure!(
            reply["type"] == "error" && reply["code"] == code,
            "{bad}: {reply}"
        );
        if code == "forbidden" {
            let message = reply["message"].as_str().unwrap_or_default();
            ensure!(message.contains("\"b\""), "{reply}");
        }
        ensure!(c.expect_close(STEP).await? == 1008);
    }

    // Narrower but covering: accepted; publishing to `b` is no longer allowed.
    let mut c = client(server).await?;
    ensure!(refresh(&mut c, &full).await?["type"] == "connected");
    c.subscribe("a", None).await?;
    let reply = refresh(&mut c, &token_left(600, &["a"], &["a"])).await?;
    ensure!(reply["type"] == "connected", "{reply}");
    let reply = c
        .request(json!({"type": "publish", "channel": "b", "fields": {"x": 1}}))
        .await?;
    ensure!(reply["code"] == "forbidden", "{reply}");
    let reply = c
        .request(json!({"type": "subscribe", "channel": "b"}))
        .await?;
    ensure!(reply["code"] == "forbidden", "{reply}");
    c.publish("a", json!({"x": 1})).await?;
    c.recv_messages("a", 1, STEP).await?;
    Ok(())
}

/// Native client end to end against a real server on Redis: tokens living ~3 s (each
/// connection's would be cut at `exp` + 5 s), a subscription running for about 7 lifetimes
/// while another client publishes throughout. Every message arrives exactly once, in order;
/// the subscriber connects once and never reconnects; the provider was called for every
/// lifetime.
#[tokio::test]
async fn the_native_client_refreshes_short_lived_tokens_without_a_reconnect() -> Result<()> {
    let setup = setup(
        Backend::Redis,
        &["--jwt-secret", SECRET, "--allow-open-api"],
    )
    .await?;
    let url = setup.server.ws_url();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let subscriber = Client::builder()
        .target(&url)
        .token_provider(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(jwt(SECRET, "reader", &["feed"], &[], 3)) }
        })
        .build()?;
    let mut events = subscriber.events();
    let mut sub = tokio::time::timeout(STEP, subscriber.subscribe("feed", Offset::Latest))
        .await
        .context("subscribe timed out")??;
    let publisher = Client::builder()
        .target(&url)
        .token(jwt(SECRET, "writer", &[], &["feed"], 600))
        .connect()
        .await?;

    let run = Duration::from_secs(20);
    let publishing = tokio::spawn(async move {
        let mut offsets = Vec::new();
        let end = Instant::now() + run;
        let mut seq = 0u64;
        while Instant::now() < end {
            let offset =
                tokio::time::timeout(STEP, publisher.publish("feed", json!({ "seq": seq })))
                    .await
                    .context("publish timed out")??;
            offsets.push(offset);
            seq += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(offsets)
    });
    let published = publishing.await??;
    let mut received = Vec::new();
    while received.len() < published.len() {
        let message = tokio::time::timeout(STEP, sub.next())
            .await
            .with_context(|| format!("{} of {} messages", received.len(), published.len()))?
            .context("subscription ended")?;
        received.push(message.offset);
    }
    ensure!(received == published, "every message once, in order");
    // Nothing more (no duplicate) arrives.
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "a message after the last one published"
    );
    let provided = calls.load(Ordering::SeqCst);
    ensure!(
        provided >= 6,
        "the provider was called {provided} times in {run:?}"
    );
    let mut connects = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(100), events.recv()).await
    {
        match event {
            Event::Connected { .. } => connects += 1,
            Event::Disconnected { .. }
            | Event::ConnectFailed { .. }
            | Event::TokenRefreshFailed { .. }
            | Event::ServerError { .. } => anyhow::bail!("unexpected {event:?}"),
            _ => {}
        }
    }
    ensure!(connects == 1, "{connects} connections");
    Ok(())
}
