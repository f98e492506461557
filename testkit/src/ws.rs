//! A JSON WebSocket test client for wire protocol v1.
//!
//! Frames are plain [`serde_json::Value`]s so tests can send malformed or future frames as
//! easily as good ones. Replies are matched to requests by `id`; frames that arrive while a
//! request waits (`messages`, `gap`, connection-level `error`s) are kept in order in a buffer
//! that the `recv_*` methods read first, so nothing is lost.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::DEFAULT_TIMEOUT;

/// The error a `recv_*` method returns once the server has closed the connection, so a test
/// can `downcast_ref::<WsClosed>()` to check the close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsClosed {
    /// The close code (`1005` if the Close frame carried none), or `None` if the TCP connection
    /// ended without a Close frame.
    pub code: Option<u16>,
    /// The close reason text.
    pub reason: String,
}

impl fmt::Display for WsClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(
                f,
                "server closed the WebSocket with code {code} (reason {:?})",
                self.reason
            ),
            None => write!(
                f,
                "the WebSocket connection ended without a Close frame ({})",
                self.reason
            ),
        }
    }
}

impl std::error::Error for WsClosed {}

/// A WebSocket client that sends and receives JSON text frames.
///
/// Every receive has a timeout ([`DEFAULT_TIMEOUT`] unless told otherwise) whose error names
/// what was awaited.
#[derive(Debug)]
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    buffer: VecDeque<Value>,
    next_id: u64,
    timeout: Duration,
    closed: Option<WsClosed>,
}

impl WsClient {
    /// Opens a WebSocket to `url` (e.g. [`crate::ServerProcess::ws_url`]) within 10 s.
    pub async fn connect(url: &str) -> Result<WsClient> {
        let (ws, _response) =
            tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .with_context(|| {
                    format!("WebSocket connect to {url} timed out after {DEFAULT_TIMEOUT:?}")
                })?
                .with_context(|| format!("WebSocket connect to {url}"))?;
        Ok(WsClient {
            ws,
            buffer: VecDeque::new(),
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            closed: None,
        })
    }

    /// Changes the timeout of [`WsClient::recv_json`], [`WsClient::request`] and sends.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A fresh request id (1, 2, 3, …), the same counter [`WsClient::request`] uses for frames
    /// without an `id`.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `value` as one JSON text frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send(Message::text(value.to_string())).await
    }

    /// Sends `text` as-is in one text frame (for malformed or oversize frames).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send(Message::text(text)).await
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.send(Message::binary(bytes)).await
    }

    async fn send(&mut self, message: Message) -> Result<()> {
        tokio::time::timeout(self.timeout, self.ws.send(message))
            .await
            .with_context(|| format!("WebSocket send timed out after {:?}", self.timeout))?
            .context("WebSocket send")
    }

    /// The next frame: a buffered one if any, else the next from the socket, within the
    /// client's timeout. Fails with [`WsClosed`] once the server closed the connection.
    pub async fn recv_json(&mut self) -> Result<Value> {
        self.recv_json_timeout(self.timeout).await
    }

    /// Like [`WsClient::recv_json`] with an explicit timeout.
    pub async fn recv_json_timeout(&mut self, timeout: Duration) -> Result<Value> {
        if let Some(frame) = self.buffer.pop_front() {
            return Ok(frame);
        }
        self.read_frame(Instant::now() + timeout, "the next frame")
            .await
    }

    /// Receives until a frame satisfies `pred` and returns it; frames before it, buffered or
    /// new, are dropped. Fails after `timeout`.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        while let Some(frame) = self.buffer.pop_front() {
            if pred(&frame) {
                return Ok(frame);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self
                .read_frame(deadline, "a frame matching the predicate")
                .await?;
            if pred(&frame) {
                return Ok(frame);
            }
        }
    }

    /// Sends a request and returns the reply with the same `id`, whatever its `type` (success
    /// or `error`). A frame without an `id` gets [`WsClient::next_id`]. Frames that arrive
    /// meanwhile are buffered for the `recv_*` methods.
    pub async fn request(&mut self, mut frame: Value) -> Result<Value> {
        let object = frame
            .as_object_mut()
            .context("a request must be a JSON object")?;
        let id = match object.get("id") {
            Some(id) => id.as_u64().context("a request id must be a u64")?,
            None => {
                let id = self.next_id();
                object.insert("id".into(), json!(id));
                id
            }
        };
        self.send_json(&frame).await?;
        let deadline = Instant::now() + self.timeout;
        let what = format!("the reply to {frame}");
        loop {
            let reply = self.read_frame(deadline, &what).await?;
            if reply.get("id").and_then(Value::as_u64) == Some(id) {
                return Ok(reply);
            }
            self.buffer.push_back(reply);
        }
    }

    /// `subscribe` to `channel` from `offset` (`None`: the server's default, `$`) and return the
    /// `subscribed` reply; an `error` reply becomes `Err`.
    pub async fn subscribe(&mut self, channel: &str, offset: Option<&str>) -> Result<Value> {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(offset) = offset {
            frame["offset"] = json!(offset);
        }
        expect_type(self.request(frame).await?, "subscribed")
    }

    /// `publish` `fields` to `channel` and return the offset from the `published` reply; an
    /// `error` reply becomes `Err`.
    pub async fn publish(&mut self, channel: &str, fields: Value) -> Result<String> {
        let frame = json!({"type": "publish", "channel": channel, "fields": fields});
        let reply = expect_type(self.request(frame).await?, "published")?;
        reply["offset"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("published reply without an offset: {reply}"))
    }

    /// Collects exactly `count` messages (`{"offset","fields"}` objects) of `channel` from
    /// `messages` frames, however the server batched them, within `timeout`.
    ///
    /// Other frames stay buffered in order; messages beyond `count` from the last frame are put
    /// back as a `messages` frame at the front of the buffer.
    pub async fn recv_messages(
        &mut self,
        channel: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let mut got = Vec::new();
        let mut kept = VecDeque::new();
        while got.len() < count {
            let Some(frame) = self.buffer.pop_front() else {
                break;
            };
            take_messages(frame, channel, &mut got, &mut kept);
        }
        let deadline = Instant::now() + timeout;
        while got.len() < count {
            let what = format!(
                "{count} messages on {channel:?} (got {}; other frames: {kept:?})",
                got.len()
            );
            let frame = match self.read_frame(deadline, &what).await {
                Ok(frame) => frame,
                Err(e) => {
                    restore(&mut self.buffer, kept);
                    return Err(e);
                }
            };
            take_messages(frame, channel, &mut got, &mut kept);
        }
        // Order in the buffer: frames kept while collecting, then the rest of the last batch,
        // then whatever was buffered and not looked at.
        if got.len() > count {
            let rest = got.split_off(count);
            self.buffer
                .push_front(json!({"type": "messages", "channel": channel, "messages": rest}));
        }
        restore(&mut self.buffer, kept);
        Ok(got)
    }

    /// Succeeds if no frame arrives (and none is buffered) for `quiet`; useful to assert "no
    /// duplicate after the last expected message".
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<()> {
        if let Some(frame) = self.buffer.front() {
            bail!("expected silence, but a frame is buffered: {frame}");
        }
        match self.read_frame(Instant::now() + quiet, "silence").await {
            Ok(frame) => bail!("expected silence for {quiet:?}, got {frame}"),
            Err(e) if e.downcast_ref::<Elapsed>().is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for the server to close the connection, dropping any frames before
    /// the Close, and returns the close code (`1005` if the Close frame had none). Fails if the
    /// connection ends without a Close frame or stays open.
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<u16> {
        self.buffer.clear();
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline, "the server to close").await {
                Ok(_) => continue,
                Err(e) => match e.downcast_ref::<WsClosed>() {
                    Some(WsClosed {
                        code: Some(code), ..
                    }) => return Ok(*code),
                    _ => return Err(e),
                },
            }
        }
    }

    /// The server's Close frame, once one was received.
    pub fn closed(&self) -> Option<&WsClosed> {
        self.closed.as_ref()
    }

    /// Closes the connection normally (1000) and waits briefly for the server's Close.
    pub async fn close(mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        tokio::time::timeout(self.timeout, self.ws.close(None))
            .await
            .context("WebSocket close timed out")?
            .context("WebSocket close")?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return Ok(()),
                Err(_) => bail!("the server did not finish the close handshake in time"),
            }
        }
    }

    /// Reads the next JSON text frame from the socket (not the buffer) before `deadline`.
    async fn read_frame(&mut self, deadline: Instant, what: &str) -> Result<Value> {
        if let Some(closed) = &self.closed {
            return Err(closed.clone().into());
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(anyhow::Error::new(Elapsed)
                        .context(format!("timed out waiting for {what}")))
                }
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(self.ended(e.to_string())),
                None => return Err(self.ended("stream ended".into())),
            };
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).with_context(|| {
                        format!("server sent a text frame that is not JSON: {text}")
                    })
                }
                Message::Binary(bytes) => bail!(
                    "server sent an unexpected binary frame of {} bytes",
                    bytes.len()
                ),
                Message::Close(frame) => {
                    let closed = WsClosed {
                        code: Some(frame.as_ref().map_or(1005, |f| u16::from(f.code))),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    };
                    self.closed = Some(closed.clone());
                    return Err(closed.into());
                }
                // Pings are answered by tungstenite itself; pongs need nothing.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Records an abrupt end of the connection and returns it as an error.
    fn ended(&mut self, reason: String) -> anyhow::Error {
        let closed = WsClosed { code: None, reason };
        self.closed = Some(closed.clone());
        closed.into()
    }
}

/// Marker for "the wait timed out", so [`WsClient::expect_silence`] can tell it from failures.
#[derive(Debug)]
struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Moves the messages of a `messages` frame for `channel` into `got`; keeps any other frame.
fn take_messages(frame: Value, channel: &str, got: &mut Vec<Value>, kept: &mut VecDeque<Value>) {
    if frame["type"] == "messages" && frame["channel"] == channel {
        if let Some(messages) = frame["messages"].as_array() {
            got.extend(messages.iter().cloned());
            return;
        }
    }
    kept.push_back(frame);
}

/// Puts `kept` frames back at the front of `buffer`, in order.
fn restore(buffer: &mut VecDeque<Value>, kept: VecDeque<Value>) {
    for frame in kept.into_iter().rev() {
        buffer.push_front(frame);
    }
}

/// Returns `reply` if its `type` is `want`, else an error quoting it.
fn expect_type(reply: Value, want: &str) -> Result<Value> {
    if reply["type"] == want {
        Ok(reply)
    } else {
        bail!("expected a {want:?} reply, got {reply}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    /// A scripted peer: answers `ping` after an unsolicited frame, `subscribe` with two
    /// batches of messages, and `die` with close code 1009.
    async fn scripted_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                let id = frame["id"].clone();
                let replies = match frame["type"].as_str().unwrap() {
                    "ping" => vec![
                        json!({"type": "messages", "channel": "other", "messages": [{"offset": "9-0", "fields": {}}]}),
                        json!({"type": "pong", "id": id}),
                    ],
                    "subscribe" => vec![
                        json!({"type": "subscribed", "id": id, "channel": "c", "offset": "0-0", "truncated": false}),
                        json!({"type": "messages", "channel": "c", "messages": [
                            {"offset": "1-0", "fields": {"n": 1}}, {"offset": "2-0", "fields": {"n": 2}}]}),
                        json!({"type": "gap", "channel": "c", "from": "0-0", "to": "0-1"}),
                        json!({"type": "messages", "channel": "c", "messages": [
                            {"offset": "3-0", "fields": {"n": 3}}]}),
                    ],
                    "publish" => vec![
                        json!({"type": "error", "id": id, "code": "unavailable", "message": "down"}),
                    ],
                    _ => {
                        let close = CloseFrame {
                            code: CloseCode::Size,
                            reason: "too big".into(),
                        };
                        ws.send(Message::Close(Some(close))).await.unwrap();
                        continue;
                    }
                };
                for reply in replies {
                    ws.send(Message::text(reply.to_string())).await.unwrap();
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn matches_replies_and_keeps_other_frames() {
        let mut client = WsClient::connect(&scripted_server().await).await.unwrap();
        let pong = client.request(json!({"type": "ping"})).await.unwrap();
        assert_eq!(pong, json!({"type": "pong", "id": 1}));
        let kept = client.recv_json().await.unwrap();
        assert_eq!(kept["channel"], "other");

        let subscribed = client.subscribe("c", Some("0")).await.unwrap();
        assert_eq!(subscribed["offset"], "0-0");
        let first = client.recv_messages("c", 1, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(first, vec![json!({"offset": "1-0", "fields": {"n": 1}})]);
        let rest = client.recv_messages("c", 2, DEFAULT_TIMEOUT).await.unwrap();
        let offsets: Vec<&Value> = rest.iter().map(|m| &m["offset"]).collect();
        assert_eq!(offsets, [&json!("2-0"), &json!("3-0")]);
        let gap = client.recv_json().await.unwrap();
        assert_eq!(gap["type"], "gap", "the gap frame stays buffered");
        client
            .expect_silence(Duration::from_millis(100))
            .await
            .unwrap();

        let err = client.publish("c", json!({"k": "v"})).await.unwrap_err();
        assert!(err.to_string().contains("unavailable"), "{err}");
    }

    #[tokio::test]
    async fn timeouts_and_close_codes_are_errors() {
        let mut client = WsClient::connect(&scripted_server().await).await.unwrap();
        let err = client
            .recv_json_timeout(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("timed out waiting for the next frame"),
            "{err:#}"
        );
        let err = client
            .recv_until(|_| true, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");

        client.send_json(&json!({"type": "die"})).await.unwrap();
        assert_eq!(client.expect_close(DEFAULT_TIMEOUT).await.unwrap(), 1009);
        let err = client.recv_json().await.unwrap_err();
        let closed = err.downcast_ref::<WsClosed>().unwrap();
        assert_eq!(closed.code, Some(1009));
        assert!(err.to_string().contains("1009"), "{err}");
        assert_eq!(client.closed().unwrap().reason, "too big");
    }

    #[tokio::test]
    async fn connect_failure_names_the_url() {
        let url = format!("ws://127.0.0.1:{}/ws", crate::free_port());
        let err = WsClient::connect(&url).await.unwrap_err();
        assert!(err.to_string().contains(&url), "{err}");
    }
}
