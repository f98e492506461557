//! The operator's retention policy, end to end on both engines: a publisher's `maxlen` is
//! raised to the floor (`--min-maxlen`, 1,000 by default) and capped by the channel's policy
//! (`--retention PATTERN=SPEC`, `--retention-default`), a publish without `maxlen` trims to the
//! policy, entries older than the policy's age go on the next publish, and readers that miss
//! trimmed entries are told (`gap`). Also: a client that may not publish to a channel cannot
//! create it (no Redis key appears).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use common::{client, publish_seq, seqs, setup, Backend, Setup, STEP};
use redistribute_testkit::{http_request, server_binary, ServerProcess, WsClient};
use serde_json::{json, Value};

/// `/api/history` of `channel` from the beginning (at most 1,000 messages).
async fn history(server: &ServerProcess, channel: &str) -> Result<Value> {
    let path = format!("/api/history?channel={channel}&from=0&limit=1000");
    let r = http_request(server.addr(), "GET", &path, &[], b"", STEP).await?;
    ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
    r.json()
}

/// The `seq` fields the channel retains.
async fn retained(server: &ServerProcess, channel: &str) -> Result<Vec<u64>> {
    let h = history(server, channel).await?;
    Ok(seqs(h["messages"].as_array().context("messages")?))
}

/// Publishes `seq` values `range` with `maxlen` over the WebSocket.
async fn publish_maxlen(
    c: &mut WsClient,
    channel: &str,
    range: std::ops::Range<u64>,
    maxlen: u64,
) -> Result<Vec<String>> {
    let mut offsets = Vec::new();
    for seq in range {
        let reply = c
            .request(
                json!({"type": "publish", "channel": channel, "fields": {"seq": seq},
                             "maxlen": maxlen}),
            )
            .await?;
        ensure!(reply["type"] == "published", "{reply}");
        offsets.push(reply["offset"].as_str().context("offset")?.to_owned());
    }
    Ok(offsets)
}

/// Redis' own length of a channel's stream, when the backend is Redis.
async fn xlen(setup: &Setup, channel: &str) -> Result<Option<i64>> {
    match &setup.redis {
        Some(redis) => Ok(redis
            .command(&["XLEN", &format!("rd:{channel}")])
            .await?
            .as_integer()),
        None => Ok(None),
    }
}

/// With the server's defaults, `maxlen: 1` on a channel of 1,101 entries keeps the newest
/// 1,000 (the default floor), and a reader from the start is told of the 101 it missed.
async fn hostile_maxlen_cannot_wipe_history(backend: Backend) -> Result<()> {
    // Not `common::setup`: it lowers the floor for the tests that trim on purpose.
    let redis = match backend {
        Backend::Embedded => None,
        Backend::Redis => Some(redistribute_testkit::RedisServer::start().await?),
    };
    let mut args: Vec<String> = Vec::new();
    if let Some(redis) = &redis {
        args.extend(["--redis".to_owned(), redis.url()]);
    }
    let server = ServerProcess::start(&server_binary(), &args).await?;
    let setup = Setup { redis, server };
    let mut c = client(&setup.server).await?;
    let offsets = publish_seq(&mut c, "history", 0..1_100).await?;
    publish_maxlen(&mut c, "history", 1_100..1_101, 1).await?;
    let kept = retained(&setup.server, "history").await?;
    ensure!(
        kept == (101..1_101).collect::<Vec<_>>(),
        "kept {} entries: {:?}…",
        kept.len(),
        &kept[..kept.len().min(5)]
    );
    let h = history(&setup.server, "history").await?;
    ensure!(
        h["truncated"] == true && h["gap"]["to"] == json!(offsets[100]),
        "{}",
        h["gap"]
    );
    if let Some(len) = xlen(&setup, "history").await? {
        ensure!(len == 1_000, "XLEN {len}");
    }
    Ok(())
}

#[tokio::test]
async fn hostile_maxlen_cannot_wipe_history_embedded() -> Result<()> {
    hostile_maxlen_cannot_wipe_history(Backend::Embedded).await
}

#[tokio::test]
async fn hostile_maxlen_cannot_wipe_history_redis() -> Result<()> {
    hostile_maxlen_cannot_wipe_history(Backend::Redis).await
}

/// Length policies: a pattern's cap applies with and without a publisher's `maxlen`, a
/// `maxlen` below the floor is raised to it, the default applies where no pattern matches,
/// the first matching pattern wins, and a subscriber resuming before the trim gets the gap.
async fn length_policy(backend: Backend) -> Result<()> {
    let setup = setup(
        backend,
        &[
            "--retention",
            "capped:vip=60",
            "--retention",
            "capped:*=20",
            "--retention-default",
            "40",
            "--min-maxlen",
            "10",
        ],
    )
    .await?;
    let server = &setup.server;
    let mut c = client(server).await?;
    // No `maxlen`: the pattern's cap (20, about: it trims past 20 + 1).
    let first = publish_seq(&mut c, "capped:a", 0..100).await?;
    let kept = retained(server, "capped:a").await?;
    ensure!(
        (20..=21).contains(&kept.len()) && kept.last() == Some(&99),
        "capped:a kept {kept:?}"
    );
    // A larger `maxlen` is capped; the first matching rule wins.
    publish_maxlen(&mut c, "capped:b", 0..100, 1_000).await?;
    let kept = retained(server, "capped:b").await?;
    ensure!((20..=21).contains(&kept.len()), "capped:b kept {kept:?}");
    publish_maxlen(&mut c, "capped:vip", 0..100, 1_000).await?;
    let kept = retained(server, "capped:vip").await?;
    ensure!((60..=63).contains(&kept.len()), "capped:vip kept {kept:?}");
    // Below the floor: raised to 10. Above the default: lowered to 40. None: 40.
    publish_maxlen(&mut c, "free", 0..100, 1).await?;
    let kept = retained(server, "free").await?;
    ensure!(
        (10..=11).contains(&kept.len()) && kept.last() == Some(&99),
        "free kept {kept:?}"
    );
    // The back-end API is held to the same policy.
    for seq in 0..30 {
        let body = json!({"channel": "api:free", "fields": {"seq": seq}, "maxlen": 1}).to_string();
        let r = http_request(
            server.addr(),
            "POST",
            "/api/publish",
            &[],
            body.as_bytes(),
            STEP,
        )
        .await?;
        ensure!(r.status == 200, "{} {}", r.status, r.text());
    }
    let kept = retained(server, "api:free").await?;
    ensure!((10..=11).contains(&kept.len()), "api:free kept {kept:?}");
    publish_maxlen(&mut c, "wide", 0..100, 10_000).await?;
    ensure!((40..=42).contains(&retained(server, "wide").await?.len()));
    publish_seq(&mut c, "plain", 0..100).await?;
    ensure!((40..=42).contains(&retained(server, "plain").await?.len()));
    if let Some(len) = xlen(&setup, "capped:a").await? {
        ensure!((20..=21).contains(&len), "XLEN {len}");
    }
    // A subscriber resuming at the first offset is told what it missed, then gets the rest.
    let mut s = client(server).await?;
    s.subscribe("capped:a", Some(&first[0])).await?;
    let gap = s
        .recv_until(|f| f["type"] == "gap", STEP)
        .await
        .context("no gap for the trimmed entries")?;
    ensure!(gap["from"] == json!(first[0]), "{gap}");
    let missed = 99 - kept_len(server, "capped:a").await?;
    ensure!(gap["to"] == json!(first[missed as usize]), "{gap}");
    Ok(())
}

async fn kept_len(server: &ServerProcess, channel: &str) -> Result<u64> {
    Ok(retained(server, channel).await?.len() as u64)
}

#[tokio::test]
async fn length_policy_embedded() -> Result<()> {
    length_policy(Backend::Embedded).await
}

#[tokio::test]
async fn length_policy_redis() -> Result<()> {
    length_policy(Backend::Redis).await
}

/// An age policy removes entries older than the age on the next publish (reported as a gap);
/// entries within the age stay.
async fn age_policy(backend: Backend) -> Result<()> {
    let setup = setup(
        backend,
        &[
            "--retention",
            "aged:*=age=1s",
            "--retention",
            "young:*=5,age=1h",
        ],
    )
    .await?;
    let server = &setup.server;
    let mut c = client(server).await?;
    let old = publish_seq(&mut c, "aged:a", 0..5).await?;
    publish_seq(&mut c, "young:a", 0..4).await?;
    ensure!(retained(server, "young:a").await? == [0, 1, 2, 3]);
    // Only a lower bound on time: after 2 s every one of them is older than 1 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish_seq(&mut c, "aged:a", 5..6).await?;
    publish_seq(&mut c, "young:a", 4..8).await?;
    ensure!(retained(server, "aged:a").await? == [5]);
    let h = history(server, "aged:a").await?;
    ensure!(
        h["truncated"] == true && h["gap"]["to"] == json!(old[4]),
        "{h}"
    );
    // The length part of a combined spec still applies.
    let young = retained(server, "young:a").await?;
    ensure!(young.len() >= 5 && young.last() == Some(&7), "{young:?}");
    if let Some(len) = xlen(&setup, "aged:a").await? {
        ensure!(len == 1, "XLEN {len}");
    }
    Ok(())
}

#[tokio::test]
async fn age_policy_embedded() -> Result<()> {
    age_policy(Backend::Embedded).await
}

#[tokio::test]
async fn age_policy_redis() -> Result<()> {
    age_policy(Backend::Redis).await
}

/// Bad retention flags fail the start with an error that names the key.
#[tokio::test]
async fn bad_retention_flags_are_refused() -> Result<()> {
    for (args, key) in [
        (vec!["--retention", "chat:*"], "retention"),
        (vec!["--retention", "chat:*=0"], "retention"),
        (vec!["--retention", "user:{sub}=10"], "retention"),
        (vec!["--retention-default", "age=5"], "retention_default"),
    ] {
        let mut server = ServerProcess::spawn(
            &server_binary(),
            &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            &[],
        )?;
        server.wait_exit(STEP).await?;
        let logs = server.logs();
        ensure!(logs.contains(&format!("`{key}`")), "{args:?}: {logs}");
    }
    Ok(())
}

const JWT_SECRET: &str = "retention-test-secret-0123456789abcdef";

fn token(publish: &[&str]) -> Result<String> {
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u", "exp": 4_000_000_000u64, "subscribe": ["*:*"],
                "publish": publish}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}

/// A client that may subscribe but not publish cannot create a channel: a consumer group on a
/// new channel is `forbidden`, resuming beyond the tip of a missing channel (WebSocket, SSE,
/// long-poll) starts at the tip without creating it, and no Redis key appears. A client that
/// may publish creates both.
async fn subscribers_cannot_create_channels(backend: Backend) -> Result<()> {
    let setup = setup(backend, &["--jwt-secret", JWT_SECRET, "--allow-open-api"]).await?;
    let server = &setup.server;
    let reader = token(&[])?;
    let mut c = client(server).await?;
    let reply = c
        .request(json!({"type": "connect", "token": reader}))
        .await?;
    ensure!(reply["type"] == "connected", "{reply}");
    let reply = c
        .request(
            json!({"type": "subscribe", "channel": "jobs:new", "group": "g",
                         "consumer": "c1", "offset": "0"}),
        )
        .await?;
    ensure!(
        reply["type"] == "error" && reply["code"] == "forbidden",
        "{reply}"
    );
    let ahead = format!(
        "{}-0",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() + 2_000
    );
    let reply = c.subscribe("feed:new", Some(&ahead)).await?;
    ensure!(
        reply["truncated"] == true && reply["offset"] == "0-0",
        "{reply}"
    );
    for path in [
        format!("/sse?channel=sse:new&offset={ahead}&token={reader}"),
        format!("/poll?channel=poll:new&offset={ahead}&timeout=1&token={reader}"),
    ] {
        let status = get_head(server, &path).await?;
        ensure!(status == 200, "{path}: {status}");
    }
    if let Some(redis) = &setup.redis {
        let keys = redis.command(&["KEYS", "*"]).await?;
        ensure!(
            keys.as_array().is_some_and(<[_]>::is_empty),
            "a subscriber created keys: {keys:?}"
        );
    }
    // Nothing was created: a publisher's first message starts the channel afresh.
    let writer = token(&["*:*"])?;
    let mut w = client(server).await?;
    let reply = w
        .request(json!({"type": "connect", "token": writer}))
        .await?;
    ensure!(reply["type"] == "connected", "{reply}");
    let reply = w
        .request(
            json!({"type": "subscribe", "channel": "jobs:new", "group": "g",
                         "consumer": "c1", "offset": "0"}),
        )
        .await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    let reply = w.subscribe("made:new", Some(&ahead)).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    if let Some(redis) = &setup.redis {
        for key in ["rd:jobs:new", "rd:made:new"] {
            let exists = redis.command(&["EXISTS", key]).await?;
            ensure!(exists.as_integer() == Some(1), "{key} was not created");
        }
    }
    Ok(())
}

/// The status of a GET whose body may stream (SSE): only the head is read.
async fn get_head(server: &ServerProcess, path: &str) -> Result<u16> {
    let stream = redistribute_testkit::HttpStream::open(server.addr(), path, &[], STEP).await?;
    Ok(stream.status)
}

#[tokio::test]
async fn subscribers_cannot_create_channels_embedded() -> Result<()> {
    subscribers_cannot_create_channels(Backend::Embedded).await
}

#[tokio::test]
async fn subscribers_cannot_create_channels_redis() -> Result<()> {
    subscribers_cannot_create_channels(Backend::Redis).await
}
