//! The shard log's entry format: `s <sequence> c <channel> o <offset> <fields…>`, as the
//! publish script appends it, and its conversion to the channel stream's own entry shape.

use fred::types::Value;

use crate::engine::redis::parse;
use crate::engine::EngineError;
use redistribute_protocol::StreamId;

/// One parsed log entry.
pub(super) struct LogEntry<'a> {
    pub(super) id: StreamId,
    pub(super) seq: u64,
    pub(super) channel: std::borrow::Cow<'a, str>,
    pub(super) offset: StreamId,
    offset_value: &'a Value,
    fields: &'a [Value],
}

impl<'a> LogEntry<'a> {
    pub(super) fn parse(item: &'a Value) -> Result<LogEntry<'a>, EngineError> {
        let bad = || EngineError::Internal(format!("unexpected shard log entry {item:?}"));
        let Value::Array(pair) = item else {
            return Err(bad());
        };
        let [id, Value::Array(kv)] = pair.as_slice() else {
            return Err(bad());
        };
        if kv.len() < 6 {
            return Err(bad());
        }
        let names = [&kv[0], &kv[2], &kv[4]].map(|v| parse::text(v).unwrap_or_default());
        if names != ["s", "c", "o"] {
            return Err(bad());
        }
        Ok(LogEntry {
            id: parse::stream_id(id)?,
            seq: seq_of(&kv[1]).ok_or_else(bad)?,
            channel: parse::text(&kv[3]).ok_or_else(bad)?,
            offset: parse::stream_id(&kv[5])?,
            offset_value: &kv[5],
            fields: &kv[6..],
        })
    }

    /// The entry as its channel's stream has it: `[offset, [field, value, …]]`.
    pub(super) fn channel_entry(&self) -> Value {
        Value::Array(vec![
            self.offset_value.clone(),
            Value::Array(self.fields.to_vec()),
        ])
    }
}

/// A sequence number (an integer or its decimal text).
pub(super) fn seq_of(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        other => parse::text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: &str, channel: &str, offset: &str, fields: &[&str]) -> Value {
        let mut kv: Vec<Value> = vec![
            "s".into(),
            seq.into(),
            "c".into(),
            channel.into(),
            "o".into(),
            offset.into(),
        ];
        kv.extend(fields.iter().map(|f| Value::from(*f)));
        Value::Array(vec!["5-0".into(), Value::Array(kv)])
    }

    #[test]
    fn parses_log_entries() {
        let value = entry("7", "chat", "3-1", &["n", "1"]);
        let e = LogEntry::parse(&value).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.channel, "chat");
        assert_eq!(e.offset, StreamId::parse("3-1").unwrap());
        assert_eq!(e.id, StreamId::parse("5-0").unwrap());
        let Value::Array(pair) = e.channel_entry() else {
            panic!()
        };
        assert_eq!(pair[1], Value::Array(vec!["n".into(), "1".into()]));
    }

    #[test]
    fn rejects_foreign_log_entries() {
        for bad in [
            Value::Array(vec![
                "5-0".into(),
                Value::Array(vec!["a".into(), "b".into()]),
            ]),
            entry("x", "chat", "3-1", &[]),
            entry("1", "chat", "nope", &[]),
            Value::from("text"),
        ] {
            assert!(LogEntry::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
