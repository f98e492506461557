//! The listener's edge against the real binary: client addresses behind trusted proxies (per-IP
//! limits, logs and the authorization context use them; an untrusted peer's header is ignored),
//! the admin listener (operator endpoints there and not on the public listener), and the
//! request head limit (431).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{client, read_http_head, setup, Backend, STEP};
use redistribute_testkit::{free_port, http_get, http_request, server_binary, ServerProcess};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The trusted proxy of these tests; 127.0.0.2 plays an untrusted client.
const PROXY: &str = "127.0.0.1";
const UNTRUSTED: &str = "127.0.0.2";

/// A TCP connection to `addr` from the loopback address `src`.
async fn connect_from(src: &str, addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{src}:0").parse()?)?;
    let stream = tokio::time::timeout(STEP, socket.connect(addr)).await??;
    Ok(stream)
}

/// The status code of a response head.
fn status_of(head: &str) -> Result<u16> {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad head {head:?}"))
}

/// Reads one response (head and `Content-Length` body, if any) and returns its status and body.
async fn read_response(stream: &mut TcpStream) -> Result<(u16, String)> {
    let read = async {
        let mut buf = Vec::new();
        let head_end = read_http_head(stream, &mut buf).await?;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = status_of(&head)?;
        let len = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            ensure!(n > 0, "closed in the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
        ))
    };
    tokio::time::timeout(STEP, read).await?
}

/// Opens `GET /sse?channel=edge` from `src` with `X-Forwarded-For: xff` (when given) and
/// returns the status and the connection (an open stream holds its per-IP slot).
async fn open_sse(src: &str, addr: SocketAddr, xff: Option<&str>) -> Result<(u16, TcpStream)> {
    let mut stream = connect_from(src, addr).await?;
    let mut request = format!("GET /sse?channel=edge HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(xff) = xff {
        request.push_str(&format!("X-Forwarded-For: {xff}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, read_http_head(&mut stream, &mut buf)).await??;
    let status = status_of(&String::from_utf8_lossy(&buf))?;
    Ok((status, stream))
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A WebSocket from `src` with `X-Forwarded-For: xff`.
async fn ws_from(
    src: &str,
    addr: SocketAddr,
    xff: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>> {
    let stream = connect_from(src, addr).await?;
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("x-forwarded-for", xff.parse()?);
    let (ws, _) =
        tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream)).await??;
    Ok(ws)
}

/// Behind one trusted proxy, each client address gets its own per-IP limit (counted per
/// request, over shared keep-alive connections too, for as long as a stream or WebSocket
/// lasts); the proxy's own address is not limited; logs name the client; an untrusted peer's
/// forged header changes nothing.
#[tokio::test]
async fn clients_behind_a_trusted_proxy_get_their_own_limit() -> Result<()> {
    let args: Vec<String> = [
        "--trusted-proxy",
        PROXY,
        "--max-connections-per-ip",
        "2",
        "--publish-rate",
        "1000000",
    ]
    .map(String::from)
    .to_vec();
    let server = ServerProcess::start_with_env(
        &server_binary(),
        &args,
        &[("RUST_LOG", "redistribute_server=debug")],
    )
    .await?;
    let addr = server.addr();

    // Client A: a WebSocket and an SSE stream fill its limit of 2; a third is refused.
    let _a_ws = ws_from(PROXY, addr, "203.0.113.1").await?;
    let (status, a_sse) = open_sse(PROXY, addr, Some("198.51.100.7, 203.0.113.1")).await?;
    assert_eq!(status, 200);
    let (status, _) = open_sse(PROXY, addr, Some("203.0.113.1")).await?;
    assert_eq!(status, 429, "client A's third stream");
    // Client B behind the same proxy has its own limit, although the proxy holds more
    // connections than the limit.
    let (status, _b1) = open_sse(PROXY, addr, Some("203.0.113.2")).await?;
    assert_eq!(status, 200);
    let (status, _b2) = open_sse(PROXY, addr, Some("203.0.113.2")).await?;
    assert_eq!(status, 200, "client B's second stream");

    // One keep-alive connection carrying requests of several clients: A is refused, C is
    // served, on the same connection.
    let mut shared = connect_from(PROXY, addr).await?;
    for (xff, want) in [
        ("203.0.113.1", 429),
        ("203.0.113.3", 200),
        ("203.0.113.1", 429),
    ] {
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {xff}\r\n\r\n");
        shared.write_all(request.as_bytes()).await?;
        let (status, body) = read_response(&mut shared).await?;
        assert_eq!(status, want, "{xff}: {body}");
        if want == 429 {
            ensure!(body.contains("rate_limited"), "{body}");
        }
    }

    // A's slot comes back when its stream ends.
    drop(a_sse);
    let mut freed = false;
    for _ in 0..100 {
        let (status, _stream) = open_sse(PROXY, addr, Some("203.0.113.1")).await?;
        if status == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(freed, "client A's closed stream kept its slot");

    // An untrusted peer's forged headers are ignored: it is counted as itself.
    let (status, _u1) = open_sse(UNTRUSTED, addr, Some("192.0.2.10")).await?;
    assert_eq!(status, 200);
    let (status, _u2) = open_sse(UNTRUSTED, addr, Some("192.0.2.11")).await?;
    assert_eq!(status, 200);
    let mut third = connect_from(UNTRUSTED, addr).await?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(STEP, third.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    ensure!(answer.starts_with("HTTP/1.1 429"), "{answer}");

    // Logs name the client: the proxied one by the header, the untrusted one by its socket.
    let logs = strip_ansi(&server.logs());
    ensure!(
        logs.contains("peer=203.0.113.2:0"),
        "no log line names the proxied client:\n{logs}"
    );
    ensure!(
        logs.contains(&format!("peer={UNTRUSTED}:")),
        "no log line names the untrusted peer:\n{logs}"
    );
    ensure!(
        !logs.contains("192.0.2.10"),
        "a forged address reached the logs:\n{logs}"
    );
    Ok(())
}

/// The authorization context's `peer` is the client a trusted proxy names in `Forwarded`
/// (quoted IPv6 with a port), on WebSocket and long-poll; an untrusted peer's `Forwarded` and
/// the header not configured (`X-Forwarded-For`) are ignored.
#[tokio::test]
async fn the_authorization_context_sees_the_client() -> Result<()> {
    use redistribute_server::{Action, AuthContext};
    let peers: Arc<std::sync::Mutex<Vec<(String, SocketAddr)>>> = Arc::default();
    let seen = peers.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = redistribute_server::ConfigValues {
        trusted_proxy: Some(vec![format!("{PROXY}/32")]),
        client_ip_header: Some("forwarded".into()),
        ..Default::default()
    }
    .build()?;
    let app = redistribute_server::ServerBuilder::new(config)
        .authorize(move |ctx: &AuthContext, action: Action<'_>| {
            if let (Action::Subscribe { channel }, Some(peer)) = (action, ctx.peer) {
                seen.lock().unwrap().push((channel.to_owned(), peer));
            }
            Ok(())
        })
        .start(shutdown.clone())
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(redistribute_server::serve(listener, app));

    let subscribe_over_ws = |src: &'static str, header: (&'static str, &'static str), channel| async move {
        use futures_util::{SinkExt, StreamExt};
        let stream = connect_from(src, addr).await?;
        let mut request = format!("ws://{addr}/ws").into_client_request()?;
        request.headers_mut().insert(header.0, header.1.parse()?);
        let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        let frame = json!({"type": "subscribe", "id": 1, "channel": channel});
        ws.send(frame.to_string().into()).await?;
        let reply = tokio::time::timeout(STEP, ws.next())
            .await?
            .context("closed")??;
        ensure!(reply.to_text()?.contains("subscribed"), "{reply}");
        anyhow::Ok(())
    };
    subscribe_over_ws(
        PROXY,
        ("forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=http"#),
        "ws-proxied",
    )
    .await?;
    subscribe_over_ws(UNTRUSTED, ("forwarded", "for=203.0.113.66"), "ws-untrusted").await?;
    subscribe_over_ws(
        PROXY,
        ("x-forwarded-for", "203.0.113.67"),
        "ws-other-header",
    )
    .await?;
    let mut poll = connect_from(PROXY, addr).await?;
    poll.write_all(
        format!(
            "GET /poll?channel=poll-proxied&timeout=0 HTTP/1.1\r\nHost: {addr}\r\n\
             Forwarded: for=192.0.2.1, for=203.0.113.5\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let (status, body) = read_response(&mut poll).await?;
    assert_eq!(status, 200, "{body}");

    let peers = peers.lock().unwrap().clone();
    let peer_of = |channel: &str| {
        peers
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, p)| *p)
            .with_context(|| format!("no authorization for {channel}: {peers:?}"))
    };
    assert_eq!(peer_of("ws-proxied")?, "[2001:db8:cafe::17]:4711".parse()?);
    assert_eq!(peer_of("ws-untrusted")?.ip().to_string(), UNTRUSTED);
    assert_eq!(peer_of("ws-other-header")?.ip().to_string(), PROXY);
    assert_eq!(peer_of("poll-proxied")?, "203.0.113.5:0".parse()?);
    shutdown.cancel();
    tokio::time::timeout(STEP, server).await???;
    Ok(())
}

/// With `--admin-listen`, `/metrics` and `/status*` are served there and answer 404 on the
/// public listener; health and readiness answer on both; the admin listener serves nothing
/// else, sees the public listener's traffic, and stops with the server on SIGTERM.
#[tokio::test]
async fn admin_listener_serves_the_operator_endpoints() -> Result<()> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let mut setup = setup(Backend::Embedded, &["--admin-listen", &admin.to_string()]).await?;
    let public = setup.server.addr();
    let mut c = client(&setup.server).await?;
    assert_eq!(c.request(json!({"type": "ping"})).await?["type"], "pong");
    for path in ["/metrics", "/status", "/status.json"] {
        assert_eq!(
            http_get(public, path, STEP).await?.status,
            404,
            "public {path}"
        );
        assert_eq!(
            http_get(admin, path, STEP).await?.status,
            200,
            "admin {path}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            http_get(public, path, STEP).await?.status,
            200,
            "public {path}"
        );
        assert_eq!(
            http_get(admin, path, STEP).await?.status,
            200,
            "admin {path}"
        );
    }
    for path in [
        "/ws",
        "/sse?channel=c",
        "/poll?channel=c&timeout=0",
        "/api/history?channel=c",
    ] {
        assert_eq!(
            http_get(admin, path, STEP).await?.status,
            404,
            "admin {path}"
        );
    }
    let metrics = http_get(admin, "/metrics", STEP).await?.text();
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("redistribute_connections{") && !l.ends_with(" 0")),
        "the admin listener does not see the public WebSocket:\n{metrics}"
    );
    let status = http_get(admin, "/status.json", STEP).await?.json()?;
    ensure!(status["connections"].as_u64() >= Some(1), "{status}");

    setup.server.terminate()?;
    let exit = setup.server.wait_exit(STEP).await?;
    ensure!(exit.success(), "{exit}");
    ensure!(
        TcpStream::connect(admin).await.is_err(),
        "the admin listener outlived the server"
    );
    Ok(())
}

/// An admin address that cannot be bound stops the server with a message naming the key.
#[tokio::test]
async fn an_admin_address_in_use_is_named() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let admin = taken.local_addr()?.to_string();
    let mut server =
        ServerProcess::spawn(&server_binary(), &["--admin-listen".into(), admin], &[])?;
    let exit = server.wait_exit(STEP).await?;
    ensure!(!exit.success(), "started with its admin port taken");
    let logs = server.logs();
    ensure!(logs.contains("admin_listen"), "{logs}");
    Ok(())
}

/// A request head over `--max-header-bytes` (default 32 KiB) or with more than 100 header
/// fields is answered 431; a few KB of cookies pass; the flag raises the limit.
#[tokio::test]
async fn oversized_request_heads_get_431() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let addr = setup.server.addr();
    let status = |headers: Vec<(String, String)>, path: &'static str| async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        anyhow::Ok(
            http_request(addr, "GET", path, &headers, b"", STEP)
                .await?
                .status,
        )
    };
    let big = vec![("X-Big".to_owned(), "a".repeat(100_000))];
    assert_eq!(status(big.clone(), "/healthz").await?, 431);
    assert_eq!(
        status(big.clone(), "/ws").await?,
        431,
        "on a WebSocket upgrade"
    );
    let cookies = vec![(
        "Cookie".to_owned(),
        "session=".to_owned() + &"c".repeat(8_000),
    )];
    assert_eq!(status(cookies, "/healthz").await?, 200);
    let near = vec![("X-Near".to_owned(), "n".repeat(30_000))];
    assert_eq!(status(near, "/healthz").await?, 200, "just under 32 KiB");
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    assert_eq!(status(many, "/healthz").await?, 431);
    // The server is fine afterwards.
    assert_eq!(http_get(addr, "/healthz", STEP).await?.status, 200);

    let raised = ServerProcess::start(
        &server_binary(),
        &["--max-header-bytes".into(), "131072".into()],
    )
    .await?;
    let r = http_request(
        raised.addr(),
        "GET",
        "/healthz",
        &[("X-Big", &"a".repeat(100_000))],
        b"",
        STEP,
    )
    .await?;
    assert_eq!(r.status, 200, "with --max-header-bytes 131072");
    Ok(())
}
