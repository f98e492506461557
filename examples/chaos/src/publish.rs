//! Publishers: the native client and raw WebSocket. Every message carries an idempotency key
//! and is retried on transient errors until a `published` reply carries its offset; only then
//! is the offset "acknowledged" in the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redistribute_client::{Client, Error as ClientError, PublishOptions, StreamId};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::rng::Rng;
use crate::wire::{self, Incoming, Ws};

/// How long one publish attempt may wait for its reply.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(6);
/// Pause between attempts of the same message.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a publisher keeps retrying one message once it was told to stop.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What a publisher sends.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    /// Its name; part of every idempotency key and of every message (`p`).
    pub name: String,
    /// Channels, round-robin, each with its `maxlen`.
    pub channels: Vec<(String, Option<u64>)>,
    /// Pause between messages.
    pub interval: Duration,
    /// Bytes of padding per message.
    pub pad: usize,
    /// Whether these are consumer-group jobs (recorded as such too).
    pub jobs: bool,
}

impl PublishSpec {
    fn message(&self, n: u64) -> (String, Option<u64>, Value, String) {
        let (channel, maxlen) = self.channels[(n % self.channels.len() as u64) as usize].clone();
        let fields = json!({"p": self.name, "n": n, "pad": "x".repeat(self.pad)});
        (channel, maxlen, fields, format!("{}-{n}", self.name))
    }

    fn record(&self, ledger: &Ledger, channel: &str, offset: StreamId) {
        ledger.acknowledged(channel, offset);
        if self.jobs {
            ledger.job_published(offset);
        }
    }
}

/// Whether to keep retrying the current message.
fn keep_trying(stop: &CancellationToken, stopped_at: &mut Option<Instant>) -> bool {
    if stop.is_cancelled() {
        let at = *stopped_at.get_or_insert_with(Instant::now);
        return at.elapsed() < STOP_GRACE;
    }
    true
}

/// Publishes through the native client (failover over every instance).
pub async fn native(
    spec: PublishSpec,
    urls: Vec<String>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let client = match Client::builder()
        .targets(urls)
        .request_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("chaos: {}: cannot build a client: {e}", spec.name);
            return;
        }
    };
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped_at = None;
    for n in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (channel, maxlen, fields, key) = spec.message(n);
        let options = PublishOptions {
            maxlen,
            idempotency_key: Some(key),
        };
        loop {
            let attempt = client.publish_with(channel.clone(), &fields, options.clone());
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(offset)) => {
                    spec.record(&ledger, &channel, offset);
                    break;
                }
                Ok(Err(e)) => ledger.publish_error(&error_kind(&e)),
                Err(_) => ledger.publish_error("timeout"),
            }
            if !keep_trying(&stop, &mut stopped_at) {
                ledger.publish_error("given_up");
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => format!("native:{code:?}").to_lowercase(),
        ClientError::Timeout => "native:timeout".into(),
        ClientError::ConnectionLost => "native:connection_lost".into(),
        _ => "native:other".into(),
    }
}

/// Publishes over raw WebSocket frames, moving to the next instance when a connection fails.
pub async fn raw(
    spec: PublishSpec,
    urls: Vec<String>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    mut rng: Rng,
) {
    let mut target = rng.below(urls.len() as u64) as usize;
    let mut conn: Option<Ws> = None;
    let mut next_id = 0u64;
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped_at = None;
    for n in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (channel, maxlen, fields, key) = spec.message(n);
        loop {
            if conn.is_none() {
                match wire::connect(&urls[target % urls.len()]).await {
                    Ok(ws) => conn = Some(ws),
                    Err(_) => {
                        ledger.publish_error("ws:connect");
                        target += 1;
                    }
                }
            }
            if let Some(ws) = conn.as_mut() {
                next_id += 1;
                let mut frame = json!({"type": "publish", "id": next_id, "channel": channel,
                    "fields": fields, "idempotency_key": key});
                if let Some(maxlen) = maxlen {
                    frame["maxlen"] = json!(maxlen);
                }
                match publish_once(ws, &frame, next_id).await {
                    Attempt::Published(offset) => {
                        spec.record(&ledger, &channel, offset);
                        break;
                    }
                    Attempt::Refused(code) => {
                        ledger.publish_error(&format!("ws:{code}"));
                        // Only transient refusals are worth a retry.
                        if !matches!(code.as_str(), "unavailable" | "rate_limited" | "internal") {
                            ledger.publish_error("given_up");
                            break;
                        }
                    }
                    Attempt::Broken(why) => {
                        ledger.publish_error(&format!("ws:{why}"));
                        conn = None;
                        target += 1;
                    }
                }
            }
            if !keep_trying(&stop, &mut stopped_at) {
                ledger.publish_error("given_up");
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

enum Attempt {
    Published(StreamId),
    Refused(String),
    Broken(&'static str),
}

async fn publish_once(ws: &mut Ws, frame: &Value, id: u64) -> Attempt {
    if wire::send(ws, frame).await.is_err() {
        return Attempt::Broken("send");
    }
    let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(next) => next,
            Err(_) => return Attempt::Broken("timeout"),
        };
        let reply = match wire::classify(next) {
            Incoming::Json(v) => v,
            Incoming::Other => continue,
            Incoming::Closed => return Attempt::Broken("closed"),
        };
        if reply.get("id").and_then(Value::as_u64) != Some(id) {
            continue;
        }
        return match wire::frame_type(&reply) {
            "published" => match wire::offset(&reply, "offset") {
                Some(offset) => Attempt::Published(offset),
                None => Attempt::Refused("bad_reply".into()),
            },
            _ => Attempt::Refused(
                reply
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned(),
            ),
        };
    }
}
