//! The redistribute server: WebSocket, SSE and long-poll fan-out of channels stored as Redis
//! Streams (or in the embedded engine), as a library to embed in your own program.
//!
//! # Embedding
//!
//! Build a [`Config`] (from [`ConfigValues`], the same keys as the `redistribute` command's
//! flags and TOML file), start a [`Server`] with [`Server::start`] or a [`ServerBuilder`]
//! (which takes your own authorization hook, an [`Authorizer`]), and run it on a listener with
//! [`serve`] until its shutdown token fires. From the application, [`Server::publish`] appends
//! a message that every subscriber receives, and [`Server::history`] reads a channel's stored
//! messages; both return an [`ApiError`] with the wire error code when refused.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use redistribute_server::{serve, ConfigValues, Fields, Offset, PublishOptions, Server};
//! let config = ConfigValues {
//!     listen: Some("127.0.0.1:8080".into()),
//!     ..ConfigValues::default()
//! }
//! .build()?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let server = Server::start(config, shutdown.clone()).await?;
//! let listener = tokio::net::TcpListener::bind(server.config().listen).await?;
//! tokio::spawn(serve(listener, server.clone()));
//!
//! let mut fields = Fields::new();
//! fields.insert("text".into(), "hello".into());
//! let offset = server.publish("chat", fields, PublishOptions::default()).await?;
//! let page = server.history("chat", Offset::Earliest, 100).await?;
//! assert_eq!(page.messages.last().map(|m| m.offset), Some(offset));
//! shutdown.cancel();
//! # Ok(()) }
//! ```
//!
//! Everything else is internal (`docs/` in the repository describes the protocol, HTTP
//! transports and operations).

#![warn(unreachable_pub)]
// The lints are enforced with the `internals` feature on, as the workspace builds (the tests and
// benchmarks enable it): without it, the items only [`internals`] exposes would be reported as
// unreachable or unused.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub, dead_code))]

mod auth;
mod config;
mod core_state;
mod embed;
mod engine;
mod error;
mod feed;
mod group_dispatch;
mod hub;
mod limits;
mod listener;
mod message;
mod metrics;
mod presence;
mod request;
mod server;
mod transport;

pub use auth::jwt::KeyError;
pub use auth::{Action, AuthContext, Authorizer, Claims, ClaimsPolicy, Credential, Denied};
pub use config::{
    AuthConfig, Config, ConfigError, ConfigValues, HttpConfig, Limits, LogFormat, RedisUrl, Secret,
    TlsFiles,
};
pub use embed::{ApiError, HistoryPage, Message, PublishOptions};
pub use engine::redis::LiveReaders;
pub use engine::retention::Retention;
pub use listener::proxy::TrustedProxies;
pub use listener::tls::TlsError;
pub use presence::PresenceConfig;
pub use redistribute_protocol::{ErrorCode, Fields, Offset, StreamId};
pub use server::{serve, Server, ServerBuilder, StartError};
pub use transport::task::sign_task_id;

/// How channels map to Redis keys (`docs/deployment.md`, Redis Cluster), for producers that
/// write into redistribute's streams directly and must build the same key.
pub mod redis_keys {
    pub use crate::engine::redis::keys::{fnv1a32, shard_of, stream_key, DEFAULT_SHARDS};
}

/// The server's internals, for the workspace's own engine conformance and feed model tests and
/// the benchmarks (`cargo bench -p redistribute-server`): the storage engines, the hub, the
/// feed and the route table. Only with the non-default feature `internals`; no stability
/// promise of any kind. Embedders use the items at the crate root.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::core_state::Core;
    pub use crate::engine::embedded::EmbeddedEngine;
    pub use crate::engine::redis::{LiveReaders, RedisConfig, RedisEngine};
    pub use crate::engine::{
        Batch, BatchBuilder, Engine, EngineConfig, GroupRead, GroupTurn, LiveHealth, LiveSink,
        Page, PublishRequest, Ready, MAX_BATCH_BYTES, MAX_ENTRY_BYTES, MAX_TRIM_PER_PUBLISH,
    };
    pub use crate::feed::{Delivery, Feed, Frame, Outbound, Start};
    pub use crate::group_dispatch::claim_idle;
    pub use crate::hub::{Hub, LiveQueue, LiveQueueReceiver, Subscriber, SubscriberShared};
    pub use crate::presence::store::{Bounds, Changes, MemoryStore, PresenceStore};
    pub use crate::request::Access;
    pub use crate::transport::http::Holders;
    pub use crate::transport::routes::{routes, Method, Route};
    pub use crate::transport::ws_connection::websocket_text;

    impl crate::Server {
        /// The state requests run against (to drive a [`Feed`] directly).
        pub fn core(&self) -> &std::sync::Arc<Core> {
            &self.app.core
        }

        /// Who holds each long-poll `client_id`.
        pub fn poll_holders(&self) -> &std::sync::Arc<Holders> {
            &self.app.http.poll_holders
        }
    }
}
