//! History and rewind: the bounds and checks of the `history` request and of `subscribe` with
//! `rewind` (`docs/protocol.md` §4), shared by the codecs, the session and the server.
//!
//! A `history` request names a range `(from, to]` of a channel: messages after `from` (an
//! offset, exclusive, default `0`) up to and including `to` (default: the channel's last
//! offset when the request is served). A page holds at most `limit` messages and at most
//! [`HISTORY_PAGE_BYTES`] of encoded messages (always at least one message when the range has
//! one), oldest first, or newest first with `reverse`.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ProtocolError;
use crate::frame::Message;
use crate::offset::{Offset, StreamId};

/// Most messages one `history` page may ask for; a larger `limit` is refused (`bad_request`).
pub const MAX_HISTORY_LIMIT: u64 = 1_000;

/// The `limit` of a `history` request that gives none.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100;

/// Most bytes of encoded messages one page carries, besides its first message (a page always
/// holds one message when its range has one, and one message is at most about 1 MiB).
pub const HISTORY_PAGE_BYTES: usize = 1 << 20;

/// Most messages a `subscribe` may rewind; a larger `rewind` is refused (`bad_request`).
pub const MAX_REWIND: u64 = 1_000;

/// A range `(from, to]` of removed messages, as `history_page` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The last offset before the removed messages (exclusive).
    pub from: StreamId,
    /// The highest removed offset (inclusive).
    pub to: StreamId,
}

/// What a `history` request asks for besides its channel; every field is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Messages after this offset (exclusive); `None`: from the oldest retained (`0`).
    pub from: Option<Offset>,
    /// Messages up to this offset (inclusive); `None`: up to the channel's last offset.
    pub to: Option<StreamId>,
    /// Most messages, 1 to [`MAX_HISTORY_LIMIT`]; `None`: [`DEFAULT_HISTORY_LIMIT`].
    pub limit: Option<u64>,
    /// Newest first: the page ends at `to` and goes back towards `from`.
    pub reverse: bool,
}

/// One page of a channel's history, as the `history_page` reply carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The messages: oldest first, or newest first for a `reverse` request.
    pub messages: Vec<Message>,
    /// Where the next page starts: pass it as `from` (forward) or as `to` (reverse).
    pub next: StreamId,
    /// Whether the range may hold messages beyond this page (`false`: the range is done).
    pub more: bool,
    /// Messages of the requested range were removed (trimmed) before they could be read.
    pub truncated: bool,
    /// The removed range, when known.
    pub gap: Option<Removed>,
}

/// The `history_page` reply as a frame ([`crate::ServerFrame::HistoryPage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageFrame {
    /// Request id.
    pub id: u64,
    /// Channel name.
    pub channel: String,
    /// The messages: in offset order, newest first with `reverse`.
    pub messages: Vec<Message>,
    /// Where the next page starts: pass it as `from` (or as `to` with `reverse`).
    pub next: StreamId,
    /// Whether the range may hold messages beyond this page.
    pub more: bool,
    /// Messages of the requested range were removed (trimmed) before they could be read.
    pub truncated: bool,
    /// The removed range `(from, to]`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Removed>,
}

impl PageFrame {
    /// The page without its request id and channel.
    pub fn into_page(self) -> Page {
        Page {
            messages: self.messages,
            next: self.next,
            more: self.more,
            truncated: self.truncated,
            gap: self.gap,
        }
    }

    /// The reply to request `id` for `channel` carrying `page`.
    pub fn new(id: u64, channel: String, page: Page) -> PageFrame {
        PageFrame {
            id,
            channel,
            messages: page.messages,
            next: page.next,
            more: page.more,
            truncated: page.truncated,
            gap: page.gap,
        }
    }
}

/// serde's `skip_serializing_if` for flags that are off by default.
pub(crate) fn is_false(flag: &bool) -> bool {
    !*flag
}

/// Reads an optional flag, `null` counting as absent (as for every optional field).
pub(crate) fn null_as_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// Checks a `history` request's bounds: `limit` from 1 to [`MAX_HISTORY_LIMIT`], and `from`
/// not after `to`.
pub fn validate_history(
    from: Option<Offset>,
    to: Option<StreamId>,
    limit: Option<u64>,
) -> Result<(), ProtocolError> {
    // Plain strings, no formatting: the browser client links this.
    if limit.is_some_and(|l| !(1..=MAX_HISTORY_LIMIT).contains(&l)) {
        return Err(invalid("history", "\"limit\" must be from 1 to 1000"));
    }
    match (from, to) {
        (Some(Offset::Id(from)), Some(to)) if from > to => {
            Err(invalid("history", "\"from\" must not be after \"to\""))
        }
        _ => Ok(()),
    }
}

/// Checks a `subscribe`'s `rewind`: at most [`MAX_REWIND`], and neither with an `offset` nor
/// with a consumer group.
pub fn validate_rewind(rewind: u64, offset: bool, group: bool) -> Result<(), ProtocolError> {
    let reason = if rewind > MAX_REWIND {
        "\"rewind\" must be at most 1000"
    } else if offset {
        "\"rewind\" and \"offset\" cannot be given together"
    } else if group {
        "\"rewind\" is not for consumer groups"
    } else {
        return Ok(());
    };
    Err(invalid("subscribe", reason))
}

fn invalid(kind: &str, reason: &str) -> ProtocolError {
    ProtocolError::InvalidFrame {
        kind: kind.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_bounds() {
        let limit = validate_history(None, None, Some(0))
            .unwrap_err()
            .to_string();
        assert!(limit.contains(&MAX_HISTORY_LIMIT.to_string()), "{limit}");
        let rewind = validate_rewind(MAX_REWIND + 1, false, false).unwrap_err();
        assert!(rewind.to_string().contains(&MAX_REWIND.to_string()));
    }

    #[test]
    fn bounds() {
        assert!(validate_history(None, None, None).is_ok());
        assert!(validate_history(None, None, Some(MAX_HISTORY_LIMIT)).is_ok());
        assert!(validate_history(None, None, Some(0)).is_err());
        assert!(validate_history(None, None, Some(MAX_HISTORY_LIMIT + 1)).is_err());
        let (a, b) = (StreamId::new(1, 0), StreamId::new(2, 0));
        assert!(validate_history(Some(Offset::Id(a)), Some(b), None).is_ok());
        assert!(validate_history(Some(Offset::Id(a)), Some(a), None).is_ok());
        assert!(validate_history(Some(Offset::Id(b)), Some(a), None).is_err());
        assert!(validate_rewind(MAX_REWIND, false, false).is_ok());
        assert!(validate_rewind(MAX_REWIND + 1, false, false).is_err());
        assert!(validate_rewind(1, true, false).is_err());
        assert!(validate_rewind(1, false, true).is_err());
    }
}
