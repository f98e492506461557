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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::prelude::Client;
use fred::types::config::{Options, Server};
use fred::types::{ClusterHash, ConnectHandle, CustomCommand, Value};
use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::cursors::Cursors;
use super::{map_err, parse, Shared};
use crate::engine::{EngineError, EngineStats, LiveSink, Ready, ReadySender, MAX_BATCH_BYTES};
use redistribute_protocol::StreamId;

/// Most channels whose cursors one `EVAL` checks after a reconnect.
const RAISE_CHUNK: usize = 256;

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
        };
        tokio::spawn(reader.run());
        tokio::spawn(unblocker(
            self.shared.clone(),
            control.clone(),
            self.unblocks.clone(),
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

/// Sends `CLIENT UNBLOCK` to a blocked reader until it has applied the queued changes.
async fn unblocker(
    shared: Arc<Shared>,
    control: Arc<Control>,
    unblocks: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let cmd = CustomCommand::new_static("CLIENT", ClusterHash::Random, false);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = control.unblock.notified() => {}
        }
        while control.applied.load(Ordering::Acquire) < control.wanted.load(Ordering::Acquire) {
            if stop.is_cancelled() {
                return;
            }
            let address = control.connection.lock().clone();
            let address = match address {
                Some(address) if control.in_read.load(Ordering::Acquire) => address,
                _ => {
                    // The reader is applying changes or reconnecting; give it a moment.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(5),
                        control.applied_signal.notified(),
                    )
                    .await;
                    continue;
                }
            };
            // Client ids are per node: in cluster mode, ask the node holding the reader.
            let options = Options {
                cluster_node: address.node,
                timeout: Some(shared.config.command_timeout),
                fail_fast: true,
                ..Options::default()
            };
            let reply: Result<i64, _> = shared
                .writer
                .with_options(&options)
                .custom(
                    cmd.clone(),
                    vec![Value::from("UNBLOCK"), Value::from(address.id)],
                )
                .await;
            match reply {
                Ok(1) => {
                    unblocks.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        control.applied_signal.notified(),
                    )
                    .await;
                }
                // Not blocked yet: the XREAD is still on its way to Redis.
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(err) => {
                    debug!(%err, "CLIENT UNBLOCK failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

struct Reader {
    shared: Arc<Shared>,
    sink: Arc<dyn LiveSink>,
    control: Arc<Control>,
    stop: CancellationToken,
    /// Watched channels and the last ID delivered of each.
    cursors: Cursors,
    /// The shard this reader serves (0 with a single Redis).
    shard: u16,
    /// This reader's id in the pool.
    id: u64,
    /// The pool's state, to check that an adopted channel is still assigned here.
    pool: Arc<Mutex<PoolState>>,
}

/// A reader's own connection: a client that never reconnects by itself, its routing task, and
/// a token cancelled when that task ends (Redis closed the connection).
///
/// Once the routing task ended, the client still calls itself connected and a command sent on
/// it is never answered; [`Connection::run`] fails such a command (and one in flight when the
/// connection drops) at once instead.
pub(super) struct Connection {
    pub(super) client: Client,
    task: AbortHandle,
    lost: CancellationToken,
}

impl Connection {
    /// Wraps a connected client and watches its routing task.
    pub(super) fn new(client: Client, task: ConnectHandle) -> Connection {
        let lost = CancellationToken::new();
        let abort = task.abort_handle();
        let signal = lost.clone();
        tokio::spawn(async move {
            let _ = task.await;
            signal.cancel();
        });
        Connection {
            client,
            task: abort,
            lost,
        }
    }

    /// Whether the connection is gone.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Runs a command on the connection; fails as soon as the connection is lost.
    pub(super) async fn run<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, EngineError> {
        tokio::select! {
            result = command => result.map_err(map_err),
            () = self.lost.cancelled() => Err(EngineError::Unavailable(
                "the reader's connection to Redis was lost".into(),
            )),
        }
    }

    /// Closes the connection (politely if Redis still answers) and ends its routing task.
    pub(super) async fn close(self) {
        if !self.is_lost() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.client.quit()).await;
        }
        self.task.abort();
    }
}

impl Reader {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut connection: Option<Connection> = None;
        // Whether the cursors held across a reconnect still have to be checked against the
        // streams (which a failover may have set back).
        let mut resume = false;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let conn = match &connection {
                Some(conn) => conn,
                None => match self.connect().await {
                    Ok(conn) => {
                        resume = !self.cursors.is_empty();
                        connection.insert(conn)
                    }
                    Err(err) => {
                        warn!(%err, shard = self.shard, "reader cannot connect to Redis; retrying");
                        self.shared.refresh_routing().await;
                        if self.pause(&mut backoff).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            if resume {
                if let Err(err) = self.raise_to_cursors().await {
                    warn!(%err, shard = self.shard, "reader cannot check its cursors; retrying");
                    if self.pause(&mut backoff).await {
                        break;
                    }
                    continue;
                }
                resume = false;
            }
            if let Err(err) = self.apply_changes().await {
                warn!(%err, "reader cannot start watching a channel; retrying");
                if self.pause(&mut backoff).await {
                    break;
                }
                continue;
            }
            if self.control.retiring.load(Ordering::Acquire)
                && self.cursors.is_empty()
                && self.control.pending.lock().is_empty()
            {
                break;
            }
            if self.cursors.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = self.control.wake.notified() => {}
                }
                continue;
            }
            match self.read_once(conn).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(err) => {
                    // Reconnect (in cluster mode to the slot's current owner, which a failover
                    // or resharding may have changed) and resume from the cursors.
                    warn!(%err, shard = self.shard, "XREAD failed; reconnecting reader");
                    self.control.connection.lock().take();
                    if let Some(conn) = connection.take() {
                        conn.close().await;
                    }
                    self.shared.refresh_routing().await;
                    if self.pause(&mut backoff).await {
                        break;
                    }
                }
            }
        }
        self.control.connection.lock().take();
        // Ends the unblocker too (the reader may have retired by itself after a merge).
        self.stop.cancel();
        if let Some(conn) = connection {
            conn.close().await;
        }
    }

    /// Connects to the single Redis, or to the node serving this reader's shard, and
    /// publishes the connection's address for the unblocker.
    async fn connect(&self) -> Result<Connection, EngineError> {
        let node = match self.shared.config.cluster {
            Some(_) => Some(self.shared.node_for_shard(self.shard).await?),
            None => None,
        };
        let client = self.shared.reader_client(node.as_ref())?;
        let task = client.init().await.map_err(map_err)?;
        let connection = Connection::new(client, task);
        match client_id(&connection, &self.shared.options()).await {
            Ok(id) => {
                *self.control.connection.lock() = Some(ReaderAddress { node, id });
                Ok(connection)
            }
            Err(err) => {
                connection.close().await;
                Err(err)
            }
        }
    }

    /// Sleeps for the backoff (doubling it, capped at 2 s); true when stopped meanwhile.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        }
    }

    /// After a reconnect: raises every stream whose last ID is now below this reader's cursor
    /// (the primary that served the cursor's entries failed over to a replica that lacks them)
    /// to the cursor, recording the lost range as trimmed. New entries then get IDs above the
    /// cursor, even from a primary whose clock is behind, so `XREAD` after the cursor sees
    /// them, and subscribers resuming inside the lost range get an exact `gap`. The cursor came
    /// from Redis itself, so it is not bounded by the clock as a client's offset is.
    async fn raise_to_cursors(&self) -> Result<(), EngineError> {
        let targets: Vec<(&str, StreamId)> = self.cursors.iter().collect();
        let mut raised = 0;
        for chunk in targets.chunks(RAISE_CHUNK) {
            raised += self
                .shared
                .raise(chunk, None, true, true)
                .await?
                .iter()
                .filter(|(_, raised)| *raised)
                .count();
        }
        if raised > 0 {
            warn!(
                shard = self.shard,
                channels = raised,
                "streams were behind this reader's cursors (a failover lost their tails); \
                 raised their last IDs to the cursors and recorded the lost ranges as gaps"
            );
        }
        Ok(())
    }

    /// Applies queued changes; a new channel starts at its current last ID.
    async fn apply_changes(&mut self) -> Result<(), EngineError> {
        let generation = self.control.wanted.load(Ordering::Acquire);
        let ops: Vec<(Arc<str>, Op)> = self.control.pending.lock().drain().collect();
        let mut failed = None;
        for (channel, op) in ops {
            match op {
                Op::Remove => self.cursors.remove(&channel),
                Op::Handover => {
                    // Without a cursor here, one is still on its way (an earlier merge): the
                    // `Adopt` rule passes it on when it arrives.
                    if let Some(id) = self.cursors.get(&channel) {
                        self.cursors.remove(&channel);
                        queue_on_owner(&self.pool, channel, Op::Adopt(id));
                    }
                }
                Op::Adopt(id) => {
                    // The pool's assignment decides: adopt the channel here, pass it on to the
                    // reader it was merged into meanwhile, or drop it (unwatched since).
                    let mine = self.pool.lock().assignment.get(&channel) == Some(&self.id);
                    if !mine {
                        queue_on_owner(&self.pool, channel, Op::Adopt(id));
                    } else if !self.cursors.contains(&channel) {
                        let key = self.shared.stream_key(&channel);
                        self.cursors.insert(channel, key, id);
                    }
                }
                Op::Add(ready) => {
                    if self.cursors.contains(&channel) {
                        ready.send_replace(Ready::Started);
                        continue;
                    }
                    if failed.is_some() {
                        self.requeue(channel, Op::Add(ready));
                        continue;
                    }
                    match self.shared.position(&channel).await {
                        Ok(pos) => {
                            let key = self.shared.stream_key(&channel);
                            self.cursors.insert(channel, key, pos.last_id);
                            ready.send_replace(Ready::At(pos));
                        }
                        Err(err) => {
                            self.requeue(channel, Op::Add(ready));
                            failed = Some(err);
                        }
                    }
                }
            }
        }
        if let Some(err) = failed {
            return Err(err);
        }
        self.control.applied.store(generation, Ordering::Release);
        self.control.applied_signal.notify_waiters();
        Ok(())
    }

    /// Puts an op back unless a newer one for the channel was queued meanwhile; if the
    /// channel was merged into another reader meanwhile, the op goes there instead.
    fn requeue(&self, channel: Arc<str>, op: Op) {
        let mut pending = self.control.pending.lock();
        if matches!(pending.get(&channel), Some(Op::Handover)) {
            pending.remove(&channel);
            drop(pending);
            queue_on_owner(&self.pool, channel, op);
            return;
        }
        pending.entry(channel).or_insert(op);
    }

    async fn read_once(&mut self, conn: &Connection) -> Result<(), EngineError> {
        let config = &self.shared.config;
        let args = self.cursors.xread_args(
            config.engine.read_count as u64,
            config.block.as_millis() as u64,
        );
        let options = Options {
            timeout: Some(config.block + Duration::from_secs(10)),
            max_attempts: Some(1),
            fail_fast: true,
            ..Options::default()
        };
        let cmd = CustomCommand::new_static("XREAD", ClusterHash::FirstKey, true);
        self.control.in_read.store(true, Ordering::Release);
        let client = conn.client.with_options(&options);
        let reading = conn.run(client.custom(cmd, args));
        let reply: Result<Value, _> = tokio::select! {
            reply = reading => reply,
            // Retired or shutting down: the caller closes the connection.
            _ = self.stop.cancelled() => Ok(Value::Null),
        };
        self.control.in_read.store(false, Ordering::Release);
        let reply = reply?;
        // Each replied key: its channel, entries, previous cursor and unreported gap.
        let mut replied = Vec::new();
        for (key, entries) in parse::xread_streams(&reply)? {
            let Some(channel) = self.cursors.channel_for_key(key.as_bytes()) else {
                continue;
            };
            let Some((cursor, gap)) = self.cursors.state(channel) else {
                continue;
            };
            replied.push((channel.clone(), key, entries, cursor, gap));
        }
        // Nothing can have been trimmed unseen when the first new entry directly follows the
        // cursor; otherwise read the watermarks (one round trip for the whole reply).
        let adjacent = |entries: &Value, cursor: StreamId| {
            parse::first_entry_id(entries).is_some_and(|first| first == cursor.successor())
        };
        let watermarks = if replied.iter().all(|r| adjacent(r.2, r.3)) {
            vec![None; replied.len()]
        } else {
            watermarks(conn, &self.shared.options(), replied.iter().map(|r| &*r.1)).await?
        };
        let mut batches = Vec::new();
        for ((channel, _, entries, cursor, gap), watermark) in replied.iter().zip(watermarks) {
            let gap = (*gap).max(watermark.filter(|w| w > cursor));
            let encoded =
                parse::entries_bounded(channel, entries, MAX_BATCH_BYTES, usize::MAX, gap)?;
            if let Some(last) = encoded.last_seen {
                self.cursors.advance(channel, last);
            }
            self.cursors.set_gap(channel, encoded.pending_gap);
            batches.extend(encoded.batches);
        }
        for batch in batches {
            self.sink.deliver(Arc::new(batch));
        }
        Ok(())
    }
}

/// The trim watermarks (`<key>#trim`) of the stream keys, in order, with one `MGET` under
/// `options` (with a timeout: the reader's client does not reconnect, and a command sent on it
/// after its connection was lost would otherwise never be answered).
async fn watermarks<'a>(
    conn: &Connection,
    options: &Options,
    keys: impl Iterator<Item = &'a str>,
) -> Result<Vec<Option<StreamId>>, EngineError> {
    let args: Vec<Value> = keys.map(|k| Value::from(format!("{k}#trim"))).collect();
    let count = args.len();
    let cmd = CustomCommand::new_static("MGET", ClusterHash::FirstKey, false);
    let reply: Value = conn
        .run(conn.client.with_options(options).custom(cmd, args))
        .await?;
    let values = match reply {
        Value::Array(values) if values.len() == count => values,
        other => {
            return Err(EngineError::Internal(format!(
                "unexpected MGET reply {other:?}"
            )))
        }
    };
    values.iter().map(parse::optional_id).collect()
}

/// The connection's `CLIENT ID`, under `options` (with a timeout, as for [`watermarks`]).
async fn client_id(conn: &Connection, options: &Options) -> Result<i64, EngineError> {
    let cmd = CustomCommand::new_static("CLIENT", ClusterHash::Random, false);
    conn.run(
        conn.client
            .with_options(options)
            .custom::<i64, Value>(cmd, vec!["ID".into()]),
    )
    .await
}
