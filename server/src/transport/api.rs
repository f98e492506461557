//! The back-end API: `POST /api/publish`, `GET /api/history` and `GET /api/presence`, for an
//! API key (full rights) or a token whose claims allow the request
//! ([`crate::request::Access::Backend`]). The same publish handler serves the clients'
//! `POST /publish` ([`crate::request::Access::Client`]: a token, as on `/sse`), which the
//! browser client publishes through when it cannot open a WebSocket.

use std::sync::Arc;

use axum::extract::rejection::StringRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use redistribute_protocol::{decode_client, Offset, StreamId};

use super::http::{parse_count, push_message, push_offsets, query_pairs, query_value, HttpError};
use crate::auth::AuthContext;
use crate::request::presence::{self, PresenceAnswer};
use crate::request::{history::history as read_history, publish, History, PresenceQuery, Request};
use crate::server::App;

use crate::request::history::MAX_HISTORY;
use redistribute_protocol::history::DEFAULT_HISTORY_LIMIT;

/// `POST /api/publish` (and `POST /publish`) with
/// `{"channel","fields","maxlen"?,"idempotency_key"?}` → `{"offset"}`.
pub(crate) async fn publish_api(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    body: Result<String, StringRejection>,
) -> Response {
    // A body over the request size limit, or not UTF-8: the same JSON error as any other.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return HttpError::new(e.status(), "too_large", e.body_text()).into_response()
        }
        Err(e) => return HttpError::bad_request(e.body_text()).into_response(),
    };
    match publish_inner(&app, &caller, &body).await {
        Ok(offset) => json(StatusCode::OK, format!("{{\"offset\":\"{offset}\"}}")),
        Err(err) => err.into_response(),
    }
}

async fn publish_inner(
    app: &Arc<App>,
    caller: &AuthContext,
    body: &str,
) -> Result<StreamId, HttpError> {
    // The same decoding as a WebSocket publish: wrap the body into a frame.
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body)
        .map_err(|e| HttpError::bad_request(format!("body is not a JSON object: {e}")))?;
    object.insert("type".into(), "publish".into());
    object.insert("id".into(), 0.into());
    let frame = decode_client(&serde_json::Value::Object(object).to_string())
        .map_err(|e| HttpError::bad_request(e.error.to_string()))?;
    let Some((_, Request::Publish(request))) = Request::from_frame(frame) else {
        return Err(HttpError::bad_request("not a publish"));
    };
    Ok(publish::publish(&app.core, caller, None, request).await?)
}

/// `GET /api/history?channel=&from=&to=&limit=&reverse=` →
/// `{"messages":[…],"offsets":{…},"next":…,"more":…}`, plus
/// `"truncated":true` and the gap when entries after `from` were trimmed.
pub(crate) async fn history(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    RawQuery(query): RawQuery,
) -> Response {
    ok_json(history_inner(&app, &caller, query.as_deref()).await)
}

async fn history_inner(
    app: &App,
    caller: &AuthContext,
    query: Option<&str>,
) -> Result<String, HttpError> {
    let pairs = query_pairs(query);
    let channel = query_value(&pairs, "channel")
        .ok_or_else(|| HttpError::bad_request("channel= is required"))?;
    let from = match query_value(&pairs, "from") {
        None => Offset::Earliest,
        Some(o) => Offset::parse(o).map_err(|e| HttpError::bad_request(e.to_string()))?,
    };
    let limit = match query_value(&pairs, "limit") {
        None => DEFAULT_HISTORY_LIMIT as usize,
        Some(l) => parse_count("limit", l, 1..=MAX_HISTORY)?,
    };
    let to = match query_value(&pairs, "to") {
        None => None,
        Some(t) => Some(StreamId::parse(t).map_err(|e| HttpError::bad_request(e.to_string()))?),
    };
    let reverse = flag(&pairs, "reverse")?;
    let request = History {
        channel: channel.to_owned(),
        from,
        to,
        limit,
        reverse,
    };
    let page = read_history(&app.core, caller, &request).await?;
    let channel = &*page.channel;
    let mut body = String::from("{\"messages\":[");
    for (i, (_, item)) in page.items().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_message(&mut body, channel, item);
    }
    body.push_str("],");
    push_offsets(&mut body, [(channel, page.next)]);
    body.push_str(&format!(
        ",\"next\":\"{}\",\"more\":{}",
        page.next, page.more
    ));
    if page.truncated {
        body.push_str(",\"truncated\":true");
        if let Some((from, to)) = page.gap {
            body.push_str(&format!(",\"gap\":{{\"from\":\"{from}\",\"to\":\"{to}\"}}"));
        }
    }
    body.push('}');
    Ok(body)
}

/// `GET /api/presence?channel=` → `{"channel","members":[…]}`; with `stats=true`,
/// `{"channel","clients","users"}`.
pub(crate) async fn presence(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    RawQuery(query): RawQuery,
) -> Response {
    ok_json(presence_inner(&app, &caller, query.as_deref()).await)
}

async fn presence_inner(
    app: &App,
    caller: &AuthContext,
    query: Option<&str>,
) -> Result<String, HttpError> {
    let pairs = query_pairs(query);
    let channel = query_value(&pairs, "channel")
        .ok_or_else(|| HttpError::bad_request("channel= is required"))?;
    let stats = flag(&pairs, "stats")?;
    let query = PresenceQuery {
        channel: channel.to_owned(),
        stats,
    };
    let answer = presence::presence(&app.core, caller, &query).await?;
    let body = match answer {
        PresenceAnswer::Members(members) => serde_json::json!({
            "channel": channel,
            "members": members,
        }),
        PresenceAnswer::Counts { clients, users } => serde_json::json!({
            "channel": channel,
            "clients": clients,
            "users": users,
        }),
    };
    Ok(body.to_string())
}

/// A query flag: absent or `false`, or `true`; anything else is `400 bad_request`.
fn flag(pairs: &[(String, String)], name: &str) -> Result<bool, HttpError> {
    match query_value(pairs, name) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(HttpError::bad_request(format!(
            "{name}= must be true or false, not {other:?}"
        ))),
    }
}

/// A read's answer: its JSON body with `200`, or its error.
fn ok_json(result: Result<String, HttpError>) -> Response {
    match result {
        Ok(body) => json(StatusCode::OK, body),
        Err(err) => err.into_response(),
    }
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
