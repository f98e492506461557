//! Consumer groups on Redis Streams: `XGROUP CREATE … MKSTREAM`, non-blocking `XREADGROUP`,
//! `XACK` and `XAUTOCLAIM` with delivery counts.
//!
//! Every command goes through the shared multiplexed writer and targets the channel's stream
//! key ([`super::keys`]), so in cluster mode it is routed to the node serving the channel's
//! shard, like publishes. None of them blocks: live group delivery is driven by the server's
//! per-group pollers ([`crate::group_dispatch`]), which the instance's blocking `XREAD` readers wake
//! when a watched channel gets new entries, so an instance needs no Redis connection per
//! consumer.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use redistribute_protocol::{Offset, StreamId};

use super::{eval, map_err, parse, scripts, Shared};
use crate::engine::{Claimed, EngineError, GroupBatch, GroupRead, GroupTurn, Turns};

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
        create: bool,
    ) -> Result<Option<StreamId>, EngineError> {
        let start = match start {
            Offset::Latest => "$".to_owned(),
            Offset::Earliest => "0".to_owned(),
            Offset::Id(id) => id.to_string(),
        };
        let key = self.stream_key(channel);
        let watermark = format!("{key}#trim");
        let reply = eval(
            &self.writer,
            &self.options(),
            scripts::GROUP_CREATE,
            vec![key, watermark],
            vec![
                group.to_owned(),
                start,
                if create { "1" } else { "0" }.to_owned(),
            ],
        )
        .await
        .map_err(map_err)?;
        parse::optional_id(&reply)
    }

    pub(super) async fn group_read(
        &self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<GroupBatch>, EngineError> {
        let key = self.stream_key(channel);
        let count = count.max(1);
        let after = match from {
            GroupRead::New => {
                return self
                    .group_read_new(channel, &key, group, consumer, count)
                    .await
            }
            GroupRead::Pending { after } => after,
        };
        let reply = eval(
            &self.writer,
            &self.options(),
            scripts::GROUP_PENDING,
            vec![key],
            vec![
                group.to_owned(),
                consumer.to_owned(),
                count.to_string(),
                after.to_string(),
            ],
        )
        .await
        .map_err(map_err)?;
        let unexpected = || EngineError::Internal(format!("unexpected pending reply {reply:?}"));
        let Value::Array(parts) = &reply else {
            return Err(unexpected());
        };
        let [entries, counts] = parts.as_slice() else {
            return Err(unexpected());
        };
        let deliveries = delivery_counts(counts).ok_or_else(unexpected)?;
        Ok(parse::entries(channel, entries)?.map(|batch| GroupBatch { batch, deliveries }))
    }

    /// `XREADGROUP … >`: entries never delivered to the group, each now delivered once.
    async fn group_read_new(
        &self,
        channel: &Arc<str>,
        key: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Option<GroupBatch>, EngineError> {
        let args: Vec<Value> = vec![
            "GROUP".into(),
            group.into(),
            consumer.into(),
            "COUNT".into(),
            (count as i64).into(),
            "STREAMS".into(),
            key.into(),
            ">".into(),
        ];
        let reply = self.stream_command("XREADGROUP", key, args).await?;
        let streams = parse::xread_streams(&reply)?;
        let Some((_, entries)) = streams.into_iter().next() else {
            return Ok(None);
        };
        Ok(parse::entries(channel, entries)?.map(|batch| GroupBatch {
            deliveries: vec![1; batch.len()],
            batch,
        }))
    }

    pub(super) async fn group_take_turns(
        &self,
        channel: &Arc<str>,
        group: &str,
        turn: &GroupTurn<'_>,
    ) -> Result<Turns, EngineError> {
        let key = self.stream_key(channel);
        let record = format!("{key}#turns:{group}");
        let mut args = vec![
            group.to_owned(),
            turn.instance.to_owned(),
            turn.lease.as_millis().max(1).to_string(),
            turn.count.to_string(),
        ];
        for (name, room) in turn.consumers {
            args.push(name.to_string());
            args.push(room.to_string());
        }
        let reply = eval(
            &self.writer,
            &self.options(),
            scripts::GROUP_TURNS,
            vec![key, record],
            args,
        )
        .await
        .map_err(map_err)?;
        let unexpected = || EngineError::Internal(format!("unexpected turns reply {reply:?}"));
        let Value::Array(parts) = &reply else {
            return Err(unexpected());
        };
        let Some((deferred, rest)) = parts.split_first() else {
            return Err(unexpected());
        };
        let mut turns = Turns {
            deferred: matches!(deferred, Value::Integer(1)),
            batches: Vec::new(),
        };
        for pair in rest.chunks(2) {
            let [name, entries] = pair else {
                return Err(unexpected());
            };
            let name = match name {
                Value::String(s) => Arc::<str>::from(&**s),
                Value::Bytes(b) => Arc::<str>::from(String::from_utf8_lossy(b).as_ref()),
                _ => return Err(unexpected()),
            };
            if let Some(batch) = parse::entries(channel, entries)? {
                turns.batches.push((name, batch));
            }
        }
        Ok(turns)
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
        let deliveries = delivery_counts(counts).ok_or_else(unexpected)?;
        Ok(Claimed {
            batch: parse::entries(channel, entries)?,
            deliveries,
            next: parse::stream_id(next)?,
        })
    }
}

/// The delivery counts of a script reply (an empty table comes back as nil).
fn delivery_counts(counts: &Value) -> Option<Vec<u64>> {
    match counts {
        Value::Array(counts) => counts
            .iter()
            .map(|c| match c {
                Value::Integer(n) => Some((*n).max(0) as u64),
                _ => None,
            })
            .collect(),
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}
