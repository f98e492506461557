//! Turning the batches waiting for one connection into as few `messages` frames as possible.
//!
//! A batch delivered whole is sent as the frame the engine encoded once for every subscriber
//! (a reference-count increment). When several batches of one channel are waiting, or only a
//! suffix of a batch is new to this subscriber, their encoded items are spliced into one frame
//! without decoding anything. Merged frames stop growing at [`MERGE_LIMIT`] bytes. Gaps (entries
//! a subscription cannot receive) keep their place among a channel's messages.
//!
//! Frame size: a batch larger than [`MERGE_LIMIT`] (whoever produced it, a consumer-group page
//! say) is split into frames of at most that or of one entry, entries are at most
//! [`crate::engine::MAX_ENCODED_ENTRY_BYTES`], and merging never passes [`MERGE_LIMIT`], so no
//! frame exceeds [`MAX_SERVER_FRAME`].

use std::sync::Arc;

use redistribute_protocol::StreamId;

use crate::engine::batch::messages_frame;
use crate::engine::{Batch, MAX_BATCH_BYTES, MAX_ENCODED_ENTRY_BYTES};

/// Merged frames are not grown past this many bytes of items.
pub(crate) const MERGE_LIMIT: usize = 256 * 1024;

/// No frame the server sends is larger than this (the documented maximum frame size).
pub(crate) const MAX_SERVER_FRAME: usize = 2 << 20;

const _: () = assert!(
    MERGE_LIMIT + MAX_ENCODED_ENTRY_BYTES + 1024 <= MAX_SERVER_FRAME
        && MAX_BATCH_BYTES + MAX_ENCODED_ENTRY_BYTES + 1024 <= MAX_SERVER_FRAME
);

enum Parts {
    /// Entries of batches, each an index range `from..to`.
    Messages(Vec<(Arc<Batch>, usize, usize)>),
    /// Entries in `(from, to]` are missed.
    Gap(StreamId, StreamId),
    /// A frame made elsewhere: a `presence_event` (WebSocket only; not a [`Delivery`]).
    Text(String),
}

struct Group {
    channel: Arc<str>,
    parts: Parts,
    bytes: usize,
}

/// One thing to deliver, as [`Outbound::deliveries`] yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// A message: its channel, offset and entry JSON (`{"offset":…,"fields":{…}}`).
    Message(&'a Arc<str>, StreamId, &'a str),
    /// The channel's entries in `(from, to]` are missed.
    Gap(&'a Arc<str>, StreamId, StreamId),
}

/// One frame to send, as [`Outbound::take_frames`] yields it.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A whole batch: its frame, encoded once, is shared by every subscriber it goes to (a
    /// transport converts it with [`crate::engine::SharedText::wire`], once per batch).
    Shared(Arc<Batch>),
    /// A frame made for this connection (merged batches, a suffix, a gap).
    Owned(String),
}

impl Frame {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        match self {
            Frame::Shared(batch) => batch.frame().as_str(),
            Frame::Owned(text) => text,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Whether the frame is empty (never, for frames of [`Outbound`]).
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

/// Collects deliveries of one queue drain; see the module docs.
#[derive(Default)]
pub struct Outbound {
    groups: Vec<Group>,
    entries: usize,
    bytes: usize,
}

impl Outbound {
    /// Adds the entries of `batch` from index `from` on. A batch larger than [`MERGE_LIMIT`]
    /// (whoever produced it) is split into frames of at most that, or of one entry.
    pub fn push(&mut self, batch: Arc<Batch>, from: usize) {
        let len = batch.len();
        if batch.items_from(from).len() <= MERGE_LIMIT {
            return self.push_range(batch, from, len);
        }
        let (mut start, mut bytes) = (from, 0);
        for i in from..len {
            let item = batch.item(i).len() + 1;
            if i > start && bytes + item > MERGE_LIMIT {
                self.push_range(batch.clone(), start, i);
                (start, bytes) = (i, 0);
            }
            bytes += item;
        }
        self.push_range(batch, start, len);
    }

    fn push_range(&mut self, batch: Arc<Batch>, from: usize, to: usize) {
        self.entries += to - from;
        let bytes = batch.items_range(from, to).len();
        self.bytes += bytes;
        let channel = batch.channel();
        match self
            .groups
            .iter_mut()
            .rev()
            .find(|g| Arc::ptr_eq(&g.channel, channel) || *g.channel == **channel)
        {
            Some(Group {
                parts: Parts::Messages(parts),
                bytes: group_bytes,
                ..
            }) if *group_bytes + bytes <= MERGE_LIMIT => {
                *group_bytes += bytes;
                parts.push((batch, from, to));
            }
            _ => self.groups.push(Group {
                channel: channel.clone(),
                bytes,
                parts: Parts::Messages(vec![(batch, from, to)]),
            }),
        }
    }

    /// Adds a gap: the channel's entries in `(from, to]` are missed. It is delivered after
    /// what was pushed for the channel before and before what is pushed after.
    pub fn push_gap(&mut self, channel: Arc<str>, from: StreamId, to: StreamId) {
        self.groups.push(Group {
            channel,
            parts: Parts::Gap(from, to),
            bytes: 0,
        });
    }

    /// Adds a frame made elsewhere (a `presence_event`), sent after what was pushed before.
    /// Only [`Outbound::take_frames`] yields it (the HTTP transports ask for no such events).
    pub fn push_text(&mut self, channel: Arc<str>, text: String) {
        self.groups.push(Group {
            channel,
            parts: Parts::Text(text),
            bytes: 0,
        });
    }

    /// Bytes of encoded entries collected.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of messages collected.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every message and gap, in order per channel.
    pub fn deliveries(&self) -> impl Iterator<Item = Delivery<'_>> + '_ {
        self.groups.iter().flat_map(|group| {
            let channel = &group.channel;
            let (parts, gap) = match &group.parts {
                Parts::Messages(parts) => (parts.as_slice(), None),
                Parts::Gap(from, to) => (&[][..], Some(Delivery::Gap(channel, *from, *to))),
                Parts::Text(_) => (&[][..], None),
            };
            gap.into_iter()
                .chain(parts.iter().flat_map(move |(batch, from, to)| {
                    (*from..*to)
                        .map(move |i| Delivery::Message(channel, batch.ids()[i], batch.item(i)))
                }))
        })
    }

    /// The frames to send, in order per channel; leaves the collector empty.
    pub fn take_frames(&mut self) -> impl Iterator<Item = Frame> + '_ {
        self.entries = 0;
        self.bytes = 0;
        self.groups.drain(..).map(|group| match group.parts {
            Parts::Messages(parts) => frame_of(&group.channel, parts),
            Parts::Gap(from, to) => Frame::Owned(gap_frame(&group.channel, from, to)),
            Parts::Text(text) => Frame::Owned(text),
        })
    }
}

/// The frame of a channel's batch parts: a whole batch alone is sent as its shared frame (the
/// batch moves in, no reference count is taken); anything else is spliced into one frame.
fn frame_of(channel: &str, mut parts: Vec<(Arc<Batch>, usize, usize)>) -> Frame {
    if let [(batch, 0, to)] = parts.as_slice() {
        if *to == batch.len() {
            if let Some((batch, _, _)) = parts.pop() {
                return Frame::Shared(batch);
            }
        }
    }
    Frame::Owned(messages_frame(
        channel,
        parts.iter().map(|(b, from, to)| b.items_range(*from, *to)),
    ))
}

/// The `gap` frame: the channel's entries in `(from, to]` are missed.
pub(crate) fn gap_frame(channel: &str, from: StreamId, to: StreamId) -> String {
    // Channel names are validated: no JSON escaping needed.
    format!("{{\"type\":\"gap\",\"channel\":\"{channel}\",\"from\":\"{from}\",\"to\":\"{to}\"}}")
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
        let frames: Vec<_> = out.take_frames().map(|f| offsets(f.as_str())).collect();
        assert_eq!(
            frames,
            vec![("a".into(), vec![2, 3, 4]), ("b".into(), vec![7])]
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_batch_larger_than_the_merge_limit_is_split_into_bounded_frames() {
        let mut b = BatchBuilder::new("big".into());
        let value = format!("\"{}\"", "v".repeat(100_000));
        for ms in 1..=12 {
            b.begin_entry(StreamId::new(ms, 0));
            b.field(true, "v", &value);
            b.end_entry();
        }
        let big = Arc::new(b.finish().unwrap());
        assert!(big.frame().len() > 1 << 20);
        let mut out = Outbound::default();
        out.push(big, 1);
        let frames: Vec<_> = out.take_frames().collect();
        assert!(frames.len() > 1);
        let mut got = Vec::new();
        for frame in &frames {
            assert!(
                frame.len() <= MERGE_LIMIT + 1024,
                "a frame of {} bytes",
                frame.len()
            );
            got.extend(offsets(frame.as_str()).1);
        }
        assert_eq!(got, (2..=12).collect::<Vec<_>>());
        // A small batch is still sent as its shared frame.
        let small = batch("s", &[1, 2]);
        out.push(small.clone(), 0);
        let frames: Vec<_> = out.take_frames().collect();
        assert_eq!(frames[0].as_str().as_ptr(), small.frame().as_str().as_ptr());
    }

    #[test]
    fn a_gap_keeps_its_place_among_the_channel_messages() {
        let mut out = Outbound::default();
        out.push(batch("a", &[1]), 0);
        out.push_gap("a".into(), StreamId::new(1, 0), StreamId::new(5, 0));
        out.push(batch("a", &[6]), 0);
        let mut deliveries = Vec::new();
        for d in out.deliveries() {
            deliveries.push(match d {
                Delivery::Message(_, offset, _) => format!("m{}", offset.ms),
                Delivery::Gap(_, from, to) => format!("g{}-{}", from.ms, to.ms),
            });
        }
        assert_eq!(deliveries, ["m1", "g1-5", "m6"]);
        let frames: Vec<_> = out.take_frames().collect();
        assert_eq!(frames.len(), 3);
        let gap = decode_server(frames[1].as_str()).unwrap();
        assert_eq!(
            gap,
            ServerFrame::Gap {
                channel: "a".into(),
                from: StreamId::new(1, 0),
                to: StreamId::new(5, 0)
            }
        );
    }
}
