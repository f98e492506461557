//! What a publishable message may be: how many fields, how deep a value nests, how large the
//! entry is. Checked by the request layer for every publish (WebSocket, `/api/publish`) before
//! the engine is called, so nothing is acknowledged that a subscriber could not receive and
//! decode.

use std::io;

use redistribute_protocol::{ErrorCode, Fields};
use serde_json::Value;

use crate::engine::{MAX_ENTRY_BYTES, MAX_FIELDS, MAX_VALUE_DEPTH};
use crate::error::RequestError;

/// Bytes of an entry's JSON around its fields: `{"offset":"<ms>-<seq>","fields":{` … `}}`, with
/// the longest offset.
const ENTRY_OVERHEAD: usize = 64;

/// Checks a message's fields against the limits; the error names the limit passed.
pub(crate) fn check_fields(fields: &Fields) -> Result<(), RequestError> {
    if fields.len() > MAX_FIELDS {
        return Err(RequestError::new(
            ErrorCode::TooLarge,
            format!("a message may have at most {MAX_FIELDS} fields"),
        ));
    }
    let mut bytes = ENTRY_OVERHEAD;
    for (name, value) in fields {
        if depth(value) > MAX_VALUE_DEPTH {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("field {name:?} nests deeper than {MAX_VALUE_DEPTH} levels"),
            ));
        }
        // `"name":value,` as stored and delivered.
        bytes += encoded_len(&Value::String(name.clone())) + encoded_len(value) + 2;
        if bytes > MAX_ENTRY_BYTES {
            return Err(RequestError::new(
                ErrorCode::TooLarge,
                format!("a message may be at most {MAX_ENTRY_BYTES} bytes of encoded fields"),
            ));
        }
    }
    Ok(())
}

/// The nesting of arrays and objects in a value (`1` is 0, `[1]` is 1); iterative, so any
/// depth is safe to measure.
fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Array(items) => {
                max = max.max(level + 1);
                stack.extend(items.iter().map(|v| (v, level + 1)));
            }
            Value::Object(map) => {
                max = max.max(level + 1);
                stack.extend(map.values().map(|v| (v, level + 1)));
            }
            _ => {}
        }
        if max > MAX_VALUE_DEPTH {
            break;
        }
    }
    max
}

/// Length of a value's JSON text, without building it.
fn encoded_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(Value::from(1), |inner, _| Value::Array(vec![inner]))
    }

    fn fields(pairs: impl IntoIterator<Item = (String, Value)>) -> Fields {
        pairs.into_iter().collect()
    }

    fn code(result: Result<(), RequestError>) -> Option<ErrorCode> {
        match result {
            Ok(()) => None,
            Err(RequestError::Protocol { code, .. }) => Some(code),
            Err(RequestError::Socket) => panic!("not a socket error"),
        }
    }

    #[test]
    fn depth_at_the_limit_passes_and_one_more_is_refused() {
        assert_eq!(depth(&nested(0)), 0);
        assert_eq!(depth(&nested(MAX_VALUE_DEPTH)), MAX_VALUE_DEPTH);
        let ok = fields([("v".into(), nested(MAX_VALUE_DEPTH))]);
        assert_eq!(code(check_fields(&ok)), None);
        for levels in [MAX_VALUE_DEPTH + 1, 125, 126, 127, 1_000] {
            let deep = fields([("v".into(), nested(levels))]);
            assert_eq!(code(check_fields(&deep)), Some(ErrorCode::BadRequest));
        }
        let wide = serde_json::json!({"a": [1, {"b": [[[2]]]}], "c": "x"});
        assert_eq!(depth(&wide), 6);
    }

    #[test]
    fn size_at_the_limit_passes_and_one_byte_more_is_refused() {
        // `"v":"<n x>"` plus the overhead.
        let fits = MAX_ENTRY_BYTES - ENTRY_OVERHEAD - "\"v\"".len() - 2 - 2;
        let at = fields([("v".into(), Value::String("x".repeat(fits)))]);
        assert_eq!(code(check_fields(&at)), None);
        let past = fields([("v".into(), Value::String("x".repeat(fits + 1)))]);
        assert_eq!(code(check_fields(&past)), Some(ErrorCode::TooLarge));
        // Escapes count as they are sent: 200,000 newlines are 400,000 bytes of JSON.
        let escaped = fields([
            ("a".into(), Value::String("\n".repeat(300_000))),
            ("b".into(), Value::String("\n".repeat(300_000))),
        ]);
        assert_eq!(code(check_fields(&escaped)), Some(ErrorCode::TooLarge));
        let many = fields((0..=MAX_FIELDS).map(|i| (i.to_string(), Value::Null)));
        assert_eq!(code(check_fields(&many)), Some(ErrorCode::TooLarge));
    }
}
