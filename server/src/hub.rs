//! The hub: this instance's subscribers per channel, and the in-process fan-out.
//!
//! The engine reads each watched channel once and hands every batch to [`Hub::deliver`], which
//! offers the same `Arc<Batch>` to each local subscriber's bounded queue. A subscriber whose
//! queue is full is marked *lagging*: the hub stops offering it batches (its live queue is
//! dropped) and wakes its connection, which then catches up from the stream by its own offset.
//! The first subscriber of a channel makes the hub watch it in the engine; the last one leaving
//! unwatches it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::engine::{Batch, Engine, LiveSink, Ready};

/// State shared between a subscription's connection and the hub.
#[derive(Debug, Default)]
pub struct SubscriberShared {
    /// Set by the hub when a batch could not be queued (the hub then signals the connection's
    /// queue, see [`LiveQueue::signal`]); cleared by the connection once it has caught up.
    pub lagging: AtomicBool,
}

impl SubscriberShared {
    /// A subscription that is not lagging.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
}

/// A connection's live queue, bounded in batches and in bytes: the hub offers batches without
/// waiting, the connection takes them. One lock and one waker, and the connection is woken
/// only when the queue turns non-empty (it drains whatever has piled up meanwhile).
#[derive(Debug, Clone)]
pub struct LiveQueue {
    shared: Arc<QueueShared>,
}

#[derive(Debug)]
struct QueueShared {
    state: Mutex<QueueState>,
    waker: AtomicWaker,
    max_batches: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    batches: VecDeque<Arc<Batch>>,
    bytes: usize,
    /// [`LiveQueue::signal`] was called since the receiver last looked.
    signalled: bool,
    /// The receiver is gone.
    closed: bool,
}

/// What happened to a batch offered to a [`LiveQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// The queue is full (in batches or bytes); the batch was not queued.
    Full,
    /// The connection is gone.
    Closed,
}

/// What a [`LiveQueueReceiver`] yields.
#[derive(Debug)]
pub enum QueueEvent {
    /// The next batch.
    Batch(Arc<Batch>),
    /// [`LiveQueue::signal`] was called (a subscription started lagging).
    Signalled,
}

impl LiveQueue {
    /// A queue of at most `max_batches` batches and `max_bytes` encoded bytes.
    pub fn new(max_batches: usize, max_bytes: usize) -> (LiveQueue, LiveQueueReceiver) {
        let shared = Arc::new(QueueShared {
            state: Mutex::default(),
            waker: AtomicWaker::new(),
            max_batches: max_batches.max(1),
            max_bytes,
        });
        (
            LiveQueue {
                shared: shared.clone(),
            },
            LiveQueueReceiver { shared },
        )
    }

    /// Offers a batch without waiting.
    pub fn offer(&self, batch: &Arc<Batch>) -> Offer {
        let size = batch.frame().len();
        let mut state = self.shared.state.lock();
        if state.closed {
            return Offer::Closed;
        }
        // A single batch larger than the byte limit still passes into an empty queue.
        let len = state.batches.len();
        if len >= self.shared.max_batches || (len > 0 && state.bytes + size > self.shared.max_bytes)
        {
            return Offer::Full;
        }
        state.batches.push_back(batch.clone());
        state.bytes += size;
        drop(state);
        if len == 0 {
            self.shared.waker.wake();
        }
        Offer::Queued
    }

    /// Wakes the receiver with [`QueueEvent::Signalled`] (before any queued batch).
    pub fn signal(&self) {
        self.shared.state.lock().signalled = true;
        self.shared.waker.wake();
    }
}

/// The connection's end of its [`LiveQueue`]. Dropping it closes the queue.
#[derive(Debug)]
pub struct LiveQueueReceiver {
    shared: Arc<QueueShared>,
}

impl LiveQueueReceiver {
    /// The next event, or `Pending` (and a wake-up when there is one).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<QueueEvent> {
        if let Some(event) = self.try_event() {
            return Poll::Ready(event);
        }
        self.shared.waker.register(cx.waker());
        // An offer between the first look and the registration found the queue empty and
        // woke the old waker: look again.
        match self.try_event() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }

    /// Waits for the next event.
    pub async fn recv(&mut self) -> QueueEvent {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes the next batch if one is waiting (a pending signal stays pending).
    pub fn try_recv(&mut self) -> Option<Arc<Batch>> {
        self.shared.state.lock().pop()
    }

    fn try_event(&mut self) -> Option<QueueEvent> {
        let mut state = self.shared.state.lock();
        if std::mem::take(&mut state.signalled) {
            return Some(QueueEvent::Signalled);
        }
        state.pop().map(QueueEvent::Batch)
    }
}

impl QueueState {
    fn pop(&mut self) -> Option<Arc<Batch>> {
        let batch = self.batches.pop_front()?;
        self.bytes -= batch.frame().len();
        Some(batch)
    }
}

impl Drop for LiveQueueReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.batches = VecDeque::new();
        state.bytes = 0;
    }
}

/// One local subscriber of a channel.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection's id (unique within the instance).
    pub conn: u64,
    /// Lag flag.
    pub shared: Arc<SubscriberShared>,
    /// The connection's live queue.
    pub queue: LiveQueue,
}

struct ChannelEntry {
    subscribers: Vec<Subscriber>,
    ready: watch::Receiver<Ready>,
}

/// What [`Hub::subscribe`] returns.
#[derive(Debug)]
pub struct Watching {
    /// Leaves [`Ready::Pending`] once the channel's live feed has fixed its starting point (at
    /// once if the channel was already watched).
    pub ready: watch::Receiver<Ready>,
    /// This subscriber made the hub watch the channel: a [`Ready::At`] position was read for
    /// it, after it joined, so it may serve as its own position read.
    pub first: bool,
}

/// Fan-out counters.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Batches offered to subscriber queues.
    pub delivered_batches: AtomicU64,
    /// Batches not queued because the subscriber was lagging or its queue was full.
    pub dropped_batches: AtomicU64,
    /// Times a subscriber switched to catch-up because its queue was full.
    pub lag_events: AtomicU64,
}

/// The local subscriber registry; see the module docs.
#[derive(Default)]
pub struct Hub {
    engine: OnceLock<Weak<dyn Engine>>,
    channels: RwLock<HashMap<Arc<str>, ChannelEntry>>,
    stats: HubStats,
}

impl Hub {
    /// A hub with no engine yet; call [`Hub::attach`] once the engine exists.
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Connects the hub to its engine (held weakly: the application owns the engine).
    pub fn attach(&self, engine: &Arc<dyn Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn engine(&self) -> Option<Arc<dyn Engine>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    /// Adds a subscriber; see [`Watching`].
    pub fn subscribe(&self, channel: &Arc<str>, subscriber: Subscriber) -> Watching {
        let mut channels = self.channels.write();
        if let Some(entry) = channels.get_mut(channel) {
            entry.subscribers.push(subscriber);
            return Watching {
                ready: entry.ready.clone(),
                first: false,
            };
        }
        let (ready_tx, ready) = watch::channel(Ready::Pending);
        channels.insert(
            channel.clone(),
            ChannelEntry {
                subscribers: vec![subscriber],
                ready: ready.clone(),
            },
        );
        if let Some(engine) = self.engine() {
            engine.watch(channel.clone(), ready_tx);
        }
        Watching { ready, first: true }
    }

    /// Removes the connection's subscriber from the channel.
    pub fn unsubscribe(&self, channel: &Arc<str>, conn: u64) {
        let mut channels = self.channels.write();
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        entry.subscribers.retain(|s| s.conn != conn);
        if entry.subscribers.is_empty() {
            channels.remove(channel);
            if let Some(engine) = self.engine() {
                engine.unwatch(channel);
            }
        }
    }

    /// Number of channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.read().len()
    }

    /// Number of local subscriptions over all channels.
    pub fn subscriber_total(&self) -> usize {
        self.channels
            .read()
            .values()
            .map(|e| e.subscribers.len())
            .sum()
    }

    /// Number of local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels
            .read()
            .get(channel)
            .map_or(0, |e| e.subscribers.len())
    }

    /// Fan-out counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }
}

impl LiveSink for Hub {
    fn deliver(&self, batch: Arc<Batch>) {
        let channels = self.channels.read();
        let Some(entry) = channels.get(batch.channel()) else {
            return;
        };
        crate::metrics::hot()
            .batch_entries
            .record(batch.len() as f64);
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for sub in &entry.subscribers {
            if sub.shared.lagging.load(Ordering::Acquire) {
                dropped += 1;
                continue;
            }
            match sub.queue.offer(&batch) {
                Offer::Queued => delivered += 1,
                Offer::Full => {
                    sub.shared.lagging.store(true, Ordering::Release);
                    sub.queue.signal();
                    self.stats.lag_events.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                }
                // The connection is closing and will unsubscribe.
                Offer::Closed => {}
            }
        }
        self.stats
            .delivered_batches
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats
            .dropped_batches
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use redistribute_protocol::StreamId;

    use super::*;
    use crate::engine::BatchBuilder;

    fn batch(id: u64, pad: usize) -> Arc<Batch> {
        let mut b = BatchBuilder::new("c".into());
        b.begin_entry(StreamId::new(id, 0));
        b.field(true, "pad", &"x".repeat(pad));
        b.end_entry();
        Arc::new(b.finish().expect("one entry"))
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(rx: &mut LiveQueueReceiver, waker: &Arc<CountingWaker>) -> Option<QueueEvent> {
        let waker = Waker::from(waker.clone());
        match rx.poll_recv(&mut Context::from_waker(&waker)) {
            Poll::Ready(event) => Some(event),
            Poll::Pending => None,
        }
    }

    fn id_of(event: Option<QueueEvent>) -> Option<u64> {
        match event {
            Some(QueueEvent::Batch(b)) => Some(b.first_id().ms),
            _ => None,
        }
    }

    #[test]
    fn bounded_in_batches() {
        let (tx, mut rx) = LiveQueue::new(2, 1 << 20);
        assert_eq!(tx.offer(&batch(1, 1)), Offer::Queued);
        assert_eq!(tx.offer(&batch(2, 1)), Offer::Queued);
        assert_eq!(tx.offer(&batch(3, 1)), Offer::Full);
        assert_eq!(rx.try_recv().map(|b| b.first_id().ms), Some(1));
        assert_eq!(tx.offer(&batch(4, 1)), Offer::Queued);
        assert_eq!(rx.try_recv().map(|b| b.first_id().ms), Some(2));
        assert_eq!(rx.try_recv().map(|b| b.first_id().ms), Some(4));
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn bounded_in_bytes_but_one_oversize_batch_passes_into_an_empty_queue() {
        let (tx, mut rx) = LiveQueue::new(100, 1000);
        assert_eq!(tx.offer(&batch(1, 5000)), Offer::Queued);
        assert_eq!(tx.offer(&batch(2, 10)), Offer::Full);
        assert!(rx.try_recv().is_some());
        assert_eq!(tx.offer(&batch(3, 600)), Offer::Queued);
        assert_eq!(
            tx.offer(&batch(4, 600)),
            Offer::Full,
            "over 1000 bytes together"
        );
        assert!(rx.try_recv().is_some());
        assert_eq!(
            tx.offer(&batch(5, 600)),
            Offer::Queued,
            "bytes are released on take"
        );
    }

    #[test]
    fn wakes_once_when_the_queue_turns_non_empty() {
        let (tx, mut rx) = LiveQueue::new(16, 1 << 20);
        let waker = Arc::new(CountingWaker::default());
        assert!(poll(&mut rx, &waker).is_none());
        tx.offer(&batch(1, 1));
        tx.offer(&batch(2, 1));
        tx.offer(&batch(3, 1));
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert_eq!(id_of(poll(&mut rx, &waker)), Some(1));
        assert_eq!(id_of(poll(&mut rx, &waker)), Some(2));
        assert_eq!(id_of(poll(&mut rx, &waker)), Some(3));
        assert!(poll(&mut rx, &waker).is_none());
        tx.offer(&batch(4, 1));
        assert_eq!(waker.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_signal_wakes_and_comes_before_queued_batches() {
        let (tx, mut rx) = LiveQueue::new(16, 1 << 20);
        let waker = Arc::new(CountingWaker::default());
        assert!(poll(&mut rx, &waker).is_none());
        tx.offer(&batch(1, 1));
        tx.signal();
        // One wake-up: the registration is used up until the receiver polls again.
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(&mut rx, &waker), Some(QueueEvent::Signalled)));
        assert_eq!(id_of(poll(&mut rx, &waker)), Some(1));
        assert!(poll(&mut rx, &waker).is_none());
    }

    #[test]
    fn closed_once_the_receiver_is_gone() {
        let (tx, rx) = LiveQueue::new(16, 1 << 20);
        tx.offer(&batch(1, 1));
        drop(rx);
        assert_eq!(tx.offer(&batch(2, 1)), Offer::Closed);
        assert!(
            tx.shared.state.lock().batches.is_empty(),
            "queued batches are freed"
        );
    }
}
