//! [`Wire`]: a message on its way to an engine — its frame serialized once (without `seq`,
//! which the engine assigns) and its policy by name, not by this node's interned ids. An
//! in-process engine hands it back to the node as it is; one that stores or sends it encodes it
//! ([`Wire::encode`]). A leaf module: the topic table reads it, the hub makes it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::audience::Audience;
use crate::frame::encode_text;
use crate::publish::{Key, Kind, Publish, Retain};
use crate::stats::Stats;

/// One publish (with a batch's parts, which only update retained state) on its way to an
/// engine. Opaque: an engine only appends it, or encodes it to store it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    /// The frame's JSON without `seq`.
    #[serde(rename = "f")]
    pub(crate) frame: String,
    /// The state key (scoped to the audience, if any).
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<Key>,
    /// The filter subject.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub(crate) subject: Option<Key>,
    /// [`Kind`] as 0 event, 1 update, 2 transition.
    #[serde(rename = "n", default)]
    kind: u8,
    /// [`Retain`] as 0 no, 1 keep, 2 clear.
    #[serde(rename = "r", default)]
    retain: u8,
    #[serde(rename = "u", default)]
    pub(crate) urgent: bool,
    /// The message type's index (for per-type counters).
    #[serde(rename = "t", default)]
    pub(crate) type_index: u8,
    /// Who the message is for (`None`: every subscriber). A node that does not know this
    /// field would deliver to everyone: upgrade every node before publishing with audiences.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub(crate) audience: Option<Arc<Audience>>,
    /// A batch's constituents.
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) parts: Vec<Wire>,
}

/// What an append does to one key's retained state, for engines that store it apart from the
/// log (so a snapshot of the state can be read without replaying the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// `key`'s state is now this message (the engine payload of the message alone, as bytes).
    Keep {
        /// The state key.
        key: String,
        /// The message, in the engine's payload format.
        payload: Bytes,
    },
    /// `key` has no state any more.
    Clear {
        /// The state key.
        key: String,
    },
}

impl Wire {
    pub(crate) fn from_publish(publish: Publish, parts: Vec<Publish>, stats: &Stats) -> Wire {
        let mut wire = Wire::one(publish, stats);
        wire.parts = parts.into_iter().map(|p| Wire::one(p, stats)).collect();
        wire
    }

    fn one(publish: Publish, stats: &Stats) -> Wire {
        let type_index = u8::try_from(publish.message.type_index()).unwrap_or_default();
        let key = publish.state_key();
        let frame = modelcast_protocol::ServerFrame {
            topic: Some(publish.topic),
            seq: None,
            late: false,
            message: publish.message,
        };
        Wire {
            frame: encode_text(&frame, stats),
            key,
            audience: publish.audience,
            subject: publish.subject,
            kind: match publish.kind {
                Kind::Event => 0,
                Kind::Update => 1,
                Kind::Transition => 2,
            },
            retain: match publish.retain {
                Retain::No => 0,
                Retain::Keep => 1,
                Retain::Clear => 2,
            },
            urgent: publish.urgent,
            type_index,
            parts: Vec::new(),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self.kind {
            1 => Kind::Update,
            2 => Kind::Transition,
            _ => Kind::Event,
        }
    }

    pub(crate) fn retain(&self) -> Retain {
        match self.retain {
            1 => Retain::Keep,
            2 => Retain::Clear,
            _ => Retain::No,
        }
    }

    fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a wire message always serializes"))
    }

    /// The engine payload (what [`crate::Replica::apply`] reads back), and the retained-state
    /// changes it makes in order (the message, then its parts). A message without parts that
    /// keeps its state shares the payload's bytes.
    pub fn encode(&self) -> (Bytes, Vec<StateChange>) {
        let payload = self.to_bytes();
        let changes = std::iter::once(self)
            .chain(&self.parts)
            .filter_map(|w| {
                let key = w.key.as_deref()?.to_owned();
                match w.retain() {
                    Retain::No => None,
                    Retain::Clear => Some(StateChange::Clear { key }),
                    Retain::Keep if w.parts.is_empty() && std::ptr::eq(w, self) => {
                        Some(StateChange::Keep { key, payload: payload.clone() })
                    }
                    Retain::Keep => {
                        let alone = Wire { parts: Vec::new(), ..w.clone() };
                        Some(StateChange::Keep { key, payload: alone.to_bytes() })
                    }
                }
            })
            .collect();
        (payload, changes)
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Wire, String> {
        serde_json::from_slice(bytes)
            .map_err(|e| format!("undecodable message from the engine: {e}"))
    }
}
