//! The listener: accepts TCP connections, enforces the per-IP connection limit, runs the TLS
//! handshake (when configured) and the HTTP request head under the handshake timeout, and
//! serves each connection with hyper, WebSocket upgrades included. On shutdown it stops
//! accepting and lets open connections finish gracefully.

pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use crate::App;

/// How long open connections get to finish after shutdown began.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Connection counts per client IP.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted on drop.
#[derive(Debug)]
pub struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip` unless it already has `limit`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
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
    pub fn total(&self) -> usize {
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

/// Serves `listener` until `app.shutdown` fires, then drains.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let router = crate::transport::router(app.clone());
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = app.stopped.cancelled() => break,
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
        let limit = app.config.limits.max_connections_per_ip;
        let Some(slot) = app.connections.acquire(peer.ip(), limit) else {
            debug!(%peer, "connection limit per IP reached");
            tokio::spawn(refuse(stream));
            continue;
        };
        let router = router.clone();
        let app = app.clone();
        let slot = Arc::new(slot);
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let handshake = app.config.limits.handshake_timeout;
            match app.tls.clone() {
                None => serve_connection(stream, peer, slot, router, app).await,
                Some(tls) => {
                    match tokio::time::timeout(handshake, tls.acceptor().accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, slot, router, app).await,
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

/// Tells a client over its connection limit so, without waiting on it.
async fn refuse(mut stream: TcpStream) {
    let response = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: 84\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from this address\"}}";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response)).await;
}

/// Serves HTTP on one connection. Every request carries the connection's [`IpSlot`] so that
/// an upgraded connection (WebSocket), which outlives this function, keeps counting.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    slot: Arc<IpSlot>,
    router: Router,
    app: Arc<App>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(slot.clone());
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|e| match e {})) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.limits.handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                debug!(%peer, %err, "connection ended with an error");
            }
        }
        () = app.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_GRACE, connection).await;
        }
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
