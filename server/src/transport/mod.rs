//! HTTP routing and the transports served on the listener: WebSocket (`/ws`), SSE (`/sse`),
//! long-polling (`/poll`), task status (`/task/<id>`), the back-end API (`/api/…`) and health.

pub mod api;
pub mod cors;
pub mod http;
pub mod ops;
pub mod poll;
pub mod routes;
pub mod sse;
pub mod task;
pub mod ws;
pub mod ws_connection;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::App;

/// The server's routes ([`routes`]), behind CORS and the body limit.
pub fn router(app: Arc<App>) -> Router {
    let mut entries = routes::app_routes();
    entries.extend(routes::ops_routes());
    routes::build(&app, entries)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cors::cors,
        ))
        .layer(DefaultBodyLimit::max(app.config.limits.max_frame_bytes))
        .with_state(app)
}
