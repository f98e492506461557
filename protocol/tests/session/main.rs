//! Session scenarios on a virtual clock: a real [`Session`](redistribute_protocol::session::Session)
//! against a scripted in-memory server ([`harness`]).

mod failover;
mod groups;
mod harness;
mod history;
mod lifecycle;
mod model;
mod no_loss;
mod presence;
mod requests;
mod resubscribe;
mod resume;
mod states;
mod tabs;
mod tabs_model;
mod tabs_world;
mod tokens;
