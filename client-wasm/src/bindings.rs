//! What JavaScript sees: the exported `Client` class and the TypeScript types of its
//! arguments and results (the browser APIs the client imports are in `browser`).
//!
//! Arguments from the page are checked here and turned into Rust values; the work is done by
//! [`Driver`]. Requests return promises; refused arguments reject them (or, for `new Client`
//! and `on`, throw) with a JS `Error` whose `code` is one of [`crate::errors`].

use std::time::Duration;

use js_sys::{Array, Function, Promise, Reflect};
use redistribute_protocol::session::{Config, PublishOptions};
use redistribute_protocol::{Fields, Offset};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::cache::{Cache, DEFAULT_LIMIT};
use crate::driver::{js_error, Driver, Setup, SubOptions, SubTopic, Topic};
use crate::errors::{ErrorInfo, BAD_CONFIG, BAD_REQUEST};
use crate::namespace::Namespace;
use crate::outbox::Outbox;
use crate::storage::LocalStorage;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** A JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A message's fields: a JSON object (what `JSON.parse` gives; a custom `decode` may give more). */
export type Fields = { [key: string]: JsonValue };

/** A message of a channel. */
export interface Message {
  /** The stream offset, `<ms>-<seq>`; compare numerically, not as strings. */
  offset: string;
  /** The message's fields, as returned by `decode` (default `JSON.parse`). */
  fields: Fields;
}

/** Options of `new Client`. */
export interface ClientOptions {
  /** WebSocket URLs (`ws://host:port/ws`), tried in order, then round-robin. */
  targets: string[] | string;
  /** Turns `publish`'s fields into JSON text of an object. Default `JSON.stringify`. */
  encode?: (fields: any) => string;
  /** Turns a message's fields (JSON text) into what the page sees. Default `JSON.parse`. */
  decode?: (text: string) => any;
  /** Cache messages in localStorage (default `true`). */
  localStorage?: boolean;
  /** Messages kept per channel in the cache (default 100). */
  cacheSize?: number;
  /** A JWT sent in the `connect` frame of every connection (never renewed: see `tokenProvider`). */
  token?: string;
  /**
   * For short-lived tokens: returns a promise of a fresh JWT. Called before every connection
   * and, on a live connection, a little before the current token's `exp` (a tenth of its
   * lifetime, at least 1 s, at most half of it); the new token replaces the old one on the live
   * connection, so subscriptions go on without a gap, a duplicate or a reconnect. A rejected
   * refresh is an `error` event with code `token_refresh_failed` (the connection then ends at
   * the old token's expiry, and the next connection calls the provider again). With tabs
   * sharing a socket, the leader tab's provider is used. Replaces `token`.
   */
  tokenProvider?: () => Promise<string>;
  /** Milliseconds a request may wait for its reply (default 10000). */
  requestTimeout?: number;
  /**
   * Milliseconds: the bound of the first reconnect delay (default 100). Each further consecutive
   * failure doubles the bound, up to `maxReconnectDelay`. Must be positive.
   */
  minReconnectDelay?: number;
  /** Milliseconds: the largest reconnect delay (default 10000). At least `minReconnectDelay`. */
  maxReconnectDelay?: number;
  /**
   * How much of each reconnect delay is random, from 0 to 1: the delay is drawn in
   * `[bound × (1 − reconnectJitter), bound]`. 1 (the default) spreads clients reconnecting after
   * an outage the most; 0 waits exactly the bound.
   */
  reconnectJitter?: number;
  /**
   * Milliseconds without any frame from the server after which the client sends a `ping`; if
   * nothing answers within `requestTimeout`, the socket counts as dead (browsers may never fire
   * `close` for a connection that died silently) and the client reconnects. So a dead socket is
   * noticed within `pingInterval + requestTimeout` (35 s by default). Default 25000; 0 turns
   * the probes off.
   */
  pingInterval?: number;
  /**
   * Retry `subscribe` itself on transient server errors (`unavailable`, `rate_limited`,
   * `internal`) with backoff, within `requestTimeout` (default `true`; each failed attempt is an
   * `error` event with the server's code and the channel). Subscriptions re-established after a
   * reconnect are always retried and never dropped for a transient error.
   */
  retrySubscribe?: boolean;
  /**
   * Ask for join/leave events on every subscription (default `false`): on channels where the
   * server has presence enabled, `presence` events report who joined and left, coalesced.
   */
  joinLeave?: boolean;
  /**
   * Consecutive transient failures of one subscription's `subscribe` that are retried before it
   * is dropped with a `subscription_lost` error (default: no limit).
   */
  subscribeRetryLimit?: number;
  /**
   * Share one WebSocket between the tabs of this origin that use the same targets and token
   * (default `true`): a leader tab, elected with the Web Locks API, holds the socket and relays
   * over a BroadcastChannel. Ignored (one socket per tab) where either API is missing.
   */
  shareSocket?: boolean;
  /**
   * Keep publishes made while disconnected in a persisted outbox (localStorage) and send them,
   * exactly once, when connected again, even after a reload (default `true`).
   */
  outbox?: boolean;
  /** Most messages the outbox holds (default 1000); beyond it `publish` rejects with `outbox_full`. */
  outboxSize?: number;
  /**
   * Names whose cache and outbox these are, e.g. the signed-in user (`'user-42'`). Clients on
   * one origin share cached messages, resume offsets and queued publishes only when they have
   * the same targets (order and duplicates ignored) and the same namespace; so two users taking
   * turns on one browser never see each other's cache or send each other's messages. Default:
   * none (all clients of the same targets share).
   */
  namespace?: string;
}

/** A message waiting in the outbox. */
export interface OutboxEntry {
  /** Stable id, also the publish's idempotency key; pass it to `cancel`. */
  id: string;
  channel: string;
  /** The message's fields, as returned by `decode`. */
  fields: Fields;
  /** When `publish` was called (ms since the epoch). */
  createdAt: number;
}

/** `standalone` (no sharing), `pending` (election running), `leader` or `follower`. */
export type Role = 'standalone' | 'pending' | 'leader' | 'follower';

/** What `load` found in the cache. */
export interface Loaded {
  /** Cached messages, oldest first. */
  messages: Message[];
  /** Pass to `subscribe` to continue with no gap and no duplicate; absent if nothing is cached. */
  lastOffset: string | undefined;
}

/** The server's answer to `subscribe` (also a subscription's `subscribed` event). */
export interface Subscribed {
  channel: string;
  /** Delivery starts after this offset. */
  offset: string;
  /** Messages after the requested offset were already trimmed (an `error` with code `gap` follows). */
  truncated: boolean;
  /**
   * The subscription resumed from a known offset (its last message, after a reconnect or a
   * `subscribe()` again, or an offset passed in) and nothing after it was lost: not truncated,
   * no gap.
   */
  recovered: boolean;
}

/** The client's connection: `disconnected` (not started), `connecting` (also while waiting to reconnect), `connected`, `closed`. */
export type ClientState = 'disconnected' | 'connecting' | 'connected' | 'closed';

/**
 * A subscription object's state: `unsubscribed`, `subscribing` (asked for, not confirmed on
 * the current connection: in flight, waiting for a connection or for a retry after a
 * transient error) or `subscribed`. A lost connection moves `subscribed` back to
 * `subscribing`; the re-subscribe then moves it to `subscribed` or, when refused for good, to
 * `unsubscribed` with an `error` event and the error in `unsubscribed`.
 */
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

/** Options of `newSubscription`. */
export interface SubscriptionOptions {
  /** Where the first `subscribe()` starts: `'$'` (default: only new messages), `'0'` (everything retained) or an offset (the messages after it). */
  offset?: string;
  /** Without `offset`: start with the channel's last N messages (0 to 1000), then live. */
  rewind?: number;
}

/** The events of a subscription object and their listeners. */
export interface SubscriptionEvents {
  /** The state changed. */
  state: (state: SubscriptionState) => void;
  /** The server confirmed the subscription (after `subscribe()` and after every reconnect). */
  subscribed: (ctx: Subscribed) => void;
  /** The subscription ended: `error` is absent when the page unsubscribed, else why. */
  unsubscribed: (error?: ClientError) => void;
  /** New messages of the channel, in order, each once. */
  messages: (messages: Message[]) => void;
  /** Messages `(err.from, err.to]` were trimmed before delivery (code `gap`). */
  gap: (error: ClientError) => void;
  /** Subscribing failed: transiently (retried; the state stays `subscribing`) or for good (`unsubscribed` follows). */
  error: (error: ClientError) => void;
}

export interface Subscription {
  /** Adds a listener for an event of this subscription. */
  on<K extends keyof SubscriptionEvents>(event: K, listener: SubscriptionEvents[K]): void;
  /** Removes a listener added with `on`. */
  off<K extends keyof SubscriptionEvents>(event: K, listener: SubscriptionEvents[K]): void;
}

/**
 * Where `subscribe` starts. `offset` (e.g. `lastOffset` from `load`) wins when given: a page
 * reloaded with a cached offset resumes from it; only without one does `rewind` apply.
 */
export interface SubscribeOptions {
  /** `'$'`, `'0'` or an offset: the messages after it. */
  offset?: string | null;
  /** Start with the channel's last N messages (0 to 1000), then live. `rewind: 1` is a channel's latest value. */
  rewind?: number;
}

/** What `history` reads: the messages in `(from, to]`. */
export interface HistoryOptions {
  /** Messages after this offset (exclusive): `'0'` (default: everything retained), `'$'` or an offset. */
  from?: string;
  /** Messages up to and including this offset (default: the newest). */
  to?: string;
  /** Most messages in the page, 1 to 1000 (default 100). */
  limit?: number;
  /** Newest first, going back from `to`. */
  reverse?: boolean;
}

/** One page of a channel's stored messages. */
export interface HistoryPage {
  channel: string;
  /** Oldest first, or newest first with `reverse`. */
  messages: Message[];
  /** Pass as `from` (or as `to` with `reverse`) for the next page. */
  next: string;
  /** Whether the range may hold more messages: page on while `true`. */
  more: boolean;
  /** Messages of the range were removed (trimmed) before they could be read. */
  truncated: boolean;
  /** The removed range `(from, to]`, when known. */
  gap?: { from: string; to: string };
}

/** Optional parts of a publish. */
export interface PublishOptions {
  /** Keep about this many messages in the channel. */
  maxlen?: number;
  /** Makes a retried publish return the first offset instead of writing twice. */
  idempotencyKey?: string;
}

/** The codes of the server's `error` frames (wire protocol §6), passed through unchanged. */
export type ServerErrorCode =
  | 'bad_request' | 'unauthorized' | 'forbidden' | 'not_found' | 'too_large' | 'rate_limited'
  | 'unavailable' | 'internal';

/** The codes the client adds (see the README's table). */
export type ClientErrorCode =
  | 'timeout' | 'connection_lost' | 'closed' | 'cancelled' | 'backpressure' | 'bad_config'
  | 'connect_failed' | 'gap' | 'subscription_lost' | 'undecodable' | 'decode_failed'
  | 'quota_exceeded' | 'cache_corrupt' | 'outbox_full' | 'storage_unavailable'
  | 'duplicate_subscription';

/** Every `code` an error of the client can have. */
export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** Every error of the client: rejected promises and `error` events. */
export interface ClientError extends Error {
  /** What went wrong, for code to branch on (the message is for humans). */
  code: ErrorCode;
  /** The channel concerned, if any. */
  channel?: string;
  /** For `gap`: messages in (from, to] were trimmed before delivery. */
  from?: string;
  to?: string;
}

/** The events of `on` and their listeners. */
export interface ClientEvents {
  connect: (target: string) => void;
  disconnect: (reason: string) => void;
  messages: (channel: string, messages: Message[]) => void;
  error: (error: ClientError) => void;
  /** This tab now holds the shared connection. */
  leader: () => void;
  /** Another tab holds the shared connection; this one uses it. */
  follower: () => void;
  /** The number of messages waiting in the outbox changed. */
  outbox: (size: number) => void;
  /** The client's state changed (also the `state` property). */
  state: (state: ClientState) => void;
  /** Members joined or left a subscribed presence channel (with `joinLeave`). */
  presence: (channel: string, change: PresenceChange) => void;
}

/** A member of a presence channel: one connection. */
export interface PresenceMember {
  /** The connection's client id. */
  client: string;
  /** The `sub` of its token. */
  user?: string;
  /** The `info` claim of its token. */
  info?: { [key: string]: JsonValue };
}

/** How many are subscribed to a presence channel. */
export interface PresenceStats {
  /** Members (connections). */
  clients: number;
  /** Distinct users among them (members without a user count once each). */
  users: number;
}

/**
 * Joins and leaves since the last `presence` event of the channel. With `missed`, that many
 * changes were too many to list: call `presence(channel)` again.
 */
export interface PresenceChange {
  joins: PresenceMember[];
  leaves: PresenceMember[];
  missed?: number;
}

export interface Client {
  /** Adds a listener for an event (see `ClientEvents` for each listener's arguments). */
  on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): void;
  /** Removes a listener added with `on`. */
  off<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): void;
}
"#;

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

/// An optional offset argument (`'$'` when absent).
fn parse_offset(offset: Option<String>) -> Result<Offset, ErrorInfo> {
    offset
        .as_deref()
        .map(Offset::parse)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| ErrorInfo::new(BAD_REQUEST, e.to_string()))
}

/// The optional argument of `newSubscription`.
fn sub_options(options: Option<&JsValue>) -> Result<SubOptions, ErrorInfo> {
    let option = |name| options.map_or(JsValue::UNDEFINED, |o| get(o, name));
    start_options(option("offset").as_string(), &option("rewind"))
}

/// Where a subscription starts: `offset` when given (e.g. a cached one after a reload), else
/// the channel's last `rewind` messages, else `'$'`.
fn start_options(offset: Option<String>, rewind: &JsValue) -> Result<SubOptions, ErrorInfo> {
    let rewind = match (&offset, rewind.as_f64()) {
        (None, Some(n)) => Some(n as u64),
        _ => None,
    };
    Ok(SubOptions {
        offset: parse_offset(offset)?,
        rewind,
    })
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

/// A property of an options object (`undefined` when absent).
fn get(options: &JsValue, name: &str) -> JsValue {
    Reflect::get(options, &name.into()).unwrap_or(JsValue::UNDEFINED)
}

/// `history`'s options; a bad offset or number is `bad_request`.
fn history_options(
    options: &JsValue,
) -> Result<redistribute_protocol::history::HistoryOptions, ErrorInfo> {
    let bad = |e: redistribute_protocol::ProtocolError| ErrorInfo::new(BAD_REQUEST, e.to_string());
    let from = get(options, "from").as_string();
    let to = get(options, "to").as_string();
    let limit = get(options, "limit").as_f64();
    Ok(redistribute_protocol::history::HistoryOptions {
        from: from
            .as_deref()
            .map(Offset::parse)
            .transpose()
            .map_err(bad)?,
        to: to
            .as_deref()
            .map(redistribute_protocol::StreamId::parse)
            .transpose()
            .map_err(bad)?,
        limit: limit.map(|n| n as u64),
        reverse: get(options, "reverse").is_truthy(),
    })
}

fn bad_config(why: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new(BAD_CONFIG, why)
}

/// An optional function option.
fn function(options: &JsValue, name: &str) -> Result<Option<Function>, ErrorInfo> {
    let v = get(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_into::<Function>()
        .map(Some)
        .map_err(|_| bad_config(format!("{name} must be a function")))
}

/// Message tail of a number option that must be a non-negative number.
const NON_NEGATIVE: &str = " must be a non-negative number";
/// Message tail of a number option that must be a non-negative whole number.
const WHOLE: &str = " must be a non-negative whole number";

/// An optional number option (absent when `undefined` or `null`) in `[min, max]`, and whole
/// when `whole`; else a `bad_config` error whose message is `name` then `why`. One
/// non-generic check for every number option keeps the browser's code small.
fn number(
    options: &JsValue,
    name: &str,
    min: f64,
    max: f64,
    whole: bool,
    why: &str,
) -> Result<Option<f64>, ErrorInfo> {
    let v = get(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n >= min && n <= max && (!whole || n.fract() == 0.0) => Ok(Some(n)),
        _ => {
            let mut message = String::from(name);
            message.push_str(why);
            Err(bad_config(message))
        }
    }
}

/// An optional number option that must be a non-negative (finite) number.
fn non_negative(options: &JsValue, name: &str) -> Result<Option<f64>, ErrorInfo> {
    number(options, name, 0.0, f64::MAX, false, NON_NEGATIVE)
}

/// `minReconnectDelay`, `maxReconnectDelay`, `reconnectJitter` and `pingInterval`, checked with
/// the page's names in the messages.
fn backoff(options: &JsValue, config: &mut Config) -> Result<(), ErrorInfo> {
    let ms = crate::browser::millis;
    if let Some(min) = non_negative(options, "minReconnectDelay")? {
        if min == 0.0 {
            return Err(bad_config("minReconnectDelay must be positive"));
        }
        config.backoff_initial = ms(min);
    }
    if let Some(max) = non_negative(options, "maxReconnectDelay")? {
        config.backoff_max = ms(max);
    }
    if config.backoff_max < config.backoff_initial {
        return Err(bad_config(
            "maxReconnectDelay must be at least minReconnectDelay (defaults: 10000 and 100)",
        ));
    }
    if let Some(jitter) = number(
        options,
        "reconnectJitter",
        0.0,
        1.0,
        false,
        " must be between 0 and 1",
    )? {
        config.backoff_jitter = jitter;
    }
    config.ping_interval = match non_negative(options, "pingInterval")? {
        Some(0.0) => None,
        Some(n) => Some(ms(n)),
        None => Some(DEFAULT_PING_INTERVAL),
    };
    Ok(())
}

/// Default of the `pingInterval` option: 25 s, the server's default ping interval.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);

/// Checks the options of `new Client`.
fn setup(options: &JsValue) -> Result<Setup, ErrorInfo> {
    if !options.is_object() {
        return Err(bad_config("options must be an object with `targets`"));
    }
    let targets = get(options, "targets");
    let targets: Vec<String> = if let Some(one) = targets.as_string() {
        vec![one]
    } else if Array::is_array(&targets) {
        Array::from(&targets)
            .iter()
            .map(|t| t.as_string())
            .collect::<Option<_>>()
            .ok_or_else(|| bad_config("targets must be strings"))?
    } else {
        return Err(bad_config("targets must be a URL or an array of URLs"));
    };
    if let Some(t) = targets
        .iter()
        .find(|t| !(t.starts_with("ws://") || t.starts_with("wss://")))
    {
        let mut message = String::from("target \"");
        message.push_str(t);
        message.push_str("\" is not a ws:// or wss:// URL");
        return Err(bad_config(message));
    }
    let mut config = Config::new(targets);
    let token = get(options, "token");
    if !token.is_undefined() && !token.is_null() {
        config.token = Some(
            token
                .as_string()
                .ok_or_else(|| bad_config("token must be a string"))?,
        );
    }
    if let Some(ms) = non_negative(options, "requestTimeout")? {
        config.request_timeout = crate::browser::millis(ms);
    }
    backoff(options, &mut config)?;
    // Transient subscribe failures are retried forever unless the page caps them.
    if get(options, "retrySubscribe") == JsValue::FALSE {
        config.retry_subscribe = false;
    }
    config.join_leave = get(options, "joinLeave") == JsValue::TRUE;
    config.subscribe_retry_limit = number(
        options,
        "subscribeRetryLimit",
        0.0,
        f64::from(u32::MAX),
        true,
        WHOLE,
    )?
    .map(|n| n as u32);
    config.validate().map_err(|e| ErrorInfo::session(&e))?;

    let namespace = match get(options, "namespace") {
        v if v.is_undefined() || v.is_null() => None,
        v => Some(
            v.as_string()
                .ok_or_else(|| bad_config("namespace must be a string"))?,
        ),
    };
    let namespace = Namespace::new(&config.targets, namespace.as_deref());
    let limit = number(options, "cacheSize", 0.0, f64::MAX, true, WHOLE)?
        .map_or(DEFAULT_LIMIT, |n| n as usize);
    let (cache, cache_problem) = if get(options, "localStorage") == JsValue::FALSE {
        (None, None)
    } else {
        // A localStorage that throws falls back to memory; the page hears why.
        let (storage, problem) = LocalStorage::open_or_memory();
        let problem = problem.map(|e| {
            ErrorInfo::cache(&crate::cache::CacheError::Unavailable(format!(
                "{e}; caching in memory for this page instead"
            )))
        });
        (Some(Cache::new(storage, limit, &namespace)), problem)
    };
    let scope = crate::outbox::scope(
        &config
            .targets
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let share_scope = crate::outbox::scope(&[&scope, config.token.as_deref().unwrap_or("")]);
    let outbox_limit = number(
        options,
        "outboxSize",
        1.0,
        f64::MAX,
        true,
        " must be a whole number of at least 1",
    )?
    .map_or(crate::outbox::DEFAULT_LIMIT, |n| n as usize);
    let outbox = if get(options, "outbox") == JsValue::FALSE {
        None
    } else {
        let (storage, _) = LocalStorage::open_or_memory();
        Some(Outbox::new(storage, &namespace, &scope, outbox_limit))
    };
    Ok(Setup {
        share: get(options, "shareSocket") != JsValue::FALSE,
        outbox,
        scope: share_scope,
        outbox_seed: crate::browser::seed(),
        config,
        seed: crate::browser::seed(),
        cache,
        cache_problem,
        encode: function(options, "encode")?,
        decode: function(options, "decode")?,
        token_provider: function(options, "tokenProvider")?,
    })
}

/// The optional third argument of `publish`.
fn publish_options(options: &JsValue) -> Result<PublishOptions, ErrorInfo> {
    let mut out = PublishOptions::default();
    if options.is_undefined() || options.is_null() {
        return Ok(out);
    }
    let bad = |why: &str| ErrorInfo::new(BAD_REQUEST, why);
    let maxlen = get(options, "maxlen");
    if !maxlen.is_undefined() {
        match maxlen.as_f64() {
            Some(n) if n >= 1.0 && n.fract() == 0.0 && n <= u64::MAX as f64 => {
                out.maxlen = Some(n as u64)
            }
            _ => return Err(bad("maxlen must be a whole number of at least 1")),
        }
    }
    let key = get(options, "idempotencyKey");
    if !key.is_undefined() {
        out.idempotency_key = Some(
            key.as_string()
                .ok_or_else(|| bad("idempotencyKey must be a string"))?,
        );
    }
    Ok(out)
}
