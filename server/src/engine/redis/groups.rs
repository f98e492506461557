//! Consumer groups on Redis Streams: `XGROUP CREATE … MKSTREAM`, non-blocking `XREADGROUP`,
//! `XACK` and `XAUTOCLAIM` with delivery counts.
//!
//! Every command goes through the shared multiplexed writer and targets the channel's stream
//! key ([`super::keys`]), so in cluster mode it is routed to the node serving the channel's
//! shard, like publishes. None of them blocks: live group delivery is driven by the server's
//! per-group pollers ([`crate::groups`]), which the instance's blocking `XREAD` readers wake
//! when a watched channel gets new entries, so an instance needs no Redis connection per
//! consumer.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use redistribute_protocol::{Offset, StreamId};

use super::{eval, map_err, parse, scripts, Shared};
use crate::engine::{Batch, Claimed, EngineError, GroupRead};

impl Shared {
    /// Runs a plain command on the channel's stream key, routed to its slot.
    async fn stream_command(
        &self,
        name: &'static str,
        key: &str,
        args: Vec<Value>,
    ) -> Result<Value, EngineError> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let cmd = CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
        self.writer
            .with_options(&self.options())
            .custom(cmd, args)
            .await
            .map_err(map_err)
    }

    pub(super) async fn group_create(
        &self,
        channel: &str,
        group: &str,
        start: Offset,
    ) -> Result<StreamId, EngineError> {
        let start = match start {
            Offset::Latest => "$".to_owned(),
            Offset::Earliest => "0".to_owned(),
            Offset::Id(id) => id.to_string(),
        };
        let reply = eval(
            &self.writer,
            &self.options(),
            scripts::GROUP_CREATE,
            vec![self.stream_key(channel)],
            vec![group.to_owned(), start],
        )
        .await
        .map_err(map_err)?;
        parse::stream_id(&reply)
    }

    pub(super) async fn group_read(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<Batch>, EngineError> {
        let key = self.stream_key(channel);
        let id = match from {
            GroupRead::New => ">".to_owned(),
            GroupRead::Pending { after } => after.to_string(),
        };
        let args: Vec<Value> = vec![
            "GROUP".into(),
            group.into(),
            consumer.into(),
            "COUNT".into(),
            (count.max(1) as i64).into(),
            "STREAMS".into(),
            key.as_str().into(),
            id.into(),
        ];
        let reply = self.stream_command("XREADGROUP", &key, args).await?;
        let streams = parse::xread_streams(&reply)?;
        let Some((_, entries)) = streams.into_iter().next() else {
            return Ok(None);
        };
        // A pending entry deleted from the stream comes back as `[id, nil]`: acknowledge it
        // (it can never be processed) and leave it out.
        let (kept, gone) = split_deleted(entries)?;
        if !gone.is_empty() {
            self.group_ack(channel, group, &gone).await?;
        }
        parse::entries(channel, &kept)
    }

    pub(super) async fn group_ack(
        &self,
        channel: &str,
        group: &str,
        ids: &[StreamId],
    ) -> Result<u64, EngineError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let key = self.stream_key(channel);
        let mut args: Vec<Value> = Vec::with_capacity(2 + ids.len());
        args.push(key.as_str().into());
        args.push(group.into());
        args.extend(ids.iter().map(|id| Value::from(id.to_string())));
        match self.stream_command("XACK", &key, args).await? {
            Value::Integer(n) => Ok(n.max(0) as u64),
            other => Err(EngineError::Internal(format!(
                "unexpected XACK reply {other:?}"
            ))),
        }
    }

    pub(super) async fn group_claim(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        start: StreamId,
        count: usize,
    ) -> Result<Claimed, EngineError> {
        let reply = eval(
            &self.writer,
            &self.options(),
            scripts::GROUP_CLAIM,
            vec![self.stream_key(channel)],
            vec![
                group.to_owned(),
                consumer.to_owned(),
                min_idle.as_millis().to_string(),
                start.to_string(),
                count.max(1).to_string(),
            ],
        )
        .await
        .map_err(map_err)?;
        let unexpected = || EngineError::Internal(format!("unexpected claim reply {reply:?}"));
        let Value::Array(parts) = &reply else {
            return Err(unexpected());
        };
        let [next, entries, counts] = parts.as_slice() else {
            return Err(unexpected());
        };
        let deliveries = match counts {
            Value::Array(counts) => counts
                .iter()
                .map(|c| match c {
                    Value::Integer(n) => Ok((*n).max(0) as u64),
                    _ => Err(unexpected()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Value::Null => Vec::new(),
            _ => return Err(unexpected()),
        };
        Ok(Claimed {
            batch: parse::entries(channel, entries)?,
            deliveries,
            next: parse::stream_id(next)?,
        })
    }
}

/// Splits `[id, fields]` entries into those still in the stream and the IDs of deleted ones
/// (`fields` nil).
fn split_deleted(entries: &Value) -> Result<(Value, Vec<StreamId>), EngineError> {
    let Value::Array(items) = entries else {
        return Ok((entries.clone(), Vec::new()));
    };
    let mut kept = Vec::with_capacity(items.len());
    let mut gone = Vec::new();
    for item in items {
        match item {
            Value::Array(pair) if pair.len() == 2 && matches!(pair[1], Value::Null) => {
                gone.push(parse::stream_id(&pair[0])?);
            }
            other => kept.push(other.clone()),
        }
    }
    Ok((Value::Array(kept), gone))
}
