//! A feed: one client's set of channel subscriptions, whatever the transport.
//!
//! A [`Feed`] registers its subscriptions with the hub, receives live batches on one bounded
//! queue, switches lagging subscriptions to catch-up reads (one engine read in flight at a
//! time), and collects what is ready to deliver in an [`Outbound`]. WebSocket connections,
//! SSE streams and long-polls all drive a feed; they differ only in how they write what it
//! yields. The rules that keep the history/live seam exact live in [`subscription`].
//! Dropping a feed releases all of its subscriptions at once.

mod group;
pub mod outbound;
pub mod subscription;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redistribute_protocol::{Offset, StreamId};
use tracing::warn;

use crate::engine::{Batch, Engine, EngineError, Position, Ready};
use crate::error::RequestError;
use crate::hub::{
    LiveQueue, LiveQueueReceiver, QueueEvent, Subscriber, SubscriberShared, Watching,
};
use crate::App;
pub use outbound::Outbound;
use subscription::{AfterPage, Subscription};

/// Most live batches taken from the queue in one go.
const DRAIN_MAX: usize = 64;

/// Pause before retrying a failed catch-up read.
const RETRY_DELAY: Duration = Duration::from_millis(500);

type CatchUpFuture =
    Pin<Box<dyn Future<Output = (Arc<str>, StreamId, Result<Option<Batch>, EngineError>)> + Send>>;

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Delivery starts after this offset.
    pub after: StreamId,
    /// Entries after the requested offset were trimmed (or the stream was recreated).
    pub truncated: bool,
    /// The removed range `(from, to]`, when known.
    pub gap: Option<(StreamId, StreamId)>,
}

impl Start {
    /// Resolves a requested offset against the channel's position.
    pub fn resolve(offset: Offset, position: Position) -> Start {
        let plain = |after| Start {
            after,
            truncated: false,
            gap: None,
        };
        match offset {
            Offset::Latest => plain(position.last_id),
            Offset::Earliest => plain(StreamId::ZERO),
            Offset::Id(requested) => match position.trimmed_through {
                Some(trimmed) if requested < trimmed => Start {
                    after: trimmed,
                    truncated: true,
                    gap: Some((requested, trimmed)),
                },
                // Still beyond anything the channel assigned after `raise_beyond_tip`: the
                // offset is too far ahead of the clock to be honoured, so delivery starts at
                // the tip, flagged (no full replay, no gap: nothing is known to be missing).
                _ if requested > position.last_id => Start {
                    after: position.last_id,
                    truncated: true,
                    gap: None,
                },
                _ => plain(requested),
            },
        }
    }

    /// For a subscriber resuming beyond the channel's last ID (its tail was lost when Redis
    /// failed over to a replica that lacked it), raises the channel's last ID to the offset
    /// ([`Engine::raise_last_id`]) so every new entry comes after it, and returns the position
    /// to resolve against; any other position is returned as it is.
    pub async fn raise_beyond_tip(
        engine: &dyn Engine,
        channel: &str,
        offset: Offset,
        position: Position,
    ) -> Result<Position, EngineError> {
        match offset {
            Offset::Id(requested) if requested > position.last_id => {
                engine.raise_last_id(channel, requested).await
            }
            _ => Ok(position),
        }
    }
}

/// A set of subscriptions; see the module docs.
pub struct Feed {
    app: Arc<App>,
    id: u64,
    subs: HashMap<Arc<str>, Subscription>,
    queue_tx: LiveQueue,
    queue_rx: LiveQueueReceiver,
    catch_up: VecDeque<Arc<str>>,
    in_flight: Option<CatchUpFuture>,
    out: Outbound,
    /// Consumer-group subscriptions and their queue ([`group`]), made with the first one.
    groups: Option<Box<group::Groups>>,
}

impl Feed {
    /// An empty feed with a fresh id.
    pub fn new(app: Arc<App>) -> Feed {
        let limits = &app.config.limits;
        let (queue_tx, queue_rx) = LiveQueue::new(limits.queue_batches, limits.queue_bytes);
        Feed {
            id: app.next_connection_id(),
            app,
            subs: HashMap::new(),
            queue_tx,
            queue_rx,
            catch_up: VecDeque::new(),
            in_flight: None,
            out: Outbound::default(),
            groups: None,
        }
    }

    /// The feed's id (unique within the instance).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len() + self.groups.as_ref().map_or(0, |g| g.members.len())
    }

    /// Whether the feed has no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last delivered offset (or starting point) of a subscribed channel.
    pub fn last_offset(&self, channel: &str) -> Option<StreamId> {
        self.subs.get(channel).map(|s| s.last)
    }

    /// Subscribes to `channel` from `offset`; delivery starts with the next [`Feed::ready`].
    pub async fn subscribe(
        &mut self,
        channel: &str,
        offset: Offset,
    ) -> Result<Start, RequestError> {
        self.make_room(channel)?;
        let channel: Arc<str> = Arc::from(channel);
        let shared = SubscriberShared::new();
        let Watching { mut ready, first } = self.app.hub.subscribe(
            &channel,
            Subscriber {
                conn: self.id,
                shared: shared.clone(),
                queue: self.queue_tx.clone(),
            },
        );
        let engine = self.app.engine.clone();
        let read_position = async {
            let ready = *ready
                .wait_for(|r| *r != Ready::Pending)
                .await
                .map_err(|_| EngineError::Unavailable("engine stopped".into()))?;
            // The live feed's own position, read after this subscriber joined: as good as
            // reading it again, and one engine round trip less per new channel.
            if let (true, Ready::At(position)) = (first, ready) {
                return Ok(position);
            }
            let started = std::time::Instant::now();
            let position = engine.position(&channel).await;
            crate::metrics::engine_op("position", started);
            position
        };
        let position = async {
            Start::raise_beyond_tip(&*engine, &channel, offset, read_position.await?).await
        };
        let timeout = self.app.config.limits.request_timeout
            + crate::transport::ws_connection::ENGINE_TIMEOUT_MARGIN;
        let position = match tokio::time::timeout(timeout, position).await {
            Ok(Ok(position)) => position,
            result => {
                self.app.hub.unsubscribe(&channel, self.id);
                return Err(match result {
                    Ok(Err(err)) => err.into(),
                    _ => EngineError::Unavailable("subscribe timed out".into()).into(),
                });
            }
        };
        let start = Start::resolve(offset, position);
        self.subs
            .insert(channel.clone(), Subscription::new(shared, start.after));
        self.catch_up.push_back(channel);
        Ok(start)
    }

    /// Ends any subscription (plain or group) to `channel`, which a new subscribe replaces, and
    /// refuses one beyond the per-connection limit. Nothing of the old subscription is written
    /// after this (its queued batches no longer match a subscription, and the new one starts
    /// from its own position), so the new one's reply separates the two on the wire.
    fn make_room(&mut self, channel: &str) -> Result<(), RequestError> {
        self.unsubscribe(channel);
        let limit = self.app.config.limits.max_subscriptions;
        if self.len() >= limit {
            return Err(RequestError::bad_request(format!(
                "at most {limit} subscriptions per connection"
            )));
        }
        Ok(())
    }

    /// Ends the subscription to `channel`; false if there was none.
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        if let Some(groups) = &mut self.groups {
            if groups.members.remove(channel).is_some() {
                return true;
            }
        }
        match self.subs.remove_entry(channel) {
            Some((channel, _)) => {
                self.app.hub.unsubscribe(&channel, self.id);
                true
            }
            None => false,
        }
    }

    /// Ends every subscription (what dropping the feed does) and drops anything undelivered.
    pub fn clear(&mut self) {
        for channel in self.subs.keys() {
            self.app.hub.unsubscribe(channel, self.id);
        }
        self.subs.clear();
        self.groups = None;
        self.catch_up.clear();
        self.in_flight = None;
        self.out = Outbound::default();
    }

    /// Waits until something is ready to deliver (see [`Feed::take`]). Cancel-safe: progress
    /// made before a cancellation is kept for the next call.
    pub async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// [`Feed::ready`] as a poll: each round looks at every source once (live queue, group
    /// queue, catch-up read), so none of them starves the others.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.start_catch_up_read();
            if !self.out.is_empty() {
                return Poll::Ready(());
            }
            let mut progressed = false;
            if let Poll::Ready(event) = self.queue_rx.poll_recv(cx) {
                progressed = true;
                match event {
                    QueueEvent::Batch(batch) => self.take_live(batch),
                    QueueEvent::Signalled => self.on_lag(),
                }
            }
            if let Some(groups) = &mut self.groups {
                if let Poll::Ready(Some(batch)) = groups.rx.poll_recv(cx) {
                    progressed = true;
                    self.take_group(batch);
                }
            }
            if let Some(read) = &mut self.in_flight {
                if let Poll::Ready((channel, after, result)) = read.as_mut().poll(cx) {
                    progressed = true;
                    self.in_flight = None;
                    self.on_page(channel, after, result);
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Takes what is ready to deliver, leaving the feed's collector empty.
    pub fn take(&mut self) -> Outbound {
        let out = std::mem::take(&mut self.out);
        crate::metrics::hot()
            .delivered
            .increment(out.entry_count() as u64);
        out
    }

    /// Moves any live batches already queued into the collector without waiting.
    pub fn collect_queued(&mut self) {
        if let Some(batch) = self.queue_rx.try_recv() {
            self.take_live(batch);
        }
    }

    fn take_live(&mut self, first: Arc<Batch>) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            taken += 1;
            if let Some(sub) = self.subs.get_mut(batch.channel()) {
                if let Some(from) = sub.accept_live(&batch) {
                    self.out.push(batch, from);
                }
            }
            if taken < DRAIN_MAX {
                next = self.queue_rx.try_recv();
            }
        }
    }

    /// Subscriptions the hub marked lagging switch to catch-up.
    fn on_lag(&mut self) {
        for (channel, sub) in &mut self.subs {
            if sub.shared.lagging.load(Ordering::Acquire) && sub.start_catch_up() {
                self.catch_up.push_back(channel.clone());
            }
        }
    }

    fn read_after(&self, channel: Arc<str>, after: StreamId, delay: Duration) -> CatchUpFuture {
        let engine = self.app.engine.clone();
        let page = self.app.config.limits.catch_up_page;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let started = std::time::Instant::now();
            let result = engine.read(&channel, after, page).await;
            crate::metrics::engine_op("read", started);
            (channel, after, result)
        })
    }

    fn start_catch_up_read(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        while let Some(channel) = self.catch_up.pop_front() {
            if self.catch_up.is_empty() {
                // Most feeds catch up once, right after subscribing: don't keep the slots.
                self.catch_up = VecDeque::new();
            }
            if let Some(sub) = self.subs.get(&channel) {
                if !sub.is_live() {
                    self.in_flight =
                        Some(self.read_after(channel.clone(), sub.last, Duration::ZERO));
                    return;
                }
            }
        }
    }

    fn on_page(
        &mut self,
        channel: Arc<str>,
        after: StreamId,
        result: Result<Option<Batch>, EngineError>,
    ) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if sub.is_live() {
            return;
        }
        if sub.last != after {
            // Resubscribed meanwhile: this page answers an older question.
            self.catch_up.push_back(channel);
            return;
        }
        let batch = match result {
            Ok(batch) => batch.map(Arc::new),
            Err(err) => {
                warn!(conn = self.id, %channel, %err, "catch-up read failed; retrying");
                self.in_flight = Some(self.read_after(channel, after, RETRY_DELAY));
                return;
            }
        };
        let (deliver, next) = sub.on_page(batch.as_deref(), self.app.config.limits.catch_up_page);
        if next == AfterPage::ReadAgain {
            self.catch_up.push_front(channel);
        }
        if let (Some(from), Some(batch)) = (deliver, batch) {
            self.out.push(batch, from);
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        let pos = Position {
            last_id: StreamId::new(100, 0),
            trimmed_through: Some(StreamId::new(50, 0)),
        };
        let plain = |ms| Start {
            after: StreamId::new(ms, 0),
            truncated: false,
            gap: None,
        };
        assert_eq!(Start::resolve(Offset::Latest, pos), plain(100));
        assert_eq!(Start::resolve(Offset::Earliest, pos), plain(0));
        assert_eq!(
            Start::resolve(Offset::Id(StreamId::new(50, 0)), pos),
            plain(50)
        );
        assert_eq!(
            Start::resolve(Offset::Id(StreamId::new(10, 0)), pos),
            Start {
                after: StreamId::new(50, 0),
                truncated: true,
                gap: Some((StreamId::new(10, 0), StreamId::new(50, 0)))
            }
        );
        // Beyond the tip (not raised: too far ahead of the clock): from the tip, flagged.
        assert_eq!(
            Start::resolve(Offset::Id(StreamId::new(200, 0)), pos),
            Start {
                after: StreamId::new(100, 0),
                truncated: true,
                gap: None
            }
        );
    }
}
