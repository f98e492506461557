//! Connection lifecycle: attempts, handshake, failover with backoff, and what a new or lost
//! connection means for subscriptions and pending requests.
//!
//! States: `Idle` → `Connecting` (transport asked for) → `Handshaking` (only with a token) →
//! `Open` → on loss `Backoff` → `Connecting` to the next target … ; `Closed` is terminal.
//! Inputs that do not fit the current state (a late "closed" for a transport the session already
//! wrote off, a frame while backing off) are ignored.

use std::time::Duration;

use super::error::RequestError;
use super::event::{Action, ClientState, DisconnectReason, Event, RequestId, SubscriptionState};
use super::requests::{Kind, Origin, Pending};
use super::{Session, State};
use crate::frame::ClientFrame;

impl Session {
    /// Starts the session: asks for a transport to the first target. Later calls do nothing.
    pub fn connect(&mut self, now: Duration) {
        self.tick(now);
        if self.state == State::Idle {
            self.start_attempt();
            self.announce_client();
        }
    }

    /// The transport asked for by [`Action::Connect`] is open.
    pub fn handle_transport_open(&mut self, now: Duration) {
        self.tick(now);
        if !matches!(self.state, State::Connecting { .. }) {
            return;
        }
        match self.config.token.clone() {
            Some(token) => {
                let id = self.alloc_id();
                self.transmit.push_back(ClientFrame::Connect {
                    id,
                    token: Some(token),
                });
                self.state = State::Handshaking {
                    deadline: self.deadline(),
                    id,
                };
            }
            None => self.establish(false),
        }
    }

    /// The transport closed or could not be opened. The session backs off and then tries the
    /// next target.
    pub fn handle_transport_closed(&mut self, now: Duration, reason: DisconnectReason) {
        self.tick(now);
        self.fail_connection(reason, false);
    }

    /// The driver has reason to believe the network is back (a browser's `online` event, a
    /// hidden page becoming visible): when the session is waiting out a backoff delay before
    /// its next attempt, that attempt starts now. Otherwise (connecting, connected, not started
    /// or closed) it does nothing, so it never opens a second connection. Failure counts are
    /// kept: if this attempt fails too, the next delay is as long as it would have been.
    pub fn retry_now(&mut self, now: Duration) {
        self.tick(now);
        if let State::Backoff { until } = self.state {
            if until > self.now {
                self.state = State::Backoff { until: self.now };
            }
            self.handle_timeout(now);
        }
    }

    /// When the next idle probe is due on the open connection, if [`Config::ping_interval`]
    /// is set.
    ///
    /// [`Config::ping_interval`]: super::Config::ping_interval
    pub(super) fn probe_due(&self) -> Option<Duration> {
        let interval = self.config.ping_interval?;
        Some(self.last_heard.saturating_add(interval))
    }

    /// Sends a `ping` on the open connection when nothing arrived for
    /// [`Config::ping_interval`](super::Config::ping_interval); an internal request, so its
    /// timeout ends the connection.
    fn fire_probe(&mut self) {
        if !self.is_connected() || self.probe_due().is_none_or(|due| due > self.now) {
            return;
        }
        self.last_heard = self.now;
        self.send_probe();
    }

    /// Sends an internal `ping` on the open connection: its reply proves the connection
    /// healthy, and its timeout ends it.
    fn send_probe(&mut self) {
        let id = self.alloc_id();
        let deadline = self.deadline();
        let mut probe = Pending::new(Kind::Ping, Origin::Internal);
        probe.sent = true;
        self.requests.insert(id, probe, Some(deadline));
        self.transmit.push_back(ClientFrame::Ping { id });
    }

    /// Fires the timers that are due: attempt and handshake deadlines, backoff, request
    /// timeouts, idle probes. Call it at (or after) the time [`Session::poll_timeout`] named.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.tick(now);
        match self.state {
            State::Connecting { deadline } | State::Handshaking { deadline, .. }
                if deadline <= self.now =>
            {
                self.fail_connection(DisconnectReason::Timeout, true);
            }
            State::Backoff { until } if until <= self.now => {
                self.target = (self.target + 1) % self.config.targets.len();
                self.start_attempt();
            }
            _ => {}
        }
        while let Some((id, pending)) = self.requests.pop_expired(self.now) {
            self.expire(id, pending);
        }
        self.fire_retries();
        self.fire_token_refresh();
        self.fire_probe();
    }

    /// Sends `subscribe` again for the channels whose retry after a transient failure is due.
    fn fire_retries(&mut self) {
        while let Some((at, channel)) = self.retries.first().cloned() {
            if at > self.now || !self.is_connected() {
                return;
            }
            self.retries.pop_first();
            let due = self
                .subs
                .get_mut(&channel)
                .filter(|s| s.retry_at == Some(at) && s.inflight.is_none());
            if let Some(sub) = due {
                sub.retry_at = None;
                self.send_subscribe(&channel);
            }
        }
    }

    /// Asks the driver for a transport to the current target.
    fn start_attempt(&mut self) {
        self.state = State::Connecting {
            deadline: self.deadline(),
        };
        self.actions.push_back(Action::Connect {
            target: self.target_name(),
        });
    }

    /// The connection is ready: announce it, re-subscribe every channel from its position, then
    /// send the requests that waited for a connection.
    pub(super) fn establish(&mut self, healthy: bool) {
        self.state = State::Open { healthy };
        self.opened_at = self.now;
        self.last_heard = self.now;
        // Every channel is subscribed now: pending retries are moot.
        self.retries.clear();
        for (_, sub) in self.subs.iter_mut() {
            sub.retry_at = None;
        }
        self.events.push_back(Event::Connected {
            target: self.target_name(),
        });
        self.announce_client();
        let channels: Vec<String> = self.subs.iter().map(|(c, _)| c.clone()).collect();
        for channel in channels {
            self.send_subscribe(&channel);
        }
        for id in self.requests.ids() {
            let Some(p) = self.requests.get(id) else {
                continue;
            };
            if p.sent || matches!(p.kind, Kind::Subscribe { .. }) {
                continue;
            }
            let frame = request_frame(id, &p.kind);
            if let Some(p) = self.requests.get_mut(id) {
                p.sent = true;
            }
            self.transmit.push_back(frame);
        }
        if self.transmit.is_empty() && !healthy {
            // Nothing to ask, yet the backoff resets only on a reply: probe.
            self.send_probe();
        }
    }

    /// Sends `subscribe` for a channel on the open connection, from its position. The caller's
    /// request, when one waits, lends its id; otherwise the session makes an internal request.
    pub(super) fn send_subscribe(&mut self, channel: &str) {
        let Some(sub) = self.subs.get(channel) else {
            return;
        };
        let (offset, rewind) = sub.resume_from();
        let sub_group = sub.group.clone();
        let id = match sub.waiter {
            Some(waiter) => {
                if let Some(p) = self.requests.get_mut(waiter) {
                    p.sent = true;
                }
                waiter
            }
            None => {
                let id = self.alloc_id();
                let mut pending = Pending::new(
                    Kind::Subscribe {
                        channel: channel.to_owned(),
                    },
                    Origin::Internal,
                );
                pending.sent = true;
                let deadline = self.deadline();
                self.requests.insert(id, pending, Some(deadline));
                id
            }
        };
        let (group, consumer) = sub_group.unzip();
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.inflight = Some(id);
        }
        self.transmit.push_back(ClientFrame::Subscribe {
            id,
            channel: channel.to_owned(),
            offset,
            group,
            consumer,
            rewind,
            join_leave: self.config.join_leave,
        });
    }

    /// Ends the current attempt or connection (if any): reports it, settles the requests that
    /// cannot survive it, and schedules the next attempt after a backoff delay.
    pub(super) fn fail_connection(&mut self, reason: DisconnectReason, close_transport: bool) {
        self.fail_connection_after(reason, close_transport, Duration::ZERO);
    }

    /// The server sent something unreadable that belongs to no one channel: drop the
    /// connection and resume from unchanged positions, after a delay that grows with each
    /// such failure soon after connecting (a reply resets the ordinary backoff, not this one).
    pub(super) fn fail_bad_frame(&mut self, reason: String) {
        if !matches!(self.state, State::Handshaking { .. } | State::Open { .. }) {
            return;
        }
        let lasted = matches!(self.state, State::Open { .. })
            && self.now.saturating_sub(self.opened_at) >= self.config.backoff_max;
        if lasted {
            self.bad_frames.reset();
        }
        let at_least = self.bad_frames.next_equal_jitter(&mut self.rng);
        self.fail_connection_after(DisconnectReason::BadFrame { reason }, true, at_least);
    }

    /// [`Session::fail_connection`], waiting at least `at_least` before the next attempt.
    fn fail_connection_after(
        &mut self,
        reason: DisconnectReason,
        close_transport: bool,
        at_least: Duration,
    ) {
        let event = match self.state {
            State::Connecting { .. } | State::Handshaking { .. } => Event::ConnectFailed {
                target: self.target_name(),
                reason,
            },
            State::Open { .. } => Event::Disconnected { reason },
            State::Idle | State::Backoff { .. } | State::Closed => return,
        };
        if close_transport {
            self.actions.push_back(Action::Close);
        }
        let was_open = matches!(event, Event::Disconnected { .. });
        self.events.push_back(event);
        if was_open {
            self.events.push_back(Event::State {
                state: ClientState::Connecting,
            });
        }
        self.lose_connection();
        let delay = self.backoff.next_delay(&mut self.rng).max(at_least);
        self.state = State::Backoff {
            until: self.now.saturating_add(delay),
        };
    }

    /// Settles requests after the transport is gone. Frames never handed to the driver count as
    /// not sent. Internal requests die with the connection; re-sendable caller requests wait
    /// for the next one.
    pub(super) fn lose_connection(&mut self) {
        // A Vec, not a HashSet: the driver drains `transmit` at every turn, so it holds a few
        // frames at most, and the browser client ships less code.
        let unsent: Vec<u64> = self.transmit.take_all().map(|f| f.id()).collect();
        self.subs.connection_lost();
        let confirmed: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.announced == SubscriptionState::Subscribed)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in confirmed {
            self.announce(&channel, SubscriptionState::Subscribing);
        }
        for id in self.requests.ids() {
            let Some(p) = self.requests.get_mut(id) else {
                continue;
            };
            let sent = p.sent && !unsent.contains(&id);
            p.sent = false;
            let fate = match (p.origin, &p.kind) {
                (Origin::Internal, _) => Fate::Forget,
                // The next connection will not subscribe it: done either way.
                (Origin::User, Kind::Unsubscribe { channel }) => Fate::Done(channel.clone()),
                (Origin::User, Kind::Publish { key: None, .. } | Kind::Ping) if sent => Fate::Lost,
                (Origin::User, _) => Fate::Keep,
            };
            match fate {
                Fate::Keep => {}
                Fate::Forget => {
                    self.requests.remove(id);
                }
                Fate::Done(channel) => {
                    self.requests.remove(id);
                    self.events.push_back(Event::Unsubscribed {
                        id: RequestId(id),
                        channel,
                    });
                }
                Fate::Lost => {
                    self.requests.remove(id);
                    self.fail(id, RequestError::ConnectionLost);
                }
            }
        }
    }

    /// A request ran out of time. A caller's request fails; an internal one means the
    /// connection is not answering, so it is given up.
    fn expire(&mut self, id: u64, pending: Pending) {
        if pending.origin == Origin::Internal {
            if let Kind::Subscribe { channel } = &pending.kind {
                self.clear_inflight(channel, id);
            }
            self.fail_connection(DisconnectReason::Timeout, true);
            return;
        }
        if let Kind::Subscribe { channel } = &pending.kind {
            let was_current = self.subs.get(channel).is_some_and(|s| s.waiter == Some(id));
            if was_current {
                let removed = self.subs.remove(channel);
                if pending.sent && self.is_connected() {
                    // The server may still subscribe us: undo it, without waiting for a reply.
                    let undo = self.alloc_id();
                    self.send_unsubscribe(undo, channel);
                }
                self.fail(id, RequestError::Timeout);
                if let Some(sub) = removed {
                    self.announce_removed(channel, &sub, Some(RequestError::Timeout));
                }
                return;
            }
        }
        self.fail(id, RequestError::Timeout);
    }

    /// Forgets that `id` is the subscribe in flight for `channel`.
    pub(super) fn clear_inflight(&mut self, channel: &str, id: u64) {
        if let Some(sub) = self.subs.get_mut(channel) {
            if sub.inflight == Some(id) {
                sub.inflight = None;
            }
        }
    }

    /// Emits the failure of a caller's request (already removed from the table).
    pub(super) fn fail(&mut self, id: u64, error: RequestError) {
        self.events.push_back(Event::RequestFailed {
            id: RequestId(id),
            error,
        });
    }
}

/// What a lost connection means for one pending request.
enum Fate {
    /// It waits for the next connection.
    Keep,
    /// It dies silently (internal requests).
    Forget,
    /// An `unsubscribe` that is complete anyway.
    Done(String),
    /// It fails with [`RequestError::ConnectionLost`].
    Lost,
}

/// The frame of a pending request other than `subscribe` (whose frame comes from the
/// subscription table).
pub(super) fn request_frame(id: u64, kind: &Kind) -> ClientFrame {
    match kind {
        Kind::Subscribe { channel } => ClientFrame::Subscribe {
            id,
            channel: channel.clone(),
            offset: None,
            group: None,
            consumer: None,
            rewind: None,
            join_leave: false,
        },
        Kind::Unsubscribe { channel } => ClientFrame::Unsubscribe {
            id,
            channel: channel.clone(),
        },
        Kind::Publish {
            channel,
            fields,
            maxlen,
            key,
        } => ClientFrame::Publish {
            id,
            channel: channel.clone(),
            fields: fields.clone(),
            maxlen: *maxlen,
            idempotency_key: key.clone(),
        },
        Kind::Ack {
            channel,
            group,
            offsets,
        } => ClientFrame::Ack {
            id,
            channel: channel.clone(),
            group: group.clone(),
            offsets: offsets.clone(),
        },
        Kind::History { channel, options } => ClientFrame::History {
            id,
            channel: channel.clone(),
            from: options.from,
            to: options.to,
            limit: options.limit,
            reverse: options.reverse,
        },
        Kind::Ping => ClientFrame::Ping { id },
        Kind::Presence { channel, stats } => {
            let channel = channel.clone();
            match stats {
                true => ClientFrame::PresenceStats { id, channel },
                false => ClientFrame::Presence { id, channel },
            }
        }
        Kind::Refresh { token } => ClientFrame::Connect {
            id,
            token: Some(token.clone()),
        },
    }
}
