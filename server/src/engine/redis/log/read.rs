//! The shard log's reader task: one connection blocked in `XREAD` on the log, fixing its place
//! at the log's end after each (re)connect, checking the log's sequence numbers and handing
//! live channels' entries to the sink (buffering those of channels not live yet).
//!
//! Invariant: an entry is delivered only while its channel is live and only after its cursor;
//! a break in the sequence (trim past the reader, reset, failover) sends every channel to a
//! catch-up instead of skipping silently.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::types::{ClusterHash, CustomCommand, Value};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::entry::{seq_of, LogEntry};
use super::work::deliver_entries;
use super::{Phase, ShardLog, MAX_BUFFERED};
use crate::engine::redis::connection::{pause, Connection, FIRST_BACKOFF};
use crate::engine::redis::{parse, scripts, Shared};
use crate::engine::{EngineError, LiveSink};
use redistribute_protocol::StreamId;

/// Where a reader is in its log: the last entry read and the sequence expected next.
#[derive(Clone, Copy)]
struct Place {
    id: StreamId,
    next_seq: u64,
}

impl ShardLog {
    /// The reader task; see the module docs.
    pub(super) async fn read(
        self: Arc<Self>,
        shared: Arc<Shared>,
        sink: Arc<dyn LiveSink>,
        stop: CancellationToken,
    ) {
        let mut backoff = FIRST_BACKOFF;
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
                self.read_health.ok();
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
                None => match Connection::open(&shared, self.shard).await {
                    Ok(conn) => {
                        self.reading.store(true, Ordering::Relaxed);
                        connection.insert(conn)
                    }
                    Err(err) => {
                        warn!(%err, shard = self.shard, "log reader cannot connect to Redis; retrying");
                        self.read_health.failed(&err);
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
                    self.read_health.failed(&err);
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
                    backoff = FIRST_BACKOFF;
                    self.read_health.ok();
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
                    self.read_health.failed(&err);
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

    /// The log's end ([`scripts::LOG_TIP`]).
    async fn tip(&self, shared: &Shared, conn: &Connection) -> Result<Place, EngineError> {
        let cmd = CustomCommand::new_static("EVAL_RO", ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![
            Value::from_static_str(scripts::LOG_TIP),
            Value::Integer(2),
            Value::from(self.key.as_str()),
            Value::from(self.seq_key.as_str()),
        ];
        let reply: Value = conn.command(&shared.options(), cmd, args).await?;
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
        let args: Vec<Value> = vec![
            "COUNT".into(),
            Value::Integer(config.engine.read_count.max(1) as i64),
            "BLOCK".into(),
            Value::Integer(config.block.as_millis() as i64),
            "STREAMS".into(),
            Value::from(self.key.as_str()),
            Value::from(place.id.to_string()),
        ];
        let reading = conn.xread(config.block, args, &self.read_health);
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
}
