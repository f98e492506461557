//! Session configuration and per-publish options.
//!
//! Plain structs with documented units and defaults, passed in by the driver: no globals, no
//! environment reads. [`Config::new`] gives the defaults for a list of targets.

use std::time::Duration;

use super::error::SessionError;

/// Default for [`Config::request_timeout`]: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Config::backoff_initial`]: 100 ms.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Default for [`Config::backoff_max`]: 10 s.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Default for [`Config::backoff_jitter`]: 1, full jitter.
pub const DEFAULT_BACKOFF_JITTER: f64 = 1.0;
/// Default for [`Config::max_pending`]: 10,000 requests.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// How a [`Session`](super::Session) connects, retries and bounds its work.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Server URLs, tried in order and then round-robin. Opaque to the session: they are handed
    /// back to the driver in [`Action::Connect`](super::Action::Connect). Must not be empty.
    pub targets: Vec<String>,
    /// When set, a `connect` frame carrying this token is the first frame of every connection,
    /// and nothing else is sent before the server's `connected` reply.
    pub token: Option<String>,
    /// How long a request may wait for its reply, counted from the command (including time
    /// spent disconnected). Also bounds opening a transport and the `connect` handshake.
    pub request_timeout: Duration,
    /// Upper bound of the first reconnect delay. Each further consecutive failure doubles the
    /// bound (factor 2) up to [`Config::backoff_max`]; the actual delay is drawn uniformly
    /// between `bound · (1 − backoff_jitter)` and the bound.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// How much of each delay bound is random, in `[0, 1]`: 1 (the default) draws the delay
    /// uniformly in `[0, bound]` ("full jitter"), 0.5 in `[bound / 2, bound]`, 0 waits exactly
    /// the bound. Applies to reconnects and to subscribe retries.
    pub backoff_jitter: f64,
    /// When set, a connection on which no frame arrived for this long gets a `ping` probe; if
    /// no frame answers it within [`Config::request_timeout`], the connection counts as dead
    /// ([`DisconnectReason::Timeout`](super::DisconnectReason::Timeout), [`Action::Close`](super::Action::Close))
    /// and the session reconnects. A socket that died silently is thus noticed within
    /// `ping_interval + request_timeout`. `None` (the default): no idle probes.
    pub ping_interval: Option<Duration>,
    /// Give every publish without a caller key a generated idempotency key, so that publishes
    /// are safely re-sent after a reconnect (see the [module documentation](super)).
    pub auto_idempotency: bool,
    /// Most requests waiting for an outcome at once; beyond it commands fail with
    /// [`SessionError::Backpressure`].
    pub max_pending: usize,
    /// Retry the caller's own `subscribe` on transient errors (`unavailable`, `rate_limited`,
    /// `internal`) too, with backoff, until it succeeds, fails permanently or reaches its
    /// request timeout. Off: such an error fails the caller's subscribe at once. Re-subscribes
    /// after a reconnect are always retried.
    pub retry_subscribe: bool,
    /// Ask for join/leave events (`join_leave: true`) in every `subscribe`; the server sends
    /// them only on channels with presence enabled ([`Event::PresenceChanged`](super::Event::PresenceChanged)).
    /// Off by default.
    pub join_leave: bool,
    /// How many consecutive transient failures of one subscription's `subscribe` are retried
    /// before the subscription is given up ([`Event::SubscriptionLost`](super::Event::SubscriptionLost)); `None`
    /// (the default) retries forever.
    pub subscribe_retry_limit: Option<u32>,
}

impl Config {
    /// The defaults for these targets: no token, 10 s request timeout, backoff 100 ms → 10 s,
    /// automatic idempotency keys, at most 10,000 pending requests, transient subscribe
    /// failures retried forever.
    pub fn new<I, S>(targets: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            targets: targets.into_iter().map(Into::into).collect(),
            token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            backoff_jitter: DEFAULT_BACKOFF_JITTER,
            ping_interval: None,
            auto_idempotency: true,
            max_pending: DEFAULT_MAX_PENDING,
            retry_subscribe: true,
            join_leave: false,
            subscribe_retry_limit: None,
        }
    }

    /// Checks the values a session cannot work with.
    pub fn validate(&self) -> Result<(), SessionError> {
        let problem = if self.targets.is_empty() {
            "targets must not be empty"
        } else if self.request_timeout.is_zero() {
            "request_timeout must be positive"
        } else if self.backoff_initial.is_zero() {
            "backoff_initial must be positive"
        } else if self.backoff_max < self.backoff_initial {
            "backoff_max must be at least backoff_initial"
        } else if !(0.0..=1.0).contains(&self.backoff_jitter) {
            "backoff_jitter must be between 0 and 1"
        } else if self.ping_interval.is_some_and(|d| d.is_zero()) {
            "ping_interval must be positive"
        } else if self.max_pending == 0 {
            "max_pending must be at least 1"
        } else {
            return Ok(());
        };
        Err(SessionError::Config(problem))
    }
}

impl Default for Config {
    /// The defaults with no targets; set [`Config::targets`] before use.
    fn default() -> Self {
        Config::new(Vec::<String>::new())
    }
}

/// Optional parts of a publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Keep about this many entries in the channel (`XADD MAXLEN ~`); must be at least 1.
    pub maxlen: Option<u64>,
    /// A caller-chosen idempotency key (1–200 bytes). When absent and
    /// [`Config::auto_idempotency`] is on, the session generates one.
    pub idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = Config::new(["ws://a/ws"]);
        assert_eq!(c.targets, vec!["ws://a/ws".to_owned()]);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.backoff_initial, Duration::from_millis(100));
        assert_eq!(c.backoff_max, Duration::from_secs(10));
        assert_eq!(c.backoff_jitter, 1.0);
        assert_eq!(c.ping_interval, None);
        assert!(c.auto_idempotency);
        assert_eq!(c.max_pending, 10_000);
        assert!(c.retry_subscribe);
        assert_eq!(c.subscribe_retry_limit, None);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_unusable_values() {
        assert!(Config::default().validate().is_err());
        let mut c = Config::new(["x"]);
        c.backoff_max = Duration::from_millis(1);
        assert!(c.validate().is_err());
        let mut c = Config::new(["x"]);
        c.max_pending = 0;
        assert!(c.validate().is_err());
        for jitter in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let mut c = Config::new(["x"]);
            c.backoff_jitter = jitter;
            assert!(c.validate().is_err(), "jitter {jitter} accepted");
        }
        let mut c = Config::new(["x"]);
        c.ping_interval = Some(Duration::ZERO);
        assert!(c.validate().is_err());
    }
}
