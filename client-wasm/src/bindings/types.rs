//! The TypeScript declarations of what the page passes and gets (the `.d.ts` beside the
//! classes wasm-bindgen declares).

use wasm_bindgen::prelude::*;

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
