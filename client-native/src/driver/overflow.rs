//! The subscription buffers: putting events in without waiting, and resuming a subscription
//! whose buffer overflowed (see [`crate::subscription`] and [`crate::channel`]).
//!
//! A full buffer sets the subscription's `overflowed` flag: the channel's events are dropped
//! from then on (all but the final `Unsubscribed`). Once the application has taken half of the
//! buffer (it wakes the driver), the driver calls the session's `resubscribe` from the last
//! buffered offset, clears the flag and delivers again at once: the session drops whatever of
//! the old subscription is still on the wire until the new `subscribed` reply, and the server
//! replays what was dropped (a gap dropped meanwhile is reported again by the replay).

use std::sync::atomic::Ordering;

use redistribute_protocol::{Message, Offset};
use tokio::time::Instant;
use tracing::debug;

use super::route::{Entry, Reply};
use super::{Driver, RESUME_RETRY};
use crate::channel::SubscriptionEvent;
use crate::error::Error;
use crate::event::Event;

/// What happened to an event offered to a buffer.
enum Offered {
    Queued,
    /// The buffer is full (or was already): the subscription overflowed.
    Full,
    /// Nobody reads the buffer any more.
    Closed,
}

impl Driver {
    /// Puts new messages into the channel's buffer without waiting; on a full buffer switches
    /// the subscription to overflow.
    pub(super) fn deliver(&mut self, channel: String, messages: Vec<Message>) {
        for message in messages {
            let offset = message.offset;
            if !self.offer(&channel, SubscriptionEvent::Message(message)) {
                return;
            }
            if let Some(entry) = self.entries.get_mut(&channel) {
                entry.last_queued = Some(offset);
            }
        }
    }

    /// Puts an event into the channel's buffer without waiting. Returns whether it was
    /// queued; a full buffer switches the subscription to overflow, a closed one ends it.
    pub(super) fn offer(&mut self, channel: &str, event: SubscriptionEvent) -> bool {
        let Some(entry) = self.entries.get(channel) else {
            return false;
        };
        match put(entry, event) {
            Offered::Queued => true,
            Offered::Full => {
                if !entry.shared.overflowed.swap(true, Ordering::SeqCst) {
                    debug!(%channel, "subscription buffer full; will resume from the stream");
                    let resume_after = entry.last_queued;
                    self.emit(Event::Overflow {
                        channel: channel.to_owned(),
                        resume_after,
                    });
                    // The application may have made room before it could see the flag: look
                    // again once the session's queued events are routed (they are the old
                    // subscription's, and must be dropped).
                    self.overflowed = true;
                }
                false
            }
            Offered::Closed => {
                self.end(channel.to_owned());
                false
            }
        }
    }

    /// Resumes every overflowed subscription whose buffer is at most half full again (or
    /// whose reader was dropped). Never called while the session has events queued.
    pub(super) fn resume_ready(&mut self) {
        self.overflowed = false;
        let ready: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.shared.overflowed.load(Ordering::SeqCst)
                    && (e.tx.is_closed()
                        || e.shared.queued.load(Ordering::SeqCst) <= e.capacity / 2)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for channel in ready {
            self.resume(channel);
        }
    }

    /// Re-subscribes an overflowed subscription from its last buffered message.
    fn resume(&mut self, channel: String) {
        let Some(entry) = self.entries.get(&channel) else {
            return;
        };
        if entry.tx.is_closed() {
            self.end(channel);
            return;
        }
        let (sub, from, group) = (entry.sub, resume_offset(entry), entry.group.clone());
        match self.resubscribe(&channel, from, group) {
            Ok(id) => {
                if let Some(entry) = self.entries.get(&channel) {
                    entry.shared.overflowed.store(false, Ordering::SeqCst);
                }
                self.pending
                    .insert(id.get(), Reply::Subscribe { channel, sub });
            }
            // Too many requests in flight: try again shortly.
            Err(_) => self.resume_retry = Some(Instant::now() + RESUME_RETRY),
        }
    }

    /// A resume did not get through. A timeout, or a transient error past the session's
    /// retries: never give up on it, resume again shortly from the same offset. Anything
    /// else ends the subscription.
    pub(super) fn resume_failed(&mut self, channel: String, error: Error) {
        let transient = match &error {
            Error::Server { code, .. } => code.is_transient(),
            Error::Timeout | Error::ConnectionLost => true,
            _ => false,
        };
        match self.entries.get(&channel) {
            Some(entry) if transient => {
                entry.shared.overflowed.store(true, Ordering::SeqCst);
                self.resume_retry = Some(Instant::now() + RESUME_RETRY);
            }
            Some(_) => {
                self.emit(Event::SubscriptionLost {
                    channel: channel.clone(),
                    error: error.clone(),
                });
                self.finish_entry(&channel, Some(error));
            }
            None => {}
        }
    }
}

/// Queues `event` unless the buffer is full or overflowed (a subscription that overflowed
/// takes nothing until it is resumed).
fn put(entry: &Entry, event: SubscriptionEvent) -> Offered {
    if entry.tx.is_closed() {
        return Offered::Closed;
    }
    if entry.shared.overflowed.load(Ordering::SeqCst)
        || entry.shared.queued.load(Ordering::SeqCst) >= entry.capacity
    {
        return Offered::Full;
    }
    entry.shared.queued.fetch_add(1, Ordering::SeqCst);
    match entry.tx.send(event) {
        Ok(()) => Offered::Queued,
        Err(_) => Offered::Closed,
    }
}

/// What a subscribe of an entry asks for (a resume, or a subscribe again after an
/// unsubscribe): after the last buffered message, or what the caller first asked for if nothing
/// was buffered yet.
pub(super) fn resume_offset(entry: &Entry) -> Offset {
    entry.last_queued.map_or(entry.options.offset, Offset::Id)
}
