//! The frame the server writes: a [`ServerMessage`] plus the top-level `topic` and `seq`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ServerMessage, Topic};

/// One frame from the server: `{"type": ..., "data": {...}, "topic": ..., "seq": ...}`.
///
/// `topic` and `seq` are present on topic messages delivered by the hub, absent on control
/// messages. Readers that only look at `type` and `data` (the seed's) keep working.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerFrame {
    /// The topic the message was published on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Topic>,
    /// The message's position in its topic, from 1, increasing by one per message within an
    /// epoch. Send the last one received as `since.seq` when re-subscribing to recover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The message: `type` and `data`.
    #[serde(flatten)]
    pub message: ServerMessage,
}

impl ServerFrame {
    /// A control frame (no topic, no seq).
    pub fn control(message: ServerMessage) -> Self {
        Self { topic: None, seq: None, message }
    }

    /// A topic frame at position `seq` of the message's topic.
    pub fn topic(message: ServerMessage, seq: u64) -> Self {
        Self { topic: message.topic(), seq: Some(seq), message }
    }
}

impl From<ServerMessage> for ServerFrame {
    fn from(message: ServerMessage) -> Self {
        Self::control(message)
    }
}
