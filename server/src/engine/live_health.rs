//! Live-reader health: whether the engine's live readers are delivering, for `/readyz`,
//! `/metrics` and `/status.json`.
//!
//! Each live reader (and each `CLIENT UNBLOCK` sender) holds a [`HealthEntry`] on its engine's
//! [`HealthBoard`]. An entry is *failing* from its first error until its next success (a
//! complete read cycle, or an `XREAD` that stays blocked: the reader is caught up), so a reader
//! that reconnects fine but is then refused `XREAD` stays failing however often it reconnects.
//! [`HealthBoard::health`] answers the oldest failure and its last error.
//!
//! Invariants: recording a success while healthy touches only an atomic (no lock on the read
//! path); an entry dropped (its reader ended) leaves the board; an error message kept here is
//! one line, bounded, and never holds a URL's credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::EngineError;

/// Most characters of an error message kept.
const MAX_ERROR_CHARS: usize = 160;

/// The state of an engine's live readers ([`super::Engine::live_health`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveHealth {
    /// How many live readers are failing now.
    pub failing: usize,
    /// Since when the longest-failing one has been failing (no success since its first error).
    pub failing_since: Option<Instant>,
    /// That reader's last error, one line without secrets.
    pub last_error: Option<String>,
}

impl LiveHealth {
    /// How long the longest-failing reader has been failing at `now` (`None`: all healthy).
    pub fn failing_for(&self, now: Instant) -> Option<Duration> {
        self.failing_since
            .map(|since| now.saturating_duration_since(since))
    }
}

/// One failing entry: since when, and its last error.
#[derive(Debug, Clone)]
struct Failure {
    since: Instant,
    error: String,
}

/// The health entries of one engine's live readers.
#[derive(Debug, Default)]
pub(crate) struct HealthBoard {
    failures: Mutex<HashMap<u64, Failure>>,
    /// How many entries are failing (read without the lock when zero).
    failing: AtomicUsize,
    next_id: AtomicU64,
}

impl HealthBoard {
    /// A new entry for a reader, healthy.
    pub(crate) fn entry(self: &Arc<Self>) -> HealthEntry {
        HealthEntry {
            board: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            failing: AtomicBool::new(false),
        }
    }

    /// The board's state: the oldest failure and its last error.
    pub(crate) fn health(&self) -> LiveHealth {
        if self.failing.load(Ordering::Acquire) == 0 {
            return LiveHealth::default();
        }
        let failures = self.failures.lock();
        let oldest = failures.values().min_by_key(|f| f.since);
        LiveHealth {
            failing: failures.len(),
            failing_since: oldest.map(|f| f.since),
            last_error: oldest.map(|f| f.error.clone()),
        }
    }
}

/// A reader's entry on its [`HealthBoard`]; removed when dropped.
#[derive(Debug)]
pub(crate) struct HealthEntry {
    board: Arc<HealthBoard>,
    id: u64,
    /// Whether this entry is on the board's failure list (checked without the lock).
    failing: AtomicBool,
}

impl HealthEntry {
    /// Records a success: the reader is delivering (cheap when it was healthy already).
    pub(crate) fn ok(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut failures = self.board.failures.lock();
        if failures.remove(&self.id).is_some() {
            self.board.failing.fetch_sub(1, Ordering::AcqRel);
        }
        self.failing.store(false, Ordering::Release);
    }

    /// Records an error now.
    pub(crate) fn failed(&self, err: &EngineError) {
        self.failed_at(err, Instant::now());
    }

    /// Records an error at `now`: failing since `now` unless failing already (the start is
    /// kept, the error replaced).
    fn failed_at(&self, err: &EngineError, now: Instant) {
        let error = describe(err);
        let mut failures = self.board.failures.lock();
        match failures.get_mut(&self.id) {
            Some(failure) => failure.error = error,
            None => {
                failures.insert(self.id, Failure { since: now, error });
                self.board.failing.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.failing.store(true, Ordering::Release);
    }

    /// Whether this entry is failing.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

impl Drop for HealthEntry {
    fn drop(&mut self) {
        self.ok();
    }
}

/// An engine error as one bounded line without credentials: its message (Redis' own error
/// code first, e.g. `NOPERM …`), any `scheme://user:password@` reduced to `scheme://…@`.
fn describe(err: &EngineError) -> String {
    let text = match err {
        EngineError::Unavailable(m) | EngineError::Internal(m) => m.as_str(),
    };
    let line = text.lines().next().unwrap_or("").trim();
    let mut out = String::with_capacity(line.len().min(MAX_ERROR_CHARS));
    let mut rest = line;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(userinfo) => {
                out.push('…');
                rest = &tail[userinfo..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    if out.chars().count() > MAX_ERROR_CHARS {
        out = out.chars().take(MAX_ERROR_CHARS).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noperm() -> EngineError {
        EngineError::Unavailable(
            "NOPERM User r has no permissions to run the 'xread' command".into(),
        )
    }

    #[test]
    fn a_new_board_and_a_new_entry_are_healthy() {
        let board = Arc::new(HealthBoard::default());
        let entry = board.entry();
        entry.ok();
        assert_eq!(board.health(), LiveHealth::default());
        assert!(!entry.is_failing());
    }

    #[test]
    fn failing_keeps_its_first_start_and_its_last_error_until_a_success() {
        let board = Arc::new(HealthBoard::default());
        let entry = board.entry();
        let t0 = Instant::now();
        entry.failed_at(&EngineError::Unavailable("connection refused".into()), t0);
        entry.failed_at(&noperm(), t0 + Duration::from_secs(3));
        let health = board.health();
        assert_eq!(health.failing, 1);
        assert_eq!(health.failing_since, Some(t0));
        assert_eq!(
            health.last_error.as_deref(),
            Some("NOPERM User r has no permissions to run the 'xread' command")
        );
        assert_eq!(
            health.failing_for(t0 + Duration::from_secs(7)),
            Some(Duration::from_secs(7))
        );
        entry.ok();
        assert_eq!(board.health(), LiveHealth::default());
        // A new failure starts a new period.
        let t1 = t0 + Duration::from_secs(20);
        entry.failed_at(&noperm(), t1);
        assert_eq!(board.health().failing_since, Some(t1));
    }

    #[test]
    fn the_oldest_failure_is_reported_and_a_dropped_entry_leaves_the_board() {
        let board = Arc::new(HealthBoard::default());
        let (a, b, c) = (board.entry(), board.entry(), board.entry());
        let t0 = Instant::now();
        b.failed_at(
            &EngineError::Internal("later".into()),
            t0 + Duration::from_secs(2),
        );
        a.failed_at(&EngineError::Internal("first".into()), t0);
        c.ok();
        let health = board.health();
        assert_eq!(health.failing, 2);
        assert_eq!(health.failing_since, Some(t0));
        assert_eq!(health.last_error.as_deref(), Some("first"));
        drop(a);
        let health = board.health();
        assert_eq!(health.failing, 1);
        assert_eq!(health.last_error.as_deref(), Some("later"));
        drop(b);
        assert_eq!(board.health(), LiveHealth::default());
    }

    #[test]
    fn errors_are_one_bounded_line_without_credentials() {
        let err = EngineError::Unavailable(
            "cannot connect to redis://reader:s3cret@10.0.0.1:6379/0 and rediss://:pw@h/1\nmore"
                .into(),
        );
        let text = describe(&err);
        assert!(!text.contains("s3cret") && !text.contains("pw@"), "{text}");
        assert_eq!(
            text,
            "cannot connect to redis://…@10.0.0.1:6379/0 and rediss://…@h/1"
        );
        let long = describe(&EngineError::Internal("x".repeat(1000)));
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(
            describe(&EngineError::Internal("a@b://c".into())),
            "a@b://c"
        );
    }
}
