//! Security and limits against the real binary (issue 6, "Must show"): TLS on the listener,
//! JWT authentication and channel permissions, the origin allow-list, rate limits, half-open
//! connections, and the authorization hook.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::pki::Pki;
use common::{client, rss_kib, setup, Backend, STEP};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use redistribute_testkit::{server_binary, WsClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const API_KEY: &str = "security-test-api-key";

fn token(sub: &str, subscribe: &[&str], publish: &[&str], expires_in: i64) -> String {
    common::jwt(SECRET, sub, subscribe, publish, expires_in)
}

/// Serves an embedded server with the authorization `hook` on a free port; cancel the token to
/// stop it.
async fn serve_with_hook(
    hook: impl redistribute_server::Authorizer,
) -> Result<(
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = redistribute_server::ConfigValues::default().build()?;
    let app = redistribute_server::ServerBuilder::new(config)
        .authorize(hook)
        .start(shutdown.clone())
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(redistribute_server::serve(listener, app));
    Ok((addr, shutdown, server))
}

async fn connect_with(c: &mut WsClient, token: &str) -> Result<Value> {
    c.request(json!({"type": "connect", "token": token})).await
}

/// Expects the connection to be closed with 1008 after an `unauthorized` error.
async fn expect_unauthorized_close(c: &mut WsClient, reply: &Value) -> Result<()> {
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let code = c.expect_close(STEP).await?;
    assert_eq!(code, 1008);
    Ok(())
}

/// 2. No token, bad signature, expired, wrong channel, another user's private channel: each
/// yields the documented code; a valid token works; publish permission is separate.
#[tokio::test]
async fn tokens_and_channel_permissions() -> Result<()> {
    let setup = setup(
        Backend::Embedded,
        &["--jwt-secret", SECRET, "--api-key", API_KEY],
    )
    .await?;
    let server = &setup.server;

    // No token: the first non-connect frame is refused and the connection closed.
    let mut anon = client(server).await?;
    let reply = anon
        .request(json!({"type": "subscribe", "channel": "news"}))
        .await?;
    expect_unauthorized_close(&mut anon, &reply).await?;

    // A token signed with another key.
    let forged = encode(
        &Header::default(),
        &json!({"sub": "1", "exp": 9_999_999_999u64, "subscribe": ["**"]}),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!"),
    )?;
    let mut bad = client(server).await?;
    let reply = connect_with(&mut bad, &forged).await?;
    expect_unauthorized_close(&mut bad, &reply).await?;

    // Expired.
    let mut expired = client(server).await?;
    let reply = connect_with(&mut expired, &token("1", &["news"], &[], -120)).await?;
    expect_unauthorized_close(&mut expired, &reply).await?;
    assert!(
        reply["message"].as_str().unwrap().contains("expired"),
        "{reply}"
    );

    // Valid: alice may read news and her own channel, and publish only to her channel.
    let alice = token(
        "alice",
        &["news", "user:{sub}", "chat:*"],
        &["user:{sub}"],
        600,
    );
    let mut a = client(server).await?;
    assert_eq!(connect_with(&mut a, &alice).await?["type"], "connected");
    assert_eq!(a.subscribe("news", None).await?["type"], "subscribed");
    assert_eq!(a.subscribe("user:alice", None).await?["type"], "subscribed");
    assert_eq!(a.subscribe("chat:lobby", None).await?["type"], "subscribed");
    for (frame, code) in [
        (
            json!({"type": "subscribe", "channel": "secret"}),
            "forbidden",
        ),
        (
            json!({"type": "subscribe", "channel": "user:bob"}),
            "forbidden",
        ),
        (
            json!({"type": "subscribe", "channel": "chat:a:b"}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "channel": "news", "fields": {"x": 1}}),
            "forbidden",
        ),
        (
            json!({"type": "publish", "channel": "user:bob", "fields": {"x": 1}}),
            "forbidden",
        ),
    ] {
        let reply = a.request(frame.clone()).await?;
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
    }
    // Still connected and working after refusals.
    a.publish("user:alice", json!({"note": "to self"})).await?;
    let got = a.recv_messages("user:alice", 1, STEP).await?;
    assert_eq!(got[0]["fields"]["note"], "to self");

    // A bearer token on the upgrade authenticates without a connect frame; a bad one is 401.
    let mut request = server.ws_url().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {alice}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.send(Message::text(
        json!({"type": "subscribe", "id": 1, "channel": "news"}).to_string(),
    ))
    .await?;
    let reply = tokio::time::timeout(STEP, ws.next())
        .await?
        .context("closed")??;
    let reply: Value = serde_json::from_str(reply.to_text()?)?;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut request = server.ws_url().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", "Bearer nonsense".parse()?);
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    ensure!(err.to_string().contains("401"), "{err}");

    // SSE and long-poll take the token too, and check the channels.
    let addr = server.addr();
    let r = redistribute_testkit::http_get(addr, "/poll?channel=news&timeout=0", STEP).await?;
    assert_eq!(r.status, 401);
    let r = redistribute_testkit::http_get(
        addr,
        &format!("/poll?channel=news&timeout=0&token={alice}"),
        STEP,
    )
    .await?;
    assert_eq!(r.status, 200);
    let r = redistribute_testkit::http_get(
        addr,
        &format!("/poll?channel=secret&timeout=0&token={alice}"),
        STEP,
    )
    .await?;
    assert_eq!(r.status, 403);
    Ok(())
}

/// Without a connect frame in time, an auth-required connection is closed (slowloris).
#[tokio::test]
async fn unauthenticated_connections_time_out() -> Result<()> {
    let setup = setup(
        Backend::Embedded,
        &[
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--handshake-timeout-ms",
            "1000",
        ],
    )
    .await?;
    let mut idle = client(&setup.server).await?;
    assert_eq!(idle.expect_close(STEP).await?, 1008);
    Ok(())
}

/// 3. A disallowed Origin gets 403 on upgrade; allowed and absent origins connect.
#[tokio::test]
async fn origin_allow_list() -> Result<()> {
    let setup = setup(
        Backend::Embedded,
        &["--allowed-origin", "https://app.example.com"],
    )
    .await?;
    let url = setup.server.ws_url();
    let with_origin = |origin: &str| {
        let mut request = url.clone().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    let err = tokio_tungstenite::connect_async(with_origin("https://evil.example"))
        .await
        .unwrap_err();
    ensure!(err.to_string().contains("403"), "{err}");
    tokio_tungstenite::connect_async(with_origin("https://app.example.com")).await?;
    WsClient::connect(&url).await?;
    Ok(())
}

/// 1. TLS: a native client with the test CA connects over wss:// and receives messages; a
/// plain-text client on the TLS port fails cleanly and the server keeps serving; SIGHUP
/// reloads a new certificate.
#[tokio::test]
async fn tls_listener_serves_wss_and_reloads() -> Result<()> {
    let pki = Pki::generate()?;
    let server = pki.start_server(&[]).await?;
    let wss = format!("wss://127.0.0.1:{}/ws", server.port());
    let client = redistribute_client::Client::builder()
        .target(wss.clone())
        .add_root_certificate(pki.ca_pem.as_bytes())
        .webpki_roots(false)
        .connect()
        .await?;
    let mut sub = client
        .subscribe("secure", redistribute_protocol::Offset::Latest)
        .await?;
    let offset = client
        .publish("secure", json!({"n": 1}).as_object().unwrap().clone())
        .await?;
    let got = tokio::time::timeout(STEP, sub.next())
        .await?
        .context("subscription ended")?;
    assert_eq!(got.offset, offset);

    // Plain text on the TLS port: a clean failure, and the server goes on.
    let plain = WsClient::connect(&format!("ws://127.0.0.1:{}/ws", server.port())).await;
    assert!(plain.is_err(), "plain WebSocket on a TLS port must fail");
    let mut raw = TcpStream::connect(server.addr()).await?;
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(STEP, raw.read_to_end(&mut buf)).await;
    ensure!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "served plain HTTP on TLS"
    );
    client
        .publish("secure", json!({"n": 2}).as_object().unwrap().clone())
        .await?;
    assert!(tokio::time::timeout(STEP, sub.next()).await?.is_some());

    // Swap in a certificate from another CA and reload: new handshakes use it.
    let next = Pki::generate()?;
    std::fs::copy(&next.cert, &pki.cert)?;
    std::fs::copy(&next.key, &pki.key)?;
    std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()?;
    next.wait_for_server(server.addr()).await?;
    Ok(())
}

/// Unusable certificate files stop the server with a message naming the key.
#[tokio::test]
async fn bad_tls_files_are_named() -> Result<()> {
    let pki = Pki::generate()?;
    let other = Pki::generate()?;
    let cases = [
        (
            pki.cert.display().to_string(),
            "/nonexistent/key.pem".to_owned(),
            "tls_key",
        ),
        (
            "/nonexistent/cert.pem".to_owned(),
            pki.key.display().to_string(),
            "tls_cert",
        ),
        (
            pki.cert.display().to_string(),
            other.key.display().to_string(),
            "tls_key",
        ),
    ];
    for (cert, key, named) in cases {
        let output = tokio::process::Command::new(server_binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ])
            .output();
        let output = tokio::time::timeout(STEP, output).await??;
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(stderr.contains(named), "{named} not named in: {stderr}");
    }
    Ok(())
}

/// 4. A flood of publishes is rate-limited with `rate_limited` and does not stop another
/// client's traffic.
#[tokio::test]
async fn publish_flood_is_rate_limited() -> Result<()> {
    let setup = setup(
        Backend::Embedded,
        &["--publish-rate", "200", "--publish-burst", "100"],
    )
    .await?;
    let mut flooder = client(&setup.server).await?;
    for i in 0..2_000u64 {
        flooder
            .send_json(
                &json!({"type": "publish", "id": i + 1, "channel": "flood", "fields": {"i": i}}),
            )
            .await?;
    }
    let mut limited = 0;
    let mut published = 0;
    for _ in 0..2_000 {
        let reply = flooder
            .recv_until(|f| f["type"] == "published" || f["type"] == "error", STEP)
            .await?;
        match reply["type"].as_str() {
            Some("published") => published += 1,
            _ => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                limited += 1;
            }
        }
    }
    println!("flood: {published} published, {limited} rate_limited");
    ensure!(limited > 1_000, "only {limited} were limited");
    ensure!(published >= 100, "the burst was not honoured");
    // Another client is unaffected.
    let mut other = client(&setup.server).await?;
    other.subscribe("calm", None).await?;
    for n in 0..50 {
        other.publish("calm", json!({"seq": n})).await?;
    }
    assert_eq!(other.recv_messages("calm", 50, STEP).await?.len(), 50);
    // The flooder's connection survived its refusals.
    assert_eq!(
        flooder.request(json!({"type": "ping"})).await?["type"],
        "pong"
    );
    Ok(())
}

/// 4. 1,000 half-open TCP connections that never finish their request are dropped after the
/// handshake timeout, with bounded memory; well-behaved clients are served meanwhile.
#[tokio::test]
async fn half_open_connections_are_dropped() -> Result<()> {
    const HALF_OPEN: usize = 1_000;
    let setup = setup(
        Backend::Embedded,
        &[
            "--handshake-timeout-ms",
            "1500",
            "--max-connections-per-ip",
            "1100",
        ],
    )
    .await?;
    let pid = setup.server.pid();
    let before = rss_kib(pid)?;
    let mut sockets = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        let mut s = TcpStream::connect(setup.server.addr()).await?;
        if i % 2 == 0 {
            // Half a request head, never finished.
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await?;
        }
        sockets.push(s);
    }
    let during = rss_kib(pid)?;
    // A well-behaved client still gets service.
    let mut good = client(&setup.server).await?;
    assert_eq!(good.request(json!({"type": "ping"})).await?["type"], "pong");
    // All half-open connections get closed by the server.
    let mut closed = 0;
    for mut s in sockets {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, HALF_OPEN, "every half-open connection is dropped");
    let per_conn = (during.saturating_sub(before)) * 1024 / HALF_OPEN as u64;
    println!("RSS {before} KiB before, {during} KiB with {HALF_OPEN} half-open connections ({per_conn} B each)");
    ensure!(
        per_conn < 64 * 1024,
        "{per_conn} bytes per half-open connection"
    );
    assert_eq!(good.request(json!({"type": "ping"})).await?["type"], "pong");
    Ok(())
}

/// Connections beyond the per-IP limit are refused with 429 while the others are served.
#[tokio::test]
async fn connections_per_ip_are_limited() -> Result<()> {
    let setup = setup(Backend::Embedded, &["--max-connections-per-ip", "20"]).await?;
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(client(&setup.server).await?);
    }
    let mut last = client(&setup.server).await?;
    let mut over = TcpStream::connect(setup.server.addr()).await?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(STEP, over.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    ensure!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(last.request(json!({"type": "ping"})).await?["type"], "pong");
    drop(held);
    // Slots are released as connections close.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(mut c) = client(&setup.server).await {
            if c.request(json!({"type": "ping"})).await.is_ok() {
                again = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        again.is_some(),
        "closed connections did not free their slots"
    );
    Ok(())
}

/// The library hook replaces the default policy (the Node.js package's "Restricting channels").
#[tokio::test]
async fn authorization_hook_replaces_the_policy() -> Result<()> {
    use redistribute_server::{Action, AuthContext, Denied};
    let (addr, shutdown, server) =
        serve_with_hook(|_ctx: &AuthContext, action: Action<'_>| match action {
            Action::Publish {
                channel: "announcements",
                fields,
            } => {
                if fields.contains_key("signed") {
                    Ok(())
                } else {
                    Err(Denied::forbidden("announcements must be signed"))
                }
            }
            _ => Ok(()),
        })
        .await?;
    let mut c = WsClient::connect(&format!("ws://{addr}/ws")).await?;
    let reply = c
        .request(json!({"type": "publish", "channel": "announcements", "fields": {"text": "hi"}}))
        .await?;
    assert_eq!(reply["code"], "forbidden");
    assert_eq!(reply["message"], "announcements must be signed");
    let reply = c
        .request(json!({"type": "publish", "channel": "announcements", "fields": {"signed": true}}))
        .await?;
    assert_eq!(reply["type"], "published");
    shutdown.cancel();
    tokio::time::timeout(STEP, server).await???;
    Ok(())
}

/// The library hook is consulted on every path that subscribes, publishes, acknowledges or
/// reads history: WebSocket, SSE, long-poll, a client's `POST /publish`, task poll and watch,
/// and the back-end API.
#[tokio::test]
async fn authorization_hook_is_consulted_on_every_path() -> Result<()> {
    use redistribute_server::{Action, AuthContext, Denied};
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let (addr, shutdown, server) = serve_with_hook(move |ctx: &AuthContext, action: Action<'_>| {
        let (kind, channel) = match action {
            Action::Subscribe { channel } => ("subscribe", channel),
            Action::Publish { channel, .. } => ("publish", channel),
            Action::History { channel } => ("history", channel),
            Action::Ack { channel, .. } => ("ack", channel),
            _ => ("other", ""),
        };
        record
            .lock()
            .unwrap()
            .push(format!("{} {kind} {channel}", ctx.transport));
        if channel.contains("deny") {
            Err(Denied::forbidden("denied by the hook"))
        } else {
            Ok(())
        }
    })
    .await?;

    let mut c = WsClient::connect(&format!("ws://{addr}/ws")).await?;
    for frame in [
        json!({"type": "subscribe", "channel": "deny:a"}),
        json!({"type": "publish", "channel": "deny:a", "fields": {"x": 1}}),
        json!({"type": "ack", "channel": "deny:a", "group": "g", "offsets": ["1-0"]}),
    ] {
        let reply = c.request(frame.clone()).await?;
        assert_eq!(reply["code"], "forbidden", "{frame} -> {reply}");
        assert_eq!(reply["message"], "denied by the hook", "{frame} -> {reply}");
    }
    let publish = json!({"channel": "deny:a", "fields": {"x": 1}}).to_string();
    let requests = [
        ("GET", "/sse?channel=deny:a", ""),
        ("GET", "/poll?channel=deny:a&timeout=0", ""),
        ("GET", "/task/deny", ""),
        ("GET", "/task/deny?watch", ""),
        ("POST", "/api/publish", publish.as_str()),
        ("POST", "/publish", publish.as_str()),
        ("GET", "/api/history?channel=deny:a", ""),
    ];
    for (method, path, body) in requests {
        let r = redistribute_testkit::http_request(addr, method, path, &[], body.as_bytes(), STEP)
            .await?;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        let error = &r.json()?["error"];
        assert_eq!(error["code"], "forbidden", "{path}");
        assert_eq!(error["message"], "denied by the hook", "{path}");
    }
    // Nothing was written past the refusals.
    let r = redistribute_testkit::http_get(addr, "/api/history?channel=allowed", STEP).await?;
    assert_eq!(r.status, 200);
    let seen = seen.lock().unwrap().clone();
    for expected in [
        "ws subscribe deny:a",
        "ws publish deny:a",
        "ws ack deny:a",
        "sse subscribe deny:a",
        "poll subscribe deny:a",
        "task history task:deny",
        "task subscribe task:deny",
        "api publish deny:a",
        "http publish deny:a",
        "api history deny:a",
        "api history allowed",
    ] {
        ensure!(
            seen.iter().any(|s| s == expected),
            "the hook never saw {expected:?}: {seen:?}"
        );
    }
    shutdown.cancel();
    tokio::time::timeout(STEP, server).await???;
    Ok(())
}
