//! The frame the server writes: a [`ServerMessage`] plus the top-level `topic` and `seq`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ServerMessage, Topic};

/// One frame from the server: `{"type": ..., "data": {...}, "topic": ..., "seq": ...}`.
///
/// `topic` and `seq` are present on topic messages delivered by the hub, absent on control
/// messages; `late` marks the frames that arrive below the client's position in the topic.
/// Readers that only look at `type` and `data` (the original design's) keep working.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerFrame {
    /// The topic the message was published on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Topic>,
    /// The message's position in its topic, from 1, increasing by one per message of the topic
    /// within an epoch. A connection sees gaps where messages were for others (an audience)
    /// or outside its filter: a gap means nothing by itself (only a `subscribed` with
    /// `recovered: false` says messages were lost). Send the last one received as `since.seq`
    /// when re-subscribing to recover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `true` when the frame arrives below the position the client already holds in this
    /// topic: the current state sent after `subscribed`, or a `max_hz` update released after
    /// newer messages of other keys. Apply it as the newest value of its key; do not compare
    /// it with, or move, the last `seq` received. Absent (false) on every frame in `seq` order,
    /// so a client that keeps `last` per topic drops a frame only if it is not `late` and its
    /// `seq <= last`. Only ever sent as `true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("const" = true))]
    pub late: bool,
    /// The message: `type` and `data`.
    #[serde(flatten)]
    pub message: ServerMessage,
}

impl ServerFrame {
    /// A control frame (no topic, no seq).
    pub fn control(message: ServerMessage) -> Self {
        Self { topic: None, seq: None, late: false, message }
    }

    /// A topic frame at position `seq` of the message's topic.
    pub fn topic(message: ServerMessage, seq: u64) -> Self {
        Self { topic: message.topic(), seq: Some(seq), late: false, message }
    }
}

impl From<ServerMessage> for ServerFrame {
    fn from(message: ServerMessage) -> Self {
        Self::control(message)
    }
}
