//! The frame codec of [`crate::codec`] written by hand over [`crate::json`], with no serde
//! machinery: what the browser client links, where code size is download time.
//!
//! Same frames, same JSON and the same acceptance as the serde codec (unknown fields ignored,
//! `null` for an absent optional field, numbers and offsets checked alike; the golden vectors
//! and the fuzz harness hold both to it). Two differences, both where the serde codec refuses
//! and this one cannot tell: a repeated key keeps its last value (as `JSON.parse` does), and
//! error reasons are worded by this module (the [`ProtocolError`] kinds are the same).

use serde_json::{Map, Value};

use crate::codec::{validate_client, DecodeError, CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES};
use crate::error::{ErrorCode, ProtocolError};
use crate::frame::{ClientFrame, Fields, Message, ServerFrame};
use crate::history::{PageFrame, Removed};
use crate::json;
use crate::offset::{Offset, StreamId};

mod presence;
mod writer;

use writer::Writer;

/// Decodes a server frame (used by clients), like [`crate::codec::decode_server`].
pub fn decode_server(text: &str) -> Result<ServerFrame, DecodeError> {
    let (id, mut f) = object(text, SERVER_FRAME_TYPES)?;
    server_frame(&mut f).map_err(|error| DecodeError { id, error })
}

/// Decodes and validates a client frame, like [`crate::codec::decode_client`].
pub fn decode_client(text: &str) -> Result<ClientFrame, DecodeError> {
    let (id, mut f) = object(text, CLIENT_FRAME_TYPES)?;
    let frame = client_frame(&mut f).map_err(|error| DecodeError { id, error })?;
    validate_client(&frame).map_err(|error| DecodeError {
        id: Some(frame.id()),
        error,
    })?;
    Ok(frame)
}

/// Encodes a client frame as JSON text, like [`crate::codec::encode_client`].
pub fn encode_client(frame: &ClientFrame) -> String {
    let w = match frame {
        ClientFrame::Connect { id, token } => Writer::new("connect", *id).opt_str("token", token),
        ClientFrame::Subscribe {
            id,
            channel,
            offset,
            group,
            consumer,
            rewind,
            join_leave,
        } => {
            let w = Writer::new("subscribe", *id)
                .str("channel", channel)
                .opt_str("offset", &offset.map(|o| o.to_string()))
                .opt_str("group", group)
                .opt_str("consumer", consumer)
                .opt_u64("rewind", *rewind);
            match join_leave {
                true => w.key("join_leave").raw("true"),
                false => w,
            }
        }
        ClientFrame::Unsubscribe { id, channel } => {
            Writer::new("unsubscribe", *id).str("channel", channel)
        }
        ClientFrame::Publish {
            id,
            channel,
            fields,
            maxlen,
            idempotency_key,
        } => Writer::new("publish", *id)
            .str("channel", channel)
            .object("fields", fields)
            .opt_u64("maxlen", *maxlen)
            .opt_str("idempotency_key", idempotency_key),
        ClientFrame::Ack {
            id,
            channel,
            group,
            offsets,
        } => {
            let mut w = Writer::new("ack", *id)
                .str("channel", channel)
                .str("group", group)
                .key("offsets");
            w.out.push('[');
            for (i, o) in offsets.iter().enumerate() {
                if i > 0 {
                    w.out.push(',');
                }
                json::write_str(&mut w.out, &o.to_string());
            }
            w.out.push(']');
            w
        }
        ClientFrame::Ping { id } => Writer::new("ping", *id),
        ClientFrame::History {
            id,
            channel,
            from,
            to,
            limit,
            reverse,
        } => {
            let w = Writer::new("history", *id)
                .str("channel", channel)
                .opt_str("from", &from.map(|o| o.to_string()))
                .opt_str("to", &to.map(|o| o.to_string()))
                .opt_u64("limit", *limit);
            if *reverse {
                w.key("reverse").raw("true")
            } else {
                w
            }
        }
        ClientFrame::Presence { id, channel } => {
            Writer::new("presence", *id).str("channel", channel)
        }
        ClientFrame::PresenceStats { id, channel } => {
            Writer::new("presence_stats", *id).str("channel", channel)
        }
    };
    w.end()
}

/// Encodes a server frame as JSON text, like [`crate::codec::encode_server`].
pub fn encode_server(frame: &ServerFrame) -> String {
    let w = match frame {
        ServerFrame::Connected {
            id,
            client,
            version,
        } => Writer::new("connected", *id)
            .str("client", client)
            .u64("version", u64::from(*version)),
        ServerFrame::Subscribed {
            id,
            channel,
            offset,
            truncated,
        } => Writer::new("subscribed", *id)
            .str("channel", channel)
            .str("offset", &offset.to_string())
            .bool("truncated", *truncated),
        ServerFrame::Unsubscribed { id, channel } => {
            Writer::new("unsubscribed", *id).str("channel", channel)
        }
        ServerFrame::Published {
            id,
            channel,
            offset,
        } => Writer::new("published", *id)
            .str("channel", channel)
            .str("offset", &offset.to_string()),
        ServerFrame::Acked { id, count } => Writer::new("acked", *id).u64("count", *count),
        ServerFrame::Pong { id } => Writer::new("pong", *id),
        ServerFrame::Messages { channel, messages } => Writer::start("messages")
            .str("channel", channel)
            .messages(messages),
        ServerFrame::Gap { channel, from, to } => Writer::start("gap")
            .str("channel", channel)
            .str("from", &from.to_string())
            .str("to", &to.to_string()),
        ServerFrame::Error { id, code, message } => Writer::start("error")
            .opt_u64("id", *id)
            .str("code", code.as_str())
            .str("message", message),
        ServerFrame::HistoryPage(page) => {
            let PageFrame {
                id,
                channel,
                messages,
                next,
                more,
                truncated,
                gap,
            } = &**page;
            let w = Writer::new("history_page", *id)
                .str("channel", channel)
                .messages(messages)
                .str("next", &next.to_string())
                .bool("more", *more)
                .bool("truncated", *truncated);
            match gap {
                Some(Removed { from, to }) => {
                    let mut w = w.key("gap");
                    w.out.push_str("{\"from\":");
                    json::write_str(&mut w.out, &from.to_string());
                    w.out.push_str(",\"to\":");
                    json::write_str(&mut w.out, &to.to_string());
                    w.raw("}")
                }
                None => w,
            }
        }
        ServerFrame::PresenceMembers {
            id,
            channel,
            members,
        } => Writer::new("presence_members", *id)
            .str("channel", channel)
            .members("members", members),
        ServerFrame::PresenceCounts {
            id,
            channel,
            clients,
            users,
        } => Writer::new("presence_counts", *id)
            .str("channel", channel)
            .u64("clients", *clients)
            .u64("users", *users),
        ServerFrame::PresenceEvent(event) => Writer::start("presence_event")
            .str("channel", &event.channel)
            .members("joins", &event.joins)
            .members("leaves", &event.leaves)
            .opt_u64("missed", event.missed),
    };
    w.end()
}

/// A frame's members with its `type`, taken out one by one with type checks.
struct Members {
    kind: String,
    map: Map<String, Value>,
}

/// Parses a JSON object with a known `type`; on failure, the readable `id` and the error.
fn object(text: &str, known: &[&str]) -> Result<(Option<u64>, Members), DecodeError> {
    let fail = |id, error| DecodeError { id, error };
    let map = match json::parse(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(fail(
                None,
                ProtocolError::NotJson("expected a JSON object".into()),
            ))
        }
        Err(e) => return Err(fail(None, ProtocolError::NotJson(e.to_string()))),
    };
    let id = map.get("id").and_then(Value::as_u64);
    let kind = match map.get("type") {
        Some(Value::String(kind)) if known.contains(&kind.as_str()) => kind.clone(),
        Some(Value::String(kind)) => {
            return Err(fail(id, ProtocolError::UnknownType(kind.clone())))
        }
        _ => return Err(fail(id, ProtocolError::MissingType)),
    };
    Ok((id, Members { kind, map }))
}

impl Members {
    fn invalid(&self, reason: String) -> ProtocolError {
        ProtocolError::InvalidFrame {
            kind: self.kind.clone(),
            reason,
        }
    }

    /// An optional member: `None` when absent or `null`.
    fn opt(&mut self, key: &str) -> Option<Value> {
        json::take(&mut self.map, key)
    }

    fn req(&mut self, key: &str) -> Result<Value, ProtocolError> {
        self.opt(key)
            .ok_or_else(|| self.invalid(format!("missing field `{key}`")))
    }

    fn mistyped(&self, key: &str, what: &str) -> ProtocolError {
        self.invalid(format!("field `{key}` must be {what}"))
    }

    fn u64_of(&self, key: &str, v: Value) -> Result<u64, ProtocolError> {
        v.as_u64()
            .ok_or_else(|| self.mistyped(key, "a non-negative integer"))
    }

    fn u64(&mut self, key: &str) -> Result<u64, ProtocolError> {
        let v = self.req(key)?;
        self.u64_of(key, v)
    }

    fn opt_u64(&mut self, key: &str) -> Result<Option<u64>, ProtocolError> {
        self.opt(key).map(|v| self.u64_of(key, v)).transpose()
    }

    fn string_of(&self, key: &str, v: Value) -> Result<String, ProtocolError> {
        match v {
            Value::String(s) => Ok(s),
            _ => Err(self.mistyped(key, "a string")),
        }
    }

    fn string(&mut self, key: &str) -> Result<String, ProtocolError> {
        let v = self.req(key)?;
        self.string_of(key, v)
    }

    fn opt_string(&mut self, key: &str) -> Result<Option<String>, ProtocolError> {
        self.opt(key).map(|v| self.string_of(key, v)).transpose()
    }

    fn bool(&mut self, key: &str) -> Result<bool, ProtocolError> {
        let v = self.req(key)?;
        self.bool_of(key, v)
    }

    fn bool_of(&self, key: &str, v: Value) -> Result<bool, ProtocolError> {
        v.as_bool()
            .ok_or_else(|| self.mistyped(key, "true or false"))
    }

    /// An optional flag, `false` when absent or `null`.
    fn opt_bool(&mut self, key: &str) -> Result<bool, ProtocolError> {
        Ok(self.opt(key).map(|v| self.bool_of(key, v)).transpose()? == Some(true))
    }

    /// An object member read by `read` from its own members.
    fn nested<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(&mut Members) -> Result<T, ProtocolError>,
    ) -> Result<Option<T>, ProtocolError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Object(map)) => read(&mut Members {
                kind: self.kind.clone(),
                map,
            })
            .map(Some),
            Some(_) => Err(self.mistyped(key, "a JSON object")),
        }
    }

    /// The `messages` array of a `messages` or `history_page` frame.
    fn messages(&mut self) -> Result<Vec<Message>, ProtocolError> {
        self.each("messages", |f, v| match v {
            Value::Object(map) => {
                let mut m = Members {
                    kind: f.kind.clone(),
                    map,
                };
                Ok(Message {
                    offset: m.stream_id("offset")?,
                    fields: m.object("fields")?,
                })
            }
            _ => Err(f.mistyped("messages", "an array of objects")),
        })
    }

    fn stream_id(&mut self, key: &str) -> Result<StreamId, ProtocolError> {
        StreamId::parse(&self.string(key)?)
    }

    fn object(&mut self, key: &str) -> Result<Fields, ProtocolError> {
        match self.req(key)? {
            Value::Object(map) => Ok(map),
            _ => Err(self.mistyped(key, "a JSON object")),
        }
    }

    fn array(&mut self, key: &str) -> Result<Vec<Value>, ProtocolError> {
        match self.req(key)? {
            Value::Array(items) => Ok(items),
            _ => Err(self.mistyped(key, "an array")),
        }
    }

    /// The items of an array, each read by `item` from a one-member frame.
    fn each<T>(
        &mut self,
        key: &str,
        mut item: impl FnMut(&mut Members, Value) -> Result<T, ProtocolError>,
    ) -> Result<Vec<T>, ProtocolError> {
        // A loop, not `collect` into a `Result`: that links an in-place collection per item
        // type into the browser client.
        let mut out = Vec::new();
        for v in self.array(key)? {
            out.push(item(self, v)?);
        }
        Ok(out)
    }
}

fn server_frame(f: &mut Members) -> Result<ServerFrame, ProtocolError> {
    Ok(match f.kind.as_str() {
        "connected" => ServerFrame::Connected {
            id: f.u64("id")?,
            client: f.string("client")?,
            version: u32::try_from(f.u64("version")?)
                .map_err(|_| f.mistyped("version", "a 32-bit integer"))?,
        },
        "subscribed" => ServerFrame::Subscribed {
            id: f.u64("id")?,
            channel: f.string("channel")?,
            offset: f.stream_id("offset")?,
            truncated: f.bool("truncated")?,
        },
        "unsubscribed" => ServerFrame::Unsubscribed {
            id: f.u64("id")?,
            channel: f.string("channel")?,
        },
        "published" => ServerFrame::Published {
            id: f.u64("id")?,
            channel: f.string("channel")?,
            offset: f.stream_id("offset")?,
        },
        "acked" => ServerFrame::Acked {
            id: f.u64("id")?,
            count: f.u64("count")?,
        },
        "pong" => ServerFrame::Pong { id: f.u64("id")? },
        "messages" => ServerFrame::Messages {
            channel: f.string("channel")?,
            messages: f.messages()?,
        },
        "history_page" => ServerFrame::HistoryPage(Box::new(PageFrame {
            id: f.u64("id")?,
            channel: f.string("channel")?,
            messages: f.messages()?,
            next: f.stream_id("next")?,
            more: f.bool("more")?,
            truncated: f.bool("truncated")?,
            gap: f.nested("gap", |g| {
                Ok(Removed {
                    from: g.stream_id("from")?,
                    to: g.stream_id("to")?,
                })
            })?,
        })),
        "gap" => ServerFrame::Gap {
            channel: f.string("channel")?,
            from: f.stream_id("from")?,
            to: f.stream_id("to")?,
        },
        "presence_members" | "presence_counts" | "presence_event" => presence::server_frame(f)?,
        _ => {
            let id = f.opt_u64("id")?;
            let code = f.string("code")?;
            ServerFrame::Error {
                id,
                code: ErrorCode::from_wire(&code)
                    .ok_or_else(|| f.invalid(format!("unknown error code \"{code}\"")))?,
                message: f.string("message")?,
            }
        }
    })
}

fn client_frame(f: &mut Members) -> Result<ClientFrame, ProtocolError> {
    let id = f.u64("id")?;
    Ok(match f.kind.as_str() {
        "connect" => ClientFrame::Connect {
            id,
            token: f.opt_string("token")?,
        },
        "subscribe" => ClientFrame::Subscribe {
            id,
            channel: f.string("channel")?,
            offset: f
                .opt_string("offset")?
                .map(|o| Offset::parse(&o))
                .transpose()?,
            group: f.opt_string("group")?,
            consumer: f.opt_string("consumer")?,
            rewind: f.opt_u64("rewind")?,
            join_leave: f.opt_bool("join_leave")?,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            id,
            channel: f.string("channel")?,
        },
        "publish" => ClientFrame::Publish {
            id,
            channel: f.string("channel")?,
            fields: f.object("fields")?,
            maxlen: f.opt_u64("maxlen")?,
            idempotency_key: f.opt_string("idempotency_key")?,
        },
        "ack" => ClientFrame::Ack {
            id,
            channel: f.string("channel")?,
            group: f.string("group")?,
            offsets: f.each("offsets", |f, v| {
                StreamId::parse(&f.string_of("offsets", v)?)
            })?,
        },
        "history" => ClientFrame::History {
            id,
            channel: f.string("channel")?,
            from: f
                .opt_string("from")?
                .map(|o| Offset::parse(&o))
                .transpose()?,
            to: f
                .opt_string("to")?
                .map(|o| StreamId::parse(&o))
                .transpose()?,
            limit: f.opt_u64("limit")?,
            reverse: f.opt_bool("reverse")?,
        },
        "presence" => ClientFrame::Presence {
            id,
            channel: f.string("channel")?,
        },
        "presence_stats" => ClientFrame::PresenceStats {
            id,
            channel: f.string("channel")?,
        },
        _ => ClientFrame::Ping { id },
    })
}

#[cfg(test)]
mod tests;
