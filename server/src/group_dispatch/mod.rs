//! Consumer-group dispatch: one poller per (channel, group) hands the group's entries to
//! every local consumer of that group ([`Dispatchers`] is the registry of an instance).
//!
//! # Design
//!
//! An instance may serve many consumers of many groups without a Redis connection per
//! consumer: the engine's group operations never block ([`crate::engine::Engine::group_read`]
//! is a non-blocking `XREADGROUP`). What wakes a poller is the ordinary live feed: the poller
//! registers with the [`Hub`](crate::hub::Hub) like a subscriber, so the instance's shared
//! blocking `XREAD` readers (retargeted with `CLIENT UNBLOCK`, one `XREAD` per shard and key
//! set) tell it when the channel has new entries, and it then hands them out with one script
//! call ([`crate::engine::Engine::group_take_turns`]). Redis work per published entry is one
//! call per instance that serves the group, not per consumer.
//!
//! Each pass of a poller:
//!
//! 1. **Pending first.** A consumer that just joined first gets its own pending entries
//!    (`XREADGROUP … 0`, paged), so a worker that reconnects under the same name resumes the
//!    jobs it had not acknowledged before any new one. Such a read is a delivery too: an
//!    entry past `group_max_deliveries` goes to `<channel>:dead` (as in step 2), so a worker
//!    that crashes on a job and reconnects at once does not get it forever.
//! 2. **Reclaim.** Every half idle time (`group_claim_idle`), entries left pending longer than
//!    the idle time by any consumer (one that is gone, on any instance) are claimed
//!    (`XAUTOCLAIM`) for the local consumer with the most room. An entry whose delivery count
//!    then exceeds `group_max_deliveries` is published to `<channel>:dead` (with an
//!    idempotency key, so a retry does not write it twice) and acknowledged instead.
//! 3. **New entries, in turn across instances.** The group's consumers on every instance
//!    take turns: each new entry goes to the consumer with the most room, ties to the one
//!    served least recently, wherever it is connected (so the split is per worker, not per
//!    instance). The poller records its consumers and their room in the group's turn record
//!    (a lease renewed every pass and taken back when they leave, so a crashed instance's
//!    consumers drop out when it expires) and reads (`XREADGROUP … >` as the consumer) while
//!    the next turn is a local consumer's. At another instance's consumer it stops: that
//!    instance is woken by the same entry and reads it; in case it is gone or its consumer
//!    got busy, the poller looks again shortly after while undelivered entries remain.
//!
//! # Flow control
//!
//! Each consumer has a window of [`WINDOW`] unacknowledged entries: the poller reads for a
//! consumer only as many entries as it has room for, and an `ack` frees room. An entry that
//! stays unacknowledged longer than the idle time stops counting (it is up for reclaim), so a
//! worker that fails jobs without acknowledging them does not stall. So the queues between the
//! poller and a connection are bounded, and a fast worker takes more jobs than a slow one. A
//! consumer whose connection drops leaves its entries pending in the group; they are reclaimed
//! after the idle time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redistribute_protocol::{validate_channel, Offset, StreamId};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::Ready;
use crate::engine::{Batch, Engine, EngineError, GroupRead, GroupTurn};
use crate::error::RequestError;
use crate::hub::{Hub, LiveQueue, QueueEvent, Subscriber, SubscriberShared};

mod claim;

pub use claim::claim_idle;
pub(crate) use claim::dead_letter_excess;

/// Most unacknowledged entries a consumer holds at once.
pub(crate) const WINDOW: usize = 64;

/// Most entries read per group command.
const READ_COUNT: usize = 256;

/// When new entries were left to another instance's consumer, how soon the poller looks
/// again (only while undelivered entries remain).
const RECHECK: Duration = Duration::from_millis(200);

/// Pause after a failed engine command before the poller tries again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Consumer-group settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Entries idle this long are reclaimed.
    pub claim_idle: Duration,
    /// Entries delivered more often than this go to `<channel>:dead`.
    pub max_deliveries: u64,
}

/// Where a batch for a group consumer goes: the connection's group queue.
pub(crate) type GroupSender = mpsc::Sender<Arc<Batch>>;

/// The channel entries of dead letters of `channel` go to.
pub(crate) fn dead_letter_channel(channel: &str) -> String {
    format!("{channel}:dead")
}

/// An ID for this process, unique among the instances sharing a store.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let local = std::collections::hash_map::RandomState::new();
    let salt = std::hash::BuildHasher::hash_one(&local, nanos);
    format!("{:x}.{nanos:x}.{salt:x}", std::process::id())
}

/// A poller's (channel, group).
type PollerKey = (Arc<str>, Arc<str>);

/// All pollers of an instance.
pub struct Dispatchers {
    engine: Arc<dyn Engine>,
    hub: Arc<Hub>,
    config: GroupConfig,
    pollers: Mutex<HashMap<PollerKey, Arc<Poller>>>,
    next_consumer: std::sync::atomic::AtomicU64,
    /// This instance's ID in the groups' turn records.
    instance: String,
}

/// One consumer's membership; dropping it leaves the group (its entries stay pending).
pub struct Member {
    groups: Arc<Dispatchers>,
    poller: Arc<Poller>,
    id: u64,
}

struct Poller {
    channel: Arc<str>,
    group: Arc<str>,
    consumers: Mutex<Vec<Consumer>>,
    wake: Notify,
    stop: CancellationToken,
}

struct Consumer {
    id: u64,
    name: Arc<str>,
    tx: GroupSender,
    /// Delivered, unacknowledged entries and when they were delivered.
    inflight: BTreeMap<StreamId, Instant>,
    /// Still reading its own pending entries, after this ID.
    pending_after: Option<StreamId>,
}

impl Consumer {
    /// Room left in the window; entries older than the idle time no longer count.
    fn room(&mut self, idle: Duration) -> usize {
        let now = Instant::now();
        self.inflight.retain(|_, at| now.duration_since(*at) < idle);
        WINDOW.saturating_sub(self.inflight.len())
    }
}

impl Dispatchers {
    /// The group registry of an instance.
    pub fn new(engine: Arc<dyn Engine>, hub: Arc<Hub>, config: GroupConfig) -> Arc<Dispatchers> {
        Arc::new(Dispatchers {
            engine,
            hub,
            config,
            pollers: Mutex::new(HashMap::new()),
            next_consumer: std::sync::atomic::AtomicU64::new(1),
            instance: instance_id(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Joins `group` of `channel` as `consumer` (creating the group from `start` when it does
    /// not exist). Entries go to `tx`. Returns the group's last delivered ID at join time.
    /// `create` says whether the client may create the channel ([`crate::core_state::Core::may_create`]);
    /// if not and the channel does not exist, nothing is written and its refusal is returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        self: &Arc<Self>,
        channel: &str,
        group: &str,
        consumer: &str,
        start: Offset,
        tx: GroupSender,
        timeout: Duration,
        create: Result<(), crate::auth::Denied>,
    ) -> Result<(StreamId, Member), RequestError> {
        validate_channel(group).map_err(|e| RequestError::bad_request(e.to_string()))?;
        validate_channel(consumer).map_err(|e| RequestError::bad_request(e.to_string()))?;
        if validate_channel(&dead_letter_channel(channel)).is_err() {
            return Err(RequestError::bad_request(format!(
                "channel {channel:?} is too long for consumer groups: its dead-letter channel \
                 {:?} must be a valid channel name",
                dead_letter_channel(channel)
            )));
        }
        let may_create = create.is_ok();
        let created = tokio::time::timeout(
            timeout,
            self.engine.group_create(channel, group, start, may_create),
        )
        .await
        .unwrap_or_else(|_| Err(EngineError::Unavailable("group create timed out".into())))?;
        let created = match (created, create) {
            (Some(created), _) => created,
            (None, Err(denied)) => return Err(denied.into()),
            (None, Ok(())) => {
                return Err(EngineError::Internal("group create wrote nothing".into()).into())
            }
        };
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let poller = {
            let mut pollers = self.pollers.lock();
            let key = (Arc::<str>::from(channel), Arc::<str>::from(group));
            let poller = pollers
                .entry(key.clone())
                .or_insert_with(|| self.spawn_poller(key.0, key.1))
                .clone();
            poller.consumers.lock().push(Consumer {
                id,
                name: Arc::from(consumer),
                tx,
                inflight: BTreeMap::new(),
                pending_after: Some(StreamId::ZERO),
            });
            poller
        };
        poller.wake.notify_one();
        let member = Member {
            groups: self.clone(),
            poller,
            id,
        };
        Ok((created, member))
    }

    /// Number of pollers running (one per local (channel, group)).
    pub fn poller_count(&self) -> usize {
        self.pollers.lock().len()
    }

    fn spawn_poller(self: &Arc<Self>, channel: Arc<str>, group: Arc<str>) -> Arc<Poller> {
        let poller = Arc::new(Poller {
            channel,
            group,
            consumers: Mutex::new(Vec::new()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(run_poller(self.clone(), poller.clone()));
        poller
    }

    fn leave(&self, poller: &Arc<Poller>, id: u64) {
        let mut pollers = self.pollers.lock();
        let mut consumers = poller.consumers.lock();
        consumers.retain(|c| c.id != id);
        // The next pass takes it out of the turns (or the poller stops and does).
        poller.wake.notify_one();
        if consumers.is_empty() {
            let key = (poller.channel.clone(), poller.group.clone());
            if pollers.get(&key).is_some_and(|p| Arc::ptr_eq(p, poller)) {
                pollers.remove(&key);
            }
            poller.stop.cancel();
        }
    }
}

impl Member {
    /// Frees window room for acknowledged entries and lets the poller deliver more.
    pub fn acked(&self, ids: &[StreamId]) {
        let mut consumers = self.poller.consumers.lock();
        if let Some(c) = consumers.iter_mut().find(|c| c.id == self.id) {
            for id in ids {
                c.inflight.remove(id);
            }
        }
        drop(consumers);
        self.poller.wake.notify_one();
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.poller.group
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.groups.leave(&self.poller, self.id);
    }
}

/// A poller's loop: wait for a reason, then run passes until nothing is left to do.
async fn run_poller(groups: Arc<Dispatchers>, poller: Arc<Poller>) {
    // Hear about new entries of the channel from the instance's live readers.
    let conn = u64::MAX - groups.next_consumer.fetch_add(1, Ordering::Relaxed);
    let shared = SubscriberShared::new();
    let (queue, mut live) = LiveQueue::new(16, 1 << 20);
    let mut ready = groups
        .hub
        .subscribe(
            &poller.channel,
            Subscriber {
                conn,
                shared: shared.clone(),
                queue,
            },
        )
        .ready;
    let idle = groups.config.claim_idle;
    let tick = (idle / 2).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        ready.wait_for(|r| *r != Ready::Pending),
    )
    .await;
    let mut state = PassState {
        claim_cursor: StreamId::ZERO,
        next_claim: Instant::now() + tick,
        recheck: None,
    };
    loop {
        match pass(&groups, &poller, &mut state, tick).await {
            Ok(()) => {}
            Err(err) => {
                warn!(channel = %poller.channel, group = %poller.group, %err, "consumer-group poll failed; retrying");
                tokio::select! {
                    _ = poller.stop.cancelled() => break,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
                continue;
            }
        }
        let next = state
            .recheck
            .map_or(state.next_claim, |r| r.min(state.next_claim));
        let until_claim = next.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = poller.stop.cancelled() => break,
            _ = poller.wake.notified() => {}
            event = live.recv() => match event {
                QueueEvent::Batch(_) => while live.try_recv().is_some() {},
                QueueEvent::Signalled => shared.lagging.store(false, Ordering::Release),
            },
            _ = tokio::time::sleep(until_claim) => {}
        }
    }
    // Take this instance's consumers out of the turns, so no other instance waits for them.
    let turn = GroupTurn {
        instance: &groups.instance,
        consumers: &[],
        lease: lease(tick),
        count: 0,
    };
    let leave = groups
        .engine
        .group_take_turns(&poller.channel, &poller.group, &turn);
    if let Ok(Err(err)) = tokio::time::timeout(RETRY_DELAY, leave).await {
        debug!(channel = %poller.channel, group = %poller.group, %err, "leaving the turns failed");
    }
    groups.hub.unsubscribe(&poller.channel, conn);
    debug!(channel = %poller.channel, group = %poller.group, "group poller stopped");
}

struct PassState {
    claim_cursor: StreamId,
    next_claim: Instant,
    /// When to look again at entries left to another instance's consumer (in case that
    /// instance is gone or its consumer got busy meanwhile).
    recheck: Option<Instant>,
}

/// Who to read for next: the consumer with the most room (ties: the first), with its name,
/// its room and whether it is still reading its own pending entries.
fn pick(
    poller: &Poller,
    idle: Duration,
    pending_phase: bool,
) -> Option<(u64, Arc<str>, usize, Option<StreamId>)> {
    let mut consumers = poller.consumers.lock();
    let mut best: Option<(u64, Arc<str>, usize, Option<StreamId>)> = None;
    for c in consumers.iter_mut() {
        if c.tx.is_closed() || c.pending_after.is_some() != pending_phase {
            continue;
        }
        let room = c.room(idle);
        if room > 0 && best.as_ref().is_none_or(|b| room > b.2) {
            best = Some((c.id, c.name.clone(), room, c.pending_after));
        }
    }
    // Rotate so that equal consumers take turns.
    if let Some((id, ..)) = &best {
        if let Some(i) = consumers.iter().position(|c| c.id == *id) {
            let c = consumers.remove(i);
            consumers.push(c);
        }
    }
    best
}

/// Hands a batch (if any) to consumer `id` and moves its pending read on; when the consumer
/// is gone its entries stay pending.
fn deliver(
    poller: &Poller,
    id: u64,
    batch: Option<Batch>,
    pending_after: Option<Option<StreamId>>,
) {
    let mut consumers = poller.consumers.lock();
    let Some(c) = consumers.iter_mut().find(|c| c.id == id) else {
        return;
    };
    if let Some(p) = pending_after {
        c.pending_after = p;
    }
    let Some(batch) = batch else {
        return;
    };
    let now = Instant::now();
    for &offset in batch.ids() {
        c.inflight.insert(offset, now);
    }
    if c.tx.try_send(Arc::new(batch)).is_err() {
        // Full or closed: the entries stay pending and are reclaimed after the idle time.
        debug!(channel = %poller.channel, "group consumer queue unavailable");
    }
}

fn finish_pending(poller: &Poller, id: u64) {
    if let Some(c) = poller.consumers.lock().iter_mut().find(|c| c.id == id) {
        c.pending_after = None;
    }
}

async fn pass(
    groups: &Dispatchers,
    poller: &Poller,
    state: &mut PassState,
    tick: Duration,
) -> Result<(), EngineError> {
    let engine = &groups.engine;
    let idle = groups.config.claim_idle;
    let (channel, group) = (&poller.channel, &poller.group);
    // 1. Each new consumer's own pending entries first.
    while let Some((id, name, room, Some(after))) = pick(poller, idle, true) {
        let count = room.min(READ_COUNT);
        let from = GroupRead::Pending { after };
        match engine
            .group_read(channel, group, &name, from, count)
            .await?
        {
            Some(read) => {
                let full = read.batch.len() >= count;
                let last = read.batch.last_id();
                let max = groups.config.max_deliveries;
                let (keep, _) = dead_letter_excess(
                    engine.as_ref(),
                    channel,
                    group,
                    read.batch,
                    &read.deliveries,
                    max,
                )
                .await?;
                deliver(poller, id, keep, Some(full.then_some(last)));
            }
            None => finish_pending(poller, id),
        }
    }
    // 2. Reclaim idle entries, dead-lettering those delivered too often.
    if Instant::now() >= state.next_claim {
        while let Some((id, name, room, _)) = pick(poller, idle, false) {
            let claimed = claim_idle(
                engine.as_ref(),
                channel,
                group,
                &name,
                idle,
                groups.config.max_deliveries,
                state.claim_cursor,
                room.min(READ_COUNT),
            )
            .await?;
            state.claim_cursor = claimed.next;
            if claimed.batch.is_some() {
                deliver(poller, id, claimed.batch, None);
            }
            if claimed.next == StreamId::ZERO {
                break;
            }
        }
        state.next_claim = Instant::now() + tick;
    }
    // 3. New entries, taking turns with the group's consumers on every instance.
    state.recheck = None;
    loop {
        let consumers = rooms(poller, idle);
        let total: usize = consumers.iter().map(|(_, room)| room).sum();
        let count = total.min(READ_COUNT);
        let turn = GroupTurn {
            instance: &groups.instance,
            consumers: &consumers,
            lease: lease(tick),
            count,
        };
        let turns = engine.group_take_turns(channel, group, &turn).await?;
        let taken: usize = turns.batches.iter().map(|(_, b)| b.len()).sum();
        for (name, batch) in turns.batches {
            match by_name(poller, &name, idle) {
                Some(id) => deliver(poller, id, Some(batch), None),
                // It left meanwhile: the entries stay pending and are reclaimed later.
                None => debug!(%channel, consumer = %name, "group consumer left"),
            }
        }
        if turns.deferred {
            state.recheck = Some(Instant::now() + RECHECK);
        }
        if count == 0 || taken < count {
            break;
        }
    }
    Ok(())
}

/// How long a record of an instance's consumers lasts unless renewed: a running poller
/// renews it at least every `tick`.
fn lease(tick: Duration) -> Duration {
    tick * 3 + Duration::from_secs(1)
}

/// Each local consumer name with its room for new entries (0 while it still reads its own
/// pending entries or its connection is closing).
fn rooms(poller: &Poller, idle: Duration) -> Vec<(Arc<str>, usize)> {
    let mut consumers = poller.consumers.lock();
    let mut out: Vec<(Arc<str>, usize)> = Vec::with_capacity(consumers.len());
    for c in consumers.iter_mut() {
        let room = if c.tx.is_closed() || c.pending_after.is_some() {
            0
        } else {
            c.room(idle)
        };
        match out.iter_mut().find(|(name, _)| *name == c.name) {
            Some(entry) => entry.1 += room,
            None => out.push((c.name.clone(), room)),
        }
    }
    out
}

/// The local consumer of this name with the most room.
fn by_name(poller: &Poller, name: &str, idle: Duration) -> Option<u64> {
    let mut consumers = poller.consumers.lock();
    consumers
        .iter_mut()
        .filter(|c| &*c.name == name && !c.tx.is_closed())
        .map(|c| (c.room(idle), c.id))
        .max_by_key(|(room, _)| *room)
        .map(|(_, id)| id)
}
