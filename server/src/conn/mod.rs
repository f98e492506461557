//! One client connection speaking protocol v1: request handling, live delivery with batching,
//! and slow-consumer catch-up.
//!
//! A single task owns the socket and `select!`s over inbound frames, the connection's bounded
//! live queue (fed by the hub), lag notifications, one catch-up read at a time, and shutdown.
//! Everything a subscription needs to keep the history/live seam exact lives in
//! [`subscription`]; frame building in [`outbound`].

pub mod outbound;
pub mod subscription;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use redistribute_protocol::{
    decode_client, encode_server, ClientFrame, ErrorCode, Offset, ServerFrame, StreamId,
    PROTOCOL_VERSION,
};
use tokio::sync::Notify;
use tracing::{debug, info_span, warn, Instrument};

use crate::engine::{Batch, EngineError, PublishRequest, MAX_FIELDS};
use crate::error::RequestError;
use crate::hub::{LiveQueue, LiveQueueReceiver, Subscriber, SubscriberShared};
use crate::App;
use outbound::Outbound;
use subscription::{AfterPage, Subscription};

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

/// Most live batches taken from the queue before writing.
const DRAIN_MAX: usize = 64;

/// Publishes in flight on one connection, answered in request order. Each one's Redis command
/// is sent when the future is first polled, and `FuturesOrdered` first-polls in push order, so
/// a connection's publishes are stored in the order it sent them.
type PublishFuture = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Most publishes one connection may have in flight; beyond it inbound frames wait.
const MAX_PIPELINED_PUBLISHES: usize = 64;

type CatchUpFuture =
    Pin<Box<dyn Future<Output = (Arc<str>, StreamId, Result<Option<Batch>, EngineError>)> + Send>>;

/// Why the connection loop ended.
enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// Serves one upgraded WebSocket until it closes.
pub async fn serve_websocket(socket: WebSocket, app: Arc<App>, peer: SocketAddr) {
    let id = app.next_connection_id();
    let span = info_span!("conn", id, transport = "ws", %peer);
    async move {
        debug!("connected");
        let mut conn = Connection::new(app, id);
        let mut socket = socket;
        let end = conn.run(&mut socket).await;
        conn.release();
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
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

struct Connection {
    app: Arc<App>,
    id: u64,
    subs: HashMap<Arc<str>, Subscription>,
    queue_tx: LiveQueue,
    queue_rx: LiveQueueReceiver,
    wake: Arc<Notify>,
    catch_up: VecDeque<Arc<str>>,
    in_flight: Option<CatchUpFuture>,
    bad_frames: u32,
    outbound: Outbound,
    publishes: FuturesOrdered<PublishFuture>,
}

impl Connection {
    fn new(app: Arc<App>, id: u64) -> Self {
        let limits = &app.config.limits;
        let (queue_tx, queue_rx) = LiveQueue::new(limits.queue_batches, limits.queue_bytes);
        Connection {
            app,
            id,
            subs: HashMap::new(),
            queue_tx,
            queue_rx,
            wake: Arc::new(Notify::new()),
            catch_up: VecDeque::new(),
            in_flight: None,
            bad_frames: 0,
            outbound: Outbound::default(),
            publishes: FuturesOrdered::new(),
        }
    }

    async fn run(&mut self, socket: &mut WebSocket) -> End {
        let shutdown = self.app.shutdown.clone();
        loop {
            self.start_catch_up_read();
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(close_code::RESTART, "server restarting"),
                Some(reply) = self.publishes.next(), if !self.publishes.is_empty() => {
                    self.send(socket, &reply).await
                }
                msg = socket.recv(), if self.publishes.len() < MAX_PIPELINED_PUBLISHES => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(socket, text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        self.on_bad_frame(socket, None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames").await
                    }
                    Some(Ok(Message::Close(_))) | None => return End::Gone,
                    Some(Ok(_)) => Ok(()),
                    Some(Err(err)) => return classify_read_error(&err),
                },
                Some(batch) = self.queue_rx.recv() => self.on_live(socket, batch).await,
                _ = self.wake.notified() => {
                    self.on_lag();
                    Ok(())
                }
                (channel, after, result) = poll_in_flight(&mut self.in_flight) => {
                    self.in_flight = None;
                    self.on_catch_up_page(socket, channel, after, result).await
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Unsubscribes everything from the hub.
    fn release(&mut self) {
        for channel in self.subs.keys() {
            self.app.hub.unsubscribe(channel, self.id);
        }
        self.subs.clear();
    }

    async fn send(&mut self, socket: &mut WebSocket, frame: &ServerFrame) -> Result<(), End> {
        socket
            .send(Message::Text(Utf8Bytes::from(encode_server(frame))))
            .await
            .map_err(|_| End::Gone)
    }

    async fn send_error(
        &mut self,
        socket: &mut WebSocket,
        id: Option<u64>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), End> {
        let frame = ServerFrame::Error {
            id,
            code,
            message: message.into(),
        };
        self.send(socket, &frame).await
    }

    async fn on_bad_frame(
        &mut self,
        socket: &mut WebSocket,
        id: Option<u64>,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), End> {
        self.bad_frames += 1;
        self.send_error(socket, id, code, message).await?;
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
        match self.on_request(socket, frame).await {
            Ok(()) => {
                self.bad_frames = 0;
                Ok(())
            }
            Err(RequestError::Protocol { code, message }) => {
                if code == ErrorCode::BadRequest {
                    self.on_bad_frame(socket, Some(id), code, &message).await
                } else {
                    self.send_error(socket, Some(id), code, message).await
                }
            }
            Err(RequestError::Socket) => Err(End::Gone),
        }
    }

    async fn on_request(
        &mut self,
        socket: &mut WebSocket,
        frame: ClientFrame,
    ) -> Result<(), RequestError> {
        match frame {
            ClientFrame::Connect { id, .. } => {
                let reply = ServerFrame::Connected {
                    id,
                    client: format!("{:x}-{}", self.app.instance_id, self.id),
                    version: PROTOCOL_VERSION,
                };
                self.send(socket, &reply)
                    .await
                    .map_err(|_| RequestError::Socket)
            }
            ClientFrame::Ping { id } => self
                .send(socket, &ServerFrame::Pong { id })
                .await
                .map_err(|_| RequestError::Socket),
            ClientFrame::Subscribe {
                id,
                channel,
                offset,
                group,
                ..
            } => {
                if group.is_some() {
                    return Err(RequestError::bad_request(
                        "consumer-group subscriptions are not supported by this server version",
                    ));
                }
                self.subscribe(socket, id, channel, offset.unwrap_or_default())
                    .await
            }
            ClientFrame::Unsubscribe { id, channel } => {
                let Some((channel, _)) = self.subs.remove_entry(channel.as_str()) else {
                    return Err(RequestError::new(
                        ErrorCode::NotFound,
                        format!("not subscribed to {channel:?}"),
                    ));
                };
                self.app.hub.unsubscribe(&channel, self.id);
                let reply = ServerFrame::Unsubscribed {
                    id,
                    channel: channel.to_string(),
                };
                self.send(socket, &reply)
                    .await
                    .map_err(|_| RequestError::Socket)
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
                let engine = self.app.engine.clone();
                let timeout = self.app.config.limits.request_timeout;
                self.publishes.push_back(Box::pin(async move {
                    let request = PublishRequest {
                        channel: &channel,
                        fields: &fields,
                        maxlen,
                        idempotency_key: idempotency_key.as_deref(),
                    };
                    let result = match tokio::time::timeout(timeout, engine.publish(request)).await
                    {
                        Ok(result) => result.map_err(RequestError::from),
                        Err(_) => Err(RequestError::from(EngineError::Unavailable(
                            "publish timed out".into(),
                        ))),
                    };
                    match result {
                        Ok(offset) => ServerFrame::Published {
                            id,
                            channel,
                            offset,
                        },
                        Err(err) => err.into_frame(id),
                    }
                }));
                Ok(())
            }
            ClientFrame::Ack { .. } => Err(RequestError::bad_request(
                "consumer-group acknowledgements are not supported by this server version",
            )),
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        id: u64,
        channel: String,
        offset: Offset,
    ) -> Result<(), RequestError> {
        if self.subs.contains_key(channel.as_str()) {
            return Err(RequestError::bad_request(format!(
                "already subscribed to {channel:?}; unsubscribe first"
            )));
        }
        let limit = self.app.config.limits.max_subscriptions;
        if self.subs.len() >= limit {
            return Err(RequestError::bad_request(format!(
                "at most {limit} subscriptions per connection"
            )));
        }
        let channel: Arc<str> = Arc::from(channel);
        let shared = SubscriberShared::new(self.wake.clone());
        let mut ready = self.app.hub.subscribe(
            &channel,
            Subscriber {
                conn: self.id,
                shared: shared.clone(),
                queue: self.queue_tx.clone(),
            },
        );
        let timeout = self.app.config.limits.request_timeout;
        let start = async {
            ready
                .wait_for(|r| *r)
                .await
                .map_err(|_| EngineError::Unavailable("engine stopped".into()))?;
            self.app.engine.position(&channel).await
        };
        let position = match tokio::time::timeout(timeout, start).await {
            Ok(Ok(position)) => position,
            Ok(Err(err)) => {
                self.app.hub.unsubscribe(&channel, self.id);
                return Err(err.into());
            }
            Err(_) => {
                self.app.hub.unsubscribe(&channel, self.id);
                return Err(EngineError::Unavailable("subscribe timed out".into()).into());
            }
        };
        let (start, truncated, gap) = resolve_start(offset, position);
        self.subs
            .insert(channel.clone(), Subscription::new(shared, start));
        self.catch_up.push_back(channel.clone());
        let reply = ServerFrame::Subscribed {
            id,
            channel: channel.to_string(),
            offset: start,
            truncated,
        };
        self.send(socket, &reply)
            .await
            .map_err(|_| RequestError::Socket)?;
        if let Some((from, to)) = gap {
            let frame = ServerFrame::Gap {
                channel: channel.to_string(),
                from,
                to,
            };
            self.send(socket, &frame)
                .await
                .map_err(|_| RequestError::Socket)?;
        }
        Ok(())
    }

    async fn on_live(&mut self, socket: &mut WebSocket, first: Arc<Batch>) -> Result<(), End> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            taken += 1;
            if let Some(sub) = self.subs.get_mut(batch.channel()) {
                if let Some(from) = sub.accept_live(&batch) {
                    self.outbound.push(batch, from);
                }
            }
            if taken < DRAIN_MAX {
                next = self.queue_rx.try_recv();
            }
        }
        self.flush(socket).await
    }

    async fn flush(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        if self.outbound.is_empty() {
            return Ok(());
        }
        for frame in self.outbound.take_frames() {
            socket
                .feed(Message::Text(frame))
                .await
                .map_err(|_| End::Gone)?;
        }
        socket.flush().await.map_err(|_| End::Gone)
    }

    /// Subscriptions the hub marked lagging switch to catch-up.
    fn on_lag(&mut self) {
        for (channel, sub) in &mut self.subs {
            if sub.shared.lagging.load(Ordering::Acquire) && sub.start_catch_up() {
                self.catch_up.push_back(channel.clone());
            }
        }
    }

    fn start_catch_up_read(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        while let Some(channel) = self.catch_up.pop_front() {
            let Some(sub) = self.subs.get(&channel) else {
                continue;
            };
            let after = sub.last;
            let engine = self.app.engine.clone();
            let page = self.app.config.limits.catch_up_page;
            self.in_flight = Some(Box::pin(async move {
                let result = engine.read(&channel, after, page).await;
                (channel, after, result)
            }));
            return;
        }
    }

    async fn on_catch_up_page(
        &mut self,
        socket: &mut WebSocket,
        channel: Arc<str>,
        after: StreamId,
        result: Result<Option<Batch>, EngineError>,
    ) -> Result<(), End> {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return Ok(());
        };
        if sub.last != after || sub.is_live() {
            // Resubscribed meanwhile: this page answers an older question.
            if !sub.is_live() {
                self.catch_up.push_back(channel);
            }
            return Ok(());
        }
        let batch = match result {
            Ok(batch) => batch.map(Arc::new),
            Err(err) => {
                warn!(%channel, %err, "catch-up read failed; retrying");
                let engine = self.app.engine.clone();
                let page = self.app.config.limits.catch_up_page;
                self.in_flight = Some(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let result = engine.read(&channel, after, page).await;
                    (channel, after, result)
                }));
                return Ok(());
            }
        };
        let page = self.app.config.limits.catch_up_page;
        let (deliver, next) = sub.on_page(batch.as_deref(), page);
        if next == AfterPage::ReadAgain {
            self.catch_up.push_front(channel);
        }
        if let (Some(from), Some(batch)) = (deliver, batch) {
            self.outbound.push(batch, from);
            self.flush(socket).await?;
        }
        Ok(())
    }
}

/// Awaits the in-flight catch-up read; pending forever when there is none.
async fn poll_in_flight(
    in_flight: &mut Option<CatchUpFuture>,
) -> (Arc<str>, StreamId, Result<Option<Batch>, EngineError>) {
    match in_flight {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

/// Where a subscription starts: `(start, truncated, gap)`.
fn resolve_start(
    offset: Offset,
    position: crate::engine::Position,
) -> (StreamId, bool, Option<(StreamId, StreamId)>) {
    match offset {
        Offset::Latest => (position.last_id, false, None),
        Offset::Earliest => (StreamId::ZERO, false, None),
        Offset::Id(requested) => match position.trimmed_through {
            Some(trimmed) if requested < trimmed => (trimmed, true, Some((requested, trimmed))),
            _ if requested > position.last_id => {
                // Beyond anything this stream ever assigned: the stream was deleted and
                // recreated. Everything it holds is new to the client.
                (StreamId::ZERO, true, None)
            }
            _ => (requested, false, None),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Position;

    #[test]
    fn start_positions() {
        let pos = Position {
            last_id: StreamId::new(100, 0),
            trimmed_through: Some(StreamId::new(50, 0)),
        };
        assert_eq!(
            resolve_start(Offset::Latest, pos),
            (StreamId::new(100, 0), false, None)
        );
        assert_eq!(
            resolve_start(Offset::Earliest, pos),
            (StreamId::ZERO, false, None)
        );
        assert_eq!(
            resolve_start(Offset::Id(StreamId::new(50, 0)), pos),
            (StreamId::new(50, 0), false, None)
        );
        assert_eq!(
            resolve_start(Offset::Id(StreamId::new(10, 0)), pos),
            (
                StreamId::new(50, 0),
                true,
                Some((StreamId::new(10, 0), StreamId::new(50, 0)))
            )
        );
        assert_eq!(
            resolve_start(Offset::Id(StreamId::new(200, 0)), pos),
            (StreamId::ZERO, true, None)
        );
    }
}
