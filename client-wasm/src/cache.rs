//! The per-channel message cache: what `load(channel)` returns without touching the network.
//!
//! One storage entry per channel under the key `redistribute:<namespace>:cache:v1:<channel>`
//! (see [`crate::namespace`]: clients of other targets, or with another `namespace` name, never
//! read it; the format version is part of the key, so a later format never misreads this one),
//! holding JSON:
//!
//! ```json
//! {"v":1,"t":1700000000000,"offset":"1700000000000-3",
//!  "messages":[{"offset":"1700000000000-3","fields":{"text":"hi"}}]}
//! ```
//!
//! * `messages`: the newest messages of the channel, in offset order, at most the configured
//!   count (older ones are dropped as new ones arrive);
//! * `offset`: where the subscription resumes (the session's position: the last delivered
//!   offset, or the tip a `$` subscription started at), so a reload continues with no gap and
//!   no duplicate even when the cache holds no message;
//! * `t`: the time of the last write (ms since the epoch), for least-recently-written eviction.
//!
//! Writes merge with what is stored (by offset), so two tabs caching the same channel
//! converge instead of overwriting each other. Nothing here fails the caller: a corrupt entry
//! is removed and reported. A full quota never costs a resume offset: it first removes the
//! unscoped entries of earlier versions (`redistribute:v1:<channel>`, never read since entries
//! are scoped by namespace) and this cache's unreadable entries, then empties other channels'
//! entries of their messages, least recently written first, keeping their offsets, then drops
//! the oldest half of this channel's messages, repeatedly; if even the bare entry does not fit,
//! the write is skipped (the older entry stays: it resumes earlier, which replays messages but
//! loses none). Each of these is reported.

use redistribute_protocol::json;
use redistribute_protocol::{Message, StreamId};
use serde_json::Value;
use thiserror::Error;

use crate::namespace::Namespace;
use crate::storage::{Storage, StorageError};

/// The version of the stored format, also part of the key prefix.
pub const FORMAT_VERSION: u32 = 1;
/// The key prefix of the unscoped cache entries of earlier versions; the channel name follows.
/// They are never read, and removed first when the quota is full.
pub const LEGACY_PREFIX: &str = "redistribute:v1:";
/// How many messages per channel are kept by default.
pub const DEFAULT_LIMIT: usize = 100;

/// One cached message. `fields` stays JSON text: it is handed to the page's `decode` as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedMessage {
    /// The message's offset.
    pub offset: StreamId,
    /// The message's fields, as JSON text of an object.
    pub fields: String,
}

impl CachedMessage {
    /// Converts a delivered message.
    pub fn from_message(message: &Message) -> Self {
        let mut fields = String::new();
        json::write_object(&mut fields, &message.fields);
        CachedMessage {
            offset: message.offset,
            fields,
        }
    }
}

/// What [`Cache::load`] found for a channel.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The cached messages, oldest first.
    pub messages: Vec<CachedMessage>,
    /// Where to resume: pass it to `subscribe`. `None` when nothing is cached.
    pub last_offset: Option<StreamId>,
}

/// A problem the cache met and worked around; reported to the page, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CacheError {
    /// A stored entry could not be read; it was removed.
    #[error("cached entry of channel \"{channel}\" was corrupt and has been removed: {reason}")]
    Corrupt {
        /// The channel.
        channel: String,
        /// What was wrong.
        reason: String,
    },
    /// The storage quota is full. Space was made by evicting `evicted` other entries (old
    /// format or unreadable ones removed, other channels' messages dropped with their resume
    /// offsets kept) and the `dropped` oldest messages of this channel; `stored` says whether
    /// the write then fitted.
    #[error(
        "storage quota exceeded while caching channel \"{channel}\": evicted {evicted} other \
         entr(ies) (resume offsets kept) and {dropped} old message(s); {}",
        if *stored { "cache updated" } else { "cache not updated (it resumes earlier)" }
    )]
    QuotaExceeded {
        /// The channel being written.
        channel: String,
        /// Other entries removed (old format, unreadable) or emptied of their messages.
        evicted: usize,
        /// Old messages of this channel dropped.
        dropped: usize,
        /// Whether the entry was finally written.
        stored: bool,
    },
    /// Storage cannot be used; the cache is skipped.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The stored JSON of one channel.
#[derive(Debug)]
struct Entry {
    v: u32,
    t: f64,
    offset: Option<StreamId>,
    messages: Vec<CachedMessage>,
}

impl Entry {
    fn empty() -> Self {
        Entry {
            v: FORMAT_VERSION,
            t: 0.0,
            offset: None,
            messages: Vec::new(),
        }
    }

    /// Parses and checks stored text.
    fn parse(text: &str) -> Result<Entry, String> {
        let Value::Object(mut entry) = json::parse(text).map_err(|e| e.to_string())? else {
            return Err("not a JSON object".into());
        };
        let mut take = |key: &str| json::take(&mut entry, key);
        let v = take("v")
            .and_then(|v| v.as_u64())
            .ok_or("no format version")?;
        if v != u64::from(FORMAT_VERSION) {
            return Err(format!("unsupported format version {v}"));
        }
        let t = match take("t") {
            None => 0.0,
            Some(t) => t.as_f64().ok_or("`t` is not a number")?,
        };
        let offset = match take("offset") {
            None => None,
            Some(o) => Some(stream_id(&o)?),
        };
        let Some(Value::Array(items)) = take("messages") else {
            return Err("`messages` is not an array".into());
        };
        let mut messages = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(mut m) = item else {
                return Err("a message is not an object".into());
            };
            let offset = stream_id(m.get("offset").unwrap_or(&Value::Null))?;
            let Some(Value::Object(fields)) = json::take(&mut m, "fields") else {
                return Err(format!("fields of {offset} are not a JSON object"));
            };
            let mut text = String::new();
            json::write_object(&mut text, &fields);
            messages.push(CachedMessage {
                offset,
                fields: text,
            });
        }
        if messages.windows(2).any(|w| w[0].offset >= w[1].offset) {
            return Err("messages are not in offset order".into());
        }
        Ok(Entry {
            v: FORMAT_VERSION,
            t,
            offset,
            messages,
        })
    }

    /// The stored text.
    fn to_text(&self) -> String {
        let mut out = format!("{{\"v\":{},\"t\":", self.v);
        json::write(&mut out, &Value::from(self.t));
        if let Some(offset) = self.offset {
            out.push_str(",\"offset\":");
            json::write_str(&mut out, &offset.to_string());
        }
        out.push_str(",\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"offset\":");
            json::write_str(&mut out, &m.offset.to_string());
            out.push_str(",\"fields\":");
            out.push_str(&m.fields);
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    /// The resume point: the later of the stored position and the last message.
    fn last_offset(&self) -> Option<StreamId> {
        let last = self.messages.last().map(|m| m.offset);
        self.offset.max(last)
    }
}

/// A stored offset.
fn stream_id(v: &Value) -> Result<StreamId, String> {
    let text = v.as_str().ok_or("an offset is not a string")?;
    StreamId::parse(text).map_err(|e| e.to_string())
}

fn unavailable(e: StorageError) -> CacheError {
    CacheError::Unavailable(e.to_string())
}

/// The bounded per-channel cache over a [`Storage`].
#[derive(Debug)]
pub struct Cache<S> {
    storage: S,
    prefix: String,
    limit: usize,
}

impl<S: Storage> Cache<S> {
    /// The cache of `namespace`, keeping at most `limit` messages per channel (`limit` 0
    /// keeps only the resume offsets).
    pub fn new(storage: S, limit: usize, namespace: &Namespace) -> Self {
        Self::with_prefix(storage, limit, namespace.cache_prefix())
    }

    /// Like [`Cache::new`] with an explicit key prefix.
    pub fn with_prefix(storage: S, limit: usize, prefix: impl Into<String>) -> Self {
        Cache {
            storage,
            prefix: prefix.into(),
            limit,
        }
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage key of a channel's entry.
    pub fn key(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    /// The cached messages and resume offset of a channel. A corrupt entry is removed and
    /// reported as [`CacheError::Corrupt`]; the channel then counts as empty.
    pub fn load(&self, channel: &str) -> Result<Loaded, CacheError> {
        Ok(match self.read(channel)? {
            Some(entry) => Loaded {
                last_offset: entry.last_offset(),
                messages: entry.messages,
            },
            None => Loaded::default(),
        })
    }

    /// Adds delivered messages (in offset order) and the subscription's position to a
    /// channel's entry, keeping the newest `limit` messages. `now_ms` stamps the entry for
    /// eviction. Returns the problems met on the way (empty when all went well); whatever they
    /// are, the page goes on.
    pub fn store(
        &self,
        channel: &str,
        messages: &[CachedMessage],
        position: Option<StreamId>,
        now_ms: f64,
    ) -> Vec<CacheError> {
        let mut problems = Vec::new();
        let mut entry = match self.read(channel) {
            Ok(entry) => entry.unwrap_or_else(Entry::empty),
            Err(e @ CacheError::Corrupt { .. }) => {
                problems.push(e);
                Entry::empty()
            }
            Err(e) => {
                problems.push(e);
                return problems;
            }
        };
        let old_offset = entry.offset;
        let old: Vec<StreamId> = entry.messages.iter().map(|m| m.offset).collect();
        merge(&mut entry.messages, messages, self.limit);
        entry.offset = entry
            .offset
            .max(position)
            .max(messages.last().map(|m| m.offset));
        if entry.offset == old_offset && entry.messages.iter().map(|m| m.offset).eq(old) {
            return problems; // nothing new: spare the write
        }
        entry.t = now_ms;
        if let Err(e) = self.write(channel, &mut entry) {
            problems.push(e);
        }
        problems
    }

    /// Removes a channel's entry.
    pub fn clear(&self, channel: &str) -> Result<(), CacheError> {
        self.storage.remove(&self.key(channel)).map_err(unavailable)
    }

    /// Reads a channel's entry; removes it when it is corrupt.
    fn read(&self, channel: &str) -> Result<Option<Entry>, CacheError> {
        let key = self.key(channel);
        let Some(text) = self.storage.get(&key).map_err(unavailable)? else {
            return Ok(None);
        };
        match Entry::parse(&text) {
            Ok(entry) => Ok(Some(entry)),
            Err(reason) => {
                // Best effort: if even removing fails, the next read reports it again.
                let _ = self.storage.remove(&key);
                Err(CacheError::Corrupt {
                    channel: channel.to_owned(),
                    reason,
                })
            }
        }
    }

    /// Writes an entry, making room when the quota is full (see the module documentation).
    fn write(&self, channel: &str, entry: &mut Entry) -> Result<(), CacheError> {
        let key = self.key(channel);
        let text = entry.to_text();
        match self.storage.set(&key, &text) {
            Ok(()) => return Ok(()),
            Err(StorageError::QuotaExceeded) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let quota = |evicted, dropped, stored| CacheError::QuotaExceeded {
            channel: channel.to_owned(),
            evicted,
            dropped,
            stored,
        };
        let mut evicted = 0;
        for (other, keep) in self.evictable(&key)? {
            match keep {
                // Smaller than what it replaces; if even that fails, the entry stays as it was.
                Some(bare) => {
                    let text = bare.to_text();
                    if self.storage.set(&other, &text).is_err() {
                        continue;
                    }
                }
                None => self.storage.remove(&other).map_err(unavailable)?,
            }
            evicted += 1;
            if self.storage.set(&key, &text).is_ok() {
                return Err(quota(evicted, 0, true));
            }
        }
        let mut dropped = 0;
        while !entry.messages.is_empty() {
            let n = entry.messages.len().div_ceil(2);
            entry.messages.drain(..n);
            dropped += n;
            let text = entry.to_text();
            if self.storage.set(&key, &text).is_ok() {
                return Err(quota(evicted, dropped, true));
            }
        }
        Err(quota(evicted, dropped, false))
    }

    /// What may go to make room, in order: entries of the old unscoped format and this
    /// cache's unreadable entries (`None`: remove), then this cache's other entries holding
    /// messages, least recently written first, each with what replaces it (its offset without
    /// messages). Entries holding only an offset are never touched.
    fn evictable(&self, key: &str) -> Result<Vec<(String, Option<Entry>)>, CacheError> {
        let mut others: Vec<(f64, String, Option<Entry>)> = Vec::new();
        for k in self.storage.keys().map_err(unavailable)? {
            if k == key {
                continue;
            }
            if k.starts_with(LEGACY_PREFIX) && !self.prefix.starts_with(LEGACY_PREFIX) {
                others.push((f64::NEG_INFINITY, k, None));
                continue;
            }
            if !k.starts_with(&self.prefix) {
                continue;
            }
            let parsed = match self.storage.get(&k) {
                Ok(Some(text)) => Entry::parse(&text).ok(),
                _ => None,
            };
            match parsed {
                None => others.push((f64::NEG_INFINITY, k, None)),
                Some(e) if e.messages.is_empty() => {}
                Some(mut e) => {
                    // The resume point of the messages it held.
                    e.offset = e.last_offset();
                    e.messages.clear();
                    others.push((e.t, k, Some(e)));
                }
            }
        }
        let others = crate::order::sorted_by_key(others, |(t, k, _)| (*t, 0, k.clone()));
        Ok(others.into_iter().map(|(_, k, e)| (k, e)).collect())
    }
}

/// Merges `new` (in offset order) into `stored` (in offset order) without duplicates, then
/// keeps the newest `limit`.
fn merge(stored: &mut Vec<CachedMessage>, new: &[CachedMessage], limit: usize) {
    let last = stored.last().map(|m| m.offset);
    if new.first().is_some_and(|m| Some(m.offset) > last) {
        stored.extend_from_slice(new); // the usual case: everything is newer
    } else if !new.is_empty() {
        // Two sorted runs: one linear pass (a stored message wins over a new one of the same
        // offset).
        let old = std::mem::take(stored);
        let mut old = old.into_iter().peekable();
        let mut new = new.iter().peekable();
        loop {
            let next = match (old.peek(), new.peek()) {
                (Some(a), Some(b)) if b.offset < a.offset => new.next().cloned(),
                (Some(a), Some(b)) if b.offset == a.offset => {
                    new.next();
                    old.next()
                }
                (Some(_), _) => old.next(),
                (None, _) => new.next().cloned(),
            };
            match next {
                Some(m) if stored.last().is_some_and(|l| l.offset >= m.offset) => {}
                Some(m) => stored.push(m),
                None => break,
            }
        }
    }
    if stored.len() > limit {
        stored.drain(..stored.len() - limit);
    }
}

#[cfg(test)]
mod tests;
