//! [`Client`]: the cloneable handle. Every call becomes a [`Command`] for the driver task and
//! waits for its answer on a oneshot channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redistribute_protocol::history::{HistoryOptions, Page as HistoryPage};
use redistribute_protocol::session::PublishOptions;
use redistribute_protocol::{Fields, Offset, PresenceMember, ProtocolError, StreamId};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::builder::ClientBuilder;
use crate::channel::{ChannelSubscription, SubscribeOptions};
use crate::driver::{Command, PresenceReply, Registration};
use crate::error::Error;
use crate::event::{ConnectionState, Event, Events};
use crate::group::GroupSubscription;
use crate::subscription::Subscription;

/// A handle on one connection to a redistribute deployment (one driver task, one session).
/// Clones share it. The client lives while a clone or a [`Subscription`] does, or until
/// [`Client::close`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    state: watch::Receiver<ConnectionState>,
    wake: Arc<Notify>,
    subscription_buffer: usize,
    next_sub: AtomicU64,
}

impl Client {
    /// A builder; at least one target is needed.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        events: broadcast::Sender<Event>,
        state: watch::Receiver<ConnectionState>,
        wake: Arc<Notify>,
        subscription_buffer: usize,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                commands,
                events,
                state,
                wake,
                subscription_buffer,
                next_sub: AtomicU64::new(1),
            }),
        }
    }

    /// Subscribes to `channel` from `offset`: [`Offset::Latest`] (only new messages),
    /// [`Offset::Earliest`] (everything retained) or [`Offset::Id`] (after a saved offset,
    /// e.g. [`Subscription::last_offset`]). Returns once the server confirmed it.
    ///
    /// The subscription survives reconnects and failovers: it resumes from its last delivered
    /// offset, so the stream yields each message once and in order. Subscribing again to a
    /// channel replaces the earlier subscription (whose stream ends), a
    /// [`ChannelSubscription`] of the channel included (it ends `Unsubscribed` with
    /// [`Error::Cancelled`]).
    ///
    /// The returned [`Subscription`] is a [`ChannelSubscription`] whose stream yields only the
    /// messages and ends when it is unsubscribed.
    pub async fn subscribe(
        &self,
        channel: impl Into<String>,
        offset: impl Into<Offset>,
    ) -> Result<Subscription, Error> {
        self.open_subscription(channel.into(), offset.into(), None)
            .await
    }

    /// Subscribes to `channel` with options: from an offset like [`Client::subscribe`], or
    /// with [`SubscribeOptions::rewind`] starting with the channel's last messages, then live
    /// (late joiners; a "latest value" channel is `rewind(1)`; a rewind with an offset other
    /// than [`Offset::Latest`] is refused as [`Error::Invalid`]). The server resolves a
    /// rewind to the offset before those messages ([`Subscription::start_offset`]), so every
    /// message after it arrives exactly once, in order, however publishes race the subscribe.
    /// After a reconnect the subscription resumes from its last offset; it does not rewind
    /// again.
    ///
    /// ```no_run
    /// # async fn run(client: redistribute_client::Client) -> Result<(), redistribute_client::Error> {
    /// use redistribute_client::SubscribeOptions;
    /// let options = SubscribeOptions::new().rewind(1);
    /// let mut latest = client.subscribe_with("prices", options).await?;
    /// while let Some(message) = latest.recv().await {
    ///     println!("{} {:?}", message.offset, message.fields);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        let object = self.register(channel.into(), options, None, true).await?;
        let start = object.subscribe().await?;
        Ok(Subscription::new(object, start))
    }

    /// Reads one page of `channel`'s stored messages: those in `(from, to]` (`from` exclusive,
    /// default `0`: the oldest retained; `to` inclusive, default the newest), oldest first or,
    /// with `reverse`, newest first; at most `limit` (1 to 1000, default 100) and about 1 MiB
    /// (always at least one message when the range has one). Authorized like a subscribe; the
    /// channel need not be subscribed. Continue with [`HistoryPage::next`] as `from` (or as
    /// `to` with `reverse`) while [`HistoryPage::more`]; [`HistoryPage::truncated`] and
    /// [`HistoryPage::gap`] say what of the range was trimmed away. Re-sent after a reconnect
    /// until answered, within the request timeout.
    ///
    /// ```no_run
    /// # async fn run(client: redistribute_client::Client) -> Result<(), redistribute_client::Error> {
    /// use redistribute_client::{HistoryOptions, Offset};
    /// let mut options = HistoryOptions { limit: Some(500), ..HistoryOptions::default() };
    /// loop {
    ///     let page = client.history("orders", options).await?;
    ///     for message in &page.messages {
    ///         println!("{} {:?}", message.offset, message.fields);
    ///     }
    ///     if !page.more {
    ///         break;
    ///     }
    ///     options.from = Some(Offset::Id(page.next));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        channel: impl Into<String>,
        options: HistoryOptions,
    ) -> Result<HistoryPage, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::History {
            channel: channel.into(),
            options,
            reply,
        })
        .await?;
        self.answer(answer).await
    }

    /// A subscription object for `channel`, not subscribed yet: call
    /// [`ChannelSubscription::subscribe`]. It has a state ([`SubscriptionState`](crate::SubscriptionState), also as a
    /// watch) and a stream of [`SubscriptionEvent`](crate::SubscriptionEvent)s; see
    /// [`crate::channel`]. Fails with [`Error::DuplicateSubscription`] when the client already
    /// has a subscription of the channel (an object or a [`Client::subscribe`] stream): drop
    /// that one first. Dropping the object unsubscribes.
    pub async fn new_subscription(
        &self,
        channel: impl Into<String>,
        options: SubscribeOptions,
    ) -> Result<ChannelSubscription, Error> {
        self.register(channel.into(), options, None, false).await
    }

    /// Registers a subscription object with the driver.
    async fn register(
        &self,
        channel: String,
        options: SubscribeOptions,
        group: Option<(String, String)>,
        replace: bool,
    ) -> Result<ChannelSubscription, Error> {
        if options.rewind.is_some() && options.offset != Offset::Latest {
            return Err(Error::Invalid(ProtocolError::InvalidFrame {
                kind: "subscribe".into(),
                reason: "\"rewind\" and \"offset\" cannot be given together".into(),
            }));
        }
        let sub = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let (object, parts) = ChannelSubscription::create(
            channel.clone(),
            sub,
            self.inner.subscription_buffer,
            self.inner.wake.clone(),
            self.clone(),
        );
        let registration = Registration {
            channel,
            options,
            sub,
            parts,
            group,
            replace,
        };
        self.call(|reply| Command::Register {
            registration,
            reply,
        })
        .await?;
        Ok(object)
    }

    /// Registers a (plain or group) subscription that replaces any other of the channel,
    /// subscribes it and, once the server confirmed it, returns its message stream.
    async fn open_subscription(
        &self,
        channel: String,
        offset: Offset,
        group: Option<(String, String)>,
    ) -> Result<Subscription, Error> {
        let options = SubscribeOptions::new().offset(offset);
        let object = self.register(channel, options, group, true).await?;
        let start = object.subscribe().await?;
        Ok(Subscription::new(object, start))
    }

    /// Sends a command made with a reply channel and waits for the answer.
    pub(crate) async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        self.answer(answer).await
    }

    /// A subscription object was dropped: unsubscribe it (best effort: when the command
    /// queue is full the driver notices the closed buffer at the channel's next event).
    pub(crate) fn dropped(&self, channel: String, sub: u64) {
        let _ = self
            .inner
            .commands
            .try_send(Command::Dropped { channel, sub });
    }

    /// Joins consumer group `group` of `channel` as `consumer` (a worker): each message of the
    /// channel goes to one consumer of the group and must be acknowledged
    /// ([`GroupMessage::ack`](crate::GroupMessage::ack)) or it is delivered again: to this consumer after a reconnect
    /// (its pending messages come first), or to another one once it has been left
    /// unacknowledged for the server's idle time. `start` says where the group begins if this
    /// call creates it ([`Offset::Latest`]: new messages only; [`Offset::Earliest`]: all
    /// retained). Returns once the server confirmed it; survives reconnects like
    /// [`Client::subscribe`], as the same consumer.
    pub async fn subscribe_group(
        &self,
        channel: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        start: impl Into<Offset>,
    ) -> Result<GroupSubscription, Error> {
        let group = group.into();
        let inner = self
            .open_subscription(
                channel.into(),
                start.into(),
                Some((group.clone(), consumer.into())),
            )
            .await?;
        Ok(GroupSubscription::new(inner, group, self.clone()))
    }

    /// Acknowledges messages of consumer group `group` of `channel` by offset; returns how
    /// many were pending (already acknowledged ones, or ones reclaimed by another consumer
    /// and acknowledged there, do not count). Re-sent after a reconnect until answered.
    pub async fn ack(
        &self,
        channel: impl Into<String>,
        group: impl Into<String>,
        offsets: Vec<StreamId>,
    ) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ack {
            channel: channel.into(),
            group: group.into(),
            offsets,
            reply,
        })
        .await?;
        self.answer(answer).await
    }

    /// Stops the subscription of `channel` (its stream ends) and tells the server. Does
    /// nothing when the channel is not subscribed.
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Unsubscribe {
            channel: channel.into(),
            reply,
        })
        .await?;
        self.answer(answer).await
    }

    /// Publishes a message and returns its offset once the server stored it. `fields` must
    /// serialize to a non-empty JSON object (a `serde_json::json!({…})`, a map, a struct).
    ///
    /// Across a disconnect the publish is re-sent on the next connection with an automatic
    /// idempotency key, so it is stored once (see
    /// [`ClientBuilder::auto_idempotency`]); it fails with [`Error::Timeout`] when no reply
    /// came within the request timeout, and then may or may not have been stored.
    pub async fn publish(
        &self,
        channel: impl Into<String>,
        fields: impl Serialize,
    ) -> Result<StreamId, Error> {
        self.publish_with(channel, fields, PublishOptions::default())
            .await
    }

    /// [`publish`](Self::publish) with options: `maxlen` (trim the channel to about this
    /// many entries) and an explicit `idempotency_key`.
    pub async fn publish_with(
        &self,
        channel: impl Into<String>,
        fields: impl Serialize,
        options: PublishOptions,
    ) -> Result<StreamId, Error> {
        let fields = to_fields(fields)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Publish {
            channel: channel.into(),
            fields,
            options,
            reply,
        })
        .await?;
        self.answer(answer).await
    }

    /// Sends a `ping` and returns the round-trip time (including any wait for a connection).
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ping { reply }).await?;
        self.answer(answer).await?;
        Ok(started.elapsed())
    }

    /// Who is subscribed to `channel` (one member per connection: a user on two connections
    /// is two members), on a channel the server has presence enabled on (`not_found`
    /// otherwise); allowed where subscribing is. This client need not be subscribed.
    pub async fn presence(&self, channel: impl Into<String>) -> Result<Vec<PresenceMember>, Error> {
        let (reply, answer) = oneshot::channel();
        let reply = PresenceReply::Members(reply);
        self.send(Command::Presence {
            channel: channel.into(),
            reply,
        })
        .await?;
        self.answer(answer).await
    }

    /// How many connections and distinct users are subscribed to `channel` (see
    /// [`presence`](Self::presence)).
    pub async fn presence_stats(&self, channel: impl Into<String>) -> Result<PresenceStats, Error> {
        let (reply, answer) = oneshot::channel();
        let reply = PresenceReply::Counts(reply);
        self.send(Command::Presence {
            channel: channel.into(),
            reply,
        })
        .await?;
        self.answer(answer).await
    }

    /// A receiver of connection events from now on (connected, disconnected, resubscribed,
    /// gaps…).
    pub fn events(&self) -> Events {
        Events::new(self.inner.events.subscribe())
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A watch of the connection state: `changed().await` wakes at every change
    /// (`Connecting` → `Connected` → `Connecting` … → `Closed`), `borrow()` reads it.
    pub fn state_watch(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Whether a connection is ready now.
    pub fn is_connected(&self) -> bool {
        matches!(
            *self.inner.state.borrow(),
            ConnectionState::Connected { .. }
        )
    }

    /// Waits until a connection is ready. Fails when the client stops first:
    /// [`Error::Unreachable`] if it gave up, [`Error::Closed`] if it was closed.
    pub async fn wait_connected(&self) -> Result<(), Error> {
        let mut state = self.inner.state.clone();
        let result = state
            .wait_for(|s| !matches!(s, ConnectionState::Connecting))
            .await
            .map(|s| s.clone());
        match result {
            Ok(ConnectionState::Connected { .. }) => Ok(()),
            Ok(ConnectionState::Closed { error }) => Err(error.unwrap_or(Error::Closed)),
            Ok(ConnectionState::Connecting) | Err(_) => Err(self.closed_error()),
        }
    }

    /// Closes the client: pending calls fail with [`Error::Closed`], subscription streams end,
    /// the connection is closed. Returns once the driver has stopped. Further calls on any
    /// clone fail with [`Error::Closed`].
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Close { reply })
            .await
            .is_ok()
        {
            let _ = self.until_stopped(answer).await;
        }
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| self.closed_error())
    }

    async fn answer<T>(&self, answer: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
        self.until_stopped(answer)
            .await
            .unwrap_or_else(|| Err(self.closed_error()))
    }

    /// Waits for the driver's answer, or for the driver to stop (`None`). A command can be
    /// accepted by the channel while the stopping driver drops its end, after it drained it:
    /// such a command (and its reply sender) stays in the channel as long as any handle
    /// lives, so its answer alone would never come. The driver answers every command it took
    /// before it marks itself closed, so an answer that exists is never missed.
    async fn until_stopped<T>(&self, answer: oneshot::Receiver<T>) -> Option<T> {
        let mut state = self.inner.state.clone();
        tokio::select! {
            biased;
            reply = answer => reply.ok(),
            _ = state.wait_for(|s| matches!(s, ConnectionState::Closed { .. })) => None,
        }
    }

    /// The error for calls on a stopped client: why it stopped, if it gave up.
    fn closed_error(&self) -> Error {
        match &*self.inner.state.borrow() {
            ConnectionState::Closed { error: Some(error) } => error.clone(),
            _ => Error::Closed,
        }
    }
}

/// Serializes publish fields, which must be a JSON object.
fn to_fields(fields: impl Serialize) -> Result<Fields, Error> {
    match serde_json::to_value(fields) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::Fields(format!(
            "fields must be a JSON object, not {}",
            kind(&other)
        ))),
        Err(e) => Err(Error::Fields(format!("cannot serialize fields: {e}"))),
    }
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_must_be_an_object() {
        assert_eq!(to_fields(json!({"a": 1})).unwrap()["a"], json!(1));
        let err = to_fields(json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid fields: fields must be a JSON object, not an array"
        );
        #[derive(Serialize)]
        struct Order {
            id: u32,
        }
        assert_eq!(to_fields(Order { id: 7 }).unwrap()["id"], json!(7));
    }

    /// A command accepted by the channel after the stopping driver drained it is never
    /// answered (its reply sender stays in the channel while a handle lives); the call must
    /// end once the driver says it has stopped, not wait forever. Seen in practice as
    /// `redistribute pub --give-up-after 1` hanging after giving up, about once in 200 runs.
    #[tokio::test]
    async fn calls_end_when_the_driver_stopped_without_answering() {
        let (commands, mut unanswered) = mpsc::channel(8);
        let (events, _) = broadcast::channel(8);
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let client = Client::new(commands, events, state, Arc::default(), 8);
        let error = Error::Unreachable {
            after: Duration::from_secs(1),
            failures: Vec::new(),
        };
        let publish = tokio::spawn({
            let client = client.clone();
            async move { client.publish("c", json!({"a": 1})).await }
        });
        // The "driver" takes nothing; it only says it stopped.
        tokio::time::sleep(Duration::from_millis(50)).await;
        state_tx.send_replace(ConnectionState::Closed {
            error: Some(error.clone()),
        });
        let published = tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .expect("publish still waiting 10 s after the stop");
        assert_eq!(published.unwrap(), Err(error));
        tokio::time::timeout(Duration::from_secs(10), client.close())
            .await
            .expect("close still waiting 10 s after the stop");
        assert!(
            unanswered.try_recv().is_ok(),
            "the commands were never taken"
        );
    }
}

/// A channel's presence counts ([`Client::presence_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceStats {
    /// Members: subscribed connections.
    pub clients: u64,
    /// Distinct users among them (members without a user count once each).
    pub users: u64,
}
