//! A reader's watched channels and how far each has been read, kept ready to become `XREAD`
//! arguments without allocating per key on every call (keys and IDs are shared `Bytes`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use fred::types::Value;
use redistribute_protocol::StreamId;

struct Cursor {
    channel: Arc<str>,
    key: Bytes,
    id: StreamId,
    id_arg: Bytes,
    /// Entries up to this ID were skipped (too large) with no batch after them to report it.
    gap: Option<StreamId>,
}

/// Watched channels of one reader; see the module docs.
#[derive(Default)]
pub(super) struct Cursors {
    entries: Vec<Cursor>,
    by_channel: HashMap<Arc<str>, usize>,
    by_key: HashMap<Bytes, usize>,
}

impl Cursors {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn contains(&self, channel: &str) -> bool {
        self.by_channel.contains_key(channel)
    }

    /// Starts reading `channel` (stream `key`) after `id`.
    pub(super) fn insert(&mut self, channel: Arc<str>, key: String, id: StreamId) {
        if self.contains(&channel) {
            return;
        }
        let key = Bytes::from(key);
        self.by_channel.insert(channel.clone(), self.entries.len());
        self.by_key.insert(key.clone(), self.entries.len());
        self.entries.push(Cursor {
            channel,
            key,
            id,
            id_arg: Bytes::from(id.to_string()),
            gap: None,
        });
    }

    /// How far `channel` was read, and the gap not reported yet.
    pub(super) fn state(&self, channel: &str) -> Option<(StreamId, Option<StreamId>)> {
        let &i = self.by_channel.get(channel)?;
        Some((self.entries[i].id, self.entries[i].gap))
    }

    /// Records the gap of `channel` not reported yet (`None` once a batch carried it).
    pub(super) fn set_gap(&mut self, channel: &str, gap: Option<StreamId>) {
        if let Some(&i) = self.by_channel.get(channel) {
            self.entries[i].gap = gap;
        }
    }

    /// Stops reading `channel`.
    pub(super) fn remove(&mut self, channel: &str) {
        let Some(index) = self.by_channel.remove(channel) else {
            return;
        };
        let removed = self.entries.swap_remove(index);
        self.by_key.remove(&removed.key);
        if let Some(moved) = self.entries.get(index) {
            self.by_channel.insert(moved.channel.clone(), index);
            self.by_key.insert(moved.key.clone(), index);
        }
    }

    /// The channel whose stream key is `key`.
    pub(super) fn channel_for_key(&self, key: &[u8]) -> Option<&Arc<str>> {
        self.by_key.get(key).map(|&i| &self.entries[i].channel)
    }

    /// Records that `channel` was read through `id`.
    pub(super) fn advance(&mut self, channel: &str, id: StreamId) {
        if let Some(&i) = self.by_channel.get(channel) {
            let cursor = &mut self.entries[i];
            if id > cursor.id {
                cursor.id = id;
                cursor.id_arg = Bytes::from(id.to_string());
            }
        }
    }

    /// The last ID read of `channel`, if it is watched.
    pub(super) fn get(&self, channel: &str) -> Option<StreamId> {
        self.by_channel.get(channel).map(|&i| self.entries[i].id)
    }

    /// Each watched channel and the last ID read of it.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, StreamId)> {
        self.entries.iter().map(|c| (&*c.channel, c.id))
    }

    /// `COUNT n BLOCK ms STREAMS key… id…`.
    pub(super) fn xread_args(&self, count: u64, block_ms: u64) -> Vec<Value> {
        let mut args = Vec::with_capacity(5 + 2 * self.entries.len());
        args.push(Value::from_static_str("COUNT"));
        args.push(Value::Integer(count as i64));
        args.push(Value::from_static_str("BLOCK"));
        args.push(Value::Integer(block_ms as i64));
        args.push(Value::from_static_str("STREAMS"));
        args.extend(self.entries.iter().map(|c| Value::Bytes(c.key.clone())));
        args.extend(self.entries.iter().map(|c| Value::Bytes(c.id_arg.clone())));
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_keep_indexes_consistent() {
        let mut c = Cursors::default();
        for name in ["a", "b", "c"] {
            c.insert(name.into(), format!("rd:{name}"), StreamId::new(1, 0));
        }
        c.remove("a");
        assert_eq!(c.channel_for_key(b"rd:c").map(|s| &**s), Some("c"));
        assert_eq!(c.channel_for_key(b"rd:a"), None);
        c.advance("c", StreamId::new(5, 1));
        c.advance("c", StreamId::new(2, 0));
        let args = c.xread_args(10, 100);
        let texts: Vec<String> = args
            .iter()
            .map(|v| v.as_str().map(|s| s.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(&texts[5..], &["rd:c", "rd:b", "5-1", "1-0"]);
    }
}
