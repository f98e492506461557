//! Per channel: the tabs subscribed (answered, or waiting for their answer, with their
//! positions as their own sessions keep them), the session's `subscribe` in flight, and the
//! rules that move a channel on (answer, replace, refuse, close, end).

use super::{oldest, request_error, session_error, Multiplexer, Output};
use crate::error::ErrorCode;
use crate::frame::ServerFrame;
use crate::offset::{Offset, StreamId};
use crate::session::{RequestError, RequestId, Session};

/// A tab of a channel.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) tab: String,
    /// Its unanswered `subscribe`: (the tab's request id, the offset it asked for).
    pub(super) waiting: Option<(u64, Offset)>,
    /// Once answered: the tab session's position (what it was answered with, moved by the
    /// messages and gaps sent since), as its own session keeps it.
    pub(super) position: Option<StreamId>,
}

/// A channel some tabs subscribe to.
#[derive(Debug)]
pub(super) struct Channel {
    pub(super) name: String,
    pub(super) members: Vec<Member>,
    /// The session's `subscribe` (or replacement) in flight, and the offset it asked for.
    pub(super) pending: Option<(RequestId, Offset)>,
}

impl Multiplexer {
    /// Closes a tab's virtual connection and forgets it.
    pub(super) fn close(&mut self, session: &mut Session, tab: &str) {
        if self.knows(tab) {
            self.outputs.push_back(Output::Close {
                tab: tab.to_owned(),
            });
        }
        self.tab_left(session, tab);
    }

    pub(super) fn subscribe(
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
            });
        }
        self.remove_member(&channel, tab);
        if let Some(c) = self.channel_mut(&channel) {
            c.members.push(Member {
                tab: tab.to_owned(),
                waiting: Some((id, offset)),
                position: None,
            });
        }
        self.advance(session, &channel);
    }

    /// Moves a channel on when no `subscribe` of it is in flight: answers the tabs the
    /// standing subscription serves, replaces it when a tab needs older messages, subscribes
    /// from the oldest offset asked for, closes tabs the session no longer serves, and ends the
    /// subscription nobody needs (forgetting the channel: a later subscribe replaces the
    /// `unsubscribe` still in flight, see [`Session::resubscribe`]).
    pub(super) fn advance(&mut self, session: &mut Session, channel: &str) {
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
            self.answer(channel, Offset::Id(p), p, false);
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
        // Never from `0`: its answer (`0-0`) does not say what was trimmed before the first
        // retained entry, which every tab but one asking for `0` is owed as a gap.
        let from = if from == Offset::Earliest {
            Offset::Id(StreamId::ZERO)
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

    pub(super) fn advance_all(&mut self, session: &mut Session) {
        let names: Vec<String> = self.channels.iter().map(|c| c.name.clone()).collect();
        for name in names {
            self.advance(session, &name);
        }
    }

    pub(super) fn request_failed(
        &mut self,
        session: &mut Session,
        id: RequestId,
        error: &RequestError,
    ) {
        let (code, message) = request_error(error);
        if let Some((tab, tab_id)) = self.take_publish(id).or_else(|| self.take_history(id)) {
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
    pub(super) fn gap(&mut self, channel: String, from: StreamId, to: StreamId) {
        let Some(c) = self.channel_mut(&channel) else {
            return;
        };
        let mut gaps = Vec::new();
        for m in &mut c.members {
            let Some(p) = m.position.as_mut() else {
                continue; // unanswered: its session takes no gap yet
            };
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

    pub(super) fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    pub(super) fn channel_mut(&mut self, name: &str) -> Option<&mut Channel> {
        self.channels.iter_mut().find(|c| c.name == name)
    }

    pub(super) fn remove_member(&mut self, channel: &str, tab: &str) {
        if let Some(c) = self.channel_mut(channel) {
            c.members.retain(|m| m.tab != tab);
        }
    }

    /// Answers the channel's waiting tabs that a subscription from `from`, answered with
    /// `offset` and `truncated`, serves: those that asked for `from` or later, `0` counting as
    /// `0-0` (`$` and `0` from `offset`, after whatever was trimmed; an offset at or after it
    /// from itself). A standing subscription at `p` answers as one from `p`.
    pub(super) fn answer(
        &mut self,
        channel: &str,
        from: Offset,
        offset: StreamId,
        truncated: bool,
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
            let floor = match asked {
                Offset::Earliest => Offset::Id(StreamId::ZERO),
                other => other,
            };
            if oldest(from, floor) != from {
                continue; // another round
            }
            m.waiting = None;
            let (at, truncated) = match asked {
                // Nothing after the tab's own offset was trimmed.
                Offset::Id(x) if x >= offset => (x, false),
                Offset::Latest | Offset::Earliest => (offset, false),
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
    pub(super) fn refuse_waiting(&mut self, i: usize, code: ErrorCode, message: &str) {
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
    pub(super) fn close_members(
        &mut self,
        session: &mut Session,
        channel: &str,
        answered: bool,
    ) -> bool {
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
}
