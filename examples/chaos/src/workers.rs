//! Consumer-group workers (native client and raw WebSocket) on the jobs channel: every job
//! delivered is acknowledged; a job counts as acked once an `acked` reply answered its `ack`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redistribute_client::{Client, Offset, StreamId};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::rng::Rng;
use crate::wire::{self, Incoming};

/// The consumer group.
pub const GROUP: &str = "chaos-workers";

/// A native-client worker: joins the group (created at `0` if it does not exist yet) and
/// acknowledges every job, retrying an unanswered `ack` a few times.
pub async fn native(
    name: String,
    channel: String,
    urls: Vec<String>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let Ok(client) = Client::builder()
        .targets(urls)
        .request_timeout(Duration::from_secs(5))
        .build()
    else {
        return;
    };
    'subscribe: while !stop.is_cancelled() {
        let attempt =
            client.subscribe_group(channel.clone(), GROUP, name.clone(), Offset::Earliest);
        let mut jobs = match tokio::time::timeout(Duration::from_secs(8), attempt).await {
            Ok(Ok(jobs)) => jobs,
            _ => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        loop {
            let job = tokio::select! {
                _ = stop.cancelled() => break 'subscribe,
                job = jobs.recv() => job,
            };
            let Some(job) = job else {
                continue 'subscribe;
            };
            ledger.job_delivered(job.offset);
            // Until an ack is answered (acks are idempotent) or the run ends.
            while !stop.is_cancelled() {
                match tokio::time::timeout(Duration::from_secs(6), job.ack()).await {
                    Ok(Ok(_)) => {
                        ledger.job_acked(job.offset);
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
}

/// A raw WebSocket worker: re-sends unanswered acks on every new connection (acks are
/// idempotent), moving to the next instance when a connection fails.
pub async fn raw(
    name: String,
    channel: String,
    urls: Vec<String>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    mut rng: Rng,
) {
    let mut target = rng.below(urls.len() as u64) as usize;
    let mut next_id = 0u64;
    // Delivered, `ack` not answered yet.
    let mut unanswered: BTreeSet<StreamId> = BTreeSet::new();
    'connection: while !stop.is_cancelled() {
        let url = &urls[target % urls.len()];
        target += 1;
        let Ok(mut ws) = wire::connect(url).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let mut acks: HashMap<u64, Vec<StreamId>> = HashMap::new();
        next_id += 1;
        let subscribe = json!({"type": "subscribe", "id": next_id, "channel": channel,
            "group": GROUP, "consumer": name, "offset": "0"});
        if wire::send(&mut ws, &subscribe).await.is_err() {
            continue;
        }
        if !unanswered.is_empty() {
            next_id += 1;
            let offsets: Vec<StreamId> = unanswered.iter().copied().collect();
            let frame = ack_frame(next_id, &channel, &offsets);
            acks.insert(next_id, offsets);
            if wire::send(&mut ws, &frame).await.is_err() {
                continue;
            }
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break 'connection,
                next = tokio::time::timeout(Duration::from_secs(30), ws.next()) => next,
            };
            let frame = match next.map(wire::classify) {
                Ok(Incoming::Json(frame)) => frame,
                Ok(Incoming::Other) => continue,
                Ok(Incoming::Closed) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'connection;
                }
            };
            match wire::frame_type(&frame) {
                "messages" => {
                    let offsets: Vec<StreamId> = frame["messages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| wire::offset(m, "offset"))
                        .collect();
                    if offsets.is_empty() {
                        continue;
                    }
                    for &offset in &offsets {
                        ledger.job_delivered(offset);
                        unanswered.insert(offset);
                    }
                    next_id += 1;
                    let ack = ack_frame(next_id, &channel, &offsets);
                    acks.insert(next_id, offsets);
                    if wire::send(&mut ws, &ack).await.is_err() {
                        continue 'connection;
                    }
                }
                "acked" => {
                    let id = frame.get("id").and_then(Value::as_u64).unwrap_or(0);
                    for offset in acks.remove(&id).unwrap_or_default() {
                        unanswered.remove(&offset);
                        ledger.job_acked(offset);
                    }
                }
                "error" => {
                    // A refused subscribe or ack: start over (unanswered acks are re-sent).
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'connection;
                }
                _ => {}
            }
        }
    }
}

fn ack_frame(id: u64, channel: &str, offsets: &[StreamId]) -> Value {
    let offsets: Vec<String> = offsets.iter().map(ToString::to_string).collect();
    json!({"type": "ack", "id": id, "channel": channel, "group": GROUP, "offsets": offsets})
}
