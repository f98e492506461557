//! The request layer: what every transport hands its input to.
//!
//! WebSocket frames, SSE and long-poll queries, task lookups and back-end API calls are turned
//! into the same typed requests ([`Request`]). A route's access class ([`Access`]) decides how
//! its caller authenticates ([`credentials`]); each request is then, in order, checked for a
//! credential and a valid channel name, authorized by [`crate::core_state::Core::authorizer`] (the default
//! policy or the library user's hook), rate-limited (where the transport keeps a bucket: a
//! WebSocket connection), checked against the message limits (a publish) and carried out on
//! the engine or the caller's feed under the request timeout. No transport calls the engine
//! for a client another way. A refused request changes nothing.
//!
//! One file per request: [`subscribe`] (with unsubscribe and ack, which act on a feed),
//! [`publish`], [`history`]; [`task_id`] turns a task id into its channel and credential.

pub(crate) mod credentials;
pub(crate) mod history;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod subscribe;
pub(crate) mod task_id;

use std::future::Future;
use std::time::Duration;

use redistribute_protocol::{ClientFrame, ErrorCode, Fields, Offset, StreamId};

use crate::auth::{Action, AuthContext, Credential};
use crate::core_state::Core;
use crate::engine::EngineError;
use crate::error::RequestError;

pub(crate) use crate::limits::ENGINE_TIMEOUT_MARGIN;
pub(crate) use credentials::authenticate;
pub use credentials::Access;

/// A client's request, whatever the transport it came by.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    /// Start receiving a channel.
    Subscribe(Subscribe),
    /// Stop receiving a channel.
    Unsubscribe(Unsubscribe),
    /// Append a message to a channel.
    Publish(Publish),
    /// Acknowledge consumer-group entries.
    Ack(Ack),
    /// Read a page of a channel's stored entries.
    History(History),
    /// Who is subscribed to a presence channel, or how many.
    Presence(PresenceQuery),
}

/// Ask for the members of `channel` (or, with `stats`, their counts).
#[derive(Debug, Clone)]
pub(crate) struct PresenceQuery {
    /// The channel.
    pub channel: String,
    /// Counts only.
    pub stats: bool,
}

/// Subscribe to `channel` from `offset`, alone or as `consumer` of a consumer group.
#[derive(Debug, Clone)]
pub(crate) struct Subscribe {
    /// The channel.
    pub channel: String,
    /// Where to start (for a group: where a new group starts).
    pub offset: Offset,
    /// `(group, consumer)` for a consumer-group subscription.
    pub group: Option<(String, String)>,
    /// Start with the channel's last this many entries instead of `offset` (a plain
    /// subscription only).
    pub rewind: Option<usize>,
    /// Deliver the channel's join/leave events (on a presence channel).
    pub join_leave: bool,
}

/// End the subscription to `channel`.
#[derive(Debug, Clone)]
pub(crate) struct Unsubscribe {
    /// The channel.
    pub channel: String,
}

/// Publish `fields` to `channel`.
#[derive(Debug, Clone)]
pub(crate) struct Publish {
    /// The channel.
    pub channel: String,
    /// The message.
    pub fields: Fields,
    /// Approximate cap on the channel's length after the append.
    pub maxlen: Option<u64>,
    /// Deduplication key: a repeated publish with it returns the first offset.
    pub idempotency_key: Option<String>,
}

/// Acknowledge `offsets` of `group` on `channel`.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    /// The channel.
    pub channel: String,
    /// The consumer group.
    pub group: String,
    /// The entries.
    pub offsets: Vec<StreamId>,
}

/// Read up to `limit` entries of `channel` in `(from, to]`, oldest first or (`reverse`)
/// newest first.
#[derive(Debug, Clone)]
pub(crate) struct History {
    /// The channel.
    pub channel: String,
    /// Entries after this offset.
    pub from: Offset,
    /// Entries up to this offset (inclusive); `None`: up to the channel's last one.
    pub to: Option<StreamId>,
    /// Most entries returned.
    pub limit: usize,
    /// Newest first, going back from `to`.
    pub reverse: bool,
}

impl Request {
    /// The request a protocol frame carries, with its id; `None` for the frames that are no
    /// request of this layer (`connect`, `ping`).
    pub(crate) fn from_frame(frame: ClientFrame) -> Option<(u64, Request)> {
        Some(match frame {
            ClientFrame::Connect { .. } | ClientFrame::Ping { .. } => return None,
            ClientFrame::Subscribe {
                id,
                channel,
                offset,
                group,
                consumer,
                rewind,
                join_leave,
            } => {
                let group = group.zip(consumer);
                let offset = offset.unwrap_or_default();
                let subscribe = Subscribe {
                    channel,
                    offset,
                    group,
                    rewind: rewind.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                    join_leave,
                };
                (id, Request::Subscribe(subscribe))
            }
            ClientFrame::Unsubscribe { id, channel } => {
                (id, Request::Unsubscribe(Unsubscribe { channel }))
            }
            ClientFrame::Publish {
                id,
                channel,
                fields,
                maxlen,
                idempotency_key,
            } => {
                let publish = Publish {
                    channel,
                    fields,
                    maxlen,
                    idempotency_key,
                };
                (id, Request::Publish(publish))
            }
            ClientFrame::History {
                id,
                channel,
                from,
                to,
                limit,
                reverse,
            } => {
                let limit = limit.unwrap_or(redistribute_protocol::history::DEFAULT_HISTORY_LIMIT);
                let history = History {
                    channel,
                    from: from.unwrap_or(Offset::Earliest),
                    to,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    reverse,
                };
                (id, Request::History(history))
            }
            ClientFrame::Presence { id, channel } => {
                let query = PresenceQuery {
                    channel,
                    stats: false,
                };
                (id, Request::Presence(query))
            }
            ClientFrame::PresenceStats { id, channel } => {
                let query = PresenceQuery {
                    channel,
                    stats: true,
                };
                (id, Request::Presence(query))
            }
            ClientFrame::Ack {
                id,
                channel,
                group,
                offsets,
            } => (
                id,
                Request::Ack(Ack {
                    channel,
                    group,
                    offsets,
                }),
            ),
        })
    }
}

/// Refuses a caller without a credential where one is required (`unauthorized`).
pub(crate) fn ensure_authenticated(core: &Core, caller: &AuthContext) -> Result<(), RequestError> {
    if caller.credential == Credential::Missing
        || (caller.credential == Credential::Open
            && core.auth_required()
            && !open_by_flag(core, caller))
    {
        return Err(RequestError::new(
            ErrorCode::Unauthorized,
            "a credential is required: a token, or an API key for the back-end API",
        ));
    }
    Ok(())
}

/// Whether an `Open` caller with authentication on came through the back-end surface that
/// `--allow-open-api` opened.
fn open_by_flag(core: &Core, caller: &AuthContext) -> bool {
    core.config.http.allow_open_api && caller.transport == "api"
}

/// Authenticated, then allowed by the policy: the first two steps of every request.
pub(crate) fn authorize(
    core: &Core,
    caller: &AuthContext,
    action: Action<'_>,
) -> Result<(), RequestError> {
    ensure_authenticated(core, caller)?;
    core.authorizer
        .authorize(caller, action)
        .map_err(RequestError::from)
}

/// Checks a channel name (`bad_request` naming what is wrong).
pub(crate) fn validate_channel(channel: &str) -> Result<(), RequestError> {
    redistribute_protocol::validate_channel(channel)
        .map_err(|e| RequestError::bad_request(e.to_string()))
}

/// How long the layer waits on the engine for one request.
pub(crate) fn engine_deadline(core: &Core) -> Duration {
    core.config.limits.request_timeout + ENGINE_TIMEOUT_MARGIN
}

/// Runs an engine call under [`engine_deadline`]; past it the request is `unavailable`
/// (`what` names the operation in the log).
pub(crate) async fn with_deadline<T>(
    core: &Core,
    what: &'static str,
    call: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, RequestError> {
    match tokio::time::timeout(engine_deadline(core), call).await {
        Ok(result) => result.map_err(RequestError::from),
        Err(_) => Err(EngineError::Unavailable(format!("{what} timed out")).into()),
    }
}
