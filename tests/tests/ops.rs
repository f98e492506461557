//! Operations (issue 11, "Must show"): metrics move with traffic, readiness, a drain that moves
//! every client to the other instance without loss, the live status page in headless Chromium,
//! and configuration errors that name the key.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{client, publish_seq, setup, start_server, Backend, STEP};
use futures_util::StreamExt;
use redistribute_client::Client;
use redistribute_protocol::Offset;
use redistribute_testkit::{http_get, server_binary, RedisServer, WsClient};
use serde_json::json;

/// The value of a metric line (summing all label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 1. `/metrics` counters move as messages flow.
#[tokio::test]
async fn metrics_move_with_traffic() -> Result<()> {
    let setup = setup(Backend::Redis, &[]).await?;
    let addr = setup.server.addr();
    let mut sub = client(&setup.server).await?;
    sub.subscribe("metered", None).await?;
    let mut publisher = client(&setup.server).await?;
    publish_seq(&mut publisher, "metered", 0..20).await?;
    sub.recv_messages("metered", 20, STEP).await?;
    let first = http_get(addr, "/metrics", STEP).await?;
    assert_eq!(first.status, 200);
    let first = first.text();
    ensure!(
        metric(&first, "redistribute_messages_published_total") >= 20.0,
        "{first}"
    );
    ensure!(
        metric(&first, "redistribute_messages_delivered_total") >= 20.0,
        "{first}"
    );
    ensure!(metric(&first, "redistribute_connections") >= 2.0, "{first}");
    ensure!(metric(&first, "redistribute_channels") >= 1.0, "{first}");
    ensure!(
        metric(&first, "redistribute_engine_readers") >= 1.0,
        "{first}"
    );
    ensure!(
        metric(&first, "redistribute_engine_op_seconds_count") >= 20.0,
        "{first}"
    );
    let bad = publisher
        .request(json!({"type": "subscribe", "channel": "bad name"}))
        .await?;
    assert_eq!(bad["code"], "bad_request");
    publish_seq(&mut publisher, "metered", 20..30).await?;
    sub.recv_messages("metered", 10, STEP).await?;
    let second = http_get(addr, "/metrics", STEP).await?.text();
    assert_eq!(
        metric(&second, "redistribute_messages_published_total"),
        metric(&first, "redistribute_messages_published_total") + 10.0
    );
    ensure!(
        metric(&second, "redistribute_messages_delivered_total")
            >= metric(&first, "redistribute_messages_delivered_total") + 10.0
    );
    ensure!(
        metric(&second, "redistribute_errors_total") >= 1.0,
        "{second}"
    );
    Ok(())
}

/// `/readyz` answers 200 while Redis answers and 503 when it does not.
#[tokio::test]
async fn readiness_follows_the_engine() -> Result<()> {
    let mut setup = setup(Backend::Redis, &["--request-timeout-ms", "1000"]).await?;
    let addr = setup.server.addr();
    assert_eq!(http_get(addr, "/readyz", STEP).await?.status, 200);
    assert_eq!(http_get(addr, "/healthz", STEP).await?.status, 200);
    setup.redis.as_mut().unwrap().stop().await?;
    assert_eq!(http_get(addr, "/readyz", STEP).await?.status, 503);
    assert_eq!(http_get(addr, "/healthz", STEP).await?.status, 200);
    Ok(())
}

/// 2. Drain: 200 native clients receiving a stream from instance A; SIGTERM on A: every
/// client ends on B with no message lost or duplicated, and A exits 0 before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_client_to_the_other_instance() -> Result<()> {
    const CLIENTS: usize = 200;
    const TOTAL: u64 = 400;
    let redis = RedisServer::start().await?;
    let mut a = start_server(Some(&redis), &["--drain-timeout-ms", "8000"]).await?;
    let b = start_server(Some(&redis), &[]).await?;
    let mut collectors = Vec::new();
    for _ in 0..CLIENTS {
        let client = Client::builder()
            .targets([a.ws_url(), b.ws_url()])
            .backoff(Duration::from_millis(20), Duration::from_millis(500))
            .connect()
            .await?;
        let mut sub = client.subscribe("drain", Offset::Latest).await?;
        collectors.push(tokio::spawn(async move {
            let _client = client;
            let mut seqs = Vec::with_capacity(TOTAL as usize);
            while (seqs.len() as u64) < TOTAL {
                let message = tokio::time::timeout(Duration::from_secs(60), sub.next())
                    .await
                    .context("no message for 60 s")?
                    .context("subscription ended")?;
                seqs.push(message.fields["seq"].as_u64().context("seq")?);
            }
            anyhow::Ok(seqs)
        }));
    }
    let b_url = b.ws_url();
    let publisher = tokio::spawn(async move {
        let mut p = WsClient::connect(&b_url).await?;
        for chunk in 0..TOTAL / 20 {
            publish_seq(&mut p, "drain", chunk * 20..(chunk + 1) * 20).await?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.terminate()?;
    let status = a.wait_exit(Duration::from_secs(15)).await?;
    ensure!(
        status.success(),
        "instance A exited with {status}: {}",
        a.logs()
    );
    publisher.await??;
    for (i, collector) in collectors.into_iter().enumerate() {
        let seqs = collector.await??;
        ensure!(
            seqs == (0..TOTAL).collect::<Vec<_>>(),
            "client {i} got a different sequence (len {})",
            seqs.len()
        );
    }
    Ok(())
}

/// 3. The live status page in headless Chromium shows non-empty charts while traffic flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_draws_live_charts() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let url = setup.server.ws_url();
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sub = WsClient::connect(&url).await?;
            sub.subscribe("busy", None).await?;
            let mut p = WsClient::connect(&url).await?;
            let mut seq = 0;
            while !stop.is_cancelled() {
                publish_seq(&mut p, "busy", seq..seq + 20).await?;
                seq += 20;
                sub.recv_messages("busy", 20, STEP).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        })
    };
    let page = format!("http://{}/status", setup.server.addr());
    let profile = tempfile::tempdir()?;
    let shot = profile.path().join("status.png");
    let run = |extra: Vec<String>| {
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=6000".into(),
            "--window-size=1000,700".into(),
        ];
        args.extend(extra);
        args.push(page.clone());
        tokio::process::Command::new("/usr/bin/chromium")
            .args(args)
            .output()
    };
    let dom =
        tokio::time::timeout(Duration::from_secs(60), run(vec!["--dump-dom".into()])).await??;
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let shot_run = tokio::time::timeout(
        Duration::from_secs(60),
        run(vec![format!("--screenshot={}", shot.display())]),
    )
    .await??;
    stop.cancel();
    traffic.await??;
    let attr = |id: &str, name: &str| -> Option<f64> {
        let start = dom.find(&format!("id=\"{id}\""))?;
        let tag = &dom[start..start + dom[start..].find('>')?];
        let key = format!("data-{name}=\"");
        let at = tag.find(&key)? + key.len();
        tag[at..at + tag[at..].find('"')?].parse().ok()
    };
    let samples = attr("connections", "samples").context("no samples on the chart")?;
    ensure!(samples >= 2.0, "only {samples} samples: {dom}");
    ensure!(attr("connections", "last").unwrap_or(0.0) >= 2.0, "{dom}");
    ensure!(attr("channels", "max").unwrap_or(0.0) >= 1.0, "{dom}");
    let moving = attr("in_rate", "max").unwrap_or(0.0) + attr("out_rate", "max").unwrap_or(0.0);
    ensure!(moving > 0.0, "the rate charts stayed flat: {dom}");
    let png = std::fs::metadata(&shot).with_context(|| {
        format!(
            "no screenshot: {}",
            String::from_utf8_lossy(&shot_run.stderr)
        )
    })?;
    ensure!(png.len() > 5_000, "screenshot of {} bytes", png.len());
    Ok(())
}

/// 4. Bad config values exit non-zero naming the key; `check-config` prints the effective
/// configuration.
#[tokio::test]
async fn config_errors_name_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--config".into(),
                file("unknown.toml", "lisen = \"127.0.0.1:1\"\n")?,
            ],
            "lisen",
        ),
        (vec!["--listen".into(), "not-an-address".into()], "listen"),
        (
            vec![
                "--tls-cert".into(),
                "/nonexistent/cert.pem".into(),
                "--tls-key".into(),
                "/nonexistent/key.pem".into(),
            ],
            "tls_cert",
        ),
        (vec!["--redis".into(), "http://127.0.0.1:1".into()], "redis"),
        (vec!["--log-format".into(), "xml".into()], "log_format"),
    ];
    for (args, key) in cases {
        let mut all = vec!["serve".to_owned(), "--listen".into(), "127.0.0.1:0".into()];
        all.extend(args.clone());
        let output = tokio::time::timeout(
            STEP,
            tokio::process::Command::new(server_binary())
                .args(&all)
                .output(),
        )
        .await??;
        ensure!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            stderr.contains(key),
            "{args:?}: {key} not named in {stderr}"
        );
    }
    let good = file(
        "good.toml",
        "listen = \"127.0.0.1:9999\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n\
         allow_open_api = true\n",
    )?;
    let output = tokio::time::timeout(
        STEP,
        tokio::process::Command::new(server_binary())
            .args(["check-config", &good])
            .output(),
    )
    .await??;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(printed.contains("127.0.0.1:9999"), "{printed}");
    ensure!(
        !printed.contains("0123456789abcdef0123456789abcdef"),
        "secret printed: {printed}"
    );
    Ok(())
}
