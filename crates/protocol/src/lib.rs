//! The modelcast wire protocol: every message the server sends, every action a client sends,
//! the topics, and the JSON Schemas generated from them.
//!
//! This crate owns the *contract* between modelcast and its users. It is pure data:
//! serde + schemars, no tokio, no IO, and no other workspace crate (a tidy test keeps it so).
//! Every public type, variant and field carries a doc comment because the doc comment becomes
//! the `description` a frontend developer reads in `schemas/`.
//!
//! The shapes follow the original design modelcast grew from (a Python backend's WebSocket
//! notifications; its examples are the fixtures in `tests/fixtures/seed/`) field for field:
//! a server frame is `{"type": ..., "data": {...}}`, optionally with a top-level `topic` and
//! `seq` for recovery; a client frame is `{"action": "subscribe", "topic": ...}`.
//!
//! ```
//! use modelcast_protocol::{ClientMessage, ServerFrame, ServerMessage, Topic};
//!
//! let msg: ClientMessage = serde_json::from_str(r#"{"action":"subscribe","topic":"model_status"}"#)?;
//! assert!(matches!(msg, ClientMessage::Subscribe(ref s) if s.topic == Topic::ModelStatus));
//!
//! let frame: ServerFrame = serde_json::from_str(
//!     r#"{"type":"pong","data":{"timestamp":"2025-08-27T10:30:00Z"}}"#,
//! )?;
//! assert!(matches!(frame.message, ServerMessage::Pong(_)));
//! # Ok::<(), serde_json::Error>(())
//! ```

#![recursion_limit = "256"]

mod audience;
mod check;
mod client;
pub mod close;
mod dupes;
mod frame;
mod http;
mod messages;
mod problem;
mod publish;
pub mod schema;
mod topic;
mod vocab;

pub use audience::{AUDIENCE_MAX_NAME_BYTES, AUDIENCE_MAX_NAMES, Audience};
pub use check::publish_problems;
pub use client::{
    AuthRequest, ClientMessage, FrameError, PingRequest, PublishRequest, RequestId, Since,
    SubscribeRequest, SubscriptionFilter, UnsubscribeRequest,
};
pub use dupes::first_duplicate_key;
pub use frame::ServerFrame;
pub use http::ApiErrorCode;
pub use messages::*;
pub use problem::Problem;
pub use publish::PublishFrame;
pub use topic::{ParseTopicError, Topic};
pub use vocab::*;

/// The protocol version this crate speaks. Raised whenever a change to `schemas/` could break an
/// existing reader (a removed field, a narrowed type, a new required field).
pub const PROTOCOL_VERSION: u32 = 1;

/// Timestamps on the wire: UTC, RFC 3339 (`2025-08-27T10:30:00Z`).
pub type Timestamp = chrono::DateTime<chrono::Utc>;
