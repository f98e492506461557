//! Bad input over WebSocket: every malformed frame gets an `error` with the right code, the
//! connection stays usable where the protocol says so, and abuse closes it with the documented
//! code (issue 3, "Must show" 6).

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{client, setup, Backend};
use serde_json::{json, Value};

/// Sends `text` and returns the `error` frame it causes.
async fn error_for(c: &mut redistribute_testkit::WsClient, text: &str) -> Result<Value> {
    c.send_text(text).await?;
    c.recv_until(|f| f["type"] == "error", Duration::from_secs(10))
        .await
}

async fn malformed_frames_get_errors_and_the_connection_survives(backend: Backend) -> Result<()> {
    let setup = setup(backend, &[]).await?;
    let mut c = client(&setup.server).await?;
    let long_channel = "x".repeat(201);
    let cases: Vec<(String, Option<u64>, &str, &str)> = vec![
        ("not json".into(), None, "bad_request", "not a JSON object"),
        ("[1,2,3]".into(), None, "bad_request", "not a JSON object"),
        (r#"{"id":3}"#.into(), Some(3), "bad_request", "type"),
        (
            r#"{"type":"launch","id":4}"#.into(),
            Some(4),
            "bad_request",
            "launch",
        ),
        (
            r#"{"type":"subscribe","id":5}"#.into(),
            Some(5),
            "bad_request",
            "channel",
        ),
        (
            r#"{"type":"publish","id":6,"channel":"c"}"#.into(),
            Some(6),
            "bad_request",
            "fields",
        ),
        (
            r#"{"type":"publish","id":7,"channel":"c","fields":{}}"#.into(),
            Some(7),
            "bad_request",
            "at least one field",
        ),
        (
            r#"{"type":"publish","id":8,"channel":"c","fields":[1]}"#.into(),
            Some(8),
            "bad_request",
            "fields",
        ),
        (
            r#"{"type":"subscribe","id":9,"channel":"has space"}"#.into(),
            Some(9),
            "bad_request",
            "channel",
        ),
        (
            format!(r#"{{"type":"subscribe","id":10,"channel":"{long_channel}"}}"#),
            Some(10),
            "bad_request",
            "200",
        ),
        (
            r#"{"type":"subscribe","id":11,"channel":"c","offset":"yesterday"}"#.into(),
            Some(11),
            "bad_request",
            "offset",
        ),
        (
            r#"{"type":"subscribe","id":12,"channel":"c","offset":"12"}"#.into(),
            Some(12),
            "bad_request",
            "offset",
        ),
        (
            r#"{"type":"subscribe","id":13,"channel":"c","offset":"-1-0"}"#.into(),
            Some(13),
            "bad_request",
            "offset",
        ),
        (
            r#"{"type":"unsubscribe","id":14,"channel":"never"}"#.into(),
            Some(14),
            "not_found",
            "not subscribed",
        ),
        (
            r#"{"type":"publish","id":15,"channel":"c","fields":{"a":1},"maxlen":0}"#.into(),
            Some(15),
            "bad_request",
            "maxlen",
        ),
        (
            r#"{"type":"ping","id":-1}"#.into(),
            None,
            "bad_request",
            "ping",
        ),
    ];
    for (text, id, code, needle) in &cases {
        let err = error_for(&mut c, text).await?;
        assert_eq!(err["code"], *code, "{text} -> {err}");
        assert_eq!(
            err.get("id").and_then(Value::as_u64),
            *id,
            "{text} -> {err}"
        );
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{text} -> {message:?} lacks {needle:?}"
        );
        // Still usable.
        let pong = c.request(json!({"type": "ping"})).await?;
        assert_eq!(pong["type"], "pong");
    }
    // Binary frames are refused, not fatal.
    c.send_binary(vec![1, 2, 3]).await?;
    let err = c
        .recv_until(|f| f["type"] == "error", Duration::from_secs(10))
        .await?;
    assert_eq!(err["code"], "bad_request");
    // (A second subscribe to a channel is not an error: it replaces the first, see ws_core.)
    Ok(())
}

/// 6. Each kind of malformed frame gets the right error; the connection stays usable.
#[tokio::test]
async fn malformed_frames_redis() -> Result<()> {
    malformed_frames_get_errors_and_the_connection_survives(Backend::Redis).await
}

/// 6. The same on the embedded engine.
#[tokio::test]
async fn malformed_frames_embedded() -> Result<()> {
    malformed_frames_get_errors_and_the_connection_survives(Backend::Embedded).await
}

/// An oversize frame closes the connection with 1009; the server keeps serving others.
#[tokio::test]
async fn oversize_frame_closes_with_1009() -> Result<()> {
    let setup = setup(Backend::Embedded, &["--max-frame-bytes", "65536"]).await?;
    let mut c = client(&setup.server).await?;
    let big = "y".repeat(70_000);
    c.send_text(&format!(
        r#"{{"type":"publish","id":1,"channel":"c","fields":{{"b":"{big}"}}}}"#
    ))
    .await?;
    let code = c.expect_close(Duration::from_secs(10)).await?;
    assert_eq!(code, 1009);
    let mut other = client(&setup.server).await?;
    assert_eq!(
        other.request(json!({"type": "ping"})).await?["type"],
        "pong"
    );
    Ok(())
}

/// Repeated bad frames are abuse: after 20 in a row the connection closes with 1008.
#[tokio::test]
async fn repeated_bad_frames_close_with_1008() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let mut c = client(&setup.server).await?;
    for _ in 0..19 {
        let err = error_for(&mut c, "garbage").await?;
        assert_eq!(err["code"], "bad_request");
    }
    c.send_text("garbage").await?;
    let code = c.expect_close(Duration::from_secs(10)).await?;
    assert_eq!(code, 1008);
    Ok(())
}

/// A publish with more fields than allowed is `too_large`.
#[tokio::test]
async fn too_many_fields_is_too_large() -> Result<()> {
    let setup = setup(Backend::Embedded, &[]).await?;
    let mut c = client(&setup.server).await?;
    let fields: serde_json::Map<String, Value> =
        (0..1025).map(|i| (format!("f{i}"), json!(i))).collect();
    let err = c
        .request(json!({"type": "publish", "channel": "c", "fields": fields}))
        .await?;
    assert_eq!(err["code"], "too_large", "{err}");
    Ok(())
}
