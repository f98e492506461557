//! `GET /poll`: long-polling. Answers at once with the messages after the given offsets, or
//! holds the request (a future, not a thread) until one arrives or the timeout passes. The
//! body always carries the next offsets to poll from. A newer poll with the same `client_id`
//! by the same user ends the older one (`409 replaced`); another user's poll with that
//! `client_id` is refused (`403 forbidden`) and ends nothing. A poll held past its token's
//! expiry answers `401 unauthorized` ([`lifetime`]). A client that goes away drops the
//! request's feed, which releases its subscriptions at once.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::http::{
    gap_json, parse_seconds, push_message, push_offsets, query_pairs, query_value, subscribes,
    HttpError,
};
use crate::auth::{lifetime, AuthContext};
use crate::feed::{Delivery, Feed};
use crate::request::{subscribe, Subscribe};
use crate::server::App;

/// Answers one long-poll request.
pub(crate) async fn poll(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let callback = match jsonp_callback(&app, &pairs) {
        Ok(callback) => callback,
        Err(err) => return err.into_response(),
    };
    let (status, body) = match hold(&app, &caller, &pairs).await {
        Ok(body) => (StatusCode::OK, body),
        Err(err) => (err.status(), err.body()),
    };
    respond(status, body, callback)
}

/// A refused poll (by the route's guard) answered like any other: as JSONP when it asked for
/// it.
pub(crate) fn error_response(app: &App, pairs: &[(String, String)], err: HttpError) -> Response {
    match jsonp_callback(app, pairs) {
        Ok(callback) => respond(err.status(), err.body(), callback),
        Err(bad) => bad.into_response(),
    }
}

/// The JSONP callback the query names, if any (`400` when JSONP is off or the name is bad).
fn jsonp_callback<'a>(
    app: &App,
    pairs: &'a [(String, String)],
) -> Result<Option<&'a str>, HttpError> {
    match query_value(pairs, "callback") {
        Some(_) if !app.core.config.http.jsonp => {
            Err(HttpError::bad_request("JSONP is disabled on this server"))
        }
        Some(name) if !valid_callback(name) => Err(HttpError::bad_request(
            "callback must be 1-64 characters of A-Z a-z 0-9 _ $ .",
        )),
        other => Ok(other),
    }
}

async fn hold(
    app: &Arc<App>,
    caller: &AuthContext,
    pairs: &[(String, String)],
) -> Result<String, HttpError> {
    let channels: Vec<Subscribe> = subscribes(pairs)?;
    let allowed = channels
        .iter()
        .map(|request| subscribe::check(&app.core, caller, None, request))
        .collect::<Result<Vec<_>, _>>()?;
    let http = &app.core.config.http;
    let timeout = match query_value(pairs, "timeout") {
        None => http.poll_timeout,
        Some(t) => parse_seconds("timeout", t, http.poll_max_timeout)?,
    };
    let holder = query_value(pairs, "client_id")
        .map(|id| {
            if id.is_empty() || id.len() > 200 {
                Err(HttpError::bad_request("client_id must be 1-200 bytes"))
            } else {
                app.http.poll_holders.claim(id.to_owned(), caller.owner())
            }
        })
        .transpose()?;

    let mut feed = Feed::new(app.core.clone(), "poll");
    let mut gaps = Vec::new();
    let mut truncated = Vec::new();
    for allowed in allowed {
        let channel = allowed.channel().to_owned();
        let subscribe::Subscribed::Plain(start) = allowed.run(&mut feed).await? else {
            return Err(HttpError::bad_request("consumer groups need a WebSocket"));
        };
        if let Some((from, to)) = start.gap {
            gaps.push(gap_json(&channel, from, to));
        } else if start.truncated {
            truncated.push(format!("\"{channel}\""));
        }
    }
    let replaced = async {
        match &holder {
            Some(h) => h.replaced.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = feed.ready() => {}
        () = tokio::time::sleep(timeout) => {}
        () = replaced => {
            return Err(HttpError::replaced("a newer poll with this client_id replaced this one"))
        }
        () = app.core.shutdown.cancelled() => {}
        () = lifetime::expired(lifetime::deadline(caller.claims.as_deref())) => {
            return Err(lifetime::expired_error().into())
        }
    }
    feed.collect_queued();
    let out = feed.take();
    let mut body = String::from("{\"messages\":[");
    let mut first = true;
    for delivery in out.deliveries() {
        match delivery {
            Delivery::Message(channel, _, entry) => {
                if !std::mem::take(&mut first) {
                    body.push(',');
                }
                push_message(&mut body, channel, entry);
            }
            Delivery::Gap(channel, from, to) => gaps.push(gap_json(channel, from, to)),
        }
    }
    body.push_str("],");
    push_offsets(
        &mut body,
        channels.iter().map(|s| {
            (
                s.channel.as_str(),
                feed.last_offset(&s.channel).unwrap_or_default(),
            )
        }),
    );
    if !gaps.is_empty() {
        body.push_str(",\"gaps\":[");
        body.push_str(&gaps.join(","));
        body.push(']');
    }
    if !truncated.is_empty() {
        body.push_str(",\"truncated\":[");
        body.push_str(&truncated.join(","));
        body.push(']');
    }
    body.push('}');
    Ok(body)
}

fn valid_callback(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'.')
}

fn respond(status: StatusCode, body: String, callback: Option<&str>) -> Response {
    // JSONP answers 200 so the script loads; the status is inside the JSON.
    let (status, content_type, body) = match callback {
        Some(cb) => (
            StatusCode::OK,
            "application/javascript",
            format!("/**/{cb}({body});"),
        ),
        None => (status, "application/json", body),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let reconnect = if status == StatusCode::SERVICE_UNAVAILABLE {
        "1000"
    } else {
        "0"
    };
    headers.insert("x-reconnect-in", HeaderValue::from_static(reconnect));
    response
}
