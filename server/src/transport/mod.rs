//! HTTP routing and the transports served on the listener: WebSocket (`/ws`), SSE (`/sse`),
//! long-polling (`/poll`), task status (`/task/<id>`), the back-end API (`/api/…`) and health.

pub(crate) mod api;
pub(crate) mod cors;
pub(crate) mod http;
pub(crate) mod ops;
pub(crate) mod poll;
pub(crate) mod routes;
pub(crate) mod sse;
pub(crate) mod task;
pub(crate) mod ws;
pub(crate) mod ws_connection;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use crate::server::App;

/// The server's routes on the public listener ([`routes`]), behind CORS and the body limit.
/// With an admin listener configured, `/metrics` and `/status*` are left out (served by
/// [`ops_router`] only); `/readyz` stays for load balancers.
pub(crate) fn router(app: Arc<App>) -> Router {
    let with_ops = app.core.config.admin_listen.is_none();
    let mut entries = routes::app_routes();
    entries.extend(
        routes::ops_routes()
            .into_iter()
            .filter(|e| with_ops || e.route.access == crate::request::Access::Public),
    );
    routes::build(&app, entries)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cors::cors,
        ))
        .layer(DefaultBodyLimit::max(
            app.core.config.limits.max_frame_bytes,
        ))
        .with_state(app)
}

/// The admin listener's routes: health, readiness, metrics and the status page, without
/// credentials (the admin listener is bound to a private interface; `docs/operations.md`).
pub(crate) fn ops_router(app: Arc<App>) -> Router {
    routes::build(&app, routes::admin_routes()).with_state(app)
}

/// State of the HTTP transports: who holds each long-poll `client_id` and each task watch.
#[derive(Debug, Default)]
pub(crate) struct HttpState {
    /// Long-polls holding a `client_id`.
    pub poll_holders: Arc<http::Holders>,
    /// Task watches holding a task id.
    pub task_watches: Arc<http::Holders>,
}
