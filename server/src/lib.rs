//! The redistribute server: WebSocket fan-out of channels stored as Redis Streams (or in the
//! embedded engine).
//!
//! [`App::start`] builds the engine and hub from a [`Config`]; [`serve`] runs the HTTP listener
//! until a shutdown token fires. `main.rs` only parses flags and wires signals.

pub mod config;
pub mod engine;
pub mod error;
pub mod feed;
pub mod hub;
pub mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ConfigError, ConfigValues, HttpConfig, Limits};
use engine::embedded::EmbeddedEngine;
use engine::redis::{RedisConfig, RedisEngine};
use engine::{Engine, EngineConfig, EngineError, LiveSink};
use hub::Hub;

/// A running server's shared state.
pub struct App {
    /// Validated configuration.
    pub config: Config,
    /// The storage engine.
    pub engine: Arc<dyn Engine>,
    /// Local subscribers and fan-out.
    pub hub: Arc<Hub>,
    /// Fires when the server is shutting down.
    pub shutdown: CancellationToken,
    /// Random id of this instance (in client ids, for support).
    pub instance_id: u32,
    /// Long-polls holding a `client_id`.
    pub poll_holders: Arc<transport::http::Holders>,
    /// Task watches holding a task id.
    pub task_watches: Arc<transport::http::Holders>,
    next_connection: AtomicU64,
}

impl App {
    /// Builds the engine (connecting to Redis when configured) and the hub.
    pub async fn start(
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<App>, EngineError> {
        let hub = Hub::new();
        let sink: Arc<dyn LiveSink> = hub.clone();
        let engine_config = EngineConfig {
            idempotency_ttl: config.idempotency_ttl,
            ..EngineConfig::default()
        };
        let engine: Arc<dyn Engine> = match &config.redis {
            None => EmbeddedEngine::start(sink, engine_config),
            Some(url) => {
                let mut redis = RedisConfig::new(url.clone());
                redis.prefix = config.prefix.clone();
                redis.block = config.redis_block;
                redis.keys_per_reader = config.redis_keys_per_reader;
                redis.command_timeout = config.limits.request_timeout;
                redis.engine = engine_config;
                RedisEngine::connect(redis, sink).await?
            }
        };
        hub.attach(&engine);
        let instance_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ std::process::id());
        Ok(Arc::new(App {
            config,
            engine,
            hub,
            shutdown,
            instance_id,
            poll_holders: Arc::default(),
            task_watches: Arc::default(),
            next_connection: AtomicU64::new(1),
        }))
    }

    /// A new connection id, unique within this instance.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// A one-line description of the engine for the startup line.
    pub fn engine_description(&self) -> String {
        match &self.config.redis {
            Some(url) => format!("redis at {url}"),
            None => "embedded (in-memory; set --redis to share channels between instances)".into(),
        }
    }
}

/// Serves HTTP and WebSocket connections on `listener` until `app.shutdown` fires.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let shutdown = app.shutdown.clone();
    let router = transport::router(app);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
