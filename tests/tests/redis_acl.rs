//! The Redis ACL of `docs/redis.md` is enough, and checked against a real Redis: the test reads
//! the documented `ACL SETUSER` line from the document itself (so the two cannot drift), creates
//! that user, runs the server as it with each live-reader mode and on a Redis Cluster, and drives everything that
//! touches Redis: publishes with `maxlen` and an idempotency key, age retention (Redis' `TIME`),
//! history, live delivery, a resume over trimmed entries (`gap`), and a consumer group (join,
//! deliver, ack). Redis' `ACL LOG` must then hold no denial, and the server must have answered
//! every request.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{client, start_server, STEP};
use redistribute_testkit::{http_request, RedisCluster, RedisServer, RespValue, ServerProcess};
use serde_json::{json, Value};

/// The password the test gives the documented user (the document says `CHANGE-ME`).
const PASSWORD: &str = "acl-test-password";

/// The arguments of the documented `ACL SETUSER` (after `ACL SETUSER`), with the document's
/// placeholder password replaced.
fn documented_acl() -> Result<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/redis.md");
    let doc = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let start = doc
        .find("ACL SETUSER")
        .context("docs/redis.md has no `ACL SETUSER` line")?;
    let block = &doc[start..];
    let end = block.find("```").context("the ACL block is not closed")?;
    let words: Vec<String> = block[..end]
        .split_whitespace()
        .skip(2)
        .map(|w| w.replace(">CHANGE-ME", &format!(">{PASSWORD}")))
        .collect();
    ensure!(
        words.iter().any(|w| w == &format!(">{PASSWORD}")),
        "the documented ACL sets no `>CHANGE-ME` password: {words:?}"
    );
    Ok(words)
}

/// The `ACL SETUSER …` command of the documented user.
fn documented_user_args() -> Result<Vec<String>> {
    let mut args = vec!["ACL".to_owned(), "SETUSER".to_owned()];
    args.extend(documented_acl()?);
    Ok(args)
}

/// A retention pattern with an age, so publishes read Redis' clock.
/// The presence channels the server is started with.
const PRESENCE: &str = "acl-room:*";

const RETENTION: &str = "acl-aged:*=age=1h";

/// A publish request over the WebSocket that must succeed; returns its offset.
async fn publish(c: &mut redistribute_testkit::WsClient, frame: Value) -> Result<String> {
    let reply = c.request(frame.clone()).await?;
    ensure!(reply["type"] == "published", "{frame} → {reply}");
    Ok(reply["offset"].as_str().context("offset")?.to_owned())
}

/// What an `ACL LOG` reply holds, readable: one line per denial (`reason`, `object`,
/// `username`…).
fn denials(log: RespValue) -> Result<Vec<String>> {
    let RespValue::Array(entries) = log else {
        bail!("ACL LOG did not answer an array: {log:?}");
    };
    Ok(entries
        .iter()
        .map(|entry| match entry {
            RespValue::Array(fields) => fields
                .iter()
                .map(|f| match f {
                    RespValue::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            other => format!("{other:?}"),
        })
        .collect())
}

async fn everything_works_as_the_documented_user(live: &str) -> Result<()> {
    let redis = RedisServer::start().await?;
    let args = documented_user_args()?;
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let reply = redis.command(&words).await?;
    ensure!(
        matches!(&reply, RespValue::Simple(ok) if ok == "OK"),
        "{args:?}: {reply:?}"
    );
    let url = format!("redis://{}:{PASSWORD}@127.0.0.1:{}", args[2], redis.port());
    let server = start_server(
        None,
        &[
            "--redis",
            &url,
            "--redis-live-readers",
            live,
            "--retention",
            RETENTION,
            "--presence-channels",
            PRESENCE,
        ],
    )
    .await?;
    let result = drive_everything(&server).await;
    // Redis denied nothing the server asked (a denial also explains a failure above).
    let denied = denials(redis.command(&["ACL", "LOG"]).await?)?;
    ensure!(
        denied.is_empty(),
        "Redis denied the documented user ({live} live readers): {denied:#?}; the run: {result:?}"
    );
    result?;
    no_permission_errors(&server)
}

/// The same on a Redis Cluster of three primaries, the user created on every node.
#[tokio::test]
async fn the_documented_acl_is_enough_on_a_cluster() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(180), async {
        let cluster = RedisCluster::start(3, 0).await?;
        let args = documented_user_args()?;
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut flags = Vec::new();
        for port in cluster.ports() {
            let reply = cluster.command(port, &words).await?;
            ensure!(
                matches!(&reply, RespValue::Simple(ok) if ok == "OK"),
                "{port}: {args:?}: {reply:?}"
            );
            flags.push("--redis-cluster".to_owned());
            flags.push(format!("redis://{}:{PASSWORD}@127.0.0.1:{port}", args[2]));
        }
        flags.extend(["--retention", RETENTION, "--presence-channels", PRESENCE].map(String::from));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = start_server(None, &flags).await?;
        let result = drive_everything(&server).await;
        let mut denied = Vec::new();
        for port in cluster.ports() {
            denied.extend(denials(cluster.command(port, &["ACL", "LOG"]).await?)?);
        }
        ensure!(
            denied.is_empty(),
            "Redis Cluster denied the documented user: {denied:#?}; the run: {result:?}"
        );
        result?;
        no_permission_errors(&server)
    })
    .await
    .context("timed out")?
}

/// The server logged no Redis permission error.
fn no_permission_errors(server: &ServerProcess) -> Result<()> {
    let logs = server.logs();
    ensure!(
        !logs.contains("NOPERM"),
        "the server hit a permission error: {logs}"
    );
    Ok(())
}

/// Publishes, reads, trims, resumes and runs a consumer group on `server`.
async fn drive_everything(server: &ServerProcess) -> Result<()> {
    let mut sub = client(server).await?;
    let mut c = client(server).await?;

    // Live delivery (the live readers' `XREAD`, `CLIENT UNBLOCK` on retargeting).
    let reply = sub.subscribe("acl-live", Some("$")).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    let mut offsets = Vec::new();
    for n in 0..5 {
        offsets.push(c.publish("acl-live", json!({ "n": n })).await?);
    }
    let got = sub.recv_messages("acl-live", 5, STEP).await?;
    let got: Vec<&str> = got.iter().filter_map(|m| m["offset"].as_str()).collect();
    ensure!(got == offsets, "live: {got:?} != {offsets:?}");

    // An idempotency key: the retry answers the first offset and writes nothing.
    let keyed = json!({"type": "publish", "channel": "acl-idem", "fields": {"a": 1},
                       "idempotency_key": "k-1"});
    let first = publish(&mut c, keyed.clone()).await?;
    let again = publish(&mut c, keyed).await?;
    ensure!(first == again, "idempotent retry: {first} then {again}");

    // Trimming with `maxlen`, then a reader from the start is told what it missed.
    let mut trimmed = Vec::new();
    for n in 0..20 {
        trimmed.push(
            publish(
                &mut c,
                json!({"type": "publish", "channel": "acl-trim", "fields": {"n": n}, "maxlen": 5}),
            )
            .await?,
        );
    }
    let mut reader = client(server).await?;
    let reply = reader.subscribe("acl-trim", Some(&trimmed[0])).await?;
    ensure!(
        reply["type"] == "subscribed" && reply["truncated"] == true,
        "resuming after the first of 20 entries trimmed to 5: {reply}"
    );
    let kept = reader.recv_messages("acl-trim", 5, STEP).await?;
    ensure!(kept.len() == 5, "kept: {kept:?}");

    // Age retention reads Redis' clock in the publish script.
    publish(
        &mut c,
        json!({"type": "publish", "channel": "acl-aged:1", "fields": {"a": 1}}),
    )
    .await?;

    // History (the read script) over the back-end API.
    let r = http_request(
        server.addr(),
        "GET",
        "/api/history?channel=acl-live&from=0&limit=100",
        &[],
        b"",
        STEP,
    )
    .await?;
    ensure!(r.status == 200, "history: {} {}", r.status, r.text());
    let history = r.json()?;
    ensure!(
        history["messages"].as_array().map(Vec::len) == Some(5),
        "history: {history}"
    );

    // A consumer group: create, deliver, ack.
    let mut worker = client(server).await?;
    let reply = worker
        .request(
            json!({"type": "subscribe", "channel": "acl-jobs", "group": "workers",
                        "consumer": "w1", "offset": "0"}),
        )
        .await?;
    ensure!(reply["type"] == "subscribed", "group subscribe: {reply}");
    for n in 0..3 {
        c.publish("acl-jobs", json!({ "job": n })).await?;
    }
    let jobs = worker.recv_messages("acl-jobs", 3, STEP).await?;
    let ids: Vec<&str> = jobs.iter().filter_map(|m| m["offset"].as_str()).collect();
    let reply = worker
        .request(
            json!({"type": "ack", "channel": "acl-jobs", "group": "workers",
                        "offsets": ids}),
        )
        .await?;
    ensure!(reply["type"] == "acked", "ack: {reply}");

    // A reverse history page and a rewind (the read-back scripts).
    let page = c
        .request(json!({"type": "history", "channel": "acl-live", "limit": 2, "reverse": true}))
        .await?;
    ensure!(
        page["type"] == "history_page" && page["messages"].as_array().map(Vec::len) == Some(2),
        "reverse history: {page}"
    );
    let mut rewinder = client(server).await?;
    let reply = rewinder
        .request(json!({"type": "subscribe", "channel": "acl-live", "rewind": 2}))
        .await?;
    ensure!(reply["offset"] == offsets[2], "rewind: {reply}");

    // Presence: a member joins, is listed and counted, and leaves (the presence scripts).
    let reply = worker
        .request(json!({"type": "subscribe", "channel": "acl-room:1", "join_leave": true}))
        .await?;
    ensure!(reply["type"] == "subscribed", "presence subscribe: {reply}");
    let members = c
        .request(json!({"type": "presence", "channel": "acl-room:1"}))
        .await?;
    ensure!(
        members["members"].as_array().map(Vec::len) == Some(1),
        "presence: {members}"
    );
    let counts = c
        .request(json!({"type": "presence_stats", "channel": "acl-room:1"}))
        .await?;
    ensure!(counts["clients"] == 1, "presence_stats: {counts}");
    let reply = worker
        .request(json!({"type": "unsubscribe", "channel": "acl-room:1"}))
        .await?;
    ensure!(reply["type"] == "unsubscribed", "presence leave: {reply}");
    Ok(())
}

#[tokio::test]
async fn the_documented_acl_is_enough_with_channel_readers() -> Result<()> {
    tokio::time::timeout(
        Duration::from_secs(120),
        everything_works_as_the_documented_user("channel"),
    )
    .await
    .context("timed out")?
}

#[tokio::test]
async fn the_documented_acl_is_enough_with_shard_log_readers() -> Result<()> {
    tokio::time::timeout(
        Duration::from_secs(120),
        everything_works_as_the_documented_user("log"),
    )
    .await
    .context("timed out")?
}
