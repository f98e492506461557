//! One subscription of a connection: its last delivered offset and whether it is live or
//! catching up from the stream.
//!
//! The rules that make the history/live seam exact:
//! - A subscription is registered with the hub *before* its first history read, so every entry
//!   is covered either by a read (appended before the read started) or by the live feed.
//! - While catching up, live batches are discarded but their highest offset is remembered.
//! - Catch-up ends only after a short read (the stream's end) that started after everything
//!   discarded was appended: if a discarded offset is beyond what the reads delivered, read
//!   again. If the hub had stopped feeding it (lagging), the flag is cleared first and one more
//!   read covers what the hub skipped.
//! - Live batches are delivered from the first entry after the last delivered offset, so
//!   nothing is delivered twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redistribute_protocol::StreamId;

use crate::engine::Batch;
use crate::hub::SubscriberShared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    CatchUp { max_discarded: Option<StreamId> },
}

/// What to do after a catch-up page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPage {
    /// Read the next page.
    ReadAgain,
    /// The subscription is level with the stream and now takes live batches.
    Live,
}

/// A connection's state for one channel.
#[derive(Debug)]
pub struct Subscription {
    /// Shared with the hub.
    pub shared: Arc<SubscriberShared>,
    /// The last offset delivered (or the starting point).
    pub last: StreamId,
    mode: Mode,
}

impl Subscription {
    /// A new subscription that starts after `start` and first catches up from the stream.
    pub fn new(shared: Arc<SubscriberShared>, start: StreamId) -> Self {
        Subscription {
            shared,
            last: start,
            mode: Mode::CatchUp {
                max_discarded: None,
            },
        }
    }

    /// Whether the subscription takes live batches.
    pub fn is_live(&self) -> bool {
        self.mode == Mode::Live
    }

    /// Offers a live batch; returns the index of the first entry to deliver (and advances
    /// `last`), or `None` when nothing of it is to be delivered now.
    pub fn accept_live(&mut self, batch: &Batch) -> Option<usize> {
        match &mut self.mode {
            Mode::Live => self.take_from(batch),
            Mode::CatchUp { max_discarded } => {
                let last = batch.last_id();
                if max_discarded.is_none_or(|m| last > m) {
                    *max_discarded = Some(last);
                }
                None
            }
        }
    }

    /// Switches a live subscription to catch-up (its live queue was dropped); returns whether
    /// a catch-up read must be scheduled.
    pub fn start_catch_up(&mut self) -> bool {
        if self.mode == Mode::Live {
            self.mode = Mode::CatchUp {
                max_discarded: None,
            };
            true
        } else {
            false
        }
    }

    /// Takes a catch-up page read after `last` with at most `page_size` entries; returns the
    /// index of the first entry to deliver (if any) and what to do next.
    pub fn on_page(
        &mut self,
        batch: Option<&Batch>,
        page_size: usize,
    ) -> (Option<usize>, AfterPage) {
        let deliver = batch.and_then(|b| self.take_from(b));
        let full = batch.is_some_and(|b| b.len() >= page_size);
        let next = if full {
            AfterPage::ReadAgain
        } else if self.shared.lagging.swap(false, Ordering::AcqRel) {
            // The hub skipped batches until now; one more read covers them.
            AfterPage::ReadAgain
        } else {
            match self.mode {
                Mode::CatchUp {
                    max_discarded: Some(m),
                } if m > self.last => AfterPage::ReadAgain,
                _ => {
                    self.mode = Mode::Live;
                    AfterPage::Live
                }
            }
        };
        (deliver, next)
    }

    fn take_from(&mut self, batch: &Batch) -> Option<usize> {
        let index = batch.first_index_after(self.last);
        if index < batch.len() {
            self.last = batch.last_id();
            Some(index)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::BatchBuilder;

    fn batch(ids: &[u64]) -> Batch {
        let mut b = BatchBuilder::new("c".into());
        for &ms in ids {
            b.begin_entry(StreamId::new(ms, 0));
            b.field(true, "n", &ms.to_string());
            b.end_entry();
        }
        b.finish().unwrap()
    }

    fn sub(start: u64) -> Subscription {
        Subscription::new(SubscriberShared::new(), StreamId::new(start, 0))
    }

    #[test]
    fn discarded_live_batches_force_another_read() {
        let mut s = sub(0);
        assert_eq!(s.accept_live(&batch(&[3, 4])), None);
        // A short read that ended before 4: not level yet.
        let (d, next) = s.on_page(Some(&batch(&[1, 2])), 10);
        assert_eq!((d, next), (Some(0), AfterPage::ReadAgain));
        let (d, next) = s.on_page(Some(&batch(&[3, 4])), 10);
        assert_eq!((d, next), (Some(0), AfterPage::Live));
        assert_eq!(s.last, StreamId::new(4, 0));
    }

    #[test]
    fn live_batches_overlapping_history_deliver_only_the_new_part() {
        let mut s = sub(0);
        s.on_page(Some(&batch(&[1, 2, 3])), 10);
        assert!(s.is_live());
        assert_eq!(s.accept_live(&batch(&[2, 3, 4, 5])), Some(2));
        assert_eq!(s.accept_live(&batch(&[5])), None);
        assert_eq!(s.last, StreamId::new(5, 0));
    }

    #[test]
    fn full_pages_read_again_and_lag_flag_is_cleared_before_going_live() {
        let mut s = sub(0);
        let (_, next) = s.on_page(Some(&batch(&[1, 2])), 2);
        assert_eq!(next, AfterPage::ReadAgain);
        s.on_page(None, 2);
        assert!(s.is_live());
        s.shared.lagging.store(true, Ordering::Release);
        assert!(s.start_catch_up());
        assert!(!s.start_catch_up());
        let (_, next) = s.on_page(None, 2);
        assert_eq!(next, AfterPage::ReadAgain);
        assert!(!s.shared.lagging.load(Ordering::Acquire));
        let (_, next) = s.on_page(None, 2);
        assert_eq!(next, AfterPage::Live);
    }
}
