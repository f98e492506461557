//! Server configuration: a plain struct with documented units and defaults, built from
//! command-line flags, `REDISTRIBUTE_*` environment variables and a TOML file (flags win over
//! the environment, which wins over the file), and validated with errors that name the key.
//!
//! This module owns the validated [`Config`]; [`values`] owns the raw [`ConfigValues`] as given
//! by flags, environment or file, their merging and their validation.

mod print;
mod secret;
mod values;

pub(crate) use secret::redact_url;
pub use secret::RedisUrl;
pub use secret::Secret;
pub(crate) use secret::REDACTED;
pub use values::ConfigValues;

use crate::engine::retention::Retention;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::listener::proxy::TrustedProxies;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest inbound frame in bytes (default 1 MiB); larger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Most subscriptions per connection (default 1,000).
    pub max_subscriptions: usize,
    /// Capacity of a connection's live queue, in batches (default 1,024). When it is full the
    /// subscription switches to catch-up reads instead of growing memory.
    pub queue_batches: usize,
    /// Capacity of a connection's live queue in encoded bytes (default 4 MiB); like
    /// `queue_batches`, a full queue switches the subscription to catch-up reads.
    pub queue_bytes: usize,
    /// Consecutive bad frames tolerated before closing with 1008 (default 20).
    pub max_bad_frames: u32,
    /// How long a request may wait on the engine before answering `unavailable` (default 5 s).
    pub request_timeout: Duration,
    /// Entries per catch-up (history) read (default 500).
    pub catch_up_page: usize,
    /// Most simultaneous connections from one IP address (default 10,000).
    pub max_connections_per_ip: usize,
    /// Publishes per second per connection (default 1,000), with bursts of `publish_burst`.
    pub publish_rate: u32,
    /// Burst size of the publish rate limit (default 2,000).
    pub publish_burst: u32,
    /// Subscribes per second per connection (default 1,000), with bursts of `subscribe_burst`.
    pub subscribe_rate: u32,
    /// Burst size of the subscribe rate limit (default 1,000).
    pub subscribe_burst: u32,
    /// Time to finish the TLS handshake, the HTTP request head and, with auth on, the
    /// `connect` frame (default 10 s).
    pub handshake_timeout: Duration,
    /// Idle WebSocket connections are pinged this often and dropped after two pings go
    /// unanswered (default 25 s).
    pub ws_ping_interval: Duration,
    /// Largest HTTP request head (request line and headers) in bytes (default 32 KiB); a
    /// larger one is answered `431 Request Header Fields Too Large` and the connection closed.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_subscriptions: 1_000,
            queue_batches: 1_024,
            queue_bytes: 4 << 20,
            max_bad_frames: 20,
            request_timeout: Duration::from_secs(5),
            catch_up_page: 500,
            max_connections_per_ip: 10_000,
            publish_rate: 1_000,
            publish_burst: 2_000,
            subscribe_rate: 1_000,
            subscribe_burst: 1_000,
            handshake_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(25),
            max_header_bytes: 32 * 1024,
        }
    }
}

/// Settings of the HTTP transports and back-end API.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Browser origins allowed to call the HTTP transports (CORS); `*` allows any. Empty: no
    /// cross-origin access.
    pub allowed_origins: Vec<String>,
    /// Whether `/poll` answers JSONP (`callback=`) (default off).
    pub jsonp: bool,
    /// API keys for `/api/*` (and, with authentication on, `/metrics` and `/status`); empty
    /// leaves the API open, which with authentication on needs [`HttpConfig::allow_open_api`].
    pub api_keys: Vec<Secret>,
    /// Serve the back-end API (and operator pages) without API keys although client
    /// authentication is on; without it such a configuration is refused.
    pub allow_open_api: bool,
    /// Secret for signed task ids (`<id>.<hex HMAC-SHA256(secret, id)>`); `None` accepts any id.
    pub task_secret: Option<Secret>,
    /// Interval of SSE comment heartbeats (default 15 s).
    pub sse_heartbeat: Duration,
    /// Default long-poll hold time when the request names none (default 25 s).
    pub poll_timeout: Duration,
    /// Longest long-poll hold time a request may ask for (default 120 s).
    pub poll_max_timeout: Duration,
    /// Newline keepalive interval of task watches; `None` disables it (default 10 s).
    pub task_keepalive: Option<Duration>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            jsonp: false,
            api_keys: Vec::new(),
            allow_open_api: false,
            task_secret: None,
            sse_heartbeat: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(25),
            poll_max_timeout: Duration::from_secs(120),
            task_keepalive: Some(Duration::from_secs(10)),
        }
    }
}

/// Where the TLS certificate chain and key are (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How clients authenticate.
#[derive(Debug, Clone, Default)]
pub enum AuthConfig {
    /// No authentication: every client may do everything (development).
    #[default]
    Open,
    /// HS256 tokens signed with this secret.
    JwtSecret(Secret),
    /// RS256 or ES256 tokens verified with the public key in this PEM file.
    JwtPublicKey(PathBuf),
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Redis URL; `None` (and no `redis_cluster`) runs the embedded engine.
    pub redis: Option<RedisUrl>,
    /// Redis Cluster seed node URLs; non-empty runs the Redis engine in cluster mode (exclusive
    /// with `redis`).
    pub redis_cluster: Vec<RedisUrl>,
    /// Shards channels are spread over in cluster mode, one hash tag each (default 16).
    pub redis_shards: u16,
    /// Replicas that must confirm a publish (`WAIT`) before it is acknowledged (default 0).
    pub redis_wait_replicas: u32,
    /// How long a publish waits for those replicas (default 1 s).
    pub redis_wait_timeout: Duration,
    /// Prefix of stream keys in Redis (default `rd:`).
    pub prefix: String,
    /// How long a Redis reader blocks in `XREAD` (default 10 s).
    pub redis_block: Duration,
    /// Most channels per Redis reader connection (default 256; per-channel readers only).
    pub redis_keys_per_reader: usize,
    /// Where the Redis live feed reads new entries (default: the channels' own streams).
    pub redis_live_readers: crate::engine::redis::LiveReaders,
    /// About how many entries each Redis shard log keeps (default 10,000).
    pub redis_log_maxlen: u64,
    /// How long idempotency keys are remembered (default 600 s).
    pub idempotency_ttl: Duration,
    /// Consumer-group entries left unacknowledged this long are reassigned to another live
    /// consumer (`XAUTOCLAIM` min-idle-time; default 30 s).
    pub group_claim_idle: Duration,
    /// An entry delivered more than this many times goes to `<channel>:dead` instead of being
    /// delivered again (default 5).
    pub group_max_deliveries: u64,
    /// How long channels keep their entries: per channel pattern and by default, and the
    /// lowest `maxlen` a publisher may ask for.
    pub retention: Retention,
    /// Per-connection limits.
    pub limits: Limits,
    /// HTTP transports and API.
    pub http: HttpConfig,
    /// TLS on the listener, if configured.
    pub tls: Option<TlsFiles>,
    /// Client authentication.
    pub auth: AuthConfig,
    /// How long a drain (SIGTERM) may take before the process exits anyway (default 10 s).
    pub drain_timeout: Duration,
    /// Log format: human-readable text (default) or JSON lines.
    pub log_format: LogFormat,
    /// Address of the admin listener (plain HTTP) serving `/metrics`, `/status`,
    /// `/status.json`, `/readyz` and `/healthz`; when set, `/metrics` and `/status*` are not
    /// served on `listen` (default none: everything on `listen`).
    pub admin_listen: Option<SocketAddr>,
    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` header names the client (default
    /// none: the TCP peer is the client).
    pub proxies: TrustedProxies,
    /// Presence: which channels have it, member expiry, bounds (default: no channel).
    pub presence: crate::presence::PresenceConfig,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The effective configuration for `check-config`: TOML with every key `--config` reads,
    /// secrets masked (see [`ConfigValues::effective`]).
    pub fn describe(&self) -> String {
        ConfigValues::effective(self).to_toml()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis: None,
            redis_cluster: Vec::new(),
            redis_shards: crate::engine::redis::keys::DEFAULT_SHARDS,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_secs(1),
            prefix: "rd:".into(),
            redis_block: Duration::from_secs(10),
            redis_keys_per_reader: 256,
            redis_live_readers: crate::engine::redis::LiveReaders::Channel,
            redis_log_maxlen: crate::engine::redis::DEFAULT_LOG_MAXLEN,
            idempotency_ttl: Duration::from_secs(600),
            group_claim_idle: Duration::from_secs(30),
            group_max_deliveries: 5,
            retention: Retention::server_default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            tls: None,
            auth: AuthConfig::Open,
            drain_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            admin_listen: None,
            proxies: TrustedProxies::default(),
            presence: crate::presence::PresenceConfig::default(),
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for this config (unknown key, wrong type).
    #[error("config file {path}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// Why, naming the key.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key (flag name without dashes, snake case in files).
        key: &'static str,
        /// Why.
        reason: String,
    },
}
