//! The subscription buffers: putting messages in without waiting, and resuming a subscription
//! whose buffer overflowed (see [`crate::subscription`]).
//!
//! A full buffer sets the subscription's `overflowed` flag: the channel's messages are dropped
//! from then on. Once the application has taken half of the buffer (it wakes the driver), the
//! driver calls the session's `resubscribe` from the last buffered offset, clears the flag and
//! delivers again at once: the session drops whatever of the old subscription is still on the
//! wire until the new `subscribed` reply, and the server replays what was dropped.

use std::sync::atomic::Ordering;

use redistribute_protocol::{Message, Offset};
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tracing::debug;

use super::route::{Entry, Reply};
use super::{Driver, RESUME_RETRY};
use crate::error::Error;
use crate::event::Event;

impl Driver {
    /// Puts new messages into the channel's buffer without waiting; on a full buffer switches
    /// the subscription to overflow.
    pub(super) fn deliver(&mut self, channel: String, messages: Vec<Message>) {
        let Some(entry) = self.entries.get_mut(&channel) else {
            return;
        };
        if entry.shared.overflowed.load(Ordering::SeqCst) {
            return;
        }
        for message in messages {
            let offset = message.offset;
            match entry.tx.try_send(message) {
                Ok(()) => entry.last_queued = Some(offset),
                Err(TrySendError::Full(_)) => {
                    debug!(%channel, "subscription buffer full; will resume from the stream");
                    entry.shared.overflowed.store(true, Ordering::SeqCst);
                    let resume_after = entry.last_queued;
                    self.emit(Event::Overflow {
                        channel,
                        resume_after,
                    });
                    // The application may have made room before it could see the flag: look
                    // again once the session's queued events are routed (they are the old
                    // subscription's, and must be dropped).
                    self.overflowed = true;
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.end(channel);
                    return;
                }
            }
        }
    }

    /// Resumes every overflowed subscription whose buffer is at most half full again (or
    /// whose stream was dropped). Never called while the session has events queued.
    pub(super) fn resume_ready(&mut self) {
        self.overflowed = false;
        let ready: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.shared.overflowed.load(Ordering::SeqCst)
                    && (e.tx.is_closed() || e.tx.capacity() >= e.tx.max_capacity() / 2)
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
                let reply = Reply::Subscribe {
                    channel,
                    sub,
                    reply: None,
                };
                self.pending.insert(id.get(), reply);
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
            _ => self.lose(channel, None, error),
        }
    }
}

/// What a resumed subscription asks for: after the last buffered message, or what the caller
/// first asked for if nothing was buffered yet.
fn resume_offset(entry: &Entry) -> Offset {
    entry.last_queued.map_or(entry.requested, Offset::Id)
}
