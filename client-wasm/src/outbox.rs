//! The offline outbox: publishes made while disconnected, persisted until the server has
//! acknowledged them.
//!
//! One storage entry per set of targets, under `redistribute:outbox:v1:<scope>` (the format
//! version is part of the key; `<scope>` is a hash of the targets, see [`scope`]), holding JSON:
//!
//! ```json
//! {"v":1,"entries":[{"id":"ob-9f…-1","channel":"chat","fields":{"text":"hi"},"createdAt":1700000000000}]}
//! ```
//!
//! Entries are kept in the order they were made and sent in that order. An entry's `id` is also
//! its idempotency key: it never changes, so an entry sent, reloaded and sent again is stored
//! by the server once (within the server's idempotency TTL, 10 minutes by default). The outbox
//! is bounded by a number of entries; a push beyond it fails with [`OutboxError::Full`].
//!
//! Every operation re-reads the stored entry, so tabs of one origin sharing the outbox see each
//! other's changes. A stored value that cannot be parsed is treated as empty (and overwritten
//! by the next write) rather than blocking every publish.

use redistribute_protocol::Fields;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::storage::{Storage, StorageError};

/// The version of the stored format, also part of [`PREFIX`].
pub const FORMAT_VERSION: u32 = 1;
/// The key prefix of outboxes; the scope follows.
pub const PREFIX: &str = "redistribute:outbox:v1:";
/// How many messages may wait by default.
pub const DEFAULT_LIMIT: usize = 1000;

/// A message waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique id, also the idempotency key of the publish.
    pub id: String,
    /// Channel name.
    pub channel: String,
    /// The message.
    pub fields: Fields,
    /// `MAXLEN ~` hint of the publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxlen: Option<u64>,
    /// When it was made (ms since the epoch).
    #[serde(rename = "createdAt")]
    pub created_at: f64,
}

/// Why an outbox operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OutboxError {
    /// The outbox holds its maximum number of messages.
    #[error("the outbox is full ({0} messages wait)")]
    Full(usize),
    /// The storage refused the write (quota) or cannot be used.
    #[error("the outbox cannot be stored: {0}")]
    Storage(#[from] StorageError),
}

#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    entries: Vec<Entry>,
}

/// A short stable name for a list of targets (64-bit FNV-1a, hex): the outbox key suffix and
/// the name of the tabs' lock and channel.
pub fn scope(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The persisted outbox of one scope.
#[derive(Debug)]
pub struct Outbox<S> {
    storage: S,
    key: String,
    limit: usize,
}

impl<S: Storage> Outbox<S> {
    /// The outbox of `scope` in `storage`, holding at most `limit` messages.
    pub fn new(storage: S, scope: &str, limit: usize) -> Self {
        Outbox {
            storage,
            key: format!("{PREFIX}{scope}"),
            limit,
        }
    }

    /// The storage key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The waiting messages, oldest first.
    pub fn list(&self) -> Vec<Entry> {
        let text = self.storage.get(&self.key).ok().flatten();
        text.and_then(|t| serde_json::from_str::<Stored>(&t).ok())
            .filter(|s| s.v == FORMAT_VERSION)
            .map(|s| s.entries)
            .unwrap_or_default()
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn save(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return self.storage.remove(&self.key);
        }
        let text = serde_json::to_string(&Stored {
            v: FORMAT_VERSION,
            entries,
        })
        .expect("entries always serialize");
        self.storage.set(&self.key, &text)
    }

    /// Appends a message; returns the new number of waiting messages.
    pub fn push(&self, entry: Entry) -> Result<usize, OutboxError> {
        let mut entries = self.list();
        if entries.len() >= self.limit {
            return Err(OutboxError::Full(entries.len()));
        }
        entries.push(entry);
        let n = entries.len();
        self.save(entries)?;
        Ok(n)
    }

    /// Removes a message; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let mut entries = self.list();
        let before = entries.len();
        entries.retain(|e| e.id != id);
        if entries.len() == before {
            return false;
        }
        // A failed removal leaves the entry: it is sent again, and the server's idempotency
        // turns that into the first offset.
        self.save(entries).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    fn entry(id: &str) -> Entry {
        let mut fields = Fields::new();
        fields.insert("text".into(), id.into());
        Entry {
            id: id.into(),
            channel: "c".into(),
            fields,
            maxlen: None,
            created_at: 1.0,
        }
    }

    #[test]
    fn keeps_order_and_survives_a_new_instance() {
        let storage = MemoryStorage::new();
        let outbox = Outbox::new(&storage, "s", 10);
        assert!(outbox.is_empty());
        for id in ["a", "b", "c"] {
            outbox.push(entry(id)).unwrap();
        }
        assert!(outbox.remove("b"));
        assert!(!outbox.remove("b"));
        let again = Outbox::new(&storage, "s", 10);
        let ids: Vec<String> = again.list().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(again.list()[0], entry("a"));
        assert!(storage
            .get("redistribute:outbox:v1:s")
            .unwrap()
            .unwrap()
            .contains(r#""createdAt":1.0"#));
        assert!(again.remove("a") && again.remove("c"));
        assert_eq!(storage.get("redistribute:outbox:v1:s").unwrap(), None);
    }

    #[test]
    fn is_bounded_and_reports_a_full_quota() {
        let storage = MemoryStorage::new();
        let outbox = Outbox::new(&storage, "s", 2);
        outbox.push(entry("a")).unwrap();
        assert_eq!(outbox.push(entry("b")), Ok(2));
        assert_eq!(outbox.push(entry("c")), Err(OutboxError::Full(2)));
        let tight = MemoryStorage::with_quota(10);
        let outbox = Outbox::new(&tight, "s", 2);
        assert!(matches!(
            outbox.push(entry("a")),
            Err(OutboxError::Storage(StorageError::QuotaExceeded))
        ));
    }

    #[test]
    fn unreadable_or_other_versions_count_as_empty() {
        let storage = MemoryStorage::new();
        storage
            .set("redistribute:outbox:v1:s", "{not json")
            .unwrap();
        let outbox = Outbox::new(&storage, "s", 10);
        assert!(outbox.is_empty());
        outbox.push(entry("a")).unwrap();
        assert_eq!(outbox.len(), 1);
        storage
            .set("redistribute:outbox:v1:s", r#"{"v":2,"entries":[]}"#)
            .unwrap();
        assert!(outbox.is_empty());
    }

    #[test]
    fn scopes_differ_by_targets() {
        assert_eq!(scope(&["ws://a"]), scope(&["ws://a"]));
        assert_ne!(scope(&["ws://a", "ws://b"]), scope(&["ws://ab"]));
        assert_eq!(scope(&["x"]).len(), 16);
    }
}
