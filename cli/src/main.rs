//! `redistribute`: the server binary (package `redistribute-cli`). Parses flags, initializes logging, binds, and runs
//! [`redistribute_server::serve`] until SIGINT or SIGTERM. The client commands `sub` and `pub`
//! and the operator tools `token`, `config` and `completions` live in [`cli`].

// The flags' doc comments are their `--help` text, written for a terminal (`/task/<id>`), not
// as HTML.
#![allow(rustdoc::invalid_html_tags)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use redistribute_server::{serve, ConfigValues, LogFormat, Server};
use tokio_util::sync::CancellationToken;

/// Real-time channels over WebSocket, stored in Redis Streams.
#[derive(Parser)]
#[command(name = "redistribute", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Subscribe to channels and print one JSON line per message.
    Sub(cli::SubArgs),
    /// Publish one message and print its offset.
    Pub(cli::PubArgs),
    /// Print a channel's stored messages, one JSON line each (like `sub`).
    History(cli::HistoryArgs),
    /// Validate a config file (with REDISTRIBUTE_* variables applied) and print the effective
    /// configuration, or the exact error.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print a sample config file (TOML) with every key, commented, at its default.
    Config,
    /// Mint a JWT the server accepts (development and tests), printed on stdout.
    Token(cli::TokenArgs),
    /// Print a shell completion script, e.g. `redistribute completions bash >
    /// /etc/bash_completion.d/redistribute`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "REDISTRIBUTE_LISTEN")]
    listen: Option<String>,
    /// Redis URL (redis://host:port); without it the embedded engine runs.
    #[arg(long, env = "REDISTRIBUTE_REDIS")]
    redis: Vec<String>,
    /// Redis Cluster seed node URL (redis://host:port); repeatable or comma-separated. Exclusive
    /// with --redis.
    #[arg(long, env = "REDISTRIBUTE_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Vec<String>,
    /// Shards (hash tags) channels are spread over in cluster mode [default: 16].
    #[arg(long, env = "REDISTRIBUTE_REDIS_SHARDS")]
    redis_shards: Option<u16>,
    /// Replicas that must confirm a publish (WAIT) before it is acknowledged [default: 0].
    #[arg(long, env = "REDISTRIBUTE_REDIS_WAIT_REPLICAS")]
    redis_wait_replicas: Option<u32>,
    /// How long a publish waits for those replicas, in ms [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_REDIS_WAIT_TIMEOUT_MS")]
    redis_wait_timeout_ms: Option<u64>,
    /// TOML config file with the same keys as the flags (snake case).
    #[arg(long, env = "REDISTRIBUTE_CONFIG")]
    config: Option<PathBuf>,
    /// Prefix of stream keys in Redis [default: rd:].
    #[arg(long, env = "REDISTRIBUTE_PREFIX")]
    prefix: Option<String>,
    /// How long Redis readers block in XREAD, in ms [default: 10000].
    #[arg(long, env = "REDISTRIBUTE_REDIS_BLOCK_MS")]
    redis_block_ms: Option<u64>,
    /// Most channels per Redis reader connection [default: 256].
    #[arg(long, env = "REDISTRIBUTE_REDIS_KEYS_PER_READER")]
    redis_keys_per_reader: Option<usize>,
    /// Where the Redis live feed reads new entries: `log` (one reader per shard log) or
    /// `channel` (readers on the channels' own streams) [default: channel].
    #[arg(long, env = "REDISTRIBUTE_REDIS_LIVE_READERS")]
    redis_live_readers: Option<String>,
    /// About how many entries each Redis shard log keeps [default: 10000].
    #[arg(long, env = "REDISTRIBUTE_REDIS_LOG_MAXLEN")]
    redis_log_maxlen: Option<u64>,
    /// How long idempotency keys are remembered, in seconds [default: 600].
    #[arg(long, env = "REDISTRIBUTE_IDEMPOTENCY_TTL_SECS")]
    idempotency_ttl_secs: Option<u64>,
    /// Consumer-group entries unacknowledged this long (ms) go to another consumer [default: 30000].
    #[arg(long, env = "REDISTRIBUTE_GROUP_CLAIM_IDLE_MS")]
    group_claim_idle_ms: Option<u64>,
    /// Deliveries of a group entry before it goes to `<channel>:dead` [default: 5].
    #[arg(long, env = "REDISTRIBUTE_GROUP_MAX_DELIVERIES")]
    group_max_deliveries: Option<u64>,
    /// Largest inbound frame in bytes [default: 1048576].
    #[arg(long, env = "REDISTRIBUTE_MAX_FRAME_BYTES")]
    max_frame_bytes: Option<usize>,
    /// Most subscriptions per connection [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<usize>,
    /// Live queue capacity per connection, in batches [default: 1024].
    #[arg(long, env = "REDISTRIBUTE_QUEUE_BATCHES")]
    queue_batches: Option<usize>,
    /// Live queue capacity per connection, in bytes [default: 4194304].
    #[arg(long, env = "REDISTRIBUTE_QUEUE_BYTES")]
    queue_bytes: Option<usize>,
    /// How long a request may wait on the engine, in ms [default: 5000].
    #[arg(long, env = "REDISTRIBUTE_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Browser origin allowed to use the HTTP transports (CORS); repeatable; `*` for any.
    #[arg(long, env = "REDISTRIBUTE_ALLOWED_ORIGIN", value_delimiter = ',')]
    allowed_origin: Vec<String>,
    /// Answer JSONP (`callback=`) on /poll.
    #[arg(long, env = "REDISTRIBUTE_JSONP")]
    jsonp: bool,
    /// API key for /api/publish and /api/history (and /metrics, /status with JWT on);
    /// repeatable. Without one the API is open, which JWT on refuses unless --allow-open-api.
    #[arg(long, env = "REDISTRIBUTE_API_KEY", value_delimiter = ',')]
    api_key: Vec<String>,
    /// With JWT on and no --api-key, serve the back-end API and /metrics open anyway.
    #[arg(long, env = "REDISTRIBUTE_ALLOW_OPEN_API")]
    allow_open_api: bool,
    /// Secret for signed task ids on /task/<id>.
    #[arg(long, env = "REDISTRIBUTE_TASK_SECRET")]
    task_secret: Option<String>,
    /// SSE heartbeat interval in seconds [default: 15].
    #[arg(long, env = "REDISTRIBUTE_SSE_HEARTBEAT_SECS")]
    sse_heartbeat_secs: Option<u64>,
    /// Default long-poll hold time in seconds [default: 25].
    #[arg(long, env = "REDISTRIBUTE_POLL_TIMEOUT_SECS")]
    poll_timeout_secs: Option<u64>,
    /// Task-watch newline keepalive in seconds, 0 = off [default: 10].
    #[arg(long, env = "REDISTRIBUTE_TASK_KEEPALIVE_SECS")]
    task_keepalive_secs: Option<u64>,
    /// TLS certificate chain (PEM); with --tls-key serves https/wss on the same listener.
    #[arg(long, env = "REDISTRIBUTE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM). Reloaded with the certificate on SIGHUP.
    #[arg(long, env = "REDISTRIBUTE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// HS256 secret for client tokens (JWT); turns authentication on.
    #[arg(long, env = "REDISTRIBUTE_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// RS256/ES256 public key (PEM) for client tokens; turns authentication on.
    #[arg(long, env = "REDISTRIBUTE_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// Most simultaneous connections from one IP address [default: 10000].
    #[arg(long, env = "REDISTRIBUTE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Publishes per second per connection [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_PUBLISH_RATE")]
    publish_rate: Option<u32>,
    /// Publish burst per connection [default: 2000].
    #[arg(long, env = "REDISTRIBUTE_PUBLISH_BURST")]
    publish_burst: Option<u32>,
    /// Subscribes per second per connection [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_SUBSCRIBE_RATE")]
    subscribe_rate: Option<u32>,
    /// Subscribe burst per connection [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_SUBSCRIBE_BURST")]
    subscribe_burst: Option<u32>,
    /// Time allowed for the TLS handshake, request head and auth, in ms [default: 10000].
    #[arg(long, env = "REDISTRIBUTE_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// WebSocket ping interval in seconds; two missed pongs drop the connection [default: 25].
    #[arg(long, env = "REDISTRIBUTE_WS_PING_SECS")]
    ws_ping_secs: Option<u64>,
    /// How long a drain (SIGTERM) may take, in ms [default: 10000].
    #[arg(long, env = "REDISTRIBUTE_DRAIN_TIMEOUT_MS")]
    drain_timeout_ms: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "REDISTRIBUTE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Retention of channels matching a pattern, PATTERN=SPEC with SPEC `10000`, `age=1h` or
    /// `10000,age=24h`; repeatable (or `;`-separated), the first match wins.
    #[arg(long, env = "REDISTRIBUTE_RETENTION", value_delimiter = ';')]
    retention: Vec<String>,
    /// Retention of channels no --retention pattern matches (SPEC, or `none`) [default: none].
    #[arg(long, env = "REDISTRIBUTE_RETENTION_DEFAULT")]
    retention_default: Option<String>,
    /// Lowest maxlen a publisher may ask for; lower requests are raised to it [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_MIN_MAXLEN")]
    min_maxlen: Option<u64>,
    /// Admin listener (plain HTTP) for /metrics, /status, /status.json, /readyz and /healthz;
    /// when set, /metrics and /status are not served on --listen.
    #[arg(long, env = "REDISTRIBUTE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Reverse proxy (address or CIDR network) whose client-address header is believed;
    /// repeatable.
    #[arg(long, env = "REDISTRIBUTE_TRUSTED_PROXY", value_delimiter = ',')]
    trusted_proxy: Vec<String>,
    /// Header trusted proxies write the client's address into: x-forwarded-for or forwarded
    /// [default: x-forwarded-for].
    #[arg(long, env = "REDISTRIBUTE_CLIENT_IP_HEADER")]
    client_ip_header: Option<String>,
    /// Largest HTTP request head (request line and headers) in bytes; larger gets 431
    /// [default: 32768].
    #[arg(long, env = "REDISTRIBUTE_MAX_HEADER_BYTES")]
    max_header_bytes: Option<usize>,
    /// Channels with presence (who is subscribed, join/leave events), as channel patterns
    /// (`room:*`, `team:**`); repeatable (or `,`-separated).
    #[arg(long, env = "REDISTRIBUTE_PRESENCE_CHANNELS", value_delimiter = ',')]
    presence_channels: Vec<String>,
    /// Seconds a presence member outlives its instance's last heartbeat (refreshed every
    /// third of it) [default: 30].
    #[arg(long, env = "REDISTRIBUTE_PRESENCE_TTL_SECS")]
    presence_ttl_secs: Option<u64>,
    /// Most presence members per channel; subscribes beyond are refused [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_PRESENCE_MAX_MEMBERS")]
    presence_max_members: Option<usize>,
    /// Largest token `info` claim shown in presence, in bytes of JSON [default: 1024].
    #[arg(long, env = "REDISTRIBUTE_PRESENCE_MAX_INFO_BYTES")]
    presence_max_info_bytes: Option<usize>,
    /// Join/leave events are coalesced over this many ms into one frame per channel
    /// [default: 1000].
    #[arg(long, env = "REDISTRIBUTE_PRESENCE_WINDOW_MS")]
    presence_window_ms: Option<u64>,
    /// Most joins and leaves one presence_event frame lists; beyond, only their count
    /// [default: 100].
    #[arg(long, env = "REDISTRIBUTE_PRESENCE_MAX_EVENTS")]
    presence_max_events: Option<usize>,
}

impl ServeArgs {
    /// The serve flags as given by `REDISTRIBUTE_*` variables alone (for `check-config`).
    fn from_env_only() -> ServeArgs {
        #[derive(Parser)]
        struct EnvOnly {
            #[command(flatten)]
            serve: ServeArgs,
        }
        EnvOnly::parse_from(["redistribute"]).serve
    }

    fn values(&self) -> ConfigValues {
        ConfigValues {
            listen: self.listen.clone(),
            redis: Some(self.redis.iter().map(|u| u.as_str().into()).collect()),
            redis_cluster: Some(
                self.redis_cluster
                    .iter()
                    .map(|u| u.as_str().into())
                    .collect(),
            ),
            redis_shards: self.redis_shards,
            redis_wait_replicas: self.redis_wait_replicas,
            redis_wait_timeout_ms: self.redis_wait_timeout_ms,
            prefix: self.prefix.clone(),
            redis_block_ms: self.redis_block_ms,
            redis_keys_per_reader: self.redis_keys_per_reader,
            redis_live_readers: self.redis_live_readers.clone(),
            redis_log_maxlen: self.redis_log_maxlen,
            idempotency_ttl_secs: self.idempotency_ttl_secs,
            group_claim_idle_ms: self.group_claim_idle_ms,
            group_max_deliveries: self.group_max_deliveries,
            max_frame_bytes: self.max_frame_bytes,
            max_subscriptions: self.max_subscriptions,
            queue_batches: self.queue_batches,
            queue_bytes: self.queue_bytes,
            request_timeout_ms: self.request_timeout_ms,
            allowed_origin: Some(self.allowed_origin.clone()),
            jsonp: self.jsonp.then_some(true),
            api_key: Some(self.api_key.iter().map(|k| k.as_str().into()).collect()),
            allow_open_api: self.allow_open_api.then_some(true),
            task_secret: self.task_secret.as_deref().map(Into::into),
            sse_heartbeat_secs: self.sse_heartbeat_secs,
            poll_timeout_secs: self.poll_timeout_secs,
            task_keepalive_secs: self.task_keepalive_secs,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            jwt_secret: self.jwt_secret.as_deref().map(Into::into),
            jwt_public_key: self.jwt_public_key.clone(),
            max_connections_per_ip: self.max_connections_per_ip,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            subscribe_rate: self.subscribe_rate,
            subscribe_burst: self.subscribe_burst,
            handshake_timeout_ms: self.handshake_timeout_ms,
            ws_ping_secs: self.ws_ping_secs,
            drain_timeout_ms: self.drain_timeout_ms,
            log_format: self.log_format.clone(),
            retention: Some(self.retention.clone()),
            retention_default: self.retention_default.clone(),
            min_maxlen: self.min_maxlen,
            admin_listen: self.admin_listen.clone(),
            trusted_proxy: Some(self.trusted_proxy.clone()),
            client_ip_header: self.client_ip_header.clone(),
            max_header_bytes: self.max_header_bytes,
            presence_channels: Some(self.presence_channels.clone()),
            presence_ttl_secs: self.presence_ttl_secs,
            presence_max_members: self.presence_max_members,
            presence_max_info_bytes: self.presence_max_info_bytes,
            presence_window_ms: self.presence_window_ms,
            presence_max_events: self.presence_max_events,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands keep stderr for their own messages unless RUST_LOG asks for more;
    // the server sets up logging once its config (which may ask for JSON) is known.
    if matches!(
        cli.command,
        Some(Command::Sub(_) | Command::Pub(_) | Command::History(_))
    ) {
        init_logging("warn", LogFormat::Text);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Sub(args)) => runtime.block_on(cli::run_sub(args)),
        Some(Command::Pub(args)) => runtime.block_on(cli::run_pub(args)),
        Some(Command::History(args)) => runtime.block_on(cli::run_history(args)),
        Some(Command::Serve(args)) => runtime.block_on(run_server(*args)),
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Config) => write_stdout(cli::sample_config(&serve_command()).as_bytes()),
        Some(Command::Token(args)) => {
            cli::mint_token(&args).and_then(|token| write_stdout(format!("{token}\n").as_bytes()))
        }
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "redistribute", &mut script);
            write_stdout(&script)
        }
        None => runtime.block_on(run_server(cli.serve)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a command's output; a closed stdout (`| head`) is an error, not a panic.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// The `serve` subcommand's definition: every server flag with its help, environment variable
/// and default.
fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve"))
}

/// Sets up `tracing`: `RUST_LOG` filters (default `default_filter`), text or JSON lines on
/// stderr.
fn init_logging(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `check-config FILE`: the file plus `REDISTRIBUTE_*` variables, validated.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let env = ServeArgs::from_env_only();
    let config = env.values().or(ConfigValues::from_file(file)?).build()?;
    print!("{}", config.describe());
    Ok(())
}

async fn run_server(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigValues::from_file(path)?,
        None => ConfigValues::default(),
    };
    let config = args.values().or(file).build()?;
    init_logging("info", config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (`listen`): {e}", config.listen))?;
    let shutdown = CancellationToken::new();
    let server = Server::start(config, shutdown.clone()).await?;
    let scheme = if server.serves_tls() { "https" } else { "http" };
    println!(
        "redistribute listening on {scheme}://{} (WebSocket at /ws), engine: {}",
        listener.local_addr()?,
        server.engine_description()
    );
    if let Some(admin) = server.config().admin_listen {
        println!(
            "admin endpoints on http://{admin} (/metrics, /status, /readyz, /healthz); \
             /metrics and /status are not served on the public listener"
        );
    }
    if !server.auth_required() {
        tracing::warn!(
            "authentication is off: any client may subscribe and publish to any channel \
             (set --jwt-secret or --jwt-public-key for production)"
        );
    } else if server.config().http.api_keys.is_empty() {
        tracing::warn!(
            "--allow-open-api: /api/publish, /api/history, /metrics and /status answer anyone \
             without credentials"
        );
    }
    tokio::spawn(wait_for_signal(shutdown));
    tokio::spawn(reload_tls_on_sighup(server.clone()));
    serve(listener, server).await?;
    Ok(())
}

/// Re-reads the TLS certificate and key on SIGHUP.
async fn reload_tls_on_sighup(server: Server) {
    use tokio::signal::unix::{signal, SignalKind};
    if !server.serves_tls() {
        return;
    }
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match server.reload_tls() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(err) => {
                tracing::error!(%err, "TLS reload failed; keeping the previous certificate")
            }
        }
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
