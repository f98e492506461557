//! `/readyz` follows the Redis engine's live readers, with both live-reader modes: a reader
//! refused `XREAD` by the Redis user's ACL while the shared writer works makes readiness 503
//! with the reason (after the grace period, within a generous bound), and once the ACL allows
//! it again readiness returns to 200 and the subscriber receives every message published
//! meanwhile, once and in order. A Redis restart shorter than the grace period does not make
//! readiness fail for the readers' reason. `/metrics` and `/status.json` show the same state.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{client, start_server, STEP};
use redistribute_testkit::{http_get, RedisServer, RespValue, ServerProcess};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The user's password.
const PASSWORD: &str = "live-readiness-password";

/// How long readiness may take to follow the readers (the grace period is 10 s; the machine is
/// noisy).
const BOUND: Duration = Duration::from_secs(90);

/// `GET path`: its status and body.
async fn get(server: &ServerProcess, path: &str) -> Result<(u16, String)> {
    let reply = http_get(server.addr(), path, STEP).await?;
    Ok((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

/// Polls `/readyz` until `done` accepts its answer; fails after [`BOUND`].
async fn readyz_until(
    server: &ServerProcess,
    what: &str,
    done: impl Fn(u16, &str) -> bool,
) -> Result<(u16, String)> {
    let deadline = Instant::now() + BOUND;
    loop {
        let (status, body) = get(server, "/readyz").await?;
        if done(status, &body) {
            return Ok((status, body));
        }
        if Instant::now() > deadline {
            bail!("/readyz never answered {what} within {BOUND:?}; last: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of a metric in the `/metrics` text.
async fn metric(server: &ServerProcess, name: &str) -> Result<f64> {
    let (_, text) = get(server, "/metrics").await?;
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .with_context(|| format!("no {name} in {text}"))
}

async fn acl(redis: &RedisServer, args: &[&str]) -> Result<()> {
    let mut words = vec!["ACL", "SETUSER", "live-reader"];
    words.extend(args);
    let reply = redis.command(&words).await?;
    ensure!(
        matches!(&reply, RespValue::Simple(ok) if ok == "OK"),
        "{words:?}: {reply:?}"
    );
    Ok(())
}

async fn refused_xread_turns_readiness_503_and_back(live: &str) -> Result<()> {
    let redis = RedisServer::start().await?;
    acl(
        &redis,
        &["on", &format!(">{PASSWORD}"), "~*", "&*", "+@all", "-xread"],
    )
    .await?;
    let url = format!("redis://live-reader:{PASSWORD}@127.0.0.1:{}", redis.port());
    let server = start_server(None, &["--redis", &url, "--redis-live-readers", live]).await?;
    let (status, body) = get(&server, "/readyz").await?;
    ensure!(status == 200, "before any watch: {status} {body}");

    let mut sub = client(&server).await?;
    let reply = sub.subscribe("stalled", Some("$")).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    let mut publisher = client(&server).await?;
    let mut offsets = Vec::new();
    for n in 0..5 {
        offsets.push(publisher.publish("stalled", json!({ "n": n })).await?);
    }

    let (_, reason) = readyz_until(&server, "503 for the live readers", |s, b| {
        s == 503 && b.starts_with("live readers: failing for ")
    })
    .await?;
    ensure!(
        reason.contains("NOPERM"),
        "the reason names the refusal: {reason}"
    );
    ensure!(
        !reason.contains(PASSWORD),
        "the reason holds the password: {reason}"
    );
    ensure!(metric(&server, "redistribute_live_readers_failing").await? >= 1.0);
    let (_, status) = get(&server, "/status.json").await?;
    let status: Value = serde_json::from_str(&status)?;
    ensure!(
        status["live_readers"]["ready"] == false
            && status["live_readers"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("NOPERM")),
        "{status}"
    );
    // Published while the readers fail: still acknowledged, not delivered yet.
    offsets.push(publisher.publish("stalled", json!({ "n": 5 })).await?);

    acl(&redis, &["+xread"]).await?;
    readyz_until(&server, "200", |s, _| s == 200).await?;
    ensure!(metric(&server, "redistribute_live_readers_failing").await? == 0.0);

    // Everything published meanwhile arrives, once and in order; then the next one alone.
    offsets.push(publisher.publish("stalled", json!({ "n": 6 })).await?);
    let got = sub.recv_messages("stalled", offsets.len(), STEP).await?;
    let got: Vec<&str> = got.iter().filter_map(|m| m["offset"].as_str()).collect();
    ensure!(got == offsets, "{live}: {got:?} != {offsets:?}");
    let last = publisher.publish("stalled", json!({ "n": 7 })).await?;
    let next = sub.recv_messages("stalled", 1, STEP).await?;
    ensure!(
        next.len() == 1 && next[0]["offset"] == last.as_str(),
        "{live}: after {last}: {next:?}"
    );
    Ok(())
}

#[tokio::test]
async fn refused_xread_turns_readiness_503_and_back_channel_readers() -> Result<()> {
    refused_xread_turns_readiness_503_and_back("channel").await
}

#[tokio::test]
async fn refused_xread_turns_readiness_503_and_back_log_readers() -> Result<()> {
    refused_xread_turns_readiness_503_and_back("log").await
}

async fn a_short_redis_restart_does_not_flap_readiness(live: &str) -> Result<()> {
    let mut redis = RedisServer::start_persistent().await?;
    let server = start_server(Some(&redis), &["--redis-live-readers", live]).await?;
    let mut sub = client(&server).await?;
    let reply = sub.subscribe("restart", Some("$")).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    let mut publisher = client(&server).await?;
    let first = publisher.publish("restart", json!({ "n": 0 })).await?;
    let got = sub.recv_messages("restart", 1, STEP).await?;
    ensure!(got[0]["offset"] == first.as_str(), "{got:?}");

    redis.restart().await?;
    // Longer than the grace period: a reader still failing by then would show.
    let watch_until = Instant::now() + Duration::from_secs(20);
    let mut second = None;
    while Instant::now() < watch_until {
        let (status, body) = get(&server, "/readyz").await?;
        ensure!(
            !(status == 503 && body.starts_with("live readers")),
            "{live}: readiness flapped after a short restart: {body}"
        );
        if second.is_none() {
            // Until the server's Redis clients have reconnected, publishes are `unavailable`.
            let reply = publisher
                .request(json!({"type": "publish", "channel": "restart", "fields": {"n": 1}}))
                .await?;
            match reply["type"].as_str() {
                Some("published") => second = Some(reply["offset"].clone()),
                _ => ensure!(reply["code"] == "unavailable", "{reply}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let second = second.context("no publish succeeded within 20 s of the restart")?;
    let got = sub.recv_messages("restart", 1, STEP).await?;
    ensure!(got[0]["offset"] == second, "{live}: {got:?}");
    let (status, body) = get(&server, "/readyz").await?;
    ensure!(status == 200, "{live}: {status} {body}");
    Ok(())
}

#[tokio::test]
async fn a_short_redis_restart_does_not_flap_readiness_channel_readers() -> Result<()> {
    a_short_redis_restart_does_not_flap_readiness("channel").await
}

#[tokio::test]
async fn a_short_redis_restart_does_not_flap_readiness_log_readers() -> Result<()> {
    a_short_redis_restart_does_not_flap_readiness("log").await
}

/// A user refused `CLIENT UNBLOCK` (channel readers only: shard-log readers never send it): a
/// watch added while the reader is blocked cannot retarget it, the failure counts after the
/// grace period, and once allowed the reader is unblocked and delivers the new channel.
#[tokio::test]
async fn refused_client_unblock_turns_readiness_503_and_back() -> Result<()> {
    let redis = RedisServer::start().await?;
    acl(
        &redis,
        &[
            "on",
            &format!(">{PASSWORD}"),
            "~*",
            "&*",
            "+@all",
            "-client|unblock",
        ],
    )
    .await?;
    let url = format!("redis://live-reader:{PASSWORD}@127.0.0.1:{}", redis.port());
    // The reader stays blocked far longer than the test waits, unless unblocked.
    let server = start_server(
        None,
        &[
            "--redis",
            &url,
            "--redis-block-ms",
            "300000",
            "--redis-live-readers",
            "channel",
        ],
    )
    .await?;
    let mut first = client(&server).await?;
    let reply = first.subscribe("first", Some("$")).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    let mut publisher = client(&server).await?;
    let offset = publisher.publish("first", json!({ "n": 0 })).await?;
    let got = first.recv_messages("first", 1, STEP).await?;
    ensure!(got[0]["offset"] == offset.as_str(), "{got:?}");

    // A second channel on the same reader: its start waits for the reader to be unblocked.
    let mut second = client(&server).await?;
    second
        .send_json(&json!({"type": "subscribe", "channel": "second", "offset": "$", "id": 7}))
        .await?;
    let (_, reason) = readyz_until(&server, "503 for the live readers", |s, b| {
        s == 503 && b.starts_with("live readers: failing for ")
    })
    .await?;
    ensure!(reason.contains("NOPERM"), "{reason}");
    eprintln!("refused CLIENT UNBLOCK: /readyz said {reason}");

    acl(&redis, &["+client|unblock"]).await?;
    readyz_until(&server, "200", |s, _| s == 200).await?;
    // The reader was retargeted: the second channel's live messages arrive.
    let reply = second
        .recv_until(|f| f["type"] == "subscribed" || f["type"] == "error", STEP)
        .await?;
    if reply["type"] == "error" {
        // The start outlasted the request deadline: the subscriber is told, and may retry.
        ensure!(reply["code"] == "unavailable", "{reply}");
        second.subscribe("second", Some("$")).await?;
    }
    let last = publisher.publish("second", json!({ "n": 1 })).await?;
    let got = second.recv_messages("second", 1, STEP).await?;
    ensure!(got[0]["offset"] == last.as_str(), "{got:?}");
    Ok(())
}
