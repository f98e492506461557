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
//! - Catch-up ends only on an empty page (no entry, no gap): a page with entries may have been
//!   cut by count or bytes, and one with only a gap may have skipped undeliverable entries.
//! - Whatever the engine reports missing after the last delivered offset (a page's or a live
//!   batch's `gap_through`: trimmed, or undeliverable) becomes a gap `(last, gap_through]`
//!   before the entries that follow it, and `last` moves to its end: nothing is skipped
//!   silently.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redistribute_protocol::StreamId;

use crate::engine::{Batch, Page};
use crate::hub::SubscriberShared;

/// What a subscription takes from a batch or a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Take {
    /// Entries in `(from, to]` are missed: report them before any entry.
    pub gap: Option<(StreamId, StreamId)>,
    /// Index of the first entry to deliver, if any.
    pub from: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    CatchUp { max_discarded: Option<StreamId> },
}

/// What to do after a catch-up page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterPage {
    /// Read the next page.
    ReadAgain,
    /// The subscription is level with the stream and now takes live batches.
    Live,
}

/// A connection's state for one channel.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Shared with the hub.
    pub shared: Arc<SubscriberShared>,
    /// The last offset delivered (or the starting point).
    pub last: StreamId,
    /// Unique per subscription within its feed.
    pub generation: u64,
    mode: Mode,
}

impl Subscription {
    /// A new subscription that starts after `start` and first catches up from the stream;
    /// `generation` tells its catch-up reads from those of a subscription it replaced.
    pub(crate) fn new(shared: Arc<SubscriberShared>, start: StreamId, generation: u64) -> Self {
        Subscription {
            shared,
            last: start,
            generation,
            mode: Mode::CatchUp {
                max_discarded: None,
            },
        }
    }

    /// Whether the subscription takes live batches.
    pub(crate) fn is_live(&self) -> bool {
        self.mode == Mode::Live
    }

    /// Offers a live batch; says what to deliver now (and advances `last`).
    pub(crate) fn accept_live(&mut self, batch: &Batch) -> Take {
        match &mut self.mode {
            Mode::Live => Take {
                gap: self.skip_through(batch.gap_through()),
                from: self.take_from(batch),
            },
            Mode::CatchUp { max_discarded } => {
                let last = batch.last_id();
                if max_discarded.is_none_or(|m| last > m) {
                    *max_discarded = Some(last);
                }
                Take::default()
            }
        }
    }

    /// Switches a live subscription to catch-up (its live queue was dropped); returns whether
    /// a catch-up read must be scheduled.
    pub(crate) fn start_catch_up(&mut self) -> bool {
        if self.mode == Mode::Live {
            self.mode = Mode::CatchUp {
                max_discarded: None,
            };
            true
        } else {
            false
        }
    }

    /// Takes a catch-up page read after `last`; says what to deliver and what to do next.
    pub(crate) fn on_page(&mut self, page: &Page) -> (Take, AfterPage) {
        let take = Take {
            gap: self.skip_through(page.gap_through),
            from: page.batch.as_ref().and_then(|b| self.take_from(b)),
        };
        let next = if page.batch.is_some() || page.gap_through.is_some() {
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
        (take, next)
    }

    /// Moves past entries the engine reports missing; returns the gap to report.
    fn skip_through(&mut self, gap_through: Option<StreamId>) -> Option<(StreamId, StreamId)> {
        let through = gap_through.filter(|g| *g > self.last)?;
        let gap = (self.last, through);
        self.last = through;
        Some(gap)
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
        Subscription::new(SubscriberShared::new(), StreamId::new(start, 0), 1)
    }

    /// A page as the engine returns it.
    fn page(ids: &[u64]) -> Page {
        Page {
            batch: (!ids.is_empty()).then(|| batch(ids)),
            gap_through: None,
        }
    }

    fn delivered(take: Take) -> Option<usize> {
        assert_eq!(take.gap, None);
        take.from
    }

    #[test]
    fn discarded_live_batches_force_another_read() {
        let mut s = sub(0);
        assert_eq!(s.accept_live(&batch(&[3, 4])), Take::default());
        // A short read that ended before 4: not level yet.
        let (d, next) = s.on_page(&page(&[1, 2]));
        assert_eq!((delivered(d), next), (Some(0), AfterPage::ReadAgain));
        let (d, next) = s.on_page(&page(&[3, 4]));
        assert_eq!((delivered(d), next), (Some(0), AfterPage::ReadAgain));
        let (d, next) = s.on_page(&page(&[]));
        assert_eq!((delivered(d), next), (None, AfterPage::Live));
        assert_eq!(s.last, StreamId::new(4, 0));
    }

    #[test]
    fn live_batches_overlapping_history_deliver_only_the_new_part() {
        let mut s = sub(0);
        s.on_page(&page(&[1, 2, 3]));
        s.on_page(&page(&[]));
        assert!(s.is_live());
        assert_eq!(delivered(s.accept_live(&batch(&[2, 3, 4, 5]))), Some(2));
        assert_eq!(delivered(s.accept_live(&batch(&[5]))), None);
        assert_eq!(s.last, StreamId::new(5, 0));
    }

    #[test]
    fn full_pages_read_again_and_lag_flag_is_cleared_before_going_live() {
        let mut s = sub(0);
        let (_, next) = s.on_page(&page(&[1, 2]));
        assert_eq!(next, AfterPage::ReadAgain);
        s.on_page(&page(&[]));
        assert!(s.is_live());
        s.shared.lagging.store(true, Ordering::Release);
        assert!(s.start_catch_up());
        assert!(!s.start_catch_up());
        let (_, next) = s.on_page(&page(&[]));
        assert_eq!(next, AfterPage::ReadAgain);
        assert!(!s.shared.lagging.load(Ordering::Acquire));
        let (_, next) = s.on_page(&page(&[]));
        assert_eq!(next, AfterPage::Live);
    }

    #[test]
    fn only_an_empty_page_ends_catch_up() {
        let mut s = sub(0);
        // However short: it may have been cut by bytes.
        let (_, next) = s.on_page(&page(&[1]));
        assert_eq!(next, AfterPage::ReadAgain);
        // Only undeliverable entries were examined: read on after them.
        let mut skipped = page(&[]);
        skipped.gap_through = Some(StreamId::new(5, 0));
        let (_, next) = s.on_page(&skipped);
        assert_eq!(next, AfterPage::ReadAgain);
        assert_eq!(s.last, StreamId::new(5, 0));
        let (_, next) = s.on_page(&page(&[]));
        assert_eq!(next, AfterPage::Live);
    }

    #[test]
    fn trimmed_entries_become_a_gap_before_what_follows_in_catch_up_and_live() {
        let mut s = sub(10);
        // Trimmed through 20 while catching up: gap (10, 20], then 21 and 22.
        let mut p = page(&[21, 22]);
        p.gap_through = Some(StreamId::new(20, 0));
        let (take, next) = s.on_page(&p);
        let gap = (StreamId::new(10, 0), StreamId::new(20, 0));
        assert_eq!(
            take,
            Take {
                gap: Some(gap),
                from: Some(0)
            }
        );
        assert_eq!(next, AfterPage::ReadAgain);
        assert_eq!(s.last, StreamId::new(22, 0));
        // A watermark the subscription is already past is no gap.
        let mut p = page(&[]);
        p.gap_through = Some(StreamId::new(15, 0));
        assert_eq!(s.on_page(&p).0, Take::default());
        assert_eq!(s.on_page(&page(&[])).1, AfterPage::Live);
        // The live reader was outrun by a trim: gap (22, 30], then 31.
        let mut b = BatchBuilder::new("c".into());
        b.set_gap_through(StreamId::new(30, 0));
        b.begin_entry(StreamId::new(31, 0));
        b.field(true, "n", "31");
        b.end_entry();
        let take = s.accept_live(&b.finish().unwrap());
        let gap = (StreamId::new(22, 0), StreamId::new(30, 0));
        assert_eq!(
            take,
            Take {
                gap: Some(gap),
                from: Some(0)
            }
        );
        assert_eq!(s.last, StreamId::new(31, 0));
    }
}
