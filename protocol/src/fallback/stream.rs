//! The event stream: its response, its bytes, its events (the opening's resume token answers
//! the changes it was opened for), its end.

use super::url::error_body;
use super::SseEvent;
use super::{Fallback, Input};
use crate::frame::{ClientFrame, ServerFrame};
use crate::offset::{Offset, StreamId};
use crate::session::DisconnectReason;

impl Fallback {
    /// The response to stream `epoch` came with `status`; for a status other than 200 the
    /// driver reads the body and calls [`Fallback::stream_refused`] instead.
    pub fn stream_response(&mut self, epoch: u64, status: u16) {
        if epoch == self.epoch && !self.closed && status != 200 {
            self.close(DisconnectReason::transport(
                Some(status),
                format!("the event stream answered HTTP {status}"),
            ));
        }
    }

    /// Stream `epoch` was answered `status` with `body` (not 200): an error body answers the
    /// changes it was opened for; anything else ends the transport.
    pub fn stream_refused(&mut self, epoch: u64, status: u16, body: &str) {
        if epoch != self.epoch || self.closed || !self.opening {
            return;
        }
        let Some((code, message)) = error_body(body) else {
            return self.stream_response(epoch, status);
        };
        self.streaming = false;
        self.opening = false;
        let batch = std::mem::take(&mut self.batch);
        let subscribes = batch
            .iter()
            .filter(|f| matches!(f, ClientFrame::Subscribe { .. }))
            .count();
        if subscribes == 0 {
            // The channels that were flowing are refused now (a revoked or expired token).
            return self.close(DisconnectReason::Rejected { code, message });
        }
        if subscribes > 1 && !code.is_transient() {
            // Find out which of them the error is about.
            self.one_by_one = subscribes;
            let later = std::mem::replace(&mut self.queue, batch);
            self.queue.extend(later);
        } else {
            for frame in batch {
                match frame {
                    ClientFrame::Subscribe { id, .. } => self.refuse(id, code, &message),
                    other => self.answer_unsubscribe(&other),
                }
            }
        }
        self.live = std::mem::take(&mut self.before);
        if self.live.is_empty() {
            self.answer_pings();
            self.advance();
        } else {
            self.open(Vec::new());
        }
    }

    /// Bytes of stream `epoch`.
    pub fn stream_data(&mut self, epoch: u64, bytes: &[u8]) {
        if epoch != self.epoch || self.closed {
            return;
        }
        self.heard = true;
        self.answer_pings();
        let mut events = Vec::new();
        let read = self.reader.push(bytes, &mut events);
        for event in events {
            if self.closed {
                return;
            }
            self.event(event);
        }
        if let Err(e) = read {
            self.bad(e.message().to_owned());
        }
    }

    /// Stream `epoch` ended (the body ended, or reading it failed: `reason`).
    pub fn stream_ended(&mut self, epoch: u64, reason: &str) {
        if epoch == self.epoch && !self.closed {
            self.close(DisconnectReason::transport(None, reason));
        }
    }

    /// One event of the current stream.
    pub(super) fn event(&mut self, event: SseEvent) {
        if let Some(token) = &event.id {
            if !self.positions(token) {
                return self.bad("a resume token that does not fit the stream's channels".into());
            }
        }
        match event.event.as_str() {
            "gap" => {
                let Some(body) = event.data.strip_prefix('{') else {
                    return self.bad_event(&event.event);
                };
                let mut text = String::from("{\"type\":\"gap\",");
                text.push_str(body);
                if self.opening {
                    self.early_gaps.push(text);
                } else {
                    self.inputs.push(Input::Text(text));
                }
            }
            "truncated" if self.opening => {
                let channel = crate::json::parse(&event.data)
                    .ok()
                    .and_then(|v| v.get("channel").and_then(|c| c.as_str()).map(str::to_owned));
                match channel {
                    Some(channel) => self.truncated.push(channel),
                    None => self.bad_event(&event.event),
                }
            }
            "message" if event.data.is_empty() && self.opening && event.id.is_some() => {
                self.opened();
            }
            "message" if !self.opening => {
                let channel = event
                    .data
                    .strip_prefix("{\"channel\":\"")
                    .and_then(|rest| rest.split_once('"'))
                    .map(|(channel, _)| channel);
                let Some(channel) = channel else {
                    return self.bad_event(&event.event);
                };
                let mut text = String::from("{\"type\":\"messages\",\"channel\":\"");
                for part in [channel, "\",\"messages\":[", &event.data, "]}"] {
                    text.push_str(part);
                }
                self.inputs.push(Input::Text(text));
            }
            "error" => match error_body(&event.data) {
                Some((code, message)) => self.close(DisconnectReason::Rejected { code, message }),
                None => self.bad_event(&event.event),
            },
            other => self.bad_event(other),
        }
    }

    /// Takes a resume token: the position of every channel, in the stream's order. Returns
    /// whether it was one (one offset per channel).
    pub(super) fn positions(&mut self, token: &str) -> bool {
        let ids: Vec<StreamId> = token
            .split(',')
            .filter_map(|id| StreamId::parse(id).ok())
            .collect();
        if ids.len() != self.live.len() || ids.len() != token.split(',').count() {
            return false;
        }
        for (c, id) in self.live.iter_mut().zip(ids) {
            c.at = Offset::Id(id);
        }
        true
    }

    /// The opening's resume token came: answer the batch, then pass the opening's gaps.
    pub(super) fn opened(&mut self) {
        self.opening = false;
        let batch = std::mem::take(&mut self.batch);
        let new = |name: &str| {
            batch
                .iter()
                .any(|f| matches!(f, ClientFrame::Subscribe { channel, .. } if channel == name))
        };
        if self.truncated.iter().any(|c| !new(c)) {
            // A flowing channel's stream was recreated: the session must hear it on a
            // re-subscribe, which the next connection makes.
            return self.close(DisconnectReason::transport(
                None,
                "a channel's stream was recreated; resubscribing",
            ));
        }
        for frame in &batch {
            match frame {
                ClientFrame::Subscribe { id, channel, .. } => {
                    let offset = self.live.iter().find(|c| c.name == *channel).map(|c| c.at);
                    let Some(Offset::Id(offset)) = offset else {
                        continue;
                    };
                    let truncated = self.truncated.contains(channel);
                    self.frame(ServerFrame::Subscribed {
                        id: *id,
                        channel: channel.clone(),
                        offset,
                        truncated,
                    });
                }
                other => self.answer_unsubscribe(other),
            }
        }
        for gap in std::mem::take(&mut self.early_gaps) {
            self.inputs.push(Input::Text(gap));
        }
        self.advance();
    }

    /// An event the stream cannot have meant (unknown, malformed, or a message before the
    /// resume token).
    pub(super) fn bad_event(&mut self, name: &str) {
        self.bad(format!(
            "an unexpected or malformed \"{name}\" event on the event stream"
        ));
    }
}
