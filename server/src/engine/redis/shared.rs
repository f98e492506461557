//! What the engine and its readers share ([`Shared`]): key names and shards, the cluster
//! routing table, reader clients and command options, and the scripted reads of positions,
//! pages and raises.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClusterInterface;
use fred::prelude::{Builder, Client};
use fred::types::config::{Options, Server, ServerConfig};
use fred::types::Value;
use redistribute_protocol::StreamId;
use tracing::{debug, warn};

use super::{eval, eval_as, keys, map_err, parse, scripts, LiveReaders, Shared};
use crate::engine::{EngineError, Page, Position, MAX_ENTRY_BYTES};

/// Most channels whose cursors one raise script checks.
const RAISE_CHUNK: usize = 256;

impl Shared {
    /// The shard count in cluster mode.
    pub(super) fn shards(&self) -> Option<u16> {
        self.config.cluster.as_ref().map(|c| c.shards)
    }

    pub(super) fn stream_key(&self, channel: &str) -> String {
        keys::stream_key(&self.config.prefix, channel, self.shards())
    }

    /// The log key of `shard`.
    pub(super) fn log_key(&self, shard: u16) -> String {
        keys::log_key(&self.config.prefix, shard, self.shards())
    }

    /// Whether publishes append to the shard logs.
    pub(super) fn logs(&self) -> bool {
        self.config.live == LiveReaders::Log && self.config.log_maxlen > 0
    }

    /// The channel's shard (always 0 with a single Redis).
    pub(super) fn shard(&self, channel: &str) -> u16 {
        self.shards().map_or(0, |n| keys::shard_of(channel, n))
    }

    /// The cluster node that serves `shard`, from the writer's routing table.
    pub(super) async fn node_for_shard(&self, shard: u16) -> Result<Server, EngineError> {
        let slot = keys::shard_slot(shard);
        let cached = || {
            self.writer
                .cached_cluster_state()
                .and_then(|state| state.get_server(slot).cloned())
        };
        if let Some(server) = cached() {
            return Ok(server);
        }
        self.refresh_routing().await;
        cached().ok_or_else(|| {
            EngineError::Unavailable(format!("no Redis Cluster node serves slot {slot}"))
        })
    }

    /// Re-reads the cluster's slot table (`CLUSTER SLOTS`) into the writer, at most once per
    /// 200 ms however many readers ask; a no-op with a single Redis.
    pub(super) async fn refresh_routing(&self) {
        if self.config.cluster.is_none() {
            return;
        }
        let mut refreshed = self.routing_refreshed.lock().await;
        if refreshed.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        match tokio::time::timeout(self.config.command_timeout, self.writer.sync_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!(%err, "cannot refresh the cluster routing table"),
            Err(_) => debug!("refreshing the cluster routing table timed out"),
        }
        *refreshed = Some(std::time::Instant::now());
    }

    /// A new client for one reader connection: to the single Redis, or to cluster `node`. It
    /// does not reconnect by itself: the reader rebuilds it (re-resolving the node) on errors.
    pub(super) fn reader_client(&self, node: Option<&Server>) -> Result<Client, EngineError> {
        let mut config = self.client_config.clone();
        if let Some(node) = node {
            config.server = ServerConfig::Centralized {
                server: node.clone(),
            };
        }
        Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.max_command_attempts = 1;
            })
            .build()
            .map_err(map_err)
    }

    /// Options for ordinary commands: fail at once while disconnected, never retry a write.
    pub(super) fn options(&self) -> Options {
        Options {
            timeout: Some(self.config.command_timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    pub(super) async fn position(&self, channel: &str) -> Result<Position, EngineError> {
        let key = self.stream_key(channel);
        let reply: Value = eval(
            &self.writer,
            &self.options(),
            scripts::POSITION,
            vec![key.clone(), format!("{key}#trim")],
            Vec::new(),
        )
        .await
        .map_err(map_err)?;
        parse_position(&reply)
    }

    /// The positions of `channels` (all of one hash slot in cluster mode), in order, with one
    /// script ([`scripts::POSITIONS`]).
    pub(super) async fn positions(
        &self,
        channels: &[Arc<str>],
    ) -> Result<Vec<Position>, EngineError> {
        let mut keys = Vec::with_capacity(2 * channels.len());
        for channel in channels {
            let key = self.stream_key(channel);
            keys.push(format!("{key}#trim"));
            keys.insert(keys.len() - 1, key);
        }
        let reply: Value = eval(
            &self.writer,
            &self.options(),
            scripts::POSITIONS,
            keys,
            Vec::new(),
        )
        .await
        .map_err(map_err)?;
        match &reply {
            Value::Array(items) if items.len() == channels.len() => {
                items.iter().map(parse_position).collect()
            }
            _ => Err(EngineError::Internal(format!(
                "unexpected positions reply {reply:?}"
            ))),
        }
    }

    /// Runs a page-reading script (read-only, on the page connection) over `channel`'s stream
    /// and trim record; its reply's parts.
    async fn read_script(
        &self,
        script: &'static str,
        channel: &str,
        args: Vec<String>,
    ) -> Result<Vec<Value>, EngineError> {
        let key = self.stream_key(channel);
        let keys = vec![key.clone(), format!("{key}#trim")];
        let reply: Value = eval_as("EVAL_RO", &self.pages, &self.options(), script, keys, args)
            .await
            .map_err(map_err)?;
        match reply {
            Value::Array(parts) => Ok(parts),
            other => Err(unexpected_read(&[other])),
        }
    }

    /// One page of history ([`Engine::read`]).
    pub(super) async fn read_page(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        let args = vec![
            after.to_string(),
            limit.max(1).to_string(),
            max_bytes.to_string(),
            MAX_ENTRY_BYTES.to_string(),
        ];
        let parts = self.read_script(scripts::READ, channel, args).await?;
        let [watermark, skipped, entries] = parts.as_slice() else {
            return Err(unexpected_read(&parts));
        };
        let gap = parse::optional_id(watermark)?
            .filter(|w| *w > after)
            .max(parse::optional_id(skipped)?);
        let encoded = parse::entries_bounded(channel, entries, max_bytes, 1, gap)?;
        let batch = encoded.batches.into_iter().next();
        let gap = gap.max(encoded.pending_gap);
        Ok(Page::new(after, batch, gap))
    }

    /// A reverse page ([`Engine::read_back`](crate::engine::Engine::read_back)) through
    /// [`scripts::READ_BACK`].
    pub(super) async fn read_page_back(
        &self,
        channel: &Arc<str>,
        after: StreamId,
        through: StreamId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, EngineError> {
        let args = vec![
            after.to_string(),
            through.to_string(),
            limit.max(1).to_string(),
            max_bytes.to_string(),
            MAX_ENTRY_BYTES.to_string(),
        ];
        let parts = self.read_script(scripts::READ_BACK, channel, args).await?;
        let [watermark, entries] = parts.as_slice() else {
            return Err(unexpected_read(&parts));
        };
        let mut entries = match entries {
            Value::Array(items) => items.clone(),
            Value::Null => Vec::new(),
            _ => return Err(unexpected_read(&parts)),
        };
        entries.reverse();
        // The script bounded the bytes; cutting here would drop the newest entries, which a
        // reverse page must keep, so the batch takes them all.
        let encoded = parse::entries_bounded(channel, &Value::Array(entries), usize::MAX, 1, None)?;
        let batch = encoded.batches.into_iter().next();
        Ok(Page::new(after, batch, parse::optional_id(watermark)?))
    }

    /// [`Engine::offset_back`](crate::engine::Engine::offset_back) through
    /// [`scripts::OFFSET_BACK`].
    pub(super) async fn offset_back(
        &self,
        channel: &str,
        through: StreamId,
        n: usize,
    ) -> Result<Option<StreamId>, EngineError> {
        let reply: Value = eval_as(
            "EVAL_RO",
            &self.pages,
            &self.options(),
            scripts::OFFSET_BACK,
            vec![self.stream_key(channel)],
            vec![through.to_string(), n.max(1).to_string()],
        )
        .await
        .map_err(map_err)?;
        parse::optional_id(&reply)
    }

    /// Runs [`scripts::RAISE`] over `(channel, ID)` pairs (all of one hash slot in cluster
    /// mode): `skew` bounds how far ahead of Redis' clock an ID may be (`None`: no bound),
    /// `record` marks the raised-over ranges as removed, `create` creates missing streams.
    /// Returns each channel's position and whether it was raised.
    pub(super) async fn raise(
        &self,
        targets: &[(&str, StreamId)],
        skew: Option<Duration>,
        record: bool,
        create: bool,
    ) -> Result<Vec<(Position, bool)>, EngineError> {
        let mut keys = Vec::with_capacity(2 * targets.len());
        let mut args = Vec::with_capacity(3 + targets.len());
        args.push(skew.map_or(-1, |s| s.as_millis() as i64).to_string());
        args.push(if record { "1" } else { "0" }.to_owned());
        args.push(if create { "1" } else { "0" }.to_owned());
        for (channel, id) in targets {
            let key = self.stream_key(channel);
            keys.push(format!("{key}#trim"));
            keys.insert(keys.len() - 1, key);
            args.push(id.to_string());
        }
        let reply: Value = eval(&self.writer, &self.options(), scripts::RAISE, keys, args)
            .await
            .map_err(map_err)?;
        let unexpected = || EngineError::Internal(format!("unexpected raise reply {reply:?}"));
        let Value::Array(items) = &reply else {
            return Err(unexpected());
        };
        if items.len() != targets.len() {
            return Err(unexpected());
        }
        items
            .iter()
            .map(|item| match item {
                Value::Array(parts) if parts.len() == 3 => Ok((
                    position_of(&parts[0], &parts[1])?,
                    parts[2].as_i64() == Some(1),
                )),
                _ => Err(unexpected()),
            })
            .collect()
    }

    /// After a reader reconnected: raises every stream of `targets` whose last ID is now
    /// below the reader's cursor (the primary that served the cursor's entries failed over to
    /// a replica that lacks them) to the cursor, recording the lost range as trimmed, and
    /// warns when any was. New entries then get IDs above the cursor, even from a primary
    /// whose clock is behind, and subscribers resuming inside the lost range get an exact
    /// `gap`. The cursors came from Redis itself, so they are not bounded by the clock as a
    /// client's offset is. Returns each stream's position, in order.
    pub(super) async fn raise_to_cursors(
        &self,
        shard: u16,
        targets: &[(&str, StreamId)],
    ) -> Result<Vec<Position>, EngineError> {
        let mut positions = Vec::with_capacity(targets.len());
        let mut raised = 0;
        for chunk in targets.chunks(RAISE_CHUNK) {
            for (position, was_raised) in self.raise(chunk, None, true, true).await? {
                raised += usize::from(was_raised);
                positions.push(position);
            }
        }
        if raised > 0 {
            warn!(
                shard,
                channels = raised,
                "streams were behind this reader's cursors (a failover lost their tails); \
                 raised their last IDs to the cursors and recorded the lost ranges as gaps"
            );
        }
        Ok(positions)
    }
}

/// Parses `{last-generated-id or '', watermark or ''}`.
fn parse_position(reply: &Value) -> Result<Position, EngineError> {
    let unexpected = || EngineError::Internal(format!("unexpected position reply {reply:?}"));
    let Value::Array(parts) = reply else {
        return Err(unexpected());
    };
    let [last, trim] = parts.as_slice() else {
        return Err(unexpected());
    };
    position_of(last, trim)
}

/// A position from a last-generated ID and a watermark (each `''` when there is none).
fn position_of(last: &Value, trim: &Value) -> Result<Position, EngineError> {
    Ok(Position {
        last_id: parse::optional_id(last)?.unwrap_or_default(),
        trimmed_through: parse::optional_id(trim)?,
    })
}

/// A page script's reply of an unexpected shape.
fn unexpected_read(parts: &[Value]) -> EngineError {
    EngineError::Internal(format!("unexpected read reply {parts:?}"))
}
