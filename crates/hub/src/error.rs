//! The hub's error type.

use modelcast_protocol::Topic;

/// Why a hub operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message is a control message (no topic); only topic messages are published.
    #[error(
        "`{type_name}` is a control message and cannot be published; publish topic messages only"
    )]
    NotATopicMessage {
        /// The message's `type`.
        type_name: &'static str,
    },
    /// `max_hz` must be a positive, finite number.
    #[error("max_hz must be a positive number of updates per second, got {0}")]
    InvalidMaxHz(f64),
    /// The connection was closed (by the hub, e.g. as a slow consumer, or by its owner).
    #[error("the connection is closed ({0})")]
    Closed(crate::DropReason),
    /// The connection is not subscribed to the topic.
    #[error("not subscribed to {0}")]
    NotSubscribed(Topic),
}

/// The hub's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
