//! A tiny RESP2 client: enough to set up and inspect a Redis in tests, nothing more.
//!
//! Requests are sent as arrays of bulk strings; replies are parsed into [`RespValue`]. There is no
//! pipelining, pooling or RESP3: tests that need more should use the server's own engine.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DEFAULT_TIMEOUT;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`: a simple string.
    Simple(String),
    /// `-ERR …`: an error reply (returned as a value so tests can assert on it).
    Error(String),
    /// `:42`: an integer.
    Integer(i64),
    /// `$3\r\nabc`: a bulk string, as raw bytes.
    Bulk(Vec<u8>),
    /// `*2\r\n…`: an array.
    Array(Vec<RespValue>),
    /// `$-1` or `*-1`: nil.
    Nil,
}

impl RespValue {
    /// The text of a simple string, error or UTF-8 bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RespValue::Simple(s) | RespValue::Error(s) => Some(s),
            RespValue::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            RespValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is nil.
    pub fn is_nil(&self) -> bool {
        matches!(self, RespValue::Nil)
    }

    /// Turns an error reply into an `Err`, so `?` can be used on commands expected to succeed.
    pub fn into_result(self) -> Result<RespValue> {
        match self {
            RespValue::Error(e) => bail!("redis replied with an error: {e}"),
            other => Ok(other),
        }
    }
}

impl fmt::Display for RespValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespValue::Simple(s) => write!(f, "{s}"),
            RespValue::Error(e) => write!(f, "(error) {e}"),
            RespValue::Integer(i) => write!(f, "(integer) {i}"),
            RespValue::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            RespValue::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            RespValue::Nil => f.write_str("(nil)"),
        }
    }
}

/// One connection to Redis, sending one command at a time.
#[derive(Debug)]
pub struct RespConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespConnection {
    /// Connects to Redis at `addr`, giving up after [`DEFAULT_TIMEOUT`].
    pub async fn connect(addr: SocketAddr) -> Result<RespConnection> {
        Self::connect_timeout(addr, DEFAULT_TIMEOUT).await
    }

    /// Connects to Redis at `addr`, giving up after `timeout`.
    pub async fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Result<RespConnection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to redis at {addr} timed out after {timeout:?}"))?
            .with_context(|| format!("connecting to redis at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RespConnection {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `args` as one command and reads its reply, within [`DEFAULT_TIMEOUT`].
    ///
    /// An error reply is returned as [`RespValue::Error`], not as `Err`; `Err` means the
    /// connection failed or timed out.
    pub async fn command(&mut self, args: &[&str]) -> Result<RespValue> {
        self.command_timeout(args, DEFAULT_TIMEOUT).await
    }

    /// Like [`RespConnection::command`] with an explicit timeout (e.g. for `XREAD BLOCK`).
    pub async fn command_timeout(&mut self, args: &[&str], timeout: Duration) -> Result<RespValue> {
        tokio::time::timeout(timeout, self.round_trip(args))
            .await
            .with_context(|| format!("redis command {args:?} timed out after {timeout:?}"))?
            .with_context(|| format!("redis command {args:?}"))
    }

    async fn round_trip(&mut self, args: &[&str]) -> Result<RespValue> {
        self.stream.write_all(&encode_command(args)).await?;
        loop {
            if let Some((value, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(value);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("redis closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one value from the front of `buf`: `Ok(None)` when more bytes are needed, otherwise
/// the value and how many bytes it used.
fn parse(buf: &[u8]) -> Result<Option<(RespValue, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).context("RESP header is not UTF-8")?;
    let after = end + 2;
    let value = match buf[0] {
        b'+' => RespValue::Simple(line.to_owned()),
        b'-' => RespValue::Error(line.to_owned()),
        b':' => RespValue::Integer(line.parse().context("bad RESP integer")?),
        b'$' => {
            let len: i64 = line.parse().context("bad RESP bulk length")?;
            if len < 0 {
                return Ok(Some((RespValue::Nil, after)));
            }
            let len = usize::try_from(len)?;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                bail!("RESP bulk string not terminated by CRLF");
            }
            return Ok(Some((
                RespValue::Bulk(buf[after..after + len].to_vec()),
                after + len + 2,
            )));
        }
        b'*' => {
            let len: i64 = line.parse().context("bad RESP array length")?;
            if len < 0 {
                return Ok(Some((RespValue::Nil, after)));
            }
            let mut items = Vec::with_capacity(usize::try_from(len)?.min(1024));
            let mut pos = after;
            for _ in 0..len {
                match parse(&buf[pos..])? {
                    Some((item, used)) => {
                        items.push(item);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            return Ok(Some((RespValue::Array(items), pos)));
        }
        other => bail!("unexpected RESP type byte {:?}", other as char),
    };
    Ok(Some((value, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            encode_command(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn parses_every_reply_kind() {
        let cases: &[(&[u8], RespValue)] = &[
            (b"+OK\r\n", RespValue::Simple("OK".into())),
            (b"-ERR nope\r\n", RespValue::Error("ERR nope".into())),
            (b":-7\r\n", RespValue::Integer(-7)),
            (b"$3\r\na\r\n\r\n", RespValue::Bulk(b"a\r\n".to_vec())),
            (b"$-1\r\n", RespValue::Nil),
            (b"*-1\r\n", RespValue::Nil),
            (
                b"*2\r\n*1\r\n$1\r\nx\r\n:1\r\n",
                RespValue::Array(vec![
                    RespValue::Array(vec![RespValue::Bulk(b"x".to_vec())]),
                    RespValue::Integer(1),
                ]),
            ),
        ];
        for (bytes, want) in cases {
            let (got, used) = parse(bytes).unwrap().unwrap();
            assert_eq!(&got, want);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn waits_for_incomplete_input() {
        let full = b"*2\r\n$5\r\nhello\r\n:1\r\n";
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$1\r\nab\r\n").is_err());
    }
}
