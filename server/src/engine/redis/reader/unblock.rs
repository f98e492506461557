//! A reader's unblocker: when changes are queued for a reader blocked in `XREAD`, sends one
//! `CLIENT UNBLOCK <id>` (to the node holding the reader's connection in cluster mode) for
//! however many changes arrived together, repeating it only if the `XREAD` had not reached
//! Redis yet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Control;
use crate::engine::redis::Shared;

/// Sends `CLIENT UNBLOCK` to a blocked reader until it has applied the queued changes.
pub(super) async fn unblocker(
    shared: Arc<Shared>,
    control: Arc<Control>,
    unblocks: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let cmd = CustomCommand::new_static("CLIENT", ClusterHash::Random, false);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = control.unblock.notified() => {}
        }
        while control.applied.load(Ordering::Acquire) < control.wanted.load(Ordering::Acquire) {
            if stop.is_cancelled() {
                return;
            }
            let address = control.connection.lock().clone();
            let address = match address {
                Some(address) if control.in_read.load(Ordering::Acquire) => address,
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
                    unblocks.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        control.applied_signal.notified(),
                    )
                    .await;
                }
                // Not blocked yet: the XREAD is still on its way to Redis.
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(err) => {
                    debug!(%err, "CLIENT UNBLOCK failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
