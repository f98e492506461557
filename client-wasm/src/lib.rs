//! Browser client of redistribute, published to npm as `redistribute-client`.
//!
//! Build the package with `client-wasm/build.sh` (it writes `client-wasm/pkg/`). The JavaScript
//! API (documented in `client-wasm/npm/README.md`):
//!
//! ```js
//! import init, { Client } from 'redistribute-client';
//! await init();
//! const client = new Client({ targets: ['ws://127.0.0.1:8080/ws'], localStorage: true });
//! client.on('messages', (channel, messages) => {});
//! const { messages, lastOffset } = await client.load('chat'); // localStorage, no network
//! await client.subscribe('chat', lastOffset);
//! const offset = await client.publish('chat', { text: 'hi' });
//! ```
//!
//! The crate is a thin driver: the protocol crate's sans-IO [`Session`] does failover,
//! backoff, resume, dedupe and publish retries; this crate feeds it WebSocket events,
//! `performance.now()` and a seed from `crypto.getRandomValues`, and carries out its actions.
//! Modules:
//!
//! * [`cache`]: the bounded, versioned per-channel message cache (pure Rust, over [`storage`]);
//! * [`namespace`]: which storage entries belong to a client (its targets and optional name);
//! * [`outbox`]: publishes made while disconnected, one storage entry per message;
//! * [`order`]: the one sort routine (code size);
//! * [`storage`]: the key-value [`Storage`](storage::Storage) trait with an in-memory
//!   implementation (and, in the browser, `localStorage`);
//! * [`errors`]: the `code` of every error the JavaScript side sees;
//! * `bindings` (wasm32 only): what JavaScript sees, the exported `Client` class and its types;
//! * `browser` (wasm32 only): the browser APIs the client imports (clock, timers, seed, Web
//!   Locks);
//! * `driver` (wasm32 only): the WebSocket, the timer, the tabs' shared connection, the outbox
//!   sender and the event dispatch.
//!
//! Everything outside `bindings`, `browser` and `driver` also compiles and is unit-tested natively.
//!
//! [`Session`]: redistribute_protocol::session::Session

pub mod cache;
pub mod errors;
pub mod namespace;
pub mod order;
pub mod outbox;
pub mod storage;

#[cfg(target_arch = "wasm32")]
mod bindings;
#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(target_arch = "wasm32")]
mod driver;

#[cfg(target_arch = "wasm32")]
pub use bindings::{Client, Subscription};
