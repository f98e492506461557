//! Encoding and decoding frames to and from JSON text, with precise errors for bad input.

use crate::channel::validate_channel;
use crate::error::ProtocolError;
use crate::frame::{ClientFrame, ServerFrame};

/// A client frame that could not be decoded, with the request id when one could be read so the
/// error reply can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The `id` of the bad frame, when it had a readable one.
    pub id: Option<u64>,
    /// What is wrong.
    pub error: ProtocolError,
}

/// The `type` of every client frame.
pub const CLIENT_FRAME_TYPES: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "ack",
    "ping",
    "history",
    "presence",
    "presence_stats",
];

/// Decodes and validates a client frame (channel names, non-empty publish fields).
pub fn decode_client(text: &str) -> Result<ClientFrame, DecodeError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => {
            validate_client(&frame).map_err(|error| DecodeError {
                id: Some(frame.id()),
                error,
            })?;
            Ok(frame)
        }
        Err(err) => Err(explain(text, err, CLIENT_FRAME_TYPES)),
    }
}

/// The `type` of every server frame.
pub const SERVER_FRAME_TYPES: &[&str] = &[
    "connected",
    "subscribed",
    "unsubscribed",
    "published",
    "acked",
    "pong",
    "messages",
    "gap",
    "error",
    "history_page",
    "presence_members",
    "presence_counts",
    "presence_event",
];

/// Decodes a server frame (used by clients).
pub fn decode_server(text: &str) -> Result<ServerFrame, DecodeError> {
    serde_json::from_str::<ServerFrame>(text).map_err(|err| explain(text, err, SERVER_FRAME_TYPES))
}

/// Encodes a server frame as JSON text.
pub fn encode_server(frame: &ServerFrame) -> String {
    serde_json::to_string(frame).expect("server frames always serialize")
}

/// Encodes a client frame as JSON text.
pub fn encode_client(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).expect("client frames always serialize")
}

/// Checks what serde cannot: channel names, group pairs, non-empty fields, `maxlen`, key size.
/// The decoders apply it to every client frame; the session applies it so that it never sends a
/// frame the server would refuse, and a server that builds a frame itself (not from text) applies
/// it so that it accepts exactly what a client could send.
pub fn validate_client(frame: &ClientFrame) -> Result<(), ProtocolError> {
    match frame {
        ClientFrame::Subscribe {
            channel,
            offset,
            group,
            consumer,
            rewind,
            ..
        } => {
            validate_channel(channel)?;
            if let Some(rewind) = rewind {
                crate::history::validate_rewind(*rewind, offset.is_some(), group.is_some())?;
            }
            match (group, consumer) {
                (None, None) => Ok(()),
                (Some(g), Some(c)) => {
                    validate_name("group", g)?;
                    validate_name("consumer", c)
                }
                _ => Err(invalid(
                    "subscribe",
                    "\"group\" and \"consumer\" must be given together",
                )),
            }
        }
        ClientFrame::Unsubscribe { channel, .. }
        | ClientFrame::Presence { channel, .. }
        | ClientFrame::PresenceStats { channel, .. } => validate_channel(channel),
        ClientFrame::Publish {
            channel,
            fields,
            maxlen,
            idempotency_key,
            ..
        } => {
            validate_channel(channel)?;
            if fields.is_empty() {
                return Err(invalid(
                    "publish",
                    "\"fields\" must have at least one field",
                ));
            }
            if *maxlen == Some(0) {
                return Err(invalid("publish", "\"maxlen\" must be at least 1"));
            }
            if let Some(key) = idempotency_key {
                if key.is_empty() || key.len() > 200 {
                    return Err(invalid(
                        "publish",
                        "\"idempotency_key\" must be 1-200 bytes",
                    ));
                }
            }
            Ok(())
        }
        ClientFrame::Ack {
            channel,
            group,
            offsets,
            ..
        } => {
            validate_channel(channel)?;
            validate_name("group", group)?;
            if offsets.is_empty() {
                return Err(invalid("ack", "\"offsets\" must not be empty"));
            }
            Ok(())
        }
        ClientFrame::History {
            channel,
            from,
            to,
            limit,
            ..
        } => {
            validate_channel(channel)?;
            crate::history::validate_history(*from, *to, *limit)
        }
        ClientFrame::Connect { .. } | ClientFrame::Ping { .. } => Ok(()),
    }
}

/// Group and consumer names follow the channel-name alphabet.
fn validate_name(what: &str, name: &str) -> Result<(), ProtocolError> {
    validate_channel(name).map_err(|_| {
        invalid(
            "subscribe",
            &format!("\"{what}\" must be 1-200 bytes of A-Z a-z 0-9 _ . : @ / = + -"),
        )
    })
}

fn invalid(kind: &str, reason: &str) -> ProtocolError {
    ProtocolError::InvalidFrame {
        kind: kind.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Turns a serde failure into the most precise [`ProtocolError`] the text allows.
fn explain(text: &str, err: serde_json::Error, known: &[&str]) -> DecodeError {
    let Ok(mut object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
    else {
        return DecodeError {
            id: None,
            error: ProtocolError::NotJson(strip_position(&err.to_string())),
        };
    };
    let id = object.get("id").and_then(serde_json::Value::as_u64);
    let error = match object.remove("type") {
        None => ProtocolError::MissingType,
        Some(serde_json::Value::String(kind)) if !known.contains(&kind.as_str()) => {
            ProtocolError::UnknownType(kind)
        }
        Some(serde_json::Value::String(kind)) => {
            let msg = err.to_string();
            // Offsets carry their own error text; surface it as a bad offset.
            if msg.contains("invalid offset") {
                let bad = msg.split('"').nth(1).map(str::to_owned).unwrap_or_default();
                ProtocolError::BadOffset(bad)
            } else {
                let reason = schema_problem(&kind, &object).unwrap_or_else(|| strip_position(&msg));
                ProtocolError::InvalidFrame { kind, reason }
            }
        }
        Some(_) => ProtocolError::MissingType,
    };
    DecodeError { id, error }
}

/// The JSON type a frame field must have.
#[derive(Clone, Copy)]
enum Expect {
    Str,
    Object,
    Array,
    Unsigned,
    Bool,
}

/// `(field, type, required)` per client frame type, to name the field at fault.
fn client_schema(kind: &str) -> &'static [(&'static str, Expect, bool)] {
    use Expect::*;
    match kind {
        "connect" => &[("id", Unsigned, true), ("token", Str, false)],
        "subscribe" => &[
            ("id", Unsigned, true),
            ("channel", Str, true),
            ("offset", Str, false),
            ("group", Str, false),
            ("consumer", Str, false),
            ("rewind", Unsigned, false),
            ("join_leave", Bool, false),
        ],
        "unsubscribe" => &[("id", Unsigned, true), ("channel", Str, true)],
        "publish" => &[
            ("id", Unsigned, true),
            ("channel", Str, true),
            ("fields", Object, true),
            ("maxlen", Unsigned, false),
            ("idempotency_key", Str, false),
        ],
        "ack" => &[
            ("id", Unsigned, true),
            ("channel", Str, true),
            ("group", Str, true),
            ("offsets", Array, true),
        ],
        "ping" => &[("id", Unsigned, true)],
        "history" => &[
            ("id", Unsigned, true),
            ("channel", Str, true),
            ("from", Str, false),
            ("to", Str, false),
            ("limit", Unsigned, false),
            ("reverse", Bool, false),
        ],
        "presence" | "presence_stats" => &[("id", Unsigned, true), ("channel", Str, true)],
        _ => &[],
    }
}

/// Names the first missing or mistyped field of a client frame, if any.
fn schema_problem(
    kind: &str,
    object: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    use serde_json::Value;
    for (field, expect, required) in client_schema(kind) {
        let ok = match (object.get(*field), expect) {
            (None | Some(Value::Null), _) if *required => {
                return Some(format!("missing field `{field}`"))
            }
            (None | Some(Value::Null), _) => true,
            (Some(v), Expect::Str) => v.is_string(),
            (Some(v), Expect::Object) => v.is_object(),
            (Some(v), Expect::Array) => v.is_array(),
            (Some(v), Expect::Unsigned) => v.is_u64(),
            (Some(v), Expect::Bool) => v.is_boolean(),
        };
        if !ok {
            let what = match expect {
                Expect::Str => "a string",
                Expect::Object => "a JSON object",
                Expect::Array => "an array",
                Expect::Unsigned => "a non-negative integer",
                Expect::Bool => "true or false",
            };
            return Some(format!("field `{field}` must be {what}"));
        }
    }
    None
}

/// serde_json appends " at line 1 column 42"; clients do not need it.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offset::{Offset, StreamId};

    #[test]
    fn decodes_subscribe_with_default_offset() {
        let f = decode_client(r#"{"type":"subscribe","id":2,"channel":"c"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                id: 2,
                channel: "c".into(),
                offset: None,
                group: None,
                consumer: None,
                rewind: None,
                join_leave: false,
            }
        );
    }

    #[test]
    fn explains_each_kind_of_bad_input() {
        type Case = (&'static str, Option<u64>, fn(&ProtocolError) -> bool);
        let cases: &[Case] = &[
            ("not json", None, |e| matches!(e, ProtocolError::NotJson(_))),
            ("[1,2]", None, |e| matches!(e, ProtocolError::NotJson(_))),
            (r#"{"id":3}"#, Some(3), |e| {
                matches!(e, ProtocolError::MissingType)
            }),
            (
                r#"{"type":"nope","id":4}"#,
                Some(4),
                |e| matches!(e, ProtocolError::UnknownType(t) if t == "nope"),
            ),
            (
                r#"{"type":"subscribe","id":5}"#,
                Some(5),
                |e| matches!(e, ProtocolError::InvalidFrame { reason, .. } if reason.contains("channel")),
            ),
            (
                r#"{"type":"subscribe","id":6,"channel":"a b"}"#,
                Some(6),
                |e| matches!(e, ProtocolError::BadChannel(_)),
            ),
            (
                r#"{"type":"subscribe","id":7,"channel":"c","offset":"x-1"}"#,
                Some(7),
                |e| matches!(e, ProtocolError::BadOffset(o) if o == "x-1"),
            ),
            (
                r#"{"type":"publish","id":8,"channel":"c","fields":{}}"#,
                Some(8),
                |e| matches!(e, ProtocolError::InvalidFrame { .. }),
            ),
            (r#"{"type":"ping"}"#, None, |e| {
                matches!(e, ProtocolError::InvalidFrame { .. })
            }),
        ];
        for (text, id, check) in cases {
            let err = decode_client(text).unwrap_err();
            assert_eq!(err.id, *id, "{text}");
            assert!(check(&err.error), "{text}: {:?}", err.error);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let frame = ServerFrame::Subscribed {
            id: 1,
            channel: "c".into(),
            offset: StreamId::new(1, 2),
            truncated: false,
        };
        let text = encode_server(&frame);
        assert_eq!(decode_server(&text).unwrap(), frame);
        let _ = Offset::Latest;
    }
}
