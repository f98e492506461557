//! The embedded engine: channels as in-process streams with Redis Stream semantics
//! (`<ms>-<seq>` IDs, `maxlen` trimming with a watermark, idempotency keys), so `redistribute`
//! runs with nothing else installed. State lives in memory and is lost on exit.
//!
//! Live delivery mirrors the Redis reader: `publish` marks a watched channel dirty and wakes one
//! dispatcher task, which reads every dirty channel past its cursor and hands the entries to
//! the sink. One dispatcher keeps per-channel order and batches bursts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use redistribute_protocol::StreamId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    stored_fields, trim_slack, Batch, BatchBuilder, Engine, EngineConfig, EngineError, EngineStats,
    LiveSink, Position, PublishRequest, ReadySender,
};

/// One stored message, already encoded as the JSON object clients receive.
#[derive(Debug)]
struct StoredEntry {
    id: StreamId,
    item: Box<str>,
}

#[derive(Debug, Default)]
struct Stream {
    entries: VecDeque<StoredEntry>,
    last_id: StreamId,
    trimmed_through: Option<StreamId>,
}

impl Stream {
    /// Index of the first entry after `after`.
    fn index_after(&self, after: StreamId) -> usize {
        self.entries.partition_point(|e| e.id <= after)
    }
}

/// An idempotency key is scoped to its channel.
type IdempotencyKey = (Arc<str>, Box<str>);

#[derive(Debug, Default)]
struct State {
    streams: HashMap<Arc<str>, Stream>,
    /// Watched channels and the last ID handed to the sink.
    cursors: HashMap<Arc<str>, StreamId>,
    /// Watched channels with entries past their cursor.
    dirty: HashSet<Arc<str>>,
    /// Idempotency key → (offset, expiry as ms since the epoch).
    idempotency: HashMap<IdempotencyKey, (StreamId, u64)>,
    /// Idempotency keys with their expiry in insertion order, for expiry.
    idempotency_order: VecDeque<(IdempotencyKey, u64)>,
}

/// In-process engine; see the module docs.
pub struct EmbeddedEngine {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    config: EngineConfig,
    stop: CancellationToken,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl EmbeddedEngine {
    /// Creates the engine and starts its dispatcher, which feeds `sink` until the engine drops.
    pub fn start(sink: Arc<dyn LiveSink>, config: EngineConfig) -> Arc<Self> {
        let engine = Arc::new(EmbeddedEngine {
            state: Arc::default(),
            wake: Arc::default(),
            config,
            stop: CancellationToken::new(),
        });
        tokio::spawn(dispatch(
            engine.state.clone(),
            engine.wake.clone(),
            sink,
            engine.config.read_count,
            engine.stop.clone(),
        ));
        engine
    }
}

impl Drop for EmbeddedEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads dirty channels past their cursors and delivers them, in order.
async fn dispatch(
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    sink: Arc<dyn LiveSink>,
    read_count: usize,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
        }
        loop {
            let batches: Vec<Batch> = {
                let mut st = state.lock();
                let dirty: Vec<Arc<str>> = st.dirty.drain().collect();
                let mut out = Vec::with_capacity(dirty.len());
                for channel in dirty {
                    let Some(&cursor) = st.cursors.get(&channel) else {
                        continue;
                    };
                    let Some(batch) = st
                        .streams
                        .get(&channel)
                        .and_then(|s| read_stream(s, &channel, cursor, read_count))
                    else {
                        continue;
                    };
                    let last = batch.last_id();
                    st.cursors.insert(channel.clone(), last);
                    if st.streams[&channel].last_id > last {
                        st.dirty.insert(channel);
                    }
                    out.push(batch);
                }
                out
            };
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                sink.deliver(Arc::new(batch));
            }
        }
    }
}

fn read_stream(
    stream: &Stream,
    channel: &Arc<str>,
    after: StreamId,
    limit: usize,
) -> Option<Batch> {
    let start = stream.index_after(after);
    let mut builder = BatchBuilder::new(channel.clone());
    for entry in stream.entries.range(start..).take(limit) {
        builder.push_encoded(entry.id, &entry.item);
    }
    builder.finish()
}

impl State {
    fn expire_idempotency(&mut self, now: u64) {
        while let Some((_, expiry)) = self.idempotency_order.front() {
            if *expiry > now {
                break;
            }
            let (key, expiry) = self.idempotency_order.pop_front().expect("front exists");
            if self
                .idempotency
                .get(&key)
                .is_some_and(|(_, e)| *e == expiry)
            {
                self.idempotency.remove(&key);
            }
        }
    }
}

#[async_trait]
impl Engine for EmbeddedEngine {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, req: PublishRequest<'_>) -> Result<StreamId, EngineError> {
        let mut fields_json = String::new();
        for (i, (name, value)) in stored_fields(req.fields).enumerate() {
            if i > 0 {
                fields_json.push(',');
            }
            fields_json.push_str(&serde_json::to_string(name).expect("strings serialize"));
            fields_json.push(':');
            fields_json.push_str(&value);
        }
        let now = now_ms();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.expire_idempotency(now);
        let channel: Arc<str> = match st.streams.get_key_value(req.channel) {
            Some((k, _)) => k.clone(),
            None => Arc::from(req.channel),
        };
        if let Some(key) = req.idempotency_key {
            if let Some((id, _)) = st.idempotency.get(&(channel.clone(), Box::from(key))) {
                return Ok(*id);
            }
        }
        let stream = st.streams.entry(channel.clone()).or_default();
        let id = if now > stream.last_id.ms {
            StreamId::new(now, 0)
        } else {
            StreamId::new(stream.last_id.ms, stream.last_id.seq + 1)
        };
        stream.last_id = id;
        stream.entries.push_back(StoredEntry {
            id,
            item: format!("{{\"offset\":\"{id}\",\"fields\":{{{fields_json}}}}}").into_boxed_str(),
        });
        if let Some(maxlen) = req.maxlen {
            let maxlen = maxlen as usize;
            if stream.entries.len() > maxlen + trim_slack(maxlen as u64) as usize {
                let excess = stream.entries.len() - maxlen;
                let removed = stream.entries.drain(..excess).next_back().map(|e| e.id);
                stream.trimmed_through = removed.or(stream.trimmed_through);
            }
        }
        if let Some(key) = req.idempotency_key {
            let expiry = now + self.config.idempotency_ttl.as_millis() as u64;
            let k = (channel.clone(), Box::from(key));
            st.idempotency.insert(k.clone(), (id, expiry));
            st.idempotency_order.push_back((k, expiry));
        }
        if st.cursors.contains_key(&channel) {
            st.dirty.insert(channel);
            drop(guard);
            self.wake.notify_one();
        }
        Ok(id)
    }

    async fn read(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
    ) -> Result<Option<Batch>, EngineError> {
        let st = self.state.lock();
        Ok(st
            .streams
            .get(channel)
            .and_then(|s| read_stream(s, channel, after, limit)))
    }

    async fn position(&self, channel: &str) -> Result<Position, EngineError> {
        let st = self.state.lock();
        Ok(st
            .streams
            .get(channel)
            .map(|s| Position {
                last_id: s.last_id,
                trimmed_through: s.trimmed_through,
            })
            .unwrap_or_default())
    }

    fn watch(&self, channel: Arc<str>, ready: ReadySender) {
        let mut st = self.state.lock();
        let tip = st
            .streams
            .get(&channel)
            .map(|s| s.last_id)
            .unwrap_or_default();
        st.cursors.insert(channel, tip);
        drop(st);
        ready.send_replace(true);
    }

    fn unwatch(&self, channel: &Arc<str>) {
        let mut st = self.state.lock();
        st.cursors.remove(channel);
        st.dirty.remove(channel);
    }

    fn stats(&self) -> EngineStats {
        let st = self.state.lock();
        EngineStats {
            readers: 1,
            watched: st.cursors.len(),
            unblocks: 0,
        }
    }
}
