//! [`Hub`]: the publishing front of the engine — policy stages (throttle), the backplane to
//! other nodes, and connections — over the topic table in `topics.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use modelcast_protocol::{ServerMessage, Topic};
use tokio::time::Instant;

use crate::backplane::{Backplane, Inbound, MemoryBackplane, NodeId};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::keys::KeyId;
use crate::outbox::Outbox;
use crate::publish::{Kind, Publish};
use crate::stats::HubStats;
use crate::throttle::{Offered, Throttle};
use crate::topics::{HubConfig, Topics};

/// What [`Hub::publish`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Sequenced and queued to the subscribers now, at this `seq` of its topic.
    Sent {
        /// The message's position in its topic.
        seq: u64,
    },
    /// Held by a throttle or batch window; it (or a newer value of its key) goes out when the
    /// window ends.
    Held,
}

/// The modelcast engine: a cheap, cloneable handle.
///
/// Publishing assigns each message the next `seq` of its topic, serializes it once, records it
/// in the topic's history (and retained state, if asked) and queues the same bytes to every
/// matching subscriber's outbox. See the crate docs for the full contract.
#[derive(Clone)]
pub struct Hub {
    pub(crate) topics: Arc<Topics>,
    throttle: Arc<Throttle>,
    backplane: Arc<dyn Backplane>,
    node: NodeId,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("epoch", &self.topics.epoch).finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(HubConfig::default())
    }
}

impl Hub {
    /// A hub on its own (a single node).
    pub fn new(config: HubConfig) -> Self {
        Self::with_backplane(config, Arc::new(MemoryBackplane::new()))
    }

    /// A hub that shares its publishes with the other nodes on `backplane`.
    pub fn with_backplane(config: HubConfig, backplane: Arc<dyn Backplane>) -> Self {
        let topics = Arc::new(Topics::new(config));
        let node = NodeId::new();
        backplane.attach(node, Inbound::new(&topics));
        Hub { topics, throttle: Arc::default(), backplane, node }
    }

    /// The hub's epoch: random per hub lifetime. Positions (`seq`) are only comparable within
    /// one epoch.
    pub fn epoch(&self) -> &str {
        &self.topics.epoch
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.topics.config
    }

    /// The newest seq of `topic` (0 before the first publish).
    pub fn last_seq(&self, topic: Topic) -> u64 {
        self.topics.last_seq(topic)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HubStats {
        self.topics.stats.snapshot()
    }

    /// Opens a connection: an outbox and the subscriptions that feed it.
    pub fn connect(&self) -> Connection {
        let id = self.topics.next_connection_id();
        self.topics.stats.connection_opened();
        let outbox = Arc::new(Outbox::new(self.topics.config.outbox_capacity));
        Connection::new(self.topics.clone(), id, outbox)
    }

    /// Publishes a message with its policy: throttled updates wait for their window,
    /// transitions release a pending update of their key first, everything else goes out now.
    /// Never blocks on subscribers. Throttling needs a tokio runtime (it arms timers).
    pub fn publish(&self, publish: Publish) -> Published {
        let key = self.topics.keys.intern(publish.key.as_ref());
        match (publish.kind, publish.throttle) {
            _ if key == KeyId::NONE => self.send(publish),
            (Kind::Update, Some(interval)) => self.throttled(key, publish, interval),
            (Kind::Transition, _) => Published::Sent {
                seq: self.throttle.transition(key, publish, |p| self.publish_now(p, Vec::new())),
            },
            _ => self.send(publish),
        }
    }

    /// Publishes `message` with default policy (an event, no key, no subject).
    pub fn publish_message(&self, message: ServerMessage) -> Result<Published> {
        let type_name = message.type_name();
        let publish = Publish::new(message).ok_or(Error::NotATopicMessage { type_name })?;
        Ok(self.publish(publish))
    }

    fn send(&self, publish: Publish) -> Published {
        Published::Sent { seq: self.publish_now(publish, Vec::new()) }
    }

    fn throttled(&self, key: KeyId, publish: Publish, interval: Duration) -> Published {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, no timers: deliver rather than lose or hold the update.
            return self.send(publish);
        };
        let topic = publish.topic;
        let stats = &self.topics.stats;
        match self.throttle.offer(key, publish, interval, stats, |p| self.publish_now(p, vec![])) {
            Offered::Sent { seq, window_end } => {
                self.arm(&runtime, topic, key, window_end);
                Published::Sent { seq }
            }
            Offered::Held => Published::Held,
        }
    }

    fn arm(&self, runtime: &tokio::runtime::Handle, topic: Topic, key: KeyId, at: Instant) {
        let hub = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let next = hub.throttle.window_ended(topic, key, |p| hub.publish_now(p, Vec::new()));
            if let (Some(next), Ok(runtime)) = (next, tokio::runtime::Handle::try_current()) {
                hub.arm(&runtime, topic, key, next);
            }
        });
    }

    /// Sequences, records and fans out one message now; `constituents` (a batch's parts) only
    /// update the retained state. Forwards the publish to the other nodes.
    pub(crate) fn publish_now(&self, publish: Publish, constituents: Vec<Publish>) -> u64 {
        self.backplane.forward(self.node, &publish, &constituents);
        self.topics.publish(publish, constituents)
    }

    /// The frames retained on `topic` now, oldest first, as a new subscriber receives them
    /// (marked `"late":true`).
    pub fn retained(&self, topic: Topic) -> Vec<Frame> {
        self.topics.retained(topic)
    }

    /// Removes `key`'s current (retained) state on `topic` and tells its subscribers with a
    /// `state_cleared` frame; returns whether there was any. For state a publisher left behind.
    pub fn clear_state(&self, topic: Topic, key: &str) -> bool {
        self.topics.clear_state(topic, key)
    }

    /// Whether `key` has ever been used on this hub (keys are interned for the hub's life).
    pub fn knows_key(&self, key: &str) -> bool {
        self.topics.keys.lookup(key).is_some()
    }

    /// Counts a conflation by the batcher (which lives outside the hub's core).
    pub(crate) fn stats_handle(&self) -> &crate::stats::Stats {
        &self.topics.stats
    }
}
