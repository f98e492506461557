//! A reader's unblocker: when changes are queued for a reader blocked in `XREAD`, sends one
//! `CLIENT UNBLOCK <id>` (to the node holding the reader's connection in cluster mode) for
//! however many changes arrived together, repeating it only if the `XREAD` had not reached
//! Redis yet.
//!
//! A failing `CLIENT UNBLOCK` (a user not allowed it, the writer's connection down) counts in
//! the live readers' health: the reader's changes then wait for its `XREAD` to time out. While
//! failing, the unblocker probes again every second until a `CLIENT UNBLOCK` succeeds or the
//! reader is not blocked (nothing to unblock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Control;
use crate::engine::live_health::HealthEntry;
use crate::engine::redis::Shared;

/// Sends `CLIENT UNBLOCK` to a blocked reader until it has applied the queued changes; records
/// the outcome on `health` (see the module docs).
pub(super) async fn unblocker(
    shared: Arc<Shared>,
    control: Arc<Control>,
    unblocks: Arc<AtomicU64>,
    health: HealthEntry,
    stop: CancellationToken,
) {
    let cmd = CustomCommand::new_static("CLIENT", ClusterHash::Random, false);
    let behind =
        || control.applied.load(Ordering::Acquire) < control.wanted.load(Ordering::Acquire);
    loop {
        let probe = async {
            if health.is_failing() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = control.unblock.notified() => {}
            () = probe => {}
        }
        while behind() || health.is_failing() {
            if stop.is_cancelled() {
                return;
            }
            let address = control.connection.lock().clone();
            let address = match address {
                Some(address) if control.in_read.load(Ordering::Acquire) => address,
                _ if !behind() => {
                    // A probe while the reader is not blocked: nothing to unblock.
                    health.ok();
                    break;
                }
                _ => {
                    // The reader is applying changes or reconnecting; give it a moment.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(5),
                        control.applied_signal.notified(),
                    )
                    .await;
                    continue;
                }
            };
            // Client ids are per node: in cluster mode, ask the node holding the reader.
            let options = Options {
                cluster_node: address.node,
                timeout: Some(shared.config.command_timeout),
                fail_fast: true,
                ..Options::default()
            };
            let reply: Result<i64, _> = shared
                .writer
                .with_options(&options)
                .custom(
                    cmd.clone(),
                    vec![Value::from("UNBLOCK"), Value::from(address.id)],
                )
                .await;
            match reply {
                Ok(1) => {
                    health.ok();
                    unblocks.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        control.applied_signal.notified(),
                    )
                    .await;
                }
                // Not blocked yet: the XREAD is still on its way to Redis.
                Ok(_) => {
                    health.ok();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(err) => {
                    debug!(%err, "CLIENT UNBLOCK failed");
                    health.failed(&crate::engine::redis::map_err(err));
                    if !behind() {
                        // Probe again in a second.
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
