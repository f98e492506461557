//! Helpers shared by the end-to-end tests: starting the real server binary against either
//! engine, and checking message sequences.

#![allow(dead_code)]

pub mod native;
pub mod pki;
pub mod raw_ws;
pub mod sse;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use redistribute_testkit::{server_binary, RedisServer, ServerProcess, WsClient};
use serde_json::{json, Value};

/// Which engine a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process engine (no Redis).
    Embedded,
    /// A real redis-server started for the test.
    Redis,
}

/// A server (and its Redis, when the backend needs one).
pub struct Setup {
    /// The Redis the server uses, if any.
    pub redis: Option<RedisServer>,
    /// The server process.
    pub server: ServerProcess,
}

/// Starts a Redis (for [`Backend::Redis`]) and one server on it with `extra` flags.
pub async fn setup(backend: Backend, extra: &[&str]) -> Result<Setup> {
    let redis = match backend {
        Backend::Embedded => None,
        Backend::Redis => Some(RedisServer::start().await?),
    };
    let server = start_server(redis.as_ref(), extra).await?;
    Ok(Setup { redis, server })
}

/// Starts the server binary, on `redis` when given.
pub async fn start_server(redis: Option<&RedisServer>, extra: &[&str]) -> Result<ServerProcess> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if !extra.contains(&"--publish-rate") {
        // Load tests publish far faster than the default per-connection limit allows; the
        // limit itself is tested in `security.rs`.
        args.extend(["--publish-rate", "1000000", "--publish-burst", "1000000"].map(String::from));
    }
    if !extra.contains(&"--min-maxlen") {
        // Tests trim with a small `maxlen` to make gaps happen; the server's default floor
        // (which raises such a `maxlen`) is tested in `retention.rs`.
        args.extend(["--min-maxlen", "1"].map(String::from));
    }
    if let Some(redis) = redis {
        args.push("--redis".into());
        args.push(redis.url());
    }
    ServerProcess::start(&server_binary(), &args).await
}

/// Connects a client to the server.
pub async fn client(server: &ServerProcess) -> Result<WsClient> {
    WsClient::connect(&server.ws_url()).await
}

/// The `seq` field of each message.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["fields"]["seq"]
                .as_u64()
                .expect("message has a numeric seq")
        })
        .collect()
}

/// Publishes `seq` values `range` to `channel`, returning the offsets.
pub async fn publish_seq(
    client: &mut WsClient,
    channel: &str,
    range: std::ops::Range<u64>,
) -> Result<Vec<String>> {
    let mut offsets = Vec::with_capacity((range.end - range.start) as usize);
    for seq in range {
        offsets.push(client.publish(channel, json!({ "seq": seq })).await?);
    }
    Ok(offsets)
}

/// Asserts the offsets of `messages` are strictly increasing (numerically).
pub fn assert_ordered(messages: &[Value]) -> Result<()> {
    let mut last = (0u64, 0u64);
    for m in messages {
        let offset = m["offset"].as_str().context("message without offset")?;
        let (ms, seq) = offset.split_once('-').context("malformed offset")?;
        let id = (ms.parse()?, seq.parse()?);
        ensure!(id > last, "offset {offset} is not after {last:?}");
        last = id;
    }
    Ok(())
}

/// Resident memory of a process in KiB (from `/proc`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()?)
}

/// An HS256 token signed with `secret`: subject `sub`, the `subscribe` and `publish` patterns,
/// expiring `expires_in` seconds from now (negative: already expired).
pub fn jwt(
    secret: &str,
    sub: &str,
    subscribe: &[&str],
    publish: &[&str],
    expires_in: i64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64;
    let claims =
        json!({"sub": sub, "exp": now + expires_in, "subscribe": subscribe, "publish": publish});
    sign(secret, &claims)
}

/// An HS256 token signed with `secret` carrying `claims` as given.
pub fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// A generous wait for one step of a test on a noisy machine.
pub const STEP: Duration = Duration::from_secs(20);

/// Reads from `stream` into `buf` until it holds a whole HTTP head (up to the blank line) and
/// returns the head's length; what follows it stays in `buf`.
pub async fn read_http_head(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Result<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(end + 4);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "closed before the end of the HTTP head");
        buf.extend_from_slice(&chunk[..n]);
    }
}
