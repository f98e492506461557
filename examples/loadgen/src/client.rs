//! The load tool's clients: subscribers (with drop-and-resume), publishers over WebSocket or
//! `POST /api/publish`, and churners that subscribe and unsubscribe at a fixed rate.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::Dialer;
use crate::stats::{now_micros, SeqTracker, Tally, Timeline};

/// State shared by every client of a run.
pub struct Ctx {
    /// Opens connections.
    pub dialer: Dialer,
    /// Deliveries and latency per second.
    pub timeline: Timeline,
    /// Subscribers whose first `subscribed` arrived.
    pub subscribed: AtomicUsize,
    /// Subscribers that resubscribed after a deliberate drop.
    pub resumed: AtomicUsize,
    /// Time of the latest delivery, µs since [`Ctx::timeline`] started.
    pub last_delivery_us: AtomicU64,
    /// Set to stop every client.
    pub stop: watch::Sender<bool>,
    /// Incremented to make every subscriber drop its connection and resume.
    pub drops: watch::Sender<u64>,
    /// Subscribers stay connected after receiving everything they expect (idle and churn runs).
    pub hold: bool,
    /// Subscribers of the run.
    pub subscribers: usize,
    /// Subscribers that received everything they expect. They stay connected until all have
    /// (then [`Ctx::stop`] is set): a subscriber leaving early would make the server and this
    /// tool tear its connection down while the others still wait for their last messages.
    pub complete: AtomicUsize,
    /// Start of the run.
    pub started: Instant,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, borrow)]
    messages: Vec<Msg<'a>>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    offset: &'a str,
    #[serde(default)]
    fields: Fields,
}

#[derive(Deserialize, Default)]
struct Fields {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    t: Option<u64>,
}

/// One subscriber connection of `channels`, expecting sequence numbers `0..expected` on each
/// (channel, expected) pair. On a drop signal it closes its connection and resubscribes from
/// the last offset it received (one channel per connection only). Returns the sum of its
/// channels' counts.
pub async fn subscriber(
    ctx: Arc<Ctx>,
    index: usize,
    channels: Vec<(String, u64)>,
) -> Result<Tally> {
    let mut stop = ctx.stop.subscribe();
    let mut drops = ctx.drops.subscribe();
    let mut trackers: Vec<SeqTracker> = channels.iter().map(|(_, e)| SeqTracker::new(*e)).collect();
    let slot: std::collections::HashMap<String, usize> = channels
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (c.clone(), i))
        .collect();
    let channel = channels.first().map(|(c, _)| c.clone()).unwrap_or_default();
    let mut offset: Option<String> = None;
    let mut resuming = false;
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut counted = false;
    'conn: loop {
        drops.borrow_and_update();
        if *stop.borrow() {
            break;
        }
        let mut ws = match ctx.dialer.ws().await {
            Ok(ws) => ws,
            Err(err) => {
                failures += 1;
                if failures > 50 {
                    bail!("subscriber {index} cannot connect: {err:#}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from = offset.as_deref().unwrap_or("$");
        if channels.len() == 1 {
            ws.send(Message::text(format!(
                r#"{{"type":"subscribe","id":1,"channel":"{channel}","offset":"{from}"}}"#
            )))
            .await?;
        } else {
            for (i, (c, _)) in channels.iter().enumerate() {
                ws.feed(Message::text(format!(
                    r#"{{"type":"subscribe","id":{},"channel":"{c}","offset":"$"}}"#,
                    i + 1
                )))
                .await?;
            }
            ws.flush().await?;
        }
        loop {
            let msg = tokio::select! {
                _ = stop.wait_for(|s| *s) => break 'conn,
                _ = drops.changed() => {
                    trackers.iter_mut().for_each(SeqTracker::pause_clock);
                    resuming = true;
                    drop(ws);
                    continue 'conn;
                }
                msg = ws.next() => msg,
            };
            let text = match msg {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(err)) => bail!("subscriber {index}: {err}"),
                None => bail!("subscriber {index}: the server closed the connection"),
            };
            let frame: Frame = serde_json::from_str(text.as_str())?;
            match frame.kind {
                "subscribed" => {
                    if resuming {
                        ctx.resumed.fetch_add(1, Ordering::AcqRel);
                        resuming = false;
                    } else {
                        ctx.subscribed.fetch_add(1, Ordering::AcqRel);
                    }
                }
                "messages" => {
                    let now = Instant::now();
                    let now_us = now_micros();
                    let i = frame
                        .channel
                        .and_then(|c| slot.get(c))
                        .copied()
                        .unwrap_or(0);
                    let tracker = &mut trackers[i];
                    tracker.frame(now);
                    latencies.clear();
                    for m in &frame.messages {
                        if let (Some(seq), Some(t)) = (m.fields.seq, m.fields.t) {
                            if let Some(l) = tracker.record(seq, t, now_us) {
                                latencies.push(l);
                            }
                        }
                    }
                    if let Some(last) = frame.messages.last() {
                        match &mut offset {
                            Some(o) => {
                                o.clear();
                                o.push_str(last.offset);
                            }
                            None => offset = Some(last.offset.to_owned()),
                        }
                    }
                    ctx.timeline.record(index, now, &latencies);
                    let at = now.duration_since(ctx.started).as_micros() as u64;
                    ctx.last_delivery_us.fetch_max(at, Ordering::Relaxed);
                    if !counted && trackers.iter().all(SeqTracker::complete) && !ctx.hold {
                        counted = true;
                        if ctx.complete.fetch_add(1, Ordering::AcqRel) + 1 == ctx.subscribers {
                            ctx.stop.send_replace(true);
                        }
                    }
                }
                "gap" | "error" => bail!("subscriber {index}: unexpected frame {text}"),
                _ => {}
            }
        }
    }
    let mut tally = Tally::default();
    for t in &trackers {
        tally.add(&t.tally);
    }
    Ok(tally)
}

/// Which channel and per-channel sequence number message `i` of the run gets.
fn route(i: u64, channels: usize) -> (usize, u64) {
    ((i % channels as u64) as usize, i / channels as u64)
}

/// Messages channel `c` of `channels` receives out of `total`.
pub fn expected_for(c: usize, channels: usize, total: u64) -> u64 {
    let (c, n) = (c as u64, channels as u64);
    if total > c {
        (total - c).div_ceil(n)
    } else {
        0
    }
}

fn body(channel: &str, seq: u64, pad: &str) -> String {
    format!(
        r#""channel":"{channel}","fields":{{"seq":{seq},"t":{},"pad":"{pad}"}}"#,
        now_micros()
    )
}

/// Publishes `total` messages at `rate` per second round-robin over `channels`, pipelined on
/// one WebSocket. Returns when every publish was acknowledged.
pub async fn publish_ws(
    ctx: Arc<Ctx>,
    channels: Arc<Vec<String>>,
    rate: u64,
    total: u64,
    pad: String,
) -> Result<Duration> {
    let ws = ctx.dialer.ws().await?;
    let (mut sink, mut stream) = ws.split();
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < total {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().starts_with(r#"{"type":"published""#) {
                        acked += 1;
                    } else if t.as_str().contains(r#""type":"error""#) {
                        bail!("publish failed: {t}");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("publisher connection closed"),
            }
        }
        Ok(())
    });
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut i = 0;
    while i < total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        // Everything due by now goes out in one write.
        while i < total && started + interval.mul_f64(i as f64) <= now {
            let (c, seq) = route(i, channels.len());
            let frame = format!(
                r#"{{"type":"publish","id":{},{}}}"#,
                i + 1,
                body(&channels[c], seq, &pad)
            );
            sink.feed(Message::text(frame)).await?;
            i += 1;
        }
        sink.flush().await?;
    }
    let elapsed = started.elapsed();
    acks.await??;
    Ok(elapsed)
}

/// Like [`publish_ws`], over `POST /api/publish` on `workers` keep-alive connections.
pub async fn publish_http(
    ctx: Arc<Ctx>,
    channels: Arc<Vec<String>>,
    rate: u64,
    total: u64,
    pad: String,
    workers: usize,
    api_key: Option<String>,
) -> Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let headers = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (ctx, channels, next, pad, headers) = (
            ctx.clone(),
            channels.clone(),
            next.clone(),
            pad.clone(),
            headers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut http = ctx.dialer.http().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
                let (c, seq) = route(i, channels.len());
                let body = format!("{{{}}}", body(&channels[c], seq, &pad));
                let (status, reply) = http
                    .request("POST", "/api/publish", &headers, &body)
                    .await?;
                if status != 200 {
                    bail!("POST /api/publish answered {status}: {reply}");
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// Counts of a churner.
#[derive(Default, Debug, Clone, Copy)]
pub struct Churned {
    /// subscribe+unsubscribe pairs sent.
    pub sent: u64,
    /// Seconds the churner sent for.
    pub seconds: f64,
    /// `subscribed` replies.
    pub subscribed: u64,
    /// `unsubscribed` replies.
    pub unsubscribed: u64,
    /// Error replies.
    pub errors: u64,
}

/// Subscribes to a fresh channel and unsubscribes again, `rate` pairs per second, until stopped.
pub async fn churner(ctx: Arc<Ctx>, index: usize, rate: f64) -> Result<Churned> {
    let ws = ctx.dialer.ws().await?;
    let (mut sink, mut stream) = ws.split();
    let mut stop = ctx.stop.subscribe();
    // Counted as they come, so a close that is slow to finish loses nothing.
    let counts: Arc<[AtomicU64; 3]> = Arc::default();
    let replies = tokio::spawn({
        let counts = counts.clone();
        async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let t = t.as_str();
                let kind = if t.starts_with(r#"{"type":"subscribed""#) {
                    0
                } else if t.starts_with(r#"{"type":"unsubscribed""#) {
                    1
                } else if t.contains(r#""type":"error""#) {
                    2
                } else {
                    continue;
                };
                counts[kind].fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut n: u64 = 0;
    loop {
        let due = started + interval.mul_f64(n as f64);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep_until(due.into()) => {}
        }
        let now = Instant::now();
        while started + interval.mul_f64(n as f64) <= now {
            let channel = format!("churn.{index}.{}", n % 1000);
            sink.feed(Message::text(format!(
                r#"{{"type":"subscribe","id":{},"channel":"{channel}"}}"#,
                2 * n + 1
            )))
            .await?;
            sink.feed(Message::text(format!(
                r#"{{"type":"unsubscribe","id":{},"channel":"{channel}"}}"#,
                2 * n + 2
            )))
            .await?;
            n += 1;
        }
        sink.flush().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Let the last replies arrive, then close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = sink.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), replies).await;
    let count = |kind: usize| counts[kind].load(Ordering::Relaxed);
    Ok(Churned {
        sent: n,
        seconds,
        subscribed: count(0),
        unsubscribed: count(1),
        errors: count(2),
    })
}
