//! Access on every route ("secure by default"), against the real binary on a real Redis: the
//! route table is enumerated, and every route is called without credentials and with a
//! forged, an expired and an under-privileged one (and a wrong API key). Each must answer the
//! documented status and code, and none may change anything in Redis. A route added to the
//! table without a request here, or answering 2xx without credentials, fails the test.
//! Also: the startup refusal of an open back-end API with JWT on, and a long-poll `client_id`
//! (and a task watch) that only the same user can take over.

mod common;

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use common::{jwt, setup, Backend, STEP};
use futures_util::{SinkExt, StreamExt};
use redistribute_server::internals::{routes, Access, Method, Route};
use redistribute_testkit::{http_request, server_binary, RedisServer, ServerProcess};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "access-test-secret-of-at-least-32-bytes";
const OTHER_SECRET: &str = "another-secret-of-at-least-32-bytes!!!";
const API_KEY: &str = "access-test-api-key-0123";
const TASK_SECRET: &str = "access-test-task-secret";

/// A way of (not) authenticating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    /// No credential at all.
    Missing,
    /// A token signed with another key.
    Forged,
    /// A correctly signed token that expired.
    Expired,
    /// A valid token that allows nothing.
    UnderPrivileged,
    /// An API key that is not configured.
    WrongApiKey,
}

const CREDS: [Cred; 5] = [
    Cred::Missing,
    Cred::Forged,
    Cred::Expired,
    Cred::UnderPrivileged,
    Cred::WrongApiKey,
];

/// The headers a credential is sent as.
fn headers(cred: Cred) -> Vec<(&'static str, String)> {
    let bearer = |token: String| vec![("Authorization", format!("Bearer {token}"))];
    match cred {
        Cred::Missing => vec![],
        Cred::Forged => bearer(jwt(OTHER_SECRET, "alice", &["**"], &["**"], 600)),
        Cred::Expired => bearer(jwt(SECRET, "alice", &["**"], &["**"], -600)),
        Cred::UnderPrivileged => bearer(jwt(SECRET, "mallory", &[], &[], 600)),
        Cred::WrongApiKey => vec![("X-API-Key", "not-the-configured-api-key".into())],
    }
}

/// The documented answer (status, code) of a route of class `access` to `cred`; `None` for
/// a public route, which answers 200.
fn expected(access: Access, cred: Cred) -> Option<(u16, &'static str)> {
    let unauthorized = Some((401, "unauthorized"));
    match (access, cred) {
        (Access::Public, _) => None,
        (_, Cred::UnderPrivileged) => Some((403, "forbidden")),
        // A client route ignores API-key headers: it is as if nothing was sent.
        _ => unauthorized,
    }
}

/// The request that exercises `route` (with its method and body), reading or writing channel
/// `user:alice` / task `job1`, which exist.
fn request_for(route: &Route) -> Result<(String, Vec<u8>)> {
    Ok(match route.path {
        "/sse" => ("/sse?channel=user:alice&offset=0".into(), vec![]),
        "/poll" => ("/poll?channel=user:alice&offset=0&timeout=0".into(), vec![]),
        "/task/{id}" => ("/task/job1".into(), vec![]),
        "/api/publish" => (
            "/api/publish".into(),
            json!({"channel": "user:alice", "fields": {"forged": true}})
                .to_string()
                .into_bytes(),
        ),
        "/api/history" => ("/api/history?channel=user:alice&from=0".into(), vec![]),
        "/publish" => (
            "/publish".into(),
            json!({"channel": "user:alice", "fields": {"forged": true}})
                .to_string()
                .into_bytes(),
        ),
        "/api/presence" => ("/api/presence?channel=user:alice".into(), vec![]),
        "/ws" | "/healthz" | "/readyz" | "/metrics" | "/status" | "/status.json" => {
            (route.path.into(), vec![])
        }
        other => bail!("route {other} has no request in this test: add one"),
    })
}

/// Every key in Redis with its type and, for streams, length and last ID.
async fn snapshot(redis: &RedisServer) -> Result<BTreeMap<String, String>> {
    let keys = redis.command(&["KEYS", "*"]).await?;
    let mut out = BTreeMap::new();
    for key in keys.as_array().context("KEYS reply")? {
        let key = key.as_str().context("key")?.to_owned();
        let kind = redis.command(&["TYPE", &key]).await?;
        let mut state = kind.as_str().unwrap_or_default().to_owned();
        if state == "stream" {
            let len = redis.command(&["XLEN", &key]).await?;
            let last = redis
                .command(&["XREVRANGE", &key, "+", "-", "COUNT", "1"])
                .await?;
            state = format!("stream len={:?} last={last:?}", len.as_integer());
        }
        out.insert(key, state);
    }
    Ok(out)
}

async fn start(redis: &RedisServer) -> Result<ServerProcess> {
    common::start_server(
        Some(redis),
        &[
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--task-secret",
            TASK_SECRET,
            "--jsonp",
        ],
    )
    .await
}

/// Sends `route`'s request with `cred`; the status and the error code of the answer.
async fn call(server: &ServerProcess, route: &Route, cred: Cred) -> Result<(u16, Value)> {
    let (path, body) = request_for(route)?;
    let headers = headers(cred);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = http_request(
        server.addr(),
        route.method.as_str(),
        &path,
        &headers,
        &body,
        STEP,
    )
    .await?;
    let code = r
        .json()
        .map(|v| v["error"]["code"].clone())
        .unwrap_or(Value::Null);
    Ok((r.status, code))
}

/// A WebSocket opened with `cred` on the upgrade: refused at the upgrade (forged, expired:
/// 401), or refused at its first request (none: `unauthorized` then close 1008; a token that
/// allows nothing: `forbidden` for subscribe and publish, the connection kept).
async fn websocket(server: &ServerProcess, cred: Cred) -> Result<()> {
    let mut request = server.ws_url().into_client_request()?;
    for (name, value) in headers(cred) {
        request.headers_mut().insert(name, value.parse()?);
    }
    let connected = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(request)).await?;
    let mut ws = match (cred, connected) {
        (Cred::Forged | Cred::Expired, Err(err)) => {
            ensure!(err.to_string().contains("401"), "{cred:?}: {err}");
            return Ok(());
        }
        (Cred::Forged | Cred::Expired, Ok(_)) => bail!("{cred:?}: the upgrade was accepted"),
        (_, connected) => connected?.0,
    };
    let frames = [
        json!({"type": "subscribe", "id": 1, "channel": "user:alice", "offset": "0"}),
        json!({"type": "publish", "id": 2, "channel": "user:alice", "fields": {"forged": true}}),
        json!({"type": "ack", "id": 3, "channel": "user:alice", "group": "g", "offsets": ["1-0"]}),
    ];
    for frame in frames {
        ws.send(Message::text(frame.to_string())).await?;
        let reply = tokio::time::timeout(STEP, ws.next())
            .await?
            .context("closed without an answer")??;
        let reply: Value = serde_json::from_str(reply.to_text()?)?;
        ensure!(reply["id"] == frame["id"], "{frame} -> {reply}");
        if cred == Cred::UnderPrivileged {
            ensure!(reply["code"] == "forbidden", "{frame} -> {reply}");
            continue;
        }
        ensure!(
            reply["code"] == "unauthorized",
            "{cred:?}: {frame} -> {reply}"
        );
        let close = tokio::time::timeout(STEP, ws.next()).await?;
        match close {
            Some(Ok(Message::Close(Some(close)))) => {
                ensure!(u16::from(close.code) == 1008, "{close:?}")
            }
            other => bail!("expected close 1008, got {other:?}"),
        }
        return Ok(());
    }
    Ok(())
}

/// Publishes through the back-end API with the API key.
async fn api_publish(addr: std::net::SocketAddr, channel: &str, fields: Value) -> Result<()> {
    let body = json!({"channel": channel, "fields": fields}).to_string();
    let headers = [("X-API-Key", API_KEY)];
    let r = http_request(
        addr,
        "POST",
        "/api/publish",
        &headers,
        body.as_bytes(),
        STEP,
    )
    .await?;
    ensure!(r.status == 200, "publishing to {channel}: {}", r.text());
    Ok(())
}

/// The route-coverage test: every route of the table, every bad credential.
#[tokio::test]
async fn every_route_refuses_bad_credentials_and_changes_nothing() -> Result<()> {
    let table = routes();
    let public: Vec<&str> = table
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        public,
        ["/healthz", "/readyz"],
        "only health checks are public"
    );
    let mut paths: Vec<(&str, Method)> = table.iter().map(|r| (r.path, r.method)).collect();
    paths.dedup();
    assert_eq!(paths.len(), table.len(), "a route is listed twice");

    let redis = RedisServer::start().await?;
    let server = start(&redis).await?;
    let addr = server.addr();
    // What refused requests would read or overwrite: alice's channel and a task, through
    // the back-end API.
    for (channel, fields) in [
        ("user:alice", json!({"private": "alice only"})),
        ("task:job1", json!({"status": "running"})),
    ] {
        api_publish(addr, channel, fields).await?;
    }
    // The right credentials are served: the routes exist and the refusals below are the
    // credentials' doing.
    let alice = jwt(
        SECRET,
        "alice",
        &["user:{sub}", "task:*"],
        &["user:{sub}"],
        600,
    );
    let signed = redistribute_server::sign_task_id("job1", TASK_SECRET);
    for (path, auth) in [
        (
            "/poll?channel=user:alice&offset=0&timeout=0".to_owned(),
            ("Authorization", format!("Bearer {alice}")),
        ),
        (
            "/task/job1".to_owned(),
            ("Authorization", format!("Bearer {alice}")),
        ),
        (format!("/task/{signed}"), ("X-Nothing", String::new())),
        (
            "/api/history?channel=user:alice".to_owned(),
            ("Authorization", format!("Bearer {alice}")),
        ),
        (
            "/api/history?channel=user:alice".to_owned(),
            ("X-API-Key", API_KEY.to_owned()),
        ),
        ("/metrics".to_owned(), ("X-API-Key", API_KEY.to_owned())),
        (
            "/status.json".to_owned(),
            ("Authorization", format!("Bearer {API_KEY}")),
        ),
    ] {
        let r = http_request(addr, "GET", &path, &[(auth.0, &auth.1)], b"", STEP).await?;
        ensure!(
            r.status == 200,
            "{path} with {}: {} {}",
            auth.0,
            r.status,
            r.text()
        );
    }
    let r =
        redistribute_testkit::http_get(addr, "/poll?channel=user:alice&offset=0&timeout=0", STEP)
            .await?;
    ensure!(r.status == 401, "poll without a token: {}", r.status);

    let before = snapshot(&redis).await?;
    ensure!(before.len() >= 2, "seeded keys not found: {before:?}");
    let mut checked = 0;
    for route in &table {
        for cred in CREDS {
            if route.access == Access::Socket {
                websocket(&server, cred)
                    .await
                    .with_context(|| format!("{} with {cred:?}", route.path))?;
                checked += 1;
                continue;
            }
            let (status, code) = call(&server, route, cred).await?;
            let context = format!("{} {} with {cred:?}", route.method.as_str(), route.path);
            match expected(route.access, cred) {
                None => ensure!(status == 200, "{context}: {status}"),
                Some((want, want_code)) => {
                    ensure!(
                        status == want && code == want_code,
                        "{context}: {status} {code}, documented {want} {want_code}"
                    );
                }
            }
            checked += 1;
        }
    }
    // Forged and unsigned task ids, without a token.
    let forged_id = redistribute_server::sign_task_id("job1", "another-task-secret");
    for path in [
        "/task/job1.00ff",
        &format!("/task/{forged_id}"),
        "/task/job1?watch",
    ] {
        let r = redistribute_testkit::http_get(addr, path, STEP).await?;
        ensure!(r.status == 401, "{path}: {} {}", r.status, r.text());
    }
    // JSONP keeps the refusal inside the callback.
    let r = redistribute_testkit::http_get(
        addr,
        "/poll?channel=user:alice&timeout=0&callback=cb",
        STEP,
    )
    .await?;
    ensure!(
        r.text().starts_with("/**/cb(") && r.text().contains("unauthorized"),
        "{}",
        r.text()
    );
    let after = snapshot(&redis).await?;
    assert_eq!(before, after, "a refused request changed Redis");
    println!(
        "{checked} refused calls over {} routes; Redis unchanged",
        table.len()
    );
    Ok(())
}

/// JWT on and no API key: the server refuses to start, naming the flag that opens the API on
/// purpose; with that flag the back-end API answers without credentials.
#[tokio::test]
async fn an_open_api_with_tokens_on_is_refused_at_startup() -> Result<()> {
    let output = tokio::time::timeout(
        STEP,
        tokio::process::Command::new(server_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
            .output(),
    )
    .await??;
    ensure!(!output.status.success(), "started with an open API");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("--allow-open-api") && stderr.contains("--api-key"),
        "{stderr}"
    );
    ensure!(!stderr.contains(SECRET), "the secret was printed: {stderr}");

    let setup = setup(
        Backend::Embedded,
        &["--jwt-secret", SECRET, "--allow-open-api"],
    )
    .await?;
    let addr = setup.server.addr();
    let r = redistribute_testkit::http_get(addr, "/api/history?channel=open", STEP).await?;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    // Client transports still need a token.
    let r = redistribute_testkit::http_get(addr, "/poll?channel=open&timeout=0", STEP).await?;
    ensure!(r.status == 401, "{} {}", r.status, r.text());
    Ok(())
}

/// A long-poll `client_id` held by one user is not ended by another user's poll (`403`), only
/// by the same user's (`409 replaced` for the older one); the same for task watches.
#[tokio::test]
async fn a_client_id_is_replaced_only_by_its_user() -> Result<()> {
    let setup = setup(
        Backend::Embedded,
        &["--jwt-secret", SECRET, "--api-key", API_KEY],
    )
    .await?;
    let addr = setup.server.addr();
    let user = |sub: &str| jwt(SECRET, sub, &["user:*", "task:*"], &[], 600);
    let (alice, bob) = (user("alice"), user("bob"));
    let poll = |token: String, timeout: u32| async move {
        let path = format!("/poll?channel=user:alice&client_id=c1&timeout={timeout}&token={token}");
        redistribute_testkit::http_get(addr, &path, STEP * 2).await
    };
    let mut held = tokio::spawn(poll(alice.clone(), 30));
    // Wait until alice's poll holds the id: bob is refused from then on. (A probe of bob's
    // that held it first made alice's poll the refused one: she polls again.)
    let mut refused = None;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if held.is_finished() {
            let r = held.await??;
            ensure!(r.status == 403, "alice's poll: {} {}", r.status, r.text());
            held = tokio::spawn(poll(alice.clone(), 30));
            continue;
        }
        let r = poll(bob.clone(), 0).await?;
        if r.status == 403 {
            refused = Some(r);
            break;
        }
        ensure!(
            r.status == 200,
            "bob before alice holds: {} {}",
            r.status,
            r.text()
        );
    }
    let refused = refused.context("alice's poll never held client_id c1")?;
    assert_eq!(refused.json()?["error"]["code"], "forbidden");
    ensure!(!held.is_finished(), "bob's poll ended alice's");
    // A message ends alice's poll normally, with the message.
    api_publish(addr, "user:alice", json!({"n": 1})).await?;
    let r = tokio::time::timeout(STEP * 2, held).await???;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    assert_eq!(r.json()?["messages"][0]["fields"]["n"], 1);

    // The same user replaces her own poll.
    let first = tokio::spawn(poll(alice.clone(), 30));
    let mut replaced = None;
    for _ in 0..200 {
        let second = tokio::spawn(poll(alice.clone(), 1));
        let r = tokio::time::timeout(STEP, async {
            loop {
                if first.is_finished() {
                    return true;
                }
                if second.is_finished() {
                    return false;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await?;
        if r {
            replaced = Some(first);
            break;
        }
        second.await??;
    }
    let r = replaced
        .context("alice's second poll never replaced the first")?
        .await??;
    ensure!(r.status == 409, "{} {}", r.status, r.text());
    assert_eq!(r.json()?["error"]["code"], "replaced");

    // Task watches: bob cannot end alice's watch.
    let watch = |token: String| async move {
        redistribute_testkit::HttpStream::open(
            addr,
            &format!("/task/t1?watch&token={token}"),
            &[],
            STEP,
        )
        .await
    };
    let alice_watch = watch(alice.clone()).await?;
    ensure!(alice_watch.status == 200);
    // Alice's watch holds the task once its head is sent: bob is refused at once (a watch
    // that was accepted would hold the request open past the timeout).
    let r = redistribute_testkit::http_get(addr, &format!("/task/t1?watch&token={bob}"), STEP)
        .await
        .context("bob's watch was not refused at once")?;
    ensure!(r.status == 403, "{} {}", r.status, r.text());
    let mut alice_watch = alice_watch;
    api_publish(addr, "task:t1", json!({"status": "done"})).await?;
    let mut text = String::new();
    while let Some(chunk) = alice_watch.next_chunk(STEP).await? {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    ensure!(
        text.contains("\"done\""),
        "alice's watch ended with {text:?}"
    );
    Ok(())
}
