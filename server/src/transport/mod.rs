//! HTTP routing and the transports served on the listener.

pub mod ws;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::App;

/// The server's routes: `/ws`, `/healthz`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}
