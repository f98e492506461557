//! Run with `cargo run -p workers -- [--target ws://127.0.0.1:8080/ws]… [--workers 3] [--jobs 1000]`.
//!
//! A fleet of workers sharing the job channel `jobs` through the consumer group `workers`,
//! and a producer. Each worker is its own client (as it would be on its own machine), joins
//! the group under its own consumer name, "processes" each job (a short sleep) and
//! acknowledges it; the server hands each job to exactly one worker. Targets are used
//! round-robin, so with several server instances the workers spread over them. At the end it
//! prints how many jobs each worker did and the throughput.
//!
//! Start a server first, e.g. `cargo run --release -p redistribute-cli` (embedded engine),
//! or two instances on one Redis to see workers on different instances share the load.
//! A job that is not acknowledged (kill a worker process mid-way) is redelivered to another
//! worker after `--group-claim-idle-ms`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redistribute_client::{Client, Offset};
use serde_json::json;
use tokio::sync::mpsc;

struct Args {
    targets: Vec<String>,
    workers: usize,
    jobs: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        targets: Vec::new(),
        workers: 3,
        jobs: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => args.targets.push(value()?),
            "--workers" => args.workers = value()?.parse()?,
            "--jobs" => args.jobs = value()?.parse()?,
            other => bail!("unknown flag {other}; see the doc comment at the top of main.rs"),
        }
    }
    if args.targets.is_empty() {
        args.targets.push("ws://127.0.0.1:8080/ws".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let (done_tx, mut done) = mpsc::channel::<(String, u64)>(1024);
    let mut clients = Vec::new();
    for i in 0..args.workers {
        let target = args.targets[i % args.targets.len()].clone();
        let name = format!("worker-{}", i + 1);
        let client = Client::builder()
            .targets([target.clone()])
            .connect()
            .await?;
        // Latest: a new group starts with jobs published from now on.
        let mut jobs = client
            .subscribe_group("jobs", "workers", name.clone(), Offset::Latest)
            .await?;
        println!("{name} joined via {target}");
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                tokio::time::sleep(Duration::from_millis(1)).await; // the work
                let seq = job.fields["seq"].as_u64().unwrap_or_default();
                if job.ack().await.is_ok() {
                    let _ = done_tx.send((name.clone(), seq)).await;
                }
            }
        });
        clients.push(client);
    }
    let producer = Client::builder()
        .targets(args.targets.clone())
        .connect()
        .await?;
    let started = Instant::now();
    for seq in 0..args.jobs {
        producer.publish("jobs", json!({ "seq": seq })).await?;
    }
    println!("published {} jobs in {:?}", args.jobs, started.elapsed());
    let mut per_worker: HashMap<String, u64> = HashMap::new();
    for _ in 0..args.jobs {
        let (name, _) = tokio::time::timeout(Duration::from_secs(60), done.recv())
            .await
            .context("no job finished within 60 s")?
            .context("workers stopped")?;
        *per_worker.entry(name).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let mut counts: Vec<_> = per_worker.into_iter().collect();
    counts.sort();
    for (name, n) in counts {
        println!("{name}: {n} jobs");
    }
    println!(
        "{} jobs in {elapsed:?}: {:.0} jobs/s",
        args.jobs,
        args.jobs as f64 / elapsed.as_secs_f64()
    );
    for client in clients {
        client.close().await;
    }
    producer.close().await;
    Ok(())
}
