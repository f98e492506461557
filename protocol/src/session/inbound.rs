//! Frames from the server: replies matched to pending requests by id, messages deduplicated by
//! offset, gaps and connection-level errors.
//!
//! A reply is taken only when its id names a pending request of the matching kind; anything
//! else (a late reply to a request that already timed out, was cancelled, or belongs to a
//! connection the session gave up) is ignored. Any matched reply, success or error, proves the
//! connection healthy and resets the backoff.

use std::time::Duration;

use super::error::RequestError;
use super::event::{DisconnectReason, Event, RequestId, SubscriptionState};
use super::requests::{Kind, Origin, Pending};
use super::{backoff, Session, State};
use crate::codec::{decode_server, DecodeError};
use crate::error::ErrorCode;
use crate::frame::{Message, ServerFrame};
use crate::offset::StreamId;

impl Session {
    /// A text frame arrived on the current transport: decodes it and handles it like
    /// [`Session::handle_frame`]. Text that does not decode is never skipped silently: it ends
    /// the subscription of the channel it belongs to, or the connection (see
    /// [Frames the session cannot read](super#frames-the-session-cannot-read)).
    pub fn handle_text(&mut self, text: &str, now: Duration) {
        self.handle_text_with(text, now, decode_server);
    }

    /// Like [`Session::handle_text`], with another decoder of the same frames:
    /// [`crate::lite::decode_server`] is the one that links no serde code (the browser client).
    pub fn handle_text_with(
        &mut self,
        text: &str,
        now: Duration,
        decode: impl FnOnce(&str) -> Result<ServerFrame, DecodeError>,
    ) {
        match decode(text) {
            Ok(frame) => self.handle_frame(frame, now),
            Err(e) => {
                self.tick(now);
                self.last_heard = self.now;
                self.on_undecodable(text, e.error.to_string());
            }
        }
    }

    /// The driver received a frame it could not read at all (e.g. above its size limit), so
    /// it cannot tell which channel it belongs to: the session closes the transport and
    /// resumes from unchanged positions after a growing backoff delay.
    pub fn handle_bad_frame(&mut self, reason: impl Into<String>, now: Duration) {
        self.tick(now);
        self.fail_bad_frame(reason.into());
    }

    /// A frame that arrived decoded (by the driver, with
    /// [`crate::codec::decode_server`]). Drivers that receive text should call
    /// [`Session::handle_text`] instead, which also handles text that does not decode.
    pub fn handle_frame(&mut self, frame: ServerFrame, now: Duration) {
        self.tick(now);
        if !matches!(self.state, State::Handshaking { .. } | State::Open { .. }) {
            return;
        }
        self.last_heard = self.now;
        match frame {
            ServerFrame::Connected { id, .. } => {
                if matches!(self.state, State::Handshaking { id: hid, .. } if hid == id) {
                    self.backoff.reset();
                    self.establish(true);
                } else {
                    // A token refresh took effect: nothing changes for the application.
                    self.take_reply(id, |k| matches!(k, Kind::Refresh { .. }));
                }
            }
            ServerFrame::Subscribed {
                id,
                channel,
                offset,
                truncated,
            } => self.on_subscribed(id, channel, offset, truncated),
            ServerFrame::Unsubscribed { id, channel } => {
                self.subs.unsubscribe_answered(id);
                match self.take_reply(id, |k| matches!(k, Kind::Unsubscribe { .. })) {
                    Some(p) if p.origin == Origin::User => {
                        self.events.push_back(Event::Unsubscribed {
                            id: RequestId(id),
                            channel,
                        });
                    }
                    Some(p) => {
                        if let Kind::Unsubscribe { channel } = &p.kind {
                            self.release_barrier(channel, id);
                        }
                    }
                    None => {}
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
            ServerFrame::HistoryPage(mut frame) => {
                if self
                    .take_reply(frame.id, |k| matches!(k, Kind::History { .. }))
                    .is_some()
                {
                    let id = RequestId(frame.id);
                    let channel = std::mem::take(&mut frame.channel);
                    let page = (*frame).into_page();
                    self.events.push_back(Event::History { id, channel, page });
                }
            }
            // --- presence ---
            ServerFrame::PresenceMembers {
                id,
                channel,
                members,
            } => {
                let fits = |k: &Kind| matches!(k, Kind::Presence { stats: false, .. });
                if self.take_reply(id, fits).is_some() {
                    let id = RequestId(id);
                    let event = Event::Presence {
                        id,
                        channel,
                        members,
                    };
                    self.events.push_back(event);
                }
            }
            ServerFrame::PresenceCounts {
                id,
                channel,
                clients,
                users,
            } => {
                let fits = |k: &Kind| matches!(k, Kind::Presence { stats: true, .. });
                if self.take_reply(id, fits).is_some() {
                    let id = RequestId(id);
                    let event = Event::PresenceStats {
                        id,
                        channel,
                        clients,
                        users,
                    };
                    self.events.push_back(event);
                }
            }
            ServerFrame::PresenceEvent(event) => {
                // Only for a current subscription, like its messages.
                if self.subs.get(&event.channel).is_some() {
                    self.events.push_back(Event::PresenceChanged(event));
                }
            }
            ServerFrame::Gap { channel, from, to } => {
                // Like messages, a gap before the `subscribed` reply belongs to the
                // subscription being replaced.
                if let Some(sub) = self.subs.get_mut(&channel).filter(|s| !s.awaiting_reply()) {
                    sub.on_gap(from, to);
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
        sub.failures = 0;
        if sub.waiter == Some(id) {
            sub.waiter = None;
        }
        // Resumed from a known offset with everything after it still there.
        let recovered = sub.group.is_none() && sub.position().is_some() && !truncated;
        sub.on_subscribed(offset, truncated);
        self.events.push_back(Event::Subscribed {
            id: RequestId(id),
            channel: channel.clone(),
            offset,
            truncated,
            resumed: pending.origin == Origin::Internal,
            recovered,
        });
        self.announce(&channel, SubscriptionState::Subscribed);
    }

    fn on_messages(&mut self, channel: String, messages: Vec<Message>) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        // Until its `subscribed` arrives, the channel's messages belong to a subscription this
        // one replaces (the server sends nothing of a subscription before its reply): taking
        // them would move the position past the history the new one is about to receive.
        if sub.awaiting_reply() {
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
        self.subs.unsubscribe_answered(id);
        let Some(pending) = self.take_reply(id, |_| true) else {
            return;
        };
        if let Kind::Refresh { .. } = pending.kind {
            self.refresh_refused(code, message);
            return;
        }
        let error = RequestError::Server { code, message };
        match &pending.kind {
            Kind::Subscribe { channel } => {
                let channel = channel.clone();
                let current = self
                    .subs
                    .get(&channel)
                    .is_some_and(|s| s.inflight == Some(id));
                if current && self.retry_subscribe(&channel, &pending, id, &error) {
                    return;
                }
                let removed = if current {
                    self.subs.remove(&channel)
                } else {
                    None
                };
                match pending.origin {
                    Origin::Internal if removed.is_some() => {
                        self.events.push_back(Event::SubscriptionLost {
                            channel: channel.clone(),
                            error: error.clone(),
                        });
                    }
                    Origin::Internal => {}
                    Origin::User => self.fail(id, error.clone()),
                }
                if let Some(sub) = removed {
                    self.announce_removed(&channel, &sub, Some(error));
                }
            }
            Kind::Unsubscribe { channel } if pending.origin == Origin::Internal => {
                // A barrier refused (`not_found`: nothing stood): the subscribe goes ahead.
                let channel = channel.clone();
                self.release_barrier(&channel, id);
            }
            Kind::Unsubscribe { .. }
            | Kind::Publish { .. }
            | Kind::Ack { .. }
            | Kind::History { .. }
            | Kind::Ping
            | Kind::Presence { .. }
            | Kind::Refresh { .. } => {
                if pending.origin == Origin::User {
                    self.fail(id, error);
                }
            }
        }
    }

    /// Keeps a subscription whose `subscribe` (`id`, just answered with `error`) failed
    /// transiently, and schedules the next attempt. Returns whether it did; `false` means the
    /// failure ends the subscription (permanent, a caller's subscribe without
    /// [`Config::retry_subscribe`](super::Config::retry_subscribe), or out of retries).
    fn retry_subscribe(
        &mut self,
        channel: &str,
        pending: &Pending,
        id: u64,
        error: &RequestError,
    ) -> bool {
        let retry = error.is_transient()
            && (pending.origin == Origin::Internal || self.config.retry_subscribe);
        let limit = self.config.subscribe_retry_limit;
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        let Some(sub) = self.subs.get_mut(channel) else {
            return false;
        };
        if !retry || limit.is_some_and(|l| sub.failures >= l) {
            return false;
        }
        let bound = backoff::ceiling(initial, max, sub.failures);
        sub.failures = sub.failures.saturating_add(1);
        sub.inflight = None;
        let attempt = sub.failures;
        let retry_in = backoff::jitter(bound, self.config.backoff_jitter, &mut self.rng);
        let at = self.now.saturating_add(retry_in);
        sub.retry_at = Some(at);
        if pending.origin == Origin::User {
            // The caller keeps waiting, within its original deadline.
            let mut again = Pending::new(pending.kind.clone(), Origin::User);
            again.sent = false;
            let deadline = pending.deadline();
            self.requests.insert(id, again, deadline);
        }
        self.retries.insert((at, channel.to_owned()));
        self.events.push_back(Event::SubscribeRetrying {
            channel: channel.to_owned(),
            error: error.clone(),
            attempt,
            retry_in,
        });
        true
    }

    /// Text that did not decode: end the subscription it belongs to, or the connection.
    fn on_undecodable(&mut self, text: &str, reason: String) {
        if !matches!(self.state, State::Handshaking { .. } | State::Open { .. }) {
            return;
        }
        let (kind, channel) = scan_frame(text);
        let channel =
            channel.filter(|_| matches!(kind.as_deref(), Some("messages" | "gap" | "subscribed")));
        let Some(channel) = channel else {
            self.fail_bad_frame(reason);
            return;
        };
        let Some(sub) = self.subs.get(&channel) else {
            // Not subscribed (any more): a decoded frame of it would be ignored as well.
            if kind.as_deref() == Some("subscribed") {
                self.fail_bad_frame(reason);
            }
            return;
        };
        if sub.barrier.is_some()
            || (sub.inflight.is_some() && kind.as_deref() != Some("subscribed"))
        {
            // Data of the subscription being replaced, which a decoded frame would not deliver
            // either (the server sends nothing of a subscription before its reply).
            return;
        }
        self.end_undecodable(channel, reason);
    }

    /// Ends a subscription whose frame could not be decoded: unsubscribes it on the server and
    /// tells the caller where delivery stopped.
    fn end_undecodable(&mut self, channel: String, reason: String) {
        let Some(sub) = self.subs.remove(&channel) else {
            return;
        };
        let error = RequestError::Undecodable {
            after: sub.position(),
            reason,
        };
        if self.is_connected() {
            // Nobody waits for the reply: an unknown id is ignored.
            let id = self.alloc_id();
            self.send_unsubscribe(id, &channel);
        }
        if let Some(inflight) = sub.inflight.filter(|i| Some(*i) != sub.waiter) {
            self.requests.remove(inflight);
        }
        let waiter = sub.waiter.and_then(|w| self.requests.remove(w).map(|_| w));
        match waiter {
            Some(waiter) => self.fail(waiter, error.clone()),
            None => self.events.push_back(Event::SubscriptionLost {
                channel: channel.clone(),
                error: error.clone(),
            }),
        }
        self.announce_removed(&channel, &sub, Some(error));
    }
}

/// The top-level string members `type` and `channel` of a JSON object, read by a shallow,
/// non-recursive scan that tolerates anything the decoder rejected (deep nesting, bad values
/// elsewhere, a cut-off text).
pub(crate) fn scan_frame(text: &str) -> (Option<String>, Option<String>) {
    let bytes = text.as_bytes();
    let (mut kind, mut channel) = (None, None);
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut key: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let Some(end) = string_end(bytes, i) else {
                    break;
                };
                if depth == 1 {
                    let value = match crate::json::parse(crate::json::cut(text, i, end + 1)) {
                        Ok(serde_json::Value::String(s)) => Some(s),
                        _ => None,
                    };
                    if expect_key {
                        key = value;
                        expect_key = false;
                    } else {
                        match key.take().as_deref() {
                            Some("type") => kind = kind.or(value),
                            Some("channel") => channel = channel.or(value),
                            _ => {}
                        }
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    expect_key = bytes[i] == b'{';
                } else if depth == 2 {
                    key = None;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => {
                expect_key = true;
                key = None;
            }
            _ => {}
        }
        i += 1;
    }
    (kind, channel)
}

/// The index of the quote closing the JSON string that opens at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::scan_frame;

    fn scan(text: &str) -> (Option<&'static str>, Option<String>) {
        let (kind, channel) = scan_frame(text);
        let kind = kind.map(|k| &*Box::leak(k.into_boxed_str()));
        (kind, channel)
    }

    #[test]
    fn finds_top_level_type_and_channel_in_any_order_past_deep_nesting() {
        let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        let text = format!(
            r#"{{"messages":[{{"offset":"1-0","fields":{{"channel":"inner","v":{deep}}}}}],"channel":"c\"x","type":"messages"}}"#
        );
        assert_eq!(scan(&text), (Some("messages"), Some("c\"x".to_owned())));
        let text = format!(r#"{{"type":"messages","channel":"chat","messages":{deep}}}"#);
        assert_eq!(scan(&text), (Some("messages"), Some("chat".to_owned())));
    }

    #[test]
    fn ignores_nested_members_and_survives_garbage() {
        assert_eq!(scan(r#"{"x":{"type":"gap","channel":"no"}}"#), (None, None));
        assert_eq!(scan(r#"{"type":"pong","id":"#), (Some("pong"), None));
        assert_eq!(
            scan(r#"{"type":"messages","channel":"c"#),
            (Some("messages"), None)
        );
        assert_eq!(scan(r#"{"channel":7,"type":["messages"]}"#), (None, None));
        assert_eq!(scan("not json"), (None, None));
        assert_eq!(scan(""), (None, None));
        assert_eq!(scan(r#"["type","messages"]"#), (None, None));
        assert_eq!(scan("}}}]]{"), (None, None));
    }
}
