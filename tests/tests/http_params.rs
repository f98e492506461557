//! Numeric query parameters and headers of the HTTP paths, at and past each bound, against the
//! real binary: every bad value is a `400 bad_request` JSON error naming the parameter (never a
//! panic or a reset connection), and documented maxima are enforced.

mod common;

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use common::{client, setup, Backend, STEP};
use redistribute_testkit::{http_get, http_request, HttpResponse, HttpStream};
use serde_json::{json, Value};

/// `r` is `400` with `{"error":{"code":"bad_request","message":…}}` mentioning `needle`.
fn assert_bad_request(r: &HttpResponse, what: &str, needle: &str) -> Result<()> {
    ensure!(r.status == 400, "{what}: status {} {}", r.status, r.text());
    let body = r.json()?;
    ensure!(body["error"]["code"] == "bad_request", "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains(needle),
        "{what}: {message:?} lacks {needle:?}"
    );
    Ok(())
}

/// Values no numeric parameter accepts.
const NOT_NUMBERS: &[&str] = &[
    "", "%20", "abc", "-1", "-0.5", "+5", "%2B5", "NaN", "nan", "inf", "-inf", "infinity", "1e3",
    "2e19", "1e400", "0x10", "1_0", "1%2C5", "5s", "1.", ".5",
];

/// `/poll?timeout=`: plain decimal seconds, capped at the maximum; anything else is 400.
#[tokio::test]
async fn poll_timeout_bounds() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let addr = setup.server.addr();
    for bad in NOT_NUMBERS
        .iter()
        .copied()
        .chain(["99999999999999999999999999999999999"])
    {
        let path = format!("/poll?channel=t&timeout={bad}");
        let r = http_get(addr, &path, STEP).await?;
        assert_bad_request(&r, &path, "timeout")?;
    }
    // At zero it answers at once; past the maximum (however far) it is capped, not refused:
    // with a message waiting, each answers with it at once.
    let mut c = client(&setup.server).await?;
    let offset = c.publish("t", json!({"n": 1})).await?;
    for ok in [
        "0",
        "0.0",
        "0.001",
        "120",
        "120.5",
        "2000000",
        "20000000000000000000",
    ] {
        let path = format!("/poll?channel=t&offset=0&timeout={ok}");
        let r = http_get(addr, &path, STEP).await?;
        ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
        assert_eq!(r.json()?["messages"][0]["offset"], offset, "{path}");
    }
    Ok(())
}

/// `/api/history?limit=`: 1 to 1000; anything else is 400.
#[tokio::test]
async fn history_limit_bounds() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let addr = setup.server.addr();
    let mut c = client(&setup.server).await?;
    for n in 0..3 {
        c.publish("h", json!({ "n": n })).await?;
    }
    for bad in NOT_NUMBERS
        .iter()
        .copied()
        .chain(["0", "1001", "1.5", "18446744073709551616"])
    {
        let path = format!("/api/history?channel=h&limit={bad}");
        let r = http_get(addr, &path, STEP).await?;
        assert_bad_request(&r, &path, "limit")?;
    }
    for (limit, count) in [("1", 1), ("2", 2), ("1000", 3)] {
        let path = format!("/api/history?channel=h&limit={limit}");
        let r = http_get(addr, &path, STEP).await?;
        ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
        let body = r.json()?;
        let got = body["messages"].as_array().context("messages")?.len();
        assert_eq!(got, count, "{path}: {body}");
    }
    Ok(())
}

/// `reverse=` (history) and `stats=` (presence): `true` or `false`, anything else is 400 naming
/// the parameter; `false` and an absent flag answer alike.
#[tokio::test]
async fn boolean_flags_are_true_or_false() -> Result<()> {
    let setup = setup(Backend::Embedded, &["--presence-channels", "room:*"]).await?;
    let addr = setup.server.addr();
    let mut c = client(&setup.server).await?;
    let first = c.publish("h", json!({ "n": 0 })).await?;
    let last = c.publish("h", json!({ "n": 1 })).await?;
    for (route, flag) in [
        ("/api/history?channel=h", "reverse"),
        ("/api/presence?channel=room:1", "stats"),
    ] {
        for bad in ["", "1", "0", "yes", "TRUE", "True", "true%20", "%00"] {
            let path = format!("{route}&{flag}={bad}");
            let r = http_get(addr, &path, STEP).await?;
            assert_bad_request(&r, &path, flag)?;
        }
        let plain = http_get(addr, route, STEP).await?;
        let off = http_get(addr, &format!("{route}&{flag}=false"), STEP).await?;
        ensure!(
            plain.status == 200 && off.status == 200,
            "{route}: {} {}",
            plain.text(),
            off.text()
        );
        ensure!(
            plain.json()? == off.json()?,
            "{route}: {flag}=false differs from absent"
        );
    }
    let newest = http_get(addr, "/api/history?channel=h&reverse=true&limit=1", STEP).await?;
    let body = newest.json()?;
    ensure!(
        body["messages"][0]["offset"] == last.as_str(),
        "reverse: {body}"
    );
    let oldest = http_get(addr, "/api/history?channel=h&limit=1", STEP).await?;
    ensure!(
        oldest.json()?["messages"][0]["offset"] == first.as_str(),
        "forward"
    );
    Ok(())
}

async fn sse_status(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<u16> {
    Ok(HttpStream::open(addr, path, headers, STEP).await?.status)
}

/// `Last-Event-ID` (header or `last_event_id=`): one strict offset per channel; a header that is
/// not text, a malformed or overflowing offset, or the wrong count is 400, never a silent
/// restart at `$`.
#[tokio::test]
async fn sse_last_event_id_bounds() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let addr = setup.server.addr();
    let path = "/sse?channel=a&channel=b";
    let max = "18446744073709551615";
    for bad in [
        "x",
        "1-0",
        "1-0,2-0,3-0",
        "1-0,",
        ",1-0",
        "1-0;2-0",
        "-1-0,1-0",
        "1-0,18446744073709551616-0",
        "1-0,1-18446744073709551616",
        "1e3-0,1-0",
        "NaN-0,1-0",
        "1-0, 2-0",
        "1-0,2-0\u{e9}",
    ] {
        let status = sse_status(addr, path, &[("Last-Event-ID", bad)]).await?;
        assert_eq!(status, 400, "Last-Event-ID {bad:?}");
    }
    for bad in ["x", "1-0", "1-0,18446744073709551616-0"] {
        let query = format!("{path}&last_event_id={bad}");
        let r = http_get(addr, &query, STEP).await?;
        assert_bad_request(&r, &query, "Last-Event-ID")?;
    }
    // At the bounds: the largest offsets, zero, and an empty id (no resume point) open.
    for ok in [format!("{max}-{max},0-0"), "0-0,0-0".into(), String::new()] {
        let status = sse_status(addr, path, &[("Last-Event-ID", &ok)]).await?;
        assert_eq!(status, 200, "Last-Event-ID {ok:?}");
    }
    Ok(())
}

/// `POST /api/publish`'s numeric `maxlen`: a positive integer; 0, negative, fractional,
/// exponent or string values are 400, the largest integer is accepted.
async fn publish_maxlen_bounds(backend: Backend) -> Result<()> {
    let setup = setup(backend, &[]).await?;
    let addr = setup.server.addr();
    let publish = |maxlen: Value| {
        let body = json!({"channel": "m", "fields": {"n": 1}, "maxlen": maxlen}).to_string();
        async move { http_request(addr, "POST", "/api/publish", &[], body.as_bytes(), STEP).await }
    };
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e30),
        json!("5"),
        json!(18446744073709551616.0),
    ] {
        let r = publish(bad.clone()).await?;
        assert_bad_request(&r, &format!("maxlen {bad}"), "maxlen")?;
    }
    for ok in [json!(1), json!(u64::MAX)] {
        let r = publish(ok.clone()).await?;
        ensure!(r.status == 200, "maxlen {ok}: {} {}", r.status, r.text());
    }
    Ok(())
}

/// `maxlen` bounds on Redis.
#[tokio::test]
async fn publish_maxlen_bounds_redis() -> Result<()> {
    publish_maxlen_bounds(Backend::Redis).await
}

/// `maxlen` bounds on the embedded engine (`u64::MAX` overflowed its trim arithmetic).
#[tokio::test]
async fn publish_maxlen_bounds_embedded() -> Result<()> {
    publish_maxlen_bounds(Backend::Embedded).await
}
