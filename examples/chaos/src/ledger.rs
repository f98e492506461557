//! The exact ledger: every acknowledged offset per channel, every delivery and reported gap per
//! subscription, every consumer-group job delivered and acknowledged; and the final check.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use parking_lot::Mutex;
use redistribute_client::StreamId;

/// Index of a subscription in the ledger.
pub type SubId = usize;

/// One logical subscription: one subscriber's interest in one channel, from its start offset
/// to the end of the run, across reconnects, resumes and resubscribes.
#[derive(Debug)]
pub struct SubRecord {
    /// The subscriber's name, e.g. `sse-1`.
    pub subscriber: String,
    /// Client kind: `native`, `ws`, `sse`, `poll`.
    pub kind: &'static str,
    /// The channel.
    pub channel: String,
    /// Exclusive start: acknowledged offsets after it must arrive (or be inside a gap).
    pub start: Option<StreamId>,
    /// Every distinct offset delivered.
    pub delivered: HashSet<StreamId>,
    /// The highest offset delivered.
    pub last: Option<StreamId>,
    /// Deliveries of an offset already delivered.
    pub duplicates: u64,
    /// Deliveries of a new offset lower than the highest already delivered.
    pub out_of_order: u64,
    /// Reported gaps `(from, to]`.
    pub gaps: Vec<(StreamId, StreamId)>,
}

impl SubRecord {
    /// Where a resume must continue: after the last delivered offset, else after the start.
    pub fn resume_point(&self) -> Option<StreamId> {
        self.last.or(self.start)
    }

    fn covered(&self, offset: StreamId) -> bool {
        self.gaps
            .iter()
            .any(|&(from, to)| offset > from && offset <= to)
    }
}

#[derive(Debug, Default)]
struct Inner {
    acked: HashMap<String, BTreeSet<StreamId>>,
    subs: Vec<SubRecord>,
    /// (channel, publisher, sequence) → first offset it was delivered with.
    content: HashMap<(String, String, u64), StreamId>,
    /// Messages whose content was delivered under two different offsets (stored twice).
    double_stored: BTreeSet<(String, String, u64)>,
    jobs_published: BTreeSet<StreamId>,
    jobs_delivered: u64,
    jobs_seen: HashSet<StreamId>,
    jobs_acked: HashSet<StreamId>,
    publish_errors: BTreeMap<String, u64>,
}

/// The shared ledger; every method takes the lock for a moment.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

/// One acknowledged offset that a subscription neither received nor was told was removed.
#[derive(Debug, Clone)]
pub struct Loss {
    /// The subscription.
    pub sub: SubId,
    /// The subscriber's client kind.
    pub kind: &'static str,
    /// The subscriber's name.
    pub subscriber: String,
    /// The channel.
    pub channel: String,
    /// The missing offset.
    pub offset: StreamId,
}

/// A subscription that has not caught up (yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    /// The subscriber.
    pub subscriber: String,
    /// The channel.
    pub channel: String,
    /// Acknowledged offsets neither delivered nor inside a reported gap.
    pub missing: usize,
    /// The lowest of them.
    pub first_missing: StreamId,
    /// The highest offset delivered.
    pub last_delivered: Option<StreamId>,
}

/// What the final check found in the plain subscriptions.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged publishes (all channels, jobs included).
    pub acknowledged: u64,
    /// Distinct offsets delivered, summed over subscriptions.
    pub delivered: u64,
    /// Acknowledged offsets missing without a gap covering them.
    pub losses: Vec<Loss>,
    /// Duplicate deliveries within a subscription.
    pub duplicates: u64,
    /// Out-of-order deliveries within a subscription.
    pub out_of_order: u64,
    /// Gaps reported, summed over subscriptions.
    pub gaps_reported: u64,
    /// Acknowledged offsets skipped because a reported gap covered them.
    pub covered_by_gaps: u64,
    /// Messages delivered under two different offsets (stored twice).
    pub double_stored: u64,
    /// Subscriptions, and how many of them lost something.
    pub subscriptions: usize,
    /// Subscriptions that lost something.
    pub subscriptions_with_loss: usize,
}

impl Ledger {
    /// Records a `published` reply.
    pub fn acknowledged(&self, channel: &str, offset: StreamId) {
        let mut inner = self.inner.lock();
        inner
            .acked
            .entry(channel.to_owned())
            .or_default()
            .insert(offset);
    }

    /// Records a publish attempt that failed (it is retried), by error kind.
    pub fn publish_error(&self, kind: &str) {
        *self
            .inner
            .lock()
            .publish_errors
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// Publish errors by kind so far.
    pub fn publish_errors(&self) -> BTreeMap<String, u64> {
        self.inner.lock().publish_errors.clone()
    }

    /// The highest acknowledged offset of `channel`, if any.
    pub fn max_acknowledged(&self, channel: &str) -> Option<StreamId> {
        self.inner
            .lock()
            .acked
            .get(channel)
            .and_then(|s| s.last().copied())
    }

    /// How many publishes were acknowledged so far.
    pub fn acknowledged_count(&self) -> u64 {
        self.inner
            .lock()
            .acked
            .values()
            .map(|s| s.len() as u64)
            .sum()
    }

    /// Registers a subscription; `start` may be set later with [`Ledger::set_start`].
    pub fn register(
        &self,
        subscriber: &str,
        kind: &'static str,
        channel: &str,
        start: Option<StreamId>,
    ) -> SubId {
        let mut inner = self.inner.lock();
        inner.subs.push(SubRecord {
            subscriber: subscriber.to_owned(),
            kind,
            channel: channel.to_owned(),
            start,
            delivered: HashSet::new(),
            last: None,
            duplicates: 0,
            out_of_order: 0,
            gaps: Vec::new(),
        });
        inner.subs.len() - 1
    }

    /// Sets a subscription's start once (the first `subscribed` reply); later calls are ignored.
    pub fn set_start(&self, sub: SubId, start: StreamId) {
        let mut inner = self.inner.lock();
        let record = &mut inner.subs[sub];
        if record.start.is_none() {
            record.start = Some(start);
        }
    }

    /// Where `sub` must resume: after its last delivered offset, else after its start.
    pub fn resume_point(&self, sub: SubId) -> Option<StreamId> {
        self.inner.lock().subs[sub].resume_point()
    }

    /// Records one delivered message; `content` is its `(publisher, sequence)` if it has one.
    pub fn deliver(&self, sub: SubId, offset: StreamId, content: Option<(String, u64)>) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let record = &mut inner.subs[sub];
        if !record.delivered.insert(offset) {
            record.duplicates += 1;
            return;
        }
        if record.last.is_some_and(|last| offset < last) {
            record.out_of_order += 1;
        } else {
            record.last = Some(offset);
        }
        if let Some((publisher, seq)) = content {
            let key = (record.channel.clone(), publisher, seq);
            match inner.content.get(&key) {
                Some(&first) if first != offset => {
                    inner.double_stored.insert(key);
                }
                Some(_) => {}
                None => {
                    inner.content.insert(key, offset);
                }
            }
        }
    }

    /// Records a reported gap `(from, to]`.
    pub fn gap(&self, sub: SubId, from: StreamId, to: StreamId) {
        self.inner.lock().subs[sub].gaps.push((from, to));
    }

    /// Records an acknowledged job publish.
    pub fn job_published(&self, offset: StreamId) {
        self.inner.lock().jobs_published.insert(offset);
    }

    /// Records a job delivered to a worker.
    pub fn job_delivered(&self, offset: StreamId) {
        let mut inner = self.inner.lock();
        inner.jobs_delivered += 1;
        inner.jobs_seen.insert(offset);
    }

    /// Whether a worker received the job at least once.
    pub fn job_seen(&self, offset: StreamId) -> bool {
        self.inner.lock().jobs_seen.contains(&offset)
    }

    /// Records a job whose `ack` was answered.
    pub fn job_acked(&self, offset: StreamId) {
        self.inner.lock().jobs_acked.insert(offset);
    }

    /// Published jobs not acknowledged yet.
    pub fn jobs_unacked(&self) -> Vec<StreamId> {
        let inner = self.inner.lock();
        inner
            .jobs_published
            .iter()
            .filter(|o| !inner.jobs_acked.contains(o))
            .copied()
            .collect()
    }

    /// (published, delivered, acked) job counts.
    pub fn job_counts(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock();
        (
            inner.jobs_published.len() as u64,
            inner.jobs_delivered,
            inner
                .jobs_published
                .iter()
                .filter(|o| inner.jobs_acked.contains(o))
                .count() as u64,
        )
    }

    /// Subscriptions that have not yet received (or been told about) everything acknowledged
    /// on their channel.
    pub fn lagging(&self) -> Vec<Lag> {
        let inner = self.inner.lock();
        inner
            .subs
            .iter()
            .filter_map(|record| {
                let mut missing = missing(&inner.acked, record);
                let first_missing = missing.next()?;
                Some(Lag {
                    subscriber: record.subscriber.clone(),
                    channel: record.channel.clone(),
                    missing: 1 + missing.count(),
                    first_missing,
                    last_delivered: record.last,
                })
            })
            .collect()
    }

    /// The final check over every subscription.
    pub fn verdict(&self) -> Verdict {
        let inner = self.inner.lock();
        let mut verdict = Verdict {
            acknowledged: inner.acked.values().map(|s| s.len() as u64).sum(),
            double_stored: inner.double_stored.len() as u64,
            subscriptions: inner.subs.len(),
            ..Verdict::default()
        };
        for (id, record) in inner.subs.iter().enumerate() {
            verdict.delivered += record.delivered.len() as u64;
            verdict.duplicates += record.duplicates;
            verdict.out_of_order += record.out_of_order;
            verdict.gaps_reported += record.gaps.len() as u64;
            let Some(acked) = inner.acked.get(&record.channel) else {
                continue;
            };
            let start = record.start.unwrap_or_default();
            let mut lost_here = false;
            for &offset in acked.range(start.successor()..) {
                if record.delivered.contains(&offset) {
                    continue;
                }
                if record.covered(offset) {
                    verdict.covered_by_gaps += 1;
                    continue;
                }
                lost_here = true;
                verdict.losses.push(Loss {
                    sub: id,
                    kind: record.kind,
                    subscriber: record.subscriber.clone(),
                    channel: record.channel.clone(),
                    offset,
                });
            }
            if lost_here {
                verdict.subscriptions_with_loss += 1;
            }
        }
        verdict
    }

    /// How many subscriptions of `channel` received `offset` (proof that it was stored and
    /// served, for a loss elsewhere).
    pub fn delivered_to(&self, channel: &str, offset: StreamId) -> usize {
        self.inner
            .lock()
            .subs
            .iter()
            .filter(|r| r.channel == channel && r.delivered.contains(&offset))
            .count()
    }

    /// The gaps a subscription was told about (for the report).
    pub fn gaps_of(&self, sub: SubId) -> Vec<(StreamId, StreamId)> {
        self.inner.lock().subs[sub].gaps.clone()
    }
}

/// Acknowledged offsets of the record's channel after its start that it neither received nor
/// was told were removed.
fn missing<'a>(
    acked: &'a HashMap<String, BTreeSet<StreamId>>,
    record: &'a SubRecord,
) -> impl Iterator<Item = StreamId> + 'a {
    let start = record.start.unwrap_or_default();
    acked
        .get(&record.channel)
        .into_iter()
        .flat_map(move |set| set.range(start.successor()..))
        .copied()
        .filter(move |o| !record.delivered.contains(o) && !record.covered(*o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    #[test]
    fn finds_losses_duplicates_and_honours_gaps() {
        let ledger = Ledger::default();
        for ms in 1..=10 {
            ledger.acknowledged("c", id(ms));
        }
        let a = ledger.register("a", "ws", "c", Some(id(2)));
        for ms in [3, 4, 5, 5, 8, 7, 9, 10] {
            ledger.deliver(a, id(ms), Some(("p".into(), ms)));
        }
        ledger.gap(a, id(5), id(6));
        let b = ledger.register("b", "sse", "c", Some(id(8)));
        ledger.deliver(b, id(9), Some(("p".into(), 9)));
        // The same content under another offset: stored twice.
        ledger.deliver(b, id(10), Some(("p".into(), 9)));
        let v = ledger.verdict();
        assert_eq!(v.acknowledged, 10);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.out_of_order, 1); // 7 after 8
        assert_eq!(v.covered_by_gaps, 1); // 6
        assert!(v.losses.is_empty(), "{:?}", v.losses);
        assert_eq!(v.double_stored, 1);
        assert_eq!(ledger.resume_point(a), Some(id(10)));
        assert_eq!(ledger.delivered_to("c", id(9)), 2);
        assert_eq!(ledger.delivered_to("c", id(6)), 0);

        let c = ledger.register("c", "poll", "c", None);
        ledger.set_start(c, id(7));
        ledger.set_start(c, id(1)); // ignored: the first start counts
        ledger.deliver(c, id(9), None);
        let v = ledger.verdict();
        let lost: Vec<StreamId> = v.losses.iter().map(|l| l.offset).collect();
        assert_eq!(lost, vec![id(8), id(10)]);
        assert_eq!(v.subscriptions_with_loss, 1);
        let lag = ledger.lagging();
        assert_eq!(lag.len(), 1);
        assert_eq!((lag[0].subscriber.as_str(), lag[0].missing), ("c", 2));
        assert_eq!(lag[0].first_missing, id(8));
        assert_eq!(lag[0].last_delivered, Some(id(9)));
    }

    #[test]
    fn jobs_are_counted_once() {
        let ledger = Ledger::default();
        ledger.job_published(id(1));
        ledger.job_published(id(2));
        ledger.job_delivered(id(1));
        ledger.job_delivered(id(1));
        ledger.job_acked(id(1));
        ledger.job_acked(id(1));
        assert_eq!(ledger.job_counts(), (2, 2, 1));
        assert!(ledger.job_seen(id(1)));
        assert!(!ledger.job_seen(id(2)));
        assert_eq!(ledger.jobs_unacked(), vec![id(2)]);
    }
}
