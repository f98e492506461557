//! The driver: one task that owns the socket and the sans-IO [`Session`], and `select!`s over
//! the socket, the commands of the [`Client`] handles, the session's next timeout, the
//! give-up deadline and the subscriptions' "room again" signal.
//!
//! After every input it drains the session's outputs in order: actions (open or close a
//! transport), frames (written to the socket), events (routed to waiting calls, subscription
//! buffers and the event channel). All protocol decisions (failover, backoff, resume, dedupe,
//! publish retry, replacing a subscription behind an unsubscribe) are the session's; the
//! driver only does I/O and bookkeeping of who waits for what. It never awaits the
//! application: replies go through oneshot channels and messages through bounded buffers with
//! `try_send` (see [`crate::subscription`]).

mod commands;
mod overflow;
mod route;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redistribute_protocol::encode_client;
use redistribute_protocol::session::{Action, DisconnectReason, Session};
use rustls::ClientConfig;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tracing::{debug, warn};

pub(crate) use commands::{Command, PresenceReply, Registration};
use route::{Entry, Reply};

use crate::client::Client;
use crate::error::{Error, TargetFailure};
use crate::event::{ConnectionState, Event};
use crate::token::{Fetched, TokenProvider};
use crate::transport::{self, Target, WsStream, MAX_FRAME_SIZE};

/// How long closing a socket politely may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// When re-subscribing an overflowed subscription was refused for lack of request slots.
const RESUME_RETRY: Duration = Duration::from_millis(100);

/// The driver's fixed settings, checked by the builder.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) targets: Vec<Target>,
    pub(crate) tls: Option<Arc<ClientConfig>>,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) give_up_after: Option<Duration>,
    pub(crate) subscription_buffer: usize,
    pub(crate) event_buffer: usize,
    pub(crate) command_buffer: usize,
}

/// An open transport, with the provider's token for it when there is a provider.
type Opened = Result<(WsStream, Option<Fetched>), String>;
type Connecting = Pin<Box<dyn Future<Output = Opened> + Send>>;
type Refreshing = Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send>>;

/// The task behind a [`Client`].
pub(crate) struct Driver {
    session: Session,
    settings: Arc<Settings>,
    start: Instant,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<ConnectionState>,
    wake: Arc<Notify>,
    socket: Option<WsStream>,
    connecting: Option<Connecting>,
    /// A token provider call for the live connection.
    refreshing: Option<Refreshing>,
    /// Calls and internal steps waiting for a request's outcome, by request id.
    pending: HashMap<u64, Reply>,
    /// Subscriptions with a live stream, by channel.
    entries: HashMap<String, Entry>,
    /// A subscription overflowed while routing events: see whether it can resume once they
    /// are all routed.
    overflowed: bool,
    /// Since when no connection was ready (for the give-up rule).
    disconnected_since: Option<Instant>,
    /// The last error of each target since the last connection.
    failures: HashMap<String, String>,
    /// Why the driver is stopping, when it was not asked to.
    close_error: Option<Error>,
    close_waiters: Vec<oneshot::Sender<()>>,
    resume_retry: Option<Instant>,
}

impl Driver {
    /// The driver and the first handle on it.
    pub(crate) fn new(session: Session, settings: Arc<Settings>) -> (Driver, Client) {
        let (command_tx, commands) = mpsc::channel(settings.command_buffer);
        let (events, _) = broadcast::channel(settings.event_buffer);
        let (state, state_rx) = watch::channel(ConnectionState::Connecting);
        let wake = Arc::new(Notify::new());
        let client = Client::new(
            command_tx,
            events.clone(),
            state_rx,
            wake.clone(),
            settings.subscription_buffer,
        );
        let start = Instant::now();
        let driver = Driver {
            session,
            settings,
            start,
            commands,
            events,
            state,
            wake,
            socket: None,
            connecting: None,
            refreshing: None,
            pending: HashMap::new(),
            entries: HashMap::new(),
            overflowed: false,
            disconnected_since: Some(start),
            failures: HashMap::new(),
            close_error: None,
            close_waiters: Vec::new(),
            resume_retry: None,
        };
        (driver, client)
    }

    /// Runs until the session is closed (by [`Client::close`], by every handle being dropped,
    /// or by giving up).
    pub(crate) async fn run(mut self) {
        let now = self.now();
        self.session.connect(now);
        loop {
            self.drain_session().await;
            if self.session.is_closed() {
                break;
            }
            let timer = self.session.poll_timeout().map(|at| self.start + at);
            let give_up = self
                .settings
                .give_up_after
                .zip(self.disconnected_since)
                .map(|(after, since)| since + after);
            let retry = self.resume_retry;
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => self.session.close(),
                },
                opened = until_ready(&mut self.connecting), if self.connecting.is_some() => {
                    self.connecting = None;
                    self.on_opened(opened);
                }
                fetched = until_ready(&mut self.refreshing), if self.refreshing.is_some() => {
                    self.refreshing = None;
                    self.on_refreshed(fetched);
                }
                item = next_frame(&mut self.socket), if self.socket.is_some() => {
                    self.on_socket(item);
                }
                () = sleep_until(timer), if timer.is_some() => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                }
                () = sleep_until(give_up), if give_up.is_some() => self.give_up(),
                () = sleep_until(retry), if retry.is_some() => {
                    self.resume_retry = None;
                    self.resume_ready();
                }
                () = self.wake.notified() => self.resume_ready(),
            }
        }
        self.finish().await;
    }

    /// The session's clock: time since the driver started.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Drains actions, frames and events until the session has nothing more to say (routing
    /// an event may issue commands, which produce more frames).
    async fn drain_session(&mut self) {
        loop {
            let mut busy = false;
            while let Some(action) = self.session.poll_action() {
                busy = true;
                self.on_action(action);
            }
            busy |= self.write_frames().await;
            while let Some(event) = self.session.poll_event() {
                busy = true;
                self.on_event(event);
            }
            if self.overflowed {
                busy = true;
                self.resume_ready();
            }
            if !busy {
                break;
            }
        }
    }

    fn on_action(&mut self, action: Action) {
        match action {
            Action::Connect { target } => {
                self.socket = None;
                let Some(target) = self.settings.targets.iter().find(|t| t.url == target) else {
                    // The session only names configured targets.
                    let now = self.now();
                    self.session.handle_transport_closed(
                        now,
                        DisconnectReason::transport(None, "unknown target"),
                    );
                    return;
                };
                debug!(target = %target.url, "connecting");
                let target = target.clone();
                let tls = self.settings.tls.clone();
                let timeout = self.settings.connect_timeout;
                let token = self
                    .settings
                    .token_provider
                    .as_ref()
                    .map(|p| p.fetch(self.settings.request_timeout));
                self.connecting = Some(Box::pin(async move {
                    // Every connection starts with a fresh token from the provider.
                    let token = match token {
                        Some(fetch) => Some(fetch.await?),
                        None => None,
                    };
                    Ok((transport::open(&target, tls, timeout).await?, token))
                }));
            }
            Action::RefreshToken => {
                if let Some(provider) = &self.settings.token_provider {
                    self.refreshing = Some(Box::pin(provider.fetch(self.settings.request_timeout)));
                }
            }
            Action::Close => {
                self.connecting = None;
                // A token for the connection being closed is of no use; the next connection
                // fetches its own.
                self.refreshing = None;
                if let Some(socket) = self.socket.take() {
                    tokio::spawn(close_politely(socket));
                }
            }
        }
    }

    /// Writes the session's frames; returns whether there were any.
    async fn write_frames(&mut self) -> bool {
        let Some(first) = self.session.poll_transmit() else {
            return false;
        };
        let Some(socket) = self.socket.as_mut() else {
            // Only possible if the session sent while no transport was open; nothing to do.
            while self.session.poll_transmit().is_some() {}
            return true;
        };
        let mut frames = vec![first];
        while let Some(frame) = self.session.poll_transmit() {
            frames.push(frame);
        }
        let write = async {
            for frame in &frames {
                socket
                    .feed(WsMessage::Text(encode_client(frame).into()))
                    .await?;
            }
            socket.flush().await
        };
        let reason = match tokio::time::timeout(self.settings.request_timeout, write).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => format!("write failed: {e}"),
            Err(_) => "write timed out".to_owned(),
        };
        self.socket = None;
        let now = self.now();
        self.session
            .handle_transport_closed(now, DisconnectReason::transport(None, reason));
        true
    }

    /// The provider answered a refresh of the live connection's token.
    fn on_refreshed(&mut self, fetched: Result<Fetched, String>) {
        match fetched {
            Ok((token, lifetime)) => {
                let now = self.now();
                self.session.refresh_token(now, token, lifetime);
            }
            Err(reason) => {
                warn!(%reason, "token refresh failed");
                self.emit(Event::TokenRefreshFailed { reason });
            }
        }
    }

    fn on_opened(&mut self, opened: Opened) {
        let now = self.now();
        match opened {
            Ok((socket, token)) => {
                self.socket = Some(socket);
                if let Some((token, lifetime)) = token {
                    self.session.refresh_token(now, token, lifetime);
                }
                self.session.handle_transport_open(now);
            }
            Err(reason) => {
                debug!(target = self.session.current_target(), %reason, "connect failed");
                self.session
                    .handle_transport_closed(now, DisconnectReason::transport(None, reason));
            }
        }
    }

    fn on_socket(
        &mut self,
        item: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) {
        let now = self.now();
        let reason = match item {
            Some(Ok(WsMessage::Text(text))) => {
                // Text that does not decode is never skipped: the session ends the channel's
                // subscription, or the connection, and says so.
                self.session.handle_text(text.as_str(), now);
                return;
            }
            Some(Ok(WsMessage::Close(frame))) => match frame {
                Some(f) => DisconnectReason::transport(Some(f.code.into()), f.reason.as_str()),
                None => DisconnectReason::transport(None, "closed by the server"),
            },
            // Pings are answered by tungstenite; binary frames are not part of the protocol.
            Some(Ok(_)) => return,
            Some(Err(tungstenite::Error::Capacity(e))) => {
                // A frame above MAX_FRAME_SIZE: unreadable, and it would come again at the same
                // offset after a resume, so the session reconnects with a growing delay.
                warn!(error = %e, "server frame above the client's limit");
                self.socket = None;
                let reason = format!("{e} (the client's limit is {MAX_FRAME_SIZE} bytes)");
                self.session.handle_bad_frame(reason, now);
                return;
            }
            Some(Err(e)) => DisconnectReason::transport(None, e.to_string()),
            None => DisconnectReason::transport(None, "connection closed"),
        };
        self.socket = None;
        self.session.handle_transport_closed(now, reason);
    }

    /// No connection for `give_up_after`: stop, failing everything with `Unreachable`.
    fn give_up(&mut self) {
        let after = self.settings.give_up_after.unwrap_or_default();
        let failures = self
            .settings
            .targets
            .iter()
            .filter_map(|t| {
                self.failures.get(&t.url).map(|reason| TargetFailure {
                    target: t.url.clone(),
                    reason: reason.clone(),
                })
            })
            .collect();
        let error = Error::Unreachable { after, failures };
        debug!(%error, "giving up");
        self.close_error = Some(error);
        self.session.close();
    }

    /// Stops: ends every subscription stream, publishes the final state, answers `close`.
    async fn finish(mut self) {
        self.connecting = None;
        if let Some(socket) = self.socket.take() {
            close_politely(socket).await;
        }
        self.entries.clear();
        let error = self.close_error.clone().unwrap_or(Error::Closed);
        for (_, reply) in self.pending.drain() {
            reply.fail(error.clone());
        }
        let error = self.close_error.take();
        self.state.send_replace(ConnectionState::Closed {
            error: error.clone(),
        });
        let _ = self.events.send(Event::Closed { error });
        for waiter in self.close_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Records a target's failure for [`Error::Unreachable`].
    fn record_failure(&mut self, target: String, reason: &DisconnectReason) {
        let text = match reason {
            // The driver's own description already says what failed.
            DisconnectReason::Transport { code: None, reason } => reason.clone(),
            other => other.to_string(),
        };
        self.failures.insert(target, text);
    }

    fn emit(&self, event: Event) {
        // No receiver is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }
}

/// Sends a close frame and waits briefly for the peer.
async fn close_politely(mut socket: WsStream) {
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(None)).await;
}

async fn until_ready<T>(pending: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match pending {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn next_frame(
    socket: &mut Option<WsStream>,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
