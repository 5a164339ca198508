//! Counters the server reads: atomics only, no lock on the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use modelcast_protocol::{ServerMessage, Topic};

use crate::error::DropReason;

/// Why an update was replaced by a newer one of the same key before delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflateReason {
    /// A newer update arrived within the key's throttle window.
    Throttle,
    /// A newer update of the key arrived within the batch window.
    Batch,
    /// A subscriber's `max_hz` held the key's update back and a newer one replaced it.
    MaxHz,
    /// A full outbox collapsed queued updates to the newest per key.
    QueueFull,
}

impl ConflateReason {
    /// Every reason, in a stable order.
    pub const ALL: [ConflateReason; 4] = [
        ConflateReason::Throttle,
        ConflateReason::Batch,
        ConflateReason::MaxHz,
        ConflateReason::QueueFull,
    ];

    /// A short name for metrics, e.g. `queue_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflateReason::Throttle => "throttle",
            ConflateReason::Batch => "batch",
            ConflateReason::MaxHz => "max_hz",
            ConflateReason::QueueFull => "queue_full",
        }
    }
}

#[derive(Debug, Default)]
struct TopicCounters {
    subscribers: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    conflated: [AtomicU64; ConflateReason::ALL.len()],
    dropped: AtomicU64,
    state_keys: AtomicU64,
    state_evicted: AtomicU64,
}

/// The hub's live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    topics: [TopicCounters; Topic::ALL.len()],
    published_by_type: [AtomicU64; ServerMessage::TYPES.len()],
    control_dropped: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    serializations: AtomicU64,
    connections: AtomicU64,
}

impl Stats {
    pub(crate) fn subscribed(&self, topic: Topic) {
        self.topics[topic.index()].subscribers.fetch_add(1, Relaxed);
    }

    pub(crate) fn unsubscribed(&self, topic: Topic) {
        self.topics[topic.index()].subscribers.fetch_sub(1, Relaxed);
    }

    pub(crate) fn published(&self, topic: Topic, type_index: u8, delivered: u64) {
        if let Some(c) = self.published_by_type.get(usize::from(type_index)) {
            c.fetch_add(1, Relaxed);
        }
        let t = &self.topics[topic.index()];
        t.published.fetch_add(1, Relaxed);
        t.delivered.fetch_add(delivered, Relaxed);
    }

    pub(crate) fn delivered(&self, topic: Topic, n: u64) {
        self.topics[topic.index()].delivered.fetch_add(n, Relaxed);
    }

    pub(crate) fn conflated(&self, topic: Option<Topic>, reason: ConflateReason, n: u64) {
        // Only topic updates are ever conflated; control frames never are.
        if let Some(t) = topic {
            self.topics[t.index()].conflated[reason as usize].fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn dropped_message(&self, topic: Option<Topic>) {
        match topic {
            Some(t) => self.topics[t.index()].dropped.fetch_add(1, Relaxed),
            None => self.control_dropped.fetch_add(1, Relaxed),
        };
    }

    pub(crate) fn subscriber_dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    /// The topic now holds state for `keys` keys.
    pub(crate) fn state_keys(&self, topic: Topic, keys: usize) {
        self.topics[topic.index()].state_keys.store(keys as u64, Relaxed);
    }

    /// A key's state was evicted to keep the topic within its cap.
    pub(crate) fn state_evicted(&self, topic: Topic) {
        self.topics[topic.index()].state_evicted.fetch_add(1, Relaxed);
    }

    pub(crate) fn serialized(&self) {
        self.serializations.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HubStats {
        HubStats {
            topics: Topic::ALL
                .iter()
                .map(|&topic| {
                    let t = &self.topics[topic.index()];
                    TopicStats {
                        topic,
                        subscribers: t.subscribers.load(Relaxed),
                        published: t.published.load(Relaxed),
                        delivered: t.delivered.load(Relaxed),
                        conflated: t.conflated.iter().map(|c| c.load(Relaxed)).sum(),
                        conflated_by: ConflateReason::ALL
                            .iter()
                            .map(|&r| (r, t.conflated[r as usize].load(Relaxed)))
                            .collect(),
                        dropped: t.dropped.load(Relaxed),
                        state_keys: t.state_keys.load(Relaxed),
                        state_evicted: t.state_evicted.load(Relaxed),
                    }
                })
                .collect(),
            published_by_type: ServerMessage::TYPES
                .iter()
                .zip(&self.published_by_type)
                .map(|(t, c)| (*t, c.load(Relaxed)))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r, self.drops[r as usize].load(Relaxed)))
                .collect(),
            serializations: self.serializations.load(Relaxed),
            connections: self.connections.load(Relaxed),
            keys: 0,
        }
    }
}

/// A snapshot of the hub's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Per topic, in [`Topic::ALL`] order.
    pub topics: Vec<TopicStats>,
    /// Messages published per message type, in `ServerMessage::TYPES` order.
    pub published_by_type: Vec<(&'static str, u64)>,
    /// Subscribers dropped, per reason, in [`DropReason::ALL`] order.
    pub drops: Vec<(DropReason, u64)>,
    /// Frames serialized (one per publish, plus per-connection control replies).
    pub serializations: u64,
    /// Connections open now.
    pub connections: u64,
    /// Distinct keys and filter ids the hub holds now (state keys, subjects, filters): each
    /// lives while something uses it.
    pub keys: u64,
}

impl HubStats {
    /// The counters of one topic.
    pub fn topic(&self, topic: Topic) -> &TopicStats {
        &self.topics[topic.index()]
    }

    /// How many subscribers were dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].1
    }
}

/// One topic's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic.
    pub topic: Topic,
    /// Subscribers now.
    pub subscribers: u64,
    /// Messages published (after throttling and batching).
    pub published: u64,
    /// Frames queued to subscribers (live, replayed and retained).
    pub delivered: u64,
    /// Queued or held-back updates replaced by a newer value of the same key.
    pub conflated: u64,
    /// The same, per reason, in [`ConflateReason::ALL`] order.
    pub conflated_by: Vec<(ConflateReason, u64)>,
    /// Frames discarded because their subscriber was dropped.
    pub dropped: u64,
    /// Keys the topic holds current state for now.
    pub state_keys: u64,
    /// Keys whose state was evicted because the topic held its maximum
    /// ([`crate::HubConfig::state_max_keys`]).
    pub state_evicted: u64,
}
