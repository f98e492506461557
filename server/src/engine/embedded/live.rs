//! Live delivery of the embedded engine: the dispatcher task that reads watched channels past
//! their cursors and hands the entries to the sink, and the bounded read both it and history
//! reads use.
//!
//! Invariant: one dispatcher, under the engine's one lock, so a channel's batches leave in
//! order and entries trimmed (or too large) before it reached them are reported as a gap.

use std::sync::Arc;

use parking_lot::Mutex;
use redistribute_protocol::StreamId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{State, Stream};
use crate::engine::{Batch, BatchBuilder, LiveSink, MAX_BATCH_BYTES, MAX_ENTRY_BYTES};

/// Reads dirty channels past their cursors and delivers them, in order.
pub(super) async fn dispatch(
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    sink: Arc<dyn LiveSink>,
    read_count: usize,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
        }
        loop {
            let batches: Vec<Batch> = {
                let mut st = state.lock();
                let dirty: Vec<Arc<str>> = st.dirty.drain().collect();
                let mut out = Vec::with_capacity(dirty.len());
                for channel in dirty {
                    let Some(&cursor) = st.cursors.get(&channel) else {
                        continue;
                    };
                    let Some(stream) = st.streams.get(&channel) else {
                        continue;
                    };
                    // Entries skipped past the cursor (trimmed, or too large) are covered by the
                    // batch's gap; with no entry to carry it the cursor stays, and the next
                    // read reports the same gap (or a later one) with the next entry.
                    let (batch, _) =
                        read_stream(stream, &channel, cursor, read_count, MAX_BATCH_BYTES);
                    let Some(batch) = batch else {
                        continue;
                    };
                    let last = batch.last_id();
                    let more = stream.last_id > last;
                    st.cursors.insert(channel.clone(), last);
                    if more {
                        st.dirty.insert(channel);
                    }
                    out.push(batch);
                }
                out
            };
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                sink.deliver(Arc::new(batch));
            }
        }
    }
}

/// Reads entries after `after`: at most `limit`, the encoded items at most `max_bytes` (at least
/// one entry), stopping before an entry larger than [`MAX_ENTRY_BYTES`] unless it comes first
/// (then it is skipped into the gap). Returns the batch (carrying the gap) and the gap.
pub(super) fn read_stream(
    stream: &Stream,
    channel: &Arc<str>,
    after: StreamId,
    limit: usize,
    max_bytes: usize,
) -> (Option<Batch>, Option<StreamId>) {
    let mut builder = BatchBuilder::new(channel.clone());
    if let Some(trimmed) = stream.trimmed_through.filter(|t| *t > after) {
        builder.set_gap_through(trimmed);
    }
    let start = stream.index_after(after);
    for entry in stream.entries.range(start..) {
        if builder.len() >= limit {
            break;
        }
        if entry.size > MAX_ENTRY_BYTES {
            if builder.is_empty() {
                builder.set_gap_through(entry.id);
                continue;
            }
            break;
        }
        if !builder.is_empty() && builder.items_len_with(entry.item.len()) > max_bytes {
            break;
        }
        builder.push_encoded(entry.id, &entry.item);
    }
    let gap = builder.gap_through();
    (builder.finish(), gap)
}

/// The newest entries of `stream` in `(after, through]` as one batch in offset order: at most
/// `limit` examined (undeliverable ones are left out but count), at most `max_bytes` of
/// encoded items (at least one entry).
pub(super) fn read_stream_back(
    stream: &Stream,
    channel: &Arc<str>,
    after: StreamId,
    through: StreamId,
    limit: usize,
    max_bytes: usize,
) -> Option<Batch> {
    let (low, high) = (stream.index_after(after), stream.index_after(through));
    let mut taken = Vec::new();
    let mut bytes = 0;
    for entry in stream.entries.range(low..high.max(low)).rev().take(limit) {
        if entry.size > MAX_ENTRY_BYTES {
            continue;
        }
        let cost = entry.item.len() + usize::from(!taken.is_empty());
        if !taken.is_empty() && bytes + cost > max_bytes {
            break;
        }
        bytes += cost;
        taken.push(entry);
    }
    let mut builder = BatchBuilder::new(channel.clone());
    for entry in taken.into_iter().rev() {
        builder.push_encoded(entry.id, &entry.item);
    }
    builder.finish()
}
