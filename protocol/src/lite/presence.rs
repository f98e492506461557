//! The presence frames of the hand-written codec: members written and read, and the server
//! frames that carry them.

use crate::error::ProtocolError;
use crate::frame::{PresenceEvent, PresenceMember, ServerFrame};
use crate::json;
use serde_json::Value;

use super::{Members, Writer};

impl Writer {
    /// `"key":[{"client":…,"user":…,"info":{…}},…]` (presence members).
    pub(super) fn members(self, key: &str, members: &[PresenceMember]) -> Self {
        let mut w = self.key(key);
        w.out.push('[');
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                w.out.push(',');
            }
            w.out.push_str("{\"client\":");
            json::write_str(&mut w.out, &m.client);
            if let Some(user) = &m.user {
                w.out.push_str(",\"user\":");
                json::write_str(&mut w.out, user);
            }
            if let Some(info) = &m.info {
                w.out.push_str(",\"info\":");
                json::write_object(&mut w.out, info);
            }
            w.out.push('}');
        }
        w.out.push(']');
        w
    }
}

impl Members {
    /// An array of presence members (a plain loop: no iterator adapters to instantiate in
    /// the browser's code).
    pub(super) fn members(&mut self, key: &str) -> Result<Vec<PresenceMember>, ProtocolError> {
        let mut members = Vec::new();
        for item in self.array(key)? {
            let Value::Object(map) = item else {
                return Err(self.mistyped(key, "an array of objects"));
            };
            let mut m = Members {
                kind: self.kind.clone(),
                map,
            };
            let info = match m.opt("info") {
                None => None,
                Some(Value::Object(map)) => Some(map),
                Some(_) => return Err(m.mistyped("info", "a JSON object")),
            };
            members.push(PresenceMember {
                client: m.string("client")?,
                user: m.opt_string("user")?,
                info,
            });
        }
        Ok(members)
    }
}

/// A `presence_members`, `presence_counts` or `presence_event` frame.
pub(super) fn server_frame(f: &mut Members) -> Result<ServerFrame, ProtocolError> {
    Ok(match f.kind.as_str() {
        "presence_members" => ServerFrame::PresenceMembers {
            id: f.u64("id")?,
            channel: f.string("channel")?,
            members: f.members("members")?,
        },
        "presence_counts" => ServerFrame::PresenceCounts {
            id: f.u64("id")?,
            channel: f.string("channel")?,
            clients: f.u64("clients")?,
            users: f.u64("users")?,
        },
        _ => ServerFrame::PresenceEvent(Box::new(PresenceEvent {
            channel: f.string("channel")?,
            joins: f.members("joins")?,
            leaves: f.members("leaves")?,
            missed: f.opt_u64("missed")?,
        })),
    })
}
