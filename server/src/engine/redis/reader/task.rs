//! A per-channel reader's loop: (re)connects to the node serving its shard, raises streams
//! that fell below its cursors after a reconnect, applies queued changes, and blocks in
//! `XREAD` over its channels, cutting replies into batches with exact gaps.
//!
//! Invariant: a channel's cursor only moves forward past entries that reached the sink or
//! were reported in a gap, so a reconnect resumes without skipping or repeating.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{queue_on_owner, Control, Op, PoolState, ReaderAddress};
use crate::engine::live_health::HealthEntry;
use crate::engine::redis::connection::{pause, Connection, FIRST_BACKOFF};
use crate::engine::redis::cursors::Cursors;
use crate::engine::redis::{parse, Shared};
use crate::engine::{EngineError, LiveSink, Ready, MAX_BATCH_BYTES};
use redistribute_protocol::StreamId;

pub(super) struct Reader {
    pub(super) shared: Arc<Shared>,
    pub(super) sink: Arc<dyn LiveSink>,
    pub(super) control: Arc<Control>,
    pub(super) stop: CancellationToken,
    /// Watched channels and the last ID delivered of each.
    pub(super) cursors: Cursors,
    /// The shard this reader serves (0 with a single Redis).
    pub(super) shard: u16,
    /// This reader's id in the pool.
    pub(super) id: u64,
    /// The pool's state, to check that an adopted channel is still assigned here.
    pub(super) pool: Arc<Mutex<PoolState>>,
    /// Failing from an error until a read cycle succeeds or an `XREAD` stays blocked.
    pub(super) health: HealthEntry,
}

impl Reader {
    pub(super) async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
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
                        self.health.failed(&err);
                        self.shared.refresh_routing().await;
                        if pause(&self.stop, &mut backoff).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            if resume {
                if let Err(err) = self.raise_to_cursors().await {
                    warn!(%err, shard = self.shard, "reader cannot check its cursors; retrying");
                    self.health.failed(&err);
                    if pause(&self.stop, &mut backoff).await {
                        break;
                    }
                    continue;
                }
                resume = false;
            }
            if let Err(err) = self.apply_changes().await {
                warn!(%err, "reader cannot start watching a channel; retrying");
                self.health.failed(&err);
                if pause(&self.stop, &mut backoff).await {
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
                // Nothing to deliver: nothing is failing.
                self.health.ok();
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = self.control.wake.notified() => {}
                }
                continue;
            }
            match self.read_once(conn).await {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    self.health.ok();
                }
                Err(err) => {
                    // Reconnect (in cluster mode to the slot's current owner, which a failover
                    // or resharding may have changed) and resume from the cursors.
                    warn!(%err, shard = self.shard, "XREAD failed; reconnecting reader");
                    self.health.failed(&err);
                    self.control.connection.lock().take();
                    if let Some(conn) = connection.take() {
                        conn.close().await;
                    }
                    self.shared.refresh_routing().await;
                    if pause(&self.stop, &mut backoff).await {
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
        let connection = Connection::open(&self.shared, self.shard).await?;
        match client_id(&connection, &self.shared.options()).await {
            Ok(id) => {
                let node = connection.node().cloned();
                *self.control.connection.lock() = Some(ReaderAddress { node, id });
                Ok(connection)
            }
            Err(err) => {
                connection.close().await;
                Err(err)
            }
        }
    }

    /// After a reconnect: raises every stream whose last ID is now below this reader's cursor
    /// to the cursor ([`Shared::raise_to_cursors`]), so `XREAD` after the cursor sees new
    /// entries.
    async fn raise_to_cursors(&self) -> Result<(), EngineError> {
        let targets: Vec<(&str, StreamId)> = self.cursors.iter().collect();
        self.shared.raise_to_cursors(self.shard, &targets).await?;
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
        self.control.in_read.store(true, Ordering::Release);
        let reading = conn.xread(config.block, args, &self.health);
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
    let reply: Value = conn.command(options, cmd, args).await?;
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
    conn.command(options, cmd, vec!["ID".into()]).await
}
