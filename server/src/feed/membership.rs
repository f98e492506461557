//! A feed's consumer-group subscriptions: joining a group through [`crate::group_dispatch`],
//! receiving the entries its poller assigns to this consumer, and acknowledging them.
//!
//! Group entries are not part of the history/live machinery of plain subscriptions: the
//! group decides what each consumer gets (its own pending entries first, then new ones, then
//! reclaimed ones), so they are delivered as they come, and offsets within a group
//! subscription need not increase (a redelivered entry is older than what came before it).

use std::collections::HashMap;
use std::sync::Arc;

use redistribute_protocol::{Offset, StreamId};
use tokio::sync::mpsc;

use super::Feed;
use crate::engine::{Batch, EngineError};
use crate::error::RequestError;
use crate::group_dispatch::{GroupSender, Member};

/// Capacity of a feed's group queue in batches. Each consumer holds at most
/// [`crate::group_dispatch::WINDOW`] unacknowledged entries, which bounds what is queued here.
const QUEUE_BATCHES: usize = 1024;

/// A feed's group subscriptions and the queue their pollers deliver to, made with the first
/// group subscription (boxed: most feeds never join a group, and every idle connection would
/// pay for the map and the queue handles).
pub(super) struct Memberships {
    /// Membership by channel.
    pub(super) members: HashMap<Arc<str>, Member>,
    tx: GroupSender,
    pub(super) rx: mpsc::Receiver<Arc<Batch>>,
}

impl Feed {
    /// Joins consumer group `group` of `channel` as `consumer`, creating the group from
    /// `offset` when it does not exist. Returns the group's last delivered ID; the consumer's
    /// pending entries, then new ones, follow with the next [`Feed::ready`].
    pub async fn subscribe_group(
        &mut self,
        channel: &str,
        group: &str,
        consumer: &str,
        offset: Offset,
        create: Result<(), crate::auth::Denied>,
    ) -> Result<StreamId, RequestError> {
        self.make_room(channel)?;
        let timeout =
            self.core.config.limits.request_timeout + crate::limits::ENGINE_TIMEOUT_MARGIN;
        let rare = self.rare.get_or_insert_with(Box::default);
        let groups = rare.groups.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
            Memberships {
                members: HashMap::new(),
                tx,
                rx,
            }
        });
        let (last, member) = self
            .core
            .dispatchers
            .join(
                channel,
                group,
                consumer,
                offset,
                groups.tx.clone(),
                timeout,
                create,
            )
            .await?;
        groups.members.insert(Arc::from(channel), member);
        Ok(last)
    }

    /// Acknowledges entries of `group` (`XACK`); returns how many were pending. Frees room
    /// in this connection's window when it is that group's consumer on `channel`.
    pub async fn ack(
        &mut self,
        channel: &str,
        group: &str,
        offsets: &[StreamId],
    ) -> Result<u64, RequestError> {
        let timeout =
            self.core.config.limits.request_timeout + crate::limits::ENGINE_TIMEOUT_MARGIN;
        let count =
            tokio::time::timeout(timeout, self.core.engine.group_ack(channel, group, offsets))
                .await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("ack timed out".into())))?;
        if let Some(member) = self.group(channel).filter(|m| m.group() == group) {
            member.acked(offsets);
        }
        Ok(count)
    }

    /// The group membership of `channel`, if any.
    fn group(&self, channel: &str) -> Option<&Member> {
        self.groups()?.members.get(channel)
    }

    /// Collects a batch the group poller assigned to this connection; entries of a group
    /// subscription that was ended meanwhile are left pending (reclaimed later).
    pub(super) fn take_group(&mut self, batch: Arc<Batch>) {
        if self.group(batch.channel()).is_some() {
            self.out.push(batch, 0);
        }
    }
}
