//! This instance's side of presence: its members, the operations queued for the store, the
//! heartbeat, and the delivery of coalesced join/leave events to its subscribers.
//!
//! Joins and leaves go through one queue that a single task works off in order, batching
//! consecutive operations of a channel into one store call (a storm of joins to a channel is a
//! few calls, not one per subscriber), so a leave and a later join of the same client are
//! never reordered. A join's caller waits for its outcome (the member cap may refuse it); a
//! leave is queued without waiting (it comes from dropping a connection). The same task
//! refreshes this instance's members every heartbeat (one store call per channel, whatever the
//! number of members) and, every window, reads the change log of each channel that has
//! listeners and gives each listener one coalesced event per channel ([`Inbox`]). Nothing of
//! this is on the path of message delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redistribute_protocol::{ErrorCode, PresenceEvent, PresenceMember, ServerFrame};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tracing::warn;

use super::store::{Bounds, PresenceStore};
use super::PresenceConfig;
use crate::engine::EngineError;
use crate::error::RequestError;

/// Most members one store call carries (larger batches are split).
const BATCH: usize = 500;

/// About how many changes each channel's log keeps.
const LOG_LEN: usize = 10_000;

/// The join/leave events waiting for one connection, coalesced per channel.
pub(crate) struct Inbox {
    pending: Mutex<Vec<(Arc<str>, Pending)>>,
    signal: mpsc::Sender<()>,
    max_events: usize,
}

/// One channel's changes not yet delivered to a connection.
#[derive(Default)]
struct Pending {
    joins: Vec<PresenceMember>,
    leaves: Vec<PresenceMember>,
    missed: u64,
}

impl Inbox {
    /// A new inbox, and the receiver its connection waits on for something to deliver.
    pub(crate) fn new(max_events: usize) -> (Arc<Inbox>, mpsc::Receiver<()>) {
        let (signal, rx) = mpsc::channel(1);
        let inbox = Inbox {
            pending: Mutex::new(Vec::new()),
            signal,
            max_events,
        };
        (Arc::new(inbox), rx)
    }

    /// Adds changes of `channel`, merged with any not yet taken (beyond the cap, only their
    /// count stays).
    fn push(
        &self,
        channel: &Arc<str>,
        joins: &[PresenceMember],
        leaves: &[PresenceMember],
        missed: u64,
    ) {
        {
            let mut pending = self.pending.lock().expect("inbox lock");
            let index = match pending.iter().position(|(c, _)| c == channel) {
                Some(i) => i,
                None => {
                    pending.push((channel.clone(), Pending::default()));
                    pending.len() - 1
                }
            };
            let p = &mut pending[index].1;
            p.missed += missed;
            if p.joins.len() + p.leaves.len() + joins.len() + leaves.len() > self.max_events {
                p.missed += (p.joins.len() + p.leaves.len() + joins.len() + leaves.len()) as u64;
                p.joins.clear();
                p.leaves.clear();
            } else {
                p.joins.extend_from_slice(joins);
                p.leaves.extend_from_slice(leaves);
            }
        }
        let _ = self.signal.try_send(());
    }

    /// Forgets what is pending for `channel` (its subscription ended).
    pub(crate) fn forget(&self, channel: &str) {
        let mut pending = self.pending.lock().expect("inbox lock");
        pending.retain(|(c, _)| &**c != channel);
    }

    /// Takes everything pending, as `presence_event` frames.
    pub(crate) fn take(&self) -> Vec<ServerFrame> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("inbox lock"));
        pending
            .into_iter()
            .map(|(channel, p)| {
                ServerFrame::PresenceEvent(Box::new(PresenceEvent {
                    channel: channel.to_string(),
                    joins: p.joins,
                    leaves: p.leaves,
                    missed: (p.missed > 0).then_some(p.missed),
                }))
            })
            .collect()
    }
}

/// A queued store operation.
enum Op {
    Join {
        channel: Arc<str>,
        member: PresenceMember,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Leave {
        channel: Arc<str>,
        client: String,
    },
}

/// This instance's view of a channel.
#[derive(Default)]
struct Local {
    /// Members of this instance the store accepted, by client id.
    members: HashMap<String, PresenceMember>,
    /// Connections that asked for join/leave events, by feed id.
    listeners: HashMap<u64, Arc<Inbox>>,
    /// How far the change log was read (`None`: not yet).
    cursor: Option<u64>,
}

#[derive(Default)]
struct State {
    ops: Vec<Op>,
    channels: HashMap<Arc<str>, Local>,
}

/// Presence on this instance; see the module docs.
pub(crate) struct Presence {
    config: PresenceConfig,
    store: Arc<dyn PresenceStore>,
    request_timeout: Duration,
    state: Mutex<State>,
    wake: Arc<Notify>,
    /// Held while a batch of operations is carried out (the task, or a final flush).
    working: tokio::sync::Mutex<()>,
}

impl Presence {
    /// Presence over `store`; starts its task (which ends when the last handle is dropped)
    /// when any channel has presence.
    pub(crate) fn start(
        config: PresenceConfig,
        store: Arc<dyn PresenceStore>,
        request_timeout: Duration,
    ) -> Arc<Presence> {
        let presence = Arc::new(Presence {
            config,
            store,
            request_timeout,
            state: Mutex::default(),
            wake: Arc::new(Notify::new()),
            working: tokio::sync::Mutex::new(()),
        });
        if !presence.config.channels.is_empty() {
            let wake = presence.wake.clone();
            tokio::spawn(run(Arc::downgrade(&presence), wake));
        }
        presence
    }

    /// The settings.
    pub(crate) fn config(&self) -> &PresenceConfig {
        &self.config
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            ttl: self.config.ttl,
            max_members: self.config.max_members,
            log_len: LOG_LEN,
        }
    }

    /// Refuses a channel without presence (`not_found`).
    pub(crate) fn check_enabled(&self, channel: &str) -> Result<(), RequestError> {
        if self.config.enabled(channel) {
            return Ok(());
        }
        Err(RequestError::new(
            ErrorCode::NotFound,
            format!("presence is not enabled on channel {channel:?}"),
        ))
    }

    /// Makes `member` a member of `channel` (waiting for the store: the member cap may refuse
    /// it, `too_large`) and, with `listener`, registers the connection `feed` for the channel's
    /// join/leave events.
    pub(crate) async fn join(
        &self,
        channel: &Arc<str>,
        member: PresenceMember,
        listener: Option<(u64, Arc<Inbox>)>,
    ) -> Result<(), RequestError> {
        if let Some(info) = &member.info {
            let bytes = serde_json::to_string(info).map_or(0, |s| s.len());
            if bytes > self.config.max_info_bytes {
                return Err(RequestError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the token's info claim is {bytes} bytes of JSON; presence shows at most {}",
                        self.config.max_info_bytes
                    ),
                ));
            }
        }
        let (reply, outcome) = oneshot::channel();
        let feed = listener.as_ref().map(|(feed, _)| *feed);
        {
            let mut state = self.state.lock().expect("presence lock");
            state.ops.push(Op::Join {
                channel: channel.clone(),
                member,
                reply,
            });
            if let Some((feed, inbox)) = listener {
                let local = state.channels.entry(channel.clone()).or_default();
                local.listeners.insert(feed, inbox);
            }
        }
        self.wake.notify_one();
        let deadline = self.request_timeout + crate::limits::ENGINE_TIMEOUT_MARGIN;
        let result = match tokio::time::timeout(deadline, outcome).await {
            Ok(Ok(result)) => result,
            // The task is gone (shutting down) or too slow: the queued join, if it still
            // succeeds, finds no one waiting and is undone.
            _ => Err(EngineError::Unavailable("presence join timed out".into()).into()),
        };
        if let (Err(_), Some(feed)) = (&result, feed) {
            let mut state = self.state.lock().expect("presence lock");
            if let Some(local) = state.channels.get_mut(channel) {
                local.listeners.remove(&feed);
                if local.members.is_empty() && local.listeners.is_empty() {
                    state.channels.remove(channel);
                }
            }
        }
        result
    }

    /// Ends the membership of client `client` (connection `feed`) in `channel`: its events stop
    /// now, and the store forgets it as soon as the task gets to it.
    pub(crate) fn leave(&self, channel: &Arc<str>, client: String, feed: u64) {
        {
            let mut state = self.state.lock().expect("presence lock");
            if let Some(local) = state.channels.get_mut(channel) {
                local.listeners.remove(&feed);
            }
            state.ops.push(Op::Leave {
                channel: channel.clone(),
                client,
            });
        }
        self.wake.notify_one();
    }

    /// The members of `channel`.
    pub(crate) async fn members(&self, channel: &str) -> Result<Vec<PresenceMember>, RequestError> {
        self.check_enabled(channel)?;
        self.engine_call(self.store.members(channel, self.bounds()))
            .await
    }

    /// The member and user counts of `channel`.
    pub(crate) async fn counts(&self, channel: &str) -> Result<(u64, u64), RequestError> {
        self.check_enabled(channel)?;
        self.engine_call(self.store.counts(channel, self.bounds()))
            .await
    }

    async fn engine_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, RequestError> {
        let deadline = self.request_timeout + crate::limits::ENGINE_TIMEOUT_MARGIN;
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map_err(RequestError::from),
            Err(_) => Err(EngineError::Unavailable("presence read timed out".into()).into()),
        }
    }

    /// Carries out every queued operation now (the drain's last step: the leaves of the
    /// connections it closed reach the store before the process exits).
    pub(crate) async fn flush(&self) {
        let _working = self.working.lock().await;
        self.work_off().await;
    }

    /// Works off the queue: per channel, in order, consecutive operations of one kind in one
    /// store call; channels concurrently.
    async fn work_off(&self) {
        let ops = std::mem::take(&mut self.state.lock().expect("presence lock").ops);
        if ops.is_empty() {
            return;
        }
        let mut per_channel: Vec<(Arc<str>, Vec<Op>)> = Vec::new();
        for op in ops {
            let channel = match &op {
                Op::Join { channel, .. } | Op::Leave { channel, .. } => channel.clone(),
            };
            match per_channel.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, list)) => list.push(op),
                None => per_channel.push((channel, vec![op])),
            }
        }
        let calls = per_channel
            .into_iter()
            .map(|(channel, ops)| self.work_off_channel(channel, ops));
        futures_util::future::join_all(calls).await;
    }

    async fn work_off_channel(&self, channel: Arc<str>, ops: Vec<Op>) {
        let bounds = self.bounds();
        let mut ops = ops.into_iter().peekable();
        while let Some(first) = ops.next() {
            match first {
                Op::Leave { client, .. } => {
                    let mut clients = vec![client];
                    while let Some(Op::Leave { .. }) = ops.peek() {
                        if let Some(Op::Leave { client, .. }) = ops.next() {
                            clients.push(client);
                        }
                    }
                    {
                        let mut state = self.state.lock().expect("presence lock");
                        if let Some(local) = state.channels.get_mut(&channel) {
                            for client in &clients {
                                local.members.remove(client);
                            }
                            if local.members.is_empty() && local.listeners.is_empty() {
                                state.channels.remove(&channel);
                            }
                        }
                    }
                    for chunk in clients.chunks(BATCH) {
                        if let Err(e) = self.store.leave(&channel, chunk, bounds).await {
                            // The members expire on their own within the expiry.
                            warn!(channel = &*channel, error = %e, "presence leave failed");
                        }
                    }
                }
                Op::Join { member, reply, .. } => {
                    let mut joins = vec![(member, reply)];
                    while let Some(Op::Join { .. }) = ops.peek() {
                        if let Some(Op::Join { member, reply, .. }) = ops.next() {
                            joins.push((member, reply));
                        }
                    }
                    self.join_batch(&channel, joins, bounds).await;
                }
            }
        }
    }

    async fn join_batch(
        &self,
        channel: &Arc<str>,
        joins: Vec<(PresenceMember, oneshot::Sender<Result<(), RequestError>>)>,
        bounds: Bounds,
    ) {
        let mut joins = joins;
        while !joins.is_empty() {
            let rest = joins.split_off(joins.len().min(BATCH));
            let members: Vec<PresenceMember> = joins.iter().map(|(m, _)| m.clone()).collect();
            let outcome = self.store.join(channel, &members, bounds).await;
            self.start_reading(channel).await;
            for (member, reply) in joins {
                let result = match &outcome {
                    Err(e) => Err(RequestError::from(e.clone())),
                    Ok(refused) if refused.contains(&member.client) => Err(RequestError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "channel {channel:?} has the most presence members allowed ({})",
                            bounds.max_members
                        ),
                    )),
                    Ok(_) => Ok(()),
                };
                let joined = result.is_ok();
                if joined {
                    let mut state = self.state.lock().expect("presence lock");
                    let local = state.channels.entry(channel.clone()).or_default();
                    local.members.insert(member.client.clone(), member.clone());
                }
                if reply.send(result).is_err() && joined {
                    // Nobody waits any more (the connection went away or gave up): undo it.
                    let mut state = self.state.lock().expect("presence lock");
                    state.ops.push(Op::Leave {
                        channel: channel.clone(),
                        client: member.client,
                    });
                    self.wake.notify_one();
                }
            }
            joins = rest;
        }
    }

    /// Fixes where a channel's first listener starts reading its change log: just after the
    /// join batch that made it a member, so every later change reaches it.
    async fn start_reading(&self, channel: &Arc<str>) {
        let unread = {
            let state = self.state.lock().expect("presence lock");
            state
                .channels
                .get(channel)
                .is_some_and(|l| l.cursor.is_none() && !l.listeners.is_empty())
        };
        if !unread {
            return;
        }
        match self.store.changes(channel, None, 0).await {
            Ok(end) => {
                let mut state = self.state.lock().expect("presence lock");
                if let Some(local) = state.channels.get_mut(channel) {
                    local.cursor.get_or_insert(end.cursor);
                }
            }
            // The next window starts it instead.
            Err(e) => warn!(channel = &**channel, error = %e, "presence change read failed"),
        }
    }

    /// Refreshes this instance's members: one store call per channel (per [`BATCH`] members);
    /// members the store lost are joined again.
    async fn heartbeat(&self) {
        let bounds = self.bounds();
        let channels: Vec<(Arc<str>, Vec<String>)> = {
            let state = self.state.lock().expect("presence lock");
            state
                .channels
                .iter()
                .filter(|(_, l)| !l.members.is_empty())
                .map(|(c, l)| (c.clone(), l.members.keys().cloned().collect()))
                .collect()
        };
        let calls = channels.into_iter().map(|(channel, clients)| async move {
            for chunk in clients.chunks(BATCH) {
                match self.store.refresh(&channel, chunk, bounds).await {
                    Ok(missing) if !missing.is_empty() => {
                        let members: Vec<PresenceMember> = {
                            let state = self.state.lock().expect("presence lock");
                            let local = state.channels.get(&channel);
                            missing
                                .iter()
                                .filter_map(|c| local.and_then(|l| l.members.get(c)).cloned())
                                .collect()
                        };
                        if let Err(e) = self.store.join(&channel, &members, bounds).await {
                            warn!(channel = &*channel, error = %e, "presence rejoin failed");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(channel = &*channel, error = %e, "presence heartbeat failed"),
                }
            }
        });
        futures_util::future::join_all(calls).await;
    }

    /// Reads the change log of every channel with listeners and hands the changes to them.
    async fn deliver(&self) {
        let limit = self.config.max_events;
        let channels: Vec<(Arc<str>, Option<u64>)> = {
            let state = self.state.lock().expect("presence lock");
            state
                .channels
                .iter()
                .filter(|(_, l)| !l.listeners.is_empty())
                .map(|(c, l)| (c.clone(), l.cursor))
                .collect()
        };
        let reads = channels.into_iter().map(|(channel, cursor)| async move {
            let read = self.store.changes(&channel, cursor, limit).await;
            (channel, cursor, read)
        });
        for (channel, cursor, read) in futures_util::future::join_all(reads).await {
            let changes = match read {
                Ok(changes) => changes,
                Err(e) => {
                    warn!(channel = &*channel, error = %e, "presence change read failed");
                    continue;
                }
            };
            let state = &mut *self.state.lock().expect("presence lock");
            let Some(local) = state.channels.get_mut(&channel) else {
                continue;
            };
            local.cursor = Some(changes.cursor);
            if cursor.is_none() || (changes.changes.is_empty() && changes.missed == 0) {
                continue;
            }
            let (joins, leaves): (Vec<_>, Vec<_>) =
                changes.changes.into_iter().partition(|(join, _)| *join);
            let joins: Vec<PresenceMember> = joins.into_iter().map(|(_, m)| m).collect();
            let leaves: Vec<PresenceMember> = leaves.into_iter().map(|(_, m)| m).collect();
            for inbox in local.listeners.values() {
                inbox.push(&channel, &joins, &leaves, changes.missed);
            }
        }
    }
}

/// The task: works off the queue when woken, and every window delivers changes (and every
/// heartbeat refreshes the members first). Ends when the presence is dropped.
async fn run(presence: Weak<Presence>, wake: Arc<Notify>) {
    let (window, heartbeat) = match presence.upgrade() {
        Some(p) => (p.config.window, p.config.heartbeat()),
        None => return,
    };
    let mut next_tick = Instant::now() + window;
    let mut next_heartbeat = Instant::now() + heartbeat;
    loop {
        // Not holding the presence while waiting, so dropping it ends the task.
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep_until(next_tick) => {}
        }
        let Some(p) = presence.upgrade() else {
            return;
        };
        let _working = p.working.lock().await;
        p.work_off().await;
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + window;
            if now >= next_heartbeat {
                next_heartbeat = now + heartbeat;
                p.heartbeat().await;
            }
            p.deliver().await;
        }
    }
}
