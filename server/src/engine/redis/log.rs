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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::reader::Connection;
use super::{map_err, parse, scripts, Shared};
use crate::engine::{
    EngineError, EngineStats, LiveSink, Position, Ready, ReadySender, MAX_BATCH_BYTES,
};
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

/// Where a reader is in its log: the last entry read and the sequence expected next.
#[derive(Clone, Copy)]
struct Place {
    id: StreamId,
    next_seq: u64,
}

impl ShardLog {
    /// The reader task; see the module docs.
    async fn read(
        self: Arc<Self>,
        shared: Arc<Shared>,
        sink: Arc<dyn LiveSink>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(50);
        let mut connection: Option<Connection> = None;
        let mut place: Option<Place> = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let idle = {
                let mut st = self.state.lock();
                let idle = st.channels.is_empty() && self.requests.lock().is_empty();
                if idle {
                    st.started = false;
                }
                idle
            };
            if idle {
                place = None;
                self.reading.store(false, Ordering::Relaxed);
                if let Some(conn) = connection.take() {
                    conn.close().await;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.wake.notified() => {}
                    // Rechecks now and then (a wake-up racing the check above is not lost).
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let conn = match &connection {
                Some(conn) => conn,
                None => match self.connect(&shared).await {
                    Ok(conn) => {
                        self.reading.store(true, Ordering::Relaxed);
                        connection.insert(conn)
                    }
                    Err(err) => {
                        warn!(%err, shard = self.shard, "log reader cannot connect to Redis; retrying");
                        shared.refresh_routing().await;
                        if pause(&stop, &mut backoff).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let fixed = match place {
                Some(place) => Ok(place),
                None => self.tip(&shared, conn).await,
            };
            let here = match fixed {
                Ok(here) => here,
                Err(err) => {
                    warn!(%err, shard = self.shard, "log reader cannot find the log's end; reconnecting");
                    self.drop_connection(&mut connection, &shared).await;
                    if pause(&stop, &mut backoff).await {
                        break;
                    }
                    continue;
                }
            };
            if place.is_none() {
                self.state.lock().started = true;
                self.started.notify_waiters();
                self.work.notify_one();
            }
            match self.read_once(&shared, &sink, conn, here, &stop).await {
                Ok(Some(next)) => {
                    place = Some(next);
                    backoff = Duration::from_millis(50);
                }
                // Nothing is watched any more: the connection (its `XREAD` still blocked in
                // Redis) is closed; the reader pauses, or reconnects if watches came back.
                Ok(None) => {
                    self.reading.store(false, Ordering::Relaxed);
                    if let Some(conn) = connection.take() {
                        conn.close().await;
                    }
                }
                Err(err) => {
                    warn!(%err, shard = self.shard, "log XREAD failed; reconnecting reader");
                    self.drop_connection(&mut connection, &shared).await;
                    // After a reconnect the reader starts again at the log's end (a failover
                    // may have replaced the log) and catches every channel up, raising streams
                    // that fell below their cursors.
                    place = None;
                    {
                        let mut st = self.state.lock();
                        st.started = false;
                        st.catch_up_all(true);
                    }
                    if pause(&stop, &mut backoff).await {
                        break;
                    }
                }
            }
        }
        self.reading.store(false, Ordering::Relaxed);
        if let Some(conn) = connection {
            conn.close().await;
        }
    }

    async fn drop_connection(&self, connection: &mut Option<Connection>, shared: &Shared) {
        self.reading.store(false, Ordering::Relaxed);
        if let Some(conn) = connection.take() {
            conn.close().await;
        }
        shared.refresh_routing().await;
    }

    /// Connects to the single Redis, or to the node serving the shard.
    async fn connect(&self, shared: &Shared) -> Result<Connection, EngineError> {
        let node = match shared.config.cluster {
            Some(_) => Some(shared.node_for_shard(self.shard).await?),
            None => None,
        };
        let client = shared.reader_client(node.as_ref())?;
        let task = client.init().await.map_err(map_err)?;
        Ok(Connection::new(client, task))
    }

    /// The log's end ([`scripts::LOG_TIP`]).
    async fn tip(&self, shared: &Shared, conn: &Connection) -> Result<Place, EngineError> {
        let cmd = CustomCommand::new_static("EVAL_RO", ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![
            Value::from_static_str(scripts::LOG_TIP),
            Value::Integer(2),
            Value::from(self.key.as_str()),
            Value::from(self.seq_key.as_str()),
        ];
        let reply: Value = conn
            .run(
                conn.client
                    .with_options(&shared.options())
                    .custom(cmd, args),
            )
            .await?;
        let unexpected = || EngineError::Internal(format!("unexpected log tip reply {reply:?}"));
        let Value::Array(parts) = &reply else {
            return Err(unexpected());
        };
        let [id, seq] = parts.as_slice() else {
            return Err(unexpected());
        };
        Ok(Place {
            id: parse::optional_id(id)?.unwrap_or_default(),
            next_seq: seq_of(seq).ok_or_else(unexpected)? + 1,
        })
    }

    /// One `XREAD` of the log after `place`; hands the watched channels' entries over and
    /// returns the new place, or `None` when it left the `XREAD` because nothing is watched.
    async fn read_once(
        &self,
        shared: &Shared,
        sink: &Arc<dyn LiveSink>,
        conn: &Connection,
        place: Place,
        stop: &CancellationToken,
    ) -> Result<Option<Place>, EngineError> {
        let config = &shared.config;
        let options = Options {
            timeout: Some(config.block + Duration::from_secs(10)),
            max_attempts: Some(1),
            fail_fast: true,
            ..Options::default()
        };
        let args: Vec<Value> = vec![
            "COUNT".into(),
            Value::Integer(config.engine.read_count.max(1) as i64),
            "BLOCK".into(),
            Value::Integer(config.block.as_millis() as i64),
            "STREAMS".into(),
            Value::from(self.key.as_str()),
            Value::from(place.id.to_string()),
        ];
        let cmd = CustomCommand::new_static("XREAD", ClusterHash::FirstKey, true);
        let client = conn.client.with_options(&options);
        let reading = conn.run(client.custom(cmd, args));
        tokio::pin!(reading);
        let reply: Value = loop {
            tokio::select! {
                reply = &mut reading => break reply?,
                _ = stop.cancelled() => return Ok(Some(place)),
                _ = self.emptied.notified() => {
                    if self.state.lock().channels.is_empty() && self.requests.lock().is_empty() {
                        return Ok(None);
                    }
                }
            }
        };
        let streams = parse::xread_streams(&reply)?;
        let Some((_, entries)) = streams.first() else {
            // Timed out. A log that now ends before the reader's place was reset or replaced
            // (its new entries would never come after the place): start again at its end.
            let tip = self.tip(shared, conn).await?;
            if tip.id < place.id {
                warn!(shard = self.shard, "the shard log is behind this reader (reset or failed over); catching its channels up");
                self.state.lock().catch_up_all(true);
                self.work.notify_one();
                return Ok(Some(tip));
            }
            return Ok(Some(place));
        };
        self.take_entries(entries, place, sink).map(Some)
    }

    /// Hands the entries of one `XREAD` reply to live channels (buffering those of the
    /// others), checking the log's sequence.
    fn take_entries(
        &self,
        entries: &Value,
        mut place: Place,
        sink: &Arc<dyn LiveSink>,
    ) -> Result<Place, EngineError> {
        let Value::Array(items) = entries else {
            return Err(EngineError::Internal(format!(
                "unexpected log entries {entries:?}"
            )));
        };
        let mut st = self.state.lock();
        let mut live: Vec<(Arc<str>, Vec<Value>)> = Vec::new();
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut lost = false;
        for item in items {
            let entry = LogEntry::parse(item)?;
            if entry.seq != place.next_seq {
                // Entries between were trimmed (this reader fell behind) or the log was reset.
                lost = true;
                st.catch_up_all(false);
            }
            place = Place {
                id: entry.id,
                next_seq: entry.seq + 1,
            };
            let Some(chan) = st.channels.get_mut(entry.channel.as_ref()) else {
                continue;
            };
            if entry.offset <= chan.cursor && !matches!(chan.phase, Phase::Pending { .. }) {
                continue;
            }
            let value = entry.channel_entry();
            match chan.phase {
                Phase::Live => {
                    let name = &chan.name;
                    let slot = *index.entry(name.clone()).or_insert_with(|| {
                        live.push((name.clone(), Vec::new()));
                        live.len() - 1
                    });
                    live[slot].1.push(value);
                }
                _ => {
                    if chan.buffer.len() >= MAX_BUFFERED {
                        chan.buffer.clear();
                        chan.overflow = true;
                    } else if !chan.overflow {
                        chan.buffer.push((entry.offset, value));
                    }
                }
            }
        }
        for (name, list) in live {
            if let Some(chan) = st.channels.get_mut(&name) {
                deliver_entries(sink, &name, chan, list)?;
            }
        }
        drop(st);
        if lost {
            warn!(
                shard = self.shard,
                "the shard log was trimmed past this reader (it fell behind); catching its channels up"
            );
            self.work.notify_one();
        }
        Ok(place)
    }

    /// The worker task: applies watch requests, reads positions, runs catch-ups.
    async fn work(
        self: Arc<Self>,
        shared: Arc<Shared>,
        sink: Arc<dyn LiveSink>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if stop.is_cancelled() {
                return;
            }
            self.apply_requests();
            let result = match self.resolve_pending(&shared, &sink, &stop).await {
                Ok(()) => self.catch_up(&shared, &sink, &stop).await,
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                warn!(%err, shard = self.shard, "log worker cannot read positions or catch up; retrying");
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
            backoff = Duration::from_millis(50);
            let idle = {
                let st = self.state.lock();
                st.pending.is_empty() && st.catch_up.is_empty()
            } && self.requests.lock().is_empty();
            if idle {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.work.notified() => {}
                }
            }
        }
    }

    fn apply_requests(&self) {
        let requests = std::mem::take(&mut *self.requests.lock());
        if requests.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        for (channel, request) in requests {
            match request {
                Request::Unwatch => {
                    st.channels.remove(&channel);
                }
                Request::Watch(ready) => match st.channels.get_mut(&channel) {
                    Some(Chan {
                        phase: Phase::Pending { readies, .. },
                        ..
                    }) => readies.push(ready),
                    Some(_) => {
                        ready.send_replace(Ready::Started);
                    }
                    None => {
                        let generation = st.next_generation;
                        st.next_generation += 1;
                        st.channels.insert(
                            channel.clone(),
                            Chan {
                                name: channel.clone(),
                                generation,
                                phase: Phase::Pending {
                                    readies: vec![ready],
                                    catch_up: false,
                                },
                                cursor: StreamId::ZERO,
                                gap: None,
                                buffer: Vec::new(),
                                overflow: false,
                                redo: false,
                            },
                        );
                        st.pending.push(channel);
                    }
                },
            }
        }
        self.watched.store(st.channels.len(), Ordering::Relaxed);
        let empty = st.channels.is_empty();
        drop(st);
        if empty {
            self.emptied.notify_one();
        }
        self.wake.notify_one();
    }

    /// Waits until the reader fixed its place in the log; true when stopped meanwhile.
    async fn wait_started(&self, stop: &CancellationToken) -> bool {
        loop {
            if self.state.lock().started {
                return false;
            }
            self.wake.notify_one();
            tokio::select! {
                _ = stop.cancelled() => return true,
                _ = self.started.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Reads the positions of installed channels and makes them live (or catches them up).
    async fn resolve_pending(
        &self,
        shared: &Shared,
        sink: &Arc<dyn LiveSink>,
        stop: &CancellationToken,
    ) -> Result<(), EngineError> {
        loop {
            let batch: Vec<(Arc<str>, u64)> = {
                let mut st = self.state.lock();
                let take = st.pending.len().min(CHUNK);
                let names: Vec<Arc<str>> = st.pending.drain(..take).collect();
                names
                    .into_iter()
                    .filter_map(|name| match st.channels.get(&name) {
                        Some(
                            chan @ Chan {
                                phase: Phase::Pending { .. },
                                ..
                            },
                        ) => Some((name, chan.generation)),
                        _ => None,
                    })
                    .collect()
            };
            if batch.is_empty() {
                if self.state.lock().pending.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if self.wait_started(stop).await {
                return Ok(());
            }
            let names: Vec<Arc<str>> = batch.iter().map(|(n, _)| n.clone()).collect();
            let positions = match shared.positions(&names).await {
                Ok(positions) => positions,
                Err(err) => {
                    let mut st = self.state.lock();
                    st.pending.extend(names);
                    return Err(err);
                }
            };
            let mut st = self.state.lock();
            for ((name, generation), position) in batch.into_iter().zip(positions) {
                let Some(chan) = st.channels.get_mut(&name) else {
                    continue;
                };
                if chan.generation != generation {
                    continue;
                }
                let Phase::Pending { readies, catch_up } = &mut chan.phase else {
                    continue;
                };
                for ready in readies.drain(..) {
                    ready.send_replace(Ready::At(position));
                }
                chan.cursor = position.last_id;
                if *catch_up || chan.overflow {
                    chan.phase = Phase::CatchingUp { raise: false };
                    st.catch_up.push(name);
                } else {
                    go_live(sink, &name, chan)?;
                }
            }
        }
    }

    /// Catches channels up from their streams, then makes them live. Each chunk is read once
    /// the reader fixed its place in the log (after a reconnect, entries up to its new place
    /// reach a channel only through its catch-up).
    async fn catch_up(
        &self,
        shared: &Shared,
        sink: &Arc<dyn LiveSink>,
        stop: &CancellationToken,
    ) -> Result<(), EngineError> {
        loop {
            if self.wait_started(stop).await {
                return Ok(());
            }
            let jobs: Vec<(Arc<str>, u64, StreamId, bool)> = {
                let mut st = self.state.lock();
                let take = st.catch_up.len().min(CHUNK);
                let names: Vec<Arc<str>> = st.catch_up.drain(..take).collect();
                let mut jobs = Vec::with_capacity(names.len());
                for name in names {
                    if let Some(chan) = st.channels.get_mut(&name) {
                        if let Phase::CatchingUp { raise } = &mut chan.phase {
                            jobs.push((name, chan.generation, chan.cursor, *raise));
                            *raise = false;
                        }
                    }
                }
                jobs
            };
            if jobs.is_empty() {
                if self.state.lock().catch_up.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if let Err(err) = self.catch_up_chunk(shared, sink, &jobs).await {
                let mut st = self.state.lock();
                for (name, generation, _, raise) in jobs {
                    if let Some(chan) = st.channels.get_mut(&name) {
                        if chan.generation == generation {
                            if let Phase::CatchingUp { raise: r } = &mut chan.phase {
                                *r |= raise;
                                st.catch_up.push(name);
                            }
                        }
                    }
                }
                return Err(err);
            }
        }
    }

    async fn catch_up_chunk(
        &self,
        shared: &Shared,
        sink: &Arc<dyn LiveSink>,
        jobs: &[(Arc<str>, u64, StreamId, bool)],
    ) -> Result<(), EngineError> {
        let positions: Vec<Position> = if jobs.iter().any(|j| j.3) {
            let targets: Vec<(&str, StreamId)> =
                jobs.iter().map(|(n, _, c, _)| (&**n, *c)).collect();
            let raised = shared.raise(&targets, None, true, true).await?;
            let count = raised.iter().filter(|(_, r)| *r).count();
            if count > 0 {
                warn!(
                    shard = self.shard,
                    channels = count,
                    "streams were behind this reader's cursors (a failover lost their tails); \
                     raised their last IDs to the cursors and recorded the lost ranges as gaps"
                );
            }
            raised.into_iter().map(|(p, _)| p).collect()
        } else {
            let names: Vec<Arc<str>> = jobs.iter().map(|j| j.0.clone()).collect();
            shared.positions(&names).await?
        };
        let read_count = shared.config.engine.read_count.max(1);
        for ((name, generation, cursor, _), position) in jobs.iter().zip(positions) {
            let mut after = *cursor;
            // Pages until the position read above (later entries are buffered from the log).
            let until = position
                .last_id
                .max(position.trimmed_through.unwrap_or_default());
            while after < until {
                let page = shared
                    .read_page(name, after, read_count, MAX_BATCH_BYTES)
                    .await?;
                let mut st = self.state.lock();
                let Some(chan) = st.channels.get_mut(name) else {
                    break;
                };
                if chan.generation != *generation || !matches!(chan.phase, Phase::CatchingUp { .. })
                {
                    break;
                }
                match page.batch {
                    Some(batch) => {
                        let batch = batch.with_gap_through(chan.gap.take());
                        chan.cursor = batch.last_id();
                        after = chan.cursor;
                        sink.deliver(Arc::new(batch));
                    }
                    None => match page.gap_through {
                        Some(gap) if gap > after => {
                            chan.gap = chan.gap.max(Some(gap));
                            chan.cursor = gap;
                            after = gap;
                        }
                        _ => break,
                    },
                }
            }
            let mut st = self.state.lock();
            let ShardState {
                channels, catch_up, ..
            } = &mut *st;
            let Some(chan) = channels.get_mut(name) else {
                continue;
            };
            if chan.generation != *generation || !matches!(chan.phase, Phase::CatchingUp { .. }) {
                continue;
            }
            if chan.overflow || chan.redo {
                // Entries were dropped from the buffer, or the log lost entries, meanwhile:
                // once more.
                if chan.overflow {
                    chan.buffer.clear();
                }
                chan.overflow = false;
                chan.redo = false;
                catch_up.push(name.clone());
            } else {
                go_live(sink, name, chan)?;
            }
        }
        Ok(())
    }
}

/// Makes a channel live: delivers its buffered entries after the cursor.
fn go_live(sink: &Arc<dyn LiveSink>, name: &Arc<str>, chan: &mut Chan) -> Result<(), EngineError> {
    chan.phase = Phase::Live;
    chan.overflow = false;
    let cursor = chan.cursor;
    let list: Vec<Value> = std::mem::take(&mut chan.buffer)
        .into_iter()
        .filter(|(offset, _)| *offset > cursor)
        .map(|(_, value)| value)
        .collect();
    if list.is_empty() {
        return Ok(());
    }
    deliver_entries(sink, name, chan, list)
}

/// Encodes a live channel's new entries (in order, after its cursor) into batches, delivers
/// them and advances the cursor.
fn deliver_entries(
    sink: &Arc<dyn LiveSink>,
    name: &Arc<str>,
    chan: &mut Chan,
    list: Vec<Value>,
) -> Result<(), EngineError> {
    let encoded = parse::entries_bounded(
        name,
        &Value::Array(list),
        MAX_BATCH_BYTES,
        usize::MAX,
        chan.gap,
    )?;
    if let Some(last) = encoded.last_seen {
        chan.cursor = chan.cursor.max(last);
    }
    chan.gap = encoded.pending_gap;
    for batch in encoded.batches {
        sink.deliver(Arc::new(batch));
    }
    Ok(())
}

/// One parsed log entry.
struct LogEntry<'a> {
    id: StreamId,
    seq: u64,
    channel: std::borrow::Cow<'a, str>,
    offset: StreamId,
    offset_value: &'a Value,
    fields: &'a [Value],
}

impl<'a> LogEntry<'a> {
    fn parse(item: &'a Value) -> Result<LogEntry<'a>, EngineError> {
        let bad = || EngineError::Internal(format!("unexpected shard log entry {item:?}"));
        let Value::Array(pair) = item else {
            return Err(bad());
        };
        let [id, Value::Array(kv)] = pair.as_slice() else {
            return Err(bad());
        };
        if kv.len() < 6 {
            return Err(bad());
        }
        let names = [&kv[0], &kv[2], &kv[4]].map(|v| parse::text(v).unwrap_or_default());
        if names != ["s", "c", "o"] {
            return Err(bad());
        }
        Ok(LogEntry {
            id: parse::stream_id(id)?,
            seq: seq_of(&kv[1]).ok_or_else(bad)?,
            channel: parse::text(&kv[3]).ok_or_else(bad)?,
            offset: parse::stream_id(&kv[5])?,
            offset_value: &kv[5],
            fields: &kv[6..],
        })
    }

    /// The entry as its channel's stream has it: `[offset, [field, value, …]]`.
    fn channel_entry(&self) -> Value {
        Value::Array(vec![
            self.offset_value.clone(),
            Value::Array(self.fields.to_vec()),
        ])
    }
}

/// A sequence number (an integer or its decimal text).
fn seq_of(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        other => parse::text(other)?.parse().ok(),
    }
}

/// Sleeps for the backoff (doubling it, capped at 2 s); true when stopped meanwhile.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: &str, channel: &str, offset: &str, fields: &[&str]) -> Value {
        let mut kv: Vec<Value> = vec![
            "s".into(),
            seq.into(),
            "c".into(),
            channel.into(),
            "o".into(),
            offset.into(),
        ];
        kv.extend(fields.iter().map(|f| Value::from(*f)));
        Value::Array(vec!["5-0".into(), Value::Array(kv)])
    }

    #[test]
    fn parses_log_entries() {
        let value = entry("7", "chat", "3-1", &["n", "1"]);
        let e = LogEntry::parse(&value).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.channel, "chat");
        assert_eq!(e.offset, StreamId::parse("3-1").unwrap());
        assert_eq!(e.id, StreamId::parse("5-0").unwrap());
        let Value::Array(pair) = e.channel_entry() else {
            panic!()
        };
        assert_eq!(pair[1], Value::Array(vec!["n".into(), "1".into()]));
    }

    #[test]
    fn rejects_foreign_log_entries() {
        for bad in [
            Value::Array(vec![
                "5-0".into(),
                Value::Array(vec!["a".into(), "b".into()]),
            ]),
            entry("x", "chat", "3-1", &[]),
            entry("1", "chat", "nope", &[]),
            Value::from("text"),
        ] {
            assert!(LogEntry::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
