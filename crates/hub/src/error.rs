//! The hub's error type and [`DropReason`]: a leaf module every other one may import.

use std::fmt;

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
    /// `max_hz` must be a positive, finite number no smaller than [`MIN_MAX_HZ`].
    #[error(
        "max_hz must be a number of updates per second from {MIN_MAX_HZ} up (e.g. 2 or 0.5), got {0}"
    )]
    InvalidMaxHz(f64),
    /// The connection was closed (by the hub, e.g. as a slow consumer, or by its owner).
    #[error("the connection is closed ({0})")]
    Closed(DropReason),
    /// The connection is not subscribed to the topic.
    #[error("not subscribed to {0}")]
    NotSubscribed(Topic),
    /// A recovery's `since` is ahead of what this node has received of the topic (another node
    /// delivered it first, or the log rolled back, or it is made up), or the node's copy of the
    /// topic is not loaded from the log yet (just started): ask the engine to reach it
    /// ([`crate::Hub::reach`]: it loads or catches the node up, or fences a rolled-back log),
    /// then subscribe again; if the position is still ahead, subscribe without it (the
    /// current state, not recovered).
    #[error("this node has {topic} up to seq {have}; the position asked for is ahead of it")]
    Behind {
        /// The topic.
        topic: Topic,
        /// The newest seq this node has applied.
        have: u64,
    },
    /// A subscription's filter lists more subjects than the hub allows.
    #[error(
        "a filter may list at most {max} ids, this one has {got}; subscribe without a filter or to fewer ids"
    )]
    FilterTooLarge {
        /// How many it listed.
        got: usize,
        /// The limit ([`crate::HubConfig::filter_max_subjects`]).
        max: usize,
    },
    /// An idempotency key cannot be remembered: the engine holds its maximum of unexpired
    /// keys. Nothing was published; retry after `retry_after` seconds (keys are never
    /// forgotten early, so a retry is never published twice).
    #[error(
        "the server remembers its maximum of {capacity} idempotency keys (each for 10 minutes); nothing was published: retry in {retry_after} s"
    )]
    IdempotencyFull {
        /// How many keys are held.
        capacity: usize,
        /// Seconds until the oldest key expires.
        retry_after: u64,
    },
    /// An idempotency key already names another request (within its window): nothing was
    /// published. A key names one request; use a new key for a new request (see
    /// `Hub::claim`).
    #[error(
        "the idempotency key `{key}` was used for another request within the last 10 minutes; nothing was published: use a new key for a new request"
    )]
    IdempotencyConflict {
        /// The key as the publisher sent it.
        key: String,
    },
    /// The engine that sequences and stores messages (Redis) cannot be reached now; retry.
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
}

/// The smallest accepted `max_hz`: one update per key per 100 seconds, so nothing is held back
/// longer than that. A rate limit is for a screen that redraws; slower rates would hold a value
/// back for longer than a person waits for it (and overflow a `Duration` near zero).
pub const MIN_MAX_HZ: f64 = 0.01;

/// The hub's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a connection's outbox was closed; the server turns it into a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// It fell so far behind that even collapsed updates did not fit its queue.
    SlowConsumer,
    /// Its owner closed it.
    Closed,
    /// Another connection with the same id replaced it.
    Replaced,
    /// The hub is shutting down.
    Shutdown,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 4] =
        [DropReason::SlowConsumer, DropReason::Closed, DropReason::Replaced, DropReason::Shutdown];

    /// A short name for logs and metrics, e.g. `slow_consumer`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Closed => "closed",
            DropReason::Replaced => "replaced",
            DropReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
