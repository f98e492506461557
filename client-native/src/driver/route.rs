//! Routing the session's events: outcomes to the calls waiting for them, messages to the
//! subscription buffers, connection changes to the state and the event channel.

use std::sync::Arc;

use redistribute_protocol::history::Page;
use redistribute_protocol::session::{DisconnectReason, Event as SessionEvent, RequestError};
use redistribute_protocol::{ErrorCode, Message, Offset, StreamId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::commands::PresenceReply;
use super::Driver;
use crate::error::Error;
use crate::event::{ConnectionState, Event};
use crate::subscription::{Start, SubShared};

/// One subscription with a live stream.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) sub: u64,
    pub(super) tx: mpsc::Sender<Message>,
    /// Its `overflowed` flag is also the driver's: set, messages are dropped until the
    /// application made room and the subscription is resumed (see [`super::overflow`]).
    pub(super) shared: Arc<SubShared>,
    /// What the caller asked for.
    pub(super) requested: Offset,
    /// The offset of the last message put into the buffer.
    pub(super) last_queued: Option<StreamId>,
    /// `(group, consumer)` of a consumer-group subscription.
    pub(super) group: Option<(String, String)>,
}

/// Who waits for a request's outcome.
#[derive(Debug)]
pub(super) enum Reply {
    /// A subscribe: the caller's (`reply`), or a resume after an overflow (`None`).
    Subscribe {
        channel: String,
        sub: u64,
        reply: Option<oneshot::Sender<Result<Start, Error>>>,
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
            Reply::Subscribe { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
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
                id,
                channel,
                offset,
                truncated,
                resumed,
            } => {
                if let Some(Reply::Subscribe {
                    reply: Some(reply), ..
                }) = self.pending.remove(&id.get())
                {
                    let _ = reply.send(Ok(Start { offset, truncated }));
                }
                if resumed {
                    self.emit(Event::Resubscribed {
                        channel,
                        offset,
                        truncated,
                    });
                }
            }
            SessionEvent::SubscriptionLost { channel, error } => {
                self.entries.remove(&channel);
                self.emit(Event::SubscriptionLost {
                    channel,
                    error: error.into(),
                });
            }
            SessionEvent::SubscribeRetrying {
                channel,
                error,
                attempt,
                retry_in,
            } => {
                debug!(%channel, %error, attempt, ?retry_in, "subscribe failed; retrying");
                self.emit(Event::SubscribeRetrying {
                    channel,
                    error: error.into(),
                    attempt,
                    retry_in,
                });
            }
            SessionEvent::Unsubscribed { id, .. } => self.on_outcome(id.get(), Ok(())),
            SessionEvent::Messages { channel, messages } => self.deliver(channel, messages),
            SessionEvent::Gap { channel, from, to } => self.emit(Event::Gap { channel, from, to }),
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
            (
                Reply::Subscribe {
                    channel,
                    sub,
                    reply,
                },
                Err(error),
            ) => {
                let current = self.entries.get(&channel).is_some_and(|e| e.sub == sub);
                if current && reply.is_none() {
                    self.resume_failed(channel, error);
                } else if current {
                    self.lose(channel, reply, error);
                } else if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
            (reply, Err(error)) => reply.fail(error),
            // A success event of another kind never reaches here.
            (_, Ok(())) => {}
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
            None => self.emit(Event::SubscriptionLost { channel, error }),
        }
    }

    /// The error a failed request reports: why the client stopped, if it gave up.
    fn request_error(&self, error: RequestError) -> Error {
        match (&error, &self.close_error) {
            (RequestError::Closed, Some(close)) => close.clone(),
            _ => error.into(),
        }
    }
}
