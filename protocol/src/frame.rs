//! Every frame of wire protocol v1 as typed Rust (`docs/protocol.md` §4).
//!
//! Frames are JSON objects tagged by `type`. Unknown fields are ignored so that newer peers can
//! add optional fields without breaking older ones.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::offset::{Offset, StreamId};

/// The protocol version this crate speaks, sent in `connected`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A JSON object of message fields.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Optional first frame carrying credentials.
    Connect {
        /// Request id, echoed in the reply.
        id: u64,
        /// A JWT, required when the server has auth enabled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Start receiving a channel, optionally from an offset (default `$`), or join a
    /// consumer group when `group` and `consumer` are given.
    Subscribe {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// Where to start: `$` (default), `0`, or the last offset already seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<Offset>,
        /// Consumer group name (consumer-group subscriptions only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Consumer name within the group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        /// Start with the channel's last `rewind` messages, then live (at most
        /// [`MAX_REWIND`](crate::history::MAX_REWIND); not with `offset` or a group).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewind: Option<u64>,
        /// Ask for `presence_event` frames of the channel (only where presence is enabled).
        #[serde(default, skip_serializing_if = "is_false")]
        join_leave: bool,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
    },
    /// Append a message to a channel.
    Publish {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// The message: a non-empty JSON object.
        fields: Fields,
        /// Keep about this many entries in the channel (`XADD MAXLEN ~`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maxlen: Option<u64>,
        /// Makes a retried publish return the first offset instead of writing twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// Acknowledge consumer-group entries.
    Ack {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// Consumer group name.
        group: String,
        /// Entries to acknowledge.
        offsets: Vec<StreamId>,
    },
    /// Liveness check.
    Ping {
        /// Request id.
        id: u64,
    },
    /// Read a page of a channel's stored messages (see [`crate::history`]).
    History {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// Messages after this offset (exclusive; default `0`, from the oldest retained).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Offset>,
        /// Messages up to this offset (inclusive; default: the channel's last offset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<StreamId>,
        /// Most messages (1 to [`MAX_HISTORY_LIMIT`](crate::history::MAX_HISTORY_LIMIT),
        /// default [`DEFAULT_HISTORY_LIMIT`](crate::history::DEFAULT_HISTORY_LIMIT)).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Newest first: the page ends the range at `to` and goes back.
        #[serde(
            default,
            skip_serializing_if = "crate::history::is_false",
            deserialize_with = "crate::history::null_as_false"
        )]
        reverse: bool,
    },
    // --- presence (docs/protocol.md "Presence") ---
    /// Who is subscribed to a presence-enabled channel.
    Presence {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
    },
    /// How many clients and users are subscribed to a presence-enabled channel.
    PresenceStats {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
    },
}

/// `skip_serializing_if` for flags that are sent only when set.
fn is_false(b: &bool) -> bool {
    !*b
}

impl ClientFrame {
    /// The request id this frame carries.
    pub fn id(&self) -> u64 {
        match self {
            ClientFrame::Connect { id, .. }
            | ClientFrame::Subscribe { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Ack { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::PresenceStats { id, .. }
            | ClientFrame::Ping { id } => *id,
        }
    }
}

/// One message of a channel: a stream entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The entry's position in the channel.
    pub offset: StreamId,
    /// The entry's fields.
    pub fields: Fields,
}

/// One member of a channel's presence: a subscribed connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceMember {
    /// The connection's client id (as in `connected`).
    pub client: String,
    /// The `sub` of the connection's token, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The token's `info` claim (a JSON object), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Fields>,
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to `connect`.
    Connected {
        /// Request id.
        id: u64,
        /// Server-assigned connection id (for logs and support).
        client: String,
        /// Protocol version, [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Reply to `subscribe`.
    Subscribed {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// Delivery starts with the first message after this offset.
        offset: StreamId,
        /// Whether messages after the requested offset were already trimmed away.
        truncated: bool,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
    },
    /// Reply to `publish`.
    Published {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// The offset the engine assigned.
        offset: StreamId,
    },
    /// Reply to `ack`.
    Acked {
        /// Request id.
        id: u64,
        /// How many entries were acknowledged.
        count: u64,
    },
    /// Reply to `ping`.
    Pong {
        /// Request id.
        id: u64,
    },
    /// Messages of one channel, in offset order.
    Messages {
        /// Channel name.
        channel: String,
        /// One or more messages.
        messages: Vec<Message>,
    },
    /// Messages in `(from, to]` were removed before they could be delivered.
    Gap {
        /// Channel name.
        channel: String,
        /// The last offset the subscriber had (exclusive).
        from: StreamId,
        /// The highest removed offset (inclusive).
        to: StreamId,
    },
    /// Reply to `history`: one page of the channel's stored messages (boxed: the largest
    /// frame, and a rare one, so every other frame stays small).
    HistoryPage(Box<crate::history::PageFrame>),
    /// A request failed, or the connection has a problem.
    Error {
        /// The request this answers, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    // --- presence (docs/protocol.md "Presence") ---
    /// Reply to `presence`: the channel's members.
    PresenceMembers {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// The members, in no particular order.
        members: Vec<PresenceMember>,
    },
    /// Reply to `presence_stats`.
    PresenceCounts {
        /// Request id.
        id: u64,
        /// Channel name.
        channel: String,
        /// Members (connections).
        clients: u64,
        /// Distinct users among them (members without a user count once each).
        users: u64,
    },
    /// Members that joined or left a channel since the last such frame (to subscribers that
    /// asked with `join_leave`). Boxed: the largest frame, and rare.
    PresenceEvent(Box<PresenceEvent>),
}

/// The body of a `presence_event` frame. With `missed`, that many changes were not listed (too
/// many in one window): ask `presence` again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// Channel name.
    pub channel: String,
    /// Members that joined.
    pub joins: Vec<PresenceMember>,
    /// Members that left.
    pub leaves: Vec<PresenceMember>,
    /// Changes left out of the lists, when there were too many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}
