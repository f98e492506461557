//! [`Core`]: what every request needs, whatever transport it came by — the validated
//! configuration, the engine, the hub, the consumer-group dispatchers, the authorization policy
//! and token verifier, the instance id and the shutdown token.
//!
//! The request layer ([`crate::request`]) and the feeds ([`crate::feed`]) see only this; the
//! state of one transport (held long-polls, task watches), of the listener (per-IP counts, TLS)
//! and of the drain live beside it in [`crate::server::App`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::{self, Action, AuthContext, Claims, Denied};
use crate::config::{self, Config};
use crate::engine::Engine;
use crate::error::RequestError;
use crate::group_dispatch::Dispatchers;
use crate::hub::Hub;
use crate::presence::Presence;

/// The state requests run against (see the module docs).
pub struct Core {
    /// Validated configuration.
    pub config: Config,
    /// The storage engine.
    pub engine: Arc<dyn Engine>,
    /// Local subscribers and fan-out.
    pub hub: Arc<Hub>,
    /// Consumer-group dispatchers, one per (channel, group) served here.
    pub dispatchers: Arc<Dispatchers>,
    /// Fires when the server is shutting down.
    pub shutdown: CancellationToken,
    /// Random id of this instance (in client ids, for support).
    pub instance_id: u32,
    /// Token verifier, when authentication is on.
    pub verifier: Option<auth::Verifier>,
    /// The subscribe/publish policy.
    pub authorizer: Arc<dyn auth::Authorizer>,
    /// Presence members of this instance and their events.
    pub(crate) presence: Arc<Presence>,
    next_connection: AtomicU64,
}

impl Core {
    /// A core over a started engine and hub.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        engine: Arc<dyn Engine>,
        hub: Arc<Hub>,
        dispatchers: Arc<Dispatchers>,
        shutdown: CancellationToken,
        instance_id: u32,
        verifier: Option<auth::Verifier>,
        authorizer: Arc<dyn auth::Authorizer>,
    ) -> Core {
        let presence = Presence::start(
            config.presence.clone(),
            engine.presence_store(),
            config.limits.request_timeout,
        );
        Core {
            presence,
            config,
            engine,
            hub,
            dispatchers,
            shutdown,
            instance_id,
            verifier,
            authorizer,
            next_connection: AtomicU64::new(1),
        }
    }

    /// Verifies a client's token: `Ok(None)` when authentication is off, the claims when the
    /// token is valid, `unauthorized` otherwise (also when it is missing but required).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Arc<Claims>>, RequestError> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let Some(token) = token else {
            return Err(RequestError::new(
                redistribute_protocol::ErrorCode::Unauthorized,
                "a token is required: send it in the connect frame or an Authorization header",
            ));
        };
        verifier
            .verify(token)
            .map(|c| Some(Arc::new(c)))
            .map_err(|e| {
                ::metrics::counter!(crate::metrics::AUTH_FAILURES).increment(1);
                RequestError::new(
                    redistribute_protocol::ErrorCode::Unauthorized,
                    e.to_string(),
                )
            })
    }

    /// Whether `ctx` may create `channel` when it does not exist ([`Action::Create`]).
    pub fn may_create(&self, ctx: &AuthContext, channel: &str) -> Result<(), Denied> {
        self.authorizer.authorize(ctx, Action::Create { channel })
    }

    /// Whether clients must authenticate.
    pub fn auth_required(&self) -> bool {
        self.verifier.is_some()
    }

    /// A new connection id, unique within this instance.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// The client id of connection `conn`, as `connected` tells the client and presence shows.
    pub fn client_id(&self, conn: u64) -> String {
        format!("{:x}-{conn}", self.instance_id)
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
