//! Operator endpoints: `/healthz` (the process is up), `/readyz` (the instance is not draining,
//! the engine answers, and its live readers deliver), `/metrics` (Prometheus text), and the live status page
//! `/status` with its data feed `/status.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::engine::LiveHealth;
use crate::server::App;

/// How long live readers may fail before `/readyz` answers 503: longer than a Redis restart or
/// failover that recovers quickly (a reader reconnects within its 2 s backoff cap and counts as
/// healthy once its `XREAD` blocks for 1 s), so readiness does not flap on a blip.
pub(crate) const LIVE_READER_GRACE: Duration = Duration::from_secs(10);

/// `GET /healthz`.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 503 while draining, when the engine does not answer within 2 s, or (the
/// engine answering) when a live reader has been failing for longer than
/// [`LIVE_READER_GRACE`].
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.core.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let probe = app.core.engine.position("redistribute:readyz");
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => match live_readers_failing(&app.core.engine.live_health(), Instant::now()) {
            Some(reason) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
            }
            None => (StatusCode::OK, "ready\n").into_response(),
        },
        Ok(Err(err)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("engine: {err}\n")).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "engine: no answer within 2 s\n",
        )
            .into_response(),
    }
}

/// The `/readyz` reason when a live reader has been failing for longer than the grace period:
/// `live readers: failing for 7 s: NOPERM …`.
fn live_readers_failing(health: &LiveHealth, now: Instant) -> Option<String> {
    let failing = health.failing_for(now)?;
    if failing <= LIVE_READER_GRACE {
        return None;
    }
    let error = health.last_error.as_deref().unwrap_or("unknown error");
    Some(format!(
        "live readers: failing for {} s: {error}",
        failing.as_secs()
    ))
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&app.core, app.listener.connections.total()),
    )
        .into_response()
}

/// `GET /status`: a self-contained page that polls `/status.json` and draws live charts.
pub(crate) async fn status_page() -> Html<&'static str> {
    Html(include_str!("assets/status.html"))
}

/// `GET /status.json`: the numbers behind the status page (totals; the page derives rates).
pub(crate) async fn status_json(State(app): State<Arc<App>>) -> Response {
    let metrics = crate::metrics::render(&app.core, app.listener.connections.total());
    let total = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let body = serde_json::json!({
        "engine": app.core.engine.name(),
        "draining": app.core.shutdown.is_cancelled(),
        "live_readers": live_readers_json(&app.core.engine.live_health()),
        "uptime_seconds": app.drain.started.elapsed().as_secs_f64(),
        "connections": app.listener.connections.total(),
        "channels": app.core.hub.channel_count(),
        "subscriptions": app.core.hub.subscriber_total(),
        "published_total": total(crate::metrics::PUBLISHED),
        "delivered_total": total(crate::metrics::DELIVERED),
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The live readers' state for `/status.json`: how many fail, for how long, the last error.
fn live_readers_json(health: &LiveHealth) -> serde_json::Value {
    let failing_for = health.failing_for(Instant::now());
    serde_json::json!({
        "failing": health.failing,
        "failing_seconds": failing_for.map(|d| d.as_secs_f64()),
        "last_error": health.last_error,
        "ready": failing_for.is_none_or(|d| d <= LIVE_READER_GRACE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_ignores_failures_within_the_grace_period() {
        let now = Instant::now();
        assert_eq!(live_readers_failing(&LiveHealth::default(), now), None);
        let health = LiveHealth {
            failing: 1,
            failing_since: Some(now),
            last_error: Some("NOPERM no xread".into()),
        };
        assert_eq!(live_readers_failing(&health, now + LIVE_READER_GRACE), None);
        let later = now + LIVE_READER_GRACE + Duration::from_secs(2);
        assert_eq!(
            live_readers_failing(&health, later).as_deref(),
            Some("live readers: failing for 12 s: NOPERM no xread")
        );
    }
}
