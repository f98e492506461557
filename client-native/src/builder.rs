//! [`ClientBuilder`]: targets, timeouts, TLS roots, buffer sizes; `build` starts the driver.

use std::sync::Arc;
use std::time::Duration;

use redistribute_protocol::session::{
    Config, Session, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_JITTER, DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_PENDING, DEFAULT_REQUEST_TIMEOUT,
};
use rustls_pki_types::CertificateDer;

use crate::client::Client;
use crate::driver::{Driver, Settings};
use crate::error::Error;
use crate::tls;
use crate::token::{TokenError, TokenProvider};
use crate::transport::Target;

/// Default for [`ClientBuilder::connect_timeout`]: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ClientBuilder::subscription_buffer`]: 1,024 messages.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;
/// Default for [`ClientBuilder::event_buffer`]: 256 events.
pub const DEFAULT_EVENT_BUFFER: usize = 256;
/// Default for [`ClientBuilder::command_buffer`]: 256 commands.
pub const DEFAULT_COMMAND_BUFFER: usize = 256;

/// Configures and starts a [`Client`]; from [`Client::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), redistribute_client::Error> {
/// use std::time::Duration;
/// use redistribute_client::Client;
///
/// let client = Client::builder()
///     .targets(["ws://10.0.0.1:8080/ws", "ws://10.0.0.2:8080/ws"])
///     .request_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    targets: Vec<String>,
    token: Option<String>,
    token_provider: Option<TokenProvider>,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    backoff_jitter: f64,
    auto_idempotency: bool,
    max_pending: usize,
    retry_subscribe: bool,
    subscribe_retry_limit: Option<u32>,
    join_leave: bool,
    subscription_buffer: usize,
    event_buffer: usize,
    command_buffer: usize,
    give_up_after: Option<Duration>,
    root_pems: Vec<Vec<u8>>,
    webpki_roots: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            targets: Vec::new(),
            token: None,
            token_provider: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            backoff_jitter: DEFAULT_BACKOFF_JITTER,
            auto_idempotency: true,
            max_pending: DEFAULT_MAX_PENDING,
            retry_subscribe: true,
            subscribe_retry_limit: None,
            join_leave: false,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            event_buffer: DEFAULT_EVENT_BUFFER,
            command_buffer: DEFAULT_COMMAND_BUFFER,
            give_up_after: None,
            root_pems: Vec::new(),
            webpki_roots: true,
        }
    }
}

impl ClientBuilder {
    /// Server URLs (`ws://host:port/ws` or `wss://…`), tried in order and then round-robin:
    /// when one is down the client moves to the next. Replaces earlier targets.
    pub fn targets<I, S>(mut self, targets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.targets = targets.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.targets.push(target.into());
        self
    }

    /// A JWT sent in a `connect` frame at the start of every connection. It is never
    /// renewed: for tokens that expire while the client runs, use
    /// [`token_provider`](Self::token_provider).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// An async callback giving a fresh JWT, for short-lived tokens. It is called before every
    /// connection (the first and each reconnect) and, on a live connection, a little before
    /// the current token's `exp` (a tenth of its lifetime, at least 1 s, at most half of it;
    /// `exp` is read from the token without verifying it). The new token replaces the old
    /// one on the live connection with a `connect` frame: subscriptions go on without a gap, a
    /// duplicate or a reconnect. Each call is bounded by the request timeout; a failed call
    /// is reported as [`Event::TokenRefreshFailed`](crate::Event::TokenRefreshFailed) (the
    /// connection then ends at the old token's expiry and the next connection calls the
    /// provider again). Replaces [`token`](Self::token).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redistribute_client::Error> {
    /// use redistribute_client::Client;
    ///
    /// async fn fetch_token() -> Result<String, std::io::Error> {
    ///     // e.g. ask your auth service
    ///     Ok("eyJhbGciOiJIUzI1NiJ9…".to_owned())
    /// }
    ///
    /// let client = Client::builder()
    ///     .target("wss://rt.example.com/ws")
    ///     .token_provider(fetch_token)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, E>> + Send + 'static,
        E: Into<TokenError>,
    {
        self.token_provider = Some(TokenProvider::new(provider));
        self
    }

    /// How long one connection attempt (TCP, TLS and WebSocket upgrade) may take; default 5 s.
    /// The attempt is also bounded by the request timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request (subscribe, publish, ping…) may wait for its reply, counted from
    /// the call and including time spent reconnecting; default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Reconnect delays: the bound starts at `initial` and doubles per consecutive failure up
    /// to `max`; each delay is drawn at random below the bound (see
    /// [`backoff_jitter`](Self::backoff_jitter)). Default 100 ms → 10 s. `initial` must be
    /// positive and `max` at least `initial`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// How much of each reconnect delay is random, in `[0, 1]`: the delay is drawn uniformly
    /// in `[bound · (1 − jitter), bound]`. 1 (the default) is "full jitter" (`[0, bound]`),
    /// which spreads clients reconnecting after an outage; 0 waits exactly the bound. Also
    /// applies to subscribe retries. Other values fail [`build`](Self::build) with
    /// [`Error::Config`].
    pub fn backoff_jitter(mut self, jitter: f64) -> Self {
        self.backoff_jitter = jitter;
        self
    }

    /// Whether each publish without an explicit key gets a generated idempotency key (default
    /// on), so a publish interrupted by a disconnect is re-sent on the next connection and
    /// stored once. Off: such a publish fails with [`Error::ConnectionLost`] instead.
    pub fn auto_idempotency(mut self, on: bool) -> Self {
        self.auto_idempotency = on;
        self
    }

    /// Whether [`Client::subscribe`](crate::Client::subscribe) itself retries transient
    /// server errors (`unavailable`, `rate_limited`, `internal`) with backoff until it
    /// succeeds, fails permanently or reaches the request timeout (default on; each failed
    /// attempt is reported as [`Event::SubscribeRetrying`](crate::Event::SubscribeRetrying)).
    /// Off: such an error fails the call at once. Subscriptions re-established after a
    /// reconnect are always retried.
    pub fn retry_subscribe(mut self, on: bool) -> Self {
        self.retry_subscribe = on;
        self
    }

    /// Caps how many consecutive transient failures of one subscription's `subscribe` are
    /// retried before it ends with [`Event::SubscriptionLost`](crate::Event::SubscriptionLost)
    /// (default: no cap, retry forever).
    pub fn subscribe_retry_limit(mut self, limit: u32) -> Self {
        self.subscribe_retry_limit = Some(limit);
        self
    }

    /// Ask for join/leave events on every subscription (default off): on channels where the
    /// server has presence enabled they arrive as [`Event::Presence`](crate::Event::Presence),
    /// coalesced (at most one per channel per server window).
    pub fn join_leave(mut self, on: bool) -> Self {
        self.join_leave = on;
        self
    }

    /// Most requests waiting for a reply at once (default 10,000); beyond it calls fail with
    /// [`Error::Backpressure`].
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// Messages buffered per subscription for the application (default 1,024). See
    /// [`Subscription`](crate::Subscription) for what happens when it is full.
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.subscription_buffer = messages;
        self
    }

    /// Events buffered for each [`Events`](crate::Events) receiver (default 256); a receiver
    /// that falls further behind gets [`Event::Lagged`](crate::Event::Lagged).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// Commands queued for the driver (default 256); calls wait for room beyond it.
    pub fn command_buffer(mut self, commands: usize) -> Self {
        self.command_buffer = commands;
        self
    }

    /// Give up after this long without a connection (from the start, or from the last
    /// disconnect): the client closes itself, pending and later calls fail with
    /// [`Error::Unreachable`] naming each target's last error, and subscription streams end.
    /// Default: never give up.
    pub fn give_up_after(mut self, after: Duration) -> Self {
        self.give_up_after = Some(after);
        self
    }

    /// Trusts the certificates of this PEM document (one or more `CERTIFICATE` blocks) as
    /// roots for `wss://` targets, in addition to the webpki roots.
    pub fn add_root_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_pems.push(pem.as_ref().to_vec());
        self
    }

    /// Whether to trust the webpki (Mozilla) roots for `wss://` targets; default on.
    pub fn webpki_roots(mut self, on: bool) -> Self {
        self.webpki_roots = on;
        self
    }

    /// Checks the settings and starts the client's driver task on the current tokio runtime.
    /// The client connects in the background; calls made before it is connected wait for the
    /// connection (within their request timeout).
    pub fn build(self) -> Result<Client, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("build() must be called within a tokio runtime".into()))?;
        let settings = self.settings()?;
        let config = Config {
            targets: self.targets.clone(),
            token: self.token.clone().filter(|_| self.token_provider.is_none()),
            request_timeout: self.request_timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            backoff_jitter: self.backoff_jitter,
            // The socket library answers the server's pings and reports a dead TCP
            // connection; no protocol-level idle probe is needed.
            ping_interval: None,
            auto_idempotency: self.auto_idempotency,
            max_pending: self.max_pending,
            retry_subscribe: self.retry_subscribe,
            subscribe_retry_limit: self.subscribe_retry_limit,
            join_leave: self.join_leave,
        };
        let session = Session::new(config, seed()?)?;
        let (driver, client) = Driver::new(session, settings);
        runtime.spawn(driver.run());
        Ok(client)
    }

    /// [`build`](Self::build), then waits for the first connection. Fails when the client
    /// gives up first (see [`give_up_after`](Self::give_up_after); without it this waits for
    /// as long as it takes).
    pub async fn connect(self) -> Result<Client, Error> {
        let client = self.build()?;
        client.wait_connected().await?;
        Ok(client)
    }

    fn settings(&self) -> Result<Arc<Settings>, Error> {
        if self.targets.is_empty() {
            return Err(Error::Config("no targets".into()));
        }
        let targets = self
            .targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        for (name, value) in [
            ("subscription_buffer", self.subscription_buffer),
            ("event_buffer", self.event_buffer),
            ("command_buffer", self.command_buffer),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        for pem in &self.root_pems {
            roots.extend(tls::parse_pem_certificates(pem)?);
        }
        let tls = if targets.iter().any(|t| t.tls) {
            Some(tls::client_config(&roots, self.webpki_roots)?)
        } else {
            None
        };
        Ok(Arc::new(Settings {
            targets,
            tls,
            token_provider: self.token_provider.clone(),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            give_up_after: self.give_up_after,
            subscription_buffer: self.subscription_buffer,
            event_buffer: self.event_buffer,
            command_buffer: self.command_buffer,
        }))
    }
}

/// A session seed from the OS: jitter and idempotency keys must differ between clients.
fn seed() -> Result<u64, Error> {
    getrandom::u64().map_err(|e| Error::Config(format!("no OS randomness for the seed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_needs_a_runtime_and_valid_targets() {
        let err = ClientBuilder::default()
            .targets(["ws://a/ws"])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
        assert!(ClientBuilder::default().settings().is_err());
        let err = ClientBuilder::default()
            .targets(["http://a/"])
            .settings()
            .unwrap_err();
        assert!(err.to_string().contains("ws:// or wss://"), "{err}");
        let err = ClientBuilder::default()
            .targets(["ws://a/ws"])
            .subscription_buffer(0)
            .settings()
            .unwrap_err();
        assert!(err.to_string().contains("subscription_buffer"), "{err}");
    }

    #[test]
    fn bad_root_certificates_are_reported() {
        let err = ClientBuilder::default()
            .targets(["wss://a/ws"])
            .add_root_certificate("not pem")
            .settings()
            .unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
    }

    #[tokio::test]
    async fn backoff_settings_are_checked_by_build() {
        for jitter in [-0.5, 1.5, f64::NAN] {
            let err = ClientBuilder::default()
                .targets(["ws://127.0.0.1:9/ws"])
                .backoff_jitter(jitter)
                .build()
                .unwrap_err();
            assert!(
                err.to_string().contains("backoff_jitter"),
                "{jitter}: {err}"
            );
        }
        let err = ClientBuilder::default()
            .targets(["ws://127.0.0.1:9/ws"])
            .backoff(Duration::from_secs(2), Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("backoff_max"), "{err}");
        let client = ClientBuilder::default()
            .targets(["ws://127.0.0.1:9/ws"])
            .backoff(Duration::from_millis(10), Duration::from_millis(10))
            .backoff_jitter(0.0)
            .build()
            .unwrap();
        client.close().await;
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(seed().unwrap(), seed().unwrap());
    }
}
