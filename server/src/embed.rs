//! Publishing and reading history from the application that embeds the server:
//! [`Server::publish`] and [`Server::history`].
//!
//! Both go through the request layer like `POST /api/publish` and `GET /api/history` with an
//! API key: the same wire checks (a publish is validated like a client's frame), channel-name
//! check, message limits, request timeout and engine call, and
//! the same [`Authorizer`](crate::Authorizer) hook, which sees a caller with
//! [`Credential::ApiKey`] and transport `embedded`. Subscribers on every transport receive what
//! is published here like any other message.

use redistribute_protocol::{validate_client, ClientFrame, ErrorCode, Fields, Offset, StreamId};

use crate::auth::{AuthContext, Credential};
use crate::error::RequestError;
use crate::request::history::{history, MAX_HISTORY};
use crate::request::publish::publish;
use crate::request::{History, Publish, Request};
use crate::server::Server;

/// Options of [`Server::publish`].
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Approximate cap on the channel's length after the append (`XADD MAXLEN ~`).
    pub maxlen: Option<u64>,
    /// Deduplication key: publishing again with it (within `idempotency_ttl`) returns the
    /// first offset and stores nothing.
    pub idempotency_key: Option<String>,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its offset in the channel.
    pub offset: StreamId,
    /// Its fields.
    pub fields: Fields,
}

/// One page of a channel's history, as [`Server::history`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// Where to continue from for the next page: the last message returned (or the start,
    /// past any gap).
    pub next: StreamId,
    /// Whether the channel may hold messages after this page (as of the request).
    pub more: bool,
    /// Entries after the requested offset were trimmed (or it was beyond the channel's tip).
    pub truncated: bool,
    /// The range `(from, to]` known to be gone, when known.
    pub gap: Option<(StreamId, StreamId)>,
}

/// Why [`Server::publish`] or [`Server::history`] failed: the wire error code a client would
/// get (`bad_request`, `forbidden`, `unavailable`, …) and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The error code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::Protocol { code, message } => ApiError { code, message },
            RequestError::Socket => ApiError {
                code: ErrorCode::Internal,
                message: "internal server error".into(),
            },
        }
    }
}

/// The caller an embedding application acts as.
fn application() -> AuthContext {
    AuthContext {
        claims: None,
        peer: None,
        transport: "embedded",
        credential: Credential::ApiKey,
    }
}

impl Server {
    /// Appends a message to `channel` and returns its offset once the engine stored it.
    ///
    /// ```no_run
    /// # async fn run(server: redistribute_server::Server) -> Result<(), redistribute_server::ApiError> {
    /// use redistribute_server::{Fields, PublishOptions};
    /// let mut fields = Fields::new();
    /// fields.insert("text".into(), "deploy finished".into());
    /// let offset = server.publish("ops", fields, PublishOptions::default()).await?;
    /// println!("stored at {offset}");
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        channel: &str,
        fields: Fields,
        options: PublishOptions,
    ) -> Result<StreamId, ApiError> {
        let request = checked_publish(ClientFrame::Publish {
            id: 0,
            channel: channel.to_owned(),
            fields,
            maxlen: options.maxlen,
            idempotency_key: options.idempotency_key,
        })?;
        Ok(publish(&self.app.core, &application(), None, request).await?)
    }

    /// Reads up to `limit` (1 to 1000) stored messages of `channel` after `from`; continue
    /// from [`HistoryPage::next`] for more.
    ///
    /// ```no_run
    /// # async fn run(server: redistribute_server::Server) -> Result<(), redistribute_server::ApiError> {
    /// use redistribute_server::Offset;
    /// let mut from = Offset::Earliest;
    /// loop {
    ///     let page = server.history("ops", from, 100).await?;
    ///     if let Some((from, to)) = page.gap {
    ///         println!("trimmed: ({from}, {to}]");
    ///     }
    ///     for message in &page.messages {
    ///         println!("{} {:?}", message.offset, message.fields);
    ///     }
    ///     if page.messages.is_empty() {
    ///         break;
    ///     }
    ///     from = Offset::Id(page.next);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        channel: &str,
        from: Offset,
        limit: usize,
    ) -> Result<HistoryPage, ApiError> {
        if !(1..=MAX_HISTORY).contains(&limit) {
            return Err(RequestError::bad_request(format!(
                "limit must be from 1 to {MAX_HISTORY}, not {limit}"
            ))
            .into());
        }
        let request = History {
            channel: channel.to_owned(),
            from,
            to: None,
            limit,
            reverse: false,
        };
        let page = history(&self.app.core, &application(), &request).await?;
        let mut messages = Vec::new();
        if let Some(batch) = &page.batch {
            messages.reserve(batch.len());
            for (i, &offset) in batch.ids().iter().enumerate() {
                messages.push(Message {
                    offset,
                    fields: entry_fields(batch.item(i))?,
                });
            }
        }
        Ok(HistoryPage {
            messages,
            next: page.next,
            more: page.more,
            truncated: page.truncated,
            gap: page.gap,
        })
    }
}

/// The publish `frame` asks for, after the wire decoder's checks (a channel name, at least one
/// field, `maxlen` at least 1, an idempotency key of 1-200 bytes): the same as a client's
/// publish, so the application cannot store what no client could.
fn checked_publish(frame: ClientFrame) -> Result<Publish, RequestError> {
    validate_client(&frame).map_err(|e| RequestError::bad_request(e.to_string()))?;
    match Request::from_frame(frame) {
        Some((_, Request::Publish(publish))) => Ok(publish),
        _ => Err(RequestError::bad_request("not a publish")),
    }
}

/// The fields of an encoded entry (`{"offset":…,"fields":{…}}`).
fn entry_fields(item: &str) -> Result<Fields, ApiError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        fields: Fields,
    }
    serde_json::from_str::<Entry>(item)
        .map(|e| e.fields)
        .map_err(|e| {
            tracing::error!(%e, "a stored entry does not decode");
            RequestError::new(ErrorCode::Internal, "internal server error").into()
        })
}
