//! [`Batch`]: consecutive entries of one channel, encoded once as a complete `messages` frame.
//!
//! Fan-out hands the same `Batch` (behind an `Arc`) to every subscriber, so a message is
//! serialized once per instance however many clients receive it. A subscriber that already has
//! some of the entries (at the history/live seam) takes a suffix of the encoded items, which is
//! a plain slice of the same buffer.

use std::sync::Arc;

use redistribute_protocol::StreamId;

use super::shared_text::SharedText;

/// Closing bytes of every `messages` frame.
const FRAME_END: &str = "]}";

/// Batches are cut by bytes: a producer starts a new batch before an entry would push the
/// encoded items past this (one entry alone may exceed it, up to its encoded size).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Consecutive entries of one channel with their `messages` frame encoded once.
#[derive(Debug, Clone)]
pub struct Batch {
    channel: Arc<str>,
    ids: Vec<StreamId>,
    /// Byte offset in `frame` where each entry's JSON object starts.
    starts: Vec<u32>,
    frame: SharedText,
    gap_through: Option<StreamId>,
}

impl Batch {
    /// For live batches: entries of the channel after the previous live batch, up to and
    /// including this ID, were not delivered by the live feed (trimmed before the reader read
    /// them, or skipped as undeliverable). Always lower than the batch's first entry.
    pub fn gap_through(&self) -> Option<StreamId> {
        self.gap_through
    }

    /// The batch with its gap raised to at least `gap` (lowered below the first entry; a gap
    /// at or below `0-0` is none).
    pub fn with_gap_through(mut self, gap: Option<StreamId>) -> Batch {
        let below = self.first_id().predecessor().unwrap_or(StreamId::ZERO);
        self.gap_through = self
            .gap_through
            .max(gap)
            .map(|g| g.min(below))
            .filter(|g| *g > StreamId::ZERO);
        self
    }

    /// Bytes of the encoded items (the comma-separated JSON objects, without the frame's
    /// envelope): what [`MAX_BATCH_BYTES`] and catch-up byte limits bound.
    pub fn items_len(&self) -> usize {
        self.frame.len() - FRAME_END.len() - self.starts[0] as usize
    }

    /// The channel the entries belong to.
    pub fn channel(&self) -> &Arc<str> {
        &self.channel
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch has no entries (never true for batches built by [`BatchBuilder`]).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Offset of the last entry.
    pub fn last_id(&self) -> StreamId {
        *self.ids.last().expect("batches are never empty")
    }

    /// Offset of the first entry.
    pub fn first_id(&self) -> StreamId {
        self.ids[0]
    }

    /// Offsets of all entries, ascending.
    pub fn ids(&self) -> &[StreamId] {
        &self.ids
    }

    /// The complete `messages` frame with every entry.
    pub fn frame(&self) -> &SharedText {
        &self.frame
    }

    /// Index of the first entry with an offset greater than `after`.
    pub fn first_index_after(&self, after: StreamId) -> usize {
        self.ids.partition_point(|id| *id <= after)
    }

    /// The comma-separated JSON objects of the entries from `index` on (no brackets).
    pub fn items_from(&self, index: usize) -> &str {
        let start = self.starts[index] as usize;
        &self.frame.as_str()[start..self.frame.len() - FRAME_END.len()]
    }

    /// The comma-separated JSON objects of the entries in `from..to` (no brackets).
    pub fn items_range(&self, from: usize, to: usize) -> &str {
        let start = self.starts[from] as usize;
        let end = match self.starts.get(to) {
            Some(&next) => next as usize - 1, // the comma between items
            None => self.frame.len() - FRAME_END.len(),
        };
        &self.frame.as_str()[start..end]
    }

    /// The JSON object of entry `index`: `{"offset":…,"fields":{…}}`.
    pub fn item(&self, index: usize) -> &str {
        let start = self.starts[index] as usize;
        let end = match self.starts.get(index + 1) {
            Some(&next) => next as usize - 1, // the comma between items
            None => self.frame.len() - FRAME_END.len(),
        };
        &self.frame.as_str()[start..end]
    }
}

/// Appends the JSON text of `s` as a string literal.
fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    // serde_json escapes exactly as JSON requires; writing into a String cannot fail.
    let escaped = serde_json::to_string(s).expect("strings always serialize");
    let _ = out.write_str(&escaped);
}

/// Whether `text` is one complete JSON value.
/// Whether `text` is one complete JSON value nested at most [`MAX_VALUE_DEPTH`] deep.
fn is_json(text: &str) -> bool {
    json_depth(text) <= MAX_VALUE_DEPTH
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Deepest nesting of arrays and objects inside one field value (`1` is 0, `[1]` is 1).
/// Publishes over it are refused with `bad_request`; a deeper value written by another producer
/// is delivered as a JSON string. A `messages` frame then nests at most this + 4 levels, well
/// within what JSON decoders accept (serde_json: 128).
pub(crate) const MAX_VALUE_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
/// count). Text that is not JSON gives some number; callers also parse it.
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Builds a [`Batch`] entry by entry.
#[derive(Debug)]
pub struct BatchBuilder {
    channel: Arc<str>,
    ids: Vec<StreamId>,
    starts: Vec<u32>,
    out: String,
    gap_through: Option<StreamId>,
}

impl BatchBuilder {
    /// Starts a batch for `channel` (a validated name: no JSON escaping needed).
    pub fn new(channel: Arc<str>) -> Self {
        let mut out = String::with_capacity(64 + channel.len());
        out.push_str("{\"type\":\"messages\",\"channel\":\"");
        out.push_str(&channel);
        out.push_str("\",\"messages\":[");
        BatchBuilder {
            channel,
            ids: Vec::new(),
            starts: Vec::new(),
            out,
            gap_through: None,
        }
    }

    /// Marks entries up to and including `id` as not delivered (see [`Batch::gap_through`]);
    /// a later call keeps the higher ID. [`BatchBuilder::finish`] lowers it below the first
    /// entry if needed.
    pub fn set_gap_through(&mut self, id: StreamId) {
        self.gap_through = Some(self.gap_through.map_or(id, |g| g.max(id)));
    }

    /// The gap recorded so far.
    pub fn gap_through(&self) -> Option<StreamId> {
        self.gap_through
    }

    /// Bytes of the encoded items so far (see [`Batch::items_len`]).
    pub fn items_len(&self) -> usize {
        self.starts
            .first()
            .map_or(0, |&s| self.out.len() - s as usize)
    }

    /// Bytes the encoded items would have with one more item of `item_len` bytes.
    pub fn items_len_with(&self, item_len: usize) -> usize {
        let sep = usize::from(!self.ids.is_empty());
        self.items_len() + sep + item_len
    }

    /// Removes the last entry (and its separator), e.g. one that turned out too large.
    pub fn pop_entry(&mut self) {
        if let Some(start) = self.starts.pop() {
            self.ids.pop();
            let cut = if self.ids.is_empty() {
                start as usize
            } else {
                start as usize - 1 // the comma before it
            };
            self.out.truncate(cut);
        }
    }

    /// Byte length of the last entry's encoded JSON object (0 when there is none); valid
    /// after [`BatchBuilder::end_entry`].
    pub fn last_item_len(&self) -> usize {
        self.starts
            .last()
            .map_or(0, |&s| self.out.len() - s as usize)
    }

    /// Starts an entry; follow with [`BatchBuilder::field`] calls and [`BatchBuilder::end_entry`].
    pub fn begin_entry(&mut self, id: StreamId) {
        if !self.ids.is_empty() {
            self.out.push(',');
        }
        self.ids.push(id);
        self.starts.push(self.out.len() as u32);
        use std::fmt::Write;
        let _ = write!(self.out, "{{\"offset\":\"{id}\",\"fields\":{{");
    }

    /// Adds a field whose value is stored JSON text; text that is not valid JSON (written by
    /// another producer) is delivered as a JSON string.
    pub fn field(&mut self, first: bool, name: &str, stored_value: &str) {
        if !first {
            self.out.push(',');
        }
        push_json_str(&mut self.out, name);
        self.out.push(':');
        if is_json(stored_value) {
            self.out.push_str(stored_value.trim());
        } else {
            push_json_str(&mut self.out, stored_value);
        }
    }

    /// Adds a field whose value is already known to be one valid JSON value.
    pub fn field_json(&mut self, first: bool, name: &str, json: &str) {
        if !first {
            self.out.push(',');
        }
        push_json_str(&mut self.out, name);
        self.out.push(':');
        self.out.push_str(json);
    }

    /// Ends the current entry.
    pub fn end_entry(&mut self) {
        self.out.push_str("}}");
    }

    /// Appends an already-encoded entry (a JSON object from another batch).
    pub fn push_encoded(&mut self, id: StreamId, item: &str) {
        if !self.ids.is_empty() {
            self.out.push(',');
        }
        self.ids.push(id);
        self.starts.push(self.out.len() as u32);
        self.out.push_str(item);
    }

    /// Number of entries so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Finishes the frame; `None` when no entry was added.
    pub fn finish(mut self) -> Option<Batch> {
        if self.ids.is_empty() {
            return None;
        }
        self.out.push_str(FRAME_END);
        let first = self.ids[0];
        let gap_through = self
            .gap_through
            .map(|g| match first.predecessor() {
                Some(before) => g.min(before),
                None => StreamId::ZERO,
            })
            .filter(|g| *g > StreamId::ZERO);
        Some(Batch {
            channel: self.channel,
            ids: self.ids,
            starts: self.starts,
            frame: SharedText::new(self.out),
            gap_through,
        })
    }

    /// Finishes the entries so far as one batch and starts a new builder for the channel
    /// (for cutting a long run of entries into batches of at most [`MAX_BATCH_BYTES`]).
    pub fn cut(&mut self) -> Option<Batch> {
        let fresh = BatchBuilder::new(self.channel.clone());
        std::mem::replace(self, fresh).finish()
    }
}

/// Builds the `messages` frame text for the given item lists of one channel.
pub(crate) fn messages_frame<'a>(
    channel: &str,
    items: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"type\":\"messages\",\"channel\":\"");
    out.push_str(channel);
    out.push_str("\",\"messages\":[");
    for (i, part) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(part);
    }
    out.push_str(FRAME_END);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redistribute_protocol::{decode_server, ServerFrame};

    fn sample() -> Batch {
        let mut b = BatchBuilder::new("chat".into());
        b.begin_entry(StreamId::new(1, 0));
        b.field(true, "text", "\"hi\"");
        b.field(false, "n", "42");
        b.end_entry();
        b.begin_entry(StreamId::new(2, 0));
        b.field(true, "raw", "not json {");
        b.field(false, "we\"ird", "{\"a\":[1,2]}");
        b.end_entry();
        b.finish().unwrap()
    }

    #[test]
    fn frame_is_a_valid_messages_frame() {
        let batch = sample();
        let ServerFrame::Messages { channel, messages } = decode_server(batch.frame()).unwrap()
        else {
            panic!("not a messages frame");
        };
        assert_eq!(channel, "chat");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].fields["text"], "hi");
        assert_eq!(messages[0].fields["n"], 42);
        assert_eq!(messages[1].fields["raw"], "not json {");
        assert_eq!(messages[1].fields["we\"ird"]["a"][1], 2);
    }

    #[test]
    fn suffix_after_an_offset() {
        let batch = sample();
        assert_eq!(batch.first_index_after(StreamId::new(0, 5)), 0);
        assert_eq!(batch.first_index_after(StreamId::new(1, 0)), 1);
        assert_eq!(batch.first_index_after(StreamId::new(9, 0)), 2);
        let frame = messages_frame("chat", [batch.items_from(1)]);
        let ServerFrame::Messages { messages, .. } = decode_server(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].offset, StreamId::new(2, 0));
        let first: serde_json::Value = serde_json::from_str(batch.item(0)).unwrap();
        assert_eq!(first["fields"]["n"], 42);
        let second: serde_json::Value = serde_json::from_str(batch.item(1)).unwrap();
        assert_eq!(second["offset"], "2-0");
    }

    #[test]
    fn values_nested_deeper_than_the_limit_are_delivered_as_strings() {
        let at_limit = format!(
            "{}1{}",
            "[".repeat(MAX_VALUE_DEPTH),
            "]".repeat(MAX_VALUE_DEPTH)
        );
        let past = format!("[{at_limit}]");
        let tricky = format!("\"{}\"", "[{\\\"".repeat(200));
        assert_eq!(json_depth(&at_limit), MAX_VALUE_DEPTH);
        assert_eq!(json_depth(&tricky), 0);
        let mut b = BatchBuilder::new("c".into());
        b.begin_entry(StreamId::new(1, 0));
        b.field(true, "ok", &at_limit);
        b.field(false, "deep", &past);
        b.field(false, "s", &tricky);
        b.end_entry();
        let batch = b.finish().unwrap();
        let ServerFrame::Messages { messages, .. } = decode_server(batch.frame()).unwrap() else {
            panic!("not a messages frame");
        };
        assert!(messages[0].fields["ok"].is_array());
        assert_eq!(messages[0].fields["deep"], serde_json::Value::String(past));
        assert!(messages[0].fields["s"].is_string());
    }

    #[test]
    fn gaps_stay_below_the_first_entry_and_popped_entries_leave_a_valid_frame() {
        let mut b = BatchBuilder::new("c".into());
        b.set_gap_through(StreamId::new(7, 0));
        b.set_gap_through(StreamId::new(3, 0)); // a lower one never lowers it
        b.push_encoded(StreamId::new(5, 2), "{\"offset\":\"5-2\",\"fields\":{}}");
        assert_eq!(b.items_len(), b.last_item_len());
        b.push_encoded(
            StreamId::new(9, 0),
            "{\"offset\":\"9-0\",\"fields\":{\"a\":1}}",
        );
        let two = b.items_len();
        b.pop_entry();
        assert_eq!(b.items_len_with(two - b.items_len() - 1), two);
        let batch = b.finish().unwrap();
        // Clamped to just below the first entry.
        assert_eq!(batch.gap_through(), Some(StreamId::new(5, 1)));
        assert_eq!(batch.ids(), [StreamId::new(5, 2)]);
        assert_eq!(batch.items_len(), batch.item(0).len());
        assert!(decode_server(batch.frame()).is_ok());
        // Nothing below the first entry: no gap.
        let mut b = BatchBuilder::new("c".into());
        b.set_gap_through(StreamId::new(9, 9));
        b.push_encoded(StreamId::new(0, 1), "{\"offset\":\"0-1\",\"fields\":{}}");
        assert_eq!(b.finish().unwrap().gap_through(), None);
    }

    #[test]
    fn empty_builder_gives_none() {
        assert!(BatchBuilder::new("c".into()).finish().is_none());
    }
}
