//! The table of requests waiting for an outcome, with their deadlines.
//!
//! Commands carry no `now`, so a caller's request is created *unstamped*; the next input that
//! brings the time (any `handle_*` or `connect`) stamps it with `now + request_timeout`. Until
//! then [`Requests::next_deadline`] reports the last known time, so a driver that re-arms its
//! timer after every command wakes up at once and supplies the time. Deadlines are indexed, so
//! finding the next one and the expired ones costs O(log n), not a scan of up to 10,000 entries.

use std::time::Duration;

use crate::frame::Fields;
use crate::table::{Map, Set};

/// Who asked for a request: the caller (it gets an outcome event) or the session itself
/// (re-subscribes and liveness probes; their failure means the connection is unusable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A command of the caller.
    User,
    /// Sent by the session on its own.
    Internal,
}

/// What a request asks for, with what is needed to send it again.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `subscribe`; the frame is rebuilt from the subscription table.
    Subscribe {
        /// Channel name.
        channel: String,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// `publish`.
    Publish {
        /// Channel name.
        channel: String,
        /// The message.
        fields: Fields,
        /// `MAXLEN ~` hint.
        maxlen: Option<u64>,
        /// Caller's or generated idempotency key; with one, re-sending is safe.
        key: Option<String>,
    },
    /// `ack`: acknowledging is idempotent, so it is re-sent after a reconnect.
    Ack {
        /// Channel name.
        channel: String,
        /// Consumer group.
        group: String,
        /// Entries to acknowledge.
        offsets: Vec<crate::offset::StreamId>,
    },
    /// `history`: a read, so it is re-sent after a reconnect.
    History {
        /// Channel name.
        channel: String,
        /// The range and bounds.
        options: crate::history::HistoryOptions,
    },
    /// `ping`.
    Ping,
    /// `presence` (or `presence_stats` with `stats`): read-only, re-sent after a reconnect.
    Presence {
        /// Channel name.
        channel: String,
        /// Counts only.
        stats: bool,
    },
    /// `connect` with a new token on the open connection (always internal).
    Refresh {
        /// The new token.
        token: String,
    },
}

/// One request waiting for its outcome.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// What it asks for.
    pub(crate) kind: Kind,
    /// Who asked.
    pub(crate) origin: Origin,
    /// Whether its frame went out on the current connection.
    pub(crate) sent: bool,
    /// When it times out; `None` until stamped.
    deadline: Option<Duration>,
}

impl Pending {
    /// A request not yet sent, to be stamped by the next input.
    pub(crate) fn new(kind: Kind, origin: Origin) -> Self {
        Pending {
            kind,
            origin,
            sent: false,
            deadline: None,
        }
    }

    /// When it times out, once stamped.
    pub(crate) fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

/// Pending requests by id, with a deadline index.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    by_id: Map<u64, Pending>,
    deadlines: Set<(Duration, u64)>,
    unstamped: Vec<u64>,
    user: usize,
}

impl Requests {
    /// Adds a request; `deadline` is `None` when the time is not known yet.
    pub(crate) fn insert(&mut self, id: u64, mut pending: Pending, deadline: Option<Duration>) {
        pending.deadline = deadline;
        match deadline {
            Some(at) => {
                self.deadlines.insert((at, id));
            }
            None => self.unstamped.push(id),
        }
        if pending.origin == Origin::User {
            self.user += 1;
        }
        if let Some(old) = self.by_id.insert(id, pending) {
            self.forget(id, &old);
        }
    }

    /// The request with this id.
    pub(crate) fn get(&self, id: u64) -> Option<&Pending> {
        self.by_id.get(&id)
    }

    /// The request with this id, mutably (its deadline stays managed here).
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.by_id.get_mut(&id)
    }

    /// Removes a request.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.by_id.remove(&id)?;
        self.forget(id, &pending);
        Some(pending)
    }

    fn forget(&mut self, id: u64, pending: &Pending) {
        if let Some(at) = pending.deadline {
            self.deadlines.remove(&(at, id));
        }
        if pending.origin == Origin::User {
            self.user -= 1;
        }
    }

    /// Gives every unstamped request the deadline `now + timeout`.
    pub(crate) fn stamp(&mut self, now: Duration, timeout: Duration) {
        let at = now.saturating_add(timeout);
        for id in std::mem::take(&mut self.unstamped) {
            if let Some(p) = self.by_id.get_mut(&id) {
                if p.deadline.is_none() {
                    p.deadline = Some(at);
                    self.deadlines.insert((at, id));
                }
            }
        }
    }

    /// The earliest deadline; `now` itself while some request awaits its stamp.
    pub(crate) fn next_deadline(&self, now: Duration) -> Option<Duration> {
        let stamped = self.deadlines.first().map(|&(at, _)| at);
        if self.unstamped.is_empty() {
            stamped
        } else {
            Some(stamped.map_or(now, |at| at.min(now)))
        }
    }

    /// Removes and returns one request whose deadline is at or before `now`, earliest first.
    pub(crate) fn pop_expired(&mut self, now: Duration) -> Option<(u64, Pending)> {
        let &(at, id) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        self.remove(id).map(|p| (id, p))
    }

    /// All ids, ascending.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }

    /// How many caller requests are pending.
    pub(crate) fn user_count(&self) -> usize {
        self.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn stamps_lazily_and_expires_in_deadline_order() {
        let mut r = Requests::default();
        r.insert(1, Pending::new(Kind::Ping, Origin::User), None);
        assert_eq!(r.next_deadline(3 * S), Some(3 * S));
        r.stamp(3 * S, 10 * S);
        r.insert(2, Pending::new(Kind::Ping, Origin::Internal), Some(5 * S));
        assert_eq!(r.next_deadline(3 * S), Some(5 * S));
        assert_eq!(r.user_count(), 1);
        assert!(r.pop_expired(4 * S).is_none());
        assert_eq!(r.pop_expired(13 * S).map(|(id, _)| id), Some(2));
        assert_eq!(r.pop_expired(13 * S).map(|(id, _)| id), Some(1));
        assert!(r.pop_expired(13 * S).is_none());
        assert_eq!(r.user_count(), 0);
        assert_eq!(r.next_deadline(13 * S), None);
    }

    #[test]
    fn removal_clears_the_index() {
        let mut r = Requests::default();
        r.insert(1, Pending::new(Kind::Ping, Origin::User), Some(S));
        r.insert(2, Pending::new(Kind::Ping, Origin::User), None);
        assert!(r.remove(1).is_some());
        assert!(r.remove(2).is_some());
        r.stamp(S, S);
        assert_eq!(r.next_deadline(S), None);
        assert!(r.ids().is_empty());
    }
}
