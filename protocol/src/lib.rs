//! Wire protocol v1 of redistribute.
//!
//! This crate owns what client and server must agree on: the frames ([`frame`]), their JSON
//! encoding ([`codec`], and [`lite`] over [`json`] for clients that count their code size), stream offsets ([`offset`]), channel-name rules ([`channel`]), error
//! codes ([`error`]), the sans-IO client [`session`] that both the native and the browser
//! client drive, and the sans-IO [`multiplex`]er that lets several sessions (a browser's tabs)
//! share one connection, the ordered [`table`]s they keep their state in and the [`queue`] of their outputs. It does no I/O, reads no clock and draws no randomness: time and random numbers
//! are inputs.

pub mod channel;
pub mod codec;
pub mod error;
pub mod frame;
pub mod history;
pub mod json;
pub mod lite;
pub mod multiplex;
pub mod offset;
pub mod queue;
pub mod session;
pub mod table;

pub use channel::{validate_channel, MAX_CHANNEL_LEN};
pub use codec::{
    decode_client, decode_server, encode_client, encode_server, validate_client, DecodeError,
};
pub use error::{ErrorCode, ProtocolError};
pub use frame::{
    ClientFrame, Fields, Message, PresenceEvent, PresenceMember, ServerFrame, PROTOCOL_VERSION,
};
pub use offset::{Offset, StreamId};
