//! Delivery bookkeeping: per-subscriber sequence tracking (loss, duplicates, out-of-order),
//! latency histograms, a per-second timeline, and process CPU/RSS from /proc.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Microseconds since the Unix epoch (the `t` field of every published message).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// A latency histogram from 1 µs to 2 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// What one subscriber saw.
#[derive(Default, Clone)]
pub struct Tally {
    /// Distinct messages received.
    pub delivered: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages received after a later one of the same channel.
    pub out_of_order: u64,
    /// Messages expected by this subscriber.
    pub expected: u64,
    /// Longest gap between two consecutive frames while messages were flowing (µs).
    pub max_gap_us: u64,
}

impl Tally {
    /// Adds another subscriber's tally.
    pub fn add(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.expected += other.expected;
        self.max_gap_us = self.max_gap_us.max(other.max_gap_us);
    }

    /// Expected messages that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
}

/// One subscriber's view of one channel: which sequence numbers arrived.
pub struct SeqTracker {
    seen: Vec<u64>,
    max_seen: Option<u64>,
    last_frame: Option<Instant>,
    /// Counts so far.
    pub tally: Tally,
}

impl SeqTracker {
    /// A tracker expecting sequence numbers `0..expected`.
    pub fn new(expected: u64) -> SeqTracker {
        SeqTracker {
            seen: vec![0; (expected as usize).div_ceil(64)],
            max_seen: None,
            last_frame: None,
            tally: Tally {
                expected,
                ..Tally::default()
            },
        }
    }

    /// Whether every expected message arrived.
    pub fn complete(&self) -> bool {
        self.tally.delivered >= self.tally.expected
    }

    /// Marks the start of a frame received at `now`.
    pub fn frame(&mut self, now: Instant) {
        if let Some(last) = self.last_frame {
            let gap = now.duration_since(last).as_micros() as u64;
            self.tally.max_gap_us = self.tally.max_gap_us.max(gap);
        }
        self.last_frame = Some(now);
    }

    /// Forgets the frame clock (e.g. across a deliberate disconnect).
    pub fn pause_clock(&mut self) {
        self.last_frame = None;
    }

    /// Records message `seq` sent at `sent_us`, received at `now_us`; returns its latency when
    /// it was new.
    pub fn record(&mut self, seq: u64, sent_us: u64, now_us: u64) -> Option<u64> {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.tally.duplicates += 1;
            return None;
        }
        self.seen[word] |= bit;
        if self.max_seen.is_some_and(|m| seq < m) {
            self.tally.out_of_order += 1;
        }
        self.max_seen = Some(self.max_seen.map_or(seq, |m| m.max(seq)));
        self.tally.delivered += 1;
        Some(now_us.saturating_sub(sent_us).max(1))
    }
}

/// Per-second deliveries and latency, from the start of publishing.
#[derive(Clone)]
pub struct Second {
    /// Messages delivered in this second.
    pub deliveries: u64,
    /// Their latencies (µs), at 2 significant digits.
    pub latency: Histogram<u64>,
}

const SHARDS: usize = 16;

/// The run's timeline and overall latency histogram, sharded to keep lock contention low. The
/// overall histograms are allocated up front: one made on each subscriber's first delivery
/// (~150 KB at 3 significant digits) made the load tool itself slow in the first second and
/// showed up as latency. A second's histograms (2 digits, small) are made as it starts.
pub struct Timeline {
    start: Instant,
    shards: Vec<Mutex<Shard>>,
}

struct Shard {
    seconds: Vec<Second>,
    all: Histogram<u64>,
}

fn second() -> Second {
    Second {
        deliveries: 0,
        latency: Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"),
    }
}

impl Timeline {
    /// A timeline starting now.
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        seconds: Vec::new(),
                        all: histogram(),
                    })
                })
                .collect(),
        }
    }

    /// Records the latencies of one frame received at `now`.
    pub fn record(&self, shard: usize, now: Instant, latencies: &[u64]) {
        if latencies.is_empty() {
            return;
        }
        let second = now.saturating_duration_since(self.start).as_secs() as usize;
        let mut shard = self.shards[shard % SHARDS].lock();
        while shard.seconds.len() <= second {
            shard.seconds.push(self::second());
        }
        shard.seconds[second].deliveries += latencies.len() as u64;
        for &l in latencies {
            shard.seconds[second].latency.saturating_record(l);
            shard.all.saturating_record(l);
        }
    }

    /// Every latency recorded, merged over the shards.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let _ = all.add(&shard.lock().all);
        }
        all
    }

    /// Every second, merged over the shards.
    pub fn seconds(&self) -> Vec<Second> {
        let mut out: Vec<Second> = Vec::new();
        for shard in &self.shards {
            for (i, s) in shard.lock().seconds.iter().enumerate() {
                if out.len() <= i {
                    out.push(s.clone());
                } else {
                    out[i].deliveries += s.deliveries;
                    let _ = out[i].latency.add(&s.latency);
                }
            }
        }
        out
    }
}

/// CPU time (user + system) of a process in microseconds, from /proc.
pub fn cpu_micros(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports clock ticks of 100 Hz on every mainstream configuration.
    Ok(ticks * 10_000)
}

/// Resident set size of a process in KiB.
/// Summed RSS of `pids` in KiB, `None` for no pids.
pub fn rss_sum(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|&p| rss_kib(p))
        .sum::<Result<u64>>()
        .map(Some)
}

/// RSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
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

/// CPU counters of the server, Redis and this process, sampled together.
#[derive(Clone, Copy, Default)]
pub struct CpuSample {
    /// Server CPU µs.
    pub server: Option<u64>,
    /// Redis CPU µs.
    pub redis: Option<u64>,
    /// Load generator CPU µs.
    pub loadgen: u64,
}

impl CpuSample {
    /// Samples the given processes; several servers (instances) or Redis processes (cluster
    /// nodes) are summed, none gives `None`.
    pub fn take(servers: &[u32], redis: &[u32]) -> CpuSample {
        let sum = |pids: &[u32]| {
            (!pids.is_empty()).then(|| pids.iter().filter_map(|&p| cpu_micros(p).ok()).sum())
        };
        CpuSample {
            server: sum(servers),
            redis: sum(redis),
            loadgen: cpu_micros(std::process::id()).unwrap_or(0),
        }
    }
}
