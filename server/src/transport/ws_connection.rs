//! One WebSocket connection speaking protocol v1.
//!
//! A single task owns the socket and `select!`s over shutdown, replies of pipelined publishes,
//! inbound frames and its [`Feed`] (live batches, catch-up pages). Frames for one channel that
//! pile up are merged into one `messages` frame ([`crate::feed::Outbound`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use redistribute_protocol::{
    decode_client, encode_server, ClientFrame, ErrorCode, Offset, ServerFrame, PROTOCOL_VERSION,
};
use tracing::{debug, info_span, Instrument};

use crate::auth::{Action, AuthContext, Claims};
use crate::engine::{EngineError, PublishRequest, MAX_FIELDS};
use crate::error::RequestError;
use crate::feed::Feed;
use crate::limits::TokenBucket;
use crate::App;

/// WebSocket close codes of protocol v1.
pub mod close_code {
    /// Policy violation (auth, repeated bad frames).
    pub const POLICY: u16 = 1008;
    /// A frame exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Server error.
    pub const INTERNAL: u16 = 1011;
    /// The server is restarting: resume on another target.
    pub const RESTART: u16 = 1012;
}

/// Publishes in flight on one connection, answered in request order. Each one's engine command
/// is issued when the future is first polled, and `FuturesOrdered` first-polls in push order,
/// so a connection's publishes are stored in the order it sent them.
type PublishFuture = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// How much longer than the engine's own timeout the transport waits for it.
pub const ENGINE_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Most publishes one connection may have in flight; beyond it inbound frames wait.
const MAX_PIPELINED_PUBLISHES: usize = 64;

/// Why the connection loop ended.
enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// Serves one upgraded WebSocket until it closes. `claims` come from an `Authorization`
/// header on the upgrade; `authenticated` says whether the connection may act before a
/// `connect` frame (auth off, or a valid header token).
pub async fn serve_websocket(
    mut socket: WebSocket,
    app: Arc<App>,
    peer: SocketAddr,
    claims: Option<Arc<Claims>>,
    authenticated: bool,
) {
    let now = Instant::now();
    let limits = &app.config.limits;
    let mut conn = Connection {
        feed: Feed::new(app.clone()),
        ctx: AuthContext {
            claims,
            peer: Some(peer),
            transport: "ws",
        },
        authenticated,
        publish_bucket: TokenBucket::new(limits.publish_rate, limits.publish_burst, now),
        subscribe_bucket: TokenBucket::new(limits.subscribe_rate, limits.subscribe_burst, now),
        missed_pongs: 0,
        app,
        bad_frames: 0,
        publishes: FuturesOrdered::new(),
    };
    let span = info_span!("conn", id = conn.feed.id(), transport = "ws", %peer);
    async move {
        debug!("connected");
        let connections = metrics::gauge!(crate::metrics::CONNECTIONS, "transport" => "ws");
        connections.increment(1.0);
        let end = conn.run(&mut socket).await;
        drop(conn);
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                socket.send(Message::Close(Some(frame))),
            )
            .await;
        }
        connections.decrement(1.0);
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

struct Connection {
    app: Arc<App>,
    feed: Feed,
    ctx: AuthContext,
    authenticated: bool,
    publish_bucket: TokenBucket,
    subscribe_bucket: TokenBucket,
    missed_pongs: u32,
    bad_frames: u32,
    publishes: FuturesOrdered<PublishFuture>,
}

impl Connection {
    async fn run(&mut self, socket: &mut WebSocket) -> End {
        let shutdown = self.app.shutdown.clone();
        let limits = &self.app.config.limits;
        let auth_deadline = tokio::time::Instant::now() + limits.handshake_timeout;
        let mut ping = tokio::time::interval(limits.ws_ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let expiry = self.token_expiry();
            let result = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.finish_publishes(socket).await;
                    return End::Close(close_code::RESTART, "server restarting");
                }
                () = tokio::time::sleep_until(auth_deadline), if !self.authenticated => {
                    return End::Close(close_code::POLICY, "authentication timeout");
                }
                () = sleep_until_opt(expiry) => {
                    let frame = ServerFrame::Error {
                        id: None,
                        code: ErrorCode::Unauthorized,
                        message: "token expired; reconnect with a new token".into(),
                    };
                    let _ = send(socket, &frame).await;
                    return End::Close(close_code::POLICY, "token expired");
                }
                _ = ping.tick() => {
                    if self.missed_pongs >= 2 {
                        debug!("two pings unanswered; dropping the connection");
                        return End::Gone;
                    }
                    self.missed_pongs += 1;
                    socket.send(Message::Ping(Default::default())).await.map_err(|_| End::Gone)
                }
                Some(reply) = self.publishes.next(), if !self.publishes.is_empty() => {
                    send(socket, &reply).await
                }
                msg = socket.recv(), if self.publishes.len() < MAX_PIPELINED_PUBLISHES => {
                    self.missed_pongs = 0;
                    match msg {
                        Some(Ok(Message::Text(text))) => self.on_text(socket, text.as_str()).await,
                        Some(Ok(Message::Binary(_))) => {
                            self.on_bad_frame(socket, None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames").await
                        }
                        Some(Ok(Message::Close(_))) | None => return End::Gone,
                        Some(Ok(_)) => Ok(()),
                        Some(Err(err)) => return classify_read_error(&err),
                    }
                }
                () = self.feed.ready() => self.flush(socket).await,
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Answers the publishes still in flight (bounded by the request timeout), so a drain never
    /// drops a publish the engine may be storing.
    async fn finish_publishes(&mut self, socket: &mut WebSocket) {
        let deadline = self.app.config.limits.request_timeout + ENGINE_TIMEOUT_MARGIN;
        let _ = tokio::time::timeout(deadline, async {
            while let Some(reply) = self.publishes.next().await {
                if send(socket, &reply).await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    /// When the current token expires, as a tokio instant.
    fn token_expiry(&self) -> Option<tokio::time::Instant> {
        let claims = self.ctx.claims.as_ref()?;
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = claims.expires_at.saturating_sub(now_unix);
        Some(tokio::time::Instant::now() + Duration::from_secs(left))
    }

    async fn flush(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let mut out = self.feed.take();
        for frame in out.take_frames() {
            socket
                .feed(Message::Text(frame))
                .await
                .map_err(|_| End::Gone)?;
        }
        socket.flush().await.map_err(|_| End::Gone)
    }

    async fn on_bad_frame(
        &mut self,
        socket: &mut WebSocket,
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
        send(socket, &frame).await?;
        if self.bad_frames >= self.app.config.limits.max_bad_frames {
            return Err(End::Close(close_code::POLICY, "too many bad frames"));
        }
        Ok(())
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), End> {
        let frame = match decode_client(text) {
            Ok(frame) => frame,
            Err(err) => {
                let message = err.error.to_string();
                return self
                    .on_bad_frame(socket, err.id, err.error.code(), &message)
                    .await;
            }
        };
        let id = frame.id();
        if let ClientFrame::Connect { token, .. } = &frame {
            return self.on_connect(socket, id, token.as_deref()).await;
        }
        if !self.authenticated {
            let frame = ServerFrame::Error {
                id: Some(id),
                code: ErrorCode::Unauthorized,
                message: "authenticate first: send a connect frame with a token".into(),
            };
            send(socket, &frame).await?;
            return Err(End::Close(close_code::POLICY, "unauthorized"));
        }
        match self.on_request(socket, frame).await {
            Ok(()) => {
                self.bad_frames = 0;
                Ok(())
            }
            Err(RequestError::Protocol { code, message }) if code == ErrorCode::BadRequest => {
                self.on_bad_frame(socket, Some(id), code, &message).await
            }
            Err(RequestError::Socket) => Err(End::Gone),
            Err(err) => send(socket, &err.into_frame(id)).await,
        }
    }

    /// `connect`: (re)authenticates with the token; a bad token closes the connection.
    async fn on_connect(
        &mut self,
        socket: &mut WebSocket,
        id: u64,
        token: Option<&str>,
    ) -> Result<(), End> {
        match self.app.authenticate(token) {
            Ok(claims) => {
                if claims.is_some() {
                    self.ctx.claims = claims;
                }
                self.authenticated = true;
                self.bad_frames = 0;
                let reply = ServerFrame::Connected {
                    id,
                    client: format!("{:x}-{}", self.app.instance_id, self.feed.id()),
                    version: PROTOCOL_VERSION,
                };
                send(socket, &reply).await
            }
            Err(err) => {
                send(socket, &err.into_frame(id)).await?;
                Err(End::Close(close_code::POLICY, "unauthorized"))
            }
        }
    }

    async fn on_request(
        &mut self,
        socket: &mut WebSocket,
        frame: ClientFrame,
    ) -> Result<(), RequestError> {
        let reply = match frame {
            // Answered by `on_connect` before requests are dispatched here.
            ClientFrame::Connect { .. } => return Ok(()),
            ClientFrame::Ping { id } => ServerFrame::Pong { id },
            ClientFrame::Subscribe {
                id,
                channel,
                offset,
                group,
                consumer,
            } => {
                if !self.subscribe_bucket.try_take(Instant::now()) {
                    return Err(RequestError::new(
                        ErrorCode::RateLimited,
                        "too many subscribes; slow down",
                    ));
                }
                self.app
                    .authorizer
                    .authorize(&self.ctx, Action::Subscribe { channel: &channel })?;
                let offset = offset.unwrap_or_default();
                if let (Some(group), Some(consumer)) = (group, consumer) {
                    let last = self
                        .feed
                        .subscribe_group(&channel, &group, &consumer, offset)
                        .await?;
                    // For a group, `offset` is the group's last delivered ID.
                    ServerFrame::Subscribed {
                        id,
                        channel,
                        offset: last,
                        truncated: false,
                    }
                } else {
                    return self.subscribe(socket, id, channel, offset).await;
                }
            }
            ClientFrame::Unsubscribe { id, channel } => {
                if !self.feed.unsubscribe(&channel) {
                    return Err(RequestError::new(
                        ErrorCode::NotFound,
                        format!("not subscribed to {channel:?}"),
                    ));
                }
                ServerFrame::Unsubscribed { id, channel }
            }
            ClientFrame::Publish {
                id,
                channel,
                fields,
                maxlen,
                idempotency_key,
            } => {
                if fields.len() > MAX_FIELDS {
                    return Err(RequestError::new(
                        ErrorCode::TooLarge,
                        format!("a message may have at most {MAX_FIELDS} fields"),
                    ));
                }
                if !self.publish_bucket.try_take(Instant::now()) {
                    return Err(RequestError::new(
                        ErrorCode::RateLimited,
                        "too many publishes; slow down",
                    ));
                }
                self.app.authorizer.authorize(
                    &self.ctx,
                    Action::Publish {
                        channel: &channel,
                        fields: &fields,
                    },
                )?;
                let app = self.app.clone();
                self.publishes.push_back(Box::pin(async move {
                    let request = PublishRequest {
                        channel: &channel,
                        fields: &fields,
                        maxlen,
                        idempotency_key: idempotency_key.as_deref(),
                    };
                    match publish(&app, request).await {
                        Ok(offset) => ServerFrame::Published {
                            id,
                            channel,
                            offset,
                        },
                        Err(err) => err.into_frame(id),
                    }
                }));
                return Ok(());
            }
            ClientFrame::Ack {
                id,
                channel,
                group,
                offsets,
            } => {
                // Acknowledging is part of consuming: allowed where subscribing is.
                self.app
                    .authorizer
                    .authorize(&self.ctx, Action::Subscribe { channel: &channel })?;
                let count = self.feed.ack(&channel, &group, &offsets).await?;
                ServerFrame::Acked { id, count }
            }
        };
        send(socket, &reply).await.map_err(|_| RequestError::Socket)
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        id: u64,
        channel: String,
        offset: Offset,
    ) -> Result<(), RequestError> {
        let start = self.feed.subscribe(&channel, offset).await?;
        let reply = ServerFrame::Subscribed {
            id,
            channel: channel.clone(),
            offset: start.after,
            truncated: start.truncated,
        };
        send(socket, &reply)
            .await
            .map_err(|_| RequestError::Socket)?;
        if let Some((from, to)) = start.gap {
            let gap = ServerFrame::Gap { channel, from, to };
            send(socket, &gap).await.map_err(|_| RequestError::Socket)?;
        }
        Ok(())
    }
}

/// Publishes through the engine, bounded by the request timeout.
pub async fn publish(
    app: &App,
    request: PublishRequest<'_>,
) -> Result<redistribute_protocol::StreamId, RequestError> {
    // The Redis engine enforces `request_timeout` itself, and a command it times out is never
    // sent later (fred skips timed-out commands when it replays its buffer after a reconnect).
    // This outer bound only guards against an engine that hangs; it must not fire first, or a
    // publish reported `unavailable` could still be written once Redis is back.
    let timeout = app.config.limits.request_timeout + ENGINE_TIMEOUT_MARGIN;
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, app.engine.publish(request)).await {
        Ok(result) => result.map_err(RequestError::from),
        Err(_) => Err(EngineError::Unavailable("publish timed out".into()).into()),
    };
    crate::metrics::engine_op("publish", started);
    if result.is_ok() {
        metrics::counter!(crate::metrics::PUBLISHED).increment(1);
    }
    result
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> Result<(), End> {
    socket
        .send(Message::Text(Utf8Bytes::from(encode_server(frame))))
        .await
        .map_err(|_| End::Gone)
}

fn classify_read_error(err: &axum::Error) -> End {
    let text = err.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
    {
        End::Close(close_code::TOO_BIG, "frame too large")
    } else {
        End::Gone
    }
}
