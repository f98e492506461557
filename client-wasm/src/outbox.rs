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
        // A loop, not `collect` into an `Option` (which links an in-place collection).
        let mut entries = Vec::new();
        for item in items {
            let Value::Object(mut e) = item else {
                return None;
            };
            entries.push(Entry::from_object(&mut e)?);
        }
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
mod tests;
