//! A live reader's own Redis connection, shared by the per-channel readers ([`super::reader`])
//! and the shard-log readers ([`super::log`]): opening it to the single Redis or to the node
//! serving a shard, running commands on it that fail at once when it is lost, the blocked
//! `XREAD`, and the backoff between reconnects.
//!
//! Invariant: a command on a [`Connection`] never waits on a connection that is gone — it
//! fails with `unavailable` as soon as the routing task ends, and the reader then reconnects.

use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::prelude::Client;
use fred::types::config::{Options, Server};
use fred::types::{ClusterHash, ConnectHandle, CustomCommand, FromValue, Value};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::{map_err, Shared};
use crate::engine::live_health::HealthEntry;
use crate::engine::EngineError;

/// The backoff before the first reconnect; it doubles up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How much longer than its `BLOCK` a blocked `XREAD` may take before it is failed.
const XREAD_MARGIN: Duration = Duration::from_secs(10);

/// How long an `XREAD` must stay blocked without an error for its reader to count as healthy:
/// Redis refuses a command (permissions, a moved slot) at once, so a read still blocked after
/// this was accepted and the reader is caught up.
const SETTLED: Duration = Duration::from_secs(1);

/// A reader's own connection: a client that never reconnects by itself, its routing task, and
/// a token cancelled when that task ends (Redis closed the connection).
///
/// Once the routing task ended, the client still calls itself connected and a command sent on
/// it is never answered; [`Connection::run`] fails such a command (and one in flight when the
/// connection drops) at once instead.
pub(super) struct Connection {
    client: Client,
    /// The cluster node the connection goes to (`None` with a single Redis).
    node: Option<Server>,
    task: AbortHandle,
    lost: CancellationToken,
}

impl Connection {
    /// Connects to the single Redis, or to the cluster node serving `shard`.
    pub(super) async fn open(shared: &Shared, shard: u16) -> Result<Connection, EngineError> {
        let node = match shared.config.cluster {
            Some(_) => Some(shared.node_for_shard(shard).await?),
            None => None,
        };
        let client = shared.reader_client(node.as_ref())?;
        let task = client.init().await.map_err(map_err)?;
        Ok(Connection::new(client, node, task))
    }

    /// Wraps a connected client and watches its routing task.
    fn new(client: Client, node: Option<Server>, task: ConnectHandle) -> Connection {
        let lost = CancellationToken::new();
        let abort = task.abort_handle();
        let signal = lost.clone();
        tokio::spawn(async move {
            let _ = task.await;
            signal.cancel();
        });
        Connection {
            client,
            node,
            task: abort,
            lost,
        }
    }

    /// The cluster node the connection goes to (`None` with a single Redis).
    pub(super) fn node(&self) -> Option<&Server> {
        self.node.as_ref()
    }

    /// Whether the connection is gone.
    fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Runs a command on the connection; fails as soon as the connection is lost.
    pub(super) async fn run<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, EngineError> {
        tokio::select! {
            result = command => result.map_err(map_err),
            () = self.lost.cancelled() => Err(EngineError::Unavailable(
                "the reader's connection to Redis was lost".into(),
            )),
        }
    }

    /// Runs `cmd` with `args` under `options` (which carry a timeout: this client does not
    /// reconnect); fails as soon as the connection is lost.
    pub(super) async fn command<T: FromValue>(
        &self,
        options: &Options,
        cmd: CustomCommand,
        args: Vec<Value>,
    ) -> Result<T, EngineError> {
        self.run(self.client.with_options(options).custom(cmd, args))
            .await
    }

    /// One `XREAD` with `args` (which hold `BLOCK block`), failed if Redis does not answer
    /// within `block` and a margin, or as soon as the connection is lost. Never retried.
    /// Records a success on `health` once it has stayed blocked for [`SETTLED`].
    pub(super) async fn xread(
        &self,
        block: Duration,
        args: Vec<Value>,
        health: &HealthEntry,
    ) -> Result<Value, EngineError> {
        let options = Options {
            timeout: Some(block + XREAD_MARGIN),
            max_attempts: Some(1),
            fail_fast: true,
            ..Options::default()
        };
        let cmd = CustomCommand::new_static("XREAD", ClusterHash::FirstKey, true);
        let read = self.command(&options, cmd, args);
        tokio::pin!(read);
        tokio::select! {
            reply = &mut read => return reply,
            () = tokio::time::sleep(SETTLED) => health.ok(),
        }
        read.await
    }

    /// Closes the connection (politely if Redis still answers) and ends its routing task.
    pub(super) async fn close(self) {
        if !self.is_lost() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.client.quit()).await;
        }
        self.task.abort();
    }
}

/// Sleeps for the backoff (doubling it, capped at 2 s); true when stopped meanwhile.
pub(super) async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
