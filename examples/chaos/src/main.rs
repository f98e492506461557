//! Chaos soak for redistribute: starts its own Redis (or Redis Cluster) and several server
//! instances on loopback, runs publishers, subscribers (native client, raw WebSocket, SSE,
//! long-poll) and consumer-group workers, injects faults on a seeded schedule, keeps an exact
//! ledger of what was acknowledged, delivered and reported missing, and checks it at the end.
//!
//! `cargo run --release -p chaos -- --seconds 60 [--seed S] [--cluster]`; the last stdout line
//! is a JSON summary, the exit status is non-zero when anything was lost or duplicated. See
//! `examples/chaos/README.md`.

mod faults;
mod infra;
mod ledger;
mod publish;
mod rng;
mod subscribe;
mod wire;
mod workers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::faults::Done;
use crate::infra::Infra;
use crate::ledger::{Ledger, Loss};
use crate::publish::PublishSpec;
use crate::rng::Rng;
use crate::subscribe::{Ctx, Handle};

/// Channel names: plain channels `chaos.c<i>`, and the jobs channel.
const JOBS: &str = "chaos.jobs";

#[derive(Debug, Parser)]
#[command(about = "Chaos soak for redistribute: seeded faults, an exact delivery ledger")]
struct Args {
    /// How long traffic and faults run, in seconds (then a quiet period to catch up).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule and client choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Run against a local Redis Cluster (3 primaries, 1 replica each) instead of one Redis.
    #[arg(long)]
    cluster: bool,
    /// Server instances.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Publishers (half native client, half raw WebSocket).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Subscribers of each kind (native, WebSocket, SSE, long-poll), each on every channel.
    #[arg(long, default_value_t = 3)]
    subscribers: usize,
    /// Consumer-group workers (half native, half raw WebSocket).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Plain channels; channel 0 has `--small-maxlen`, the others `--maxlen`.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Total messages per second over all publishers (plain channels).
    #[arg(long, default_value_t = 250)]
    rate: u64,
    /// Jobs per second.
    #[arg(long, default_value_t = 20)]
    job_rate: u64,
    /// `maxlen` of channel 0, small so that a stalled subscriber's history is trimmed.
    #[arg(long, default_value_t = 100)]
    small_maxlen: u64,
    /// `maxlen` of the other channels.
    #[arg(long, default_value_t = 20_000)]
    maxlen: u64,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 200)]
    pad: usize,
    /// Only these fault kinds (comma-separated names, e.g. `redis_term,client_stall`;
    /// default: every kind of the topology).
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    faults: Vec<String>,
    /// Mean seconds between faults.
    #[arg(long, default_value_t = 4.0)]
    fault_every: f64,
    /// Longest quiet period for subscribers and workers to catch up, in seconds.
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
    /// Write each server instance's and Redis' log into this directory at the end.
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(faults::now_ms);
    let known: Vec<&str> = faults::Kind::all(args.cluster)
        .into_iter()
        .map(faults::Kind::name)
        .collect();
    if let Some(bad) = args.faults.iter().find(|f| !known.contains(&f.as_str())) {
        eprintln!("chaos: unknown fault kind {bad:?} for this topology; known: {known:?}");
        std::process::exit(2);
    }
    let bin = infra::server_binary();
    eprintln!("chaos: seed {seed}, server binary {}", bin.display());
    let infra = match Infra::start(&bin, args.cluster, args.instances).await {
        Ok(infra) => Arc::new(Mutex::new(infra)),
        Err(e) => {
            eprintln!("chaos: cannot start the processes: {e:#}");
            std::process::exit(2);
        }
    };
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let outcome = tokio::select! {
        outcome = run(&args, seed, infra.clone()) => Some(outcome),
        _ = signals => None,
    };
    if let Some(dir) = &args.logs {
        if let Err(e) = infra.lock().await.save_logs(dir) {
            eprintln!("chaos: cannot save the logs: {e:#}");
        }
    }
    infra.lock().await.shutdown().await;
    match outcome {
        Some(Ok(failed)) => std::process::exit(i32::from(failed)),
        Some(Err(e)) => {
            eprintln!("chaos: {e:#}");
            std::process::exit(2);
        }
        None => {
            eprintln!("chaos: interrupted; every process it started was killed");
            std::process::exit(130);
        }
    }
}

/// The whole soak; `Ok(true)` when the ledger found loss or duplicates.
async fn run(args: &Args, seed: u64, infra: Arc<Mutex<Infra>>) -> Result<bool> {
    let (urls, addrs) = {
        let infra = infra.lock().await;
        (infra.ws_urls(), infra.addrs())
    };
    eprintln!(
        "chaos: {} Redis, instances {:?}",
        if args.cluster {
            "cluster"
        } else {
            "single (AOF, appendfsync always)"
        },
        addrs
    );
    let ledger = Arc::new(Ledger::default());
    let stop_traffic = CancellationToken::new();
    let stop_readers = CancellationToken::new();
    let stop_faults = CancellationToken::new();
    let channels: Vec<String> = (0..args.channels.max(1))
        .map(|i| format!("chaos.c{i}"))
        .collect();

    // Workers first: the group starts at `0`, so no job is missed either way.
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    for w in 0..args.workers {
        let name = format!("worker-{w}");
        let (ledger, stop, urls) = (ledger.clone(), stop_readers.clone(), urls.clone());
        readers.push(if w % 2 == 0 {
            tokio::spawn(workers::native(name, JOBS.into(), urls, ledger, stop))
        } else {
            let rng = Rng::derive(seed, 1000 + w as u64);
            tokio::spawn(workers::raw(name, JOBS.into(), urls, ledger, stop, rng))
        });
    }

    // Subscribers of every kind.
    let mut handles = Vec::new();
    for s in 0..args.subscribers {
        for kind in ["native", "ws", "sse", "poll"] {
            let name = format!("{kind}-{s}");
            let (tx, rx) = mpsc::channel(8);
            handles.push(Handle {
                name: name.clone(),
                tx,
            });
            let ctx = Ctx {
                name,
                channels: channels.clone(),
                urls: urls.clone(),
                addrs: addrs.clone(),
                ledger: ledger.clone(),
                stop: stop_readers.clone(),
            };
            let rng = Rng::derive(seed, 2000 + handles.len() as u64);
            readers.push(match kind {
                "native" => tokio::spawn(subscribe::native(ctx, rx, rng)),
                "ws" => tokio::spawn(subscribe::raw_ws(ctx, rx, rng)),
                "sse" => tokio::spawn(subscribe::sse(ctx, rx, rng)),
                _ => tokio::spawn(subscribe::poll(ctx, rx, rng)),
            });
        }
    }
    // Let subscriptions settle before traffic (not needed for correctness: each subscription's
    // start is recorded).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Publishers.
    let plain: Vec<(String, Option<u64>)> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let maxlen = if i == 0 {
                args.small_maxlen
            } else {
                args.maxlen
            };
            (c.clone(), Some(maxlen))
        })
        .collect();
    let publishers = args.publishers.max(1);
    let per_publisher = (args.rate.max(1) as f64) / publishers as f64;
    let mut writers: Vec<JoinHandle<()>> = Vec::new();
    for p in 0..publishers {
        let spec = PublishSpec {
            name: format!("pub-{p}-{seed}"),
            channels: plain.clone(),
            interval: Duration::from_secs_f64(1.0 / per_publisher),
            pad: args.pad,
            jobs: false,
        };
        let (ledger, stop, urls) = (ledger.clone(), stop_traffic.clone(), urls.clone());
        writers.push(if p % 2 == 0 {
            tokio::spawn(publish::native(spec, urls, ledger, stop))
        } else {
            let rng = Rng::derive(seed, 3000 + p as u64);
            tokio::spawn(publish::raw(spec, urls, ledger, stop, rng))
        });
    }
    if args.workers > 0 && args.job_rate > 0 {
        let spec = PublishSpec {
            name: format!("jobs-{seed}"),
            channels: vec![(JOBS.into(), None)],
            interval: Duration::from_secs_f64(1.0 / args.job_rate as f64),
            pad: 0,
            jobs: true,
        };
        let rng = Rng::derive(seed, 4000);
        writers.push(tokio::spawn(publish::raw(
            spec,
            urls.clone(),
            ledger.clone(),
            stop_traffic.clone(),
            rng,
        )));
    }

    // Faults.
    let schedule = faults::schedule(
        seed,
        args.seconds,
        args.cluster,
        Duration::from_secs_f64(args.fault_every.max(0.1)),
        &args.faults,
    );
    eprintln!("chaos: {} faults scheduled:", schedule.len());
    for f in &schedule {
        eprintln!(
            "chaos:   t={:>5.1}s {} target={} {:?}",
            f.at.as_secs_f64(),
            f.kind.name(),
            f.target % 1000,
            f.duration
        );
    }
    let origin = tokio::time::Instant::now();
    eprintln!(
        "chaos: t=0 is Unix ms {} (offsets' first part)",
        faults::now_ms()
    );
    let fault_task = tokio::spawn(faults::run(
        schedule,
        origin,
        infra.clone(),
        handles.clone(),
        stop_faults.clone(),
    ));

    // Traffic phase, with progress.
    let end = origin + Duration::from_secs(args.seconds);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep_until((tokio::time::Instant::now() + Duration::from_secs(5)).min(end))
            .await;
        let (jobs, _, acked) = ledger.job_counts();
        eprintln!(
            "chaos: t={:>5.1}s acknowledged {} jobs {jobs} acked {acked} publish errors {:?}",
            origin.elapsed().as_secs_f64(),
            ledger.acknowledged_count(),
            ledger.publish_errors()
        );
    }

    // Quiet period: no more faults, everything up, publishers finish, readers catch up.
    stop_faults.cancel();
    let done: Vec<Done> = tokio::time::timeout(Duration::from_secs(90), fault_task)
        .await
        .context("the fault in progress did not finish within 90 s")?
        .context("the fault task panicked")?;
    tokio::time::timeout(Duration::from_secs(60), infra.lock().await.heal())
        .await
        .context("healing timed out")?
        .context("healing the processes after the faults")?;
    stop_traffic.cancel();
    for writer in writers {
        if tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .is_err()
        {
            eprintln!("chaos: a publisher did not stop within 30 s");
        }
    }
    let settle_start = tokio::time::Instant::now();
    let settle_end = settle_start + Duration::from_secs(args.settle_seconds);
    loop {
        let lagging = ledger.lagging();
        let jobs_open = ledger.jobs_unacked().len();
        if lagging.is_empty() && jobs_open == 0 {
            eprintln!(
                "chaos: caught up {:.1}s after the traffic stopped",
                settle_start.elapsed().as_secs_f64()
            );
            break;
        }
        if tokio::time::Instant::now() >= settle_end {
            eprintln!(
                "chaos: not caught up after {}s: {} subscriptions lag, {jobs_open} jobs unacked; lagging: {:?}",
                args.settle_seconds,
                lagging.len(),
                lagging
                    .iter()
                    .take(12)
                    .map(|l| format!(
                        "{} {}: {} missing from {}, last delivered {:?}",
                        l.subscriber,
                        l.channel,
                        l.missing,
                        l.first_missing,
                        l.last_delivered.map(|o| o.to_string())
                    ))
                    .collect::<Vec<_>>()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_readers.cancel();
    for reader in readers {
        if tokio::time::timeout(Duration::from_secs(15), reader)
            .await
            .is_err()
        {
            eprintln!("chaos: a subscriber did not stop within 15 s");
        }
    }

    report(args, seed, &ledger, &done, &infra).await
}

/// Checks the ledger, cross-checks a sample of losses with Redis, prints the summary (last
/// stdout line: one JSON object); true when something was lost or duplicated.
async fn report(
    args: &Args,
    seed: u64,
    ledger: &Ledger,
    done: &[Done],
    infra: &Mutex<Infra>,
) -> Result<bool> {
    let verdict = ledger.verdict();
    let mut infra = infra.lock().await;

    // Jobs: acked, or still pending / not yet delivered in the group; otherwise lost.
    let (jobs_published, jobs_delivered, jobs_acked) = ledger.job_counts();
    let unacked = ledger.jobs_unacked();
    let mut jobs_lost = 0u64;
    let mut jobs_pending = 0u64;
    let mut jobs_ack_unconfirmed = 0u64;
    if !unacked.is_empty() {
        let (pending, last) = infra.group_state(JOBS, workers::GROUP).await?;
        let last = last.and_then(|l| redistribute_client::StreamId::parse(&l).ok());
        for offset in &unacked {
            let text = offset.to_string();
            let stored = infra.stored(JOBS, &text).await.unwrap_or(false);
            if pending.contains(&text) || (stored && last.is_none_or(|l| *offset > l)) {
                // Still to be delivered or acknowledged: not lost.
                jobs_pending += 1;
            } else if stored && ledger.job_seen(*offset) {
                // A worker got it and sent an ack whose answer was lost; the group no longer
                // holds it as pending, so that ack was applied.
                jobs_ack_unconfirmed += 1;
                eprintln!("chaos: job {offset}: ack applied but never answered");
            } else {
                jobs_lost += 1;
                eprintln!(
                    "chaos: job {offset} LOST: not acked, not pending, delivered to a worker: {}, still in Redis: {stored}",
                    ledger.job_seen(*offset)
                );
            }
        }
    }

    // Losses: by client kind, by the fault around them, and a sample checked with XRANGE.
    let mut by_client: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_fault: BTreeMap<String, u64> = BTreeMap::new();
    let mut distinct: BTreeMap<(String, redistribute_client::StreamId), Vec<&Loss>> =
        BTreeMap::new();
    for loss in &verdict.losses {
        *by_client.entry(loss.kind).or_default() += 1;
        *by_fault
            .entry(nearest_fault(done, loss.offset.ms))
            .or_default() += 1;
        distinct
            .entry((loss.channel.clone(), loss.offset))
            .or_default()
            .push(loss);
    }
    let mut sample_checked = 0u64;
    let mut sample_stored = 0u64;
    for ((channel, offset), losses) in distinct.iter().take(20) {
        let stored = infra
            .stored(channel, &offset.to_string())
            .await
            .unwrap_or(false);
        sample_checked += 1;
        sample_stored += u64::from(stored);
        let who: Vec<String> = losses.iter().map(|l| l.subscriber.clone()).collect();
        let gaps = ledger.gaps_of(losses[0].sub);
        eprintln!(
            "chaos: LOST {channel} {offset} (still in Redis: {stored}; received by {} other subscriptions; near {}) for {who:?}; gaps of {}: {:?}",
            ledger.delivered_to(channel, *offset),
            nearest_fault(done, offset.ms),
            losses[0].subscriber,
            gaps.iter().map(|(a, b)| format!("({a},{b}]")).collect::<Vec<_>>()
        );
    }

    let mut fault_counts: BTreeMap<&str, u64> = BTreeMap::new();
    for d in done.iter().filter(|d| d.ok) {
        *fault_counts.entry(d.kind.name()).or_default() += 1;
    }
    let failed_faults = done.iter().filter(|d| !d.ok).count();
    let lost_uncovered = verdict.losses.len() as u64;
    let duplicates = verdict.duplicates;
    let failed = lost_uncovered > 0
        || duplicates > 0
        || verdict.out_of_order > 0
        || verdict.double_stored > 0
        || jobs_lost > 0;
    eprintln!(
        "chaos: {} subscriptions, {} with loss; {} distinct offsets lost; {} skipped inside reported gaps; {} out of order; {} stored twice; jobs published {jobs_published} delivered {jobs_delivered} acked {jobs_acked} pending {jobs_pending} lost {jobs_lost}; faults failed {failed_faults}",
        verdict.subscriptions,
        verdict.subscriptions_with_loss,
        distinct.len(),
        verdict.covered_by_gaps,
        verdict.out_of_order,
        verdict.double_stored
    );
    let summary = json!({
        "seconds": args.seconds,
        "acknowledged": verdict.acknowledged,
        "delivered": verdict.delivered,
        "lost_uncovered": lost_uncovered,
        "duplicates": duplicates,
        "gaps_reported": verdict.gaps_reported,
        "jobs_acked": jobs_acked,
        "jobs_lost": jobs_lost,
        "faults": fault_counts,
        "seed": seed,
        "cluster": args.cluster,
        "lost_distinct_offsets": distinct.len(),
        "lost_by_client": by_client,
        "lost_by_fault": by_fault,
        "lost_sample_checked": sample_checked,
        "lost_sample_in_redis": sample_stored,
        "covered_by_gaps": verdict.covered_by_gaps,
        "out_of_order": verdict.out_of_order,
        "double_stored": verdict.double_stored,
        "jobs_pending": jobs_pending,
        "jobs_ack_unconfirmed": jobs_ack_unconfirmed,
        "faults_failed": failed_faults,
        "publish_errors": ledger.publish_errors(),
    });
    println!("{summary}");
    Ok(failed)
}

/// The kind of the last fault that started at most 10 s before `ms` (a Unix-ms offset time)
/// and had not ended more than 10 s before it; `none` otherwise.
fn nearest_fault(done: &[Done], ms: u64) -> String {
    done.iter()
        .filter(|d| d.started_ms <= ms + 1_000 && ms <= d.ended_ms + 10_000)
        .max_by_key(|d| d.started_ms)
        .map_or_else(|| "none".to_owned(), |d| d.kind.name().to_owned())
}
