//! The SSE fallback: the protocol's frames carried over `GET /sse` and `POST /publish`, for
//! clients that cannot open a WebSocket (a proxy that refuses the upgrade).
//!
//! A [`Fallback`] stands where the WebSocket would stand between a [`Session`] and the server,
//! so the session's logic (positions, gaps, resume, backoff, retries) runs unchanged. Like
//! the session it is sans-IO: the driver hands it the session's frames ([`Fallback::send`]),
//! carries out its HTTP operations ([`Fallback::take_ops`]: open or abort the event stream,
//! post a publish), reports their outcomes (`stream_*`, `post_*`) and feeds what
//! [`Fallback::take_inputs`] returns into the session.
//!
//! The mapping, frame by frame:
//!
//! * `connect` (the token handshake, or a token refresh): the token is kept for the HTTP
//!   requests (`Authorization: Bearer`) and `connected` is answered at once; a refresh re-opens
//!   the stream with the new token from the current positions.
//! * `subscribe` / `unsubscribe`: the stream is re-opened for the new channel list, each
//!   channel from its exact position (`offset=` per channel: the last offset the stream
//!   delivered, or the subscribe's offset for a new channel), so nothing is lost or repeated.
//!   Changes that arrive while a stream opens wait for it and then go in one re-open. The
//!   opening's resume token (the `id:` of the first event) answers the changes in order:
//!   `subscribed` with the channel's starting position (and `truncated` from an
//!   `event: truncated`), `unsubscribed`; the opening's gaps follow as `gap` frames. A
//!   refused opening (`4xx`/`5xx` with an error body) answers its subscribes with that error
//!   (when several were refused with a permanent error they are tried again one by one, so
//!   the error reaches the channel it belongs to) and re-opens the rest.
//! * `publish`: `POST /publish` with the frame as body; `{"offset"}` becomes `published`, an
//!   error body an `error` reply.
//! * `ping`: `pong` once the stream has sent something (a message or the server's heartbeat
//!   comment) since the last `ping`, at once when no stream is open.
//! * consumer-group `subscribe` and `ack`: refused with `bad_request` (consumer groups need
//!   the WebSocket).
//!
//! The stream's events become frames: `message` → `messages`, `gap` → `gap`, `error` (the
//! token expired) ends the transport. Anything the stream cannot explain (a failed request,
//! a dropped stream, a malformed resume token, an unknown event, a reply that is not the
//! server's JSON) ends the transport ([`Input::Closed`]): the session reconnects after its
//! backoff and re-subscribes every channel from its position, exactly as after a dropped
//! WebSocket.
//!
//! Requests this module does not know are answered `bad_request`; a new request frame gets
//! its own HTTP route here (a `GET` whose JSON answer is turned into the reply frame).
//!
//! [`Session`]: crate::session::Session

mod sse;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::frame::{ClientFrame, ServerFrame, PROTOCOL_VERSION};
use crate::offset::{Offset, StreamId};
use crate::session::DisconnectReason;
use crate::ErrorCode;
pub use sse::{SseError, SseEvent, SseReader, MAX_LINE};

/// An HTTP operation for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Abort the current event stream (if any), then open `url` as stream `epoch`: report its
    /// response with [`Fallback::stream_response`] and its bytes with
    /// [`Fallback::stream_data`].
    Open {
        /// Names this stream in the outcome calls.
        epoch: u64,
        /// The `GET /sse?…` URL.
        url: String,
        /// The token for `Authorization: Bearer`, if any.
        token: Option<String>,
    },
    /// Abort the current event stream; nothing more is reported of it.
    Abort,
    /// `POST` the frame, encoded as JSON, to `url`: report the outcome with
    /// [`Fallback::post_response`] or [`Fallback::post_failed`].
    Post {
        /// The connection it belongs to (outcomes of an earlier one are ignored).
        conn: u64,
        /// The request id.
        id: u64,
        /// The `POST /publish` URL.
        url: String,
        /// The token for `Authorization: Bearer`, if any.
        token: Option<String>,
        /// The `publish` frame: its JSON is the body.
        frame: ClientFrame,
    },
}

/// Something for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A frame: [`Session::handle_frame`](crate::session::Session::handle_frame).
    Frame(ServerFrame),
    /// A frame's text, to decode:
    /// [`Session::handle_text`](crate::session::Session::handle_text).
    Text(String),
    /// The transport is gone:
    /// [`Session::handle_transport_closed`](crate::session::Session::handle_transport_closed).
    Closed(DisconnectReason),
}

/// A channel of the stream and where it stands.
#[derive(Debug, Clone, PartialEq)]
struct Channel {
    name: String,
    /// Where the next opening starts it: its last position, or a new subscribe's offset.
    at: Offset,
}

/// The HTTP side of one virtual connection. See the [module documentation](self).
#[derive(Debug)]
pub struct Fallback {
    /// `http(s)://host[:port]/prefix/`: the routes are relative to it.
    base: String,
    token: Option<String>,
    /// The channels of the stream (being opened or open), in the order of its URL.
    live: Vec<Channel>,
    /// While a stream opens: the channels of the stream before it, minus the unsubscribed.
    before: Vec<Channel>,
    /// The `subscribe`/`unsubscribe` frames the opening stream answers, in order.
    batch: Vec<ClientFrame>,
    /// Frames waiting for the opening stream.
    queue: VecDeque<ClientFrame>,
    /// Whether a stream is open or opening.
    streaming: bool,
    /// Whether the current stream has not sent its resume token yet.
    opening: bool,
    /// The current stream.
    epoch: u64,
    /// The current connection.
    conn: u64,
    reader: SseReader,
    /// The opening's gaps (as frame texts) and truncated channels, until its resume token.
    early_gaps: Vec<String>,
    truncated: Vec<String>,
    /// Channels of publishes in flight, by request id.
    posts: Vec<(u64, String)>,
    /// How many of the next subscribes go one per opening.
    one_by_one: usize,
    /// The transport ended; nothing happens until [`Fallback::reset`].
    closed: bool,
    /// Whether the stream sent bytes since the last `ping` was answered.
    heard: bool,
    /// `ping`s waiting for the stream to send something.
    pings: Vec<u64>,
    /// Outputs, in order (a `Vec` drained whole: less code in the browser than a queue).
    ops: Vec<Op>,
    inputs: Vec<Input>,
}

impl Fallback {
    /// The fallback for a WebSocket `target` (`ws://host/ws` → `http://host/sse` and
    /// `http://host/publish`; `wss` → `https`).
    pub fn new(target: &str) -> Fallback {
        Fallback {
            base: http_base(target),
            token: None,
            live: Vec::new(),
            before: Vec::new(),
            batch: Vec::new(),
            queue: VecDeque::new(),
            streaming: false,
            opening: false,
            epoch: 0,
            conn: 0,
            reader: SseReader::default(),
            early_gaps: Vec::new(),
            truncated: Vec::new(),
            posts: Vec::new(),
            one_by_one: 0,
            closed: false,
            heard: false,
            pings: Vec::new(),
            ops: Vec::new(),
            inputs: Vec::new(),
        }
    }

    /// Starts a new virtual connection (the session asked for one, or closed the last):
    /// forgets the last one's channels, requests and outcomes, and aborts its stream.
    pub fn reset(&mut self) {
        if self.streaming {
            self.ops.push(Op::Abort);
        }
        let base = std::mem::take(&mut self.base);
        let (epoch, conn) = (self.epoch + 1, self.conn + 1);
        let ops = std::mem::take(&mut self.ops);
        *self = Fallback::new("");
        self.base = base;
        self.ops = ops;
        self.epoch = epoch;
        self.conn = conn;
    }

    /// Starts a new virtual connection ([`Fallback::reset`]) to another WebSocket target.
    pub fn retarget(&mut self, target: &str) {
        self.reset();
        self.base = http_base(target);
    }

    /// The current connection (what [`Op::Post`] names; it changes with every reset).
    pub fn conn(&self) -> u64 {
        self.conn
    }

    /// The routes' base, `http(s)://host[:port]/prefix/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether stream `epoch` is the current one (a driver stops reading any other).
    pub fn is_current(&self, epoch: u64) -> bool {
        epoch == self.epoch && self.streaming && !self.closed
    }

    /// The HTTP operations to carry out, in order. Subscription changes sent since the last
    /// call go in one opening (unless one is opening already).
    pub fn take_ops(&mut self) -> Vec<Op> {
        if !self.queue.is_empty() {
            self.advance();
        }
        std::mem::take(&mut self.ops)
    }

    /// The inputs for the session, in order.
    pub fn take_inputs(&mut self) -> Vec<Input> {
        std::mem::take(&mut self.inputs)
    }

    /// A frame from the session.
    pub fn send(&mut self, frame: ClientFrame) {
        if self.closed {
            return;
        }
        match frame {
            ClientFrame::Connect { id, token } => {
                let refresh = self.token.is_some() && token != self.token;
                self.token = token;
                self.frame(ServerFrame::Connected {
                    id,
                    client: String::new(),
                    version: PROTOCOL_VERSION,
                });
                if refresh && self.streaming && !self.opening {
                    self.open(Vec::new());
                }
            }
            ClientFrame::Ping { id } => {
                // A liveness probe: answered at once if the stream sent anything (a message
                // or a heartbeat) since the last one, else when it next does; a stream that
                // died silently leaves it unanswered, and the session gives the transport up.
                if self.streaming && !self.heard {
                    self.pings.push(id);
                } else {
                    self.heard = false;
                    self.frame(ServerFrame::Pong { id });
                }
            }
            ClientFrame::Publish {
                id, ref channel, ..
            } => {
                self.posts.push((id, channel.clone()));
                self.ops.push(Op::Post {
                    conn: self.conn,
                    id,
                    url: format!("{}publish", self.base),
                    token: self.token.clone(),
                    frame,
                });
            }
            ClientFrame::Subscribe {
                id, group: Some(_), ..
            }
            | ClientFrame::Ack { id, .. } => self.refuse(
                id,
                ErrorCode::BadRequest,
                "consumer groups need a WebSocket; this client is on the SSE fallback",
            ),
            ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. } => {
                self.queue.push_back(frame);
            }
        }
    }

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
            for frame in batch.into_iter().rev() {
                self.queue.push_front(frame);
            }
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
            self.bad(e.to_string());
        }
    }

    /// Stream `epoch` ended (the body ended, or reading it failed: `reason`).
    pub fn stream_ended(&mut self, epoch: u64, reason: &str) {
        if epoch == self.epoch && !self.closed {
            self.close(DisconnectReason::transport(None, reason));
        }
    }

    /// The publish `id` of connection `conn` was answered `status` with `body`.
    pub fn post_response(&mut self, conn: u64, id: u64, status: u16, body: &str) {
        if conn != self.conn || self.closed {
            return;
        }
        let Some(i) = self.posts.iter().position(|(p, _)| *p == id) else {
            return;
        };
        let (_, channel) = self.posts.swap_remove(i);
        let offset = crate::json::parse(body).ok().and_then(|v| {
            let offset = v.get("offset")?.as_str()?;
            StreamId::parse(offset).ok()
        });
        match (status, offset, error_body(body)) {
            (200, Some(offset), _) => self.frame(ServerFrame::Published {
                id,
                channel,
                offset,
            }),
            (_, _, Some((code, message))) if status != 200 => self.refuse(id, code, &message),
            _ => self.close(DisconnectReason::transport(
                Some(status),
                format!("POST /publish answered HTTP {status} without the server's JSON"),
            )),
        }
    }

    /// The publish `id` of connection `conn` got no answer (`reason`): the transport is
    /// lost, so the session sends it again, with its idempotency key, on the next one.
    pub fn post_failed(&mut self, conn: u64, id: u64, reason: &str) {
        if conn == self.conn && self.posts.iter().any(|(p, _)| *p == id) {
            self.close(DisconnectReason::transport(None, reason));
        }
    }

    /// Opens the next stream for the queued changes, unless one is opening.
    fn advance(&mut self) {
        if self.opening || self.closed {
            return;
        }
        let mut batch: Vec<ClientFrame> = Vec::new();
        let mut next = self.live.clone();
        let mut before = self.live.clone();
        while let Some(frame) = self.queue.front() {
            let channel = match frame {
                ClientFrame::Subscribe { channel, .. }
                | ClientFrame::Unsubscribe { channel, .. } => channel,
                _ => unreachable!("only subscribe and unsubscribe are queued"),
            };
            let seen = batch.iter().any(|f| match f {
                ClientFrame::Subscribe { channel: c, .. }
                | ClientFrame::Unsubscribe { channel: c, .. } => c == channel,
                _ => false,
            });
            let single = self.one_by_one > 0
                && matches!(frame, ClientFrame::Subscribe { .. })
                && batch
                    .iter()
                    .any(|f| matches!(f, ClientFrame::Subscribe { .. }));
            if seen || single {
                break;
            }
            let Some(frame) = self.queue.pop_front() else {
                break;
            };
            match &frame {
                ClientFrame::Subscribe {
                    channel, offset, ..
                } => {
                    next.retain(|c| c.name != *channel);
                    before.retain(|c| c.name != *channel);
                    next.push(Channel {
                        name: channel.clone(),
                        at: offset.unwrap_or_default(),
                    });
                    self.one_by_one = self.one_by_one.saturating_sub(1);
                }
                ClientFrame::Unsubscribe { channel, .. } => {
                    next.retain(|c| c.name != *channel);
                    before.retain(|c| c.name != *channel);
                }
                _ => {}
            }
            batch.push(frame);
        }
        if batch.is_empty() {
            return;
        }
        let changes_stream = next != self.live;
        if next.is_empty() || !changes_stream {
            // Nothing to open (every channel unsubscribed, or unsubscribes of channels the
            // stream does not carry): answer now.
            if next.is_empty() && self.streaming {
                self.ops.push(Op::Abort);
                self.streaming = false;
                self.epoch += 1;
                self.answer_pings();
            }
            self.live = next;
            for frame in &batch {
                self.answer_unsubscribe(frame);
            }
            return self.advance();
        }
        self.live = next;
        self.before = before;
        self.open(batch);
    }

    /// Opens a stream for [`Fallback::live`], answering `batch` once it opens.
    fn open(&mut self, batch: Vec<ClientFrame>) {
        self.epoch += 1;
        self.streaming = true;
        self.opening = true;
        self.batch = batch;
        self.reader = SseReader::default();
        self.early_gaps.clear();
        self.truncated.clear();
        let mut url = format!("{}sse?", self.base);
        for (i, c) in self.live.iter().enumerate() {
            if i > 0 {
                url.push('&');
            }
            url.push_str("channel=");
            escape(&mut url, &c.name);
            url.push_str("&offset=");
            escape(&mut url, &c.at.to_string());
        }
        self.ops.push(Op::Open {
            epoch: self.epoch,
            url,
            token: self.token.clone(),
        });
    }

    /// One event of the current stream.
    fn event(&mut self, event: SseEvent) {
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
                let text = format!("{{\"type\":\"gap\",{body}");
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
                let text = format!(
                    "{{\"type\":\"messages\",\"channel\":\"{channel}\",\"messages\":[{}]}}",
                    event.data
                );
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
    fn positions(&mut self, token: &str) -> bool {
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
    fn opened(&mut self) {
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

    /// Answers an `unsubscribe` whose channel is no longer on the stream.
    fn answer_unsubscribe(&mut self, frame: &ClientFrame) {
        if let ClientFrame::Unsubscribe { id, channel } = frame {
            self.frame(ServerFrame::Unsubscribed {
                id: *id,
                channel: channel.clone(),
            });
        }
    }

    /// Answers the `ping`s that waited for the stream.
    fn answer_pings(&mut self) {
        for id in std::mem::take(&mut self.pings) {
            self.frame(ServerFrame::Pong { id });
        }
    }

    fn frame(&mut self, frame: ServerFrame) {
        self.inputs.push(Input::Frame(frame));
    }

    /// Answers request `id` with an error.
    fn refuse(&mut self, id: u64, code: ErrorCode, message: &str) {
        self.frame(ServerFrame::Error {
            id: Some(id),
            code,
            message: message.to_owned(),
        });
    }

    /// An event the stream cannot have meant (unknown, malformed, or a message before the
    /// resume token).
    fn bad_event(&mut self, name: &str) {
        self.bad(format!(
            "an unexpected or malformed \"{name}\" event on the event stream"
        ));
    }

    /// The stream sent something it cannot have meant: end the transport.
    fn bad(&mut self, reason: String) {
        self.close(DisconnectReason::BadFrame { reason });
    }

    /// Ends the transport: the session hears it once, and reconnects.
    fn close(&mut self, reason: DisconnectReason) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.streaming {
            self.ops.push(Op::Abort);
            self.streaming = false;
        }
        self.epoch += 1;
        self.inputs.push(Input::Closed(reason));
    }
}

/// The code and message of an error body `{"error":{"code","message"}}`.
fn error_body(body: &str) -> Option<(ErrorCode, String)> {
    let value = crate::json::parse(body).ok()?;
    let error = value.get("error")?;
    let code = ErrorCode::from_wire(error.get("code")?.as_str()?)?;
    let message = error.get("message")?.as_str()?.to_owned();
    Some((code, message))
}

/// `http(s)://authority/prefix/` of a WebSocket target: its scheme mapped, its last path
/// segment (and query) dropped.
pub fn http_base(target: &str) -> String {
    // Byte scans, not `str` patterns: the browser client ships this code.
    let (mut base, rest) = match target.strip_prefix("ws") {
        Some(rest) if rest.starts_with("s://") => (String::from("https"), &rest[1..]),
        Some(rest) if rest.starts_with("://") => (String::from("http"), rest),
        _ => (String::new(), target),
    };
    let end = rest
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let rest = &rest[..end];
    // The authority ends at the first `/` after `://`.
    let path = rest
        .get(3..)
        .and_then(|r| r.bytes().position(|b| b == b'/'));
    let keep = match path {
        Some(_) => rest.bytes().rposition(|b| b == b'/').map_or(end, |i| i + 1),
        None => end,
    };
    base.push_str(&rest[..keep]);
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

/// Appends `value` to a query, percent-encoding every byte but `A-Z a-z 0-9 - _ .`.
fn escape(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}
