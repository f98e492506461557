//! Commands from [`Client`](crate::Client) handles and subscription objects, and how the
//! driver turns them into session commands.
//!
//! Every subscription, a [`ChannelSubscription`](crate::ChannelSubscription) or the stream of
//! [`Client::subscribe`](crate::Client::subscribe) (an object registered with `replace`), is an
//! [`Entry`] of the channel, registered first and subscribed by [`Command::Join`]. A subscribe
//! is always the session's [`Session::resubscribe`]: when the channel is still subscribed (a
//! replacement), or its subscribe or unsubscribe is still in flight, the session unsubscribes
//! first and subscribes once the `unsubscribed` reply came back, so no message of the old
//! subscription still on the wire reaches the new one; otherwise it is a plain subscribe.
//!
//! [`Session::resubscribe`]: redistribute_protocol::session::Session::resubscribe

use std::sync::atomic::Ordering;

use redistribute_protocol::history::{HistoryOptions, Page as HistoryPage};
use redistribute_protocol::session::{PublishOptions, RequestId, SessionError, SubscriptionState};
use redistribute_protocol::{validate_channel, Fields, Offset, StreamId};
use tokio::sync::oneshot;

use super::overflow::resume_offset;
use super::route::{Entry, Reply};
use super::Driver;
use crate::channel::{Parts, SubscribeOptions, Subscribed};
use crate::error::Error;

/// A new subscription object's parts.
pub(crate) struct Registration {
    pub(crate) channel: String,
    /// Where it starts (and, as options are added, how).
    pub(crate) options: SubscribeOptions,
    /// Identifies this subscription among those of the same channel over time.
    pub(crate) sub: u64,
    pub(crate) parts: Parts,
    /// `(group, consumer)` for a consumer-group subscription.
    pub(crate) group: Option<(String, String)>,
    /// Replace the channel's subscription, if any, and end when unsubscribed (the stream of
    /// `Client::subscribe`), instead of refusing a second one.
    pub(crate) replace: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("channel", &self.channel)
            .field("sub", &self.sub)
            .finish_non_exhaustive()
    }
}

/// What a handle asks the driver to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// A new subscription object (not subscribed yet).
    Register {
        registration: Registration,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Subscribe an object.
    Join {
        channel: String,
        sub: u64,
        reply: oneshot::Sender<Result<Subscribed, Error>>,
    },
    /// Unsubscribe an object.
    Leave {
        channel: String,
        sub: u64,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// `Client::unsubscribe`: whatever subscription the channel has.
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A subscription object was dropped.
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
            Command::Register {
                registration,
                reply,
            } => {
                let _ = reply.send(self.register(registration));
            }
            Command::Join {
                channel,
                sub,
                reply,
            } => self.join(channel, sub, reply),
            Command::Leave {
                channel,
                sub,
                reply,
            } => {
                if self.entries.get(&channel).is_some_and(|e| e.sub == sub) {
                    self.leave(channel, reply);
                } else {
                    let _ = reply.send(Ok(()));
                }
            }
            Command::Unsubscribe { channel, reply } => {
                if self.entries.contains_key(&channel) {
                    self.leave(channel, reply);
                } else {
                    let _ = reply.send(Ok(()));
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

    /// Adds a subscription object; a second one of a channel is refused unless it replaces.
    fn register(&mut self, registration: Registration) -> Result<(), Error> {
        let Registration {
            channel,
            options,
            sub,
            parts,
            group,
            replace,
        } = registration;
        validate_channel(&channel)?;
        if self.session.is_closed() {
            return Err(self.close_error.clone().unwrap_or(Error::Closed));
        }
        if self.entries.contains_key(&channel) {
            if !replace {
                return Err(Error::DuplicateSubscription { channel });
            }
            // The replaced subscription ends; the new one's subscribe replaces it on the server.
            self.finish_entry(&channel, Some(Error::Cancelled));
            self.entries.remove(&channel);
        }
        let entry = Entry {
            sub,
            tx: parts.tx,
            shared: parts.shared,
            state: parts.state,
            capacity: self.settings.subscription_buffer,
            options,
            last_queued: None,
            group,
            ephemeral: replace,
            start: None,
            waiters: Vec::new(),
        };
        self.entries.insert(channel, entry);
        Ok(())
    }

    /// Subscribes an object: at once when it is subscribed, after the server's confirmation
    /// otherwise.
    fn join(
        &mut self,
        channel: String,
        sub: u64,
        reply: oneshot::Sender<Result<Subscribed, Error>>,
    ) {
        let Some(entry) = self.entries.get_mut(&channel).filter(|e| e.sub == sub) else {
            // Replaced meanwhile.
            let _ = reply.send(Err(Error::Cancelled));
            return;
        };
        // The object's own state: a replacing object starts `Unsubscribed` even while the
        // subscription it replaces still stands.
        let state = *entry.state.borrow();
        match (state, entry.start) {
            (SubscriptionState::Subscribed, Some(start)) => {
                let _ = reply.send(Ok(start));
                return;
            }
            (SubscriptionState::Unsubscribed, _) => {}
            _ => {
                entry.waiters.push(reply);
                return;
            }
        }
        // Continue after what was buffered, or start where the options say (a rewind only
        // while nothing was buffered yet).
        let from = resume_offset(entry);
        let group = entry.group.clone();
        let subscribed = match entry.options.rewind.filter(|_| entry.last_queued.is_none()) {
            Some(rewind) => self.session.resubscribe_rewind(&channel, rewind),
            None => self.resubscribe(&channel, from, group),
        };
        match subscribed {
            Ok(_) => {
                if let Some(entry) = self.entries.get_mut(&channel) {
                    entry.start = None;
                    entry.waiters.push(reply);
                }
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Unsubscribes the channel's subscription; answered when the server confirms (at once
    /// when nothing is subscribed). The entry of a `Client::subscribe` stream ends with it.
    fn leave(&mut self, channel: String, reply: oneshot::Sender<Result<(), Error>>) {
        if let Some(entry) = self.entries.get(&channel) {
            // Not resumed any more after an overflow.
            entry.shared.overflowed.store(false, Ordering::SeqCst);
        }
        self.pending
            .retain(|_, r| !matches!(r, Reply::Subscribe { channel: c, .. } if *c == channel));
        if self.session.subscription_state(&channel) == SubscriptionState::Unsubscribed {
            // E.g. waiting to resume after an overflow: nothing stands on the server.
            self.finish_entry(&channel, None);
            let _ = reply.send(Ok(()));
            return;
        }
        match self.session.unsubscribe(channel) {
            Ok(id) => {
                self.pending.insert(id.get(), Reply::Unsubscribe(reply));
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

    /// Ends a subscription nobody reads any more: forgets it and unsubscribes (nobody waits
    /// for the outcome).
    pub(super) fn end(&mut self, channel: String) {
        self.entries.remove(&channel);
        if self.session.subscription_state(&channel) != SubscriptionState::Unsubscribed {
            let _ = self.session.unsubscribe(channel);
        }
    }
}
