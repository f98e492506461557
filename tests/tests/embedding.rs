//! The embedding API: an application starts the server as a library, serves it, and publishes
//! and reads history through the `Server` handle, on the embedded engine and on a real Redis.
//! What it publishes reaches WebSocket subscribers exactly once and in order; history pages
//! through everything; refusals come back as typed errors with the wire code.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use redistribute_server::{
    serve, Action, ApiError, AuthContext, Config, Credential, Denied, ErrorCode, Fields, Offset,
    PublishOptions, Server, ServerBuilder, StreamId,
};
use redistribute_testkit::{RedisServer, WsClient};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(10);

/// A served server; stops (and checks the listener ended cleanly) on [`Served::stop`].
struct Served {
    server: Server,
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(builder: ServerBuilder) -> Result<Served> {
        let shutdown = CancellationToken::new();
        let server = tokio::time::timeout(STEP, builder.start(shutdown.clone())).await??;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/ws", listener.local_addr()?);
        let task = tokio::spawn(serve(listener, server.clone()));
        Ok(Served {
            server,
            url,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await???;
        Ok(())
    }
}

fn config(redis: Option<&RedisServer>) -> Config {
    Config {
        redis: redis.map(|r| r.url().into()),
        ..Config::default()
    }
}

fn fields(value: serde_json::Value) -> Fields {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Publishes from the application while a WebSocket client listens, then reads it all back.
async fn publish_reaches_subscribers_and_history(config: Config) -> Result<()> {
    let served = Served::start(ServerBuilder::new(config)).await?;
    let server = &served.server;
    let mut ws = WsClient::connect(&served.url).await?;
    ws.subscribe("embedded.feed", Some("0")).await?;

    const COUNT: usize = 250;
    let mut offsets = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        // Odd values too: unicode, nesting, escapes.
        let f = fields(json!({"n": i, "text": format!("é\"{i}\n"), "nested": {"list": [i, null]}}));
        let offset = server
            .publish("embedded.feed", f, PublishOptions::default())
            .await?;
        offsets.push(offset);
    }
    ensure!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets must increase"
    );

    // The subscriber gets each message once, in order.
    let got = ws.recv_messages("embedded.feed", COUNT, STEP).await?;
    for (i, message) in got.iter().enumerate() {
        assert_eq!(message["offset"], offsets[i].to_string(), "message {i}");
        assert_eq!(message["fields"]["n"], i, "message {i}");
        assert_eq!(message["fields"]["text"], format!("é\"{i}\n"));
    }
    ws.expect_silence(Duration::from_millis(300)).await?;

    // History pages through all of them, exactly once, in order.
    let mut from = Offset::Earliest;
    let mut read = Vec::new();
    loop {
        let page = tokio::time::timeout(STEP, server.history("embedded.feed", from, 64)).await??;
        ensure!(!page.truncated && page.gap.is_none(), "nothing was trimmed");
        if page.messages.is_empty() {
            break;
        }
        ensure!(page.messages.len() <= 64, "a page holds at most `limit`");
        assert_eq!(Some(page.next), page.messages.last().map(|m| m.offset));
        from = Offset::Id(page.next);
        read.extend(page.messages);
    }
    assert_eq!(read.len(), COUNT);
    for (i, message) in read.iter().enumerate() {
        assert_eq!(message.offset, offsets[i]);
        assert_eq!(message.fields["n"], i);
        assert_eq!(message.fields["nested"]["list"], json!([i, null]));
    }

    // A message published by a client is in the application's history too.
    let client_offset = ws.publish("embedded.feed", json!({"from": "ws"})).await?;
    let tail = server
        .history("embedded.feed", Offset::Id(*offsets.last().unwrap()), 10)
        .await?;
    assert_eq!(tail.messages.len(), 1);
    assert_eq!(tail.messages[0].offset.to_string(), client_offset);
    assert_eq!(tail.messages[0].fields["from"], "ws");

    // Idempotent publishes return the first offset and store nothing new.
    let options = PublishOptions {
        idempotency_key: Some("embedded-once".into()),
        ..PublishOptions::default()
    };
    let first = server
        .publish("embedded.once", fields(json!({"a": 1})), options.clone())
        .await?;
    let again = server
        .publish("embedded.once", fields(json!({"a": 2})), options)
        .await?;
    assert_eq!(first, again);
    let once = server
        .history("embedded.once", Offset::Earliest, 10)
        .await?;
    assert_eq!(once.messages.len(), 1);
    assert_eq!(once.messages[0].fields["a"], 1);

    served.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_publish_and_history() -> Result<()> {
    publish_reaches_subscribers_and_history(config(None)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_engine_publish_and_history() -> Result<()> {
    let redis = RedisServer::start().await?;
    publish_reaches_subscribers_and_history(config(Some(&redis))).await
}

/// Bad input comes back as an `ApiError` with the wire code, and changes nothing.
async fn refusals_are_typed(config: Config) -> Result<()> {
    let served = Served::start(ServerBuilder::new(config)).await?;
    let server = &served.server;
    let expect = |result: Result<_, ApiError>, code: ErrorCode| -> Result<()> {
        let err = match result {
            Ok(_) => anyhow::bail!("expected {code}, got success"),
            Err(err) => err,
        };
        ensure!(err.code == code, "expected {code}, got {err}");
        ensure!(!err.message.is_empty(), "an error names what is wrong");
        Ok(())
    };
    for channel in ["", "has space", "bad\u{0}", &"x".repeat(10_000)] {
        expect(
            server
                .publish(channel, fields(json!({"a": 1})), PublishOptions::default())
                .await
                .map(|_| ()),
            ErrorCode::BadRequest,
        )?;
        expect(
            server
                .history(channel, Offset::Earliest, 10)
                .await
                .map(|_| ()),
            ErrorCode::BadRequest,
        )?;
    }
    // Message limits: an empty message and an oversized one.
    expect(
        server
            .publish("embedded.limits", Fields::new(), PublishOptions::default())
            .await
            .map(|_| ()),
        ErrorCode::BadRequest,
    )?;
    // The wire decoder's rules apply too: `maxlen` at least 1, a key of 1-200 bytes.
    for options in [
        PublishOptions {
            maxlen: Some(0),
            ..PublishOptions::default()
        },
        PublishOptions {
            idempotency_key: Some(String::new()),
            ..PublishOptions::default()
        },
        PublishOptions {
            idempotency_key: Some("k".repeat(201)),
            ..PublishOptions::default()
        },
    ] {
        expect(
            server
                .publish("embedded.limits", fields(json!({"a": 1})), options)
                .await
                .map(|_| ()),
            ErrorCode::BadRequest,
        )?;
    }
    let huge = fields(json!({"blob": "x".repeat(2 << 20)}));
    let result = server
        .publish("embedded.limits", huge, PublishOptions::default())
        .await;
    ensure!(
        result
            .as_ref()
            .is_err_and(|e| e.code != ErrorCode::Internal),
        "an oversized message is refused with a client error: {result:?}"
    );
    // Limits on history.
    for limit in [0, 1_001, usize::MAX] {
        expect(
            server
                .history("embedded.limits", Offset::Earliest, limit)
                .await
                .map(|_| ()),
            ErrorCode::BadRequest,
        )?;
    }
    let empty = server
        .history("embedded.limits", Offset::Earliest, 10)
        .await?;
    ensure!(
        empty.messages.is_empty(),
        "refusals stored nothing: {empty:?}"
    );
    served.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_refusals() -> Result<()> {
    refusals_are_typed(config(None)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_engine_refusals() -> Result<()> {
    let redis = RedisServer::start().await?;
    refusals_are_typed(config(Some(&redis))).await
}

/// The authorization hook sees the application as an API-key caller on transport `embedded`,
/// and its refusal is the publish's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_judges_the_application_too() -> Result<()> {
    let redis = RedisServer::start().await?;
    let builder = ServerBuilder::new(config(Some(&redis))).authorize(
        |ctx: &AuthContext, action: Action<'_>| {
            if ctx.transport != "embedded" || ctx.credential != Credential::ApiKey {
                return Err(Denied::forbidden("not the application"));
            }
            match action {
                Action::Publish { channel, .. } | Action::History { channel }
                    if channel.starts_with("sealed") =>
                {
                    Err(Denied::forbidden("sealed channels are closed"))
                }
                _ => Ok(()),
            }
        },
    );
    let served = Served::start(builder).await?;
    let server = &served.server;
    let err = server
        .publish(
            "sealed.a",
            fields(json!({"a": 1})),
            PublishOptions::default(),
        )
        .await
        .err()
        .context("the hook refuses")?;
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert!(err.message.contains("sealed channels are closed"), "{err}");
    let err = server
        .history("sealed.a", Offset::Earliest, 1)
        .await
        .err()
        .context("the hook refuses")?;
    assert_eq!(err.code, ErrorCode::Forbidden);
    let offset: StreamId = server
        .publish("open.a", fields(json!({"a": 1})), PublishOptions::default())
        .await?;
    let page = server.history("open.a", Offset::Earliest, 1).await?;
    assert_eq!(page.messages[0].offset, offset);
    // A WebSocket client is not `embedded`: the same hook refuses it.
    let mut ws = WsClient::connect(&served.url).await?;
    let reply = ws
        .request(json!({"type": "publish", "channel": "open.a", "fields": {"a": 2}}))
        .await?;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    served.stop().await
}

/// With Redis gone, a publish is `unavailable` (not acknowledged), and works again once Redis
/// is back; nothing is half-stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable() -> Result<()> {
    let mut redis = RedisServer::start_persistent().await?;
    let mut config = config(Some(&redis));
    config.limits.request_timeout = Duration::from_secs(1);
    let served = Served::start(ServerBuilder::new(config)).await?;
    let server = &served.server;
    let before = server
        .publish(
            "embedded.down",
            fields(json!({"n": 1})),
            PublishOptions::default(),
        )
        .await?;
    redis.terminate().await?;
    let result = tokio::time::timeout(
        STEP,
        server.publish(
            "embedded.down",
            fields(json!({"n": 2})),
            PublishOptions::default(),
        ),
    )
    .await?;
    let err = result
        .err()
        .context("a publish with Redis down must fail")?;
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    redis.restart().await?;
    let after = until_available("publish", || {
        server.publish(
            "embedded.down",
            fields(json!({"n": 3})),
            PublishOptions::default(),
        )
    })
    .await?;
    assert!(after > before);
    // Reads go over their own connection, which may still be reconnecting: `unavailable` is
    // the retriable answer until it is back.
    let page = until_available("history", || {
        server.history("embedded.down", Offset::Earliest, 10)
    })
    .await?;
    let ns: Vec<_> = page
        .messages
        .iter()
        .map(|m| m.fields["n"].clone())
        .collect();
    assert_eq!(ns, vec![json!(1), json!(3)]);
    served.stop().await
}

/// Calls `call` until it is answered with anything but `unavailable` (Redis coming back), for
/// at most 100 tries 100 ms apart, each within `STEP`.
async fn until_available<T, F>(what: &str, mut call: impl FnMut() -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    for _ in 0..100 {
        match tokio::time::timeout(STEP, call()).await? {
            Err(err) if err.code == ErrorCode::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            answer => return Ok(answer?),
        }
    }
    anyhow::bail!("{what} still unavailable after Redis came back")
}
