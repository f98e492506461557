//! Live readers: dedicated Redis connections blocked in `XREAD` over watched channels.
//!
//! Channels are spread over readers, each covering at most `keys_per_reader` keys, because
//! Redis pays O(keys) for every `XREAD`. Changes to a reader's set are queued in its
//! [`Control`] (coalesced per channel) and picked up before its next `XREAD`; if the reader is
//! blocked, its unblocker sends one `CLIENT UNBLOCK <id>` for however many changes arrived
//! together, and repeats it only if the `XREAD` had not reached Redis yet.
//!
//! In cluster mode a reader serves channels of one shard only (one hash slot, as one `XREAD`
//! must), so an instance runs at most `shards × ⌈channels of a shard / keys_per_reader⌉`
//! readers. Its connection goes to the node serving that slot, and `CLIENT UNBLOCK` goes to the
//! same node (client ids are per node). After any error (`MOVED` after a failover or resharding,
//! a dead node, `CLUSTERDOWN`) the reader drops its connection, refreshes the routing table,
//! reconnects to the slot's current owner and resumes from its cursors, so nothing is skipped
//! or repeated. Consumer-group reads will be per shard in the same way.
//!
//! Trims can outrun a reader (`maxlen: 1` and a burst between two `XREAD`s: it gets only the
//! newest entry). After each `XREAD` reply the reader reads the trim watermarks of the replied
//! keys (one `MGET` per reply, skipped when every key's first new entry directly follows its
//! cursor), and a watermark above a key's previous cursor becomes the `gap_through` of that
//! key's first batch, lowered below the batch's first entry. The watermark is read just after
//! the `XREAD`, not atomically with it: if trimming passed the reply's first entry in between,
//! the gap covers everything before that entry, possibly more than was really trimmed (never
//! less). Replies are cut into batches of at most [`MAX_BATCH_BYTES`], and entries larger than
//! [`crate::engine::MAX_ENTRY_BYTES`] are skipped into the next batch's gap.
//!
//! After a reconnect a reader first raises any stream whose last ID fell below its cursor (a
//! failover to a replica that lacked the tail) to the cursor ([`super::scripts::RAISE`]), so
//! new entries, even from a primary whose clock is behind, are never below what it reads after.
//!
//! The pool shrinks as channels are unwatched: a reader left empty is retired (at most one idle
//! reader per shard is kept), and one left at most a quarter full is merged into another reader
//! of its shard, each channel's cursor moving with it (see [`ReaderPool::merge`]).

//!
//! This module owns the pool (which reader serves which channel, merges and retirements) and
//! the queue of changes each reader picks up; [`task`] is a reader's loop, [`unblock`] its
//! unblocker.

mod task;
mod unblock;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use fred::types::config::Server;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::cursors::Cursors;
use super::Shared;
use crate::engine::{EngineStats, LiveSink, ReadySender};
use redistribute_protocol::StreamId;
use task::Reader;
use unblock::unblocker;

/// A pending change to a reader's channel set.
enum Op {
    /// Start reading the channel at its current last ID.
    Add(ReadySender),
    /// Stop reading the channel.
    Remove,
    /// Stop reading the channel and hand its cursor to the reader the pool now assigns it to
    /// (this reader was merged away).
    Handover,
    /// Take the channel over from a merged reader, reading after this ID.
    Adopt(StreamId),
}

/// What the pool and a reader task share.
#[derive(Default)]
struct Control {
    /// Changes not yet applied, last one per channel wins.
    pending: Mutex<HashMap<Arc<str>, Op>>,
    /// Generation of the newest change queued.
    wanted: AtomicU64,
    /// Generation the reader has applied.
    applied: AtomicU64,
    /// Wakes an idle reader (one with no channels).
    wake: tokio::sync::Notify,
    /// Wakes the unblocker.
    unblock: tokio::sync::Notify,
    /// Signalled each time the reader applies changes.
    applied_signal: tokio::sync::Notify,
    /// Where the reader's connection is, while it has one.
    connection: Mutex<Option<ReaderAddress>>,
    /// Whether the reader is inside `XREAD` (or about to send it).
    in_read: AtomicBool,
    /// Merged away: the reader ends once it has handed over all of its channels.
    retiring: AtomicBool,
}

/// Where to send `CLIENT UNBLOCK` for a reader.
#[derive(Clone)]
struct ReaderAddress {
    /// The cluster node holding the connection (`None` with a single Redis).
    node: Option<Server>,
    /// The connection's `CLIENT ID` on that node.
    id: i64,
}

struct ReaderSlot {
    control: Arc<Control>,
    channels: usize,
    /// The shard whose channels this reader serves (0 with a single Redis).
    shard: u16,
    /// Ends this reader (and its unblocker) when it is retired.
    stop: CancellationToken,
}

struct PoolState {
    /// Running readers by id.
    readers: HashMap<u64, ReaderSlot>,
    /// Id of the next reader.
    next_id: u64,
    /// Which reader serves each watched channel.
    assignment: HashMap<Arc<str>, u64>,
}

/// The set of readers of one engine.
pub(super) struct ReaderPool {
    shared: Arc<Shared>,
    sink: Arc<dyn LiveSink>,
    state: Arc<Mutex<PoolState>>,
    unblocks: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl ReaderPool {
    pub(super) fn new(shared: Arc<Shared>, sink: Arc<dyn LiveSink>) -> Self {
        ReaderPool {
            shared,
            sink,
            state: Arc::new(Mutex::new(PoolState {
                readers: HashMap::new(),
                next_id: 0,
                assignment: HashMap::new(),
            })),
            unblocks: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    pub(super) fn stats(&self) -> EngineStats {
        let st = self.state.lock();
        EngineStats {
            readers: st.readers.len(),
            watched: st.assignment.len(),
            unblocks: self.unblocks.load(Ordering::Relaxed),
        }
    }

    pub(super) fn watch(&self, channel: Arc<str>, ready: ReadySender) {
        let mut st = self.state.lock();
        let st = &mut *st;
        let id = match st.assignment.get(&channel) {
            Some(&id) => id,
            None => {
                let max = self.shared.config.keys_per_reader.max(1);
                let shard = self.shared.shard(&channel);
                let id = match st
                    .readers
                    .iter()
                    .filter(|(_, r)| r.shard == shard && r.channels < max)
                    .min_by_key(|(&id, r)| (r.channels, id))
                {
                    Some((&id, _)) => id,
                    None => {
                        let id = st.next_id;
                        st.next_id += 1;
                        st.readers.insert(id, self.spawn_reader(id, shard));
                        id
                    }
                };
                if let Some(slot) = st.readers.get_mut(&id) {
                    slot.channels += 1;
                }
                st.assignment.insert(channel.clone(), id);
                id
            }
        };
        if let Some(slot) = st.readers.get(&id) {
            queue(&slot.control, channel, Op::Add(ready));
        }
    }

    /// Stops feeding `channel`, then shrinks the pool: a reader left with no channels is
    /// retired (its connection closed) unless it is the only empty reader of its shard (one
    /// idle reader per shard is kept, so watching and unwatching a channel over and over does
    /// not reconnect each time); a reader left at most a quarter full is merged into another
    /// reader of its shard that stays at most half full ([`ReaderPool::merge`]).
    pub(super) fn unwatch(&self, channel: &Arc<str>) {
        let mut st = self.state.lock();
        let Some(id) = st.assignment.remove(channel) else {
            return;
        };
        let Some(slot) = st.readers.get_mut(&id) else {
            return;
        };
        slot.channels -= 1;
        queue(&slot.control, channel.clone(), Op::Remove);
        if slot.channels > 0 {
            let max = self.shared.config.keys_per_reader.max(1);
            if slot.channels <= max / 4 {
                Self::merge(&mut st, id, max);
            }
            return;
        }
        let shard = slot.shard;
        let other_idle = st
            .readers
            .iter()
            .any(|(&other, r)| other != id && r.shard == shard && r.channels == 0);
        if other_idle {
            if let Some(slot) = st.readers.remove(&id) {
                slot.stop.cancel();
            }
        }
    }

    /// Moves every channel of under-used reader `source` to the fullest other reader of its
    /// shard that stays at most half full, and retires `source`. Each channel's cursor moves
    /// with it: `source` stops reading the channel and hands its cursor over
    /// ([`Op::Handover`]); the target reads after it ([`Op::Adopt`]), so nothing is skipped or
    /// delivered twice. The thresholds (merge at a quarter, into at most half) keep merges
    /// from being undone by the next few watches.
    fn merge(st: &mut PoolState, source: u64, max: usize) {
        let Some(from) = st.readers.get(&source) else {
            return;
        };
        let (shard, moving) = (from.shard, from.channels);
        let target = st
            .readers
            .iter()
            .filter(|(&id, r)| id != source && r.shard == shard)
            .filter(|(_, r)| r.channels + moving <= max / 2)
            .max_by_key(|(&id, r)| (r.channels, std::cmp::Reverse(id)))
            .map(|(&id, _)| id);
        let Some(target) = target else {
            return;
        };
        let Some(to) = st.readers.get_mut(&target) else {
            return;
        };
        to.channels += moving;
        let to_control = to.control.clone();
        let Some(from) = st.readers.remove(&source) else {
            return;
        };
        from.control.retiring.store(true, Ordering::Release);
        for (channel, id) in st.assignment.iter_mut() {
            if *id != source {
                continue;
            }
            *id = target;
            let mut pending = from.control.pending.lock();
            match pending.remove(channel) {
                // Not started by `source` yet: the target starts it instead.
                Some(Op::Add(ready)) => {
                    drop(pending);
                    queue(&to_control, channel.clone(), Op::Add(ready));
                }
                // A cursor on its way to `source` (an earlier merge): it goes on.
                Some(Op::Adopt(cursor)) => {
                    drop(pending);
                    queue_unless_newer(&to_control, channel.clone(), Op::Adopt(cursor));
                }
                _ => {
                    drop(pending);
                    queue(&from.control, channel.clone(), Op::Handover);
                }
            }
        }
        // Wakes `source` (even with nothing to hand over) so that it sees it is retiring.
        from.control.wanted.fetch_add(1, Ordering::AcqRel);
        from.control.wake.notify_one();
        from.control.unblock.notify_one();
    }

    fn spawn_reader(&self, id: u64, shard: u16) -> ReaderSlot {
        let control = Arc::new(Control::default());
        let stop = self.stop.child_token();
        let reader = Reader {
            shared: self.shared.clone(),
            sink: self.sink.clone(),
            control: control.clone(),
            stop: stop.clone(),
            cursors: Cursors::default(),
            shard,
            id,
            pool: self.state.clone(),
            health: self.shared.health.entry(),
        };
        tokio::spawn(reader.run());
        tokio::spawn(unblocker(
            self.shared.clone(),
            control.clone(),
            self.unblocks.clone(),
            self.shared.health.entry(),
            stop.clone(),
        ));
        ReaderSlot {
            control,
            channels: 0,
            shard,
            stop,
        }
    }
}

fn queue(control: &Control, channel: Arc<str>, op: Op) {
    control.pending.lock().insert(channel, op);
    notify(control);
}

/// Queues `op` unless a newer op for the channel is queued already (which then wins).
fn queue_unless_newer(control: &Control, channel: Arc<str>, op: Op) {
    control.pending.lock().entry(channel).or_insert(op);
    notify(control);
}

/// Queues `op` (unless a newer one is queued) on the reader the pool assigns `channel` to;
/// dropped if the channel is not watched any more. Under the pool's lock, so the op never
/// lands on a reader merged away meanwhile (merges move queued ops along).
fn queue_on_owner(pool: &Mutex<PoolState>, channel: Arc<str>, op: Op) {
    let pool = pool.lock();
    let owner = pool
        .assignment
        .get(&channel)
        .and_then(|owner| pool.readers.get(owner));
    if let Some(owner) = owner {
        queue_unless_newer(&owner.control, channel, op);
    }
}

fn notify(control: &Control) {
    control.wanted.fetch_add(1, Ordering::AcqRel);
    control.wake.notify_one();
    control.unblock.notify_one();
}
