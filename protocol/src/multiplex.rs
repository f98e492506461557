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
//!   tab gets every message after its own offset, once, in order.
//! * `unsubscribe` is answered at once; the session's subscription ends with the channel's last
//!   tab (an `unsubscribe`, or the tab leaving).
//! * Messages are sent once per batch to all tabs ([`Output::Broadcast`]); a tab's session
//!   ignores channels it does not subscribe to and messages at or before its position. A gap
//!   goes only to the tabs of the channel whose position it passes, and starts at each one's
//!   position (a replay from an older offset may report a gap that a tab further ahead has no
//!   part in); a tab whose own offset is at or after the trimmed range is answered
//!   `truncated: false`.
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

use std::collections::VecDeque;

use crate::error::ErrorCode;
use crate::frame::{ClientFrame, ServerFrame, PROTOCOL_VERSION};
use crate::offset::{Offset, StreamId};
use crate::session::{
    DisconnectReason, Event, PublishOptions, RequestError, RequestId, Session, SessionError,
};

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

/// A tab of a channel.
#[derive(Debug)]
struct Member {
    tab: String,
    /// Its unanswered `subscribe`: (the tab's request id, the offset it asked for).
    waiting: Option<(u64, Offset)>,
    /// Once answered: the tab session's position (what it was answered with, moved by the
    /// messages and gaps sent since), as its own session keeps it.
    position: Option<StreamId>,
    /// Asked for `0` and got nothing yet: a gap from `0-0` (entries trimmed before the first
    /// retained one) is none of its business.
    from_start: bool,
}

/// A channel some tabs subscribe to.
#[derive(Debug)]
struct Channel {
    name: String,
    members: Vec<Member>,
    /// The session's `subscribe` (or replacement) in flight, and the offset it asked for.
    pending: Option<(RequestId, Offset)>,
    /// The session's subscription is from `0` and has delivered nothing yet: its position
    /// (`0-0`) does not say whether entries were trimmed before the first retained one, so it
    /// cannot answer a tab resuming from an offset.
    unsettled: bool,
}

/// The tab multiplexer. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct Multiplexer {
    /// Tabs that joined while the session was not connected.
    waiting: Vec<String>,
    /// Tabs whose virtual connection is open.
    open: Vec<String>,
    channels: Vec<Channel>,
    /// Tabs' publishes in flight: (session request, tab, the tab's request id).
    publishes: Vec<(RequestId, String, u64)>,
    outputs: VecDeque<Output>,
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
                offset,
                group: None,
                ..
            } => self.subscribe(session, tab, id, channel, offset.unwrap_or_default()),
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
                        let blind = from == Offset::Earliest;
                        c.unsettled = blind;
                        self.answer(&channel, from, offset, truncated, blind);
                    }
                }
                self.advance(session, &channel);
            }
            Event::Messages { channel, messages } => {
                if let (Some(c), Some(last)) = (self.channel_mut(&channel), messages.last()) {
                    c.unsettled = false;
                    for m in &mut c.members {
                        if let Some(p) = m.position.as_mut() {
                            *p = (*p).max(last.offset);
                            m.from_start = false;
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
            | Event::Acked { .. } => {}
        }
    }

    /// Closes a tab's virtual connection and forgets it.
    fn close(&mut self, session: &mut Session, tab: &str) {
        if self.knows(tab) {
            self.outputs.push_back(Output::Close {
                tab: tab.to_owned(),
            });
        }
        self.tab_left(session, tab);
    }

    fn subscribe(
        &mut self,
        session: &mut Session,
        tab: &str,
        id: u64,
        channel: String,
        offset: Offset,
    ) {
        if self.channel(&channel).is_none() {
            self.channels.push(Channel {
                name: channel.clone(),
                members: Vec::new(),
                pending: None,
                unsettled: false,
            });
        }
        self.remove_member(&channel, tab);
        if let Some(c) = self.channel_mut(&channel) {
            c.members.push(Member {
                tab: tab.to_owned(),
                waiting: Some((id, offset)),
                position: None,
                from_start: offset == Offset::Earliest,
            });
        }
        self.advance(session, &channel);
    }

    /// Moves a channel on when no `subscribe` of it is in flight: answers the tabs the
    /// standing subscription serves, replaces it when a tab needs older messages, subscribes
    /// from the oldest offset asked for, closes tabs the session no longer serves, and ends the
    /// subscription nobody needs (forgetting the channel: a later subscribe replaces the
    /// `unsubscribe` still in flight, see [`Session::resubscribe`]).
    fn advance(&mut self, session: &mut Session, channel: &str) {
        let Some(i) = self.channels.iter().position(|c| c.name == channel) else {
            return;
        };
        if self.channels[i].pending.is_some() {
            return; // its outcome moves the channel on
        }
        let subscribed = session.subscriptions().any(|c| c == channel);
        if self.channels[i].members.is_empty() {
            if subscribed {
                // Its outcome needs no handling: nobody waits for it.
                let _ = session.unsubscribe(channel);
            }
            self.channels.swap_remove(i);
            return;
        }
        // Tabs answered earlier lost their subscription with the session's.
        if !subscribed && self.close_members(session, channel, true) {
            return self.advance(session, channel);
        }
        let c = &mut self.channels[i];
        let wanted = c.members.iter().filter_map(|m| m.waiting.map(|w| w.1));
        let Some(from) = wanted.reduce(oldest) else {
            return; // everyone is served
        };
        let from = if subscribed {
            // Answer whom the standing subscription serves.
            let Some(p) = session.offset(channel) else {
                return; // its (re-)subscribe is answered soon and moves it on
            };
            let unsettled = c.unsettled;
            self.answer(channel, Offset::Id(p), p, false, unsettled);
            let c = &self.channels[i];
            let wanted = c.members.iter().filter_map(|m| m.waiting.map(|w| w.1));
            let Some(from) = wanted.reduce(oldest) else {
                return;
            };
            // Never past what the tabs it serves still expect.
            oldest(from, Offset::Id(p))
        } else {
            from
        };
        // A plain subscribe when nothing of the channel stands on the connection.
        match session.resubscribe(channel, from) {
            Ok(request) => self.channels[i].pending = Some((request, from)),
            Err(e) => {
                self.refuse_waiting(i, session_error(&e), &e.to_string());
                self.advance(session, channel);
            }
        }
    }

    fn advance_all(&mut self, session: &mut Session) {
        let names: Vec<String> = self.channels.iter().map(|c| c.name.clone()).collect();
        for name in names {
            self.advance(session, &name);
        }
    }

    fn request_failed(&mut self, session: &mut Session, id: RequestId, error: &RequestError) {
        let (code, message) = request_error(error);
        if let Some((tab, tab_id)) = self.take_publish(id) {
            return self.error(&tab, tab_id, code, message);
        }
        let in_flight = |c: &Channel| c.pending.is_some_and(|p| p.0 == id);
        let Some(i) = self.channels.iter().position(in_flight) else {
            return;
        };
        self.channels[i].pending = None;
        let name = self.channels[i].name.clone();
        self.refuse_waiting(i, code, &message);
        self.advance(session, &name);
    }

    /// Sends a gap to the tabs of the channel whose position it passes, each from its own
    /// position.
    fn gap(&mut self, channel: String, from: StreamId, to: StreamId) {
        let Some(c) = self.channel_mut(&channel) else {
            return;
        };
        let mut gaps = Vec::new();
        c.unsettled = false;
        for m in &mut c.members {
            let Some(p) = m.position.as_mut() else {
                continue; // unanswered: its session takes no gap yet
            };
            if m.from_start && from == StreamId::ZERO {
                continue;
            }
            if to > *p {
                let from = from.max(*p);
                if from == *p {
                    *p = to;
                }
                gaps.push((m.tab.clone(), from));
            }
        }
        for (tab, from) in gaps {
            let frame = ServerFrame::Gap {
                channel: channel.clone(),
                from,
                to,
            };
            self.send(&tab, frame);
        }
    }

    fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    fn channel_mut(&mut self, name: &str) -> Option<&mut Channel> {
        self.channels.iter_mut().find(|c| c.name == name)
    }

    fn remove_member(&mut self, channel: &str, tab: &str) {
        if let Some(c) = self.channel_mut(channel) {
            c.members.retain(|m| m.tab != tab);
        }
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

    /// Answers the channel's waiting tabs that a subscription from `from`, answered with
    /// `offset` and `truncated`, serves: those that asked for `from` or later (`$` from
    /// `offset`, an offset at or after it from itself). `blind`: the subscription does not say
    /// what was trimmed before `offset` (a reply to `0`, before any message), so it serves no
    /// tab resuming from an offset. A standing subscription at `p` answers as one from `p`.
    fn answer(
        &mut self,
        channel: &str,
        from: Offset,
        offset: StreamId,
        truncated: bool,
        blind: bool,
    ) {
        let Multiplexer {
            channels, outputs, ..
        } = self;
        let Some(c) = channels.iter_mut().find(|c| c.name == channel) else {
            return;
        };
        for m in &mut c.members {
            let Some((id, asked)) = m.waiting else {
                continue;
            };
            let resuming = matches!(asked, Offset::Id(_));
            if oldest(from, asked) != from || (blind && resuming) {
                continue; // another round
            }
            m.waiting = None;
            let (at, truncated) = match asked {
                // Nothing after the tab's own offset was trimmed.
                Offset::Id(x) if x >= offset => (x, false),
                Offset::Latest => (offset, false),
                _ => (offset, truncated),
            };
            // The tab's session keeps an offset it asked for when the reply is truncated.
            m.position = Some(match asked {
                Offset::Id(x) if truncated => x,
                _ => at,
            });
            let frame = ServerFrame::Subscribed {
                id,
                channel: c.name.clone(),
                offset: at,
                truncated,
            };
            let tab = m.tab.clone();
            outputs.push_back(Output::Send { tab, frame });
        }
    }

    /// Refuses the `subscribe` of every waiting tab of channel `i`.
    fn refuse_waiting(&mut self, i: usize, code: ErrorCode, message: &str) {
        let Multiplexer {
            channels, outputs, ..
        } = self;
        channels[i].members.retain(|m| {
            let Some((id, _)) = m.waiting else {
                return true;
            };
            let frame = ServerFrame::Error {
                id: Some(id),
                code,
                message: message.to_owned(),
            };
            let tab = m.tab.clone();
            outputs.push_back(Output::Send { tab, frame });
            false
        });
    }

    /// Closes the virtual connections of the channel's tabs (only those answered already, or
    /// all). Whether there were any.
    fn close_members(&mut self, session: &mut Session, channel: &str, answered: bool) -> bool {
        let tabs: Vec<String> = self
            .channel(channel)
            .into_iter()
            .flat_map(|c| &c.members)
            .filter(|m| !answered || m.waiting.is_none())
            .map(|m| m.tab.clone())
            .collect();
        for tab in &tabs {
            self.close(session, tab);
        }
        !tabs.is_empty()
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
