//! Shard-log live readers: one blocked `XREAD` per followed shard, however many channels are
//! watched.
//!
//! The publish script appends each message to its channel's stream (the history) and to its
//! shard's log (`s <sequence> c <channel> o <offset> <fields…>`, trimmed to about
//! [`super::RedisConfig::log_maxlen`] entries; one log with a single Redis, one per shard in
//! Cluster). For each shard with watched channels an instance runs a [`ShardLog`]: one
//! connection blocked in `XREAD` on that log (to the node serving the shard's slot in Cluster),
//! keeping the entries of the channels it watches. Redis connections stay at one per followed
//! shard, a wake-up costs Redis O(1) keys, and nothing is registered in Redis per channel.
//! Watching a channel changes no `XREAD`, so no `CLIENT UNBLOCK` is ever needed.
//!
//! **The seam.** Each watched channel has a cursor: the offset up to which its entries reached
//! the sink. A new watch is first *installed* (entries of the log for it are buffered from
//! then on), then its position is read ([`super::scripts::POSITIONS`], many channels per
//! script): every entry up to that position is history, every later one was appended after the
//! install and so is in the log after the reader's place when it was installed. The channel
//! goes live at that position, with the buffered entries after it. Positions are read only
//! once the reader has fixed its place in the log (after a start or reconnect), so no entry
//! falls between the two.
//!
//! **Log continuity.** Log entries carry consecutive sequence numbers. When the next entry read
//! is not the one after the last (the log was trimmed past the reader, which fell behind; or
//! it was reset or failed over), the entries in between are unknown: every channel of the
//! shard is *caught up* from its own stream — its position is read and, if it moved past the
//! cursor, pages are read from the cursor with the exact trim watermark ([`super::scripts::
//! READ`]), so a subscriber behind a channel's trim is told exactly what it missed — while the
//! log's entries for it are buffered, then the buffer (entries after the caught-up cursor) is
//! delivered and the channel is live again. After a reconnect the reader starts again at the
//! log's end and catches every channel up, first raising any stream whose last ID fell below
//! the channel's cursor (a failover to a replica that lacked the tail) to the cursor, as the
//! per-channel readers do. A buffer that grows past [`MAX_BUFFERED`] is dropped and the
//! channel caught up again.
//!
//! Live entries come from the log itself, so an entry trimmed from its channel's stream
//! before the reader saw it is still delivered; gaps on the live path come only from catch-ups.
//!
//! Each shard has two tasks: the reader (the blocked `XREAD`, under the shard's state lock
//! while it hands entries to the sink) and a worker (installs watches, reads positions, runs
//! catch-ups; its deliveries take the same lock, so a channel's batches stay in order).
//! `watch` and `unwatch` only queue a request and never take the state lock, which is held
//! while delivering. A reader whose shard has no watched channel left closes its connection.

//!
//! Submodules: [`read`] is the reader task (the blocked `XREAD`, the log's sequence), [`work`]
//! the worker task (installs, positions, catch-ups, going live), [`entry`] the log entry
//! format.

mod entry;
mod read;
mod work;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use fred::types::Value;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::engine::live_health::HealthEntry;
use crate::engine::{EngineStats, LiveSink, ReadySender};
use redistribute_protocol::StreamId;

/// Most log entries buffered for a channel that is not live yet; past it the buffer is
/// dropped and the channel caught up from its stream again.
pub(super) const MAX_BUFFERED: usize = 4096;

/// Most channels one position or raise script covers.
const CHUNK: usize = 256;

/// A request queued by `watch`/`unwatch`.
enum Request {
    Watch(ReadySender),
    Unwatch,
}

/// Where a watched channel stands.
enum Phase {
    /// Installed; its position is not read yet. `catch_up`: the log lost entries since the
    /// install, so the channel is caught up from its position before going live.
    Pending {
        readies: Vec<ReadySender>,
        catch_up: bool,
    },
    /// Being caught up from its stream after the cursor; log entries are buffered. `raise`:
    /// first raise the stream to the cursor (after a reconnect).
    CatchingUp { raise: bool },
    /// Log entries after the cursor go to the sink.
    Live,
}

struct Chan {
    /// The channel's name (shared with the batches).
    name: Arc<str>,
    /// Distinguishes this watch from an earlier one of the same channel.
    generation: u64,
    phase: Phase,
    /// Entries up to here reached the sink (not meaningful while pending).
    cursor: StreamId,
    /// Entries up to here were not delivered, and no batch reported it yet.
    gap: Option<StreamId>,
    /// Log entries taken while not live, in order: offset and `[offset, [fields…]]`.
    buffer: Vec<(StreamId, Value)>,
    /// Entries were dropped from the buffer: catch up again.
    overflow: bool,
    /// The log lost entries again while this channel was being caught up: once more.
    redo: bool,
}

#[derive(Default)]
struct ShardState {
    channels: HashMap<Arc<str>, Chan>,
    /// The reader's place in the log is fixed: positions read from now on are valid.
    started: bool,
    next_generation: u64,
    /// Installed channels whose position is to be read.
    pending: Vec<Arc<str>>,
    /// Channels to catch up.
    catch_up: Vec<Arc<str>>,
}

impl ShardState {
    /// The log lost entries the reader did not see: every channel is caught up (`raise`:
    /// raising streams that fell below their cursors first).
    fn catch_up_all(&mut self, raise: bool) {
        let ShardState {
            channels, catch_up, ..
        } = self;
        for (name, chan) in channels.iter_mut() {
            match &mut chan.phase {
                Phase::Pending { catch_up, .. } => *catch_up = true,
                Phase::CatchingUp { raise: r } => {
                    *r |= raise;
                    chan.redo = true;
                }
                Phase::Live => {
                    chan.phase = Phase::CatchingUp { raise };
                    catch_up.push(name.clone());
                }
            }
        }
    }
}

/// One shard's log reader and worker; see the module docs.
struct ShardLog {
    shard: u16,
    key: String,
    seq_key: String,
    requests: Mutex<Vec<(Arc<str>, Request)>>,
    state: Mutex<ShardState>,
    /// Wakes the worker.
    work: Notify,
    /// Wakes a paused reader.
    wake: Notify,
    /// Tells the reader its last channel was unwatched (it leaves its `XREAD` and closes its
    /// connection).
    emptied: Notify,
    /// Signalled when the reader fixed its place in the log.
    started: Notify,
    /// Whether the reader holds a connection.
    reading: AtomicBool,
    /// Channels installed.
    watched: AtomicUsize,
    /// The reader task's health: failing from an error until a read succeeds or blocks.
    read_health: HealthEntry,
    /// The worker's health: failing from an error until its positions and catch-ups succeed.
    work_health: HealthEntry,
}

/// The shard-log readers of one engine.
pub(super) struct LogPool {
    shared: Arc<Shared>,
    sink: Arc<dyn LiveSink>,
    shards: Mutex<HashMap<u16, Arc<ShardLog>>>,
    stop: CancellationToken,
}

impl LogPool {
    pub(super) fn new(shared: Arc<Shared>, sink: Arc<dyn LiveSink>) -> Self {
        LogPool {
            shared,
            sink,
            shards: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// `readers`: shard logs being read (each one Redis connection); `watched`: channels.
    pub(super) fn stats(&self) -> EngineStats {
        let shards = self.shards.lock();
        EngineStats {
            readers: shards
                .values()
                .filter(|s| s.reading.load(Ordering::Relaxed))
                .count(),
            watched: shards
                .values()
                .map(|s| s.watched.load(Ordering::Relaxed))
                .sum(),
            unblocks: 0,
        }
    }

    pub(super) fn watch(&self, channel: Arc<str>, ready: ReadySender) {
        let shard = self.shared.shard(&channel);
        let log = self
            .shards
            .lock()
            .entry(shard)
            .or_insert_with(|| self.spawn(shard))
            .clone();
        log.requests.lock().push((channel, Request::Watch(ready)));
        log.work.notify_one();
        log.wake.notify_one();
    }

    pub(super) fn unwatch(&self, channel: &Arc<str>) {
        let shard = self.shared.shard(channel);
        let log = self.shards.lock().get(&shard).cloned();
        if let Some(log) = log {
            log.requests
                .lock()
                .push((channel.clone(), Request::Unwatch));
            log.work.notify_one();
        }
    }

    fn spawn(&self, shard: u16) -> Arc<ShardLog> {
        let key = self.shared.log_key(shard);
        let log = Arc::new(ShardLog {
            shard,
            seq_key: format!("{key}seq"),
            key,
            requests: Mutex::new(Vec::new()),
            state: Mutex::new(ShardState::default()),
            work: Notify::new(),
            wake: Notify::new(),
            emptied: Notify::new(),
            started: Notify::new(),
            reading: AtomicBool::new(false),
            watched: AtomicUsize::new(0),
            read_health: self.shared.health.entry(),
            work_health: self.shared.health.entry(),
        });
        tokio::spawn(log.clone().read(
            self.shared.clone(),
            self.sink.clone(),
            self.stop.child_token(),
        ));
        tokio::spawn(log.clone().work(
            self.shared.clone(),
            self.sink.clone(),
            self.stop.child_token(),
        ));
        log
    }
}
