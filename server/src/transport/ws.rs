//! `GET /ws`: upgrades to a WebSocket speaking protocol v1 (see [`super::ws_connection`]).

use std::sync::Arc;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::http::HttpError;
use super::ws_connection::serve_websocket;
use crate::auth::AuthContext;
use crate::listener::IpSlot;
use crate::server::App;

/// Read buffer per connection: small, since tungstenite allocates it for every connection when
/// it is created and keeps it (128 KiB by default; it grows on demand for larger frames). It
/// also caps one read from the socket, so a client's frames of a few hundred bytes take a read
/// or two each, which costs little next to fan-out: client frames are requests, rare beside
/// deliveries. 4 KiB → 1 KiB took idle RSS from 13.2 to 10 KiB per connection; 256 bytes saves
/// another 0.75 KiB (`loadgen s3`, BENCHMARKS.md).
const READ_BUFFER: usize = 256;

/// Frames are collected up to this many bytes before a write to the socket (an explicit flush
/// follows every drain of the live queue). While the socket cannot take more, the connection
/// waits instead of buffering further.
const WRITE_BUFFER: usize = 32 * 1024;

/// Handles the upgrade request: refuses browser origins outside the allow-list (cross-site
/// WebSocket hijacking) with 403. The route's guard has already refused a bad
/// `Authorization: Bearer` token with 401.
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<AuthContext>,
    slot: Option<Extension<Arc<IpSlot>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if app.core.shutdown.is_cancelled() {
        return HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this instance is draining; connect to another one",
        )
        .into_response();
    }
    let allowed = &app.core.config.http.allowed_origins;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = allowed.is_empty()
            || origin
                .to_str()
                .is_ok_and(|o| super::cors::origin_allowed(o, allowed));
        if !ok {
            return HttpError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this origin may not open WebSockets here",
            )
            .into_response();
        }
    }
    let max = app.core.config.limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tasks = app.drain.tasks.clone();
            // The slot keeps counting against the per-IP limit while the WebSocket lives.
            let slot = slot.map(|Extension(slot)| slot);
            tasks.track_future(serve_websocket(socket, app, caller, slot))
        })
}
