//! `GET /ws`: upgrades to a WebSocket speaking protocol v1 (see [`crate::conn`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::response::Response;

use super::ws_connection::serve_websocket;
use crate::App;

/// Read buffer per connection: small, since tungstenite's 128 KiB default is allocated for every
/// connection (it grows on demand for larger frames).
const READ_BUFFER: usize = 4 * 1024;

/// Frames are collected up to this many bytes before a write to the socket (an explicit flush
/// follows every drain of the live queue). While the socket cannot take more, the connection
/// waits instead of buffering further.
const WRITE_BUFFER: usize = 32 * 1024;

/// Handles the upgrade request.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = app.config.limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve_websocket(socket, app, peer))
}
