//! The tab multiplexer: one [`Session`] (one real connection) serving the virtual connections
//! of several clients, e.g. the tabs of a browser that share one WebSocket.
//!
//! Every tab runs its own [`Session`] (its own subscriptions, positions, dedupe and publish
//! retries) whose transport is a virtual connection to the leader, which owns the real session
//! and a [`Multiplexer`]. The multiplexer answers the tabs' frames the way the server would, using
//! the real session, and is sans-IO like it: the driver feeds it
//!
//! * [`Multiplexer::tab_joined`] / [`Multiplexer::tab_left`]: a tab asked for a virtual
//!   connection, or its connection ended (closed, or the tab went away);
//! * [`Multiplexer::handle_frame`]: a client frame from a tab;
//! * [`Multiplexer::handle_event`]: every event of the real session (including its connects and
//!   disconnects), instead of handing them to an application;
//!
//! and carries out its [`Output`]s ([`Multiplexer::poll_output`]): open or close a tab's virtual
//! connection, send a frame to one tab or to all of them. The session commands it needs
//! (subscribe, replace a subscription, unsubscribe, publish) it runs on the session passed in,
//! which must be the same session every time; the driver then drains that session's actions,
//! frames and events as usual.
//!
//! # Rules
//!
//! * A tab's virtual connection opens only while the session is connected
//!   ([`Output::Open`] at once, or on the next [`Event::Connected`]), and every one closes
//!   ([`Output::Down`]) when the session loses its connection: each tab's `connect` and
//!   `disconnect` follow the real connection, and each tab then re-subscribes from its own
//!   positions over a new virtual connection. Frames of a tab whose connection is not open are
//!   ignored.
//! * `subscribe` from a tab at offset X: if the session's subscription of the channel already
//!   stands at a position P with P ≤ X (or X is `$`), the tab is answered at once (from X, or
//!   from P for `$`). Otherwise the session replaces its subscription with one from the oldest
//!   offset the channel's waiting tabs asked for ([`Session::resubscribe`]), which replays the
//!   messages after it to every tab, and each tab's session drops what it already has. So each
//!   tab gets every message after its own offset, once, in order. The session never subscribes
//!   from `0` (whose answer, `0-0`, does not say what was trimmed) but from `0-0`, whose answer
//!   does (`truncated` and a gap): a tab asking for `0` is answered after the trimmed entries.
//! * `unsubscribe` is answered at once; the session's subscription ends with the channel's last
//!   tab (an `unsubscribe`, or the tab leaving).
//! * Messages are sent once per batch to all tabs ([`Output::Broadcast`]); a tab's session
//!   ignores channels it does not subscribe to and messages at or before its position. A gap
//!   goes only to the tabs of the channel whose position it passes, and starts at each one's
//!   position (a replay from an older offset may report a gap that a tab further ahead has no
//!   part in); a tab whose own offset is at or after the trimmed range is answered
//!   `truncated: false`.
//! * `history` is read by the session and the page goes back to the tab. `subscribe` with
//!   `rewind: N` is resolved first with a `reverse` history read of `N` messages: the tab is
//!   then subscribed like one asking for the offset before the oldest of them (`0` when the
//!   channel holds fewer), so the seam is exact as for any offset.
//! * `publish` is published by the session (the tab's idempotency key is kept, so a tab that
//!   retries it after a reconnect stores it once) and the outcome goes back to the tab;
//!   `connect` and `ping` are answered at once; consumer groups are refused (`bad_request`):
//!   they are not shared between tabs.
//! * When the session loses a subscription (a permanent refusal of its re-subscribe, a frame it
//!   cannot decode), the virtual connections of the channel's tabs close ([`Output::Close`]):
//!   each tab reconnects, re-subscribes from its own position, and hears the server's answer
//!   itself, as it would alone.
//!
//! # Invariants
//!
//! * Only open tabs are members of a channel; a tab that leaves or is closed is forgotten
//!   everywhere (channels, pending publishes).
//! * A channel has at most one session request in flight (a subscribe or an unsubscribe); its
//!   outcome moves the channel on.
//! * A tab answered `subscribed` is served by the session's subscription from then on: every
//!   message after the offset it was answered with reaches it, unless a gap it is told of.

mod channels;

use crate::error::ErrorCode;
use crate::frame::{ClientFrame, ServerFrame, PROTOCOL_VERSION};
use crate::history::{HistoryOptions, Page, PageFrame};
use crate::offset::Offset;
use crate::queue::Queue;
use crate::session::{
    DisconnectReason, Event, PublishOptions, RequestError, RequestId, Session, SessionError,
};
use channels::Channel;

/// Something the driver must do for the tabs.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open this tab's virtual connection.
    Open {
        /// The tab, as given to [`Multiplexer::tab_joined`].
        tab: String,
    },
    /// Close this tab's virtual connection; the tab may join again.
    Close {
        /// The tab.
        tab: String,
    },
    /// Close every tab's virtual connection: the session lost its connection.
    Down,
    /// The session's connection attempt failed (tabs report it like their own).
    ConnectFailed {
        /// The target that failed.
        target: String,
        /// Why.
        reason: DisconnectReason,
    },
    /// Send a frame to one tab.
    Send {
        /// The tab.
        tab: String,
        /// The frame.
        frame: ServerFrame,
    },
    /// Send a frame to every tab (each one's session ignores what it does not subscribe to).
    Broadcast {
        /// The frame.
        frame: ServerFrame,
    },
}

/// The tab multiplexer. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct Multiplexer {
    /// Tabs that joined while the session was not connected.
    waiting: Vec<String>,
    /// Tabs whose virtual connection is open.
    open: Vec<String>,
    channels: Vec<Channel>,
    /// Tabs' publishes and presence requests in flight: (session request, tab, the tab's
    /// request id).
    publishes: Vec<(RequestId, String, u64)>,
    /// Tabs' history reads in flight: (session request, tab, the tab's request id, and for a
    /// rewind being resolved, how many messages it asked for).
    histories: Vec<(RequestId, String, u64, Option<u64>)>,
    outputs: Queue<Output>,
}

/// The older of two offsets to subscribe from (`0` before any id before `$`).
pub fn oldest(a: Offset, b: Offset) -> Offset {
    match (a, b) {
        (Offset::Earliest, _) | (_, Offset::Earliest) => Offset::Earliest,
        (Offset::Id(x), Offset::Id(y)) => Offset::Id(x.min(y)),
        (Offset::Id(x), Offset::Latest) | (Offset::Latest, Offset::Id(x)) => Offset::Id(x),
        (Offset::Latest, Offset::Latest) => Offset::Latest,
    }
}

/// The wire error a tab gets for a session request that failed. Failures that may pass are
/// `unavailable`, so the tab's session retries; an undecodable frame is `bad_request`, so it
/// does not ask for the same frame forever.
pub fn request_error(error: &RequestError) -> (ErrorCode, String) {
    match error {
        RequestError::Server { code, message } => (*code, message.clone()),
        RequestError::Undecodable { .. } => (ErrorCode::BadRequest, error.to_string()),
        other => (ErrorCode::Unavailable, other.to_string()),
    }
}

/// The wire error a tab gets for a command the session refused.
fn session_error(error: &SessionError) -> ErrorCode {
    match error {
        SessionError::Backpressure { .. } => ErrorCode::RateLimited,
        SessionError::Closed => ErrorCode::Unavailable,
        SessionError::Invalid(_) | SessionError::Config(_) => ErrorCode::BadRequest,
    }
}

impl Multiplexer {
    /// A multiplexer with no tab.
    pub fn new() -> Multiplexer {
        Multiplexer::default()
    }

    /// The next thing to do for the tabs, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether a tab joined and has not left (its connection is open or waits for the
    /// session's).
    pub fn knows(&self, tab: &str) -> bool {
        self.open.iter().chain(&self.waiting).any(|t| t == tab)
    }

    /// Whether a tab's virtual connection is open.
    pub fn is_open(&self, tab: &str) -> bool {
        self.open.iter().any(|t| t == tab)
    }

    /// The tabs subscribed to a channel (answered or waiting for their answer), in the order
    /// they subscribed.
    pub fn members(&self, channel: &str) -> impl Iterator<Item = &str> + '_ {
        self.channel(channel)
            .into_iter()
            .flat_map(|c| c.members.iter().map(|m| m.tab.as_str()))
    }

    /// A tab asks for a virtual connection (anew: whatever it had is forgotten). It opens at
    /// once when the session is connected, else on its next connection.
    pub fn tab_joined(&mut self, session: &mut Session, tab: &str) {
        self.tab_left(session, tab);
        if session.is_connected() {
            self.open.push(tab.to_owned());
            self.outputs.push_back(Output::Open {
                tab: tab.to_owned(),
            });
        } else {
            self.waiting.push(tab.to_owned());
        }
    }

    /// A tab's virtual connection ended (it closed it, or the tab is gone): it is forgotten,
    /// and the session's subscriptions that no other tab needs end.
    pub fn tab_left(&mut self, session: &mut Session, tab: &str) {
        self.waiting.retain(|t| t != tab);
        self.open.retain(|t| t != tab);
        self.publishes.retain(|(_, t, _)| t != tab);
        self.histories.retain(|(_, t, _, _)| t != tab);
        let mut touched = Vec::new();
        for c in &mut self.channels {
            let before = c.members.len();
            c.members.retain(|m| m.tab != tab);
            if c.members.len() != before {
                touched.push(c.name.clone());
            }
        }
        for name in touched {
            self.advance(session, &name);
        }
    }

    /// A client frame from a tab (ignored unless its virtual connection is open).
    pub fn handle_frame(&mut self, session: &mut Session, tab: &str, frame: ClientFrame) {
        if !self.is_open(tab) {
            return;
        }
        match frame {
            ClientFrame::Subscribe {
                id,
                channel,
                rewind: Some(rewind),
                group: None,
                ..
            } if rewind > 0 => {
                let options = HistoryOptions {
                    limit: Some(rewind),
                    reverse: true,
                    ..HistoryOptions::default()
                };
                self.read(session, tab, id, channel, options, Some(rewind));
            }
            ClientFrame::Subscribe {
                id,
                channel,
                offset,
                group: None,
                ..
            } => self.subscribe(session, tab, id, channel, offset.unwrap_or_default()),
            ClientFrame::History {
                id,
                channel,
                from,
                to,
                limit,
                reverse,
            } => {
                let options = HistoryOptions {
                    from,
                    to,
                    limit,
                    reverse,
                };
                self.read(session, tab, id, channel, options, None);
            }
            ClientFrame::Unsubscribe { id, channel } => {
                self.remove_member(&channel, tab);
                let frame = ServerFrame::Unsubscribed {
                    id,
                    channel: channel.clone(),
                };
                self.send(tab, frame);
                self.advance(session, &channel);
            }
            ClientFrame::Publish {
                id,
                channel,
                fields,
                maxlen,
                idempotency_key,
            } => {
                let options = PublishOptions {
                    maxlen,
                    idempotency_key,
                };
                match session.publish(channel, fields, options) {
                    Ok(request) => self.publishes.push((request, tab.to_owned(), id)),
                    Err(e) => self.error(tab, id, session_error(&e), e.to_string()),
                }
            }
            ClientFrame::Ping { id } => self.send(tab, ServerFrame::Pong { id }),
            ClientFrame::Connect { id, .. } => {
                let frame = ServerFrame::Connected {
                    id,
                    client: tab.to_owned(),
                    version: PROTOCOL_VERSION,
                };
                self.send(tab, frame);
            }
            other @ (ClientFrame::Subscribe { .. } | ClientFrame::Ack { .. }) => {
                let message = "consumer groups are not shared between tabs".to_owned();
                self.error(tab, other.id(), ErrorCode::BadRequest, message);
            }
            // Presence requests go through the real session, answered to the tab by its id.
            ClientFrame::Presence { id, channel } => match session.presence(channel) {
                Ok(request) => self.publishes.push((request, tab.to_owned(), id)),
                Err(e) => self.error(tab, id, session_error(&e), e.to_string()),
            },
            ClientFrame::PresenceStats { id, channel } => match session.presence_stats(channel) {
                Ok(request) => self.publishes.push((request, tab.to_owned(), id)),
                Err(e) => self.error(tab, id, session_error(&e), e.to_string()),
            },
        }
    }

    /// An event of the session, which the multiplexer consumes instead of an application.
    pub fn handle_event(&mut self, session: &mut Session, event: Event) {
        match event {
            Event::Connected { .. } => {
                for tab in std::mem::take(&mut self.waiting) {
                    self.outputs.push_back(Output::Open { tab: tab.clone() });
                    self.open.push(tab);
                }
            }
            Event::ConnectFailed { target, reason } => {
                self.outputs
                    .push_back(Output::ConnectFailed { target, reason });
            }
            Event::Disconnected { .. } => {
                // Every tab reconnects and re-subscribes from its own positions.
                self.outputs.push_back(Output::Down);
                self.open.clear();
                self.publishes.clear();
                self.histories.clear();
                for c in &mut self.channels {
                    c.members.clear();
                }
                self.advance_all(session);
            }
            Event::Subscribed {
                id,
                channel,
                offset,
                truncated,
                ..
            } => {
                if let Some(c) = self.channel_mut(&channel) {
                    if let Some((_, from)) = c.pending.filter(|p| p.0 == id) {
                        c.pending = None;
                        self.answer(&channel, from, offset, truncated);
                    }
                }
                self.advance(session, &channel);
            }
            Event::Messages { channel, messages } => {
                if let (Some(c), Some(last)) = (self.channel_mut(&channel), messages.last()) {
                    for m in &mut c.members {
                        if let Some(p) = m.position.as_mut() {
                            *p = (*p).max(last.offset);
                        }
                    }
                }
                let frame = ServerFrame::Messages { channel, messages };
                self.outputs.push_back(Output::Broadcast { frame });
            }
            Event::Gap { channel, from, to } => self.gap(channel, from, to),
            Event::Published {
                id,
                channel,
                offset,
            } => {
                if let Some((tab, tab_id)) = self.take_publish(id) {
                    let frame = ServerFrame::Published {
                        id: tab_id,
                        channel,
                        offset,
                    };
                    self.send(&tab, frame);
                }
            }
            Event::History { id, channel, page } => self.history(session, id, channel, page),
            Event::RequestFailed { id, error } => self.request_failed(session, id, &error),
            Event::SubscriptionLost { channel, .. } => {
                // Each tab re-subscribes over a new connection and hears the answer itself.
                self.close_members(session, &channel, false);
                self.advance(session, &channel);
            }
            Event::ServerError { code, message } => {
                let frame = ServerFrame::Error {
                    id: None,
                    code,
                    message,
                };
                self.outputs.push_back(Output::Broadcast { frame });
            }
            // The outcome of its own `unsubscribe` (the channel is forgotten already), and
            // what only the session acts on.
            Event::Unsubscribed { .. }
            | Event::SubscribeRetrying { .. }
            | Event::Pong { .. }
            | Event::Acked { .. }
            | Event::State { .. }
            | Event::SubscriptionState { .. } => {}
            Event::Presence {
                id,
                channel,
                members,
            } => {
                if let Some((tab, tab_id)) = self.take_publish(id) {
                    let frame = ServerFrame::PresenceMembers {
                        id: tab_id,
                        channel,
                        members,
                    };
                    self.send(&tab, frame);
                }
            }
            Event::PresenceStats {
                id,
                channel,
                clients,
                users,
            } => {
                if let Some((tab, tab_id)) = self.take_publish(id) {
                    let frame = ServerFrame::PresenceCounts {
                        id: tab_id,
                        channel,
                        clients,
                        users,
                    };
                    self.send(&tab, frame);
                }
            }
            // Join/leave events (the real session asks for them when the leader's page did)
            // go to every tab; the sessions of tabs not subscribed to the channel drop them.
            Event::PresenceChanged(event) => {
                let frame = ServerFrame::PresenceEvent(event);
                self.outputs.push_back(Output::Broadcast { frame });
            }
        }
    }

    /// Reads history for a tab through the session: its own request, or (with `rewind`) the
    /// read that resolves its rewinding subscribe.
    fn read(
        &mut self,
        session: &mut Session,
        tab: &str,
        id: u64,
        channel: String,
        options: HistoryOptions,
        rewind: Option<u64>,
    ) {
        match session.history(channel, options) {
            Ok(request) => self.histories.push((request, tab.to_owned(), id, rewind)),
            Err(e) => self.error(tab, id, session_error(&e), e.to_string()),
        }
    }

    /// A page the session read for a tab: the tab's answer, or where its rewind starts.
    fn history(&mut self, session: &mut Session, id: RequestId, channel: String, page: Page) {
        let Some(i) = self.histories.iter().position(|h| h.0 == id) else {
            return;
        };
        let (_, tab, tab_id, rewind) = self.histories.swap_remove(i);
        match rewind {
            Some(n) => {
                let short = (page.messages.len() as u64) < n && !page.more;
                let offset = match page.messages.last() {
                    Some(oldest) if !short => oldest
                        .offset
                        .predecessor()
                        .map_or(Offset::Earliest, Offset::Id),
                    _ if short => Offset::Earliest,
                    _ => Offset::Latest,
                };
                self.subscribe(session, &tab, tab_id, channel, offset);
            }
            None => {
                let frame =
                    ServerFrame::HistoryPage(Box::new(PageFrame::new(tab_id, channel, page)));
                self.send(&tab, frame);
            }
        }
    }

    fn take_history(&mut self, id: RequestId) -> Option<(String, u64)> {
        let i = self.histories.iter().position(|h| h.0 == id)?;
        let (_, tab, tab_id, _) = self.histories.swap_remove(i);
        Some((tab, tab_id))
    }

    fn take_publish(&mut self, id: RequestId) -> Option<(String, u64)> {
        let i = self.publishes.iter().position(|p| p.0 == id)?;
        let (_, tab, tab_id) = self.publishes.swap_remove(i);
        Some((tab, tab_id))
    }

    fn send(&mut self, tab: &str, frame: ServerFrame) {
        self.outputs.push_back(Output::Send {
            tab: tab.to_owned(),
            frame,
        });
    }

    fn error(&mut self, tab: &str, id: u64, code: ErrorCode, message: String) {
        let frame = ServerFrame::Error {
            id: Some(id),
            code,
            message,
        };
        self.send(tab, frame);
    }
}
