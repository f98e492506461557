//! Turning Redis replies (fred [`Value`]s) into IDs and encoded [`Batch`]es.

use std::sync::Arc;

use fred::types::Value;
use redistribute_protocol::StreamId;

use crate::engine::{Batch, BatchBuilder, EngineError, MAX_ENCODED_ENTRY_BYTES, MAX_ENTRY_BYTES};

/// The text of a string reply, if it is one (invalid UTF-8 is replaced).
pub(super) fn text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(&**s)),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b)),
        _ => None,
    }
}

fn unexpected(what: &str, value: &Value) -> EngineError {
    EngineError::Internal(format!("unexpected {what} reply from Redis: {value:?}"))
}

/// Parses an entry ID reply.
pub(super) fn stream_id(value: &Value) -> Result<StreamId, EngineError> {
    let s = text(value).ok_or_else(|| unexpected("ID", value))?;
    StreamId::parse(&s).map_err(|_| unexpected("ID", value))
}

/// Parses an optional ID given as an empty string when absent.
pub(super) fn optional_id(value: &Value) -> Result<Option<StreamId>, EngineError> {
    match text(value) {
        Some(s) if s.is_empty() => Ok(None),
        Some(_) => stream_id(value).map(Some),
        None if matches!(value, Value::Null) => Ok(None),
        None => Err(unexpected("ID", value)),
    }
}

/// Encodes a list of `[id, [field, value, ...]]` entries (an `XRANGE` reply or one stream of an
/// `XREAD` reply) into a batch for `channel`.
pub(super) fn entries(channel: &Arc<str>, value: &Value) -> Result<Option<Batch>, EngineError> {
    let Value::Array(items) = value else {
        return match value {
            Value::Null => Ok(None),
            other => Err(unexpected("entries", other)),
        };
    };
    let mut builder = BatchBuilder::new(channel.clone());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(unexpected("entry", item));
        };
        let [id, fields] = pair.as_slice() else {
            return Err(unexpected("entry", item));
        };
        builder.begin_entry(stream_id(id)?);
        match fields {
            Value::Array(kv) => {
                for (i, chunk) in kv.chunks(2).enumerate() {
                    let [k, v] = chunk else { break };
                    let name = text(k).ok_or_else(|| unexpected("field", k))?;
                    let val = text(v).unwrap_or_default();
                    builder.field(i == 0, &name, &val);
                }
            }
            Value::Map(map) => {
                for (i, (k, v)) in map.iter().enumerate() {
                    let name = k.as_str_lossy();
                    let val = text(v).unwrap_or_default();
                    builder.field(i == 0, &name, &val);
                }
            }
            Value::Null => {}
            other => return Err(unexpected("fields", other)),
        }
        builder.end_entry();
    }
    Ok(builder.finish())
}

/// Entries encoded into batches by [`entries_bounded`].
#[derive(Debug, Default)]
pub(super) struct Encoded {
    /// The batches, in order; the first carries the initial gap (if it has entries).
    pub batches: Vec<Batch>,
    /// A gap not carried by any batch: entries skipped (too large) after the last batch, or
    /// the initial gap when no batch was made.
    pub pending_gap: Option<StreamId>,
    /// The last entry looked at (delivered or skipped); `None` for an empty list.
    pub last_seen: Option<StreamId>,
}

/// One entry's ID and fields, borrowed from a reply.
struct RawEntry<'a> {
    id: StreamId,
    fields: Vec<(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
}

fn raw_entry(item: &Value) -> Result<RawEntry<'_>, EngineError> {
    let Value::Array(pair) = item else {
        return Err(unexpected("entry", item));
    };
    let [id, fields] = pair.as_slice() else {
        return Err(unexpected("entry", item));
    };
    let id = stream_id(id)?;
    let fields = match fields {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|chunk| match chunk {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .map(|(k, v)| {
                let name = text(k).ok_or_else(|| unexpected("field", k))?;
                Ok((name, text(v).unwrap_or_default()))
            })
            .collect::<Result<Vec<_>, EngineError>>()?,
        Value::Map(map) => map
            .iter()
            .map(|(k, v)| {
                (
                    std::borrow::Cow::Owned(k.as_str_lossy().into_owned()),
                    text(v).unwrap_or_default(),
                )
            })
            .collect(),
        Value::Null => Vec::new(),
        other => return Err(unexpected("fields", other)),
    };
    Ok(RawEntry { id, fields })
}

fn encode(builder: &mut BatchBuilder, entry: &RawEntry<'_>) {
    builder.begin_entry(entry.id);
    for (i, (name, value)) in entry.fields.iter().enumerate() {
        builder.field(i == 0, name, value);
    }
    builder.end_entry();
}

/// Encodes a list of `[id, [field, value, ...]]` entries into batches of at most `max_bytes`
/// of encoded items each (one entry alone may exceed it), at most `max_batches` of them
/// (entries past the last one are left out). An entry larger than [`MAX_ENTRY_BYTES`] is
/// skipped and covered by the gap of the batch after it; `gap` is the initial gap, carried by
/// the first batch.
pub(super) fn entries_bounded(
    channel: &Arc<str>,
    value: &Value,
    max_bytes: usize,
    max_batches: usize,
    gap: Option<StreamId>,
) -> Result<Encoded, EngineError> {
    let items: &[Value] = match value {
        Value::Array(items) => items,
        Value::Null => &[],
        other => return Err(unexpected("entries", other)),
    };
    let mut out = Encoded::default();
    let mut builder = BatchBuilder::new(channel.clone());
    if let Some(gap) = gap {
        builder.set_gap_through(gap);
    }
    for item in items {
        let entry = raw_entry(item)?;
        let size: usize = entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size <= MAX_ENTRY_BYTES {
            encode(&mut builder, &entry);
            // Escaping can make another producer's bytes larger once encoded: what counts is
            // the entry as delivered.
            if builder.last_item_len() <= MAX_ENCODED_ENTRY_BYTES {
                if builder.len() > 1 && builder.items_len() > max_bytes {
                    builder.pop_entry();
                    out.batches.extend(builder.cut());
                    if out.batches.len() >= max_batches {
                        return Ok(out);
                    }
                    encode(&mut builder, &entry);
                }
                out.last_seen = Some(entry.id);
                continue;
            }
            builder.pop_entry();
        }
        if !builder.is_empty() {
            out.batches.extend(builder.cut());
            if out.batches.len() >= max_batches {
                return Ok(out);
            }
        }
        builder.set_gap_through(entry.id);
        out.last_seen = Some(entry.id);
    }
    if builder.is_empty() {
        out.pending_gap = builder.gap_through();
    } else {
        out.batches.extend(builder.finish());
    }
    Ok(out)
}

/// The ID of the first entry of an entries list, if it has one.
pub(super) fn first_entry_id(value: &Value) -> Option<StreamId> {
    let Value::Array(items) = value else {
        return None;
    };
    let Value::Array(pair) = items.first()? else {
        return None;
    };
    stream_id(pair.first()?).ok()
}

/// Splits an `XREAD` reply into `(key, entries)` pairs.
pub(super) fn xread_streams(
    value: &Value,
) -> Result<Vec<(std::borrow::Cow<'_, str>, &Value)>, EngineError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(streams) => streams
            .iter()
            .map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => {
                    let key = text(&pair[0]).ok_or_else(|| unexpected("key", &pair[0]))?;
                    Ok((key, &pair[1]))
                }
                other => Err(unexpected("XREAD stream", other)),
            })
            .collect(),
        Value::Map(map) => Ok(map.iter().map(|(k, v)| (k.as_str_lossy(), v)).collect()),
        other => Err(unexpected("XREAD", other)),
    }
}
