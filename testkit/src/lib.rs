//! Test fixtures for redistribute's integration and end-to-end tests.
//!
//! Everything here talks to real processes over real sockets, on ports chosen at run time, and
//! every wait is bounded so a broken build fails with a message instead of hanging CI:
//!
//! - [`RedisServer`]: a throw-away `redis-server` (no persistence) on a free port, with a tiny
//!   RESP2 client ([`RespConnection`], [`RespValue`]) for setting up and inspecting Redis, e.g.
//!   counting `XREAD` calls through [`RedisServer::info_commandstats`]; or, with
//!   [`RedisServer::start_persistent`], a durable one that keeps its data across restarts.
//! - [`RedisCluster`]: a throw-away Redis Cluster (N primaries, R replicas each) on free ports,
//!   formed with `redis-cli --cluster create`, with helpers to find key owners, count
//!   connections and fail primaries over.
//! - [`ServerProcess`]: the real `redistribute` binary ([`server_binary`]) listening on a free
//!   port, ready once `GET /healthz` answers 200, its output kept for [`ServerProcess::logs`].
//! - [`WsClient`]: a JSON WebSocket client that speaks wire protocol v1 loosely (plain
//!   `serde_json::Value`s), matches replies to requests by `id` and keeps unsolicited frames.
//! - [`http_get`]: a minimal HTTP/1.1 GET for `/healthz`, `/metrics`, `/poll` and friends.
//!
//! Processes are killed when their handle is dropped, so a failing test leaves nothing behind.

mod cluster;
mod http;
mod process;
mod redis;
mod resp;
mod server;
mod ws;

use std::net::TcpListener;
use std::time::Duration;

pub use cluster::{ClusterNodeInfo, RedisCluster};
pub use http::{http_get, http_request, HttpResponse, HttpStream};
pub use redis::RedisServer;
pub use resp::{RespConnection, RespValue};
pub use server::{server_binary, ServerProcess};
pub use ws::{WsClient, WsClosed};

/// How long a single wait (a reply, a frame, a process becoming ready) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and dropping the listener, so another process may
/// grab it before the caller binds it; callers that launch servers retry with a new port when
/// that happens.
///
/// # Panics
///
/// When the loopback interface cannot be bound at all, which no test can work around.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the port just found should be free");
    }
}
