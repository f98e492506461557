//! Commands from [`Client`](crate::Client) handles and subscriptions, and how the driver turns
//! them into session commands.
//!
//! A subscribe is always the session's [`Session::resubscribe`]: when the channel is still
//! subscribed (a replacement), or its subscribe or unsubscribe is still in flight, the session
//! unsubscribes first and subscribes once the `unsubscribed` reply came back, so no message of
//! the old subscription still on the wire reaches the new one; otherwise it is a plain
//! subscribe. The driver only ends the replaced subscription's stream.
//!
//! [`Session::resubscribe`]: redistribute_protocol::session::Session::resubscribe

use std::sync::Arc;

use redistribute_protocol::history::{HistoryOptions, Page as HistoryPage};
use redistribute_protocol::session::{PublishOptions, RequestId, SessionError};
use redistribute_protocol::{Fields, Message, Offset, StreamId};
use tokio::sync::{mpsc, oneshot};

use super::route::{Entry, Reply};
use super::Driver;
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
    /// Start with the channel's last this many messages instead of `offset`.
    pub(crate) rewind: Option<u64>,
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
    History {
        channel: String,
        options: HistoryOptions,
        reply: oneshot::Sender<Result<HistoryPage, Error>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    /// `presence` or `presence_stats`, by the kind of reply awaited.
    Presence {
        channel: String,
        reply: PresenceReply,
    },
}

/// Who waits for a presence answer, and which one.
#[derive(Debug)]
pub(crate) enum PresenceReply {
    /// `presence`.
    Members(oneshot::Sender<Result<Vec<redistribute_protocol::PresenceMember>, Error>>),
    /// `presence_stats`.
    Counts(oneshot::Sender<Result<crate::PresenceStats, Error>>),
}

impl PresenceReply {
    pub(crate) fn fail(self, error: Error) {
        match self {
            PresenceReply::Members(reply) => {
                let _ = reply.send(Err(error));
            }
            PresenceReply::Counts(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
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
                match self.session.unsubscribe(channel) {
                    Ok(id) => {
                        self.pending.insert(id.get(), Reply::Unsubscribe(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Dropped { channel, sub } => {
                if self.entries.get(&channel).is_some_and(|e| e.sub == sub) {
                    self.end(channel);
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
            Command::History {
                channel,
                options,
                reply,
            } => match self.session.history(channel, options) {
                Ok(id) => {
                    self.pending.insert(id.get(), Reply::History(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Presence { channel, reply } => {
                let id = match reply {
                    PresenceReply::Counts(_) => self.session.presence_stats(channel),
                    PresenceReply::Members(_) => self.session.presence(channel),
                };
                match id {
                    Ok(id) => {
                        self.pending.insert(id.get(), Reply::Presence(reply));
                    }
                    Err(e) => reply.fail(e.into()),
                }
            }
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
            rewind,
        } = request;
        // A replaced subscription's stream ends with its entry.
        self.entries.remove(&channel);
        let subscribed = match rewind {
            Some(rewind) => self.session.resubscribe_rewind(&channel, rewind),
            None => self.resubscribe(&channel, offset, group.clone()),
        };
        match subscribed {
            Ok(id) => {
                self.pending.insert(
                    id.get(),
                    Reply::Subscribe {
                        channel: channel.clone(),
                        sub,
                        reply: Some(reply),
                    },
                );
                let entry = Entry {
                    sub,
                    tx,
                    shared,
                    requested: offset,
                    last_queued: None,
                    group,
                };
                self.entries.insert(channel, entry);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// A plain or consumer-group [`Session::resubscribe`] of `channel` from `from`.
    ///
    /// [`Session::resubscribe`]: redistribute_protocol::session::Session::resubscribe
    pub(super) fn resubscribe(
        &mut self,
        channel: &str,
        from: Offset,
        group: Option<(String, String)>,
    ) -> Result<RequestId, SessionError> {
        match group {
            Some((group, consumer)) => self
                .session
                .resubscribe_group(channel, group, consumer, from),
            None => self.session.resubscribe(channel, from),
        }
    }

    /// Ends a subscription nobody reads any more: forgets its stream and unsubscribes (nobody
    /// waits for the outcome).
    pub(super) fn end(&mut self, channel: String) {
        self.entries.remove(&channel);
        let _ = self.session.unsubscribe(channel);
    }
}
