//! Raw protocol v1 over WebSocket and small JSON helpers shared by the raw clients.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::SinkExt;
use redistribute_client::StreamId;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A raw WebSocket connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connect or a send may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a WebSocket to `url` within [`IO_TIMEOUT`].
pub async fn connect(url: &str) -> Result<Ws> {
    let (ws, _) = tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// Sends one JSON frame within [`IO_TIMEOUT`].
pub async fn send(ws: &mut Ws, frame: &Value) -> Result<()> {
    match tokio::time::timeout(IO_TIMEOUT, ws.send(WsMessage::text(frame.to_string()))).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("sending a frame timed out"),
    }
}

/// What one received WebSocket frame came to.
pub enum Incoming {
    /// A JSON text frame.
    Json(Value),
    /// A control or other frame to ignore.
    Other,
    /// The connection ended.
    Closed,
}

/// Classifies what `ws.next()` produced.
pub fn classify(
    item: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Incoming {
    match item {
        Some(Ok(WsMessage::Text(text))) => match serde_json::from_str(text.as_str()) {
            Ok(value) => Incoming::Json(value),
            Err(_) => Incoming::Other,
        },
        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => Incoming::Closed,
        Some(Ok(_)) => Incoming::Other,
    }
}

/// The offset in `value[field]`, if it is a concrete `<ms>-<seq>`.
pub fn offset(value: &Value, field: &str) -> Option<StreamId> {
    StreamId::parse(value.get(field)?.as_str()?).ok()
}

/// The `(publisher, sequence)` a chaos publisher put in a message's fields.
pub fn content(fields: &Value) -> Option<(String, u64)> {
    Some((
        fields.get("p")?.as_str()?.to_owned(),
        fields.get("n")?.as_u64()?,
    ))
}

/// The value of `type`.
pub fn frame_type(value: &Value) -> &str {
    value.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Percent-encodes a query value (channel names and offsets need little).
pub fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_offsets_content_and_escapes() {
        let v = json!({"offset": "17-3", "bad": "17", "fields": {"p": "ws-0", "n": 4}});
        assert_eq!(offset(&v, "offset"), Some(StreamId { ms: 17, seq: 3 }));
        assert_eq!(offset(&v, "bad"), None);
        assert_eq!(offset(&v, "missing"), None);
        assert_eq!(content(&v["fields"]), Some(("ws-0".into(), 4)));
        assert_eq!(content(&json!({"p": 1})), None);
        assert_eq!(query_escape("chaos.c0"), "chaos.c0");
        assert_eq!(query_escape("a:b $"), "a%3Ab%20%24");
    }
}
