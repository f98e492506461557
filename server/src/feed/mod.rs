//! A feed: one client's set of channel subscriptions, whatever the transport.
//!
//! A [`Feed`] registers its subscriptions with the hub, receives live batches on one bounded
//! queue, switches lagging subscriptions to catch-up reads (one engine read in flight at a
//! time), and collects what is ready to deliver in an [`Outbound`]. WebSocket connections,
//! SSE streams and long-polls all drive a feed; they differ only in how they write what it
//! yields. The rules that keep the history/live seam exact live in [`subscription`].
//! Dropping a feed releases all of its subscriptions at once.

mod membership;
pub(crate) mod outbound;
mod presence;
pub(crate) mod subscription;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redistribute_protocol::{Offset, StreamId};
use tracing::warn;

use crate::core_state::Core;
use crate::engine::{Engine, EngineError, Page, Position, Ready, MAX_BATCH_BYTES};
use crate::error::RequestError;
use crate::hub::{
    LiveQueue, LiveQueueReceiver, QueueEvent, Subscriber, SubscriberShared, Watching,
};
pub use outbound::Delivery;
pub use outbound::Frame;
pub use outbound::Outbound;
use subscription::{AfterPage, Subscription, Take};

/// Most live batches taken from the queue in one go.
const DRAIN_MAX: usize = 64;

/// A queue drain stops once this many bytes of entries are collected, so what one delivery
/// holds (and an SSE chunk or a poll response carries) is bounded in bytes.
const DRAIN_MAX_BYTES: usize = 1 << 20;

/// Most bytes of encoded entries one catch-up read returns (one entry may exceed it).
const CATCH_UP_PAGE_BYTES: usize = MAX_BATCH_BYTES;

/// Pause before retrying a failed catch-up read.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// A catch-up read in flight and what it answers.
struct PageRead {
    channel: Arc<str>,
    /// The subscription that asked ([`Subscription::generation`]).
    generation: u64,
    /// The read was of entries after this offset.
    after: StreamId,
    result: Result<Page, EngineError>,
}

type CatchUpFuture = Pin<Box<dyn Future<Output = PageRead> + Send>>;

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

    /// Where a subscribe that rewinds `n` entries starts: after the entry before the channel's
    /// last `n` entries as of `position` (read after the subscriber joined the live feed, so
    /// every later entry comes after it and the seam is exact, as for an offset), or after the
    /// trim watermark (`0-0` if none) when the channel holds fewer; `n = 0` is the tip.
    /// Nothing is missing, so it is never truncated.
    pub async fn rewind(
        engine: &dyn Engine,
        channel: &str,
        position: Position,
        n: usize,
    ) -> Result<Start, EngineError> {
        let after = if n == 0 {
            position.last_id
        } else {
            match engine
                .offset_back(channel, position.last_id, n.saturating_add(1))
                .await?
            {
                Some(id) => id,
                None => position.trimmed_through.unwrap_or(StreamId::ZERO),
            }
        };
        Ok(Start {
            after,
            truncated: false,
            gap: None,
        })
    }

    /// For a subscriber resuming beyond the channel's last ID (its tail was lost when Redis
    /// failed over to a replica that lacked it), raises the channel's last ID to the offset
    /// ([`Engine::raise_last_id`]) so every new entry comes after it, and returns the position
    /// to resolve against; any other position is returned as it is. A channel that does not
    /// exist is created only with `create` (the client may publish to it).
    pub async fn raise_beyond_tip(
        engine: &dyn Engine,
        channel: &str,
        offset: Offset,
        position: Position,
        create: bool,
    ) -> Result<Position, EngineError> {
        match offset {
            Offset::Id(requested) if requested > position.last_id => {
                engine.raise_last_id(channel, requested, create).await
            }
            _ => Ok(position),
        }
    }
}

/// A set of subscriptions; see the module docs.
pub struct Feed {
    core: Arc<Core>,
    id: u64,
    /// The transport driving the feed (`ws`, `sse`, `poll`, ...), named in its logs so a
    /// connection id can be told apart from the ids of other transports.
    transport: &'static str,
    subs: HashMap<Arc<str>, Subscription>,
    queue_tx: LiveQueue,
    queue_rx: LiveQueueReceiver,
    catch_up: VecDeque<Arc<str>>,
    in_flight: Option<CatchUpFuture>,
    out: Outbound,
    /// Consumer-group subscriptions and their queue ([`group`]), made with the first one.
    /// Made with the first of them (most connections need neither): one box, so an idle
    /// connection pays one pointer for both.
    rare: Option<Box<Rare>>,
    /// The last [`Subscription::generation`] given out.
    generation: u64,
}

/// What few feeds need.
#[derive(Default)]
struct Rare {
    /// Consumer-group subscriptions and their queue ([`group`]).
    groups: Option<membership::Memberships>,
    /// Presence memberships and join/leave events.
    presence: Option<presence::FeedPresence>,
}

impl Feed {
    /// An empty feed with a fresh id, driven by `transport` (named in its logs).
    pub fn new(core: Arc<Core>, transport: &'static str) -> Feed {
        let limits = &core.config.limits;
        let (queue_tx, queue_rx) = LiveQueue::new(limits.queue_batches, limits.queue_bytes);
        Feed {
            id: core.next_connection_id(),
            transport,
            core,
            subs: HashMap::new(),
            queue_tx,
            queue_rx,
            catch_up: VecDeque::new(),
            in_flight: None,
            out: Outbound::default(),
            rare: None,
            generation: 0,
        }
    }

    /// The feed's id (unique within the instance).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len() + self.groups().map_or(0, |g| g.members.len())
    }

    /// Whether the feed has no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connection's client id (as `connected` and presence show it).
    pub fn client_id(&self) -> String {
        self.core.client_id(self.id)
    }

    /// The consumer-group subscriptions, if any were made.
    fn groups(&self) -> Option<&membership::Memberships> {
        self.rare.as_ref()?.groups.as_ref()
    }

    /// The channels subscribed to, consumer-group memberships included.
    pub fn channels(&self) -> impl Iterator<Item = &str> + '_ {
        let groups = self.groups().into_iter().flat_map(|g| g.members.keys());
        self.subs.keys().chain(groups).map(|c| &**c)
    }

    /// The last delivered offset (or starting point) of a subscribed channel.
    pub fn last_offset(&self, channel: &str) -> Option<StreamId> {
        self.subs.get(channel).map(|s| s.last)
    }

    /// Subscribes to `channel` from `offset`; delivery starts with the next [`Feed::ready`].
    /// `create`: whether the client may create the channel ([`Core::may_create`]), which
    /// resuming beyond the tip of a channel that does not exist would.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        offset: Offset,
        create: bool,
    ) -> Result<Start, RequestError> {
        self.subscribe_rewind(channel, offset, None, create).await
    }

    /// [`Feed::subscribe`], or with `rewind` from before the channel's last `rewind` entries
    /// ([`Start::rewind`]; `offset` is then unused).
    pub async fn subscribe_rewind(
        &mut self,
        channel: &str,
        offset: Offset,
        rewind: Option<usize>,
        create: bool,
    ) -> Result<Start, RequestError> {
        self.make_room(channel)?;
        let channel: Arc<str> = Arc::from(channel);
        let shared = SubscriberShared::new();
        let Watching { mut ready, first } = self.core.hub.subscribe(
            &channel,
            Subscriber {
                conn: self.id,
                shared: shared.clone(),
                queue: self.queue_tx.clone(),
            },
        );
        // Until the subscription is stored, leaving early in any way (an error, a timeout, or
        // the caller dropping this future while it waits) takes the registration back.
        let registered = Registered {
            hub: &self.core.hub,
            channel: &channel,
            conn: self.id,
        };
        let engine = self.core.engine.clone();
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
        let start = async {
            let position = read_position.await?;
            match rewind {
                Some(n) => Start::rewind(&*engine, &channel, position, n).await,
                None => {
                    let position =
                        Start::raise_beyond_tip(&*engine, &channel, offset, position, create)
                            .await?;
                    Ok(Start::resolve(offset, position))
                }
            }
        };
        let timeout =
            self.core.config.limits.request_timeout + crate::limits::ENGINE_TIMEOUT_MARGIN;
        let start = match tokio::time::timeout(timeout, start).await {
            Ok(Ok(start)) => start,
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err(EngineError::Unavailable("subscribe timed out".into()).into()),
        };
        registered.keep();
        self.generation += 1;
        let sub = Subscription::new(shared, start.after, self.generation);
        self.subs.insert(channel.clone(), sub);
        self.catch_up.push_back(channel);
        Ok(start)
    }

    /// Ends any subscription (plain or group) to `channel`, which a new subscribe replaces, and
    /// refuses one beyond the per-connection limit. Nothing of the old subscription is written
    /// after this (its queued batches no longer match a subscription, and the new one starts
    /// from its own position), so the new one's reply separates the two on the wire.
    fn make_room(&mut self, channel: &str) -> Result<(), RequestError> {
        self.unsubscribe(channel);
        let limit = self.core.config.limits.max_subscriptions;
        if self.len() >= limit {
            return Err(RequestError::bad_request(format!(
                "at most {limit} subscriptions per connection"
            )));
        }
        Ok(())
    }

    /// Ends the subscription to `channel`; false if there was none.
    pub fn unsubscribe(&mut self, channel: &str) -> bool {
        if let Some(groups) = self.rare.as_mut().and_then(|r| r.groups.as_mut()) {
            if groups.members.remove(channel).is_some() {
                return true;
            }
        }
        self.leave_presence(channel);
        match self.subs.remove_entry(channel) {
            Some((channel, _)) => {
                self.core.hub.unsubscribe(&channel, self.id);
                true
            }
            None => false,
        }
    }

    /// Ends every subscription (what dropping the feed does) and drops anything undelivered.
    pub fn clear(&mut self) {
        self.leave_all_presence();
        for channel in self.subs.keys() {
            self.core.hub.unsubscribe(channel, self.id);
        }
        self.subs.clear();
        self.rare = None;
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
            if let Some(groups) = self.rare.as_mut().and_then(|r| r.groups.as_mut()) {
                if let Poll::Ready(Some(batch)) = groups.rx.poll_recv(cx) {
                    progressed = true;
                    self.take_group(batch);
                }
            }
            progressed |= self.poll_presence(cx);
            if let Some(read) = &mut self.in_flight {
                if let Poll::Ready(read) = read.as_mut().poll(cx) {
                    progressed = true;
                    self.in_flight = None;
                    self.on_page(read);
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

    fn take_live(&mut self, first: Arc<crate::engine::Batch>) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            taken += 1;
            if let Some(sub) = self.subs.get_mut(batch.channel()) {
                let take = sub.accept_live(&batch);
                Self::deliver(&mut self.out, batch.channel(), take, Some(batch.clone()));
            }
            if taken < DRAIN_MAX && self.out.bytes() < DRAIN_MAX_BYTES {
                next = self.queue_rx.try_recv();
            }
        }
    }

    /// Collects what a subscription took: its gap first, then its entries.
    fn deliver(
        out: &mut Outbound,
        channel: &Arc<str>,
        take: Take,
        batch: Option<Arc<crate::engine::Batch>>,
    ) {
        if let Some((from, to)) = take.gap {
            crate::metrics::hot().gaps.increment(1);
            out.push_gap(channel.clone(), from, to);
        }
        if let (Some(from), Some(batch)) = (take.from, batch) {
            out.push(batch, from);
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

    fn read_after(
        &self,
        channel: Arc<str>,
        generation: u64,
        after: StreamId,
        delay: Duration,
    ) -> CatchUpFuture {
        let engine = self.core.engine.clone();
        let limit = self.core.config.limits.catch_up_page;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let started = std::time::Instant::now();
            let result = engine
                .read(&channel, after, limit, CATCH_UP_PAGE_BYTES)
                .await;
            crate::metrics::engine_op("read", started);
            PageRead {
                channel,
                generation,
                after,
                result,
            }
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
                    let (generation, last) = (sub.generation, sub.last);
                    self.in_flight =
                        Some(self.read_after(channel, generation, last, Duration::ZERO));
                    return;
                }
            }
        }
    }

    fn on_page(&mut self, read: PageRead) {
        let PageRead {
            channel,
            generation,
            after,
            result,
        } = read;
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if sub.is_live() {
            return;
        }
        if sub.generation != generation || sub.last != after {
            // Resubscribed meanwhile: this page answers an older question (it may have been
            // read before the new subscription joined the live feed, so it cannot close the
            // seam), even when it starts at the same offset.
            self.catch_up.push_back(channel);
            return;
        }
        let page = match result {
            Ok(page) => page,
            Err(err) => {
                warn!(
                    conn = self.id,
                    transport = self.transport,
                    %channel,
                    %err,
                    "catch-up read failed; retrying"
                );
                self.in_flight = Some(self.read_after(channel, generation, after, RETRY_DELAY));
                return;
            }
        };
        let (take, next) = sub.on_page(&page);
        if next == AfterPage::ReadAgain {
            self.catch_up.push_front(channel.clone());
        }
        Self::deliver(&mut self.out, &channel, take, page.batch.map(Arc::new));
    }
}

/// A hub registration made by [`Feed::subscribe`] that is not stored in the feed yet: dropped
/// without [`Registered::keep`], it unsubscribes (nothing else would, as [`Feed`]'s drop only
/// knows stored subscriptions).
struct Registered<'a> {
    hub: &'a crate::hub::Hub,
    channel: &'a Arc<str>,
    conn: u64,
}

impl Registered<'_> {
    /// The subscription is about to be stored: the feed owns the registration now.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.channel, self.conn);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests;
