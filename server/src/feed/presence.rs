//! A feed's presence memberships ([`crate::presence`]): joining on a presence channel after
//! subscribing, leaving with the subscription or the feed, and the join/leave events that
//! arrive in the feed's inbox, delivered as `presence_event` frames.

use std::sync::Arc;
use std::task::{Context, Poll};

use redistribute_protocol::{encode_server, PresenceMember, ServerFrame};

use super::Feed;
use crate::error::RequestError;
use crate::presence::Inbox;

/// A feed's presence memberships ([`crate::presence`]).
pub(super) struct FeedPresence {
    /// Channels this connection is a member of.
    channels: Vec<Arc<str>>,
    /// Where the channels' join/leave events arrive, once one subscription asked for them.
    inbox: Option<(Arc<Inbox>, tokio::sync::mpsc::Receiver<()>)>,
}

impl Feed {
    /// Makes this connection a presence member of `channel` (subscribed just before), with
    /// `join_leave`, a listener of the channel's join/leave events. Refused (the member cap,
    /// the info size, the engine), the caller ends the subscription.
    pub(crate) async fn join_presence(
        &mut self,
        channel: &str,
        member: PresenceMember,
        join_leave: bool,
    ) -> Result<(), RequestError> {
        let max_events = self.core.presence.config().max_events;
        let rare = self.rare.get_or_insert_with(Box::default);
        let presence = rare.presence.get_or_insert_with(|| FeedPresence {
            channels: Vec::new(),
            inbox: None,
        });
        let listener = match (join_leave, &presence.inbox) {
            (false, _) => None,
            (true, Some((inbox, _))) => Some((self.id, inbox.clone())),
            (true, None) => {
                let (inbox, rx) = Inbox::new(max_events);
                presence.inbox = Some((inbox.clone(), rx));
                Some((self.id, inbox))
            }
        };
        let channel: Arc<str> = Arc::from(channel);
        self.core.presence.join(&channel, member, listener).await?;
        presence.channels.push(channel);
        Ok(())
    }

    /// Ends the presence membership in `channel`, if any.
    pub(super) fn leave_presence(&mut self, channel: &str) {
        let Some(presence) = self.rare.as_mut().and_then(|r| r.presence.as_mut()) else {
            return;
        };
        if let Some(i) = presence.channels.iter().position(|c| &**c == channel) {
            let channel = presence.channels.swap_remove(i);
            if let Some((inbox, _)) = &presence.inbox {
                inbox.forget(&channel);
            }
            self.core
                .presence
                .leave(&channel, self.core.client_id(self.id), self.id);
        }
    }

    /// Ends every presence membership (the feed is cleared or dropped).
    pub(super) fn leave_all_presence(&mut self) {
        if let Some(presence) = self.rare.as_mut().and_then(|r| r.presence.take()) {
            for channel in &presence.channels {
                let client = self.core.client_id(self.id);
                self.core.presence.leave(channel, client, self.id);
            }
        }
    }

    /// Moves join/leave events waiting in the inbox into the collector; whether there were
    /// any.
    pub(super) fn poll_presence(&mut self, cx: &mut Context<'_>) -> bool {
        let presence = self.rare.as_mut().and_then(|r| r.presence.as_mut());
        let Some((inbox, rx)) = presence.and_then(|p| p.inbox.as_mut()) else {
            return false;
        };
        if !matches!(rx.poll_recv(cx), Poll::Ready(Some(()))) {
            return false;
        }
        for frame in inbox.take() {
            if let ServerFrame::PresenceEvent(event) = &frame {
                let channel: Arc<str> = Arc::from(event.channel.as_str());
                self.out.push_text(channel, encode_server(&frame));
            }
        }
        true
    }
}
