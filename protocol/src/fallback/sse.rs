//! A `text/event-stream` reader: bytes in (in chunks cut anywhere), events out.
//!
//! It follows the event-stream format for what the server sends: lines end in LF (a CR before
//! it is dropped), `:` starts a comment, `event`, `data` (joined with LF when repeated) and
//! `id` are kept, other fields are ignored, and a blank line ends an event. Unlike a browser
//! `EventSource`, a block that sets only an `id` is an event too: the server's opening resume
//! token is one.

/// The longest line accepted, in bytes: a message is at most a few MiB, and a stream that
/// sends more without a line end is not an event stream.
pub const MAX_LINE: usize = 16 << 20;

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field (`message` when absent).
    pub event: String,
    /// The `data` lines, joined with LF.
    pub data: String,
    /// The `id` field, if the event had one.
    pub id: Option<String>,
}

/// Why the bytes are not an event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line is not UTF-8.
    #[error("{}", self.message())]
    NotUtf8,
    /// A line is longer than [`MAX_LINE`].
    #[error("{}", self.message())]
    LineTooLong,
}

impl SseError {
    /// The error's message (also its `Display`): a static string, so the browser client links
    /// no formatting for it.
    pub fn message(&self) -> &'static str {
        match self {
            SseError::NotUtf8 => "the event stream sent a line that is not UTF-8",
            // MAX_LINE bytes (a test checks it).
            SseError::LineTooLong => "the event stream sent a line longer than 16777216 bytes",
        }
    }
}

/// The reader's state between chunks.
#[derive(Debug, Default)]
pub struct SseReader {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The event being read, if any field was seen.
    event: Option<SseEvent>,
}

impl SseReader {
    /// Reads `bytes` and appends the events they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
            self.field(&line, out);
        }
        if self.line.len() + rest.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    /// Takes one complete line.
    fn field(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(mut event) = self.event.take() {
                if event.event.is_empty() {
                    event.event.push_str("message");
                }
                out.push(event);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        let event = || SseEvent {
            event: String::new(),
            data: String::new(),
            id: None,
        };
        match name {
            "event" => self.event.get_or_insert_with(event).event = value.to_owned(),
            "data" => {
                let e = self.event.get_or_insert_with(event);
                if !e.data.is_empty() {
                    e.data.push('\n');
                }
                e.data.push_str(value);
            }
            "id" => self.event.get_or_insert_with(event).id = Some(value.to_owned()),
            _ => {}
        }
    }
}
