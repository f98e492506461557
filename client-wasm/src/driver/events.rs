//! The session's events turned into what the page sees: promise settlements, cache writes and
//! queued page events (delivered later by [`Driver::dispatch`](super::Driver), with no borrow
//! held).

use js_sys::Object;
use redistribute_protocol::session::{Event, RequestId, SubscriptionState};
use wasm_bindgen::prelude::*;

use super::{call, js_error, set, Inner, Out, Reply, SubTopic, Topic};
use crate::cache::CachedMessage;
use crate::errors::{ErrorInfo, SUBSCRIPTION_LOST, UNDECODABLE};
use redistribute_protocol::session::RequestError;
use redistribute_protocol::{ErrorCode, ServerFrame};

impl Inner {
    pub(super) fn emit(&mut self, topic: Topic, args: Vec<JsValue>) {
        self.queue.push_back(Out::Emit(topic, args));
    }

    fn settle(&mut self, id: RequestId, value: Result<JsValue, ErrorInfo>) {
        let Some(i) = self.waiting.iter().position(|(w, _)| *w == id.get()) else {
            return;
        };
        let (_, w) = self.waiting.swap_remove(i);
        // Settling only queues promise reactions: no page code runs here.
        match value {
            Ok(v) => call(&w.resolve, &[v]),
            Err(e) => call(&w.reject, &[js_error(&e)]),
        }
    }

    fn reply(&self, id: RequestId) -> Option<Reply> {
        self.waiting
            .iter()
            .find(|(w, _)| *w == id.get())
            .map(|(_, w)| w.reply)
    }

    /// The outbox entry a publish request carries, if it is one.
    fn take_inflight(&mut self, id: RequestId) -> Option<String> {
        let i = self.inflight.iter().position(|(r, _)| *r == id.get())?;
        Some(self.inflight.swap_remove(i).1)
    }

    /// Writes to the cache; problems become `error` events.
    fn cache_store(&mut self, channel: &str, messages: &[CachedMessage]) {
        let Some(cache) = &self.cache else { return };
        let position = self.session.offset(channel);
        let problems = cache.store(channel, messages, position, js_sys::Date::now());
        for p in problems {
            self.emit(Topic::Error, vec![js_error(&ErrorInfo::cache(&p))]);
        }
    }

    pub(super) fn on_event(&mut self, event: Event) {
        if self.leader.is_some() {
            return self.leader_event(event);
        }
        match event {
            Event::Connected { target } => {
                self.emit(Topic::Connect, vec![target.into()]);
                self.flush_outbox();
            }
            Event::Disconnected { reason } => {
                self.emit(Topic::Disconnect, vec![reason.to_string().into()])
            }
            Event::ConnectFailed { target, reason } => {
                let info = ErrorInfo::connect_failed(&target, &reason);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
            Event::Subscribed {
                id,
                channel,
                offset,
                truncated,
                recovered,
                ..
            } => {
                self.cache_store(&channel, &[]);
                let v: JsValue = Object::new().into();
                set(&v, "channel", &channel.as_str().into());
                set(&v, "offset", &offset.to_string().into());
                set(&v, "truncated", &truncated.into());
                set(&v, "recovered", &recovered.into());
                self.sub_emit(&channel, SubTopic::Subscribed, vec![v.clone()]);
                if let Some(Reply::Subscribe) = self.reply(id) {
                    self.settle(id, Ok(v));
                }
            }
            Event::SubscriptionState {
                channel,
                state,
                error,
            } => {
                self.sub_emit(&channel, SubTopic::State, vec![state.as_str().into()]);
                if state == SubscriptionState::Unsubscribed {
                    let error = error.map(|e| js_error(&ErrorInfo::request(&e).on(&channel)));
                    if let Some(e) = &error {
                        self.sub_emit(&channel, SubTopic::Error, vec![e.clone()]);
                    }
                    self.sub_emit(
                        &channel,
                        SubTopic::Unsubscribed,
                        error.into_iter().collect(),
                    );
                }
            }
            Event::State { state } => self.emit(Topic::State, vec![state.as_str().into()]),
            Event::SubscriptionLost { channel, error } => {
                let info = match error {
                    RequestError::Undecodable { .. } => {
                        ErrorInfo::new(UNDECODABLE, format!("the subscription ended: {error}"))
                    }
                    _ => ErrorInfo::new(
                        SUBSCRIPTION_LOST,
                        format!("could not resume the subscription: {error}"),
                    ),
                }
                .on(channel);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
            Event::SubscribeRetrying {
                channel,
                error,
                attempt,
                retry_in,
            } => {
                // The subscription stays: one `error` event per failed attempt, with the
                // server's code.
                let mut info = ErrorInfo::request(&error);
                info.message = format!(
                    "subscribe failed (attempt {attempt}): {}; retrying in {} ms",
                    info.message,
                    // As u64: formatting a u128 costs the page its own code.
                    u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)
                );
                let e = js_error(&info.on(&channel));
                self.sub_emit(&channel, SubTopic::Error, vec![e.clone()]);
                self.emit(Topic::Error, vec![e]);
            }
            Event::Unsubscribed { id, .. } | Event::Pong { id } => {
                self.settle(id, Ok(JsValue::TRUE))
            }
            Event::Messages { channel, messages } => {
                let cached: Vec<CachedMessage> =
                    messages.iter().map(CachedMessage::from_message).collect();
                self.cache_store(&channel, &cached);
                if let Some(last) = messages.last() {
                    self.sub_advance(&channel, last.offset);
                }
                self.queue.push_back(Out::Messages(channel, cached));
            }
            Event::Gap { channel, from, to } => {
                let e = js_error(&ErrorInfo::gap(&channel, from, to));
                self.sub_advance(&channel, to);
                self.sub_emit(&channel, SubTopic::Gap, vec![e.clone()]);
                self.emit(Topic::Error, vec![e]);
            }
            Event::Published { id, offset, .. } => {
                if let Some(entry) = self.take_inflight(id) {
                    return self.finish(&entry, Ok(offset.to_string()));
                }
                self.settle(id, Ok(offset.to_string().into()))
            }
            Event::Acked { id, count } => self.settle(id, Ok((count as f64).into())),
            Event::History { id, channel, page } => {
                let Some(i) = self.waiting.iter().position(|(w, _)| *w == id.get()) else {
                    return;
                };
                let (_, w) = self.waiting.swap_remove(i);
                let v: JsValue = Object::new().into();
                set(&v, "channel", &channel.as_str().into());
                set(&v, "next", &page.next.to_string().into());
                set(&v, "more", &page.more.into());
                set(&v, "truncated", &page.truncated.into());
                if let Some(gap) = page.gap {
                    let g: JsValue = Object::new().into();
                    set(&g, "from", &gap.from.to_string().into());
                    set(&g, "to", &gap.to.to_string().into());
                    set(&v, "gap", &g);
                }
                let cached = page
                    .messages
                    .iter()
                    .map(CachedMessage::from_message)
                    .collect();
                self.queue
                    .push_back(Out::Page(w.resolve, v, channel, cached));
            }
            Event::RequestFailed { id, error } => {
                let Some(entry) = self.take_inflight(id) else {
                    return self.settle(id, Err(ErrorInfo::request(&error)));
                };
                // Refused for good by the server: drop it. Anything else (timeout, lost or
                // closed connection, a server that cannot store right now): keep it and send
                // it again, with the same key, on the next connection or in a second.
                let transient = match &error {
                    RequestError::Server { code, .. } => matches!(
                        code,
                        ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal
                    ),
                    _ => true,
                };
                if !transient {
                    self.finish(&entry, Err(ErrorInfo::request(&error)));
                } else if self.session.is_connected() {
                    self.retry_later();
                }
            }
            Event::Presence {
                id,
                channel,
                members,
            } => {
                // Through the frame's JSON: the relay to tabs links its encoder anyway.
                let frame = ServerFrame::PresenceMembers {
                    id: 0,
                    channel,
                    members,
                };
                let members = js_sys::Reflect::get(&frame_js(&frame), &"members".into());
                self.settle(id, Ok(members.unwrap_or(JsValue::UNDEFINED)))
            }
            Event::PresenceStats {
                id, clients, users, ..
            } => {
                let v: JsValue = Object::new().into();
                set(&v, "clients", &(clients as f64).into());
                set(&v, "users", &(users as f64).into());
                self.settle(id, Ok(v));
            }
            Event::PresenceChanged(event) => {
                let channel = JsValue::from(event.channel.as_str());
                let change = frame_js(&ServerFrame::PresenceEvent(event));
                let _ = js_sys::Reflect::delete_property(
                    change.unchecked_ref::<js_sys::Object>(),
                    &"type".into(),
                );
                self.emit(Topic::Presence, vec![channel, change]);
            }
            Event::ServerError { code, message } => {
                let info = ErrorInfo::new(code.as_str(), message);
                self.emit(Topic::Error, vec![js_error(&info)]);
            }
        }
    }
}

/// A server frame as the JS object of its JSON.
fn frame_js(frame: &ServerFrame) -> JsValue {
    js_sys::JSON::parse(&redistribute_protocol::lite::encode_server(frame)).unwrap_or(JsValue::NULL)
}
