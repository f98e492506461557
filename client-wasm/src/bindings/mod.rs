//! What JavaScript sees: the exported `Client` class and the TypeScript types of its
//! arguments and results (the browser APIs the client imports are in `browser`).
//!
//! Arguments from the page are checked here and turned into Rust values; the work is done by
//! [`Driver`]. Requests return promises; refused arguments reject them (or, for `new Client`
//! and `on`, throw) with a JS `Error` whose `code` is one of [`crate::errors`].

mod options;
mod types;

use js_sys::{Array, Function, Promise};
use redistribute_protocol::Fields;
use wasm_bindgen::prelude::*;

use crate::driver::{js_error, Driver, SubTopic, Topic};
use crate::errors::{ErrorInfo, BAD_REQUEST};

use options::*;

/// A redistribute connection: subscriptions that survive reconnects and failover, publishes,
/// and a localStorage cache of the messages (`load`).
#[wasm_bindgen]
pub struct Client {
    driver: Driver,
}

#[wasm_bindgen]
impl Client {
    /// Creates a client and starts connecting (on the next turn of the event loop, so the
    /// listeners added right after construction hear everything). Throws an `Error` with code
    /// `bad_config` for unusable options.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "ClientOptions")] options: JsValue,
    ) -> Result<Client, JsValue> {
        let setup = setup(&options).map_err(|e| js_error(&e))?;
        let driver = Driver::new(setup).map_err(|e| js_error(&e))?;
        Ok(Client { driver })
    }

    /// Adds a listener: `connect(target)`, `disconnect(reason)`, `messages(channel, messages)`
    /// or `error(err)`. (Its TypeScript type, generic over the event, is in `TYPES`.)
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: &str, listener: Function) -> Result<(), JsValue> {
        self.driver.on(topic(event)?, listener);
        Ok(())
    }

    /// Removes a listener added with `on`.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: &str, listener: &Function) -> Result<(), JsValue> {
        self.driver.off(topic(event)?, listener);
        Ok(())
    }

    /// The cached messages of a channel and the offset to resume from, read from localStorage
    /// without touching the network.
    #[wasm_bindgen(unchecked_return_type = "Promise<Loaded>")]
    pub fn load(&self, channel: &str) -> Promise {
        match self.driver.load(channel) {
            Ok(loaded) => Promise::resolve(&loaded),
            Err(e) => Promise::reject(&js_error(&e)),
        }
    }

    /// Subscribes to a channel from `offset`: `'$'` (default: only new messages), `'0'`
    /// (everything retained) or an offset from `load`/a message (the messages after it). The
    /// subscription is resumed from its last offset after every reconnect.
    /// With `{offset, rewind}` instead of an offset: `offset` when given (a cached one from
    /// `load` after a reload), else the channel's last `rewind` messages, then live.
    #[wasm_bindgen(unchecked_return_type = "Promise<Subscribed>")]
    pub fn subscribe(
        &self,
        channel: String,
        #[wasm_bindgen(unchecked_optional_param_type = "string | SubscribeOptions | null")]
        from: Option<JsValue>,
    ) -> Promise {
        let from = from.unwrap_or(JsValue::UNDEFINED);
        let (offset, rewind) = match from.as_string() {
            Some(offset) => (Some(offset), JsValue::UNDEFINED),
            None if from.is_object() => (get(&from, "offset").as_string(), get(&from, "rewind")),
            None => (None, JsValue::UNDEFINED),
        };
        match start_options(offset, &rewind) {
            Ok(options) => self.driver.subscribe(channel, options),
            Err(e) => Promise::reject(&js_error(&e)),
        }
    }

    /// Reads one page of a channel's stored messages (authorized like a subscribe); resolves
    /// with `{channel, messages, next, more, truncated, gap?}`.
    #[wasm_bindgen(unchecked_return_type = "Promise<HistoryPage>")]
    pub fn history(
        &self,
        channel: String,
        #[wasm_bindgen(unchecked_optional_param_type = "HistoryOptions")] options: Option<JsValue>,
    ) -> Promise {
        history(&self.driver, channel, options)
    }

    /// A subscription object for a channel, not subscribed yet (call its `subscribe()`).
    /// Throws an `Error` with code `duplicate_subscription` when the channel has one already
    /// (`getSubscription` returns it), `bad_request` for a bad channel or offset.
    #[wasm_bindgen(js_name = newSubscription)]
    pub fn new_subscription(
        &self,
        channel: String,
        #[wasm_bindgen(unchecked_optional_param_type = "SubscriptionOptions")] options: Option<
            js_sys::Object,
        >,
    ) -> Result<Subscription, JsValue> {
        let made = sub_options(options.as_deref())
            .and_then(|options| self.driver.new_subscription(channel.clone(), options));
        match made {
            Ok(id) => Ok(self.object(channel, id)),
            Err(e) => Err(js_error(&e)),
        }
    }

    /// The channel's subscription object, if it has one (`client.subscribe` makes one too):
    /// a new handle on each call; handles of one subscription share its state and listeners.
    #[wasm_bindgen(js_name = getSubscription)]
    pub fn get_subscription(&self, channel: String) -> Option<Subscription> {
        let id = self.driver.subscription_id(&channel)?;
        Some(self.object(channel, id))
    }

    /// Unsubscribes a subscription object and forgets it: it hears nothing more, its calls
    /// reject with `cancelled`, and the channel may get a new one.
    #[wasm_bindgen(js_name = removeSubscription)]
    pub fn remove_subscription(&self, subscription: &Subscription) {
        self.driver.remove_subscription(subscription.id);
    }

    /// The connection state (`state` events announce its changes).
    #[wasm_bindgen(getter, unchecked_return_type = "ClientState")]
    pub fn state(&self) -> String {
        self.driver.state().to_owned()
    }

    /// Stops a subscription; resolves `true`.
    #[wasm_bindgen(unchecked_return_type = "Promise<boolean>")]
    pub fn unsubscribe(&self, channel: String) -> Promise {
        self.driver.unsubscribe(channel)
    }

    /// Publishes `fields` (an object, turned into JSON by `encode`) to a channel; resolves
    /// with the stored message's offset. Publishes made while disconnected (or while earlier
    /// ones still wait) go to the persisted outbox and are sent, in order and exactly once,
    /// after reconnecting; without the outbox they wait until the request timeout.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn publish(
        &self,
        channel: String,
        #[wasm_bindgen(unchecked_param_type = "Fields")] fields: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "PublishOptions")] options: Option<
            js_sys::Object,
        >,
    ) -> Promise {
        publish(&self.driver, channel, &fields, options)
    }

    /// The messages waiting in the outbox, oldest first.
    #[wasm_bindgen(unchecked_return_type = "OutboxEntry[]")]
    pub fn outbox(&self) -> Array {
        self.driver.outbox()
    }

    /// Removes a message from the outbox; its `publish` promise rejects with `cancelled`.
    /// Returns `false` if it is not there or this tab is already sending it.
    pub fn cancel(&self, id: &str) -> bool {
        self.driver.cancel(id)
    }

    /// Who is subscribed to a presence channel (one member per connection), allowed where
    /// subscribing is; rejects with `not_found` on a channel without presence.
    #[wasm_bindgen(unchecked_return_type = "Promise<PresenceMember[]>")]
    pub fn presence(&self, channel: String) -> Promise {
        self.driver.presence(channel, false)
    }

    /// How many connections and users are subscribed to a presence channel.
    #[wasm_bindgen(js_name = presenceStats, unchecked_return_type = "Promise<PresenceStats>")]
    pub fn presence_stats(&self, channel: String) -> Promise {
        self.driver.presence(channel, true)
    }

    /// This tab's part in the shared connection.
    #[wasm_bindgen(getter, unchecked_return_type = "Role")]
    pub fn role(&self) -> String {
        self.driver.role().to_owned()
    }

    /// Closes the connection for good: pending requests reject with code `closed`.
    pub fn close(&self) {
        self.driver.close();
    }

    /// Whether a connection is ready right now.
    #[wasm_bindgen(getter)]
    pub fn connected(&self) -> bool {
        self.driver.is_connected()
    }
}

impl Client {
    /// The JS object of subscription `id` of `channel`.
    fn object(&self, channel: String, id: u32) -> Subscription {
        Subscription {
            driver: self.driver.clone(),
            channel,
            id,
        }
    }
}

/// A subscription object of one channel (see `Client.newSubscription`): a state, its own
/// events, and `subscribe`/`unsubscribe`/`publish`.
#[wasm_bindgen]
pub struct Subscription {
    driver: Driver,
    channel: String,
    id: u32,
}

#[wasm_bindgen]
impl Subscription {
    /// The channel.
    #[wasm_bindgen(getter)]
    pub fn channel(&self) -> String {
        self.channel.clone()
    }

    /// The current state (`state` events announce its changes).
    #[wasm_bindgen(getter, unchecked_return_type = "SubscriptionState")]
    pub fn state(&self) -> String {
        self.driver.sub_state(&self.channel).to_owned()
    }

    /// Adds a listener: `state`, `subscribed`, `unsubscribed`, `messages`, `gap` or `error`.
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: &str, listener: Function) -> Result<(), JsValue> {
        self.driver
            .sub_listen(self.id, sub_topic(event)?, listener, true);
        Ok(())
    }

    /// Removes a listener added with `on`.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: &str, listener: Function) -> Result<(), JsValue> {
        self.driver
            .sub_listen(self.id, sub_topic(event)?, listener, false);
        Ok(())
    }

    /// Subscribes: the first time from the options' offset, later after the last message it
    /// delivered (nothing lost or repeated). Resolves with the server's answer.
    #[wasm_bindgen(unchecked_return_type = "Promise<Subscribed>")]
    pub fn subscribe(&self) -> Promise {
        self.driver.sub_subscribe(self.id)
    }

    /// Unsubscribes; resolves `true`. The object stays: `subscribe()` continues later.
    #[wasm_bindgen(unchecked_return_type = "Promise<boolean>")]
    pub fn unsubscribe(&self) -> Promise {
        self.driver.sub_unsubscribe(self.id)
    }

    /// Publishes to the channel, like `Client.publish`.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn publish(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Fields")] fields: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "PublishOptions")] options: Option<
            js_sys::Object,
        >,
    ) -> Promise {
        publish(&self.driver, self.channel.clone(), &fields, options)
    }

    /// Reads one page of the channel's stored messages, like `Client.history`.
    #[wasm_bindgen(unchecked_return_type = "Promise<HistoryPage>")]
    pub fn history(
        &self,
        #[wasm_bindgen(unchecked_optional_param_type = "HistoryOptions")] options: Option<JsValue>,
    ) -> Promise {
        history(&self.driver, self.channel.clone(), options)
    }
}

/// `history` of `Client` and `Subscription`.
fn history(driver: &Driver, channel: String, options: Option<JsValue>) -> Promise {
    match history_options(&options.unwrap_or(JsValue::UNDEFINED)) {
        Ok(options) => driver.history(channel, options),
        Err(e) => Promise::reject(&js_error(&e)),
    }
}

/// A subscription event's topic, or a `bad_request` error.
fn sub_topic(event: &str) -> Result<SubTopic, JsValue> {
    SubTopic::parse(event).ok_or_else(|| {
        js_error(&ErrorInfo::new(
            BAD_REQUEST,
            "unknown subscription event: expected state, subscribed, unsubscribed, messages, \
             gap or error",
        ))
    })
}

/// `publish` of `Client` and `Subscription`.
fn publish(
    driver: &Driver,
    channel: String,
    fields: &JsValue,
    options: Option<js_sys::Object>,
) -> Promise {
    let options = options.map_or(JsValue::UNDEFINED, JsValue::from);
    let prepared =
        encode(driver, fields).and_then(|fields| Ok((fields, publish_options(&options)?)));
    match prepared {
        Ok((fields, options)) => driver.publish(channel, fields, options),
        Err(e) => Promise::reject(&js_error(&e)),
    }
}

/// Runs the page's `encode` (default `JSON.stringify`) and parses the JSON object it made.
fn encode(driver: &Driver, fields: &JsValue) -> Result<Fields, ErrorInfo> {
    let bad = |why: String| ErrorInfo::new(BAD_REQUEST, why);
    let text = match driver.encoder() {
        Some(encode) => encode
            .call1(&JsValue::UNDEFINED, fields)
            .map_err(|e| bad(format!("encode threw: {e:?}")))?,
        None => js_sys::JSON::stringify(fields)
            .map(JsValue::from)
            .map_err(|e| bad(format!("fields cannot be turned into JSON: {e:?}")))?,
    };
    let text = text
        .as_string()
        .ok_or_else(|| bad("encode must return a string".into()))?;
    match redistribute_protocol::json::parse(&text) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        _ => Err(bad("fields must be a JSON object".into())),
    }
}

/// The topic of an event name, or a `bad_request` error.
fn topic(event: &str) -> Result<Topic, JsValue> {
    Topic::parse(event).ok_or_else(|| {
        js_error(&ErrorInfo::new(
            BAD_REQUEST,
            "unknown event: expected connect, disconnect, messages, error, leader, follower, \
             outbox, presence or state",
        ))
    })
}
