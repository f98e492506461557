//! `GET /sse`: Server-Sent Events over one or more channels.
//!
//! Each `message` event's `id:` is a resume token covering every channel of the stream: the
//! last offsets, comma-separated in the order the `channel` parameters were given. The
//! opening carries one too (the starting positions), so a stream that drops before its first
//! message resumes where it started. A browser's `EventSource` sends it back as
//! `Last-Event-ID` when it reconnects (to the same URL, so the same channel order), and every
//! channel resumes exactly there. A `retry:` hint and comment
//! heartbeats keep proxies and clients informed. The stream is written by a task into a small
//! bounded channel: a client that does not read stalls its task, whose feed then switches to
//! catch-up reads instead of buffering. A stream opened with a token ends at the token's expiry
//! with an `event: error` ([`lifetime`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use redistribute_protocol::{Offset, StreamId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::http::{gap_json, push_message, query_pairs, query_value, subscribes, HttpError};
use crate::auth::{lifetime, AuthContext};
use crate::feed::{Delivery, Feed};
use crate::request::{subscribe, Subscribe};
use crate::server::App;

/// Chunks waiting to be written to one stream (each is one delivery, at most about 2 MiB): a
/// client that stops reading holds at most this many.
const SSE_CHUNKS: usize = 2;

/// Reconnect delay suggested to `EventSource` clients, in ms.
const RETRY_MS: u64 = 2_000;

/// Opens an event stream.
pub(crate) async fn sse(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match open(app, &caller, &headers, query.as_deref()).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn open(
    app: Arc<App>,
    caller: &AuthContext,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, HttpError> {
    let pairs = query_pairs(query);
    let mut channels: Vec<Subscribe> = subscribes(&pairs)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| {
            HttpError::bad_request("Last-Event-ID must be a resume token this server sent")
        })?),
        None => query_value(&pairs, "last_event_id"),
    };
    if let Some(token) = last_event_id.filter(|t| !t.is_empty()) {
        let offsets = parse_token(token, channels.len())?;
        for (request, resumed) in channels.iter_mut().zip(offsets) {
            request.offset = Offset::Id(resumed);
        }
    }
    let allowed = channels
        .iter()
        .map(|request| subscribe::check(&app.core, caller, None, request))
        .collect::<Result<Vec<_>, _>>()?;
    let mut feed = Feed::new(app.core.clone(), "sse");
    let mut preamble = format!("retry: {RETRY_MS}\n\n");
    for allowed in allowed {
        let channel = allowed.channel().to_owned();
        let subscribe::Subscribed::Plain(start) = allowed.run(&mut feed).await? else {
            return Err(HttpError::bad_request("consumer groups need a WebSocket"));
        };
        if let Some((from, to)) = start.gap {
            preamble.push_str("event: gap\ndata: ");
            preamble.push_str(&gap_json(&channel, from, to));
            preamble.push_str("\n\n");
        } else if start.truncated {
            preamble.push_str(&format!(
                "event: truncated\ndata: {{\"channel\":\"{channel}\",\"offset\":\"{}\"}}\n\n",
                start.after
            ));
        }
    }
    let names: Vec<Arc<str>> = channels
        .iter()
        .map(|s| Arc::from(s.channel.as_str()))
        .collect();
    let positions: Vec<StreamId> = names
        .iter()
        .map(|c| feed.last_offset(c).unwrap_or_default())
        .collect();
    // The starting positions as a resume token, before any message: a stream that drops
    // before its first event resumes exactly here instead of at `$` again. An `id` without
    // `data` sets the client's last event id without dispatching an event.
    preamble.push_str("id: ");
    preamble.push_str(&token(&positions));
    preamble.push_str("\n\n");
    let expiry = lifetime::deadline(caller.claims.as_deref());
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(SSE_CHUNKS);
    tx.try_send(Ok(Bytes::from(preamble))).ok();
    let peer = caller.peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::debug!(conn = feed.id(), %peer, channels = names.len(), "SSE stream opened");
    app.drain.tasks.spawn(stream_events(
        app.clone(),
        feed,
        names,
        positions,
        tx,
        expiry,
    ));
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Parses a resume token: one offset per channel.
fn parse_token(token: &str, channels: usize) -> Result<Vec<StreamId>, HttpError> {
    let offsets = token
        .split(',')
        .map(StreamId::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| HttpError::bad_request(format!("invalid Last-Event-ID {token:?}")))?;
    if offsets.len() != channels {
        return Err(HttpError::bad_request(format!(
            "Last-Event-ID names {} offsets for {channels} channels; reconnect with the same channel list",
            offsets.len()
        )));
    }
    Ok(offsets)
}

fn token(positions: &[StreamId]) -> String {
    positions
        .iter()
        .map(StreamId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn stream_events(
    app: Arc<App>,
    mut feed: Feed,
    names: Vec<Arc<str>>,
    mut positions: Vec<StreamId>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    expiry: Option<tokio::time::Instant>,
) {
    let connections = metrics::gauge!(crate::metrics::CONNECTIONS, "transport" => "sse");
    connections.increment(1.0);
    let conn = feed.id();
    let _gauge = scopeguard(move || {
        connections.decrement(1.0);
        tracing::debug!(conn, "SSE stream closed");
    });
    let mut heartbeat = tokio::time::interval(app.core.config.http.sse_heartbeat);
    heartbeat.tick().await;
    loop {
        let chunk = tokio::select! {
            () = app.core.shutdown.cancelled() => return,
            () = tx.closed() => return,
            _ = heartbeat.tick() => String::from(": heartbeat\n\n"),
            () = lifetime::expired(expiry) => {
                let error = HttpError::from(lifetime::expired_error()).body();
                let _ = tx.send(Ok(Bytes::from(format!("event: error\ndata: {error}\n\n")))).await;
                return;
            }
            () = feed.ready() => {
                let out = feed.take();
                let mut chunk = String::new();
                for delivery in out.deliveries() {
                    let (channel, position) = match delivery {
                        Delivery::Message(channel, offset, _) => (channel, offset),
                        Delivery::Gap(channel, _, to) => (channel, to),
                    };
                    if let Some(i) = names.iter().position(|n| n == channel) {
                        positions[i] = position;
                    }
                    let (event, data) = match delivery {
                        Delivery::Message(channel, _, entry) => {
                            let mut data = String::new();
                            push_message(&mut data, channel, entry);
                            ("message", data)
                        }
                        Delivery::Gap(channel, from, to) => ("gap", gap_json(channel, from, to)),
                    };
                    chunk.push_str("event: ");
                    chunk.push_str(event);
                    chunk.push_str("\nid: ");
                    chunk.push_str(&token(&positions));
                    chunk.push_str("\ndata: ");
                    chunk.push_str(&data);
                    chunk.push_str("\n\n");
                }
                chunk
            }
        };
        // A client that stopped reading still loses the stream at the token's expiry.
        tokio::select! {
            sent = tx.send(Ok(Bytes::from(chunk))) => if sent.is_err() { return },
            () = lifetime::expired(expiry) => return,
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let positions = vec![StreamId::new(1, 2), StreamId::new(3, 4)];
        assert_eq!(parse_token(&token(&positions), 2).unwrap(), positions);
        assert!(parse_token("1-2", 2).is_err());
        assert!(parse_token("x", 1).is_err());
    }
}
