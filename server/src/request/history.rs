//! History: reading a channel's stored entries (`/api/history`, and a task's status, which is
//! its channel's newest entry).

use std::sync::Arc;

use redistribute_protocol::StreamId;

use super::{authorize, validate_channel, with_deadline, History};
use crate::auth::{Action, AuthContext};
use crate::core_state::Core;
use crate::engine::{Batch, Engine, EngineError, MAX_ENTRY_BYTES};
use crate::error::RequestError;
use crate::feed::Start;

/// Most messages one history request returns.
pub(crate) const MAX_HISTORY: usize = 1_000;

/// Most bytes of encoded entries one history page carries (at least one entry); continue
/// from the returned offset for more.
pub(crate) const HISTORY_MAX_BYTES: usize = 1 << 20;

/// One page of a channel's history.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// The channel.
    pub channel: Arc<str>,
    /// The entries, if any.
    pub batch: Option<Batch>,
    /// Where to continue from: the last entry returned (or the start, past any gap).
    pub last: StreamId,
    /// Entries after `from` were trimmed (or the offset was beyond the channel's tip).
    pub truncated: bool,
    /// The range `(from, to]` known to be gone, when known.
    pub gap: Option<(StreamId, StreamId)>,
}

/// Reads up to `limit` entries after `from`, authorized like a subscribe to the channel.
pub(crate) async fn history(
    core: &Core,
    caller: &AuthContext,
    request: &History,
) -> Result<HistoryPage, RequestError> {
    check(core, caller, &request.channel)?;
    let History {
        channel,
        from,
        limit,
    } = request;
    let engine = &*core.engine;
    let create = core.may_create(caller, channel).is_ok();
    let position = with_deadline(core, "history", async {
        let position = engine.position(channel).await?;
        Start::raise_beyond_tip(engine, channel, *from, position, create).await
    })
    .await?;
    let start = Start::resolve(*from, position);
    let channel: Arc<str> = Arc::from(channel.as_str());
    let page = with_deadline(
        core,
        "history",
        engine.read(&channel, start.after, *limit, HISTORY_MAX_BYTES),
    )
    .await?;
    // Trimmed between the position read and this read: the page knows.
    let gap = match page.gap_through.filter(|g| *g > start.after) {
        Some(through) => Some((start.gap.map_or(start.after, |(from, _)| from), through)),
        None => start.gap,
    };
    let last = match &page.batch {
        Some(batch) => batch.last_id(),
        None => gap.map_or(start.after, |(_, to)| to.max(start.after)),
    };
    Ok(HistoryPage {
        channel,
        batch: page.batch,
        last,
        truncated: start.truncated || gap.is_some(),
        gap,
    })
}

/// The newest entry of `channel` (a task's status), authorized like [`history`].
pub(crate) async fn latest(
    core: &Core,
    caller: &AuthContext,
    channel: &Arc<str>,
) -> Result<Option<Batch>, RequestError> {
    check(core, caller, channel)?;
    with_deadline(
        core,
        "latest entry",
        crate::engine::latest_entry(&*core.engine, channel),
    )
    .await
}

/// The entry with offset `id`, if `channel` still holds it, authorized like [`history`].
pub(crate) async fn entry_at(
    core: &Core,
    caller: &AuthContext,
    channel: &Arc<str>,
    id: StreamId,
) -> Result<Option<Batch>, RequestError> {
    check(core, caller, channel)?;
    with_deadline(core, "entry read", read_entry(&*core.engine, channel, id)).await
}

fn check(core: &Core, caller: &AuthContext, channel: &str) -> Result<(), RequestError> {
    validate_channel(channel)?;
    authorize(core, caller, Action::History { channel })
}

async fn read_entry(
    engine: &dyn Engine,
    channel: &Arc<str>,
    id: StreamId,
) -> Result<Option<Batch>, EngineError> {
    let Some(before) = id.predecessor() else {
        return Ok(None);
    };
    let page = engine.read(channel, before, 1, MAX_ENTRY_BYTES).await?;
    Ok(page.batch.filter(|b| b.first_id() == id))
}
