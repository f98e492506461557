//! The redistribute server: WebSocket fan-out of channels stored as Redis Streams (or in the
//! embedded engine).
//!
//! [`App::start`] builds the engine and hub from a [`Config`]; [`serve`] runs the HTTP listener
//! until a shutdown token fires. `main.rs` only parses flags and wires signals.

pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod feed;
pub mod groups;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod request;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{
    AuthConfig, Config, ConfigError, ConfigValues, HttpConfig, Limits, LogFormat, TlsFiles,
};
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
    /// Consumer-group pollers.
    pub groups: Arc<groups::Groups>,
    /// Fires when the server is shutting down.
    pub shutdown: CancellationToken,
    /// Random id of this instance (in client ids, for support).
    pub instance_id: u32,
    /// Long-polls holding a `client_id`.
    pub poll_holders: Arc<transport::http::Holders>,
    /// Task watches holding a task id.
    pub task_watches: Arc<transport::http::Holders>,
    /// TLS settings, when the listener serves TLS.
    pub tls: Option<Arc<listener::tls::TlsSetup>>,
    /// Token verifier, when authentication is on.
    pub verifier: Option<auth::Verifier>,
    /// The subscribe/publish policy.
    pub authorizer: Arc<dyn auth::Authorizer>,
    /// Open connections per client IP.
    pub connections: Arc<listener::PerIp>,
    /// Long-lived connection tasks (WebSocket, SSE, task watches) that a drain waits for.
    pub tasks: tokio_util::task::TaskTracker,
    /// Fires when the drain is over and the listener must stop accepting.
    pub stopped: CancellationToken,
    /// When the app started.
    pub started: std::time::Instant,
    next_connection: AtomicU64,
}

impl App {
    /// Builds the engine (connecting to Redis when configured) and the hub, with the default
    /// authorization policy. See [`ServerBuilder`] to replace it.
    pub async fn start(
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<App>, StartError> {
        ServerBuilder::new(config).start(shutdown).await
    }

    /// Verifies a client's token: `Ok(None)` when authentication is off, the claims when the
    /// token is valid, `unauthorized` otherwise (also when it is missing but required).
    pub fn authenticate(
        &self,
        token: Option<&str>,
    ) -> Result<Option<Arc<auth::Claims>>, error::RequestError> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let Some(token) = token else {
            return Err(error::RequestError::new(
                redistribute_protocol::ErrorCode::Unauthorized,
                "a token is required: send it in the connect frame or an Authorization header",
            ));
        };
        verifier
            .verify(token)
            .map(|c| Some(Arc::new(c)))
            .map_err(|e| {
                ::metrics::counter!(metrics::AUTH_FAILURES).increment(1);
                error::RequestError::new(
                    redistribute_protocol::ErrorCode::Unauthorized,
                    e.to_string(),
                )
            })
    }

    /// Whether `ctx` may create `channel` when it does not exist ([`auth::Action::Create`]).
    pub fn may_create(&self, ctx: &auth::AuthContext, channel: &str) -> Result<(), auth::Denied> {
        self.authorizer
            .authorize(ctx, auth::Action::Create { channel })
    }

    /// Whether clients must authenticate.
    pub fn auth_required(&self) -> bool {
        self.verifier.is_some()
    }

    /// A new connection id, unique within this instance.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// A one-line description of the engine for the startup line.
    pub fn engine_description(&self) -> String {
        if !self.config.redis_cluster.is_empty() {
            return format!(
                "redis cluster via {} ({} shards)",
                self.config
                    .redis_cluster
                    .iter()
                    .map(config::RedisUrl::redacted)
                    .collect::<Vec<_>>()
                    .join(", "),
                self.config.redis_shards
            );
        }
        match &self.config.redis {
            Some(url) => format!("redis at {url}"),
            None => "embedded (in-memory; set --redis to share channels between instances)".into(),
        }
    }
}

/// Why the server could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine (Redis) could not be reached or configured.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] listener::tls::TlsError),
    /// The JWT public key cannot be used.
    #[error("`jwt_public_key`: {0}")]
    JwtKey(#[from] auth::jwt::KeyError),
}

/// Builds an [`App`], optionally with a custom authorization hook (the Node.js package's
/// "Restricting channels and messages" handlers, see `docs/migration.md`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use redistribute_server::auth::{Action, Denied};
/// use redistribute_server::{Config, ServerBuilder};
/// let app = ServerBuilder::new(Config::default())
///     .authorize(|_ctx: &redistribute_server::auth::AuthContext, action: Action<'_>| match action {
///         Action::Publish { channel, .. } if channel.starts_with("announcements") => {
///             Err(Denied::forbidden("announcements are read-only"))
///         }
///         _ => Ok(()),
///     })
///     .start(tokio_util::sync::CancellationToken::new())
///     .await?;
/// # Ok(()) }
/// ```
pub struct ServerBuilder {
    config: Config,
    authorizer: Arc<dyn auth::Authorizer>,
}

impl ServerBuilder {
    /// A builder with the default policy ([`auth::ClaimsPolicy`]).
    pub fn new(config: Config) -> Self {
        ServerBuilder {
            config,
            authorizer: Arc::new(auth::ClaimsPolicy),
        }
    }

    /// Replaces the subscribe/publish policy.
    pub fn authorize(mut self, authorizer: impl auth::Authorizer) -> Self {
        self.authorizer = Arc::new(authorizer);
        self
    }

    /// Loads TLS and keys, connects the engine, and returns the running app.
    pub async fn start(self, shutdown: CancellationToken) -> Result<Arc<App>, StartError> {
        // Install the metrics recorder before anything records.
        metrics::handle();
        metrics::spawn_upkeep(shutdown.clone());
        let config = self.config;
        let tls = config
            .tls
            .as_ref()
            .map(listener::tls::TlsSetup::load)
            .transpose()?
            .map(Arc::new);
        let verifier = match &config.auth {
            AuthConfig::Open => None,
            AuthConfig::JwtSecret(secret) => {
                Some(auth::Verifier::hs256(secret.expose().as_bytes()))
            }
            AuthConfig::JwtPublicKey(path) => Some(auth::Verifier::from_public_key_file(
                &path.display().to_string(),
            )?),
        };
        let hub = Hub::new();
        let sink: Arc<dyn LiveSink> = hub.clone();
        let engine_config = EngineConfig {
            idempotency_ttl: config.idempotency_ttl,
            retention: Arc::new(config.retention.clone()),
            ..EngineConfig::default()
        };
        let redis = if config.redis_cluster.is_empty() {
            config.redis.clone().map(RedisConfig::new)
        } else {
            let mut redis = RedisConfig::cluster(config.redis_cluster.iter().cloned());
            if let Some(cluster) = &mut redis.cluster {
                cluster.shards = config.redis_shards;
            }
            Some(redis)
        };
        let engine: Arc<dyn Engine> = match redis {
            None => EmbeddedEngine::start(sink, engine_config),
            Some(mut redis) => {
                redis.wait_replicas = config.redis_wait_replicas;
                redis.wait_timeout = config.redis_wait_timeout;
                redis.prefix = config.prefix.clone();
                redis.block = config.redis_block;
                redis.keys_per_reader = config.redis_keys_per_reader;
                redis.live = config.redis_live_readers;
                redis.log_maxlen = config.redis_log_maxlen;
                redis.command_timeout = config.limits.request_timeout;
                redis.engine = engine_config;
                RedisEngine::connect(redis, sink).await?
            }
        };
        hub.attach(&engine);
        let groups = groups::Groups::new(
            engine.clone(),
            hub.clone(),
            groups::GroupConfig {
                claim_idle: config.group_claim_idle,
                max_deliveries: config.group_max_deliveries,
            },
        );
        let instance_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ std::process::id());
        Ok(Arc::new(App {
            config,
            engine,
            hub,
            groups,
            shutdown,
            instance_id,
            poll_holders: Arc::default(),
            task_watches: Arc::default(),
            tls,
            verifier,
            authorizer: self.authorizer,
            connections: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            stopped: CancellationToken::new(),
            started: std::time::Instant::now(),
            next_connection: AtomicU64::new(1),
        }))
    }
}

/// Serves HTTP and WebSocket connections on `listener` until `app.shutdown` fires, then
/// drains: `/readyz` answers 503, WebSockets finish their in-flight publishes and close with
/// 1012 (clients resume on another instance), SSE streams and held polls end, and once every
/// connection task is done (or `drain_timeout` passed) the listener stops.
///
/// With `admin_listen` configured, the admin listener is bound here and serves the operator
/// endpoints until the public listener stops.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let admin = match app.config.admin_listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (`admin_listen`): {e}"),
            )
        })?),
    };
    let drain = {
        let app = app.clone();
        async move {
            app.shutdown.cancelled().await;
            app.tasks.close();
            if tokio::time::timeout(app.config.drain_timeout, app.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    remaining = app.tasks.len(),
                    "drain deadline passed with connections still open"
                );
            }
            app.stopped.cancel();
        }
    };
    let admin = async {
        match admin {
            Some(admin) => listener::serve_admin(admin, app.clone()).await,
            None => Ok(()),
        }
    };
    let (result, admin, ()) = tokio::join!(listener::serve(listener, app.clone()), admin, drain);
    result.and(admin)
}
