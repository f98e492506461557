//! Commands from [`Client`](crate::Client) handles and subscriptions, and how the driver turns
//! them into session commands.
//!
//! Replacing a subscription (subscribing again to a channel, or resuming one that overflowed)
//! is done as `unsubscribe`, then `subscribe` once the `unsubscribed` reply came back: the
//! server refuses a second `subscribe` of a channel, and waiting for the reply means no
//! message of the old subscription can reach the new one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redistribute_protocol::session::PublishOptions;
use redistribute_protocol::{ErrorCode, Fields, Message, Offset, StreamId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::route::{Entry, Phase, Reply};
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
                match self.session.unsubscribe(channel) {
                    Ok(id) => {
                        self.pending
                            .insert(id.get(), Reply::Unsubscribe(Some(reply)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Dropped { channel, sub } => {
                if self.entries.get(&channel).is_some_and(|e| e.sub == sub) {
                    self.entries.remove(&channel);
                    self.unsubscribe_quietly(channel);
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
        } = request;
        let replacing = self.entries.remove(&channel).is_some();
        let mut entry = Entry {
            sub,
            tx,
            shared,
            requested: offset,
            last_queued: None,
            phase: Phase::Live,
        };
        if replacing {
            // The old stream ended with its entry; the new one starts once the server let go.
            match self.session.unsubscribe(channel.clone()) {
                Ok(id) => {
                    entry.phase = Phase::Unsubscribing;
                    self.pending.insert(
                        id.get(),
                        Reply::ThenSubscribe {
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
            return;
        }
        match self.session.subscribe(channel.clone(), offset) {
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

    /// Second half of a replacement: the old subscription is gone, subscribe the new one.
    pub(super) fn then_subscribe(
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
        match self.session.subscribe(channel.clone(), offset) {
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

    /// Unsubscribes without anyone waiting for the outcome.
    pub(super) fn unsubscribe_quietly(&mut self, channel: String) {
        if let Ok(id) = self.session.unsubscribe(channel) {
            self.pending.insert(id.get(), Reply::Unsubscribe(None));
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
        let Some(entry) = self.entries.get_mut(&channel) else {
            return;
        };
        if entry.tx.is_closed() {
            self.entries.remove(&channel);
            self.unsubscribe_quietly(channel);
            return;
        }
        let sub = entry.sub;
        match self.session.unsubscribe(channel.clone()) {
            Ok(id) => {
                entry.phase = Phase::Unsubscribing;
                entry.shared.overflowed.store(false, Ordering::SeqCst);
                self.pending.insert(
                    id.get(),
                    Reply::ThenSubscribe {
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
