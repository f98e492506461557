//! The HTTP transports against the real binary and real Redis (issue 7, "Must show"): SSE
//! resume across a server restart, long-polling, task watches, and the back-end API.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::sse::EventSource;
use common::{client, publish_seq, setup, start_server, Backend, STEP};
use redistribute_server::sign_task_id;
use redistribute_testkit::{http_get, http_request, HttpStream, RedisServer, WsClient};
use serde_json::{json, Value};
use tokio::time::Instant;

const API_KEY: &str = "test-key-0123456789";

/// 1. SSE through a spec-following EventSource client: the server is killed and restarted
/// mid-stream; the reconnect with `Last-Event-ID` delivers everything exactly once.
#[tokio::test]
async fn sse_resumes_across_a_server_restart() -> Result<()> {
    const TOTAL: u64 = 1_000;
    let redis = RedisServer::start().await?;
    let mut a = start_server(Some(&redis), &["--sse-heartbeat-secs", "1"]).await?;
    let b = start_server(Some(&redis), &[]).await?;
    let mut es = EventSource::connect(a.addr(), "/sse?channel=news&channel=other").await?;

    let b_url = b.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = WsClient::connect(&b_url).await?;
        for chunk in 0..TOTAL / 50 {
            publish_seq(&mut p, "news", chunk * 50..(chunk + 1) * 50).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    });

    let mut seqs = Vec::new();
    let mut restarted = false;
    while (seqs.len() as u64) < TOTAL {
        let event = es.next_event(Duration::from_secs(30)).await?;
        ensure!(event.event == "message", "unexpected event {event:?}");
        let data: Value = serde_json::from_str(&event.data)?;
        assert_eq!(data["channel"], "news");
        seqs.push(data["fields"]["seq"].as_u64().context("seq")?);
        if !restarted && seqs.len() == 300 {
            a.kill().await?;
            a.restart().await?;
            restarted = true;
        }
    }
    publisher.await??;
    assert_eq!(
        seqs,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
    ensure!(es.reconnects >= 1, "the client never had to reconnect");
    Ok(())
}

/// SSE answers bad input with JSON errors, and sends gap events for trimmed history.
#[tokio::test]
async fn sse_rejects_bad_requests() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let addr = setup.server.addr();
    for path in [
        "/sse",
        "/sse?channel=bad%20name",
        "/sse?channel=a&offset=nope",
    ] {
        let r = http_get(addr, path, STEP).await?;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()?["error"]["code"], "bad_request");
    }
    let stream = HttpStream::open(
        addr,
        "/sse?channel=a&channel=b",
        &[("Last-Event-ID", "1-0")],
        STEP,
    )
    .await?;
    assert_eq!(stream.status, 400, "a token must name every channel");
    Ok(())
}

async fn poll(addr: std::net::SocketAddr, query: &str) -> Result<Value> {
    let r = http_get(addr, &format!("/poll?{query}"), Duration::from_secs(60)).await?;
    ensure!(r.status == 200, "poll {query}: {} {}", r.status, r.text());
    assert_eq!(r.header("x-reconnect-in"), Some("0"));
    r.json()
}

/// 2. Long-poll: 2,000 messages consumed by a loop of polls while publishing continues, none
/// lost or duplicated.
#[tokio::test]
async fn long_poll_loop_consumes_everything() -> Result<()> {
    const TOTAL: u64 = 2_000;
    let setup = setup(Backend::Redis, &[]).await?;
    let addr = setup.server.addr();
    // A poll with no wait tells the current tip.
    let first = poll(addr, "channel=lp&timeout=0").await?;
    let mut offset = first["offsets"]["lp"]
        .as_str()
        .context("offsets")?
        .to_owned();

    let url = setup.server.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = WsClient::connect(&url).await?;
        for chunk in 0..TOTAL / 100 {
            publish_seq(&mut p, "lp", chunk * 100..(chunk + 1) * 100).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    });
    let mut seqs = Vec::new();
    let mut polls = 0;
    while (seqs.len() as u64) < TOTAL {
        let body = poll(addr, &format!("channel=lp&offset={offset}&timeout=10")).await?;
        polls += 1;
        for m in body["messages"].as_array().context("messages")? {
            assert_eq!(m["channel"], "lp");
            seqs.push(m["fields"]["seq"].as_u64().context("seq")?);
        }
        offset = body["offsets"]["lp"]
            .as_str()
            .context("offsets")?
            .to_owned();
    }
    publisher.await??;
    assert_eq!(seqs, (0..TOTAL).collect::<Vec<_>>());
    println!("{TOTAL} messages in {polls} polls");
    Ok(())
}

/// 2. An idle poll answers after its timeout with no messages; a newer poll with the same
/// `client_id` ends the older one with 409 `replaced`; several channels poll at once.
#[tokio::test]
async fn long_poll_timeout_replacement_and_channels() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let addr = setup.server.addr();
    let started = Instant::now();
    let idle = poll(addr, "channel=quiet&timeout=1").await?;
    assert_eq!(idle["messages"], json!([]));
    ensure!(
        started.elapsed() >= Duration::from_millis(900),
        "answered too early"
    );

    let older = tokio::spawn(async move {
        http_get(addr, "/poll?channel=held&client_id=tab-1&timeout=30", STEP).await
    });
    // Let the older poll get held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = tokio::spawn(async move {
        http_get(addr, "/poll?channel=held&client_id=tab-1&timeout=1", STEP).await
    });
    let older = older.await??;
    assert_eq!(older.status, 409, "{}", older.text());
    assert_eq!(older.json()?["error"]["code"], "replaced");
    assert_eq!(newer.await??.status, 200);

    let mut c = client(&setup.server).await?;
    let offset = c.publish("two", json!({"n": 1})).await?;
    let body = poll(addr, "channel=one&channel=two&offset=0").await?;
    assert_eq!(body["messages"][0]["channel"], "two");
    assert_eq!(body["offsets"]["two"], offset);
    assert_eq!(body["offsets"]["one"], "0-0");
    Ok(())
}

/// 2. JSONP only when enabled.
#[tokio::test]
async fn jsonp_only_when_enabled() -> Result<()> {
    let off = setup(Backend::Embedded, &[]).await?;
    let r = http_get(
        off.server.addr(),
        "/poll?channel=j&timeout=0&callback=cb",
        STEP,
    )
    .await?;
    assert_eq!(r.status, 400);
    let on = setup(Backend::Embedded, &["--jsonp"]).await?;
    let r = http_get(
        on.server.addr(),
        "/poll?channel=j&timeout=0&callback=cb",
        STEP,
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/javascript"));
    let text = r.text();
    ensure!(
        text.starts_with("/**/cb({") && text.ends_with("});"),
        "{text}"
    );
    let r = http_get(
        on.server.addr(),
        "/poll?channel=j&timeout=0&callback=a(b)",
        STEP,
    )
    .await?;
    assert_eq!(r.status, 400);
    Ok(())
}

/// CORS: configured origins get the headers (and preflights), others do not.
#[tokio::test]
async fn cors_for_configured_origins_only() -> Result<()> {
    let setup = setup(
        Backend::Embedded,
        &["--allowed-origin", "https://app.example.com"],
    )
    .await?;
    let addr = setup.server.addr();
    let path = "/poll?channel=c&timeout=0";
    let r = http_request(
        addr,
        "GET",
        path,
        &[("Origin", "https://app.example.com")],
        b"",
        STEP,
    )
    .await?;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = http_request(
        addr,
        "GET",
        path,
        &[("Origin", "https://evil.example")],
        b"",
        STEP,
    )
    .await?;
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = http_request(
        addr,
        "OPTIONS",
        "/api/publish",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
        STEP,
    )
    .await?;
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    Ok(())
}

async fn publish_task(c: &mut WsClient, id: &str, status: &str) -> Result<String> {
    c.publish(&format!("task:{id}"), json!({"status": status}))
        .await
}

/// Reads a watch response until its JSON body, counting keepalive newlines before it.
async fn read_watch(mut stream: HttpStream, within: Duration) -> Result<(usize, Value)> {
    let deadline = Instant::now() + within;
    let mut body = Vec::new();
    while let Some(chunk) = stream
        .next_chunk(deadline.saturating_duration_since(Instant::now()))
        .await?
    {
        body.extend(chunk);
    }
    let text = String::from_utf8(body)?;
    let newlines = text.len() - text.trim_start_matches('\n').len();
    Ok((newlines, serde_json::from_str(text.trim())?))
}

/// 3. Task watch: immediate for a done task, waits for the next update with keepalives, a
/// second watch ends the first; poll gives the latest entry or 404.
#[tokio::test]
async fn task_watch_and_poll() -> Result<()> {
    let setup = setup(Backend::Redis, &["--task-keepalive-secs", "1"]).await?;
    let addr = setup.server.addr();
    let mut c = client(&setup.server).await?;

    let r = http_get(addr, "/task/none?poll", STEP).await?;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()?["error"]["code"], "not_found");

    publish_task(&mut c, "t1", "running").await?;
    let done = publish_task(&mut c, "t1", "done").await?;
    let r = http_get(addr, "/task/t1?poll", STEP).await?;
    assert_eq!(r.json()?["offset"], done);
    let started = Instant::now();
    let r = http_get(addr, "/task/t1?watch", STEP).await?;
    assert_eq!(r.json()?["fields"]["status"], "done");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "a done task must answer at once"
    );

    publish_task(&mut c, "t2", "running").await?;
    let watch = HttpStream::open(addr, "/task/t2?watch", &[], STEP).await?;
    assert_eq!(watch.status, 200);
    let reader = tokio::spawn(read_watch(watch, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let update = publish_task(&mut c, "t2", "done").await?;
    let (newlines, body) = reader.await??;
    assert_eq!(body["offset"], update);
    assert_eq!(body["fields"]["status"], "done");
    ensure!(newlines >= 1, "no keepalive while waiting");

    publish_task(&mut c, "t3", "queued").await?;
    let first = HttpStream::open(addr, "/task/t3?watch", &[], STEP).await?;
    let first = tokio::spawn(read_watch(first, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = HttpStream::open(addr, "/task/t3?watch", &[], STEP).await?;
    let (_, ended) = first.await??;
    assert_eq!(ended["error"]["code"], "replaced");
    let second = tokio::spawn(read_watch(second, Duration::from_secs(30)));
    publish_task(&mut c, "t3", "done").await?;
    assert_eq!(second.await??.1["fields"]["status"], "done");
    Ok(())
}

/// 3. With a task secret, unsigned or badly signed ids are rejected; signed ones work.
#[tokio::test]
async fn task_ids_must_be_signed_when_a_secret_is_set() -> Result<()> {
    let secret = "task-secret-0123456789";
    let setup = setup(Backend::Embedded, &["--task-secret", secret]).await?;
    let addr = setup.server.addr();
    let mut c = client(&setup.server).await?;
    publish_task(&mut c, "job9", "done").await?;
    let wrong_signature = sign_task_id("job8", secret).replace("job8", "job9");
    for bad in ["job9", "job9.abcd", &wrong_signature] {
        let r = http_get(addr, &format!("/task/{bad}?watch"), STEP).await?;
        assert_eq!(r.status, 403, "{bad}");
    }
    let signed = sign_task_id("job9", secret);
    let r = http_get(addr, &format!("/task/{signed}?watch"), STEP).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()?["fields"]["status"], "done");
    Ok(())
}

/// 5. The back-end API with and without a valid key.
#[tokio::test]
async fn api_publish_and_history_need_a_key() -> Result<()> {
    let setup = setup(Backend::Redis, &["--api-key", API_KEY]).await?;
    let addr = setup.server.addr();
    let body = json!({"channel": "api", "fields": {"n": 1}}).to_string();
    let r = http_request(addr, "POST", "/api/publish", &[], body.as_bytes(), STEP).await?;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()?["error"]["code"], "unauthorized");
    let r = http_request(
        addr,
        "POST",
        "/api/publish",
        &[("Authorization", "Bearer wrong-key-0123456789")],
        body.as_bytes(),
        STEP,
    )
    .await?;
    assert_eq!(r.status, 401);
    let bearer = format!("Bearer {API_KEY}");
    let mut offsets = Vec::new();
    for n in 0..3 {
        let body = json!({"channel": "api", "fields": {"n": n}}).to_string();
        let r = http_request(
            addr,
            "POST",
            "/api/publish",
            &[("Authorization", bearer.as_str())],
            body.as_bytes(),
            STEP,
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        offsets.push(r.json()?["offset"].as_str().context("offset")?.to_owned());
    }
    let r = http_request(
        addr,
        "POST",
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        b"{\"channel\":\"api\"}",
        STEP,
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.text());

    let r = http_request(addr, "GET", "/api/history?channel=api", &[], b"", STEP).await?;
    assert_eq!(r.status, 401);
    let path = format!("/api/history?channel=api&from={}&limit=10", offsets[0]);
    let r = http_request(addr, "GET", &path, &[("X-API-Key", API_KEY)], b"", STEP).await?;
    assert_eq!(r.status, 200);
    let body = r.json()?;
    let got: Vec<&Value> = body["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["offset"], offsets[1]);
    assert_eq!(got[1]["fields"]["n"], 2);
    assert_eq!(body["offsets"]["api"], offsets[2]);
    Ok(())
}

/// `GET /api/history` holds at most 1 MiB of messages (at least one), whatever the `limit`:
/// twelve 200 kB messages come as pages of 5, 5 and 2, paging on with the returned offset.
async fn history_is_bounded_by_bytes(backend: Backend) -> Result<()> {
    let setup = setup(backend, &["--api-key", API_KEY]).await?;
    let addr = setup.server.addr();
    let mut offsets = Vec::new();
    for n in 0..12 {
        let body = json!({"channel": "big", "fields": {"n": n, "v": "z".repeat(200_000)}});
        let r = http_request(
            addr,
            "POST",
            "/api/publish",
            &[("X-API-Key", API_KEY)],
            body.to_string().as_bytes(),
            STEP,
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        offsets.push(r.json()?["offset"].as_str().context("offset")?.to_owned());
    }
    let mut from = "0".to_string();
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    loop {
        let path = format!("/api/history?channel=big&from={from}&limit=1000");
        let r = http_request(addr, "GET", &path, &[("X-API-Key", API_KEY)], b"", STEP).await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json()?;
        let messages = body["messages"].as_array().context("messages")?;
        if messages.is_empty() {
            break;
        }
        ensure!(
            body.get("truncated").is_none(),
            "a gap in untrimmed history"
        );
        pages.push(messages.len());
        for m in messages {
            seen.push(m["offset"].as_str().context("offset")?.to_owned());
        }
        from = body["offsets"]["big"]
            .as_str()
            .context("offset")?
            .to_owned();
    }
    assert_eq!(seen, offsets, "every message once, in order");
    assert_eq!(pages, [5, 5, 2]);
    Ok(())
}

#[tokio::test]
async fn history_is_bounded_by_bytes_embedded() -> Result<()> {
    history_is_bounded_by_bytes(Backend::Embedded).await
}

#[tokio::test]
async fn history_is_bounded_by_bytes_redis() -> Result<()> {
    history_is_bounded_by_bytes(Backend::Redis).await
}
