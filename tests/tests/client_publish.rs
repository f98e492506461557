//! `POST /publish`, the clients' publish route (what the browser client publishes through
//! when it is on the SSE fallback), against the real binary on both engines: it authorizes
//! exactly like a WebSocket `publish` frame (a token's `publish` claim; open when
//! authentication is off), validates like it, and honours idempotency keys.

mod common;

use anyhow::{Context, Result};
use common::{jwt, setup, Backend, STEP};
use redistribute_testkit::{http_request, ServerProcess, WsClient};
use serde_json::{json, Value};

const SECRET: &str = "client-publish-secret-of-at-least-32-bytes";
const API_KEY: &str = "client-publish-api-key-0123";

/// `POST /publish` with `body` and `headers`: the status and the JSON body.
async fn post(
    server: &ServerProcess,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Value)> {
    let r = http_request(
        server.addr(),
        "POST",
        "/publish",
        headers,
        body.as_bytes(),
        STEP,
    )
    .await?;
    let json = r
        .json()
        .with_context(|| format!("body of {}: {}", r.status, r.text()))?;
    Ok((r.status, json))
}

/// The error code of an error body.
fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// Open server: anyone publishes (as on `/ws`); a repeated idempotency key returns the first
/// offset and stores once; bad input is `400 bad_request` or `413 too_large`, never stored.
async fn open_server_publishes_and_validates(backend: Backend) -> Result<()> {
    let setup = setup(backend, &[]).await?;
    let server = &setup.server;
    let mut ws = WsClient::connect(&server.ws_url()).await?;
    let sub = ws
        .request(json!({"type":"subscribe","id":1,"channel":"room","offset":"0"}))
        .await?;
    assert_eq!(sub["type"], "subscribed", "{sub}");

    let (status, body) = post(server, &[], r#"{"channel":"room","fields":{"n":1}}"#).await?;
    assert_eq!(status, 200, "{body}");
    let first = body["offset"].as_str().context("offset")?.to_owned();

    let keyed = r#"{"channel":"room","fields":{"n":2},"idempotency_key":"k-1"}"#;
    let (status, a) = post(server, &[], keyed).await?;
    assert_eq!(status, 200, "{a}");
    let (status, b) = post(server, &[], keyed).await?;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        a["offset"], b["offset"],
        "a repeated key returns the first offset"
    );
    assert_ne!(a["offset"].as_str(), Some(first.as_str()));

    // Over the entry limit, and over the request body limit.
    let big = json!({"channel":"room","fields":{"x":"y".repeat(1536 << 10)}}).to_string();
    let huge = json!({"channel":"room","fields":{"x":"y".repeat(3 << 20)}}).to_string();
    for (bad, want) in [
        ("not json", "bad_request"),
        ("[1,2]", "bad_request"),
        (r#"{"channel":"room"}"#, "bad_request"),
        (
            r#"{"channel":"bad channel","fields":{"n":0}}"#,
            "bad_request",
        ),
        (r#"{"channel":"room","fields":"text"}"#, "bad_request"),
        (
            r#"{"channel":"room","fields":{"n":0},"maxlen":-1}"#,
            "bad_request",
        ),
        (big.as_str(), "too_large"),
        (huge.as_str(), "too_large"),
    ] {
        let (status, body) = post(server, &[], bad).await?;
        assert!(status == 400 || status == 413, "{bad:.40}: {status} {body}");
        assert_eq!(code(&body), want, "{bad:.40}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let r = http_request(server.addr(), "GET", "/publish", &[], b"", STEP).await?;
    assert_eq!(r.status, 405, "GET /publish: {}", r.text());

    // What the subscriber saw: the two stored messages, once each, in order; nothing else.
    let got = ws.recv_messages("room", 2, STEP).await?;
    let ns: Vec<&Value> = got.iter().map(|m| &m["fields"]["n"]).collect();
    assert_eq!(ns, [&json!(1), &json!(2)]);
    assert_eq!(got[0]["offset"], first.as_str());
    let extra = ws
        .recv_json_timeout(std::time::Duration::from_millis(500))
        .await;
    assert!(extra.is_err(), "nothing more was stored: {extra:?}");
    Ok(())
}

#[tokio::test]
async fn open_server_publishes_and_validates_embedded() -> Result<()> {
    open_server_publishes_and_validates(Backend::Embedded).await
}

#[tokio::test]
async fn open_server_publishes_and_validates_redis() -> Result<()> {
    open_server_publishes_and_validates(Backend::Redis).await
}

/// With authentication on, `POST /publish` answers what a WebSocket `publish` frame with the
/// same token answers: allowed by the `publish` claim, `403 forbidden` otherwise, `401` with
/// no, a bad or an expired token; an API key is no client credential there.
#[tokio::test]
async fn authorizes_like_a_websocket_publish() -> Result<()> {
    let setup = setup(
        Backend::Redis,
        &["--jwt-secret", SECRET, "--api-key", API_KEY],
    )
    .await?;
    let server = &setup.server;
    let writer = jwt(SECRET, "alice", &["*", "*:**"], &["room:*"], 600);
    let reader = jwt(SECRET, "bob", &["*", "*:**"], &[], 600);
    for (token, channel) in [(&writer, "room:a"), (&writer, "other"), (&reader, "room:a")] {
        let body = json!({"channel": channel, "fields": {"by": "http"}}).to_string();
        let bearer = format!("Bearer {token}");
        let (status, http) = post(server, &[("Authorization", &bearer)], &body).await?;
        let mut ws = WsClient::connect(&server.ws_url()).await?;
        let hello = ws
            .request(json!({"type":"connect","id":1,"token":token}))
            .await?;
        assert_eq!(hello["type"], "connected", "{hello}");
        let frame = ws
            .request(json!({"type":"publish","id":2,"channel":channel,"fields":{"by":"ws"}}))
            .await?;
        if frame["type"] == "published" {
            assert_eq!(status, 200, "{channel}: ws published, http {http}");
        } else {
            assert_eq!(frame["type"], "error", "{frame}");
            assert_eq!(
                code(&http),
                frame["code"],
                "{channel}: http {http}, ws {frame}"
            );
            assert_eq!(status, 403, "{http}");
        }
    }
    // `token=` in the query, as on `/sse`, works too.
    let path = format!("/publish?token={writer}");
    let r = http_request(
        server.addr(),
        "POST",
        &path,
        &[],
        br#"{"channel":"room:q","fields":{"q":1}}"#,
        STEP,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let expired = jwt(SECRET, "alice", &["*"], &["*"], -600);
    let forged = jwt(
        "another-secret-of-at-least-32-bytes!!",
        "alice",
        &["*"],
        &["*"],
        600,
    );
    let body = r#"{"channel":"room:a","fields":{"x":1}}"#;
    for headers in [
        vec![],
        vec![("Authorization", format!("Bearer {expired}"))],
        vec![("Authorization", format!("Bearer {forged}"))],
        vec![("Authorization", format!("Bearer {API_KEY}"))],
        vec![("X-API-Key", API_KEY.to_owned())],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = post(server, &h, body).await?;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_eq!(code(&body), "unauthorized");
    }
    Ok(())
}
