//! The hub: this instance's subscribers per channel, and the in-process fan-out.
//!
//! The engine reads each watched channel once and hands every batch to [`Hub::deliver`], which
//! offers the same `Arc<Batch>` to each local subscriber's bounded queue. A subscriber whose
//! queue is full is marked *lagging*: the hub stops offering it batches (its live queue is
//! dropped) and wakes its connection, which then catches up from the stream by its own offset.
//! The first subscriber of a channel makes the hub watch it in the engine; the last one leaving
//! unwatches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// One local subscriber of a channel.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection's id (unique within the instance).
    pub conn: u64,
    /// Lag flag and wake-up.
    pub shared: Arc<SubscriberShared>,
    /// The connection's live queue.
    pub queue: mpsc::Sender<Arc<Batch>>,
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
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for sub in &entry.subscribers {
            if sub.shared.lagging.load(Ordering::Acquire) {
                dropped += 1;
                continue;
            }
            match sub.queue.try_send(batch.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.shared.lagging.store(true, Ordering::Release);
                    sub.shared.wake.notify_one();
                    self.stats.lag_events.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                }
                // The connection is closing and will unsubscribe.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.stats
            .delivered_batches
            .fetch_add(delivered, Ordering::Relaxed);
        self.stats.dropped_batches.fetch_add(dropped, Ordering::Relaxed);
    }
}
