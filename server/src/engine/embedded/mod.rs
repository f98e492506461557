//! The embedded engine: channels as in-process streams with Redis Stream semantics
//! (`<ms>-<seq>` IDs, `maxlen` trimming with a watermark, idempotency keys), so `redistribute`
//! runs with nothing else installed. State lives in memory and is lost on exit.
//!
//! Live delivery mirrors the Redis reader: `publish` marks a watched channel dirty and wakes one
//! dispatcher task, which reads every dirty channel past its cursor and hands the entries to
//! the sink. One dispatcher keeps per-channel order and batches bursts, cutting batches at
//! [`MAX_BATCH_BYTES`]. Everything happens under one lock, so the trim watermark read with the
//! entries is exact: entries trimmed before the dispatcher (or a catch-up read) reached them are
//! reported as a gap, never skipped silently.
//!
//! Memory: a channel that holds nothing worth keeping (no entries, no consumer groups, no trim
//! watermark) is freed as soon as it is not watched, so channels that are only subscribed to
//! (or raised by a resuming subscriber) do not accumulate. Channels with entries stay until the
//! process exits; `maxlen` bounds each one.
//!
//! This module owns the state (streams, groups, cursors, idempotency keys) and the [`Engine`]
//! implementation; `live` the live delivery, `groups` the consumer group operations.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use redistribute_protocol::{Offset, StreamId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod groups;
mod live;

use super::{
    stored_fields, trim_slack, Claimed, Engine, EngineConfig, EngineError, EngineStats, GroupRead,
    LiveSink, Page, Position, PublishRequest, Ready, ReadySender, MAX_CLOCK_SKEW,
};
use live::{dispatch, read_stream, read_stream_back};

/// One stored message, already encoded as the JSON object clients receive.
#[derive(Debug)]
struct StoredEntry {
    id: StreamId,
    item: Box<str>,
    /// Bytes of the stored field names and values (see [`super::MAX_ENTRY_BYTES`]).
    size: usize,
}

#[derive(Debug, Default)]
struct Stream {
    entries: VecDeque<StoredEntry>,
    last_id: StreamId,
    trimmed_through: Option<StreamId>,
    /// Consumer groups by name.
    groups: HashMap<Box<str>, Group>,
}

/// A consumer group: like Redis, its last delivered ID and its pending entries list.
#[derive(Debug, Default)]
struct Group {
    last_delivered: StreamId,
    pending: BTreeMap<StreamId, PendingEntry>,
    /// When each consumer was last served a new entry (a serve count), for taking turns.
    served: HashMap<Box<str>, u64>,
    /// Entries handed out by turns so far.
    serves: u64,
}

#[derive(Debug)]
struct PendingEntry {
    consumer: Box<str>,
    /// When it was last delivered, ms since the epoch.
    delivered_at: u64,
    deliveries: u64,
}

impl Stream {
    /// Whether the stream holds nothing worth keeping once unwatched: no entries, no groups and
    /// no trim watermark (which later subscribers need for an exact gap). Such a channel is
    /// freed when it is not watched; recreating it later gives the same answers.
    fn is_disposable(&self) -> bool {
        self.entries.is_empty() && self.groups.is_empty() && self.trimmed_through.is_none()
    }

    /// The stream's last ID and trim watermark.
    fn position(&self) -> Position {
        Position {
            last_id: self.last_id,
            trimmed_through: self.trimmed_through,
        }
    }

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
    /// Presence members, in memory like the streams.
    presence: Arc<crate::presence::store::MemoryStore>,
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
            presence: Arc::default(),
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

impl State {
    /// Frees `channel` if it is unwatched and disposable ([`Stream::is_disposable`]).
    fn evict_if_disposable(&mut self, channel: &str) {
        if !self.cursors.contains_key(channel)
            && self.streams.get(channel).is_some_and(Stream::is_disposable)
        {
            self.streams.remove(channel);
        }
    }

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
        let mut size = 0;
        for (i, (name, value)) in stored_fields(req.fields).enumerate() {
            size += name.len() + value.len();
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
            size,
        });
        let trim = self.config.retention.trim(req.channel, req.maxlen);
        // Entries past `maxlen` (once past the slack), then entries older than the max age.
        let mut excess = 0;
        if let Some(maxlen) = trim.maxlen {
            let maxlen = usize::try_from(maxlen).unwrap_or(usize::MAX);
            let slack = usize::try_from(trim_slack(maxlen as u64)).unwrap_or(usize::MAX);
            if stream.entries.len() > maxlen.saturating_add(slack) {
                excess = stream.entries.len() - maxlen;
            }
        }
        if let Some(age) = trim.max_age {
            let oldest = now.saturating_sub(age.as_millis() as u64);
            let aged = stream.entries.partition_point(|e| e.id.ms < oldest);
            excess = excess.max(aged);
        }
        if excess > 0 {
            let removed = stream.entries.drain(..excess).next_back().map(|e| e.id);
            stream.trimmed_through = removed.or(stream.trimmed_through);
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
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        let st = self.state.lock();
        let Some(stream) = st.streams.get(channel) else {
            return Ok(Page::default());
        };
        let (batch, gap) = read_stream(stream, channel, after, limit.max(1), max_bytes);
        Ok(Page::new(after, batch, gap))
    }

    async fn read_back(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        through: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        let st = self.state.lock();
        let Some(stream) = st.streams.get(channel) else {
            return Ok(Page::default());
        };
        let batch = read_stream_back(stream, channel, after, through, limit.max(1), max_bytes);
        Ok(Page::new(after, batch, stream.trimmed_through))
    }

    async fn offset_back(
        &self,
        channel: &str,
        through: StreamId,
        n: usize,
    ) -> Result<Option<StreamId>, EngineError> {
        let st = self.state.lock();
        Ok(st.streams.get(channel).and_then(|stream| {
            let end = stream.index_after(through);
            let i = end.checked_sub(n.max(1))?;
            stream.entries.get(i).map(|e| e.id)
        }))
    }

    async fn position(&self, channel: &str) -> Result<Position, EngineError> {
        let st = self.state.lock();
        Ok(st
            .streams
            .get(channel)
            .map(Stream::position)
            .unwrap_or_default())
    }

    async fn raise_last_id(
        &self,
        channel: &str,
        to: StreamId,
        create: bool,
    ) -> Result<Position, EngineError> {
        let limit = now_ms().saturating_add(MAX_CLOCK_SKEW.as_millis() as u64);
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let current = st.streams.get(channel).map(|s| s.last_id);
        let may_raise = current.is_some() || create;
        if may_raise && current.unwrap_or_default() < to && to.ms <= limit {
            let channel: Arc<str> = Arc::from(channel);
            st.streams.entry(channel.clone()).or_default().last_id = to;
            st.evict_if_disposable(&channel);
        }
        Ok(st
            .streams
            .get(channel)
            .map(Stream::position)
            .unwrap_or_default())
    }

    async fn group_create(
        &self,
        channel: &str,
        group: &str,
        start: Offset,
        create: bool,
    ) -> Result<Option<StreamId>, EngineError> {
        self.state
            .lock()
            .group_create(channel, group, start, create)
    }

    async fn group_read(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<super::GroupBatch>, EngineError> {
        self.state
            .lock()
            .group_read(channel, group, consumer, from, count)
    }

    async fn group_take_turns(
        &self,
        channel: &Arc<str>,
        group: &str,
        turn: &super::GroupTurn<'_>,
    ) -> Result<super::Turns, EngineError> {
        self.state.lock().group_take_turns(channel, group, turn)
    }

    async fn group_ack(
        &self,
        channel: &str,
        group: &str,
        ids: &[StreamId],
    ) -> Result<u64, EngineError> {
        self.state.lock().group_ack(channel, group, ids)
    }

    async fn group_claim(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        start: StreamId,
        count: usize,
    ) -> Result<Claimed, EngineError> {
        self.state
            .lock()
            .group_claim(channel, group, consumer, min_idle, start, count)
    }

    fn watch(&self, channel: Arc<str>, ready: ReadySender) {
        let mut st = self.state.lock();
        let position = st
            .streams
            .get(&channel)
            .map(Stream::position)
            .unwrap_or_default();
        st.cursors.insert(channel, position.last_id);
        drop(st);
        ready.send_replace(Ready::At(position));
    }

    fn unwatch(&self, channel: &Arc<str>) {
        let mut st = self.state.lock();
        st.cursors.remove(channel);
        st.dirty.remove(channel);
        st.evict_if_disposable(channel);
    }

    fn presence_store(&self) -> Arc<dyn crate::presence::PresenceStore> {
        self.presence.clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Batch;
    use redistribute_protocol::Fields;

    struct Discard;

    impl LiveSink for Discard {
        fn deliver(&self, _batch: Arc<Batch>) {}
    }

    fn channels(engine: &EmbeddedEngine) -> usize {
        engine.state.lock().streams.len()
    }

    /// 10,000 channels subscribed to (one raised by a resuming subscriber, as after a restart)
    /// and abandoned: every one is freed; channels with entries, groups or a trim watermark
    /// stay, watched or not.
    #[tokio::test]
    async fn abandoned_empty_channels_are_freed() {
        let engine = EmbeddedEngine::start(Arc::new(Discard), EngineConfig::default());
        let fields: Fields = serde_json::from_str(r#"{"n":1}"#).unwrap();
        let publish = |channel| PublishRequest {
            channel,
            fields: &fields,
            maxlen: None,
            idempotency_key: None,
        };
        engine.publish(publish("kept")).await.unwrap();
        engine
            .group_create("grouped", "g", Offset::Latest, true)
            .await
            .unwrap();
        let start = channels(&engine);
        assert_eq!(start, 2);
        let to = StreamId::new(now_ms(), 7);
        for i in 0..10_000 {
            let channel: Arc<str> = Arc::from(format!("gone:{i}"));
            let (ready, _) = tokio::sync::watch::channel(Ready::Pending);
            engine.watch(channel.clone(), ready);
            if i % 2 == 0 {
                let position = engine.raise_last_id(&channel, to, true).await.unwrap();
                assert_eq!(position.last_id, to);
            }
            assert_eq!(
                engine.position(&channel).await.unwrap().trimmed_through,
                None
            );
        }
        assert_eq!(channels(&engine), start + 5_000);
        for i in 0..10_000 {
            engine.unwatch(&Arc::from(format!("gone:{i}")));
        }
        assert_eq!(channels(&engine), start);
        assert_eq!(engine.stats().watched, 0);
        // A raise with no watcher keeps nothing either; too far ahead of the clock, nothing
        // changes.
        engine.raise_last_id("stray", to, true).await.unwrap();
        let ahead = StreamId::new(now_ms() + 3_600_000, 0);
        let kept = engine.raise_last_id("kept", ahead, true).await.unwrap();
        assert!(kept.last_id < ahead);
        assert_eq!(channels(&engine), start);
    }
}
