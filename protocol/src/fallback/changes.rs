//! Subscription changes: which frames go in the next stream opening, and the opening's URL.

use super::url::escape;
use super::{Channel, Fallback, Op, SseReader};
use crate::frame::ClientFrame;

impl Fallback {
    /// Opens the next stream for the queued changes, unless one is opening.
    pub(super) fn advance(&mut self) {
        if self.opening || self.closed {
            return;
        }
        let mut batch: Vec<ClientFrame> = Vec::new();
        let mut next = self.live.clone();
        let mut before = self.live.clone();
        while let Some(frame) = self.queue.first() {
            let channel = change_channel(frame);
            let seen = batch.iter().any(|f| change_channel(f) == channel);
            let single = self.one_by_one > 0
                && matches!(frame, ClientFrame::Subscribe { .. })
                && batch
                    .iter()
                    .any(|f| matches!(f, ClientFrame::Subscribe { .. }));
            if seen || single {
                break;
            }
            let frame = self.queue.remove(0);
            match &frame {
                ClientFrame::Subscribe {
                    channel, offset, ..
                } => {
                    next.retain(|c| c.name != *channel);
                    before.retain(|c| c.name != *channel);
                    next.push(Channel {
                        name: channel.clone(),
                        at: offset.unwrap_or_default(),
                    });
                    self.one_by_one = self.one_by_one.saturating_sub(1);
                }
                ClientFrame::Unsubscribe { channel, .. } => {
                    next.retain(|c| c.name != *channel);
                    before.retain(|c| c.name != *channel);
                }
                _ => {}
            }
            batch.push(frame);
        }
        if batch.is_empty() {
            return;
        }
        let changes_stream = next != self.live;
        if next.is_empty() || !changes_stream {
            // Nothing to open (every channel unsubscribed, or unsubscribes of channels the
            // stream does not carry): answer now.
            if next.is_empty() && self.streaming {
                self.ops.push(Op::Abort);
                self.streaming = false;
                self.epoch += 1;
                self.answer_pings();
            }
            self.live = next;
            for frame in &batch {
                self.answer_unsubscribe(frame);
            }
            return self.advance();
        }
        self.live = next;
        self.before = before;
        self.open(batch);
    }

    /// Opens a stream for [`Fallback::live`], answering `batch` once it opens.
    pub(super) fn open(&mut self, batch: Vec<ClientFrame>) {
        self.epoch += 1;
        self.streaming = true;
        self.opening = true;
        self.batch = batch;
        self.reader = SseReader::default();
        self.early_gaps.clear();
        self.truncated.clear();
        let mut url = self.route("sse?");
        for (i, c) in self.live.iter().enumerate() {
            if i > 0 {
                url.push('&');
            }
            url.push_str("channel=");
            escape(&mut url, &c.name);
            url.push_str("&offset=");
            escape(&mut url, &c.at.to_string());
        }
        self.ops.push(Op::Open {
            epoch: self.epoch,
            url,
            token: self.token.clone(),
        });
    }
}

/// The channel of a queued change (only `subscribe` and `unsubscribe` are queued; one match
/// for both uses, and no panic path in the browser client).
fn change_channel(frame: &ClientFrame) -> &str {
    match frame {
        ClientFrame::Subscribe { channel, .. } | ClientFrame::Unsubscribe { channel, .. } => {
            channel
        }
        _ => "",
    }
}
