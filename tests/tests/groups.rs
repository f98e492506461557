//! Consumer-group workers end to end (issue 8): real redis-server, real server processes, the
//! native client as workers (and the CLI as a worker that gets killed). Every wait is bounded;
//! nothing asserts on timing.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{start_server, Backend, STEP};
use futures_util::future::try_join_all;
use redistribute_client::{Client, Error as ClientError, GroupSubscription, Offset, StreamId};
use redistribute_testkit::{http_get, server_binary, RedisServer, ServerProcess};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

/// Runs `fut` with a generous bound.
async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))
}

async fn connect(server: &ServerProcess) -> Result<Client> {
    within(
        "connect",
        STEP,
        Client::builder().targets([server.ws_url()]).connect(),
    )
    .await?
    .context("connect")
}

async fn join(client: &Client, consumer: &str) -> Result<GroupSubscription> {
    within(
        "subscribe_group",
        STEP,
        client.subscribe_group("jobs", "workers", consumer, Offset::Earliest),
    )
    .await?
    .context("subscribe_group")
}

/// Publishes jobs `seq` in `range` to `jobs`, 50 in flight at a time.
async fn produce(client: &Client, range: std::ops::Range<u64>) -> Result<Vec<StreamId>> {
    let mut offsets = Vec::new();
    let seqs: Vec<u64> = range.collect();
    for chunk in seqs.chunks(50) {
        let publishes = chunk
            .iter()
            .map(|&seq| client.publish("jobs", json!({ "seq": seq })));
        offsets.extend(within("publish", STEP, try_join_all(publishes)).await??);
    }
    Ok(offsets)
}

/// Which worker processed which job (by seq), in order of processing.
type Ledger = Arc<Mutex<Vec<(u64, String)>>>;

/// A worker that "processes" each job (1 ms of work), records it and acknowledges it.
fn spawn_worker(
    name: &str,
    mut jobs: GroupSubscription,
    ledger: Ledger,
) -> tokio::task::JoinHandle<Result<()>> {
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let seq = job.fields["seq"].as_u64().context("seq")?;
            ledger.lock().await.push((seq, name.clone()));
            match job.ack().await {
                Ok(_) => {}
                // The test closed the client once every job was recorded: an ack still in
                // flight then ends the worker (the job stays pending, like a crash).
                Err(ClientError::Closed) => break,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    })
}

/// Waits until the ledger holds every seq of `0..n` (checked every 50 ms, bounded).
async fn wait_all_processed(ledger: &Ledger, n: u64, limit: Duration) -> Result<()> {
    within("processing every job", limit, async {
        loop {
            {
                let l = ledger.lock().await;
                let mut seen: Vec<u64> = l.iter().map(|(s, _)| *s).collect();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() as u64 >= n {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Waits until the server has exactly `n` WebSocket connections open (a closed client's
/// connection, and with it its group membership, is gone), checked every 50 ms, bounded.
async fn wait_connections(server: &ServerProcess, n: usize) -> Result<()> {
    within("connections to close", STEP, async {
        loop {
            let page = http_get(server.addr(), "/metrics", STEP).await?.text();
            let open: f64 = page
                .lines()
                .filter(|l| l.starts_with("redistribute_connections{transport=\"ws\"}"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if open as usize == n {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

async fn two_instances(flags: &[&str]) -> Result<(RedisServer, ServerProcess, ServerProcess)> {
    let redis = RedisServer::start().await?;
    let a = start_server(Some(&redis), flags).await?;
    let b = start_server(Some(&redis), flags).await?;
    Ok((redis, a, b))
}

/// Must show 1: three workers on two instances share 3,000 jobs, each processed exactly once,
/// the split roughly even.
#[tokio::test]
async fn three_workers_on_two_instances_share_jobs_exactly_once() -> Result<()> {
    const JOBS: u64 = 3_000;
    let (_redis, a, b) = two_instances(&[]).await?;
    let ledger: Ledger = Arc::default();
    let mut workers = Vec::new();
    let mut clients = Vec::new();
    for (name, server) in [("w1", &a), ("w2", &a), ("w3", &b)] {
        let client = connect(server).await?;
        workers.push(spawn_worker(
            name,
            join(&client, name).await?,
            ledger.clone(),
        ));
        clients.push(client);
    }
    let producer = connect(&a).await?;
    let started = Instant::now();
    produce(&producer, 0..JOBS).await?;
    wait_all_processed(&ledger, JOBS, Duration::from_secs(120)).await?;
    let elapsed = started.elapsed();
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ledger = ledger.lock().await.clone();
    let mut per_job: HashMap<u64, usize> = HashMap::new();
    let mut per_worker: HashMap<String, u64> = HashMap::new();
    for (seq, worker) in &ledger {
        *per_job.entry(*seq).or_default() += 1;
        *per_worker.entry(worker.clone()).or_default() += 1;
    }
    ensure!(per_job.len() as u64 == JOBS, "{} jobs seen", per_job.len());
    let twice: Vec<_> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "jobs processed more than once: {twice:?}");
    for name in ["w1", "w2", "w3"] {
        let n = per_worker.get(name).copied().unwrap_or(0);
        ensure!(
            n * 100 >= JOBS * 15,
            "uneven split {per_worker:?}: {name} did {n}"
        );
    }
    eprintln!(
        "3 workers, 2 instances: {JOBS} jobs in {elapsed:?} ({:.0} jobs/s), split {per_worker:?}",
        JOBS as f64 / elapsed.as_secs_f64()
    );
    for client in &clients {
        client.close().await;
    }
    for w in workers {
        within("worker end", STEP, w).await???;
    }
    Ok(())
}

/// A `redistribute sub --group` worker process that never acknowledges.
struct CliWorker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl CliWorker {
    fn spawn(server: &ServerProcess, consumer: &str) -> Result<CliWorker> {
        let mut child = tokio::process::Command::new(server_binary())
            .args(["sub", "jobs", "--group", "workers", "--consumer", consumer])
            .args(["--from", "0", "--target", &server.ws_url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(CliWorker {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next printed job's seq.
    async fn next_seq(&mut self) -> Result<u64> {
        let line = within("a job line", STEP, self.lines.next_line())
            .await??
            .context("the worker exited")?;
        let value: serde_json::Value = serde_json::from_str(&line)?;
        value["fields"]["seq"].as_u64().context("seq")
    }
}

/// Must show 2: a worker killed with jobs in flight; its unacknowledged jobs go to the others
/// after the idle time, none lost.
#[tokio::test]
async fn a_killed_worker_s_jobs_are_redelivered_to_the_others() -> Result<()> {
    const JOBS: u64 = 200;
    let (_redis, a, b) = two_instances(&["--group-claim-idle-ms", "1000"]).await?;
    let producer = connect(&a).await?;
    let mut doomed = CliWorker::spawn(&b, "doomed")?;
    // Wait until the doomed worker joined (it prints its first job), then publish the rest.
    produce(&producer, 0..1).await?;
    let mut in_flight = vec![doomed.next_seq().await?];
    produce(&producer, 1..JOBS).await?;
    for _ in 0..10 {
        in_flight.push(doomed.next_seq().await?);
    }
    doomed.child.kill().await?;
    let ledger: Ledger = Arc::default();
    let mut workers = Vec::new();
    let mut clients = Vec::new();
    for (name, server) in [("w1", &a), ("w2", &b)] {
        let client = connect(server).await?;
        workers.push(spawn_worker(
            name,
            join(&client, name).await?,
            ledger.clone(),
        ));
        clients.push(client);
    }
    wait_all_processed(&ledger, JOBS, Duration::from_secs(60)).await?;
    let ledger = ledger.lock().await.clone();
    for seq in &in_flight {
        ensure!(
            ledger.iter().any(|(s, _)| s == seq),
            "job {seq} of the killed worker was never redelivered"
        );
    }
    eprintln!(
        "killed worker held {} printed jobs; all {JOBS} processed by the others",
        in_flight.len()
    );
    for client in &clients {
        client.close().await;
    }
    Ok(())
}

/// Must show 3: a job that always fails reaches `<channel>:dead` after the max delivery count,
/// and the others are processed once.
#[tokio::test]
async fn a_poison_job_reaches_the_dead_letter_channel() -> Result<()> {
    let redis = RedisServer::start().await?;
    let flags = [
        "--group-claim-idle-ms",
        "300",
        "--group-max-deliveries",
        "3",
    ];
    let server = start_server(Some(&redis), &flags).await?;
    let client = connect(&server).await?;
    let mut dead = within(
        "subscribe dead",
        STEP,
        client.subscribe("jobs:dead", Offset::Earliest),
    )
    .await??;
    let mut jobs = join(&client, "w1").await?;
    client.publish("jobs", json!({"seq": 1})).await?;
    let poison = client
        .publish("jobs", json!({"seq": 2, "poison": true}))
        .await?;
    client.publish("jobs", json!({"seq": 3})).await?;
    let worker = tokio::spawn(async move {
        let mut seen: Vec<u64> = Vec::new();
        while let Some(job) = jobs.recv().await {
            let seq = job.fields["seq"].as_u64().unwrap_or_default();
            seen.push(seq);
            if job.fields.get("poison").is_none() {
                job.ack().await?;
            } // else: processing fails, no ack
        }
        anyhow::Ok(seen)
    });
    let letter = within("the dead letter", Duration::from_secs(60), dead.recv())
        .await?
        .context("dead-letter subscription ended")?;
    ensure!(letter.fields["seq"] == 2, "{:?}", letter.fields);
    ensure!(letter.fields["poison"] == true);
    let info = &letter.fields["dead_letter"];
    ensure!(info["offset"] == poison.to_string(), "{info}");
    ensure!(info["deliveries"] == 4, "{info}");
    ensure!(
        info["channel"] == "jobs" && info["group"] == "workers",
        "{info}"
    );
    client.close().await;
    let seen = within("worker end", STEP, worker).await???;
    let poison_deliveries = seen.iter().filter(|s| **s == 2).count();
    ensure!(
        poison_deliveries == 3,
        "poison delivered {poison_deliveries} times: {seen:?}"
    );
    ensure!(
        seen.iter().filter(|s| **s != 2).count() == 2,
        "good jobs: {seen:?}"
    );
    Ok(())
}

/// Must show 4: a worker that reconnects under the same consumer name gets its pending jobs
/// first, then new ones.
async fn reconnecting_worker_gets_its_pending_jobs_first(backend: Backend) -> Result<()> {
    let setup = common::setup(backend, &["--group-claim-idle-ms", "600000"]).await?;
    let server = &setup.server;
    let producer = connect(server).await?;
    let first = connect(server).await?;
    let mut jobs = join(&first, "w1").await?;
    let pending = produce(&producer, 0..5).await?;
    let mut got = Vec::new();
    for _ in 0..5 {
        let job = within("job", STEP, jobs.recv()).await?.context("ended")?;
        got.push(job.offset); // not acknowledged
    }
    ensure!(got == pending, "{got:?} != {pending:?}");
    first.close().await;
    let new = produce(&producer, 5..10).await?;
    let second = connect(server).await?;
    let mut jobs = join(&second, "w1").await?;
    let mut order = Vec::new();
    for _ in 0..10 {
        let job = within("job", STEP, jobs.recv()).await?.context("ended")?;
        ensure!(job.ack().await?, "job {} was not pending", job.offset);
        order.push(job.offset);
    }
    ensure!(order[..5] == pending[..], "pending first: {order:?}");
    ensure!(order[5..] == new[..], "then new: {order:?}");
    second.close().await;
    Ok(())
}

#[tokio::test]
async fn reconnecting_worker_gets_its_pending_jobs_first_redis() -> Result<()> {
    reconnecting_worker_gets_its_pending_jobs_first(Backend::Redis).await
}

#[tokio::test]
async fn reconnecting_worker_gets_its_pending_jobs_first_embedded() -> Result<()> {
    reconnecting_worker_gets_its_pending_jobs_first(Backend::Embedded).await
}

/// A worker that takes the poison job and crashes before acknowledging it, reconnecting each
/// time (alternately to each instance, well within the claim idle time), gets it at most
/// `max` times: the next join moves it to `jobs:dead` (deliveries `max + 1`) instead of
/// delivering it again, and the other jobs keep flowing.
async fn a_job_whose_worker_keeps_crashing_is_dead_lettered(
    backend: Backend,
    max: u64,
) -> Result<()> {
    let max_flag = max.to_string();
    let flags = [
        "--group-claim-idle-ms",
        "600000",
        "--group-max-deliveries",
        &max_flag,
    ];
    let setup = common::setup(backend, &flags).await?;
    let mut servers = vec![setup.server];
    if let Some(redis) = &setup.redis {
        servers.push(start_server(Some(redis), &flags).await?);
    }
    let producer = connect(&servers[0]).await?;
    let mut dead = within(
        "subscribe dead",
        STEP,
        producer.subscribe("jobs:dead", Offset::Earliest),
    )
    .await??;
    let poison = produce(&producer, 0..1).await?[0];
    for attempt in 0..max {
        let server = &servers[attempt as usize % servers.len()];
        let worker = connect(server).await?;
        let mut jobs = join(&worker, "w1").await?;
        let job = within("job", STEP, jobs.recv()).await?.context("ended")?;
        ensure!(
            job.offset == poison,
            "delivery {} was {} instead of the poison job",
            attempt + 1,
            job.offset
        );
        within("close", STEP, worker.close()).await?; // crashed: no ack
                                                      // Its connection (and so its membership) is gone before the next one joins.
        let producers = usize::from((attempt as usize).is_multiple_of(servers.len()));
        wait_connections(server, producers).await?;
    }
    let good = produce(&producer, 1..4).await?;
    let server = &servers[max as usize % servers.len()];
    let worker = connect(server).await?;
    let mut jobs = join(&worker, "w1").await?;
    for expected in &good {
        let job = within("job", STEP, jobs.recv()).await?.context("ended")?;
        ensure!(
            job.offset == *expected,
            "got {} (poison {poison}) instead of the good job {expected}",
            job.offset
        );
        ensure!(job.ack().await?, "job {} was not pending", job.offset);
    }
    let letter = within("the dead letter", STEP, dead.recv())
        .await?
        .context("dead-letter subscription ended")?;
    let info = &letter.fields["dead_letter"];
    ensure!(letter.fields["seq"] == 0, "{:?}", letter.fields);
    ensure!(info["offset"] == poison.to_string(), "{info}");
    ensure!(info["deliveries"] == max + 1, "{info}");
    ensure!(
        info["channel"] == "jobs" && info["group"] == "workers",
        "{info}"
    );
    // Gone from the pending list: a consumer joining again gets only a new job.
    within("close", STEP, worker.close()).await?;
    let producers = usize::from((max as usize).is_multiple_of(servers.len()));
    wait_connections(server, producers).await?;
    let last = produce(&producer, 4..5).await?;
    let worker = connect(&servers[0]).await?;
    let mut jobs = join(&worker, "w1").await?;
    let job = within("job", STEP, jobs.recv()).await?.context("ended")?;
    ensure!(
        job.offset == last[0],
        "got {} after the dead letter",
        job.offset
    );
    worker.close().await;
    producer.close().await;
    Ok(())
}

#[tokio::test]
async fn a_job_whose_worker_keeps_crashing_is_dead_lettered_redis() -> Result<()> {
    for max in [1, 3] {
        a_job_whose_worker_keeps_crashing_is_dead_lettered(Backend::Redis, max)
            .await
            .with_context(|| format!("max deliveries {max}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_job_whose_worker_keeps_crashing_is_dead_lettered_embedded() -> Result<()> {
    for max in [1, 3] {
        a_job_whose_worker_keeps_crashing_is_dead_lettered(Backend::Embedded, max)
            .await
            .with_context(|| format!("max deliveries {max}"))?;
    }
    Ok(())
}

/// Jobs published one at a time (each worker idle when a job comes, as with a slow
/// producer) are shared per worker, not per instance: w1 and w2 on instance A and w3 on
/// instance B each get about a third (instances used to race for each job, so B's single
/// worker got half of them).
#[tokio::test]
async fn jobs_trickling_in_are_shared_per_worker_across_instances() -> Result<()> {
    const JOBS: u64 = 600;
    let (_redis, a, b) = two_instances(&[]).await?;
    let ledger: Ledger = Arc::default();
    let mut workers = Vec::new();
    let mut clients = Vec::new();
    for (name, server) in [("w1", &a), ("w2", &a), ("w3", &b)] {
        let client = connect(server).await?;
        workers.push(spawn_worker(
            name,
            join(&client, name).await?,
            ledger.clone(),
        ));
        clients.push(client);
    }
    let producer = connect(&a).await?;
    for seq in 0..JOBS {
        within(
            "publish",
            STEP,
            producer.publish("jobs", json!({ "seq": seq })),
        )
        .await??;
    }
    wait_all_processed(&ledger, JOBS, Duration::from_secs(120)).await?;
    let ledger = ledger.lock().await.clone();
    let mut per_worker: HashMap<String, u64> = HashMap::new();
    for (_, worker) in &ledger {
        *per_worker.entry(worker.clone()).or_default() += 1;
    }
    eprintln!("{JOBS} jobs one at a time, 3 workers on 2 instances: split {per_worker:?}");
    for name in ["w1", "w2", "w3"] {
        let n = per_worker.get(name).copied().unwrap_or(0);
        // A fair share is a third (200); racing instances gave w3 half (300) and w1, w2 a
        // quarter (150) each.
        ensure!(
            (JOBS * 25 / 100..=JOBS * 42 / 100).contains(&n),
            "uneven split {per_worker:?}: {name} did {n}"
        );
    }
    for client in &clients {
        client.close().await;
    }
    for w in workers {
        within("worker end", STEP, w).await???;
    }
    Ok(())
}
