//! Operator endpoints: `/healthz` (the process is up), `/readyz` (the engine answers and the
//! instance is not draining), `/metrics` (Prometheus text), and the live status page
//! `/status` with its data feed `/status.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::server::App;

/// `GET /healthz`.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 503 while draining or when the engine does not answer within 2 s.
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.core.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let probe = app.core.engine.position("redistribute:readyz");
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
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
