//! Turning Redis replies (fred [`Value`]s) into IDs and encoded [`Batch`]es.

use std::sync::Arc;

use fred::types::Value;
use redistribute_protocol::StreamId;

use crate::engine::{Batch, BatchBuilder, EngineError};

/// The text of a string reply, if it is one (invalid UTF-8 is replaced).
pub fn text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
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
pub fn stream_id(value: &Value) -> Result<StreamId, EngineError> {
    let s = text(value).ok_or_else(|| unexpected("ID", value))?;
    StreamId::parse(&s).map_err(|_| unexpected("ID", value))
}

/// Parses an optional ID given as an empty string when absent.
pub fn optional_id(value: &Value) -> Result<Option<StreamId>, EngineError> {
    match text(value) {
        Some(s) if s.is_empty() => Ok(None),
        Some(_) => stream_id(value).map(Some),
        None if matches!(value, Value::Null) => Ok(None),
        None => Err(unexpected("ID", value)),
    }
}

/// Encodes a list of `[id, [field, value, ...]]` entries (an `XRANGE` reply or one stream of an
/// `XREAD` reply) into a batch for `channel`.
pub fn entries(channel: &Arc<str>, value: &Value) -> Result<Option<Batch>, EngineError> {
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

/// Splits an `XREAD` reply into `(key, entries)` pairs.
pub fn xread_streams(
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
