//! Opening client connections: WebSocket over a TCP socket bound to one of several loopback
//! source addresses (so tens of thousands of connections do not exhaust the ephemeral ports of
//! one address pair, nor count against one per-IP limit), and a minimal HTTP/1.1 client for
//! `POST /api/publish` and `GET /metrics`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Raises this process' soft open-file limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// One server instance.
struct Target {
    url: String,
    addr: SocketAddr,
    host: String,
}

/// Opens connections to one server, or spreads them round-robin over several instances.
pub struct Dialer {
    targets: Vec<Target>,
    sources: Vec<IpAddr>,
    next: AtomicUsize,
    next_target: AtomicUsize,
    handshakes: Semaphore,
}

impl Dialer {
    /// A dialer for `urls` (`ws://host:port/path`, one per instance), binding client sockets
    /// round-robin to `source_ips` loopback addresses 127.0.0.1, 127.0.0.2, … when the servers
    /// are on loopback, with at most `concurrent` handshakes in flight.
    pub fn new(urls: &[String], source_ips: usize, concurrent: usize) -> Result<Dialer> {
        let mut targets = Vec::new();
        for url in urls {
            let rest = url
                .strip_prefix("ws://")
                .context("only ws:// URLs are supported")?;
            let host = rest.split('/').next().unwrap_or(rest).to_owned();
            let addr = host
                .to_socket_addrs()?
                .next()
                .with_context(|| format!("cannot resolve {host}"))?;
            targets.push(Target {
                url: url.to_owned(),
                addr,
                host,
            });
        }
        let first = targets.first().context("no --url given")?;
        let sources = if first.addr.ip().is_loopback() && first.addr.is_ipv4() {
            (1..=source_ips.clamp(1, 250))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Dialer {
            targets,
            sources,
            next: AtomicUsize::new(0),
            next_target: AtomicUsize::new(0),
            handshakes: Semaphore::new(concurrent.max(1)),
        })
    }

    /// The next instance, round-robin.
    fn target(&self) -> &Target {
        &self.targets[self.next_target.fetch_add(1, Ordering::Relaxed) % self.targets.len()]
    }

    async fn tcp(&self, target: &Target) -> Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if !self.sources.is_empty() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            socket.bind(SocketAddr::new(self.sources[i], 0))?;
        }
        let stream = socket.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens a WebSocket (4 KiB read buffer: many connections live in this process).
    pub async fn ws(&self) -> Result<Ws> {
        let _permit = self.handshakes.acquire().await?;
        let target = self.target();
        let stream = self.tcp(target).await?;
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config)),
        )
        .await
        .context("WebSocket handshake timed out")??;
        Ok(ws)
    }

    /// A keep-alive HTTP/1.1 connection to the server (the next instance, round-robin).
    pub async fn http(&self) -> Result<Http> {
        let target = self.target();
        Ok(Http {
            stream: BufReader::new(self.tcp(target).await?),
            host: target.host.clone(),
        })
    }
}

/// A minimal keep-alive HTTP/1.1 client (Content-Length bodies only).
pub struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    /// Sends one request and returns `(status, body)`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
            self.host,
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("bad status line")?
            .parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not supported");
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8(body)?))
    }
}

/// Sums the values of a Prometheus counter (all label sets) from `GET /metrics`.
pub async fn scrape_counter(dialer: &Dialer, name: &str) -> Result<f64> {
    let mut http = dialer.http().await?;
    let (status, body) = http
        .request("GET", "/metrics", "Connection: close\r\n", "")
        .await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
