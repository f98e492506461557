//! `GET /task/<id>?poll|watch`: the task-status pattern. A task is channel `task:<id>`; a
//! worker publishes its progress there (`{"status": "running"}`, …, `{"status": "done", …}`).
//!
//! - `poll` (the default): the latest entry, or `404 not_found`.
//! - `watch`: the latest entry at once if its `status` is `"done"`; otherwise the next entry
//!   when it comes. While waiting, a newline is written every keepalive interval (whitespace
//!   before the JSON, so the body still parses) to keep proxies from timing out. One watch per
//!   task id on an instance: a newer watch ends the older one, whose body is then a `replaced`
//!   error.
//!
//! Access: a token whose claims allow the channel (a poll is authorized as history of it, a
//! watch as a subscription), or, with a task secret configured, a signed id:
//! `<id>.<hex HMAC-SHA256(secret, id)>` ([`crate::request::task_id`]). A watch held by one
//! user is not replaced by another user's (`403 forbidden`). A watch opened with a token ends
//! at the token's expiry with an `unauthorized` error body ([`lifetime`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use redistribute_protocol::Offset;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::http::{push_message, query_pairs, HttpError};
use crate::auth::{lifetime, AuthContext};
use crate::engine::Batch;
use crate::feed::{Delivery, Feed};
use crate::request::{history, subscribe, task_id, Subscribe};
use crate::server::App;

pub use crate::request::task_id::sign_task_id;

/// Answers a task poll or watch.
pub(crate) async fn task(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let watch = query_pairs(query.as_deref())
        .iter()
        .any(|(k, _)| k == "watch");
    match handle(app, caller, &id, watch).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(
    app: Arc<App>,
    mut caller: AuthContext,
    id: &str,
    watch: bool,
) -> Result<Response, HttpError> {
    let channel = task_id::resolve(&app.core, &mut caller, id)?;
    if !watch {
        let channel: Arc<str> = Arc::from(channel);
        return match history::latest(&app.core, &caller, &channel).await? {
            Some(batch) => Ok(json_response(entry_json(&batch))),
            None => Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{channel:?} has no status yet"),
            )),
        };
    }
    // Subscribe first, then look at the newest entry as of the subscription's start: an
    // update published at any moment is either that entry or delivered by the feed, so a
    // `done` racing the watch is never missed.
    let request = Subscribe {
        channel,
        offset: Offset::Latest,
        group: None,
        rewind: None,
        join_leave: false,
    };
    let allowed = subscribe::check(&app.core, &caller, None, &request)?;
    let mut feed = Feed::new(app.core.clone(), "task");
    let subscribe::Subscribed::Plain(start) = allowed.run(&mut feed).await? else {
        return Err(HttpError::bad_request(
            "a task watch subscribes to no group",
        ));
    };
    let channel: Arc<str> = Arc::from(request.channel);
    let newest = history::entry_at(&app.core, &caller, &channel, start.after).await?;
    if let Some(batch) = newest.as_ref().filter(|b| is_done(b)) {
        return Ok(json_response(entry_json(batch)));
    }
    let holder = app
        .http
        .task_watches
        .claim(channel.to_string(), caller.owner())?;
    let expiry = lifetime::deadline(caller.claims.as_deref());
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(2);
    let keepalive = app.core.config.http.task_keepalive;
    let tasks = app.drain.tasks.clone();
    tasks.spawn(async move {
        let mut ticker = keepalive.map(tokio::time::interval);
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let chunk = tokio::select! {
                () = tx.closed() => return,
                () = tick => {
                    if tx.send(Ok(Bytes::from_static(b"\n"))).await.is_err() {
                        return;
                    }
                    continue;
                }
                () = holder.replaced.cancelled() => {
                    HttpError::replaced("a newer watch of this task replaced this one").body()
                }
                () = lifetime::expired(expiry) => {
                    HttpError::from(lifetime::expired_error()).body()
                }
                () = app.core.shutdown.cancelled() => {
                    HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "server restarting; watch again").body()
                }
                () = feed.ready() => {
                    let out = feed.take();
                    let Some((channel, entry)) = out.deliveries().find_map(|d| match d {
                        Delivery::Message(channel, _, entry) => Some((channel, entry)),
                        Delivery::Gap(..) => None,
                    }) else {
                        continue;
                    };
                    let mut body = String::new();
                    push_message(&mut body, channel, entry);
                    body
                }
            };
            let _ = tx.send(Ok(Bytes::from(chunk))).await;
            return;
        }
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    set_json_headers(&mut response);
    Ok(response)
}

fn is_done(batch: &Batch) -> bool {
    serde_json::from_str::<serde_json::Value>(batch.item(batch.len() - 1))
        .is_ok_and(|v| v["fields"]["status"] == "done")
}

fn entry_json(batch: &Batch) -> String {
    let mut body = String::new();
    push_message(&mut body, batch.channel(), batch.item(batch.len() - 1));
    body
}

fn json_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    set_json_headers(&mut response);
    response
}

fn set_json_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
