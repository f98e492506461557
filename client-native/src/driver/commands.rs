//! Commands from [`Client`](crate::Client) handles and subscriptions, and how the driver turns
//! them into session commands.
//!
//! Replacing a subscription (subscribing again to a channel, or resuming one that overflowed)
//! is done as `unsubscribe`, then `subscribe` once the `unsubscribed` reply came back; so is a
//! subscribe of a channel whose unsubscribe is still in flight. Waiting for the reply means no
//! message of the old subscription (still on the wire) can reach the new one: for a new
//! subscription from `0` such a message would move its position past the history it is about
//! to receive. (The server would also replace a second `subscribe` in place, and the session
//! drops a channel's messages while its `subscribe` is unanswered; the explicit unsubscribe
//! also ends the old subscription's stream at a clear point.)

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redistribute_protocol::session::PublishOptions;
use redistribute_protocol::{ErrorCode, Fields, Message, Offset, StreamId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::route::{Deferred, Entry, Phase, Reply};
use super::{resume_offset, Driver, RESUME_RETRY};
use crate::error::Error;
use crate::subscription::{Start, SubShared};

/// A subscribe call's parts.
#[derive(Debug)]
pub(crate) struct SubscribeRequest {
    pub(crate) channel: String,
    pub(crate) offset: Offset,
    /// Identifies this subscription among those of the same channel over time.
    pub(crate) sub: u64,
    pub(crate) tx: mpsc::Sender<Message>,
    pub(crate) shared: Arc<SubShared>,
    /// `(group, consumer)` for a consumer-group subscription.
    pub(crate) group: Option<(String, String)>,
}

/// What a handle asks the driver to do.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        request: SubscribeRequest,
        reply: oneshot::Sender<Result<Start, Error>>,
    },
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A [`Subscription`](crate::Subscription) was dropped.
    Dropped {
        channel: String,
        sub: u64,
    },
    Publish {
        channel: String,
        fields: Fields,
        options: PublishOptions,
        reply: oneshot::Sender<Result<StreamId, Error>>,
    },
    Ping {
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Ack {
        channel: String,
        group: String,
        offsets: Vec<StreamId>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Driver {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe { request, reply } => self.subscribe(request, reply),
            Command::Unsubscribe { channel, reply } => {
                if self.entries.remove(&channel).is_none() {
                    let _ = reply.send(Ok(()));
                    return;
                }
                // Answered when the server confirms (or at once on a refusal).
                let _ = self.unsubscribe(channel, Some(reply));
            }
            Command::Dropped { channel, sub } => {
                if self.entries.get(&channel).is_some_and(|e| e.sub == sub) {
                    self.entries.remove(&channel);
                    let _ = self.unsubscribe(channel, None);
                }
            }
            Command::Publish {
                channel,
                fields,
                options,
                reply,
            } => match self.session.publish(channel, fields, options) {
                Ok(id) => {
                    self.pending.insert(id.get(), Reply::Publish(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Ping { reply } => match self.session.ping() {
                Ok(id) => {
                    self.pending.insert(id.get(), Reply::Ping(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Ack {
                channel,
                group,
                offsets,
                reply,
            } => match self.session.ack(channel, group, offsets) {
                Ok(id) => {
                    self.pending.insert(id.get(), Reply::Ack(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Close { reply } => {
                self.close_waiters.push(reply);
                self.session.close();
            }
        }
    }

    fn subscribe(
        &mut self,
        request: SubscribeRequest,
        reply: oneshot::Sender<Result<Start, Error>>,
    ) {
        let SubscribeRequest {
            channel,
            offset,
            sub,
            tx,
            shared,
            group,
        } = request;
        // A replaced subscription's stream ends with its entry.
        let replacing = self.entries.remove(&channel).is_some();
        let wait_for = if replacing {
            match self.unsubscribe(channel.clone(), None) {
                Ok(id) => Some(id),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        } else {
            self.unsubscribing.get(&channel).copied()
        };
        let mut entry = Entry {
            sub,
            tx,
            shared,
            requested: offset,
            last_queued: None,
            phase: Phase::Live,
            group,
        };
        if let Some(id) = wait_for {
            entry.phase = Phase::Unsubscribing;
            self.defer(
                id,
                Deferred {
                    channel: channel.clone(),
                    sub,
                    reply: Some(reply),
                },
            );
            self.entries.insert(channel, entry);
            return;
        }
        match self.session_subscribe(&channel, offset, entry.group.clone()) {
            Ok(id) => {
                self.pending.insert(
                    id.get(),
                    Reply::Subscribe {
                        channel: channel.clone(),
                        sub,
                        reply: Some(reply),
                    },
                );
                self.entries.insert(channel, entry);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// A plain or consumer-group subscribe in the session.
    fn session_subscribe(
        &mut self,
        channel: &str,
        offset: Offset,
        group: Option<(String, String)>,
    ) -> Result<
        redistribute_protocol::session::RequestId,
        redistribute_protocol::session::SessionError,
    > {
        match group {
            Some((group, consumer)) => self
                .session
                .subscribe_group(channel, group, consumer, offset),
            None => self.session.subscribe(channel, offset),
        }
    }

    /// Sends `unsubscribe` and remembers it as the channel's latest one in flight; `reply`
    /// gets the outcome (a refusal at once).
    pub(super) fn unsubscribe(
        &mut self,
        channel: String,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<u64, Error> {
        let id = match self.session.unsubscribe(channel.clone()) {
            Ok(id) => id.get(),
            Err(e) => {
                let error = Error::from(e);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error.clone()));
                }
                return Err(error);
            }
        };
        self.unsubscribing.insert(channel.clone(), id);
        self.pending
            .insert(id, Reply::Unsubscribe { channel, reply });
        Ok(id)
    }

    /// Runs `deferred` once the unsubscribe `id` has an outcome.
    fn defer(&mut self, id: u64, deferred: Deferred) {
        if let Some(old) = self.deferred.insert(id, deferred) {
            if let Some(reply) = old.reply {
                let _ = reply.send(Err(Error::Cancelled));
            }
        }
    }

    /// The unsubscribe `id` of `channel` has an outcome: start what waited for it.
    pub(super) fn on_unsubscribed(&mut self, id: u64, channel: &str, outcome: &Result<(), Error>) {
        if self.unsubscribing.get(channel) == Some(&id) {
            self.unsubscribing.remove(channel);
        }
        let Some(Deferred {
            channel,
            sub,
            reply,
        }) = self.deferred.remove(&id)
        else {
            return;
        };
        match outcome {
            Err(error @ (Error::Closed | Error::Unreachable { .. })) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            outcome => self.then_subscribe(channel, sub, reply, outcome.clone()),
        }
    }

    /// Second half of a replacement: the old subscription is gone, subscribe the new one.
    fn then_subscribe(
        &mut self,
        channel: String,
        sub: u64,
        reply: Option<oneshot::Sender<Result<Start, Error>>>,
        outcome: Result<(), Error>,
    ) {
        let current = self
            .entries
            .get(&channel)
            .is_some_and(|e| e.sub == sub && e.phase == Phase::Unsubscribing);
        if !current {
            // Unsubscribed, dropped or replaced again meanwhile.
            if let Some(reply) = reply {
                let _ = reply.send(Err(Error::Cancelled));
            }
            return;
        }
        if let Err(error) = outcome {
            let not_subscribed = matches!(
                &error,
                Error::Server {
                    code: ErrorCode::NotFound,
                    ..
                }
            );
            if !not_subscribed {
                self.lose(channel, reply, error);
                return;
            }
        }
        let entry = &self.entries[&channel];
        let offset = match reply {
            Some(_) => entry.requested,
            None => resume_offset(entry),
        };
        let group = entry.group.clone();
        match self.session_subscribe(&channel, offset, group) {
            Ok(id) => {
                if let Some(entry) = self.entries.get_mut(&channel) {
                    entry.phase = Phase::Live;
                }
                self.pending.insert(
                    id.get(),
                    Reply::Subscribe {
                        channel,
                        sub,
                        reply,
                    },
                );
            }
            Err(e) => self.lose(channel, reply, e.into()),
        }
    }

    /// A subscription could not be (re-)established: end its stream and say why.
    pub(super) fn lose(
        &mut self,
        channel: String,
        reply: Option<oneshot::Sender<Result<Start, Error>>>,
        error: Error,
    ) {
        self.entries.remove(&channel);
        match reply {
            Some(reply) => {
                let _ = reply.send(Err(error));
            }
            None => self.emit(crate::Event::SubscriptionLost { channel, error }),
        }
    }

    /// Resumes every overflowed subscription whose buffer is at most half full again (or
    /// whose stream was dropped).
    pub(super) fn resume_ready(&mut self) {
        let ready: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.phase == Phase::Overflowed
                    && (e.tx.is_closed() || e.tx.capacity() >= e.tx.max_capacity() / 2)
            })
            .map(|(c, _)| c.clone())
            .collect();
        for channel in ready {
            self.resume(channel);
        }
    }

    /// Starts re-subscribing an overflowed subscription from its last buffered message.
    fn resume(&mut self, channel: String) {
        let Some(entry) = self.entries.get(&channel) else {
            return;
        };
        if entry.tx.is_closed() {
            self.entries.remove(&channel);
            let _ = self.unsubscribe(channel, None);
            return;
        }
        let sub = entry.sub;
        match self.unsubscribe(channel.clone(), None) {
            Ok(id) => {
                if let Some(entry) = self.entries.get_mut(&channel) {
                    entry.phase = Phase::Unsubscribing;
                    entry.shared.overflowed.store(false, Ordering::SeqCst);
                }
                self.defer(
                    id,
                    Deferred {
                        channel,
                        sub,
                        reply: None,
                    },
                );
            }
            Err(_) => {
                // Too many requests in flight: try again shortly.
                self.resume_retry = Some(Instant::now() + RESUME_RETRY);
            }
        }
    }
}
