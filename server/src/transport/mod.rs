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

/// The server's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(sse::sse))
        .route("/poll", get(poll::poll))
        .route("/task/{id}", get(task::task))
        .route("/api/publish", post(api::publish_api))
        .route("/api/history", get(api::history))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/status", get(ops::status_page))
        .route("/status.json", get(ops::status_json))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cors::cors,
        ))
        .layer(DefaultBodyLimit::max(app.config.limits.max_frame_bytes))
        .with_state(app)
}
