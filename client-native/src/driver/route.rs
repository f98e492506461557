//! Routing the session's events: outcomes to the calls waiting for them, events and messages
//! to the subscription buffers, connection changes to the state and the event channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redistribute_protocol::history::Page;
use redistribute_protocol::session::{
    DisconnectReason, Event as SessionEvent, RequestError, SubscriptionState,
};
use redistribute_protocol::{ErrorCode, StreamId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use super::commands::PresenceReply;
use super::Driver;
use crate::channel::{SubShared, SubscribeOptions, Subscribed, SubscriptionEvent};
use crate::error::Error;
use crate::event::{ConnectionState, Event};

/// One subscription object (or `Client::subscribe` stream) of a channel.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) sub: u64,
    pub(super) tx: mpsc::UnboundedSender<SubscriptionEvent>,
    /// Its `overflowed` flag is also the driver's: set, events are dropped until the
    /// application made room and the subscription is resumed (see [`super::overflow`]).
    pub(super) shared: Arc<SubShared>,
    /// The object's state, as the session announced it.
    pub(super) state: watch::Sender<SubscriptionState>,
    /// Most events in the buffer.
    pub(super) capacity: usize,
    /// What the caller asked for.
    pub(super) options: SubscribeOptions,
    /// The offset of the last message put into the buffer.
    pub(super) last_queued: Option<StreamId>,
    /// `(group, consumer)` of a consumer-group subscription.
    pub(super) group: Option<(String, String)>,
    /// A `Client::subscribe` stream: forgotten (its stream ends) once unsubscribed.
    pub(super) ephemeral: bool,
    /// The server's last confirmation on the current connection.
    pub(super) start: Option<Subscribed>,
    /// `subscribe` calls waiting for the confirmation.
    pub(super) waiters: Vec<oneshot::Sender<Result<Subscribed, Error>>>,
}

/// Who waits for a request's outcome.
#[derive(Debug)]
pub(super) enum Reply {
    /// A resume after an overflow.
    Subscribe {
        channel: String,
        sub: u64,
    },
    /// The caller's unsubscribe.
    Unsubscribe(oneshot::Sender<Result<(), Error>>),
    Publish(oneshot::Sender<Result<StreamId, Error>>),
    Ping(oneshot::Sender<Result<(), Error>>),
    Ack(oneshot::Sender<Result<u64, Error>>),
    History(oneshot::Sender<Result<Page, Error>>),
    Presence(PresenceReply),
}

impl Reply {
    /// Answers a waiting call with an error (when the driver stops).
    pub(super) fn fail(self, error: Error) {
        match self {
            Reply::Subscribe { .. } => {}
            Reply::Unsubscribe(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Publish(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Ping(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Ack(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::History(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Presence(reply) => reply.fail(error),
        }
    }
}

impl Driver {
    pub(super) fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Connected { target } => {
                debug!(%target, "connected");
                self.disconnected_since = None;
                self.failures.clear();
                self.state.send_replace(ConnectionState::Connected {
                    target: target.clone(),
                });
                self.emit(Event::Connected { target });
            }
            SessionEvent::Disconnected { reason } => {
                let target = self.session.current_target().to_owned();
                debug!(%target, %reason, "disconnected");
                if reason != DisconnectReason::Closed {
                    self.disconnected_since = Some(Instant::now());
                    self.record_failure(target.clone(), &reason);
                    self.state.send_replace(ConnectionState::Connecting);
                }
                self.emit(Event::Disconnected { target, reason });
            }
            SessionEvent::ConnectFailed { target, reason } => {
                self.record_failure(target.clone(), &reason);
                self.emit(Event::ConnectFailed { target, reason });
            }
            SessionEvent::Subscribed {
                channel,
                offset,
                truncated,
                resumed,
                recovered,
                ..
            } => {
                let start = Subscribed {
                    offset,
                    truncated,
                    recovered,
                };
                if let Some(entry) = self.entries.get_mut(&channel) {
                    entry.start = Some(start);
                    // The session announces it next; a caller woken now already sees it.
                    set_state(&entry.state, SubscriptionState::Subscribed);
                    for waiter in entry.waiters.drain(..) {
                        let _ = waiter.send(Ok(start));
                    }
                }
                self.offer(&channel, SubscriptionEvent::Subscribed(start));
                if resumed {
                    self.emit(Event::Resubscribed {
                        channel,
                        offset,
                        truncated,
                    });
                }
            }
            SessionEvent::SubscriptionLost { channel, error } => {
                let error = self.request_error(error);
                self.offer(&channel, SubscriptionEvent::Error(error.clone()));
                self.emit(Event::SubscriptionLost { channel, error });
            }
            SessionEvent::SubscribeRetrying {
                channel,
                error,
                attempt,
                retry_in,
            } => {
                debug!(%channel, %error, attempt, ?retry_in, "subscribe failed; retrying");
                let error = Error::from(error);
                self.offer(&channel, SubscriptionEvent::Error(error.clone()));
                self.emit(Event::SubscribeRetrying {
                    channel,
                    error,
                    attempt,
                    retry_in,
                });
            }
            SessionEvent::SubscriptionState {
                channel,
                state,
                error,
            } => {
                let resuming = self
                    .entries
                    .get(&channel)
                    .is_some_and(|e| e.shared.overflowed.load(Ordering::SeqCst));
                match state {
                    // The driver resumes it (a resume that failed transiently).
                    SubscriptionState::Unsubscribed if resuming => {}
                    SubscriptionState::Unsubscribed => {
                        let error = error.map(|e| self.request_error(e));
                        self.finish_entry(&channel, error);
                    }
                    _ => {
                        if let Some(entry) = self.entries.get(&channel) {
                            set_state(&entry.state, state);
                        }
                    }
                }
            }
            SessionEvent::Unsubscribed { id, .. } => self.on_outcome(id.get(), Ok(())),
            SessionEvent::Messages { channel, messages } => self.deliver(channel, messages),
            SessionEvent::Gap { channel, from, to } => {
                self.offer(&channel, SubscriptionEvent::Gap { from, to });
                self.emit(Event::Gap { channel, from, to });
            }
            SessionEvent::Published { id, offset, .. } => {
                if let Some(Reply::Publish(reply)) = self.pending.remove(&id.get()) {
                    let _ = reply.send(Ok(offset));
                }
            }
            SessionEvent::Acked { id, count } => {
                if let Some(Reply::Ack(reply)) = self.pending.remove(&id.get()) {
                    let _ = reply.send(Ok(count));
                }
            }
            SessionEvent::History { id, page, .. } => {
                if let Some(Reply::History(reply)) = self.pending.remove(&id.get()) {
                    let _ = reply.send(Ok(page));
                }
            }
            SessionEvent::Pong { id } => {
                if let Some(Reply::Ping(reply)) = self.pending.remove(&id.get()) {
                    let _ = reply.send(Ok(()));
                }
            }
            SessionEvent::RequestFailed { id, error } => {
                let error = self.request_error(error);
                self.on_outcome(id.get(), Err(error));
            }
            SessionEvent::Presence { id, members, .. } => {
                if let Some(Reply::Presence(PresenceReply::Members(reply))) =
                    self.pending.remove(&id.get())
                {
                    let _ = reply.send(Ok(members));
                }
            }
            SessionEvent::PresenceStats {
                id, clients, users, ..
            } => {
                if let Some(Reply::Presence(PresenceReply::Counts(reply))) =
                    self.pending.remove(&id.get())
                {
                    let _ = reply.send(Ok(crate::PresenceStats { clients, users }));
                }
            }
            SessionEvent::PresenceChanged(event) => {
                let redistribute_protocol::PresenceEvent {
                    channel,
                    joins,
                    leaves,
                    missed,
                } = *event;
                self.emit(Event::Presence {
                    channel,
                    joins,
                    leaves,
                    missed,
                })
            }
            SessionEvent::ServerError { code, message } => {
                self.emit(Event::ServerError { code, message });
            }
            // The connection state follows `Connected`/`Disconnected` and the driver's stop.
            SessionEvent::State { .. } => {}
        }
    }

    /// A request ended: success here means `unsubscribed` (other successes carry values and
    /// are handled where they arrive); failures go to whoever waits.
    fn on_outcome(&mut self, id: u64, outcome: Result<(), Error>) {
        let Some(reply) = self.pending.remove(&id) else {
            return;
        };
        match (reply, outcome) {
            (Reply::Unsubscribe(reply), outcome) => {
                // Not subscribed on the server is as good as unsubscribed.
                let answer = match outcome {
                    Err(Error::Server {
                        code: ErrorCode::NotFound,
                        ..
                    }) => Ok(()),
                    other => other,
                };
                let _ = reply.send(answer);
            }
            (Reply::Subscribe { channel, sub }, Err(error)) => {
                if self.entries.get(&channel).is_some_and(|e| e.sub == sub) {
                    self.resume_failed(channel, error);
                }
            }
            (reply, Err(error)) => reply.fail(error),
            // A success event of another kind never reaches here.
            (_, Ok(())) => {}
        }
    }

    /// A subscription ended (`error`: why, when the application did not ask): its state goes
    /// `Unsubscribed`, waiting `subscribe` calls fail, the final event is queued (never
    /// dropped), and a `Client::subscribe` stream is forgotten, so it ends.
    pub(super) fn finish_entry(&mut self, channel: &str, error: Option<Error>) {
        let Some(entry) = self.entries.get_mut(channel) else {
            return;
        };
        entry.shared.overflowed.store(false, Ordering::SeqCst);
        entry.start = None;
        let waiters = std::mem::take(&mut entry.waiters);
        if set_state(&entry.state, SubscriptionState::Unsubscribed) {
            entry.shared.queued.fetch_add(1, Ordering::SeqCst);
            let _ = entry.tx.send(SubscriptionEvent::Unsubscribed {
                error: error.clone(),
            });
        }
        for waiter in waiters {
            let _ = waiter.send(Err(error.clone().unwrap_or(Error::Cancelled)));
        }
        if entry.ephemeral {
            self.entries.remove(channel);
        }
    }

    /// The error a failed request reports: why the client stopped, if it gave up.
    pub(super) fn request_error(&self, error: RequestError) -> Error {
        match (&error, &self.close_error) {
            (RequestError::Closed, Some(close)) => close.clone(),
            _ => error.into(),
        }
    }
}

/// Sets an object's state; returns whether it changed (watchers wake only then).
fn set_state(watch: &watch::Sender<SubscriptionState>, state: SubscriptionState) -> bool {
    watch.send_if_modified(|s| {
        let changed = *s != state;
        *s = state;
        changed
    })
}
