//! Where members live: the [`PresenceStore`] trait both engines implement (the Redis one is
//! `engine::redis::presence`), and [`MemoryStore`], the embedded engine's, with the same
//! semantics in memory.
//!
//! Per channel a store keeps the members (client id → member and expiry), the distinct users
//! among them, and a change log: every join and every leave (explicit or by expiry) gets the
//! channel's next sequence number, and is recorded by exactly the operation that made the
//! change, so however many instances prune a channel each change is logged once. Every
//! operation first removes the expired members (logging their leaves).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redistribute_protocol::PresenceMember;

use crate::engine::EngineError;

/// The bounds every store operation applies.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A member expires this long after it joined or was last refreshed.
    pub ttl: Duration,
    /// Most members per channel: joins beyond it are refused.
    pub max_members: usize,
    /// About how many changes the log keeps per channel (a reader further behind learns how
    /// many it missed).
    pub log_len: usize,
}

/// Changes read from a channel's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Joins (`true`) and leaves, in order, after the cursor.
    pub changes: Vec<(bool, PresenceMember)>,
    /// Changes after the cursor that are not in `changes` (more than the limit, or already
    /// dropped from the log).
    pub missed: u64,
    /// Where the next read continues.
    pub cursor: u64,
}

/// Storage of presence members; see the module docs.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Adds members of `channel` (a member already present is refreshed), logging a join for
    /// each new one; refuses new members beyond [`Bounds::max_members`]. Returns the client
    /// ids refused.
    async fn join(
        &self,
        channel: &str,
        members: &[PresenceMember],
        bounds: Bounds,
    ) -> Result<Vec<String>, EngineError>;

    /// Extends the expiry of these members of `channel`; returns the client ids that are not
    /// members (expired, or lost with the store's data), which the caller joins again.
    async fn refresh(
        &self,
        channel: &str,
        clients: &[String],
        bounds: Bounds,
    ) -> Result<Vec<String>, EngineError>;

    /// Removes these members of `channel`, logging a leave for each one that was present.
    async fn leave(
        &self,
        channel: &str,
        clients: &[String],
        bounds: Bounds,
    ) -> Result<(), EngineError>;

    /// The channel's members.
    async fn members(
        &self,
        channel: &str,
        bounds: Bounds,
    ) -> Result<Vec<PresenceMember>, EngineError>;

    /// The channel's member and distinct-user counts (members without a user count as one
    /// user each).
    async fn counts(&self, channel: &str, bounds: Bounds) -> Result<(u64, u64), EngineError>;

    /// At most `limit` changes after `cursor` (with more, none and their count in
    /// [`Changes::missed`]); with `cursor` `None`, no changes and the current end of the log.
    async fn changes(
        &self,
        channel: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Changes, EngineError>;
}

/// The user key a member counts under: its user, or itself without one.
pub(crate) fn user_key(member: &PresenceMember) -> String {
    match &member.user {
        Some(user) => format!("u:{user}"),
        None => format!("c:{}", member.client),
    }
}

/// Applies a [`Changes`] read to `limit`: more changes than that become a count only.
pub(crate) fn cap_changes(mut changes: Changes, limit: usize) -> Changes {
    if changes.changes.len() > limit {
        changes.missed += changes.changes.len() as u64;
        changes.changes.clear();
    }
    changes
}

/// One channel in memory.
#[derive(Default)]
struct Channel {
    /// Client id → member and expiry.
    members: HashMap<String, (PresenceMember, Instant)>,
    /// User key → members with it.
    users: HashMap<String, u64>,
    /// The last sequence number given out.
    seq: u64,
    /// The newest changes, oldest first.
    log: VecDeque<(u64, bool, PresenceMember)>,
}

impl Channel {
    fn record(&mut self, join: bool, member: PresenceMember, bounds: Bounds) {
        self.seq += 1;
        self.log.push_back((self.seq, join, member));
        while self.log.len() > bounds.log_len.max(1) {
            self.log.pop_front();
        }
    }

    fn remove(&mut self, client: &str, bounds: Bounds) {
        if let Some((member, _)) = self.members.remove(client) {
            let key = user_key(&member);
            if let Some(n) = self.users.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(&key);
                }
            }
            self.record(false, member, bounds);
        }
    }

    fn prune(&mut self, now: Instant, bounds: Bounds) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, (_, expiry))| *expiry <= now)
            .map(|(client, _)| client.clone())
            .collect();
        for client in expired {
            self.remove(&client, bounds);
        }
    }
}

/// The embedded engine's presence store: the same semantics in memory, under one lock.
#[derive(Default)]
pub struct MemoryStore {
    channels: Mutex<HashMap<String, Channel>>,
}

impl MemoryStore {
    /// Runs `f` on the channel after pruning it; drops a channel left with nothing to keep.
    fn with<T>(
        &self,
        channel: &str,
        bounds: Bounds,
        f: impl FnOnce(&mut Channel, Instant) -> T,
    ) -> T {
        let now = Instant::now();
        let mut channels = self.channels.lock().expect("presence lock");
        let state = channels.entry(channel.to_owned()).or_default();
        state.prune(now, bounds);
        let out = f(state, now);
        // A channel without members is forgotten, log and all: no instance reads the changes
        // of a channel none of its subscribers is a member of. A reader whose cursor is past
        // a new log's end starts that log from its beginning (see `changes`).
        if state.members.is_empty() {
            channels.remove(channel);
        }
        out
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
    async fn join(
        &self,
        channel: &str,
        members: &[PresenceMember],
        bounds: Bounds,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self.with(channel, bounds, |state, now| {
            let expiry = now + bounds.ttl;
            let mut refused = Vec::new();
            for member in members {
                if let Some((_, e)) = state.members.get_mut(&member.client) {
                    *e = expiry;
                } else if state.members.len() >= bounds.max_members {
                    refused.push(member.client.clone());
                } else {
                    state
                        .members
                        .insert(member.client.clone(), (member.clone(), expiry));
                    *state.users.entry(user_key(member)).or_default() += 1;
                    state.record(true, member.clone(), bounds);
                }
            }
            refused
        }))
    }

    async fn refresh(
        &self,
        channel: &str,
        clients: &[String],
        bounds: Bounds,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self.with(channel, bounds, |state, now| {
            let mut missing = Vec::new();
            for client in clients {
                match state.members.get_mut(client) {
                    Some((_, expiry)) => *expiry = now + bounds.ttl,
                    None => missing.push(client.clone()),
                }
            }
            missing
        }))
    }

    async fn leave(
        &self,
        channel: &str,
        clients: &[String],
        bounds: Bounds,
    ) -> Result<(), EngineError> {
        self.with(channel, bounds, |state, _| {
            for client in clients {
                state.remove(client, bounds);
            }
        });
        Ok(())
    }

    async fn members(
        &self,
        channel: &str,
        bounds: Bounds,
    ) -> Result<Vec<PresenceMember>, EngineError> {
        Ok(self.with(channel, bounds, |state, _| {
            state.members.values().map(|(m, _)| m.clone()).collect()
        }))
    }

    async fn counts(&self, channel: &str, bounds: Bounds) -> Result<(u64, u64), EngineError> {
        Ok(self.with(channel, bounds, |state, _| {
            (state.members.len() as u64, state.users.len() as u64)
        }))
    }

    async fn changes(
        &self,
        channel: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Changes, EngineError> {
        let channels = self.channels.lock().expect("presence lock");
        let Some(state) = channels.get(channel) else {
            return Ok(Changes {
                cursor: cursor.unwrap_or(0),
                ..Changes::default()
            });
        };
        let Some(cursor) = cursor else {
            return Ok(Changes {
                cursor: state.seq,
                ..Changes::default()
            });
        };
        // A log that restarted (the channel was forgotten meanwhile) is read from its start.
        let cursor = if state.seq < cursor { 0 } else { cursor };
        let first = state.log.front().map_or(state.seq + 1, |(n, _, _)| *n);
        let changes: Vec<(bool, PresenceMember)> = state
            .log
            .iter()
            .filter(|(n, _, _)| *n > cursor)
            .map(|(_, join, m)| (*join, m.clone()))
            .collect();
        let dropped = first.saturating_sub(cursor + 1);
        let changes = Changes {
            changes,
            missed: dropped,
            cursor: state.seq.max(cursor),
        };
        Ok(cap_changes(changes, limit))
    }
}
