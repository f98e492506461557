//! The shard log's worker task: applies queued watches and unwatches, reads the positions of
//! installed channels once the reader fixed its place, catches channels up from their streams
//! (raising streams that fell below their cursors after a reconnect) and makes them live.
//!
//! Invariant: deliveries take the shard's state lock, as the reader's do, so a channel's
//! batches reach the sink in order; a channel goes live at its cursor with only the buffered
//! entries after it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Chan, Phase, Request, ShardLog, ShardState, CHUNK};
use crate::engine::redis::connection::{pause, FIRST_BACKOFF};
use crate::engine::redis::{parse, Shared};
use crate::engine::{EngineError, LiveSink, Position, Ready, MAX_BATCH_BYTES};
use redistribute_protocol::StreamId;

impl ShardLog {
    /// The worker task: applies watch requests, reads positions, runs catch-ups.
    pub(super) async fn work(
        self: Arc<Self>,
        shared: Arc<Shared>,
        sink: Arc<dyn LiveSink>,
        stop: CancellationToken,
    ) {
        let mut backoff = FIRST_BACKOFF;
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
                self.work_health.failed(&err);
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
            backoff = FIRST_BACKOFF;
            self.work_health.ok();
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
            shared.raise_to_cursors(self.shard, &targets).await?
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
pub(super) fn deliver_entries(
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
