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
//! A new request frame needs an arm in [`Fallback::send`] (the match is exhaustive, so it
//! cannot be forgotten): either an HTTP request like `publish`'s (an [`Op`] the driver
//! carries out, whose answer becomes the reply frame, with the connection's token) or a
//! `bad_request` refusal like `ack`'s.
//!
//! [`Session`]: crate::session::Session

mod changes;
mod sse;
mod stream;
#[cfg(test)]
mod tests;
mod url;

use crate::frame::{ClientFrame, ServerFrame, PROTOCOL_VERSION};
use crate::offset::{Offset, StreamId};
use crate::session::DisconnectReason;
use crate::ErrorCode;
pub use sse::{SseError, SseEvent, SseReader, MAX_LINE};
use url::error_body;
pub use url::http_base;

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
    queue: Vec<ClientFrame>,
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
            queue: Vec::new(),
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

    /// The URL of `route` (relative to the base).
    pub fn route(&self, route: &str) -> String {
        // Concatenation, not `format!`: less code in the browser client.
        let mut url = self.base.clone();
        url.push_str(route);
        url
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
                    url: self.route("publish"),
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
            ClientFrame::Subscribe {
                id,
                rewind: Some(_),
                ..
            }
            | ClientFrame::History { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::PresenceStats { id, .. } => self.refuse(
                id,
                ErrorCode::BadRequest,
                "this request needs a WebSocket; this client is on the SSE fallback",
            ),
            ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. } => {
                self.queue.push(frame);
            }
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

    /// Answers an `unsubscribe` whose channel is no longer on the stream.
    pub(super) fn answer_unsubscribe(&mut self, frame: &ClientFrame) {
        if let ClientFrame::Unsubscribe { id, channel } = frame {
            self.frame(ServerFrame::Unsubscribed {
                id: *id,
                channel: channel.clone(),
            });
        }
    }

    /// Answers the `ping`s that waited for the stream.
    pub(super) fn answer_pings(&mut self) {
        for id in std::mem::take(&mut self.pings) {
            self.frame(ServerFrame::Pong { id });
        }
    }

    pub(super) fn frame(&mut self, frame: ServerFrame) {
        self.inputs.push(Input::Frame(frame));
    }

    /// Answers request `id` with an error.
    pub(super) fn refuse(&mut self, id: u64, code: ErrorCode, message: &str) {
        self.frame(ServerFrame::Error {
            id: Some(id),
            code,
            message: message.to_owned(),
        });
    }

    /// The stream sent something it cannot have meant: end the transport.
    pub(super) fn bad(&mut self, reason: String) {
        self.close(DisconnectReason::BadFrame { reason });
    }

    /// Ends the transport: the session hears it once, and reconnects.
    pub(super) fn close(&mut self, reason: DisconnectReason) {
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
