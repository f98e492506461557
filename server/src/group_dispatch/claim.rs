//! Reclaiming a group's idle entries (`XAUTOCLAIM`) and moving entries delivered too often to
//! the dead-letter channel `<channel>:dead`: every path that delivers a pending entry again goes
//! through [`dead_letter_excess`].

use std::sync::Arc;
use std::time::Duration;

use redistribute_protocol::{Fields, StreamId};
use tracing::warn;

use super::dead_letter_channel;
use crate::engine::{Batch, BatchBuilder, Engine, EngineError, PublishRequest};

/// What [`claim_idle`] did.
#[derive(Debug, Default)]
pub struct ClaimOutcome {
    /// Entries claimed for the consumer, to deliver.
    pub batch: Option<Batch>,
    /// Entries moved to the dead-letter channel (their offsets in the original channel).
    pub dead: Vec<StreamId>,
    /// Where the next scan starts (`0-0`: from the beginning).
    pub next: StreamId,
}

/// Claims entries idle for `min_idle` for `consumer` (scanning from `start`, at most `count`),
/// and moves each one whose delivery count exceeds `max_deliveries` to `<channel>:dead`:
/// published there with its fields plus `dead_letter` (`channel`, `group`, `offset`,
/// `deliveries`), under an idempotency key so a retry writes it once, then acknowledged.
#[allow(clippy::too_many_arguments)]
pub async fn claim_idle(
    engine: &dyn Engine,
    channel: &Arc<str>,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    max_deliveries: u64,
    start: StreamId,
    count: usize,
) -> Result<ClaimOutcome, EngineError> {
    let claimed = engine
        .group_claim(channel, group, consumer, min_idle, start, count)
        .await?;
    let mut outcome = ClaimOutcome {
        next: claimed.next,
        ..ClaimOutcome::default()
    };
    let Some(batch) = claimed.batch else {
        return Ok(outcome);
    };
    let (keep, dead) = dead_letter_excess(
        engine,
        channel,
        group,
        batch,
        &claimed.deliveries,
        max_deliveries,
    )
    .await?;
    outcome.batch = keep;
    outcome.dead = dead;
    Ok(outcome)
}

/// Splits entries just delivered (`deliveries`: each one's delivery count, this delivery
/// included) into those to hand to the consumer and those delivered more than
/// `max_deliveries` times. Each of the latter is published to `<channel>:dead` with its
/// fields plus `dead_letter` (`channel`, `group`, `offset`, `deliveries`), under an
/// idempotency key so a retry writes it once, then acknowledged. Every path that delivers a
/// pending entry again (a consumer's own pending list, a claim) goes through here, so no
/// entry is delivered more than `max_deliveries` times.
pub(crate) async fn dead_letter_excess(
    engine: &dyn Engine,
    channel: &Arc<str>,
    group: &str,
    batch: Batch,
    deliveries: &[u64],
    max_deliveries: u64,
) -> Result<(Option<Batch>, Vec<StreamId>), EngineError> {
    if deliveries.iter().all(|&n| n <= max_deliveries) {
        return Ok((Some(batch), Vec::new()));
    }
    let mut keep = BatchBuilder::new(channel.clone());
    let mut dead = Vec::new();
    let dead_channel = dead_letter_channel(channel);
    for (i, &offset) in batch.ids().iter().enumerate() {
        let deliveries = deliveries.get(i).copied().unwrap_or(1);
        if deliveries <= max_deliveries {
            keep.push_encoded(offset, batch.item(i));
            continue;
        }
        let mut fields: Fields = serde_json::from_str::<serde_json::Value>(batch.item(i))
            .ok()
            .and_then(|v| match v.get("fields") {
                Some(serde_json::Value::Object(map)) => Some(map.clone()),
                _ => None,
            })
            .unwrap_or_default();
        fields.insert(
            "dead_letter".into(),
            serde_json::json!({
                "channel": &**channel,
                "group": group,
                "offset": offset.to_string(),
                "deliveries": deliveries,
            }),
        );
        let key = format!("dead:{offset}:{group}");
        let request = PublishRequest {
            channel: &dead_channel,
            fields: &fields,
            maxlen: None,
            idempotency_key: (key.len() <= 200).then_some(key.as_str()),
        };
        engine.publish(request).await?;
        engine.group_ack(channel, group, &[offset]).await?;
        warn!(%channel, group, %offset, deliveries, "entry moved to the dead-letter channel");
        dead.push(offset);
    }
    Ok((keep.finish(), dead))
}
