//! The listeners: accept TCP connections, enforce the per-IP connection limit (per request for
//! clients behind a trusted proxy, see [`proxy`]), run the TLS handshake (when configured) and
//! the HTTP request head under the handshake timeout and size limit, and serve each connection
//! with hyper, WebSocket upgrades included. The admin listener serves the operator endpoints
//! in plain HTTP. On shutdown they stop accepting and let open connections finish gracefully.

pub(crate) mod proxy;
pub(crate) mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use crate::server::App;

/// How long open connections get to finish after shutdown began.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// State of the listeners: open connections per client IP and the TLS settings.
pub(crate) struct ListenerState {
    /// Open connections per client IP.
    pub connections: Arc<PerIp>,
    /// TLS settings, when the listener serves TLS.
    pub tls: Option<Arc<tls::TlsSetup>>,
}

/// Connection counts per client IP.
#[derive(Debug, Default)]
pub(crate) struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip` unless it already has `limit`.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }

    /// Open connections in total.
    pub(crate) fn total(&self) -> usize {
        self.counts.lock().values().sum()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What a listener serves, and so how it admits connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The public listener: per-IP limits, TLS when configured, trusted proxies.
    Public,
    /// The admin listener: plain HTTP, operator endpoints only, no per-IP limit.
    Admin,
}

/// How the requests of one connection are counted against the per-IP limit.
#[derive(Debug, Clone)]
enum Admission {
    /// A client connected directly: the connection holds one slot of its address.
    Direct(Arc<IpSlot>),
    /// A trusted proxy: each request holds a slot of the client address it names, for as long
    /// as the request, its streamed response or its WebSocket lasts. The proxy's own
    /// connections are not counted (it carries many clients, and may reuse a connection for
    /// several).
    Proxied,
    /// The admin listener: nothing is counted.
    Admin,
}

/// Serves `listener` until `app.core.shutdown` fires, then drains.
pub(crate) async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let router = crate::transport::router(app.clone());
    accept_loop(listener, app, router, Role::Public).await
}

/// Serves the operator endpoints ([`crate::transport::ops_router`]) on the admin listener,
/// in plain HTTP, until the public listener stops.
pub(crate) async fn serve_admin(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let router = crate::transport::ops_router(app.clone());
    accept_loop(listener, app, router, Role::Admin).await
}

async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    role: Role,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = app.drain.stopped.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admission = if role == Role::Admin {
            Admission::Admin
        } else if app.core.config.proxies.trusts(peer.ip()) {
            Admission::Proxied
        } else {
            let limit = app.core.config.limits.max_connections_per_ip;
            let Some(slot) = app.listener.connections.acquire(peer.ip(), limit) else {
                debug!(%peer, "connection limit per IP reached");
                tokio::spawn(refuse(stream));
                continue;
            };
            Admission::Direct(Arc::new(slot))
        };
        let router = router.clone();
        let app = app.clone();
        let tls = match role {
            Role::Public => app.listener.tls.clone(),
            Role::Admin => None,
        };
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let handshake = app.core.config.limits.handshake_timeout;
            match tls {
                None => serve_connection(stream, peer, admission, router, app).await,
                Some(tls) => {
                    match tokio::time::timeout(handshake, tls.acceptor().accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, admission, router, app).await
                        }
                        Ok(Err(err)) => debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        debug!("connections still open after the drain grace period");
    }
    Ok(())
}

/// The body of the answer to a client over its connection limit.
const TOO_MANY_CONNECTIONS: &str =
    r#"{"error":{"code":"rate_limited","message":"too many connections from this address"}}"#;

/// Tells a client over its connection limit so, without waiting on it.
async fn refuse(mut stream: TcpStream) {
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: \
         {}\r\nConnection: close\r\n\r\n{TOO_MANY_CONNECTIONS}",
        TOO_MANY_CONNECTIONS.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

/// The same answer to one request relayed by a trusted proxy (whose connection stays open: it
/// carries other clients too).
fn too_many_connections() -> Response<Body> {
    let mut response = Response::new(Body::from(TOO_MANY_CONNECTIONS));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves HTTP on one connection. Every request carries the client's address
/// ([`ConnectInfo`]: the peer, or the client a trusted proxy names) and its [`IpSlot`], so that
/// an upgraded connection (WebSocket), which outlives the request, keeps counting.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    admission: Admission,
    router: Router,
    app: Arc<App>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &app.core.config.limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_header_size(limits.max_header_bytes);
    let service = {
        let app = app.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let admitted = admit(&app, peer, &admission, &mut request);
            let proxied = matches!(admission, Admission::Proxied);
            let mut router = router.clone();
            async move {
                let response = match admitted {
                    Ok(slot) => {
                        let response = router.call(request).await.unwrap_or_else(|e| match e {});
                        match slot {
                            // A proxied request's slot lives as long as its response body.
                            Some(slot) if proxied => {
                                response.map(|body| Body::new(Counted { body, _slot: slot }))
                            }
                            _ => response,
                        }
                    }
                    Err(OverLimit) => too_many_connections(),
                };
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                debug!(%peer, %err, "connection ended with an error");
            }
        }
        () = app.core.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_GRACE, connection).await;
        }
    }
}

/// A proxied client is over its per-IP limit.
struct OverLimit;

/// Finds the request's client and its slot and attaches both to it.
fn admit(
    app: &App,
    peer: SocketAddr,
    admission: &Admission,
    request: &mut Request<Incoming>,
) -> Result<Option<Arc<IpSlot>>, OverLimit> {
    let (client, slot) = match admission {
        Admission::Admin => (peer, None),
        Admission::Direct(slot) => (peer, Some(slot.clone())),
        Admission::Proxied => {
            let client = app.core.config.proxies.client_addr(peer, request.headers());
            let limit = app.core.config.limits.max_connections_per_ip;
            let Some(slot) = app.listener.connections.acquire(client.ip(), limit) else {
                debug!(%client, proxy = %peer, "connection limit per IP reached");
                return Err(OverLimit);
            };
            (client, Some(Arc::new(slot)))
        }
    };
    request.extensions_mut().insert(ConnectInfo(client));
    if let Some(slot) = &slot {
        request.extensions_mut().insert(slot.clone());
    }
    Ok(slot)
}

/// A response body that holds a per-IP slot until it is finished or dropped.
struct Counted {
    body: Body,
    _slot: Arc<IpSlot>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_releases() {
        let per_ip = Arc::new(PerIp::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = per_ip.acquire(ip, 2).unwrap();
        let _b = per_ip.acquire(ip, 2).unwrap();
        assert!(per_ip.acquire(ip, 2).is_none());
        assert!(per_ip.acquire("127.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(per_ip.acquire(ip, 2).is_some());
        assert_eq!(per_ip.total(), 1, "only `_b` is still held");
    }
}
