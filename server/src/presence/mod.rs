//! Presence: who is subscribed to a channel, on channels the configuration enables it on.
//!
//! A subscriber of a presence channel is a *member*: its connection's client id, the `sub` of
//! its token and the token's `info` claim. Members are kept in the engine's [`PresenceStore`]
//! (Redis, shared by every instance; or in memory with the embedded engine) with an expiry
//! that the instance owning the connection refreshes on a heartbeat ([`PresenceConfig::ttl`]
//! / 3), so the members of an instance that died without draining expire on their own.
//! Leaving (unsubscribe, disconnect, drain) removes a member at once.
//!
//! Every change (join, leave, expiry) is recorded once, by the store operation that made it,
//! in the channel's change log; each instance reads the log of the channels its subscribers
//! asked join/leave events for once per [`PresenceConfig::window`] and hands each of them one
//! coalesced `presence_event` frame per channel, listing at most [`PresenceConfig::max_events`]
//! changes (beyond, only their count: the client asks `presence` again).
//!
//! [`config`] owns the settings, [`store`] the storage trait and the in-memory store,
//! [`service`] this instance's members, the heartbeat and the delivery of changes.

pub(crate) mod config;
pub(crate) mod service;
pub(crate) mod store;

pub use config::PresenceConfig;
pub(crate) use service::{Inbox, Presence};
pub(crate) use store::PresenceStore;
