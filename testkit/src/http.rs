//! A minimal HTTP/1.1 GET over a plain TCP stream, for health checks and the HTTP transports.
//!
//! One request per connection (`Connection: close`); bodies framed by `Content-Length`,
//! `Transfer-Encoding: chunked` or the end of the stream are all understood.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.text()))
    }
}

/// Sends `GET <path>` to `addr` and reads the whole response, all within `timeout`.
///
/// `path` includes the query string, e.g. `/poll?channel=c&offset=0`.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    tokio::time::timeout(timeout, get(addr, path))
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out after {timeout:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// Sends any request (`method`, `path`, extra `headers`, `body`) and reads the whole response,
/// all within `timeout`.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{path} timed out after {timeout:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))
}

/// A response read incrementally: its head, then its body as it arrives (chunked transfer
/// coding decoded), for streams such as SSE or a task watch with keepalives.
#[derive(Debug)]
pub struct HttpStream {
    reader: tokio::io::BufReader<TcpStream>,
    /// Status code.
    pub status: u16,
    /// Headers with lowercase names.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    done: bool,
}

impl HttpStream {
    /// Sends `GET path` with extra `headers` and reads the response head within `timeout`.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<HttpStream> {
        use tokio::io::AsyncBufReadExt;
        let open = async {
            let mut stream = TcpStream::connect(addr).await?;
            let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut reader = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("bad status line {line:?}"))?;
            let mut headers = Vec::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).await? == 0 {
                    bail!("connection closed in the response head");
                }
                let trimmed = line.trim_end();
                if trimmed.is_empty() {
                    break;
                }
                if let Some((n, v)) = trimmed.split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let chunked = headers
                .iter()
                .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
            Ok::<_, anyhow::Error>(HttpStream {
                reader,
                status,
                headers,
                chunked,
                done: false,
            })
        };
        tokio::time::timeout(timeout, open)
            .await
            .with_context(|| format!("GET http://{addr}{path} timed out after {timeout:?}"))?
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body, `None` once the body ended or the connection closed.
    /// Errors when nothing arrives within `timeout`.
    pub async fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        if self.done {
            return Ok(None);
        }
        let read = async {
            if !self.chunked {
                let mut buf = vec![0u8; 8192];
                let n = self.reader.read(&mut buf).await?;
                buf.truncate(n);
                return Ok::<_, anyhow::Error>((n > 0).then_some(buf));
            }
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            let size_text = line.trim().split(';').next().unwrap_or_default().to_owned();
            let size = usize::from_str_radix(&size_text, 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            if size == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; size + 2];
            match self.reader.read_exact(&mut buf).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            buf.truncate(size);
            Ok(Some(buf))
        };
        let result = tokio::time::timeout(timeout, read)
            .await
            .with_context(|| format!("no body data within {timeout:?}"))?;
        match result {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            // A reset connection (e.g. a killed server) ends the stream too.
            Err(err) if err.downcast_ref::<std::io::Error>().is_some() => {
                self.done = true;
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response ended before the end of its headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[head_end + 4..];
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if rest.len() < len {
            bail!("body has {} bytes, Content-Length says {len}", rest.len());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk header")?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_bodies() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.text(), "ok");
    }

    #[test]
    fn parses_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json().unwrap(), serde_json::json!({"a": 1}));
    }

    #[test]
    fn reads_to_end_without_framing() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(r.text(), "all of it");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
