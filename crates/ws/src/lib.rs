//! modelcast-ws: the server side of the WebSocket wire format — RFC 6455 frames and RFC 7692
//! permessage-deflate — written so that a fan-out server writes shared bytes as they are.
//!
//! What it owns:
//! - `handshake.rs`: the accept key and the permessage-deflate negotiation ([`negotiate`]).
//! - `frame.rs`: server frame headers ([`Header`]) and close payloads.
//! - `decode.rs`: [`Decoder`], client frames to [`Message`]s without IO (masking,
//!   fragmentation, control frames, UTF-8 of text, size limits, inflation with a limit); every
//!   violation is a [`Failure`] carrying the close code to send.
//! - `deflate.rs`: compressing one message for every compressing connection ([`deflate`]:
//!   no context takeover, so the same bytes suit every connection) and inflating with a limit.
//! - `io.rs`: the async edges over tokio's TCP halves: [`Reader`] (holds no buffer while the
//!   socket is idle) and [`write_frames`] (header and payload slices, many frames per `writev`,
//!   no copy).
//!
//! The caller owns the session: who writes when (one writer per connection: pongs and close
//! frames go between bursts, never inside one), heartbeats, the closing handshake's timing.
//!
//! It depends on no other workspace crate and on no HTTP library: it knows nothing of
//! modelcast's messages, and the HTTP upgrade is the caller's (the server uses hyper).

mod decode;
mod deflate;
mod failure;
mod frame;
mod handshake;
mod io;

pub use decode::{CloseFrame, DEFAULT_MAX_FRAGMENTS, Decoder, Message};
pub use deflate::deflate;
pub use failure::Failure;
pub use frame::{Header, OpCode, close_payload};
pub use handshake::{Deflate, accept_key, negotiate};
pub use io::{ReadError, ReadSocket, Reader, Streamed, WriteSocket, finish, write_frames};

/// Close codes this layer sends (RFC 6455 §7.4.1).
pub mod code {
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1007: a text message that is not UTF-8, or compressed data that does not inflate.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1008: a message cut into more fragments than the limit.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// 1009: a message larger than the limit (after inflation).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}
