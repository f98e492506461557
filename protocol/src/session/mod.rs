//! The sans-IO client session: the state machine both the native and the browser client drive.
//!
//! In the quinn-proto style the session owns no socket, reads no clock and draws no
//! randomness. The driver feeds it inputs and drains its outputs:
//!
//! * inputs: [`Session::connect`], [`Session::handle_transport_open`],
//!   [`Session::handle_frame`], [`Session::handle_transport_closed`],
//!   [`Session::handle_timeout`], [`Session::retry_now`], each with `now`, the monotonic time since an origin the driver
//!   picks (e.g. `Instant::now() - start`, or `performance.now()` in a browser);
//! * commands: [`Session::subscribe`], [`Session::resubscribe`], [`Session::unsubscribe`],
//!   [`Session::publish`], [`Session::ping`], [`Session::close`];
//! * outputs: [`Session::poll_action`] (open or close a transport), [`Session::poll_transmit`]
//!   (frames to send, in order), [`Session::poll_event`] (for the application) and
//!   [`Session::poll_timeout`] (when to call `handle_timeout` next).
//!
//! After every input or command the driver drains actions, frames and events, then re-arms its
//! timer from `poll_timeout`. Commands carry no `now`: a new request is timed from the next
//! input, and until that input `poll_timeout` reports a time already due, so a driver that
//! re-arms its timer after each command supplies the time at once.
//!
//! ```
//! use std::time::Duration;
//! use redistribute_protocol::session::{Action, Config, Session};
//! use redistribute_protocol::Offset;
//!
//! let mut session = Session::new(Config::new(["ws://127.0.0.1:8080/ws"]), 42).unwrap();
//! session.subscribe("chat", Offset::Latest).unwrap();
//! session.connect(Duration::ZERO);
//! assert_eq!(
//!     session.poll_action(),
//!     Some(Action::Connect { target: "ws://127.0.0.1:8080/ws".into() })
//! );
//! session.handle_transport_open(Duration::from_millis(3));
//! let frame = session.poll_transmit().unwrap(); // {"type":"subscribe",…}: encode and send it
//! assert_eq!(frame.id(), 1);
//! ```
//!
//! # Connections and failover
//!
//! Targets are tried in order, then round-robin. A failed attempt or a dropped connection is
//! followed by a backoff delay (factor 2, full jitter, between [`Config::backoff_initial`] and
//! [`Config::backoff_max`]), then the next target. The delay bound resets once a connection has
//! proved healthy by answering a request; a connection with nothing to ask gets a `ping` probe
//! for that purpose. Opening a transport, the `connect` handshake (when a token is configured,
//! `connect` is the first frame of every connection) and the session's own requests are bounded
//! by [`Config::request_timeout`]; when they overrun, the session asks the driver to close the
//! transport ([`Action::Close`]) and moves on.
//!
//! With [`Config::ping_interval`] set, a connection on which nothing arrived for that long gets
//! a `ping` probe, and one whose probe is not answered within the request timeout is closed
//! the same way: a socket that died without the platform reporting a close (browsers may never
//! fire one) is noticed within `ping_interval + request_timeout`. [`Session::retry_now`] cuts a
//! pending backoff delay short, for drivers that learn the network is back (a browser's
//! `online` event, a page becoming visible); it never opens a second connection.
//!
//! # Short-lived tokens
//!
//! [`Session::refresh_token`] switches the open connection to a new token with a `connect` on
//! it (no reconnect, no gap) and, given the token's lifetime, asks the driver for the next one
//! ([`Action::RefreshToken`]) a little before it ends ([`refresh_lead`]).
//!
//! # Subscriptions and resume
//!
//! The session remembers every subscription and its position (the last delivered offset, or
//! the resume point of the `subscribed` reply; for `$` that is the tip, so a reconnect before
//! any message resumes there and never asks for `$` again). On every connection it re-sends
//! `subscribe` from the position and drops any message at or before it, so the application
//! sees each message once, in order. [`Session::offsets`] exposes the positions for
//! persistence; `subscribe(channel, Offset::Id(saved))` resumes from a saved one.
//!
//! [`Session::resubscribe`] replaces a subscription from a given offset behind a barrier: it
//! unsubscribes first and subscribes once the `unsubscribed` reply came, so that nothing of the
//! old subscription still on the wire reaches the new one. A driver whose local buffer
//! overflowed resumes with it from the last offset it delivered.
//!
//! # States
//!
//! The session announces its connection state ([`ClientState`]: `Disconnected` before
//! [`Session::connect`], `Connecting` while opening a connection or backing off, `Connected`,
//! `Closed`) with [`Event::State`], and each channel's subscription state
//! ([`SubscriptionState`]: `Unsubscribed`, `Subscribing`, `Subscribed`) with
//! [`Event::SubscriptionState`], each right after the event that caused it, once per change;
//! [`Session::state`] and [`Session::subscription_state`] read them. A channel is `Subscribed`
//! from its `subscribed` reply until the connection ends (then `Subscribing` until the
//! re-subscribe is answered) or it is replaced (`Subscribing` again). It becomes `Unsubscribed`
//! on the caller's unsubscribe (`error: None`), and with the error when it ends otherwise: a
//! permanent refusal of a subscribe or re-subscribe, a timeout, an undecodable frame, or
//! [`Session::close`] ([`RequestError::Closed`]). The session delivers messages and gaps of a
//! channel only while it is `Subscribed`. [`Event::Subscribed`] carries `recovered`: the
//! subscribe asked for the messages after a known offset and nothing after it was lost.
//!
//! # Transient and permanent errors
//!
//! Transient failures never end a subscription: a `subscribe` answered `unavailable`,
//! `rate_limited` or `internal` ([`ErrorCode::is_transient`](crate::ErrorCode::is_transient))
//! keeps the subscription and its position, emits [`Event::SubscribeRetrying`] and is sent
//! again after a backoff delay (the same exponential backoff with full jitter as reconnects,
//! counted per channel and reset by `subscribed`), and again on every new connection. Request
//! timeouts and transport closes (1006, 1011, 1012, 1013, …) end the connection, and the session
//! reconnects and re-subscribes every channel from its position. This holds for re-subscribes
//! after a reconnect always, and for the caller's own `subscribe` while
//! [`Config::retry_subscribe`] is on (the default; it then waits at most its request timeout).
//! [`Config::subscribe_retry_limit`] can cap the retries. Permanent errors (`forbidden`,
//! `bad_request`, `not_found`, `unauthorized`, `too_large`) end the subscription: the caller's
//! subscribe fails ([`Event::RequestFailed`]), a re-subscribe reports
//! [`Event::SubscriptionLost`].
//!
//! # Frames the session cannot read
//!
//! Feed the transport's text to [`Session::handle_text`]; the session never skips a frame it
//! cannot decode, and never moves a position past data it did not deliver:
//!
//! * when a shallow scan of the text finds a `messages`, `gap` or `subscribed` frame of a
//!   subscribed channel (top-level `"type"` and `"channel"`), that subscription ends with
//!   [`Event::SubscriptionLost`] carrying [`RequestError::Undecodable`], which names the last
//!   delivered offset (or the caller's subscribe fails with it); the session unsubscribes the
//!   channel on the server, and every other channel keeps flowing. Resubscribing from that
//!   offset recovers exactly what was missed;
//! * any other unreadable frame (not JSON, unknown `type`, a reply that does not parse, or a
//!   frame the driver could not receive at all, reported with [`Session::handle_bad_frame`])
//!   ends the connection with [`DisconnectReason::BadFrame`]; the session reconnects and
//!   resumes from unchanged positions. While such failures repeat within
//!   [`Config::backoff_max`] of connecting, the delay before reconnecting keeps growing to
//!   [`Config::backoff_max`] even though each connection answers requests, so a frame that
//!   arrives again after every resume cannot cause a tight reconnect loop.
//!
//! # Requests
//!
//! Every command returns a [`RequestId`] and gets exactly one outcome event: its success event
//! ([`Event::Subscribed`], [`Event::Unsubscribed`], [`Event::Published`], [`Event::Pong`]) or
//! [`Event::RequestFailed`]. Replies with unknown ids are ignored. A request may wait at most
//! [`Config::request_timeout`] from the command, connected or not; at most
//! [`Config::max_pending`] may wait at once.
//!
//! # Publish retry policy
//!
//! * With [`Config::auto_idempotency`] on (the default), every publish without a caller key gets
//!   a generated one: 16 hex digits drawn once per session from the seed, a dash, and the
//!   request id. A publish in flight when the connection drops, or issued while disconnected,
//!   is kept and sent (again) with the same key on the next connection; the server stores it
//!   once and answers a retry with the first offset. It still fails with
//!   [`RequestError::Timeout`] when no reply came within the request timeout of the call.
//! * Any publish that carries a key, the caller's or a generated one, follows that rule.
//! * A publish without a key (auto idempotency off and no caller key) is sent at most once: if
//!   the connection drops while it is in flight it fails with [`RequestError::ConnectionLost`]
//!   (it may or may not have been stored). Issued while disconnected, it waits for the next
//!   connection, bounded by the request timeout.
//!
//! Seeds must differ between sessions (draw them from the OS or `crypto.getRandomValues`):
//! two sessions with the same seed generate the same keys.

mod backoff;
mod commands;
mod config;
mod connection;
mod error;
mod event;
mod inbound;
mod replace;
mod requests;
mod subscriptions;
mod token;

use std::collections::BTreeMap;
use std::time::Duration;

pub use backoff::BACKOFF_FACTOR;
pub use config::{
    Config, PublishOptions, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_JITTER, DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_PENDING, DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{RequestError, SessionError};
pub use event::{Action, ClientState, DisconnectReason, Event, RequestId, SubscriptionState};
pub use token::{refresh_lead, token_lifetime, MIN_REFRESH_LEAD};

use crate::frame::ClientFrame;
use crate::offset::StreamId;
use crate::queue::Queue;
use crate::table::Set;
use backoff::{Backoff, SplitMix64};
use requests::Requests;
use subscriptions::Subscriptions;

/// Where the session stands with its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started: [`Session::connect`] has not been called.
    Idle,
    /// [`Action::Connect`] was emitted; waiting for the transport to open.
    Connecting {
        /// Give up on this attempt at this time.
        deadline: Duration,
    },
    /// The transport is open and `connect` was sent; waiting for `connected`.
    Handshaking {
        /// Give up on this attempt at this time.
        deadline: Duration,
        /// The `connect` request's id.
        id: u64,
    },
    /// Connected ([`Event::Connected`] was emitted).
    Open {
        /// The connection answered a request; the backoff was reset.
        healthy: bool,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// Try the next target at this time.
        until: Duration,
    },
    /// [`Session::close`] was called; nothing more happens.
    Closed,
}

/// The client session state machine. See the [module documentation](self).
#[derive(Debug)]
pub struct Session {
    config: Config,
    rng: SplitMix64,
    backoff: Backoff,
    /// Reconnect delays after unreadable frames: reset only by a connection that lasted
    /// [`Config::backoff_max`], not by a reply.
    bad_frames: Backoff,
    /// When the current connection became ready.
    opened_at: Duration,
    /// When the last frame arrived on the current connection (or it became ready, or the
    /// last idle probe was sent): the idle probe of [`Config::ping_interval`] counts from it.
    last_heard: Duration,
    /// Subscribe retries after transient failures: `(due, channel)`. Entries whose channel no
    /// longer has that `retry_at` are stale and skipped.
    retries: Set<(Duration, String)>,
    /// Random prefix of generated idempotency keys.
    key_prefix: u64,
    /// The latest time seen in an input.
    now: Duration,
    state: State,
    /// Index into `config.targets` of the current or last attempt.
    target: usize,
    /// The id of the next request.
    next_id: u64,
    subs: Subscriptions,
    requests: Requests,
    /// When to ask the driver for a new token ([`Action::RefreshToken`]), if scheduled.
    token_refresh_at: Option<Duration>,
    transmit: Queue<ClientFrame>,
    events: Queue<Event>,
    actions: Queue<Action>,
}

impl Session {
    /// A session that has not connected yet; call [`Session::connect`] to start. `seed` feeds
    /// the jitter and the generated idempotency keys and must differ between sessions.
    pub fn new(config: Config, seed: u64) -> Result<Session, SessionError> {
        config.validate()?;
        let mut rng = SplitMix64::new(seed);
        let key_prefix = rng.next_u64();
        Ok(Session {
            backoff: Backoff::new(
                config.backoff_initial,
                config.backoff_max,
                config.backoff_jitter,
            ),
            bad_frames: Backoff::new(config.backoff_initial, config.backoff_max, 1.0),
            opened_at: Duration::ZERO,
            last_heard: Duration::ZERO,
            retries: Set::new(),
            config,
            rng,
            key_prefix,
            now: Duration::ZERO,
            state: State::Idle,
            target: 0,
            next_id: 1,
            subs: Subscriptions::default(),
            requests: Requests::default(),
            token_refresh_at: None,
            transmit: Queue::new(),
            events: Queue::new(),
            actions: Queue::new(),
        })
    }

    /// The next frame to send on the transport, in order.
    pub fn poll_transmit(&mut self) -> Option<ClientFrame> {
        self.transmit.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next thing to do with the transport.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Session::handle_timeout`] next, on the driver's clock; `None` when no
    /// timer is needed. A time already past means "now".
    pub fn poll_timeout(&self) -> Option<Duration> {
        let state = match self.state {
            State::Connecting { deadline } | State::Handshaking { deadline, .. } => Some(deadline),
            State::Backoff { until } => Some(until),
            State::Closed => return None,
            State::Open { .. } => {
                let retry = self.retries.first().map(|(at, _)| *at);
                retry.into_iter().chain(self.probe_due()).min()
            }
            State::Idle => None,
        };
        let requests = self.requests.next_deadline(self.now);
        [state, requests, self.token_timer()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The position of every subscribed channel (last delivered offset or server resume point),
    /// for persistence; channels without a known position yet are left out.
    pub fn offsets(&self) -> BTreeMap<String, StreamId> {
        self.subs
            .iter()
            .filter_map(|(channel, sub)| sub.position().map(|p| (channel.clone(), p)))
            .collect()
    }

    /// The position of one channel, if subscribed and known.
    pub fn offset(&self, channel: &str) -> Option<StreamId> {
        self.subs.get(channel).and_then(|s| s.position())
    }

    /// The subscribed channels, in name order.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> + '_ {
        self.subs.iter().map(|(channel, _)| channel.as_str())
    }

    /// The session's connection state (announced by [`Event::State`] when it changes).
    pub fn state(&self) -> ClientState {
        match self.state {
            State::Idle => ClientState::Disconnected,
            State::Connecting { .. } | State::Handshaking { .. } | State::Backoff { .. } => {
                ClientState::Connecting
            }
            State::Open { .. } => ClientState::Connected,
            State::Closed => ClientState::Closed,
        }
    }

    /// The state of a channel's subscription, as last announced by
    /// [`Event::SubscriptionState`] (`Unsubscribed` for a channel the session does not keep).
    pub fn subscription_state(&self, channel: &str) -> SubscriptionState {
        self.subs
            .get(channel)
            .map_or(SubscriptionState::Unsubscribed, |s| s.announced)
    }

    /// How many subscriptions the session keeps.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// How many caller requests wait for an outcome.
    pub fn pending_requests(&self) -> usize {
        self.requests.user_count()
    }

    /// Whether a connection is ready ([`Event::Connected`] was the last connection event).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Whether [`Session::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The target of the current or last connection attempt.
    pub fn current_target(&self) -> &str {
        &self.config.targets[self.target]
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the token sent on the next connections; the current connection is unaffected
    /// ([`Session::refresh_token`] also switches the open connection to the new token).
    pub fn set_token(&mut self, token: Option<String>) {
        self.config.token = token;
    }

    /// Takes the next request id.
    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Records the time of an input and stamps requests created since the last one.
    fn tick(&mut self, now: Duration) {
        self.now = self.now.max(now);
        self.requests.stamp(self.now, self.config.request_timeout);
    }

    /// The deadline of something started now.
    fn deadline(&self) -> Duration {
        self.now.saturating_add(self.config.request_timeout)
    }

    /// Announces a kept channel's new subscription state, if it changed.
    fn announce(&mut self, channel: &str, state: SubscriptionState) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.announced != state {
            sub.announced = state;
            self.events.push_back(Event::SubscriptionState {
                channel: channel.to_owned(),
                state,
                error: None,
            });
        }
    }

    /// Announces that a subscription the session just forgot is `Unsubscribed` (with why,
    /// when the caller did not ask), unless it already was.
    fn announce_removed(
        &mut self,
        channel: &str,
        sub: &subscriptions::Subscription,
        error: Option<RequestError>,
    ) {
        if sub.announced != SubscriptionState::Unsubscribed {
            self.events.push_back(Event::SubscriptionState {
                channel: channel.to_owned(),
                state: SubscriptionState::Unsubscribed,
                error,
            });
        }
    }

    /// Announces the session's connection state after a transition.
    fn announce_client(&mut self) {
        self.events.push_back(Event::State {
            state: self.state(),
        });
    }

    /// The target of the current attempt, owned.
    fn target_name(&self) -> String {
        self.config.targets[self.target].clone()
    }
}
