//! The offline outbox: publishes made while disconnected, persisted until the server has
//! acknowledged them.
//!
//! One storage entry per message, under `redistribute:<namespace>:outbox:v2:<id>` (see
//! [`crate::namespace`]; the format version is part of the key), holding JSON:
//!
//! ```json
//! {"v":2,"o":1700000000000,"seq":3,"id":"ob-9f…-1","channel":"chat","fields":{"text":"hi"},"createdAt":1700000000000}
//! ```
//!
//! A message's entry is written once (when it is queued) and removed once (when the server
//! acknowledged or refused it, or it was cancelled); nothing ever rewrites a list shared with
//! other tabs, so a tab removing one message can never erase or revive another tab's. The
//! order is the entries' `(o, seq, id)`: `o` is the creation time, raised when needed to that
//! of the last message waiting (or this client's previous one), and `seq` orders messages of
//! the same `o`, so every tab lists (and sends) the messages in the same order, a message
//! queued after another waits behind it, and one client's go in the order they were made.
//!
//! An entry's `id` is also its idempotency key: it never changes, so an entry sent, reloaded
//! and sent again is stored by the server once (within the server's idempotency TTL, 10 minutes
//! by default). Queuing an id that already waits keeps the first entry. The outbox is bounded
//! by a number of messages; a push beyond it fails with [`OutboxError::Full`] (tabs pushing at
//! the same instant may each see room for the last one, so the bound can be passed by a few).
//! An entry that cannot be parsed is skipped (and left alone).
//!
//! When a message is done, the client that sent (or cancelled) it first writes its
//! [`Outcome`] under `redistribute:<namespace>:outbox-done:v2:<id>`
//! (`{"v":2,"t":…,"offset":"…"}` or `{"v":2,"t":…,"code":"…","message":"…"}`), then removes the
//! message. A tab whose `publish` made a message that another tab sent (tabs that do not share
//! a connection, hence no relay) settles its promise from that record. Records are removed
//! [`OUTCOME_TTL_MS`] after they were written.
//!
//! Earlier versions kept all messages in one entry, `redistribute:outbox:v1:<scope>`
//! (`{"v":1,"entries":[…]}`, `<scope>` the [`scope`] of the targets in the order given). A
//! client without a `namespace` name and with those targets moves its messages into the
//! per-message format when it reads the outbox, then removes the old entry; a client with a
//! name never reads it (the old format does not say whose messages they are). Until the move
//! is complete the old entry's messages are listed too, so none is lost; a tab reading the old
//! entry while another moves it may send a message twice, which the idempotency key makes
//! harmless.

use std::cell::Cell;

use redistribute_protocol::{json, Fields};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::namespace::Namespace;
use crate::storage::{Storage, StorageError};

/// The version of the stored format of one message.
pub const FORMAT_VERSION: u32 = 2;
/// The key prefix of the single-entry outboxes of earlier versions; the scope follows.
pub const LEGACY_PREFIX: &str = "redistribute:outbox:v1:";
/// How many messages may wait by default.
pub const DEFAULT_LIMIT: usize = 1000;
/// How long the outcome of a sent message is kept for other tabs (ms): the server's default
/// idempotency TTL, beyond which a resend would be stored again anyway.
pub const OUTCOME_TTL_MS: f64 = 600_000.0;

/// How a message left the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server stored it at this offset.
    Stored(String),
    /// It was refused for good or cancelled: the error code and message.
    Refused {
        /// The error's code.
        code: String,
        /// The error's message.
        message: String,
    },
}

/// The stored JSON of an outcome.
struct OutcomeRecord {
    v: u32,
    t: f64,
    offset: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

impl OutcomeRecord {
    fn to_text(&self) -> String {
        let mut out = format!("{{\"v\":{},\"t\":", self.v);
        json::write(&mut out, &Value::from(self.t));
        for (key, value) in [
            ("offset", &self.offset),
            ("code", &self.code),
            ("message", &self.message),
        ] {
            if let Some(value) = value {
                out.push_str(",\"");
                out.push_str(key);
                out.push_str("\":");
                json::write_str(&mut out, value);
            }
        }
        out.push('}');
        out
    }

    fn parse(text: &str) -> Option<OutcomeRecord> {
        let mut o = object(text)?;
        Some(OutcomeRecord {
            v: u32::try_from(json::take(&mut o, "v")?.as_u64()?).ok()?,
            t: json::take(&mut o, "t")?.as_f64()?,
            offset: opt_string(&mut o, "offset")?,
            code: opt_string(&mut o, "code")?,
            message: opt_string(&mut o, "message")?,
        })
    }
}

/// A JSON object's text, parsed.
fn object(text: &str) -> Option<Map<String, Value>> {
    match json::parse(text).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// An optional string member: `Some(None)` when absent or `null`, `None` when not a string.
fn opt_string(o: &mut Map<String, Value>, key: &str) -> Option<Option<String>> {
    match json::take(o, key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    }
}

/// A message waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique id, also the idempotency key of the publish.
    pub id: String,
    /// Channel name.
    pub channel: String,
    /// The message.
    pub fields: Fields,
    /// `MAXLEN ~` hint of the publish.
    pub maxlen: Option<u64>,
    /// When it was made (ms since the epoch).
    pub created_at: f64,
}

impl Entry {
    /// Appends `"id":…,"channel":…,"fields":…,["maxlen":…,]"createdAt":…`.
    fn write_members(&self, out: &mut String) {
        out.push_str("\"id\":");
        json::write_str(out, &self.id);
        out.push_str(",\"channel\":");
        json::write_str(out, &self.channel);
        out.push_str(",\"fields\":");
        json::write_object(out, &self.fields);
        if let Some(maxlen) = self.maxlen {
            out.push_str(&format!(",\"maxlen\":{maxlen}"));
        }
        out.push_str(",\"createdAt\":");
        json::write(out, &Value::from(self.created_at));
    }

    /// Reads the members of an entry.
    fn from_object(o: &mut Map<String, Value>) -> Option<Entry> {
        let mut string = |key| match json::take(o, key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let (id, channel) = (string("id")?, string("channel")?);
        let Some(Value::Object(fields)) = json::take(o, "fields") else {
            return None;
        };
        let maxlen = match json::take(o, "maxlen") {
            None | Some(Value::Null) => None,
            Some(n) => Some(n.as_u64()?),
        };
        Some(Entry {
            id,
            channel,
            fields,
            maxlen,
            created_at: json::take(o, "createdAt")?.as_f64()?,
        })
    }
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

/// The stored JSON of one message: `v`, `o`, `seq` and the [`Entry`]'s members.
struct Record {
    v: u32,
    /// Order: creation time, never before the same client's previous message.
    o: f64,
    /// Order among one client's messages of the same `o`.
    seq: u64,
    entry: Entry,
}

impl Record {
    fn to_text(&self) -> String {
        let mut out = format!("{{\"v\":{},\"o\":", self.v);
        json::write(&mut out, &Value::from(self.o));
        out.push_str(&format!(",\"seq\":{},", self.seq));
        self.entry.write_members(&mut out);
        out.push('}');
        out
    }

    fn parse(text: &str) -> Option<Record> {
        let mut o = object(text)?;
        Some(Record {
            v: u32::try_from(json::take(&mut o, "v")?.as_u64()?).ok()?,
            o: json::take(&mut o, "o")?.as_f64()?,
            seq: json::take(&mut o, "seq")?.as_u64()?,
            entry: Entry::from_object(&mut o)?,
        })
    }
}

/// The single entry of earlier versions.
struct Legacy {
    v: u32,
    entries: Vec<Entry>,
}

impl Legacy {
    fn to_text(&self) -> String {
        let mut out = format!("{{\"v\":{},\"entries\":[", self.v);
        for (i, e) in self.entries.iter().enumerate() {
            out.push_str(if i > 0 { ",{" } else { "{" });
            e.write_members(&mut out);
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    fn parse(text: &str) -> Option<Legacy> {
        let mut o = object(text)?;
        let Some(Value::Array(items)) = json::take(&mut o, "entries") else {
            return None;
        };
        let entries = items
            .into_iter()
            .map(|item| match item {
                Value::Object(mut e) => Entry::from_object(&mut e),
                _ => None,
            })
            .collect::<Option<_>>()?;
        Some(Legacy {
            v: u32::try_from(json::take(&mut o, "v")?.as_u64()?).ok()?,
            entries,
        })
    }
}

/// A short stable name for a list of targets in the order given (64-bit FNV-1a, hex): the
/// suffix of the old single-entry outbox key, and the name of the tabs' lock and channel.
pub fn scope(parts: &[&str]) -> String {
    crate::namespace::hash(parts)
}

/// The persisted outbox of one namespace.
#[derive(Debug)]
pub struct Outbox<S> {
    storage: S,
    prefix: String,
    done: String,
    legacy: Option<String>,
    limit: usize,
    /// This client's last `o` and `seq`.
    last: Cell<(f64, u64)>,
}

impl<S: Storage> Outbox<S> {
    /// The outbox of `namespace` in `storage`, holding at most `limit` messages. `legacy` is
    /// the [`scope`] of the targets in the order the page gave them: the old single-entry
    /// outbox under it is moved into this one when the namespace has no name (see the module
    /// documentation).
    pub fn new(storage: S, namespace: &Namespace, legacy: &str, limit: usize) -> Self {
        Outbox {
            storage,
            prefix: namespace.outbox_prefix(),
            done: namespace.outcome_prefix(),
            legacy: (!namespace.is_named()).then(|| format!("{LEGACY_PREFIX}{legacy}")),
            limit,
            last: Cell::new((f64::NEG_INFINITY, 0)),
        }
    }

    /// The storage key prefix of this outbox's messages; the id follows.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The storage key of a message.
    pub fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The keys of this outbox's messages.
    fn keys(&self) -> Vec<String> {
        let keys = self.storage.keys().unwrap_or_default();
        keys.into_iter()
            .filter(|k| k.starts_with(&self.prefix))
            .collect()
    }

    fn read(&self, key: &str) -> Option<Record> {
        let text = self.storage.get(key).ok().flatten()?;
        Record::parse(&text).filter(|r| r.v == FORMAT_VERSION && self.key(&r.entry.id) == key)
    }

    /// The old single entry's messages, if it exists.
    fn legacy_entries(&self) -> Option<Vec<Entry>> {
        let key = self.legacy.as_ref()?;
        let text = self.storage.get(key).ok().flatten()?;
        Some(
            Legacy::parse(&text)
                .filter(|l| l.v == 1)
                .map(|l| l.entries)
                .unwrap_or_default(),
        )
    }

    /// Moves the old single entry's messages into per-message entries, then removes it;
    /// returns the messages it could not move (they stay in the old entry).
    fn migrate(&self) -> Vec<Record> {
        let (Some(key), Some(entries)) = (&self.legacy, self.legacy_entries()) else {
            return Vec::new();
        };
        let mut o = f64::NEG_INFINITY;
        let mut left = Vec::new();
        for (seq, entry) in entries.into_iter().enumerate() {
            o = o.max(entry.created_at);
            let record = Record {
                v: FORMAT_VERSION,
                o,
                seq: seq as u64,
                entry,
            };
            let key = self.key(&record.entry.id);
            let present = matches!(self.storage.get(&key), Ok(Some(_)));
            if !present && self.write(&key, &record).is_err() {
                left.push(record);
            }
        }
        if left.is_empty() {
            // Best effort: if it stays, the next read moves nothing new and tries again.
            let _ = self.storage.remove(key);
        }
        left
    }

    fn write(&self, key: &str, record: &Record) -> Result<(), StorageError> {
        let text = record.to_text();
        self.storage.set(key, &text)
    }

    fn records(&self) -> Vec<Record> {
        let mut records = self.migrate();
        for key in self.keys() {
            if let Some(r) = self.read(&key) {
                if !records.iter().any(|x| x.entry.id == r.entry.id) {
                    records.push(r);
                }
            }
        }
        crate::order::sorted_by_key(records, |r| (r.o, r.seq, r.entry.id.clone()))
    }

    /// The waiting messages, oldest first.
    pub fn list(&self) -> Vec<Entry> {
        self.records().into_iter().map(|r| r.entry).collect()
    }

    /// Whether a message with this id waits.
    pub fn contains(&self, id: &str) -> bool {
        self.read(&self.key(id)).is_some() || self.list().iter().any(|e| e.id == id)
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a message; returns the new number of waiting messages. A message whose id
    /// already waits is not stored again.
    pub fn push(&self, entry: Entry) -> Result<usize, OutboxError> {
        let records = self.records();
        if records.iter().any(|r| r.entry.id == entry.id) {
            return Ok(records.len());
        }
        if records.len() >= self.limit {
            return Err(OutboxError::Full(records.len()));
        }
        // After every message waiting now, and after this client's previous one.
        let (last_o, last_seq) = self.last.get();
        let o = records
            .iter()
            .map(|r| r.o)
            .fold(entry.created_at.max(last_o), f64::max);
        let seq = records
            .iter()
            .filter(|r| r.o == o)
            .map(|r| r.seq)
            .chain((last_o == o).then_some(last_seq))
            .max()
            .map_or(0, |s| s + 1);
        let record = Record {
            v: FORMAT_VERSION,
            o,
            seq,
            entry,
        };
        self.write(&self.key(&record.entry.id), &record)?;
        self.last.set((o, seq));
        Ok(records.len() + 1)
    }

    /// A message is done: records its outcome for the other tabs (best effort: a full quota
    /// skips it), removes it, and removes outcomes older than [`OUTCOME_TTL_MS`]. Whether it
    /// was there.
    pub fn finish(&self, id: &str, outcome: &Outcome, now_ms: f64) -> bool {
        for key in self.storage.keys().unwrap_or_default() {
            let Some(rest) = key.strip_prefix(&self.done) else {
                continue;
            };
            if rest != id
                && self
                    .read_outcome(&key)
                    .is_none_or(|(t, _)| t + OUTCOME_TTL_MS < now_ms)
            {
                let _ = self.storage.remove(&key);
            }
        }
        let (offset, code, message) = match outcome {
            Outcome::Stored(offset) => (Some(offset.clone()), None, None),
            Outcome::Refused { code, message } => (None, Some(code.clone()), Some(message.clone())),
        };
        let record = OutcomeRecord {
            v: FORMAT_VERSION,
            t: now_ms,
            offset,
            code,
            message,
        };
        let text = record.to_text();
        let _ = self.storage.set(&format!("{}{id}", self.done), &text);
        self.remove(id)
    }

    fn read_outcome(&self, key: &str) -> Option<(f64, Outcome)> {
        let text = self.storage.get(key).ok().flatten()?;
        let r = OutcomeRecord::parse(&text)?;
        let outcome = match (r.offset, r.code) {
            (Some(offset), None) => Outcome::Stored(offset),
            (None, Some(code)) => Outcome::Refused {
                code,
                message: r.message.unwrap_or_default(),
            },
            _ => return None,
        };
        (r.v == FORMAT_VERSION).then_some((r.t, outcome))
    }

    /// The recorded outcome of a message that is done, if known.
    pub fn outcome(&self, id: &str) -> Option<Outcome> {
        self.read_outcome(&format!("{}{id}", self.done))
            .map(|(_, o)| o)
    }

    /// Removes a message without recording an outcome; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let key = self.key(id);
        let mut found = matches!(self.storage.get(&key), Ok(Some(_)));
        // A failed removal leaves the entry: it is sent again, and the server's idempotency
        // turns that into the first offset.
        let mut removed = found && self.storage.remove(&key).is_ok();
        // Only while a move from the old format is incomplete (a full quota).
        if let (Some(legacy), Some(mut entries)) = (&self.legacy, self.legacy_entries()) {
            let before = entries.len();
            entries.retain(|e| e.id != id);
            if entries.len() != before {
                found = true;
                removed = if entries.is_empty() {
                    self.storage.remove(legacy).is_ok()
                } else {
                    let text = Legacy { v: 1, entries }.to_text();
                    self.storage.set(legacy, &text).is_ok()
                };
            }
        }
        found && removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    fn entry(id: &str) -> Entry {
        entry_at(id, 1.0)
    }

    fn entry_at(id: &str, t: f64) -> Entry {
        let mut fields = Fields::new();
        fields.insert("text".into(), id.into());
        Entry {
            id: id.into(),
            channel: "c".into(),
            fields,
            maxlen: None,
            created_at: t,
        }
    }

    fn ns() -> Namespace {
        Namespace::new(&["ws://a/ws"], None)
    }

    fn ids(outbox: &Outbox<impl Storage>) -> Vec<String> {
        outbox.list().into_iter().map(|e| e.id).collect()
    }

    #[test]
    fn keeps_order_and_survives_a_new_instance() {
        let storage = MemoryStorage::new();
        let outbox = Outbox::new(&storage, &ns(), "s", 10);
        assert!(outbox.is_empty());
        // Same millisecond, then a clock that went back: the order is still the push order.
        for (id, t) in [("b", 5.0), ("a", 5.0), ("c", 4.0), ("0", 6.0)] {
            outbox.push(entry_at(id, t)).unwrap();
        }
        assert_eq!(ids(&outbox), ["b", "a", "c", "0"]);
        assert!(outbox.remove("a"));
        assert!(!outbox.remove("a"));
        assert!(outbox.contains("c") && !outbox.contains("a"));
        let again = Outbox::new(&storage, &ns(), "s", 10);
        assert_eq!(ids(&again), ["b", "c", "0"]);
        assert_eq!(again.list()[1], entry_at("c", 4.0));
        let key = again.key("c");
        assert!(key.starts_with(&ns().outbox_prefix()) && key.ends_with(":c"));
        assert!(storage
            .get(&key)
            .unwrap()
            .unwrap()
            .contains(r#""createdAt":4.0"#));
        for id in ["b", "c", "0"] {
            assert!(again.remove(id));
        }
        assert!(storage.keys().unwrap().is_empty());
    }

    #[test]
    fn a_remove_never_touches_another_message() {
        // Two tabs: each works from what it read, as with a stale localStorage view.
        let storage = MemoryStorage::new();
        let tab1 = Outbox::new(&storage, &ns(), "s", 10);
        let tab2 = Outbox::new(&storage, &ns(), "s", 10);
        tab1.push(entry("x")).unwrap();
        let seen_by_2 = tab2.list();
        tab1.push(entry("y")).unwrap();
        assert_eq!(seen_by_2.len(), 1);
        assert!(tab2.remove("x"));
        assert_eq!(ids(&tab1), ["y"]);
        let before: Vec<String> = storage.keys().unwrap();
        tab2.push(entry("z")).unwrap();
        // Pushing writes one new key and rewrites nothing.
        let after: Vec<String> = storage.keys().unwrap();
        assert_eq!(after.len(), before.len() + 1);
        assert!(storage.get(&tab1.key("y")).unwrap().is_some());
    }

    #[test]
    fn a_waiting_id_is_not_stored_twice() {
        let storage = MemoryStorage::new();
        let outbox = Outbox::new(&storage, &ns(), "s", 10);
        assert_eq!(outbox.push(entry_at("k", 1.0)), Ok(1));
        assert_eq!(outbox.push(entry_at("k", 2.0)), Ok(1));
        assert_eq!(outbox.list(), [entry_at("k", 1.0)]);
    }

    #[test]
    fn is_bounded_and_reports_a_full_quota() {
        let storage = MemoryStorage::new();
        let outbox = Outbox::new(&storage, &ns(), "s", 2);
        outbox.push(entry("a")).unwrap();
        assert_eq!(outbox.push(entry("b")), Ok(2));
        assert_eq!(outbox.push(entry("c")), Err(OutboxError::Full(2)));
        assert!(outbox.remove("a"));
        assert_eq!(outbox.push(entry("c")), Ok(2));
        let tight = MemoryStorage::with_quota(10);
        let outbox = Outbox::new(&tight, &ns(), "s", 2);
        assert!(matches!(
            outbox.push(entry("a")),
            Err(OutboxError::Storage(StorageError::QuotaExceeded))
        ));
        assert!(outbox.is_empty());
    }

    #[test]
    fn unreadable_or_other_versions_are_skipped() {
        let storage = MemoryStorage::new();
        let outbox = Outbox::new(&storage, &ns(), "s", 10);
        storage.set(&outbox.key("bad"), "{not json").unwrap();
        let mut v3 = Record {
            v: FORMAT_VERSION,
            o: 1.0,
            seq: 1,
            entry: entry("v3"),
        }
        .to_text();
        v3 = v3.replace(r#""v":2"#, r#""v":3"#);
        storage.set(&outbox.key("v3"), &v3).unwrap();
        // A record under another id's key is not that key's message.
        let moved = Record {
            v: FORMAT_VERSION,
            o: 1.0,
            seq: 1,
            entry: entry("elsewhere"),
        }
        .to_text();
        storage.set(&outbox.key("here"), &moved).unwrap();
        assert!(outbox.is_empty());
        outbox.push(entry("a")).unwrap();
        assert_eq!(ids(&outbox), ["a"]);
    }

    #[test]
    fn namespaces_do_not_share_messages() {
        let storage = MemoryStorage::new();
        let t = ["ws://a/ws"];
        let plain = Outbox::new(&storage, &Namespace::new(&t, None), "s", 10);
        let user = Outbox::new(&storage, &Namespace::new(&t, Some("u1")), "s", 10);
        let other = Outbox::new(&storage, &Namespace::new(&["ws://b/ws"], None), "s", 10);
        plain.push(entry("p")).unwrap();
        user.push(entry("u")).unwrap();
        other.push(entry("o")).unwrap();
        assert_eq!(ids(&plain), ["p"]);
        assert_eq!(ids(&user), ["u"]);
        assert_eq!(ids(&other), ["o"]);
        assert!(!plain.remove("u") && !user.remove("p"));
    }

    fn legacy_text(ids: &[(&str, f64)]) -> String {
        let entries: Vec<Entry> = ids.iter().map(|(id, t)| entry_at(id, *t)).collect();
        Legacy { v: 1, entries }.to_text()
    }

    #[test]
    fn the_old_single_entry_is_moved_once_and_in_order() {
        let storage = MemoryStorage::new();
        let old = format!("{LEGACY_PREFIX}s");
        storage
            .set(&old, &legacy_text(&[("a", 5.0), ("b", 5.0), ("c", 3.0)]))
            .unwrap();
        let outbox = Outbox::new(&storage, &ns(), "s", 10);
        assert_eq!(ids(&outbox), ["a", "b", "c"]);
        assert_eq!(storage.get(&old).unwrap(), None, "the old entry is gone");
        outbox.push(entry_at("d", 4.0)).unwrap();
        assert_eq!(ids(&outbox), ["a", "b", "c", "d"]);
        assert!(outbox.remove("b"));
        assert_eq!(ids(&Outbox::new(&storage, &ns(), "s", 10)), ["a", "c", "d"]);

        // Other targets' old outbox is not this one's; a named namespace never reads it.
        storage.set(&old, &legacy_text(&[("x", 1.0)])).unwrap();
        let named = Namespace::new(&["ws://a/ws"], Some("u1"));
        assert!(Outbox::new(&storage, &named, "s", 10).is_empty());
        assert_eq!(ids(&Outbox::new(&storage, &ns(), "t", 10)), ["a", "c", "d"]);
        assert!(storage.get(&old).unwrap().is_some());
        // An unreadable old entry is dropped.
        storage.set(&old, "{nope").unwrap();
        assert_eq!(ids(&outbox), ["a", "c", "d"]);
        assert_eq!(storage.get(&old).unwrap(), None);
    }

    #[test]
    fn a_move_stopped_by_the_quota_loses_nothing() {
        let storage = MemoryStorage::new();
        let old = format!("{LEGACY_PREFIX}s");
        storage
            .set(&old, &legacy_text(&[("a", 1.0), ("b", 2.0), ("c", 3.0)]))
            .unwrap();
        // Room for about one more message.
        storage.set_quota(Some(storage.used() + 150));
        let outbox = Outbox::new(&storage, &ns(), "s", 10);
        assert_eq!(ids(&outbox), ["a", "b", "c"]);
        assert!(storage.get(&old).unwrap().is_some(), "kept until moved");
        // Removing a message not yet moved rewrites the old entry without it.
        assert!(outbox.remove("c"));
        assert_eq!(ids(&outbox), ["a", "b"]);
        storage.set_quota(None);
        assert_eq!(ids(&outbox), ["a", "b"]);
        assert_eq!(storage.get(&old).unwrap(), None);
        assert!(outbox.remove("a") && outbox.remove("b"));
        assert!(outbox.is_empty() && !outbox.remove("a"));
    }

    #[test]
    fn outcomes_are_recorded_for_other_tabs_then_expire() {
        let storage = MemoryStorage::new();
        let tab1 = Outbox::new(&storage, &ns(), "s", 10);
        let tab2 = Outbox::new(&storage, &ns(), "s", 10);
        tab2.push(entry("x")).unwrap();
        tab2.push(entry("y")).unwrap();
        assert_eq!(tab1.outcome("x"), None, "still waiting");
        let stored = Outcome::Stored("5-0".into());
        assert!(tab1.finish("x", &stored, 1000.0));
        let refused = Outcome::Refused {
            code: "cancelled".into(),
            message: "the message was cancelled".into(),
        };
        assert!(tab1.finish("y", &refused, 2000.0));
        assert!(tab2.is_empty(), "outcomes are not waiting messages");
        assert_eq!(tab2.outcome("x"), Some(stored.clone()));
        assert_eq!(tab2.outcome("y"), Some(refused));
        assert!(!tab1.finish("z", &stored, 1000.0 + OUTCOME_TTL_MS));
        // Written at 1000 and 2000: at 1000 + TTL both are still there, just past it x goes.
        assert!(tab2.outcome("x").is_some() && tab2.outcome("y").is_some());
        tab1.finish("w", &stored, 1000.0 + OUTCOME_TTL_MS + 1.0);
        assert_eq!(tab2.outcome("x"), None);
        assert!(tab2.outcome("y").is_some());
        // Another namespace never sees them.
        let other = Outbox::new(&storage, &Namespace::new(&["ws://b/ws"], None), "s", 10);
        assert_eq!(other.outcome("y"), None);
    }

    #[test]
    fn scopes_differ_by_targets() {
        assert_eq!(scope(&["ws://a"]), scope(&["ws://a"]));
        assert_ne!(scope(&["ws://a", "ws://b"]), scope(&["ws://ab"]));
        assert_eq!(scope(&["x"]).len(), 16);
    }
}
