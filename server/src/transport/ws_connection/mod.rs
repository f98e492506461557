//! One WebSocket connection speaking protocol v1.
//!
//! A single task owns the socket and waits on shutdown, one timer (ping, authentication
//! deadline, token expiry), replies of pipelined publishes, inbound frames and its [`Feed`]
//! (live batches, catch-up pages). Frames for one channel that pile up are merged into one
//! `messages` frame ([`crate::feed::Outbound`]).
//!
//! Memory: every idle connection pays for its whole task future, so the waiting state is kept
//! small (one poll function over the things waited on, no future per branch) and the state
//! for handling a request lives in a boxed future only while the request is handled
//! ([`IDLE_FUTURE_MAX_BYTES`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use redistribute_protocol::{decode_client, encode_server, ClientFrame, ErrorCode, ServerFrame};
use tracing::{debug, info_span, Instrument, Span};

use crate::auth::{lifetime, AuthContext, Credential};
use crate::engine::SharedText;
use crate::error::RequestError;
use crate::feed::{Feed, Frame};
use crate::limits::TokenBucket;
use crate::listener::IpSlot;
use crate::request::ENGINE_TIMEOUT_MARGIN;
use crate::server::App;

mod requests;

/// WebSocket close codes of protocol v1.
pub(crate) mod close_code {
    /// A WebSocket protocol violation (RFC 6455): an unmasked client frame, a reserved opcode
    /// or reserved bit, a continuation without a start, a fragmented or oversized control
    /// frame.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A text frame (or close reason) that is not UTF-8.
    pub(crate) const INVALID_DATA: u16 = 1007;
    /// Policy violation (auth, repeated bad frames).
    pub(crate) const POLICY: u16 = 1008;
    /// A frame exceeded the size limit.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// Server error.
    #[allow(dead_code)] // listed with the protocol's other close codes; not sent today
    pub(crate) const INTERNAL: u16 = 1011;
    /// The server is restarting: resume on another target.
    pub(crate) const RESTART: u16 = 1012;
}

/// Publishes in flight on one connection, answered in request order. Each one's engine command
/// is issued when the future is first polled, and `FuturesOrdered` first-polls in push order,
/// so a connection's publishes are stored in the order it sent them.
type PublishFuture = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Most publishes one connection may have in flight; beyond it inbound frames wait.
const MAX_PIPELINED_PUBLISHES: usize = 64;

/// What woke a waiting connection.
enum Event {
    /// The server is draining.
    Shutdown,
    /// The ping, authentication or token-expiry timer.
    Timer,
    /// A pipelined publish was answered.
    Reply(ServerFrame),
    /// A frame from the client, or the end of the stream.
    Inbound(Option<Result<Message, axum::Error>>),
    /// The feed has something to deliver.
    Deliver,
}

/// A connection's publishing state, set up with its first publish.
struct Publishing {
    bucket: TokenBucket,
    /// Publishes in flight, answered in order.
    replies: FuturesOrdered<PublishFuture>,
}

/// Why the connection loop ended.
enum End {
    /// The socket failed, or the peer went away without a close frame.
    Gone,
    /// The peer sent a close frame: the reply tungstenite queued (the same code) is written
    /// before the socket is dropped, completing the closing handshake.
    PeerClosed,
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// Serves one upgraded WebSocket until it closes. `caller` is who the upgrade authenticated
/// (a token in an `Authorization` header, or [`Credential::Missing`] until a `connect` frame
/// brings one, or open when authentication is off); `slot` is held (counting against the
/// per-IP limit) until the connection ends.
///
/// This is a plain function returning the connection's future, built so that the socket and
/// the connection state are stored in it once: an `async fn` keeps its arguments and the
/// locals they are moved into side by side, and every idle connection pays for its future's
/// whole size ([`IDLE_FUTURE_MAX_BYTES`]).
pub(crate) fn serve_websocket(
    socket: WebSocket,
    app: Arc<App>,
    caller: AuthContext,
    slot: Option<Arc<IpSlot>>,
) -> impl Future<Output = ()> + Send + 'static {
    let now = Instant::now();
    let limits = &app.core.config.limits;
    let expiry = lifetime::deadline(caller.claims.as_deref());
    let peer = caller.peer;
    let mut conn = Connection {
        socket,
        feed: Feed::new(app.core.clone(), "ws"),
        authenticated: caller.credential != Credential::Missing,
        ctx: caller,
        expiry,
        subscribe_bucket: TokenBucket::new(limits.subscribe_rate, limits.subscribe_burst, now),
        missed_pongs: 0,
        bad_frames: 0,
        publishing: None,
        _slot: slot,
        app,
    };
    async move {
        let id = conn.feed.id();
        debug!(conn = id, transport = "ws", peer = ?peer, "connected");
        // Not holding the gauge handle: each handle is an allocation of its own.
        metrics::gauge!(crate::metrics::CONNECTIONS, "transport" => "ws").increment(1.0);
        let end = conn.run().await;
        // Subscriptions (and publishes not answered) end before the goodbye, which may take a
        // while.
        conn.feed.clear();
        conn.publishing = None;
        match end {
            End::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let close = conn.socket.send(Message::Close(Some(frame)));
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), close)).await;
            }
            End::PeerClosed => {
                let reply = std::future::poll_fn(|cx| conn.socket.poll_flush_unpin(cx));
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), reply)).await;
            }
            End::Gone => {}
        }
        metrics::gauge!(crate::metrics::CONNECTIONS, "transport" => "ws").decrement(1.0);
        debug!(conn = id, "disconnected");
    }
}

/// Upper bound on the size of a WebSocket connection's future (the socket, the connection
/// state and what it waits with), checked by a test: tokio allocates the whole future for
/// every connection, so this is most of an idle connection's memory. Handling a request is
/// boxed for its duration instead of being part of every connection's future.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const IDLE_FUTURE_MAX_BYTES: usize = 1376;

struct Connection {
    app: Arc<App>,
    socket: WebSocket,
    feed: Feed,
    ctx: AuthContext,
    authenticated: bool,
    /// When the current token expires.
    expiry: Option<tokio::time::Instant>,
    subscribe_bucket: TokenBucket,
    missed_pongs: u32,
    bad_frames: u32,
    /// Created with the first publish (most connections only subscribe).
    publishing: Option<Box<Publishing>>,
    _slot: Option<Arc<IpSlot>>,
}

impl Connection {
    async fn run(&mut self) -> End {
        let shutdown = self.app.core.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let limits = &self.app.core.config.limits;
        let ping_interval = limits.ws_ping_interval;
        let now = tokio::time::Instant::now();
        let auth_deadline = now + limits.handshake_timeout;
        let mut ping_due = now + ping_interval;
        // One timer for the ping, the authentication deadline and the token's expiry, reset
        // only when the earliest of them changes.
        let timer = tokio::time::sleep_until(ping_due);
        tokio::pin!(timer);
        let mut fired = false;
        let mut inbound_first = false;
        loop {
            let mut deadline = ping_due;
            if !self.authenticated {
                deadline = deadline.min(auth_deadline);
            }
            if let Some(expiry) = self.expiry {
                deadline = deadline.min(expiry);
            }
            if fired || timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
                fired = false;
            }
            inbound_first = !inbound_first;
            let event = std::future::poll_fn(|cx| {
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Shutdown);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                let mut in_flight = 0;
                if let Some(publishes) = self
                    .publishing
                    .as_mut()
                    .map(|p| &mut p.replies)
                    .filter(|p| !p.is_empty())
                {
                    if let Poll::Ready(Some(reply)) = publishes.poll_next_unpin(cx) {
                        return Poll::Ready(Event::Reply(reply));
                    }
                    in_flight = publishes.len();
                }
                // Beyond the pipelining limit, inbound frames wait in the socket.
                let may_read = in_flight < MAX_PIPELINED_PUBLISHES;
                // Alternating, so that neither a busy feed nor a chatty client starves the other.
                if inbound_first && may_read {
                    if let Poll::Ready(msg) = self.socket.poll_next_unpin(cx) {
                        return Poll::Ready(Event::Inbound(msg));
                    }
                }
                if self.feed.poll_ready(cx).is_ready() {
                    return Poll::Ready(Event::Deliver);
                }
                if !inbound_first && may_read {
                    if let Poll::Ready(msg) = self.socket.poll_next_unpin(cx) {
                        return Poll::Ready(Event::Inbound(msg));
                    }
                }
                Poll::Pending
            })
            .await;
            let result = match event {
                Event::Shutdown => {
                    Box::pin(self.finish_publishes()).await;
                    return End::Close(close_code::RESTART, "server restarting");
                }
                Event::Timer => {
                    fired = true;
                    let now = tokio::time::Instant::now();
                    if !self.authenticated && now >= auth_deadline {
                        return End::Close(close_code::POLICY, "authentication timeout");
                    }
                    if self.expiry.is_some_and(|expiry| now >= expiry) {
                        let frame = ServerFrame::Error {
                            id: None,
                            code: ErrorCode::Unauthorized,
                            message: lifetime::EXPIRED_MESSAGE.into(),
                        };
                        let _ = Box::pin(send(&mut self.socket, &frame)).await;
                        return End::Close(close_code::POLICY, "token expired");
                    }
                    if now >= ping_due {
                        ping_due = now + ping_interval;
                        if self.missed_pongs >= 2 {
                            let conn = self.feed.id();
                            debug!(conn, "two pings unanswered; dropping the connection");
                            return End::Gone;
                        }
                        self.missed_pongs += 1;
                        Box::pin(self.socket.send(Message::Ping(Default::default())))
                            .await
                            .map_err(|_| End::Gone)
                    } else {
                        Ok(())
                    }
                }
                Event::Reply(reply) => Box::pin(send(&mut self.socket, &reply)).await,
                Event::Inbound(msg) => {
                    self.missed_pongs = 0;
                    match msg {
                        // Boxed: handling a request takes far more state than waiting does.
                        Some(Ok(Message::Text(text))) => {
                            let span = self.span();
                            Box::pin(self.on_text(text.as_str()).instrument(span)).await
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let message = "binary frames are not supported; send JSON text frames";
                            Box::pin(self.on_bad_frame(None, ErrorCode::BadRequest, message)).await
                        }
                        Some(Ok(Message::Close(_))) => return End::PeerClosed,
                        None => return End::Gone,
                        Some(Ok(_)) => Ok(()),
                        Some(Err(err)) => return classify_read_error(&err),
                    }
                }
                Event::Deliver => self.flush().await,
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// The span of one request's handling (created per request: a span that lived as long as
    /// the connection would be a few hundred bytes of every idle connection).
    fn span(&self) -> Span {
        let id = self.feed.id();
        match self.ctx.peer {
            Some(peer) => info_span!("conn", id, transport = "ws", %peer),
            None => info_span!("conn", id, transport = "ws"),
        }
    }

    /// Answers the publishes still in flight (bounded by the request timeout), so a drain never
    /// drops a publish the engine may be storing.
    async fn finish_publishes(&mut self) {
        let Some(publishes) = self.publishing.as_mut().map(|p| &mut p.replies) else {
            return;
        };
        let deadline = self.app.core.config.limits.request_timeout + ENGINE_TIMEOUT_MARGIN;
        let socket = &mut self.socket;
        let _ = tokio::time::timeout(deadline, async {
            while let Some(reply) = publishes.next().await {
                if send(socket, &reply).await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        send(&mut self.socket, frame).await
    }

    /// Sends a frame already encoded (a `history_page`, written from the stored entries).
    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .map_err(|_| End::Gone)
    }

    /// Writes what the feed has ready. Drives the sink by hand (what `SinkExt::feed` and
    /// `flush` do) because their futures would add to every connection's idle size.
    async fn flush(&mut self) -> Result<(), End> {
        let mut out = self.feed.take();
        for frame in out.take_frames() {
            std::future::poll_fn(|cx| self.socket.poll_ready_unpin(cx))
                .await
                .map_err(|_| End::Gone)?;
            self.socket
                .start_send_unpin(Message::Text(websocket_text(frame)))
                .map_err(|_| End::Gone)?;
        }
        std::future::poll_fn(|cx| self.socket.poll_flush_unpin(cx))
            .await
            .map_err(|_| End::Gone)
    }

    async fn on_bad_frame(
        &mut self,
        id: Option<u64>,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), End> {
        self.bad_frames += 1;
        metrics::counter!(crate::metrics::ERRORS, "code" => code.as_str()).increment(1);
        let frame = ServerFrame::Error {
            id,
            code,
            message: message.to_owned(),
        };
        self.send(&frame).await?;
        if self.bad_frames >= self.app.core.config.limits.max_bad_frames {
            return Err(End::Close(close_code::POLICY, "too many bad frames"));
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let frame = match decode_client(text) {
            Ok(frame) => frame,
            Err(err) => {
                let message = err.error.to_string();
                return self.on_bad_frame(err.id, err.error.code(), &message).await;
            }
        };
        let id = frame.id();
        if let ClientFrame::Connect { token, .. } = &frame {
            return self.on_connect(id, token.as_deref()).await;
        }
        if !self.authenticated {
            let frame = ServerFrame::Error {
                id: Some(id),
                code: ErrorCode::Unauthorized,
                message: "authenticate first: send a connect frame with a token".into(),
            };
            self.send(&frame).await?;
            return Err(End::Close(close_code::POLICY, "unauthorized"));
        }
        match self.on_request(frame).await {
            Ok(()) => {
                self.bad_frames = 0;
                Ok(())
            }
            Err(RequestError::Protocol { code, message }) if code == ErrorCode::BadRequest => {
                self.on_bad_frame(Some(id), code, &message).await
            }
            Err(RequestError::Socket) => Err(End::Gone),
            Err(err) => self.send(&err.into_frame(id)).await,
        }
    }
}

/// A frame as a WebSocket text payload. A batch's shared frame is converted once per batch
/// ([`SharedText::wire`]: validated in place, no copy) and every other subscriber gets a clone
/// of that (a reference count); a frame made for this connection is moved in.
pub fn websocket_text(frame: Frame) -> Utf8Bytes {
    match frame {
        Frame::Shared(batch) => batch.frame().wire(|text: &SharedText| {
            // Always valid (the text is a `str`); the copy is only a fallback that cannot fail.
            Utf8Bytes::try_from(text.bytes()).unwrap_or_else(|_| Utf8Bytes::from(text.as_str()))
        }),
        Frame::Owned(text) => Utf8Bytes::from(text),
    }
}

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> Result<(), End> {
    socket
        .send(Message::Text(Utf8Bytes::from(encode_server(frame))))
        .await
        .map_err(|_| End::Gone)
}

/// How to end a connection whose socket failed with `err`: RFC 6455 asks for a close frame
/// naming a protocol violation (1002), invalid UTF-8 (1007) or a too large frame (1009); I/O
/// errors and resets just end it.
fn classify_read_error(err: &axum::Error) -> End {
    use std::error::Error as _;
    use tungstenite::error::ProtocolError as P;
    use tungstenite::Error as E;
    let Some(err) = err.source().and_then(|e| e.downcast_ref::<E>()) else {
        return End::Gone;
    };
    let protocol = |reason| End::Close(close_code::PROTOCOL, reason);
    match err {
        E::Capacity(_) => End::Close(close_code::TOO_BIG, "frame too large"),
        E::Utf8(_) => End::Close(close_code::INVALID_DATA, "invalid UTF-8"),
        E::Protocol(P::UnmaskedFrameFromClient) => protocol("unmasked client frame"),
        E::Protocol(P::NonZeroReservedBits) => protocol("reserved bits set"),
        E::Protocol(P::UnknownDataFrameType(_) | P::UnknownControlFrameType(_)) => {
            protocol("reserved opcode")
        }
        E::Protocol(P::InvalidOpcode(_)) => protocol("invalid opcode"),
        E::Protocol(P::UnexpectedContinueFrame) => protocol("continuation without a start"),
        E::Protocol(P::ExpectedFragment(_)) => protocol("expected a continuation frame"),
        E::Protocol(P::FragmentedControlFrame) => protocol("fragmented control frame"),
        E::Protocol(P::ControlFrameTooBig) => protocol("control frame too big"),
        E::Protocol(P::InvalidCloseSequence) => protocol("invalid close frame"),
        E::Protocol(P::ResetWithoutClosingHandshake) => End::Gone,
        E::Protocol(_) => protocol("protocol error"),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, F: Future>(_: &impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn code_for(err: tungstenite::Error) -> Option<u16> {
        match classify_read_error(&axum::Error::new(err)) {
            End::Close(code, _) => Some(code),
            End::Gone | End::PeerClosed => None,
        }
    }

    #[test]
    fn read_errors_choose_the_rfc_close_code() {
        use tungstenite::error::{CapacityError, ProtocolError as P};
        use tungstenite::Error as E;
        let too_long = CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        };
        assert_eq!(code_for(E::Capacity(too_long)), Some(1009));
        assert_eq!(code_for(E::Utf8("\u{fffd}".into())), Some(1007));
        for p in [
            P::UnmaskedFrameFromClient,
            P::NonZeroReservedBits,
            P::UnknownDataFrameType(3),
            P::UnknownControlFrameType(11),
            P::UnexpectedContinueFrame,
            P::FragmentedControlFrame,
            P::ControlFrameTooBig,
            P::InvalidCloseSequence,
        ] {
            assert_eq!(code_for(E::Protocol(p)), Some(1002));
        }
        assert_eq!(code_for(E::Protocol(P::ResetWithoutClosingHandshake)), None);
        assert_eq!(code_for(E::Io(std::io::ErrorKind::BrokenPipe.into())), None);
        assert_eq!(code_for(E::ConnectionClosed), None);
    }

    #[test]
    fn an_idle_connection_future_stays_small() {
        type Args = (WebSocket, Arc<App>, AuthContext, Option<Arc<IpSlot>>);
        let size = future_size(&|(socket, app, caller, slot): Args| {
            serve_websocket(socket, app, caller, slot)
        });
        eprintln!("serve_websocket future: {size} bytes");
        assert!(
            size <= IDLE_FUTURE_MAX_BYTES,
            "the connection future grew to {size} bytes (bound {IDLE_FUTURE_MAX_BYTES}): box \
             what only a request needs instead of keeping it in every idle connection"
        );
    }
}
