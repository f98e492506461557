//! Load generator for redistribute. Run with
//! `cargo run --release -p loadgen -- --url ws://127.0.0.1:8080/ws --subscribers 1000 --rate 200`.
//!
//! It opens N subscriber connections spread over C channels, then publishes at a fixed rate
//! over one WebSocket (pipelined), each message carrying a sequence number and its send time.
//! It reports deliveries per second, latency percentiles (send → receive, HdrHistogram), lost,
//! duplicated and out-of-order messages, and — given the server's (and Redis') PID — CPU time
//! per delivery. Every message of a batched `messages` frame is counted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// Server WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Channels the subscribers are spread over (subscriber i takes channel i % channels).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Messages published per second (in total, round-robin over the channels).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// PID of the server, to report its CPU time per delivery.
    #[arg(long)]
    server_pid: Option<u32>,
    /// PID of redis-server, to report its CPU time per delivery.
    #[arg(long)]
    redis_pid: Option<u32>,
}

/// Per-subscriber delivery bookkeeping.
#[derive(Default)]
struct Tally {
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// CPU time (user + system) of a process in microseconds, from /proc.
fn cpu_micros(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports in clock ticks of 100 Hz on every mainstream configuration.
    Ok(ticks * 10_000)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}

async fn subscriber(
    url: String,
    channel: String,
    expected_per_channel: u64,
    histogram: Arc<Mutex<Histogram<u64>>>,
    ready: tokio::sync::mpsc::Sender<()>,
    deadline: Instant,
) -> Result<Tally> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    ws.send(Message::text(
        json!({"type": "subscribe", "id": 1, "channel": channel}).to_string(),
    ))
    .await?;
    let mut tally = Tally::default();
    let mut last_seq: Option<u64> = None;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut ready = Some(ready);
    while tally.delivered < expected_per_channel {
        let msg = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(msg)) => msg?,
            Ok(None) => bail!("server closed the connection"),
            Err(_) => break,
        };
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["type"].as_str() {
            Some("subscribed") => {
                if let Some(r) = ready.take() {
                    r.send(()).await.ok();
                }
            }
            Some("messages") => {
                let now = now_micros();
                for m in frame["messages"].as_array().into_iter().flatten() {
                    let seq = m["fields"]["seq"].as_u64().unwrap_or(0);
                    let sent = m["fields"]["t"].as_u64().unwrap_or(now);
                    match last_seq {
                        Some(last) if seq == last => tally.duplicates += 1,
                        Some(last) if seq < last => tally.out_of_order += 1,
                        _ => {
                            tally.delivered += 1;
                            local.saturating_record(now.saturating_sub(sent).max(1));
                        }
                    }
                    last_seq = Some(seq.max(last_seq.unwrap_or(0)));
                }
            }
            Some("error") => bail!("server error: {frame}"),
            _ => {}
        }
    }
    histogram.lock().await.add(&local)?;
    Ok(tally)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let channels: Vec<String> = (0..args.channels).map(|i| format!("load{i}")).collect();
    let total = args.rate * args.seconds;
    let per_channel = total / args.channels as u64;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.subscribers.max(1));
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 60);
    let mut tasks = Vec::new();
    for i in 0..args.subscribers {
        let channel = channels[i % channels.len()].clone();
        tasks.push(tokio::spawn(subscriber(
            args.url.clone(),
            channel,
            per_channel,
            histogram.clone(),
            ready_tx.clone(),
            deadline,
        )));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    drop(ready_tx);
    for _ in 0..args.subscribers {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("subscribers did not get subscribed in time")?;
    }
    eprintln!(
        "{} subscribers ready; publishing {total} messages",
        args.subscribers
    );
    let rss_before = args.server_pid.map(rss_kib).transpose()?;

    let cpu_before = (
        args.server_pid.map(cpu_micros).transpose()?,
        args.redis_pid.map(cpu_micros).transpose()?,
    );
    let (publisher, _) = tokio_tungstenite::connect_async(args.url.as_str()).await?;
    let pad = "x".repeat(args.payload);
    let started = Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let (mut sink, mut stream) = publisher.split();
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < total {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    match v["type"].as_str() {
                        Some("published") => acked += 1,
                        Some("error") => bail!("publish failed: {v}"),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("publisher connection closed"),
            }
        }
        Ok(acked)
    });
    for seq in 0..total {
        let due = started + interval * seq as u32;
        tokio::time::sleep_until(due.into()).await;
        let channel = &channels[(seq % args.channels as u64) as usize];
        let frame = json!({"type": "publish", "id": seq + 1, "channel": channel,
            "fields": {"seq": seq / args.channels as u64, "t": now_micros(), "pad": pad}});
        sink.send(Message::text(frame.to_string())).await?;
    }
    let publish_elapsed = started.elapsed();
    acks.await??;
    drop(sink);

    let mut tally = Tally::default();
    for t in tasks {
        let one = t.await??;
        tally.delivered += one.delivered;
        tally.duplicates += one.duplicates;
        tally.out_of_order += one.out_of_order;
    }
    let elapsed = started.elapsed();
    let expected = per_channel * args.subscribers as u64;
    let h = histogram.lock().await;
    println!(
        "subscribers {} channels {} rate {}/s for {}s ({} published in {:.2}s)",
        args.subscribers,
        args.channels,
        args.rate,
        args.seconds,
        total,
        publish_elapsed.as_secs_f64()
    );
    println!(
        "deliveries {} of {} expected ({:.0}/s), lost {}, duplicates {}, out of order {}",
        tally.delivered,
        expected,
        tally.delivered as f64 / elapsed.as_secs_f64(),
        expected.saturating_sub(tally.delivered),
        tally.duplicates,
        tally.out_of_order
    );
    println!(
        "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_before.0) {
        let used = cpu_micros(pid)? - before;
        println!(
            "server CPU {:.2} s = {:.2} µs per delivery; RSS {} KiB before publishing, {} KiB after",
            used as f64 / 1e6,
            used as f64 / tally.delivered.max(1) as f64,
            rss_before.unwrap_or(0),
            rss_kib(pid)?
        );
    }
    if let (Some(pid), Some(before)) = (args.redis_pid, cpu_before.1) {
        let used = cpu_micros(pid)? - before;
        println!(
            "redis CPU {:.2} s = {:.2} µs per delivery",
            used as f64 / 1e6,
            used as f64 / tally.delivered.max(1) as f64
        );
    }
    Ok(())
}
