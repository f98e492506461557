//! Presence queries: who is subscribed to a presence channel (`presence`,
//! `GET /api/presence`), or how many (`presence_stats`), authorized by
//! [`Action::Presence`]; and the member a subscriber becomes.

use redistribute_protocol::{PresenceMember, ServerFrame};

use super::{authorize, validate_channel, PresenceQuery, Subscribe};
use crate::auth::{Action, AuthContext, Credential};
use crate::core_state::Core;
use crate::error::RequestError;

/// A presence query's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PresenceAnswer {
    /// The members.
    Members(Vec<PresenceMember>),
    /// Members and distinct users.
    Counts {
        /// Members (connections).
        clients: u64,
        /// Distinct users.
        users: u64,
    },
}

impl PresenceAnswer {
    /// The reply frame to request `id` for `channel`.
    pub(crate) fn into_frame(self, id: u64, channel: String) -> ServerFrame {
        match self {
            PresenceAnswer::Members(members) => ServerFrame::PresenceMembers {
                id,
                channel,
                members,
            },
            PresenceAnswer::Counts { clients, users } => ServerFrame::PresenceCounts {
                id,
                channel,
                clients,
                users,
            },
        }
    }
}

/// Answers a presence query: a valid channel, allowed by the policy, with presence enabled
/// (`not_found` otherwise).
pub(crate) async fn presence(
    core: &Core,
    caller: &AuthContext,
    query: &PresenceQuery,
) -> Result<PresenceAnswer, RequestError> {
    let channel = &query.channel;
    validate_channel(channel)?;
    authorize(core, caller, Action::Presence { channel })?;
    if query.stats {
        let (clients, users) = core.presence.counts(channel).await?;
        Ok(PresenceAnswer::Counts { clients, users })
    } else {
        core.presence
            .members(channel)
            .await
            .map(PresenceAnswer::Members)
    }
}

/// Whether a subscribe makes its connection a presence member: a plain subscription to a
/// presence channel on a connection that lasts (WebSocket, SSE). A long-poll takes a new
/// connection per request and a task watch is no one: they would join and leave on every
/// request.
pub(crate) fn becomes_member(core: &Core, caller: &AuthContext, request: &Subscribe) -> bool {
    request.group.is_none()
        && matches!(caller.transport, "ws" | "sse")
        && core.presence.config().enabled(&request.channel)
}

/// The member connection `conn` of `caller` is: its client id, its token's subject and `info`
/// claim (a token's only; API keys and open callers have neither).
pub(crate) fn member_of(core: &Core, caller: &AuthContext, conn: u64) -> PresenceMember {
    let claims = match caller.credential {
        Credential::Token => caller.claims.as_deref(),
        _ => None,
    };
    PresenceMember {
        client: core.client_id(conn),
        user: claims.and_then(|c| c.subject.clone()),
        info: claims.and_then(|c| c.info.clone()),
    }
}
