//! Frames from the server: replies matched to pending requests by id, messages deduplicated by
//! offset, gaps and connection-level errors.
//!
//! A reply is taken only when its id names a pending request of the matching kind; anything
//! else (a late reply to a request that already timed out, was cancelled, or belongs to a
//! connection the session gave up) is ignored. Any matched reply, success or error, proves the
//! connection healthy and resets the backoff.

use std::time::Duration;

use super::error::RequestError;
use super::event::{DisconnectReason, Event, RequestId};
use super::requests::{Kind, Origin, Pending};
use super::{Session, State};
use crate::error::ErrorCode;
use crate::frame::{Message, ServerFrame};
use crate::offset::StreamId;

impl Session {
    /// A frame arrived on the current transport (decode it with
    /// [`decode_server`](crate::codec::decode_server) first; undecodable text can be dropped).
    pub fn handle_frame(&mut self, frame: ServerFrame, now: Duration) {
        self.tick(now);
        if !matches!(self.state, State::Handshaking { .. } | State::Open { .. }) {
            return;
        }
        match frame {
            ServerFrame::Connected { id, .. } => {
                if matches!(self.state, State::Handshaking { id: hid, .. } if hid == id) {
                    self.backoff.reset();
                    self.establish(true);
                }
            }
            ServerFrame::Subscribed {
                id,
                channel,
                offset,
                truncated,
            } => self.on_subscribed(id, channel, offset, truncated),
            ServerFrame::Unsubscribed { id, channel } => {
                if self
                    .take_reply(id, |k| matches!(k, Kind::Unsubscribe { .. }))
                    .is_some_and(|p| p.origin == Origin::User)
                {
                    self.events.push_back(Event::Unsubscribed {
                        id: RequestId(id),
                        channel,
                    });
                }
            }
            ServerFrame::Published {
                id,
                channel,
                offset,
            } => {
                if self
                    .take_reply(id, |k| matches!(k, Kind::Publish { .. }))
                    .is_some()
                {
                    self.events.push_back(Event::Published {
                        id: RequestId(id),
                        channel,
                        offset,
                    });
                }
            }
            ServerFrame::Pong { id } => {
                if self
                    .take_reply(id, |k| matches!(k, Kind::Ping))
                    .is_some_and(|p| p.origin == Origin::User)
                {
                    self.events.push_back(Event::Pong { id: RequestId(id) });
                }
            }
            ServerFrame::Acked { id, count } => {
                if self
                    .take_reply(id, |k| matches!(k, Kind::Ack { .. }))
                    .is_some()
                {
                    self.events.push_back(Event::Acked {
                        id: RequestId(id),
                        count,
                    });
                }
            }
            ServerFrame::Messages { channel, messages } => self.on_messages(channel, messages),
            ServerFrame::Gap { channel, from, to } => {
                if self.subs.get(&channel).is_some() {
                    self.events.push_back(Event::Gap { channel, from, to });
                }
            }
            ServerFrame::Error {
                id: None,
                code,
                message,
            } => self.events.push_back(Event::ServerError { code, message }),
            ServerFrame::Error {
                id: Some(id),
                code,
                message,
            } => self.on_error(id, code, message),
        }
    }

    /// Removes and returns the pending request `id` if its kind fits the reply; marks the
    /// connection healthy when it does.
    fn take_reply(&mut self, id: u64, fits: impl Fn(&Kind) -> bool) -> Option<Pending> {
        let pending = self.requests.get(id)?;
        if !pending.sent || !fits(&pending.kind) {
            return None;
        }
        if let State::Open { healthy: false } = self.state {
            self.state = State::Open { healthy: true };
            self.backoff.reset();
        }
        self.requests.remove(id)
    }

    fn on_subscribed(&mut self, id: u64, channel: String, offset: StreamId, truncated: bool) {
        let fits = |k: &Kind| matches!(k, Kind::Subscribe { channel: c } if *c == channel);
        let Some(pending) = self.take_reply(id, fits) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if sub.inflight != Some(id) {
            return;
        }
        sub.inflight = None;
        if sub.waiter == Some(id) {
            sub.waiter = None;
        }
        sub.on_subscribed(offset, truncated);
        self.events.push_back(Event::Subscribed {
            id: RequestId(id),
            channel,
            offset,
            truncated,
            resumed: pending.origin == Origin::Internal,
        });
    }

    fn on_messages(&mut self, channel: String, messages: Vec<Message>) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        // Until its `subscribed` arrives, the channel's messages belong to a subscription this
        // one replaces (the server sends nothing of a subscription before its reply): taking
        // them would move the position past the history the new one is about to receive.
        if sub.inflight.is_some() {
            return;
        }
        let messages = sub.accept(messages);
        if !messages.is_empty() {
            self.events.push_back(Event::Messages { channel, messages });
        }
    }

    fn on_error(&mut self, id: u64, code: ErrorCode, message: String) {
        if matches!(self.state, State::Handshaking { id: hid, .. } if hid == id) {
            self.fail_connection(DisconnectReason::Rejected { code, message }, true);
            return;
        }
        let Some(pending) = self.take_reply(id, |_| true) else {
            return;
        };
        let error = RequestError::Server { code, message };
        match pending.kind {
            Kind::Subscribe { channel } => {
                let current = self
                    .subs
                    .get(&channel)
                    .is_some_and(|s| s.inflight == Some(id));
                if current {
                    self.subs.remove(&channel);
                    if pending.origin == Origin::Internal {
                        self.events
                            .push_back(Event::SubscriptionLost { channel, error });
                        return;
                    }
                }
                if pending.origin == Origin::User {
                    self.fail(id, error);
                }
            }
            Kind::Unsubscribe { .. } | Kind::Publish { .. } | Kind::Ack { .. } | Kind::Ping => {
                if pending.origin == Origin::User {
                    self.fail(id, error);
                }
            }
        }
    }
}
