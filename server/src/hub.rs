//! The hub: this instance's subscribers per channel, and the in-process fan-out.
//!
//! The engine reads each watched channel once and hands every batch to [`Hub::deliver`], which
//! offers the same `Arc<Batch>` to each local subscriber's bounded queue. A subscriber whose
//! queue is full is marked *lagging*: the hub stops offering it batches (its live queue is
//! dropped) and wakes its connection, which then catches up from the stream by its own offset.
//! The first subscriber of a channel makes the hub watch it in the engine; the last one leaving
//! unwatches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::RwLock;
use tokio::sync::{mpsc, watch, Notify};

use crate::engine::{Batch, Engine, LiveSink};

/// State shared between a subscription's connection and the hub.
#[derive(Debug)]
pub struct SubscriberShared {
    /// Set by the hub when a batch could not be queued; cleared by the connection once it has
    /// caught up.
    pub lagging: AtomicBool,
    /// Wakes the connection when `lagging` is set.
    pub wake: Arc<Notify>,
}

impl SubscriberShared {
    /// A subscription that is not lagging, waking `wake`.
    pub fn new(wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(SubscriberShared {
            lagging: AtomicBool::new(false),
            wake,
        })
    }
}

/// A connection's live queue, bounded in batches and in bytes.
#[derive(Debug, Clone)]
pub struct LiveQueue {
    sender: mpsc::Sender<Arc<Batch>>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
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

impl LiveQueue {
    /// A queue of at most `max_batches` batches and `max_bytes` encoded bytes.
    pub fn new(max_batches: usize, max_bytes: usize) -> (LiveQueue, LiveQueueReceiver) {
        let (sender, receiver) = mpsc::channel(max_batches.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        (
            LiveQueue {
                sender,
                queued_bytes: queued_bytes.clone(),
                max_bytes,
            },
            LiveQueueReceiver {
                receiver,
                queued_bytes,
            },
        )
    }

    /// Offers a batch without waiting.
    pub fn offer(&self, batch: &Arc<Batch>) -> Offer {
        let size = batch.frame().len();
        let before = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        // A single batch larger than the limit still passes into an empty queue.
        if before > 0 && before + size > self.max_bytes {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return Offer::Full;
        }
        match self.sender.try_send(batch.clone()) {
            Ok(()) => Offer::Queued,
            Err(err) => {
                self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                match err {
                    mpsc::error::TrySendError::Full(_) => Offer::Full,
                    mpsc::error::TrySendError::Closed(_) => Offer::Closed,
                }
            }
        }
    }
}

/// The connection's end of its [`LiveQueue`].
#[derive(Debug)]
pub struct LiveQueueReceiver {
    receiver: mpsc::Receiver<Arc<Batch>>,
    queued_bytes: Arc<AtomicUsize>,
}

impl LiveQueueReceiver {
    /// Waits for the next batch.
    pub async fn recv(&mut self) -> Option<Arc<Batch>> {
        let batch = self.receiver.recv().await?;
        self.queued_bytes
            .fetch_sub(batch.frame().len(), Ordering::AcqRel);
        Some(batch)
    }

    /// Takes the next batch if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Batch>> {
        let batch = self.receiver.try_recv().ok()?;
        self.queued_bytes
            .fetch_sub(batch.frame().len(), Ordering::AcqRel);
        Some(batch)
    }
}

/// One local subscriber of a channel.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection's id (unique within the instance).
    pub conn: u64,
    /// Lag flag and wake-up.
    pub shared: Arc<SubscriberShared>,
    /// The connection's live queue.
    pub queue: LiveQueue,
}

struct ChannelEntry {
    subscribers: Vec<Subscriber>,
    ready: watch::Receiver<bool>,
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

    /// Adds a subscriber; returns a receiver that turns `true` once the channel's live feed has
    /// fixed its starting point (at once if the channel was already watched).
    pub fn subscribe(&self, channel: &Arc<str>, subscriber: Subscriber) -> watch::Receiver<bool> {
        let mut channels = self.channels.write();
        if let Some(entry) = channels.get_mut(channel) {
            entry.subscribers.push(subscriber);
            return entry.ready.clone();
        }
        let (ready_tx, ready) = watch::channel(false);
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
        ready
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
        metrics::histogram!(crate::metrics::BATCH_ENTRIES).record(batch.len() as f64);
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
                    sub.shared.wake.notify_one();
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
