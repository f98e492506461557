//! Starting and serving: [`ServerBuilder`] connects the engine and builds the [`Core`] and the
//! transport, listener and drain state beside it; [`serve`] runs the listeners on a started
//! [`Server`] until its shutdown token fires, then drains.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Authorizer};
use crate::config::{AuthConfig, Config};
use crate::core_state::Core;
use crate::engine::embedded::EmbeddedEngine;
use crate::engine::redis::{RedisConfig, RedisEngine};
use crate::engine::{Engine, EngineConfig, EngineError, LiveSink};
use crate::group_dispatch::{Dispatchers, GroupConfig};
use crate::hub::Hub;
use crate::listener::{self, tls::TlsError, tls::TlsSetup, ListenerState};
use crate::transport::HttpState;

/// A running server's state: the [`Core`] requests run against, and beside it what only the
/// HTTP transports, the listeners and the drain use.
pub(crate) struct App {
    /// What every request needs.
    pub(crate) core: Arc<Core>,
    /// Held long-polls and task watches.
    pub(crate) http: HttpState,
    /// Per-IP connection counts and TLS.
    pub(crate) listener: ListenerState,
    /// Connection tasks a drain waits for.
    pub(crate) drain: Drain,
}

/// The drain machinery: on shutdown the listener waits for [`Drain::tasks`] (at most
/// `drain_timeout`), then fires [`Drain::stopped`].
pub(crate) struct Drain {
    /// Long-lived connection tasks (WebSocket, SSE, task watches) that a drain waits for.
    pub(crate) tasks: TaskTracker,
    /// Fires when the drain is over and the listener must stop accepting.
    pub(crate) stopped: CancellationToken,
    /// When the server started.
    pub(crate) started: Instant,
}

/// Why the server could not start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine (Redis) could not be reached or configured.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The JWT public key cannot be used.
    #[error("`jwt_public_key`: {0}")]
    JwtKey(#[from] auth::jwt::KeyError),
}

/// A started server: hand it to [`serve`], and publish or read history from the embedding
/// application with [`Server::publish`] and [`Server::history`]. Cloning is cheap (one
/// reference count); every clone is the same server.
#[derive(Clone)]
pub struct Server {
    pub(crate) app: Arc<App>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("engine", &self.app.core.engine.name())
            .field("instance_id", &self.app.core.instance_id)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the engine (connecting to Redis when configured) and the hub, with the default
    /// authorization policy. See [`ServerBuilder`] to replace it.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Server, StartError> {
        ServerBuilder::new(config).start(shutdown).await
    }

    /// The validated configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.app.core.config
    }

    /// A one-line description of the engine (for a startup line; Redis passwords redacted).
    pub fn engine_description(&self) -> String {
        self.app.core.engine_description()
    }

    /// Whether clients must authenticate (a JWT secret or public key is configured).
    pub fn auth_required(&self) -> bool {
        self.app.core.auth_required()
    }

    /// Whether the listener serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.app.listener.tls.is_some()
    }

    /// Re-reads the TLS certificate and key (e.g. on SIGHUP); new handshakes use them. On an
    /// error the previous certificate stays in use. Without TLS there is nothing to reload.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.app.listener.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// The token that shuts the server down (cancel it to start draining).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.app.core.shutdown
    }
}

/// Builds a [`Server`], optionally with a custom authorization hook (the Node.js package's
/// "Restricting channels and messages" handlers, see `docs/migration.md`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use redistribute_server::{Action, AuthContext, Config, Denied, ServerBuilder};
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// let server = ServerBuilder::new(Config::default())
///     .authorize(|_ctx: &AuthContext, action: Action<'_>| match action {
///         Action::Publish { channel, .. } if channel.starts_with("announcements") => {
///             Err(Denied::forbidden("announcements are read-only"))
///         }
///         _ => Ok(()),
///     })
///     .start(shutdown.clone())
///     .await?;
/// let listener = tokio::net::TcpListener::bind(server.config().listen).await?;
/// redistribute_server::serve(listener, server).await?;
/// # Ok(()) }
/// ```
pub struct ServerBuilder {
    config: Config,
    authorizer: Arc<dyn Authorizer>,
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
    pub fn authorize(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Arc::new(authorizer);
        self
    }

    /// Loads TLS and keys, connects the engine, and returns the started server (serve it with
    /// [`serve`]).
    pub async fn start(self, shutdown: CancellationToken) -> Result<Server, StartError> {
        // Install the metrics recorder before anything records.
        crate::metrics::handle();
        crate::metrics::spawn_upkeep(shutdown.clone());
        let config = self.config;
        let tls = config
            .tls
            .as_ref()
            .map(TlsSetup::load)
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
        let engine = start_engine(&config, hub.clone()).await?;
        hub.attach(&engine);
        let dispatchers = Dispatchers::new(
            engine.clone(),
            hub.clone(),
            GroupConfig {
                claim_idle: config.group_claim_idle,
                max_deliveries: config.group_max_deliveries,
            },
        );
        let instance_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ std::process::id());
        let core = Core::new(
            config,
            engine,
            hub,
            dispatchers,
            shutdown,
            instance_id,
            verifier,
            self.authorizer,
        );
        let app = App {
            core: Arc::new(core),
            http: HttpState::default(),
            listener: ListenerState {
                connections: Arc::default(),
                tls,
            },
            drain: Drain {
                tasks: TaskTracker::new(),
                stopped: CancellationToken::new(),
                started: Instant::now(),
            },
        };
        Ok(Server { app: Arc::new(app) })
    }
}

/// The embedded engine, or the Redis engine connected as configured.
async fn start_engine(config: &Config, hub: Arc<Hub>) -> Result<Arc<dyn Engine>, EngineError> {
    let sink: Arc<dyn LiveSink> = hub;
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
    Ok(match redis {
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
    })
}

/// Serves HTTP and WebSocket connections on `listener` until the server's shutdown token
/// fires, then drains: `/readyz` answers 503, WebSockets finish their in-flight publishes and
/// close with 1012 (clients resume on another instance), SSE streams and held polls end, and
/// once every connection task is done (or `drain_timeout` passed) the listener stops.
///
/// With `admin_listen` configured, the admin listener is bound here and serves the operator
/// endpoints until the public listener stops.
pub async fn serve(listener: TcpListener, server: Server) -> std::io::Result<()> {
    let app = server.app;
    let admin = match app.core.config.admin_listen {
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
            app.core.shutdown.cancelled().await;
            app.drain.tasks.close();
            if tokio::time::timeout(app.core.config.drain_timeout, app.drain.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    remaining = app.drain.tasks.len(),
                    "drain deadline passed with connections still open"
                );
            }
            // The closed connections' presence leaves reach the store before the exit.
            let flush = app.core.presence.flush();
            let _ = tokio::time::timeout(app.core.config.limits.request_timeout, flush).await;
            app.drain.stopped.cancel();
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
