//! A WebSocket spoken byte by byte: a real upgrade handshake on a plain TCP socket, then frames
//! built by hand, so tests can send what no well-behaved client library would (unmasked frames,
//! reserved opcodes, invalid UTF-8) and read the server's close frame.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opcodes of RFC 6455 §5.2.
pub mod op {
    /// Continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
}

/// The FIN bit of the first header byte.
pub const FIN: u8 = 0x80;

/// An upgraded connection.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A frame the server sent.
#[derive(Debug)]
pub struct ServerFrame {
    /// The first header byte (FIN, RSV and opcode).
    pub head: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Upgrades a new connection to `addr` on `/ws`, within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<RawWs> {
        tokio::time::timeout(timeout, Self::upgrade(addr))
            .await
            .context("WebSocket upgrade timed out")?
    }

    async fn upgrade(addr: SocketAddr) -> Result<RawWs> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let head_end = super::read_http_head(&mut stream, &mut buf).await?;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        buf.drain(..head_end);
        Ok(RawWs { stream, buf })
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Writes one masked frame with header byte `head` (FIN | RSV | opcode).
    pub async fn send(&mut self, head: u8, payload: &[u8]) -> Result<()> {
        self.send_raw(&frame(head, payload, true)).await
    }

    /// The next frame from the server, or `None` when the connection ends, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<ServerFrame>> {
        tokio::time::timeout(timeout, self.read_frame())
            .await
            .context("no frame from the server in time")?
    }

    /// Reads frames until the close frame and returns its code and reason; fails if the
    /// connection ends without one.
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<(u16, String)> {
        loop {
            let Some(frame) = self.recv(timeout).await? else {
                bail!("the connection ended without a close frame");
            };
            if frame.head & 0x0f == op::CLOSE {
                ensure!(frame.payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                let reason = String::from_utf8(frame.payload[2..].to_vec())?;
                return Ok((code, reason));
            }
        }
    }

    async fn fill(&mut self, n: usize) -> Result<bool> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(false),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    async fn read_frame(&mut self) -> Result<Option<ServerFrame>> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let head = self.buf[0];
        ensure!(self.buf[1] & 0x80 == 0, "the server masked a frame");
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.buf[2..10]);
                (usize::try_from(u64::from_be_bytes(len))?, 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.fill(header + len).await? {
            return Ok(None);
        }
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Ok(Some(ServerFrame { head, payload }))
    }
}

/// One client frame: header byte `head`, the payload, masked (with a fixed key) or not.
pub fn frame(head: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![head];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}
