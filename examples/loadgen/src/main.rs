//! Load generator for redistribute over protocol v1. Scenarios (see `BENCHMARKS.md`):
//!
//! - `s1` broadcast: 1,000 subscribers of one channel, 200 msg/s.
//! - `s2` per-user channels: 5,000 channels with one subscriber each, 2,000 msg/s over
//!   WebSocket or `POST /api/publish` (`--via http`).
//! - `s3` idle: 15,000 subscribed connections; RSS per connection.
//! - `s4` churn: S1 plus 5,000 subscribe+unsubscribe per second on other connections; max
//!   delivery stall and `CLIENT UNBLOCK` calls per second (from `/metrics`).
//! - `s5` reconnect storm: 10,000 subscribers drop their connections at once mid-run and
//!   resume from their last offsets; time until all resumed, loss and duplicates.
//!
//! Every message carries `seq` (per channel) and `t` (send time, µs since the epoch); every
//! message of a batched `messages` frame is counted. Given `--server-pid` / `--redis-pid` it
//! reports CPU µs per delivery of each and the server's RSS. `--plot run.svg` draws throughput
//! and latency over time and the latency distribution.
//!
//! `cargo run --release -p loadgen -- s1 --server-pid $(pgrep -x redistribute) --redis-pid $(pgrep -x redis-server)`
//!
//! Several `--url`s (instances of one deployment) spread the connections over them round-robin;
//! repeated `--server-pid`/`--redis-pid` are summed. `cluster-bench.sh` runs a scenario against
//! 1–3 instances on a local Redis Cluster.

mod client;
mod conn;
mod plot;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

use client::{Churned, Ctx};
use stats::{rss_kib, rss_sum, CpuSample, Tally, Timeline};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Broadcast: 1,000 subscribers, 1 channel.
    S1,
    /// Per-user channels: 5,000 channels, one subscriber each.
    S2,
    /// Idle: 15,000 connections.
    S3,
    /// Churn: 5,000 subscribe+unsubscribe per second while S1 runs.
    S4,
    /// Reconnect storm: 10,000 clients drop and resume at once.
    S5,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// Pipelined publishes on one WebSocket.
    Ws,
    /// `POST /api/publish` on keep-alive connections.
    Http,
}

#[derive(Parser, Debug)]
#[command(about = "Load generator for redistribute (protocol v1)")]
struct Args {
    /// Scenario; its defaults can be overridden by the options below.
    scenario: Scenario,
    /// Server WebSocket URL; repeat it for several instances of one deployment: connections
    /// (subscribers and publishers) are spread over them round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: Vec<String>,
    /// Subscriber connections.
    #[arg(long)]
    subscribers: Option<usize>,
    /// Channels the subscribers are spread over (subscriber i takes channel i % channels, or
    /// with `--channels-per-subscriber k` channels (i·k + j) % channels for j < k).
    #[arg(long)]
    channels: Option<usize>,
    /// Channels each subscriber connection subscribes to (not with S5) [default: 1].
    #[arg(long, default_value_t = 1)]
    channels_per_subscriber: usize,
    /// Messages published per second, in total, round-robin over the channels.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds to publish for (S3: seconds to hold the idle connections).
    #[arg(long)]
    seconds: Option<u64>,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How messages are published.
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    via: Via,
    /// Concurrent connections for `--via http`.
    #[arg(long, default_value_t = 16)]
    http_workers: usize,
    /// API key for `POST /api/publish`.
    #[arg(long)]
    api_key: Option<String>,
    /// S4: subscribe+unsubscribe pairs per second.
    #[arg(long, default_value_t = 5000)]
    churn_rate: u64,
    /// S4: connections the churn is spread over.
    #[arg(long, default_value_t = 20)]
    churn_connections: usize,
    /// S5: seconds after publishing starts when every subscriber drops and resumes.
    #[arg(long)]
    drop_after: Option<f64>,
    /// Loopback source addresses (127.0.0.1 … 127.0.0.N) the connections are spread over.
    #[arg(long, default_value_t = 8)]
    source_ips: usize,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// PID of the server: CPU per delivery and RSS; repeatable (several instances are summed).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// PID of redis-server: CPU per delivery; repeatable (cluster nodes are summed).
    #[arg(long)]
    redis_pid: Vec<u32>,
    /// Write an SVG plot of the run here (a path ending in `.svg`).
    #[arg(long, value_parser = svg_path)]
    plot: Option<PathBuf>,
}

/// Accepts only `.svg` paths for `--plot`: the plot is SVG, and an SVG in `run.png` would
/// confuse every viewer.
fn svg_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => Ok(path),
        _ => Err(format!("{s:?}: the plot is written as SVG; name it *.svg")),
    }
}

struct Plan {
    subscribers: usize,
    channels: usize,
    rate: u64,
    seconds: u64,
}

impl Args {
    fn plan(&self) -> Plan {
        let (subscribers, channels, rate, seconds) = match self.scenario {
            Scenario::S1 | Scenario::S4 => (1_000, 1, 200, 10),
            Scenario::S2 => (5_000, 5_000, 2_000, 10),
            Scenario::S3 => (15_000, 1, 0, 5),
            Scenario::S5 => (10_000, 100, 200, 15),
        };
        Plan {
            subscribers: self.subscribers.unwrap_or(subscribers),
            channels: self.channels.unwrap_or(channels).max(1),
            rate: self.rate.unwrap_or(rate),
            seconds: self.seconds.unwrap_or(seconds),
        }
    }
}

async fn wait_count(
    what: &str,
    count: impl Fn() -> usize,
    target: usize,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    while count() < target {
        if started.elapsed() > limit {
            bail!("{what}: {} of {target} after {limit:?}", count());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

fn per(value: u64, deliveries: u64) -> f64 {
    value as f64 / deliveries.max(1) as f64
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let plan = args.plan();
    let nofile = conn::raise_nofile_limit()?;
    if plan.subscribers + args.churn_connections + args.http_workers + 16 > nofile as usize {
        bail!(
            "{} connections need more than the {nofile} open files this process may have",
            plan.subscribers
        );
    }
    let (stop, _) = watch::channel(false);
    let (drops, _) = watch::channel(0u64);
    let ctx = Arc::new(Ctx {
        dialer: conn::Dialer::new(&args.url, args.source_ips, args.connect_concurrency)?,
        timeline: Timeline::new(),
        subscribed: Default::default(),
        resumed: Default::default(),
        last_delivery_us: Default::default(),
        stop,
        drops,
        hold: args.scenario == Scenario::S3,
        subscribers: plan.subscribers,
        complete: Default::default(),
        started: Instant::now(),
    });
    let channels: Arc<Vec<String>> = Arc::new(
        (0..plan.channels)
            .map(|i| match args.scenario {
                Scenario::S2 => format!("user.{i}"),
                _ => format!("load.{i}"),
            })
            .collect(),
    );
    let total = plan.rate * plan.seconds;
    println!(
        "scenario {:?}: {} subscribers over {} channels, {} msg/s for {} s via {:?}",
        args.scenario, plan.subscribers, plan.channels, plan.rate, plan.seconds, args.via
    );

    let per_sub = args.channels_per_subscriber.max(1);
    if per_sub > 1 && args.scenario == Scenario::S5 {
        bail!("--channels-per-subscriber is not supported with S5 (resume is per channel)");
    }
    let rss_empty = rss_sum(&args.server_pid)?;
    let mut subs = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let mine = (0..per_sub)
            .map(|j| {
                let c = (i * per_sub + j) % plan.channels;
                (
                    channels[c].clone(),
                    client::expected_for(c, plan.channels, total),
                )
            })
            .collect();
        subs.push(tokio::spawn(client::subscriber(ctx.clone(), i, mine)));
    }
    let subscriptions = plan.subscribers * per_sub;
    let connect_time = wait_count(
        "subscribed",
        || ctx.subscribed.load(Ordering::Acquire),
        subscriptions,
        Duration::from_secs(120 + subscriptions as u64 / 2_000),
    )
    .await?;
    println!(
        "{} subscribers subscribed to {subscriptions} channel subscriptions in {:.2} s ({:.0}/s)",
        plan.subscribers,
        connect_time.as_secs_f64(),
        subscriptions as f64 / connect_time.as_secs_f64()
    );

    if args.scenario == Scenario::S3 {
        tokio::time::sleep(Duration::from_secs(plan.seconds)).await;
        if let (Some(after), Some(before)) = (rss_sum(&args.server_pid)?, rss_empty) {
            println!(
                "server RSS {} KiB with no connections, {} KiB with {} idle subscribed connections: {:.2} KiB per connection",
                before,
                after,
                plan.subscribers,
                (after.saturating_sub(before)) as f64 / plan.subscribers as f64
            );
        }
        println!(
            "loadgen RSS {} KiB",
            rss_kib(std::process::id()).unwrap_or(0)
        );
        ctx.stop.send_replace(true);
        for s in subs {
            s.await??;
        }
        return Ok(());
    }

    let mut churners = Vec::new();
    let unblocks_before = if args.scenario == Scenario::S4 {
        for i in 0..args.churn_connections {
            churners.push(tokio::spawn(client::churner(
                ctx.clone(),
                i,
                args.churn_rate as f64 / args.churn_connections as f64,
            )));
        }
        // Let the churn reach its rate before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(conn::scrape_counter(&ctx.dialer, "redistribute_client_unblock_total").await?)
    } else {
        None
    };

    let rss_before = rss_sum(&args.server_pid)?;
    let cpu_before = CpuSample::take(&args.server_pid, &args.redis_pid);
    let publish_start = Instant::now();
    let publish_offset_us = publish_start.duration_since(ctx.started).as_micros() as u64;
    let pad = "x".repeat(args.payload);
    let publisher = match args.via {
        Via::Ws => tokio::spawn(client::publish_ws(
            ctx.clone(),
            channels.clone(),
            plan.rate,
            total,
            pad,
        )),
        Via::Http => tokio::spawn(client::publish_http(
            ctx.clone(),
            channels.clone(),
            plan.rate,
            total,
            pad,
            args.http_workers,
            args.api_key.clone(),
        )),
    };

    let mut resume_time = None;
    if args.scenario == Scenario::S5 {
        let after = args.drop_after.unwrap_or(plan.seconds as f64 / 3.0);
        tokio::time::sleep(Duration::from_secs_f64(after)).await;
        println!("dropping all {} connections", plan.subscribers);
        ctx.drops.send_modify(|g| *g += 1);
        let took = wait_count(
            "resumed",
            || ctx.resumed.load(Ordering::Acquire),
            plan.subscribers,
            Duration::from_secs(120),
        )
        .await?;
        println!(
            "all {} subscribers resumed in {:.2} s",
            plan.subscribers,
            took.as_secs_f64()
        );
        resume_time = Some(took);
    }

    let publish_elapsed = publisher.await??;
    // Give deliveries up to 10 s after the last publish, then stop whoever is still waiting.
    let stopper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            ctx.stop.send_replace(true);
        })
    };
    let mut tally = Tally::default();
    for s in subs {
        tally.add(&s.await??);
    }
    let latency = ctx.timeline.latency();
    stopper.abort();
    let cpu_after = CpuSample::take(&args.server_pid, &args.redis_pid);
    let rss_after = rss_sum(&args.server_pid)?;
    let unblocks_after = match unblocks_before {
        Some(_) => {
            Some(conn::scrape_counter(&ctx.dialer, "redistribute_client_unblock_total").await?)
        }
        None => None,
    };
    let measured = publish_start.elapsed();
    ctx.stop.send_replace(true);
    let mut churned = Churned::default();
    for c in churners {
        let one = c.await??;
        churned.sent += one.sent;
        churned.seconds = churned.seconds.max(one.seconds);
        churned.subscribed += one.subscribed;
        churned.unsubscribed += one.unsubscribed;
        churned.errors += one.errors;
    }

    let delivery_span = Duration::from_micros(
        ctx.last_delivery_us
            .load(Ordering::Relaxed)
            .saturating_sub(publish_offset_us),
    )
    .max(publish_elapsed);
    let d = tally.delivered;
    println!(
        "published {total} in {:.2} s ({:.0}/s)",
        publish_elapsed.as_secs_f64(),
        total as f64 / publish_elapsed.as_secs_f64()
    );
    println!(
        "deliveries {d} of {} expected: {:.0}/s; lost {}, duplicates {}, out of order {}",
        tally.expected,
        d as f64 / delivery_span.as_secs_f64(),
        tally.lost(),
        tally.duplicates,
        tally.out_of_order
    );
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.9)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.999)),
        ms(latency.max())
    );
    let server_cpu = cpu_after.server.zip(cpu_before.server).map(|(a, b)| a - b);
    let redis_cpu = cpu_after.redis.zip(cpu_before.redis).map(|(a, b)| a - b);
    if let Some(cpu) = server_cpu {
        println!(
            "server CPU {:.2} s = {:.2} µs per delivery",
            cpu as f64 / 1e6,
            per(cpu, d)
        );
    }
    if let Some(cpu) = redis_cpu {
        println!(
            "redis CPU {:.2} s = {:.2} µs per delivery",
            cpu as f64 / 1e6,
            per(cpu, d)
        );
    }
    if let (Some(s), Some(r)) = (server_cpu, redis_cpu) {
        println!("server+redis CPU {:.2} µs per delivery", per(s + r, d));
    }
    println!(
        "loadgen CPU {:.2} s = {:.2} µs per delivery (same cores)",
        (cpu_after.loadgen - cpu_before.loadgen) as f64 / 1e6,
        per(cpu_after.loadgen - cpu_before.loadgen, d)
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let conns = plan.subscribers + 1 + churners_len(&args);
        println!(
            "server RSS {} KiB idle, {before} KiB subscribed, {after} KiB after the run: {:.2} KiB per connection",
            rss_empty.unwrap_or(0),
            before.saturating_sub(rss_empty.unwrap_or(0)) as f64 / conns as f64
        );
    }
    println!(
        "max gap between two frames at one subscriber (delivery stall): {:.1} ms",
        ms(tally.max_gap_us)
    );
    if let (Some(before), Some(after)) = (unblocks_before, unblocks_after) {
        let secs = measured.as_secs_f64();
        println!(
            "churn: {} pairs sent in {:.1} s ({:.0} pairs/s), {} subscribed + {} unsubscribed, {} errors; CLIENT UNBLOCK {:.0} calls = {:.1}/s",
            churned.sent,
            churned.seconds,
            churned.sent as f64 / churned.seconds.max(0.001),
            churned.subscribed,
            churned.unsubscribed,
            churned.errors,
            after - before,
            (after - before) / secs
        );
    }
    if let Some(took) = resume_time {
        println!(
            "reconnect storm: all {} resumed in {:.2} s",
            plan.subscribers,
            took.as_secs_f64()
        );
    }
    if let Some(path) = &args.plot {
        let seconds = ctx.timeline.seconds();
        let skip = (publish_offset_us / 1_000_000) as usize;
        let title = format!(
            "{:?}: {} subscribers, {} channels, {} msg/s",
            args.scenario, plan.subscribers, plan.channels, plan.rate
        );
        plot::write(path, &title, seconds.get(skip..).unwrap_or(&[]), &latency)
            .context("writing the plot")?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

fn churners_len(args: &Args) -> usize {
    if args.scenario == Scenario::S4 {
        args.churn_connections
    } else {
        0
    }
}
