//! Subscription objects: the page's `Subscription`s, at most one per channel, each with its own
//! listeners. Their state is the session's ([`Session::subscription_state`]); this module only
//! keeps the registry, picks where a subscribe starts and routes a channel's events to its
//! object's listeners (`events` decides which events, `Driver::dispatch` delivers them).
//!
//! [`Session::subscription_state`]: redistribute_protocol::session::Session::subscription_state

use js_sys::{Function, Promise};
use redistribute_protocol::session::SubscriptionState;
use redistribute_protocol::{validate_channel, Offset, StreamId};
use wasm_bindgen::JsValue;

use super::{js_error, Driver, Inner, Out, Reply};
use crate::errors::{ErrorInfo, CANCELLED, DUPLICATE_SUBSCRIPTION};

/// The events of a subscription object, in the order of its listener lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubTopic {
    State = 0,
    Subscribed = 1,
    Unsubscribed = 2,
    Messages = 3,
    Gap = 4,
    Error = 5,
}

impl SubTopic {
    /// The topic of an event name given to a subscription's `on`/`off`.
    pub(crate) fn parse(name: &str) -> Option<SubTopic> {
        Some(match name {
            "state" => SubTopic::State,
            "subscribed" => SubTopic::Subscribed,
            "unsubscribed" => SubTopic::Unsubscribed,
            "messages" => SubTopic::Messages,
            "gap" => SubTopic::Gap,
            "error" => SubTopic::Error,
            _ => return None,
        })
    }
}

/// A subscription object's options (`SubscriptionOptions`), checked.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SubOptions {
    /// Where its first subscribe starts.
    pub(crate) offset: Offset,
    /// Or, without an offset, the channel's last this many messages first.
    pub(crate) rewind: Option<u64>,
}

/// One subscription object.
pub(super) struct Object {
    /// Identifies it among the objects of the channel over time.
    id: u32,
    pub(super) channel: String,
    options: SubOptions,
    /// The last message delivered to it (or the end of a gap it was told of): a later
    /// subscribe continues after it.
    pub(super) last: Option<StreamId>,
    pub(super) listeners: [Vec<Function>; 6],
}

impl Inner {
    /// The object of a channel.
    pub(super) fn object(&mut self, channel: &str) -> Option<&mut Object> {
        self.objects.iter_mut().find(|o| o.channel == channel)
    }

    /// Queues an event for the listeners of `channel`'s object, if it has one.
    pub(super) fn sub_emit(&mut self, channel: &str, topic: SubTopic, args: Vec<JsValue>) {
        if self.object(channel).is_some() {
            self.queue
                .push_back(Out::Sub(channel.to_owned(), topic, args));
        }
    }

    /// Records the last offset delivered to `channel`'s object.
    pub(super) fn sub_advance(&mut self, channel: &str, to: StreamId) {
        if let Some(o) = self.object(channel) {
            o.last = Some(o.last.map_or(to, |l| l.max(to)));
        }
    }
}

impl Driver {
    /// A new object for `channel` (not subscribed); its id. Refused for a channel that has
    /// one already.
    pub(crate) fn new_subscription(
        &self,
        channel: String,
        options: SubOptions,
    ) -> Result<u32, ErrorInfo> {
        validate_channel(&channel)
            .map_err(|e| ErrorInfo::new(crate::errors::BAD_REQUEST, e.to_string()))?;
        let mut inner = self.0.borrow_mut();
        if inner.object(&channel).is_some() {
            return Err(ErrorInfo::new(
                DUPLICATE_SUBSCRIPTION,
                "the channel has a subscription already: use getSubscription",
            )
            .on(channel));
        }
        inner.next_object += 1;
        let id = inner.next_object;
        inner.objects.push(Object {
            id,
            channel,
            options,
            last: None,
            listeners: Default::default(),
        });
        Ok(id)
    }

    /// The id of `channel`'s object, if any.
    pub(crate) fn subscription_id(&self, channel: &str) -> Option<u32> {
        self.0.borrow_mut().object(channel).map(|o| o.id)
    }

    /// Forgets an object (it hears nothing more) and unsubscribes its channel.
    pub(crate) fn remove_subscription(&self, id: u32) {
        {
            let mut inner = self.0.borrow_mut();
            let Some(i) = inner.objects.iter().position(|o| o.id == id) else {
                return;
            };
            let channel = inner.objects.swap_remove(i).channel;
            if inner.session.subscription_state(&channel) != SubscriptionState::Unsubscribed {
                let _ = inner.session.unsubscribe(channel);
            }
        }
        self.pump();
    }

    /// Runs `f` on an object, if it was not removed.
    fn with_object<T>(&self, id: u32, f: impl FnOnce(&mut Object) -> T) -> Option<T> {
        self.0
            .borrow_mut()
            .objects
            .iter_mut()
            .find(|o| o.id == id)
            .map(f)
    }

    /// Adds (or, with `add` false, removes) a listener of an object.
    pub(crate) fn sub_listen(&self, id: u32, topic: SubTopic, listener: Function, add: bool) {
        self.with_object(id, |o| {
            let list = &mut o.listeners[topic as usize];
            match list.iter().position(|l| *l == listener) {
                Some(i) if !add => {
                    list.remove(i);
                }
                _ if add => list.push(listener),
                _ => {}
            }
        });
    }

    /// An object's state name.
    pub(crate) fn sub_state(&self, channel: &str) -> &'static str {
        self.0.borrow().session.subscription_state(channel).as_str()
    }

    /// Subscribes an object: from its last delivered message, or its offset at first. On a
    /// subscription that stands, this re-subscribes from the same point (nothing lost or
    /// repeated).
    pub(crate) fn sub_subscribe(&self, id: u32) -> Promise {
        let found = self.with_object(id, |o| {
            let from = match (o.last, o.options.rewind) {
                (Some(last), _) => Ok(Offset::Id(last)),
                (None, Some(rewind)) => Err(rewind),
                (None, None) => Ok(o.options.offset),
            };
            (o.channel.clone(), from)
        });
        match found {
            Some((channel, from)) => self.request(Reply::Subscribe, |s| match from {
                Ok(offset) => s.subscribe(channel, offset),
                Err(rewind) => s.subscribe_rewind(channel, rewind),
            }),
            None => removed(),
        }
    }

    /// Unsubscribes an object; resolves `true`.
    pub(crate) fn sub_unsubscribe(&self, id: u32) -> Promise {
        match self.with_object(id, |o| o.channel.clone()) {
            Some(channel) => self.unsubscribe(channel),
            None => removed(),
        }
    }

    /// `client.subscribe(channel, from)`: the channel's object (made if missing), set to
    /// start where `options` say, subscribed.
    pub(crate) fn subscribe(&self, channel: String, options: SubOptions) -> Promise {
        let id = match self.subscription_id(&channel) {
            Some(id) => id,
            None => match self.new_subscription(channel, options) {
                Ok(id) => id,
                Err(e) => return Promise::reject(&js_error(&e)),
            },
        };
        self.with_object(id, |o| {
            o.options = options;
            o.last = None;
        });
        self.sub_subscribe(id)
    }
}

/// The rejection of a call on a removed object.
fn removed() -> Promise {
    Promise::reject(&js_error(&ErrorInfo::new(
        CANCELLED,
        "this subscription was removed",
    )))
}
