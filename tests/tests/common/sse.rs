//! A small EventSource client that follows the WHATWG rules that matter for resuming: it
//! parses `event`/`data`/`id`/`retry` fields, remembers the last event id, and on a dropped
//! connection waits the `retry` delay and reconnects with `Last-Event-ID`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use redistribute_testkit::HttpStream;
use tokio::time::Instant;

/// One dispatched event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `event:` (default `message`).
    pub event: String,
    /// `data:` lines joined by newlines.
    pub data: String,
}

/// The client; see the module docs.
pub struct EventSource {
    addr: SocketAddr,
    path: String,
    last_event_id: String,
    retry: Duration,
    stream: Option<HttpStream>,
    buffer: String,
    event: String,
    data: Vec<String>,
    id: Option<String>,
    /// How many times the client reconnected.
    pub reconnects: usize,
}

impl EventSource {
    /// Connects to `path` (e.g. `/sse?channel=a`).
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<EventSource> {
        let mut es = EventSource {
            addr,
            path: path.to_owned(),
            last_event_id: String::new(),
            retry: Duration::from_millis(3000),
            stream: None,
            buffer: String::new(),
            event: String::new(),
            data: Vec::new(),
            id: None,
            reconnects: 0,
        };
        es.open().await?;
        Ok(es)
    }

    async fn open(&mut self) -> Result<()> {
        let mut headers = vec![("Accept", "text/event-stream")];
        let id = self.last_event_id.clone();
        if !id.is_empty() {
            headers.push(("Last-Event-ID", id.as_str()));
        }
        let stream =
            HttpStream::open(self.addr, &self.path, &headers, Duration::from_secs(10)).await?;
        if stream.status != 200 {
            bail!("SSE answered {}", stream.status);
        }
        self.stream = Some(stream);
        self.buffer.clear();
        Ok(())
    }

    /// The next event, reconnecting as needed, within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_buffered() {
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no SSE event within {timeout:?}");
            }
            let chunk = match self.stream.as_mut() {
                Some(stream) => stream.next_chunk(left).await?,
                None => None,
            };
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => {
                    // Connection lost: wait `retry`, then reconnect with Last-Event-ID.
                    self.stream = None;
                    self.event.clear();
                    self.data.clear();
                    tokio::time::sleep(self.retry.min(left)).await;
                    if self.open().await.is_ok() {
                        self.reconnects += 1;
                    }
                }
            }
        }
    }

    fn parse_buffered(&mut self) -> Option<Event> {
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(id) = self.id.take() {
                    self.last_event_id = id;
                }
                if self.data.is_empty() {
                    self.event.clear();
                    continue;
                }
                let event = Event {
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: self.data.join("\n"),
                };
                self.data.clear();
                return Some(event);
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
                "retry" => {
                    if let Ok(ms) = value.parse() {
                        self.retry = Duration::from_millis(ms);
                    }
                }
                _ => {}
            }
        }
        None
    }
}
