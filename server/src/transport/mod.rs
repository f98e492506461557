//! HTTP routing and the transports served on the listener: WebSocket (`/ws`), SSE (`/sse`),
//! long-polling (`/poll`), task status (`/task/<id>`), the back-end API (`/api/…`) and health.

pub mod api;
pub mod cors;
pub mod http;
pub mod ops;
pub mod poll;
pub mod sse;
pub mod task;
pub mod ws;
pub mod ws_connection;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::App;

/// The server's routes on the public listener. With an admin listener configured,
/// `/metrics` and `/status*` are left out (served by [`ops_router`] only).
pub fn router(app: Arc<App>) -> Router {
    let with_ops = app.config.admin_listen.is_none();
    let router = Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(sse::sse))
        .route("/poll", get(poll::poll))
        .route("/task/{id}", get(task::task))
        .route("/api/publish", post(api::publish_api))
        .route("/api/history", get(api::history))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    let router = if with_ops {
        router.merge(ops_routes())
    } else {
        router
    };
    router
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cors::cors,
        ))
        .layer(DefaultBodyLimit::max(app.config.limits.max_frame_bytes))
        .with_state(app)
}

/// `/metrics`, `/status` and `/status.json`.
fn ops_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/status", get(ops::status_page))
        .route("/status.json", get(ops::status_json))
}

/// The admin listener's routes: health, readiness, metrics and the status page.
pub fn ops_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .merge(ops_routes())
        .with_state(app)
}
