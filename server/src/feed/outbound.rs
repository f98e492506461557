//! Turning the batches waiting for one connection into as few `messages` frames as possible.
//!
//! A batch delivered whole is sent as the frame the engine encoded once for every subscriber
//! (a reference-count increment). When several batches of one channel are waiting, or only a
//! suffix of a batch is new to this subscriber, their encoded items are spliced into one frame
//! without decoding anything. Merged frames stop growing at [`MERGE_LIMIT`] bytes.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use redistribute_protocol::StreamId;

use crate::engine::batch::messages_frame;
use crate::engine::Batch;

/// Merged frames are not grown past this many bytes of items.
pub const MERGE_LIMIT: usize = 256 * 1024;

struct Group {
    channel: Arc<str>,
    parts: Vec<(Arc<Batch>, usize)>,
    bytes: usize,
}

/// Collects deliveries of one queue drain; see the module docs.
#[derive(Default)]
pub struct Outbound {
    groups: Vec<Group>,
    entries: usize,
}

impl Outbound {
    /// Adds the entries of `batch` from index `from` on.
    pub fn push(&mut self, batch: Arc<Batch>, from: usize) {
        self.entries += batch.len() - from;
        let bytes = batch.items_from(from).len();
        let channel = batch.channel();
        match self
            .groups
            .iter_mut()
            .rev()
            .find(|g| Arc::ptr_eq(&g.channel, channel) || *g.channel == **channel)
        {
            Some(group) if group.bytes + bytes <= MERGE_LIMIT => {
                group.bytes += bytes;
                group.parts.push((batch, from));
            }
            _ => self.groups.push(Group {
                channel: channel.clone(),
                bytes,
                parts: vec![(batch, from)],
            }),
        }
    }

    /// Number of messages collected.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every entry, in order per channel: `(channel, offset, entry JSON)`.
    pub fn entries(&self) -> impl Iterator<Item = (&Arc<str>, StreamId, &str)> + '_ {
        self.groups.iter().flat_map(|group| {
            group.parts.iter().flat_map(move |(batch, from)| {
                (*from..batch.len()).map(move |i| (&group.channel, batch.ids()[i], batch.item(i)))
            })
        })
    }

    /// The frames to send, in order per channel; leaves the collector empty.
    pub fn take_frames(&mut self) -> impl Iterator<Item = Utf8Bytes> + '_ {
        self.groups
            .drain(..)
            .map(|group| match group.parts.as_slice() {
                [(batch, 0)] => batch.frame().clone(),
                parts => Utf8Bytes::from(messages_frame(
                    &group.channel,
                    parts.iter().map(|(b, from)| b.items_from(*from)),
                )),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::BatchBuilder;
    use redistribute_protocol::{decode_server, ServerFrame};

    fn batch(channel: &str, ids: &[u64]) -> Arc<Batch> {
        let mut b = BatchBuilder::new(channel.into());
        for &ms in ids {
            b.begin_entry(StreamId::new(ms, 0));
            b.field(true, "n", &ms.to_string());
            b.end_entry();
        }
        Arc::new(b.finish().unwrap())
    }

    fn offsets(frame: &str) -> (String, Vec<u64>) {
        let ServerFrame::Messages { channel, messages } = decode_server(frame).unwrap() else {
            panic!("not messages")
        };
        (channel, messages.iter().map(|m| m.offset.ms).collect())
    }

    #[test]
    fn whole_batch_reuses_the_shared_frame_and_merges_per_channel() {
        let a1 = batch("a", &[1, 2]);
        let mut out = Outbound::default();
        out.push(a1.clone(), 0);
        let frames: Vec<_> = out.take_frames().collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_str().as_ptr(), a1.frame().as_str().as_ptr());

        out.push(a1, 1);
        out.push(batch("b", &[7]), 0);
        out.push(batch("a", &[3, 4]), 0);
        let frames: Vec<_> = out.take_frames().map(|f| offsets(&f)).collect();
        assert_eq!(
            frames,
            vec![("a".into(), vec![2, 3, 4]), ("b".into(), vec![7])]
        );
        assert!(out.is_empty());
    }
}
