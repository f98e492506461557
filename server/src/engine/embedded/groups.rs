//! Consumer groups of the embedded engine, with Redis semantics: a group's last delivered ID
//! and pending entries list, reads of new or pending entries, turns shared among a group's
//! local consumers, acknowledgements and claims of idle entries.
//!
//! Every operation runs under the engine's one lock; a pending entry whose stream entry was
//! trimmed meanwhile is dropped from the list instead of being delivered.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use redistribute_protocol::{Offset, StreamId};

use super::{now_ms, Group, PendingEntry, State, StoredEntry, Stream};
use crate::engine::{BatchBuilder, Claimed, EngineError, GroupBatch, GroupRead, GroupTurn, Turns};

fn no_group(channel: &str, group: &str) -> EngineError {
    EngineError::Internal(format!(
        "NOGROUP: no consumer group {group:?} on channel {channel:?}"
    ))
}

impl State {
    /// The entries of `channel` and its consumer group `group`; `NOGROUP` when either is
    /// missing.
    fn group(
        &mut self,
        channel: &str,
        group: &str,
    ) -> Result<(&VecDeque<StoredEntry>, &mut Group), EngineError> {
        let Some(Stream {
            entries, groups, ..
        }) = self.streams.get_mut(channel)
        else {
            return Err(no_group(channel, group));
        };
        let Some(g) = groups.get_mut(group) else {
            return Err(no_group(channel, group));
        };
        Ok((entries, g))
    }

    pub(super) fn group_create(
        &mut self,
        channel: &str,
        group: &str,
        start: Offset,
        create: bool,
    ) -> Result<Option<StreamId>, EngineError> {
        let channel: Arc<str> = match self.streams.get_key_value(channel) {
            Some((k, _)) => k.clone(),
            None if create => Arc::from(channel),
            None => return Ok(None),
        };
        let stream = self.streams.entry(channel).or_default();
        let tip = stream.last_id;
        let group = stream
            .groups
            .entry(Box::from(group))
            .or_insert_with(|| Group {
                last_delivered: match start {
                    Offset::Latest => tip,
                    Offset::Earliest => StreamId::ZERO,
                    Offset::Id(id) => id,
                },
                pending: BTreeMap::new(),
                ..Group::default()
            });
        Ok(Some(group.last_delivered))
    }

    pub(super) fn group_read(
        &mut self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        from: GroupRead,
        count: usize,
    ) -> Result<Option<GroupBatch>, EngineError> {
        let now = now_ms();
        let (entries, g) = self.group(channel, group)?;
        let mut builder = BatchBuilder::new(channel.clone());
        let mut deliveries = Vec::new();
        match from {
            GroupRead::New => {
                let start = entries.partition_point(|e| e.id <= g.last_delivered);
                for entry in entries.range(start..).take(count) {
                    builder.push_encoded(entry.id, &entry.item);
                    g.pending.insert(
                        entry.id,
                        PendingEntry {
                            consumer: Box::from(consumer),
                            delivered_at: now,
                            deliveries: 1,
                        },
                    );
                    g.last_delivered = entry.id;
                    deliveries.push(1);
                }
            }
            GroupRead::Pending { after } => {
                let mut gone = Vec::new();
                let mut taken = 0;
                for (id, p) in g.pending.range_mut(after.successor()..) {
                    if taken >= count {
                        break;
                    }
                    if *p.consumer != *consumer {
                        continue;
                    }
                    let i = entries.partition_point(|e| e.id < *id);
                    match entries.get(i).filter(|e| e.id == *id) {
                        Some(entry) => {
                            builder.push_encoded(entry.id, &entry.item);
                            p.deliveries += 1;
                            p.delivered_at = now;
                            deliveries.push(p.deliveries);
                            taken += 1;
                        }
                        None => gone.push(*id),
                    }
                }
                for id in gone {
                    g.pending.remove(&id);
                }
            }
        }
        Ok(builder
            .finish()
            .map(|batch| GroupBatch { batch, deliveries }))
    }

    pub(super) fn group_take_turns(
        &mut self,
        channel: &Arc<str>,
        group: &str,
        turn: &GroupTurn<'_>,
    ) -> Result<Turns, EngineError> {
        // One instance: every consumer is local, so turns never defer.
        let now = now_ms();
        let (entries, g) = self.group(channel, group)?;
        g.served
            .retain(|name, _| turn.consumers.iter().any(|(n, _)| **n == **name));
        let mut rooms: Vec<(Arc<str>, usize, u64)> = turn
            .consumers
            .iter()
            .map(|(name, room)| {
                (
                    name.clone(),
                    *room,
                    g.served.get(&**name).copied().unwrap_or(0),
                )
            })
            .collect();
        let mut builders: Vec<(Arc<str>, BatchBuilder)> = Vec::new();
        let start = entries.partition_point(|e| e.id <= g.last_delivered);
        for entry in entries.range(start..).take(turn.count) {
            let Some(best) = rooms.iter_mut().filter(|r| r.1 > 0).min_by(|a, b| {
                (b.1.cmp(&a.1))
                    .then_with(|| a.2.cmp(&b.2))
                    .then_with(|| a.0.cmp(&b.0))
            }) else {
                break;
            };
            g.serves += 1;
            best.1 -= 1;
            best.2 = g.serves;
            g.served.insert(Box::from(&*best.0), g.serves);
            g.pending.insert(
                entry.id,
                PendingEntry {
                    consumer: Box::from(&*best.0),
                    delivered_at: now,
                    deliveries: 1,
                },
            );
            g.last_delivered = entry.id;
            let i = match builders.iter().position(|(n, _)| *n == best.0) {
                Some(i) => i,
                None => {
                    builders.push((best.0.clone(), BatchBuilder::new(channel.clone())));
                    builders.len() - 1
                }
            };
            builders[i].1.push_encoded(entry.id, &entry.item);
        }
        Ok(Turns {
            batches: builders
                .into_iter()
                .filter_map(|(name, b)| Some((name, b.finish()?)))
                .collect(),
            deferred: false,
        })
    }

    pub(super) fn group_ack(
        &mut self,
        channel: &str,
        group: &str,
        ids: &[StreamId],
    ) -> Result<u64, EngineError> {
        let Some(g) = self
            .streams
            .get_mut(channel)
            .and_then(|s| s.groups.get_mut(group))
        else {
            return Ok(0);
        };
        Ok(ids
            .iter()
            .filter(|id| g.pending.remove(id).is_some())
            .count() as u64)
    }

    pub(super) fn group_claim(
        &mut self,
        channel: &Arc<str>,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        start: StreamId,
        count: usize,
    ) -> Result<Claimed, EngineError> {
        let now = now_ms();
        let min_idle = min_idle.as_millis() as u64;
        let (entries, g) = self.group(channel, group)?;
        let mut builder = BatchBuilder::new(channel.clone());
        let mut deliveries = Vec::new();
        let mut gone = Vec::new();
        let mut next = StreamId::ZERO;
        for (id, p) in g.pending.range_mut(start..) {
            if deliveries.len() >= count {
                next = *id;
                break;
            }
            if now.saturating_sub(p.delivered_at) < min_idle {
                continue;
            }
            let i = entries.partition_point(|e| e.id < *id);
            match entries.get(i).filter(|e| e.id == *id) {
                Some(entry) => {
                    builder.push_encoded(entry.id, &entry.item);
                    p.consumer = Box::from(consumer);
                    p.deliveries += 1;
                    p.delivered_at = now;
                    deliveries.push(p.deliveries);
                }
                None => gone.push(*id),
            }
        }
        for id in gone {
            g.pending.remove(&id);
        }
        Ok(Claimed {
            batch: builder.finish(),
            deliveries,
            next,
        })
    }
}
