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
//! With a task secret configured, ids must be signed: `<id>.<hex HMAC-SHA256(secret, id)>`.
//! A request presenting a token (`Authorization: Bearer` or `token=`) must present a valid
//! one, and a watch ends at its expiry with an `unauthorized` error body ([`lifetime`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use redistribute_protocol::{validate_channel, Offset, StreamId};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::http::{presented_token, push_message, query_pairs, HttpError};
use crate::auth::lifetime;
use crate::engine::{latest_entry, Batch, Engine, EngineError, MAX_ENTRY_BYTES};
use crate::error::RequestError;
use crate::feed::{Delivery, Feed};
use crate::App;

/// Answers a task poll or watch.
pub async fn task(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let watch = pairs.iter().any(|(k, _)| k == "watch");
    // A presented token is checked, and a watch ends at its expiry.
    let expiry = match presented_token(&headers, &pairs).map(|t| app.authenticate(Some(t))) {
        Some(Ok(claims)) => lifetime::deadline(claims.as_deref()),
        Some(Err(err)) => return HttpError::from(err).into_response(),
        None => None,
    };
    match handle(app, &id, watch, expiry).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(
    app: Arc<App>,
    id: &str,
    watch: bool,
    expiry: Option<tokio::time::Instant>,
) -> Result<Response, HttpError> {
    let task_id = verify(id, app.config.http.task_secret.as_deref())?;
    let channel: Arc<str> = Arc::from(format!("task:{task_id}"));
    validate_channel(&channel).map_err(|e| HttpError::bad_request(e.to_string()))?;
    if !watch {
        let latest = latest_entry(&*app.engine, &channel)
            .await
            .map_err(RequestError::from)?;
        return match latest {
            Some(batch) => Ok(json_response(entry_json(&batch))),
            None => Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("task {task_id:?} has no status yet"),
            )),
        };
    }
    // Subscribe first, then look at the newest entry as of the subscription's start: an
    // update published at any moment is either that entry or delivered by the feed, so a
    // `done` racing the watch is never missed.
    let mut feed = Feed::new(app.clone(), "task");
    let start = feed.subscribe(&channel, Offset::Latest).await?;
    let newest = entry_at(&*app.engine, &channel, start.after)
        .await
        .map_err(RequestError::from)?;
    if let Some(batch) = newest.as_ref().filter(|b| is_done(b)) {
        return Ok(json_response(entry_json(batch)));
    }
    let holder = app.task_watches.claim(task_id.to_owned());
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(2);
    let keepalive = app.config.http.task_keepalive;
    let tasks = app.tasks.clone();
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
                () = app.shutdown.cancelled() => {
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

/// Checks the id's signature when a secret is configured; returns the bare id.
fn verify<'a>(id: &'a str, secret: Option<&str>) -> Result<&'a str, HttpError> {
    let Some(secret) = secret else {
        return Ok(id);
    };
    let forbidden = || {
        HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "task id must be signed: <id>.<hex HMAC-SHA256(secret, id)>",
        )
    };
    let (bare, signature) = id.rsplit_once('.').ok_or_else(forbidden)?;
    let signature = hex::decode(signature).map_err(|_| forbidden())?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(bare.as_bytes());
    mac.verify_slice(&signature).map_err(|_| forbidden())?;
    Ok(bare)
}

/// Signs a task id with the secret (for back-ends that create tasks, and for tests).
pub fn sign_task_id(id: &str, secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    format!("{id}.{}", hex::encode(mac.finalize().into_bytes()))
}

/// The entry with offset `id`, if the channel still holds it.
async fn entry_at(
    engine: &dyn Engine,
    channel: &Arc<str>,
    id: StreamId,
) -> Result<Option<Batch>, EngineError> {
    let Some(before) = id.predecessor() else {
        return Ok(None);
    };
    let page = engine.read(channel, before, 1, MAX_ENTRY_BYTES).await?;
    Ok(page.batch.filter(|b| b.first_id() == id))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let secret = "0123456789abcdef";
        let signed = sign_task_id("job-7", secret);
        assert_eq!(verify(&signed, Some(secret)).unwrap(), "job-7");
        assert!(verify("job-7", Some(secret)).is_err());
        assert!(verify("job-7.00ff", Some(secret)).is_err());
        assert!(verify(
            &sign_task_id("job-8", secret).replace("job-8", "job-7"),
            Some(secret)
        )
        .is_err());
        assert_eq!(verify("anything", None).unwrap(), "anything");
    }
}
