//! Opening a WebSocket to one target: TCP, then TLS for `wss://`, then the HTTP upgrade.
//!
//! The TLS layer is done here rather than by tokio-tungstenite's TLS features so the client
//! owns its rustls configuration (provider, roots) and its error messages.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use crate::error::Error;

/// An open WebSocket, plain or over TLS.
pub(crate) type WsStream = WebSocketStream<Either<TcpStream, TlsStream<TcpStream>>>;

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL as given (what events and errors name).
    pub(crate) url: String,
    /// `wss://`.
    pub(crate) tls: bool,
    /// Host name or IP address, without IPv6 brackets.
    pub(crate) host: String,
    /// Port, defaulting to 80 / 443.
    pub(crate) port: u16,
}

impl Target {
    /// Parses `ws://host[:port]/path` or `wss://…`.
    pub(crate) fn parse(url: &str) -> Result<Target, Error> {
        let bad = |why: &str| Error::Config(format!("target {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL ({e})")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad("the scheme must be ws:// or wss://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            url: url.to_owned(),
            tls,
            host,
            port,
        })
    }
}

/// Opens a WebSocket to `target` within `timeout`. The error is a one-line description that
/// names the step that failed (TCP connect, TLS handshake, WebSocket upgrade).
pub(crate) async fn open(
    target: &Target,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<WsStream, String> {
    match tokio::time::timeout(timeout, open_inner(target, tls)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

async fn open_inner(target: &Target, tls: Option<Arc<ClientConfig>>) -> Result<WsStream, String> {
    let addr = (target.host.as_str(), target.port);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP connect to {}:{}: {e}", target.host, target.port))?;
    // Frames are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let stream = if target.tls {
        let config = tls.ok_or("wss:// target but TLS is not configured")?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| format!("TLS: invalid server name {:?}: {e}", target.host))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", target.host))?;
        Either::Right(tls)
    } else {
        Either::Left(tcp)
    };
    let request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("WebSocket request: {e}"))?;
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    Ok(ws)
}

/// The largest server frame (WebSocket message) the client accepts: 16 MiB. Every frame a
/// server sends is far smaller (frames are cut at about 1 MiB plus one maximum-size message);
/// the cap bounds what a misbehaving peer can make the client buffer. A larger frame ends the
/// connection with [`DisconnectReason::BadFrame`](crate::DisconnectReason::BadFrame) and the
/// client resumes after a growing backoff delay.
pub const MAX_FRAME_SIZE: usize = 16 << 20;

/// WebSocket settings: inbound frames up to [`MAX_FRAME_SIZE`].
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_SIZE))
        .max_frame_size(Some(MAX_FRAME_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "127.0.0.1", 8080));
        let t = Target::parse("wss://example.com/ws").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "example.com", 443));
        let t = Target::parse("ws://[::1]:9/ws").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        for bad in ["http://x/ws", "127.0.0.1:8080", "ws:///ws", ""] {
            let err = Target::parse(bad).unwrap_err();
            assert!(err.to_string().contains("target"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn names_the_failing_step() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
        let err = open(&target, None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.starts_with("TCP connect to 127.0.0.1:"), "{err}");
    }
}
