//! History: reading a channel's stored entries (the `history` request of every transport:
//! WebSocket `history`, `/api/history`, [`crate::Server::history`]; and a task's status, which
//! is its channel's newest entry).

use std::sync::Arc;

use redistribute_protocol::history::{HISTORY_PAGE_BYTES, MAX_HISTORY_LIMIT};
use redistribute_protocol::{Offset, StreamId};

use super::{authorize, validate_channel, with_deadline, History};
use crate::auth::{Action, AuthContext};
use crate::core_state::Core;
use crate::engine::{Batch, BatchBuilder, Engine, EngineError, MAX_ENTRY_BYTES};
use crate::error::RequestError;
use crate::feed::Start;

/// Most messages one history request returns.
pub(crate) const MAX_HISTORY: usize = MAX_HISTORY_LIMIT as usize;

/// Most bytes of encoded entries one history page carries (at least one entry); continue
/// from the returned offset for more.
pub(crate) const HISTORY_MAX_BYTES: usize = HISTORY_PAGE_BYTES;

/// One page of a channel's history.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// The channel.
    pub channel: Arc<str>,
    /// The entries, if any, in offset order (whatever the direction of the request).
    pub batch: Option<Batch>,
    /// Whether the page is newest first.
    pub reverse: bool,
    /// Where the next page starts: forward, the last entry returned (or the start, past any
    /// gap), to pass as `from`; reverse, the offset before the oldest entry returned, to pass
    /// as `to`.
    pub next: StreamId,
    /// Whether the range may hold entries beyond this page.
    pub more: bool,
    /// Entries of the range were trimmed (or, forward, the offset was beyond the channel's tip).
    pub truncated: bool,
    /// The range `(from, to]` known to be gone, when known.
    pub gap: Option<(StreamId, StreamId)>,
}

impl HistoryPage {
    /// The entries as `(offset, encoded item)`, in the page's order (newest first for a
    /// reverse page).
    pub(crate) fn items(&self) -> impl Iterator<Item = (StreamId, &str)> + '_ {
        let batch = self.batch.as_ref();
        let n = batch.map_or(0, Batch::len);
        let order: Box<dyn Iterator<Item = usize>> = if self.reverse {
            Box::new((0..n).rev())
        } else {
            Box::new(0..n)
        };
        order.filter_map(move |i| batch.map(|b| (b.ids()[i], b.item(i))))
    }
}

/// Reads a page of `request.channel`'s entries in `(from, to]` (see
/// [`redistribute_protocol::history`]), authorized like a subscribe to the channel.
pub(crate) async fn history(
    core: &Core,
    caller: &AuthContext,
    request: &History,
) -> Result<HistoryPage, RequestError> {
    check(core, caller, &request.channel)?;
    let History {
        channel,
        from,
        to,
        limit,
        reverse,
    } = request;
    if !(1..=MAX_HISTORY).contains(limit) {
        return Err(RequestError::bad_request(format!(
            "limit must be from 1 to {MAX_HISTORY}, not {limit}"
        )));
    }
    if let (Offset::Id(from), Some(to)) = (from, to) {
        if from > to {
            return Err(RequestError::bad_request(format!(
                "from ({from}) must not be after to ({to})"
            )));
        }
    }
    let channel: Arc<str> = Arc::from(channel.as_str());
    if *reverse {
        backward(core, channel, *from, *to, *limit).await
    } else {
        forward(core, caller, channel, *from, *to, *limit).await
    }
}

/// A page oldest first: catch-up reads' rules (a `from` beyond the tip resumes there).
async fn forward(
    core: &Core,
    caller: &AuthContext,
    channel: Arc<str>,
    from: Offset,
    to: Option<StreamId>,
    limit: usize,
) -> Result<HistoryPage, RequestError> {
    let engine = &*core.engine;
    let create = core.may_create(caller, &channel).is_ok();
    let position = with_deadline(core, "history", async {
        let position = engine.position(&channel).await?;
        Start::raise_beyond_tip(engine, &channel, from, position, create).await
    })
    .await?;
    let start = Start::resolve(from, position);
    let page = with_deadline(
        core,
        "history",
        engine.read(&channel, start.after, limit, HISTORY_MAX_BYTES),
    )
    .await?;
    // Trimmed between the position read and this read: the page knows.
    let gap = match page.gap_through.filter(|g| *g > start.after) {
        Some(through) => Some((start.gap.map_or(start.after, |(from, _)| from), through)),
        None => start.gap,
    };
    let batch = match (page.batch, to) {
        (Some(batch), Some(to)) => up_to(batch, to),
        (batch, _) => batch,
    };
    let next = match &batch {
        Some(batch) => batch.last_id(),
        None => gap.map_or(start.after, |(_, to)| to.max(start.after)),
    };
    let begin = from.after().unwrap_or(position.last_id);
    let end = to.unwrap_or(position.last_id);
    Ok(HistoryPage {
        channel,
        more: next > begin && next < end,
        batch,
        reverse: false,
        next,
        truncated: start.truncated || gap.is_some(),
        gap,
    })
}

/// A page newest first, going back from `to` (default: the tip) towards `from`.
async fn backward(
    core: &Core,
    channel: Arc<str>,
    from: Offset,
    to: Option<StreamId>,
    limit: usize,
) -> Result<HistoryPage, RequestError> {
    let engine = &*core.engine;
    let (position, through) = match (from, to) {
        (Offset::Id(_) | Offset::Earliest, Some(to)) => (None, to),
        _ => {
            let position = with_deadline(core, "history", engine.position(&channel)).await?;
            (Some(position), to.unwrap_or(position.last_id))
        }
    };
    let after = match from {
        Offset::Latest => position.map_or(StreamId::ZERO, |p| p.last_id),
        other => other.after().unwrap_or(StreamId::ZERO),
    };
    let page = if after < through {
        with_deadline(
            core,
            "history",
            engine.read_back(&channel, after, through, limit, HISTORY_MAX_BYTES),
        )
        .await?
    } else {
        crate::engine::Page::default()
    };
    let gap = page
        .gap_through
        .max(position.and_then(|p| p.trimmed_through))
        .filter(|g| *g > after)
        .map(|g| (after, g.min(through)));
    let next = match &page.batch {
        Some(batch) => batch.first_id().predecessor().unwrap_or(StreamId::ZERO),
        None => after,
    };
    let floor = gap.map_or(after, |(_, to)| to.max(after));
    // Whether an entry is left below the page: one ID looked up, no entry read.
    let more = page.batch.is_some()
        && next > floor
        && with_deadline(core, "history", engine.offset_back(&channel, next, 1))
            .await?
            .is_some_and(|id| id > floor);
    Ok(HistoryPage {
        channel,
        more,
        batch: page.batch,
        reverse: true,
        next,
        truncated: gap.is_some(),
        gap,
    })
}

/// The `history_page` reply to request `id` (`docs/protocol.md` §4), written from the stored
/// entries' encoded items (no decoding and re-encoding of their fields).
pub(crate) fn page_frame(id: u64, page: &HistoryPage) -> String {
    let mut out = String::with_capacity(
        128 + page.channel.len() + page.batch.as_ref().map_or(0, Batch::items_len),
    );
    out.push_str("{\"type\":\"history_page\",\"id\":");
    out.push_str(&id.to_string());
    // Channel names are checked: plain ASCII with nothing to escape.
    out.push_str(",\"channel\":\"");
    out.push_str(&page.channel);
    out.push_str("\",\"messages\":[");
    for (i, (_, item)) in page.items().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push_str(&format!(
        "],\"next\":\"{}\",\"more\":{},\"truncated\":{}",
        page.next, page.more, page.truncated
    ));
    if let Some((from, to)) = page.gap {
        out.push_str(&format!(",\"gap\":{{\"from\":\"{from}\",\"to\":\"{to}\"}}"));
    }
    out.push('}');
    out
}

/// The entries of `batch` up to and including `to`.
fn up_to(batch: Batch, to: StreamId) -> Option<Batch> {
    let keep = batch.first_index_after(to);
    if keep == batch.len() {
        return Some(batch);
    }
    let mut builder = BatchBuilder::new(batch.channel().clone());
    for (i, id) in batch.ids()[..keep].iter().enumerate() {
        builder.push_encoded(*id, batch.item(i));
    }
    builder.finish()
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
