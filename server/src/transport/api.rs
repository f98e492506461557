//! The back-end API, behind API keys: `POST /api/publish` and `GET /api/history`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use redistribute_protocol::{decode_client, ClientFrame, Offset, StreamId};

use super::http::{
    check_api_key, parse_count, push_message, push_offsets, query_pairs, query_value, HttpError,
};
use super::ws_connection::publish;
use crate::engine::PublishRequest;
use crate::error::RequestError;
use crate::feed::Start;
use crate::App;

/// Most messages one history request returns.
const MAX_HISTORY: usize = 1_000;

/// Most bytes of encoded entries one `/api/history` answer carries (at least one entry);
/// continue from the returned offset for more.
const HISTORY_MAX_BYTES: usize = 1 << 20;

/// `POST /api/publish` with `{"channel","fields","maxlen"?,"idempotency_key"?}` → `{"offset"}`.
pub async fn publish_api(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    match publish_inner(&app, &headers, &body).await {
        Ok(offset) => json(StatusCode::OK, format!("{{\"offset\":\"{offset}\"}}")),
        Err(err) => err.into_response(),
    }
}

async fn publish_inner(app: &App, headers: &HeaderMap, body: &str) -> Result<StreamId, HttpError> {
    check_api_key(headers, &app.config.http.api_keys)?;
    // Same validation as a WebSocket publish: wrap the body into a frame.
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body)
        .map_err(|e| HttpError::bad_request(format!("body is not a JSON object: {e}")))?;
    object.insert("type".into(), "publish".into());
    object.insert("id".into(), 0.into());
    let frame = decode_client(&serde_json::Value::Object(object).to_string())
        .map_err(|e| HttpError::bad_request(e.error.to_string()))?;
    let ClientFrame::Publish {
        channel,
        fields,
        maxlen,
        idempotency_key,
        ..
    } = frame
    else {
        return Err(HttpError::bad_request("not a publish"));
    };
    crate::message::check_fields(&fields)?;
    let request = PublishRequest {
        channel: &channel,
        fields: &fields,
        maxlen,
        idempotency_key: idempotency_key.as_deref(),
    };
    Ok(publish(app, request).await?)
}

/// `GET /api/history?channel=&from=&limit=` → `{"messages":[…],"offsets":{…}}`, plus
/// `"truncated":true` and the gap when entries after `from` were trimmed.
pub async fn history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match history_inner(&app, &headers, query.as_deref()).await {
        Ok(body) => json(StatusCode::OK, body),
        Err(err) => err.into_response(),
    }
}

async fn history_inner(
    app: &App,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<String, HttpError> {
    check_api_key(headers, &app.config.http.api_keys)?;
    let pairs = query_pairs(query);
    let channel = query_value(&pairs, "channel")
        .ok_or_else(|| HttpError::bad_request("channel= is required"))?;
    redistribute_protocol::validate_channel(channel)
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    let from = match query_value(&pairs, "from") {
        None => Offset::Earliest,
        Some(o) => Offset::parse(o).map_err(|e| HttpError::bad_request(e.to_string()))?,
    };
    let limit = match query_value(&pairs, "limit") {
        None => 100,
        Some(l) => parse_count("limit", l, 1..=MAX_HISTORY)?,
    };
    let position = app
        .engine
        .position(channel)
        .await
        .map_err(RequestError::from)?;
    // An API key may publish anywhere, so it may create the channel too.
    let position = Start::raise_beyond_tip(&*app.engine, channel, from, position, true)
        .await
        .map_err(RequestError::from)?;
    let start = Start::resolve(from, position);
    let channel: Arc<str> = Arc::from(channel);
    let page = app
        .engine
        .read(&channel, start.after, limit, HISTORY_MAX_BYTES)
        .await
        .map_err(RequestError::from)?;
    // Trimmed between the position read and this read: the page knows.
    let gap = match page.gap_through.filter(|g| *g > start.after) {
        Some(through) => Some((start.gap.map_or(start.after, |(from, _)| from), through)),
        None => start.gap,
    };
    let truncated = start.truncated || gap.is_some();
    let mut body = String::from("{\"messages\":[");
    let mut last = gap.map_or(start.after, |(_, to)| to.max(start.after));
    if let Some(batch) = &page.batch {
        for i in 0..batch.len() {
            if i > 0 {
                body.push(',');
            }
            push_message(&mut body, &channel, batch.item(i));
        }
        last = batch.last_id();
    }
    body.push_str("],");
    push_offsets(&mut body, [(&*channel, last)]);
    if truncated {
        body.push_str(",\"truncated\":true");
        if let Some((from, to)) = gap {
            body.push_str(&format!(",\"gap\":{{\"from\":\"{from}\",\"to\":\"{to}\"}}"));
        }
    }
    body.push('}');
    Ok(body)
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
