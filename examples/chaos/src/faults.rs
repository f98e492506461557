//! The seeded fault schedule and its execution.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::infra::Infra;
use crate::rng::Rng;
use crate::subscribe::{Control, Handle};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL a server instance, restart it on the same port.
    ServerKill,
    /// SIGTERM a server instance (drain: clients resume elsewhere), restart it.
    ServerDrain,
    /// SIGKILL Redis, restart it on the same port and data (AOF, `appendfsync always`).
    RedisKill,
    /// SIGTERM Redis (clean shutdown), restart it on the same port and data.
    RedisTerm,
    /// `CLUSTER FAILOVER` on the replica of a primary (cluster only).
    RedisFailover,
    /// A subscriber stops reading for a few seconds.
    ClientStall,
    /// A subscriber's connection is dropped; it resumes on the next instance.
    ConnectionReset,
    /// A subscriber unsubscribes a channel and subscribes again from its last offset.
    Churn,
}

impl Kind {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ServerKill => "server_kill",
            Kind::ServerDrain => "server_drain",
            Kind::RedisKill => "redis_kill",
            Kind::RedisTerm => "redis_term",
            Kind::RedisFailover => "redis_failover",
            Kind::ClientStall => "client_stall",
            Kind::ConnectionReset => "connection_reset",
            Kind::Churn => "churn",
        }
    }

    /// The kinds for a topology.
    pub fn all(cluster: bool) -> Vec<Kind> {
        let mut kinds = vec![Kind::ServerKill, Kind::ServerDrain];
        if cluster {
            kinds.push(Kind::RedisFailover);
        } else {
            kinds.extend([Kind::RedisKill, Kind::RedisTerm]);
        }
        kinds.extend([Kind::ClientStall, Kind::ConnectionReset, Kind::Churn]);
        kinds
    }
}

/// One scheduled fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// When, from the start of the traffic.
    pub at: Duration,
    /// What.
    pub kind: Kind,
    /// Which instance, primary or subscriber (modulo their number).
    pub target: u64,
    /// A second choice (the channel for churn).
    pub detail: u64,
    /// How long the thing stays down or stalled.
    pub duration: Duration,
}

/// The schedule for `seed`: one fault every `every` (±25 %) from 3 s until 3 s before the
/// end, kinds in a seeded order that uses every kind once before any repeats.
/// `only`, when not empty, restricts the kinds to those names.
pub fn schedule(
    seed: u64,
    seconds: u64,
    cluster: bool,
    every: Duration,
    only: &[String],
) -> Vec<Fault> {
    let mut rng = Rng::derive(seed, 0xFA17);
    let kinds: Vec<Kind> = Kind::all(cluster)
        .into_iter()
        .filter(|k| only.is_empty() || only.iter().any(|o| o == k.name()))
        .collect();
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut bag: Vec<Kind> = Vec::new();
    let mut faults = Vec::new();
    let end = Duration::from_secs(seconds.saturating_sub(3));
    let every_ms = every.as_millis().max(100) as u64;
    let mut at = Duration::from_secs(3);
    while at < end {
        if bag.is_empty() {
            bag = kinds.clone();
            // Fisher–Yates with the seeded generator.
            for i in (1..bag.len()).rev() {
                bag.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let kind = bag.pop().expect("refilled above");
        let duration = match kind {
            Kind::ClientStall => Duration::from_millis(rng.range(3_000, 8_000)),
            Kind::ServerKill | Kind::ServerDrain => Duration::from_millis(rng.range(200, 2_000)),
            Kind::RedisKill | Kind::RedisTerm => Duration::from_millis(rng.range(200, 1_500)),
            _ => Duration::ZERO,
        };
        faults.push(Fault {
            at,
            kind,
            target: rng.next_u64(),
            detail: rng.next_u64(),
            duration,
        });
        at += Duration::from_millis(rng.range(every_ms * 3 / 4, every_ms * 5 / 4));
    }
    faults
}

/// A fault that was carried out, with wall-clock bounds (Unix ms, comparable with offsets).
#[derive(Debug, Clone)]
pub struct Done {
    /// What.
    pub kind: Kind,
    /// Started (Unix ms).
    pub started_ms: u64,
    /// Finished (Unix ms).
    pub ended_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Carries out `faults` in order at their times (from `origin`) until `stop`.
pub async fn run(
    faults: Vec<Fault>,
    origin: tokio::time::Instant,
    infra: Arc<Mutex<Infra>>,
    subscribers: Vec<Handle>,
    stop: CancellationToken,
) -> Vec<Done> {
    let mut done = Vec::new();
    for fault in faults {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(origin + fault.at) => {}
        }
        let started_ms = now_ms();
        let (what, result) = execute(&fault, &infra, &subscribers).await;
        let ok = result.is_ok();
        match &result {
            Ok(()) => eprintln!(
                "chaos: t={:>5.1}s fault {} {what}",
                origin.elapsed().as_secs_f64(),
                fault.kind.name()
            ),
            Err(e) => eprintln!(
                "chaos: t={:>5.1}s fault {} {what} FAILED: {e:#}",
                origin.elapsed().as_secs_f64(),
                fault.kind.name()
            ),
        }
        done.push(Done {
            kind: fault.kind,
            started_ms,
            ended_ms: now_ms(),
            ok,
        });
    }
    done
}

async fn execute(
    fault: &Fault,
    infra: &Mutex<Infra>,
    subscribers: &[Handle],
) -> (String, anyhow::Result<()>) {
    let down = fault.duration;
    match fault.kind {
        Kind::ServerKill | Kind::ServerDrain => {
            let mut infra = infra.lock().await;
            let i = (fault.target % infra.servers.len() as u64) as usize;
            let port = infra.servers[i].port();
            let result = if fault.kind == Kind::ServerKill {
                infra.kill_server(i, down).await
            } else {
                infra.drain_server(i, down).await
            };
            (format!("instance :{port}, down {down:?}"), result)
        }
        Kind::RedisKill | Kind::RedisTerm => {
            let mut infra = infra.lock().await;
            let result = infra
                .restart_redis(fault.kind == Kind::RedisKill, down)
                .await;
            (format!("redis down {down:?}"), result)
        }
        Kind::RedisFailover => {
            let mut infra = infra.lock().await;
            match infra.failover(fault.target as usize).await {
                Ok((old, new)) => (format!("primary :{old} -> :{new}"), Ok(())),
                Err(e) => ("failover".into(), Err(e)),
            }
        }
        Kind::ClientStall | Kind::ConnectionReset | Kind::Churn => {
            if subscribers.is_empty() {
                return (
                    "no subscriber".into(),
                    Err(anyhow::anyhow!("no subscribers")),
                );
            }
            let handle = &subscribers[(fault.target % subscribers.len() as u64) as usize];
            let command = match fault.kind {
                Kind::ClientStall => Control::Stall(down),
                Kind::ConnectionReset => Control::Reset,
                _ => Control::Churn(fault.detail as usize),
            };
            let result = handle
                .tx
                .try_send(command)
                .map_err(|e| anyhow::anyhow!("subscriber busy: {e}"));
            (format!("{} {command:?}", handle.name), result)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_its_schedule_and_covers_the_kinds() {
        let a = schedule(42, 60, false, Duration::from_secs(4), &[]);
        let b = schedule(42, 60, false, Duration::from_secs(4), &[]);
        let c = schedule(43, 60, false, Duration::from_secs(4), &[]);
        let key = |s: &[Fault]| -> Vec<(Duration, Kind, u64)> {
            s.iter().map(|f| (f.at, f.kind, f.target)).collect()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(a.len() >= 10, "{}", a.len());
        let mut kinds: Vec<Kind> = a.iter().map(|f| f.kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), Kind::all(false).len());
        assert!(a
            .iter()
            .all(|f| f.at >= Duration::from_secs(3) && f.at < Duration::from_secs(57)));
        let cluster = schedule(1, 60, true, Duration::from_secs(4), &[]);
        assert!(cluster.iter().any(|f| f.kind == Kind::RedisFailover));
        assert!(cluster
            .iter()
            .all(|f| !matches!(f.kind, Kind::RedisKill | Kind::RedisTerm)));
        assert!(schedule(1, 5, false, Duration::from_secs(4), &[]).is_empty());
        let only = ["redis_term".to_owned(), "churn".to_owned()];
        let some = schedule(1, 60, false, Duration::from_secs(4), &only);
        assert!(some.len() >= 10);
        assert!(some
            .iter()
            .all(|f| matches!(f.kind, Kind::RedisTerm | Kind::Churn)));
        let none = ["redis_failover".to_owned()];
        assert!(schedule(1, 60, false, Duration::from_secs(4), &none).is_empty());
    }
}
