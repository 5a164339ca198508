//! [`Hub`]: the publishing front of the engine — policy stages (throttle), sequencing (here or
//! in an [`Engine`]), and connections — over the topic table in `topics.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use modelcast_protocol::Topic;
use tokio::time::Instant;

use crate::audience::{Audience, Viewer};
use crate::connection::Connection;
use crate::engine::{Append, Appended, Engine, LocalEngine, Pending, Replica};
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::idempotency::Claim;
use crate::outbox::Outbox;
use crate::publish::{Key, Kind, Publish, Sequenced};
use crate::stats::HubStats;
use crate::throttle::{Offered, Throttle};
use crate::topics::{HubConfig, StatePage, Topics};
use crate::wire::Wire;

/// What [`Hub::publish`] did with a message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Published {
    /// Sequenced and queued to the subscribers now.
    Sent(Sequenced),
    /// Held by a throttle or batch window; it (or a newer value of its key) goes out when the
    /// window ends.
    Held,
    /// Handed to the engine, which answers with its position once stored (or with
    /// [`Error::Unavailable`]). Subscribers receive it when the engine hands it back.
    Appending(Pending<Sequenced>),
}

impl Published {
    /// The `seq` the message got: at once, or once the engine stored it. `None` when held.
    pub async fn seq(self) -> Result<Option<u64>> {
        Ok(self.position().await?.map(|p| p.seq))
    }

    /// Where the message was sequenced: at once, or once the engine stored it. `None` when
    /// held.
    pub async fn position(self) -> Result<Option<Sequenced>> {
        match self {
            Published::Sent(at) => Ok(Some(at)),
            Published::Held => Ok(None),
            Published::Appending(pending) => pending.wait().await.map(Some),
        }
    }
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
    /// The one way a message gets its `seq` (a [`LocalEngine`] on a single node).
    engine: Arc<dyn Engine>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("epoch", &self.topics.epoch)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(HubConfig::default())
    }
}

impl Hub {
    /// A hub on its own (a single node), on a [`LocalEngine`]: it sequences, keeps history
    /// and retained state in memory.
    pub fn new(config: HubConfig) -> Self {
        let engine = Arc::new(LocalEngine::new(config.idempotency_keys));
        Self::with_engine(config, engine)
    }

    /// A hub on `engine`, which sequences every topic's messages (and, for several nodes,
    /// stores them and hands them back to this hub; see [`Engine`]).
    pub fn with_engine(config: HubConfig, engine: Arc<dyn Engine>) -> Self {
        let hub = Hub {
            topics: Arc::new(Topics::new(config)),
            throttle: Arc::default(),
            engine: engine.clone(),
        };
        engine.attach(Replica::new(&hub.topics));
        hub
    }

    /// The hub's own epoch: random per hub lifetime. Positions (`seq`) are only comparable
    /// within one epoch; on an engine each topic has the engine's epoch ([`Hub::position`]),
    /// normally this one's for no topic.
    pub fn epoch(&self) -> &str {
        &self.topics.epoch
    }

    /// The epoch and newest `seq` of `topic` on this node.
    pub fn position(&self, topic: Topic) -> (String, u64) {
        let (epoch, seq) = self.topics.position(topic);
        (epoch.to_string(), seq)
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
        let mut stats = self.topics.stats.snapshot();
        stats.keys = self.topics.keys.live() as u64;
        stats
    }

    /// Sets the [`Tap`](crate::Tap) told of every message this hub sequences (its own and, on a cluster,
    /// every other node's); once: a second call is refused (`false`).
    pub fn set_tap(&self, tap: std::sync::Arc<dyn crate::Tap>) -> bool {
        self.topics.tap.set(tap).is_ok()
    }

    /// Why publishing cannot succeed now (the engine is unreachable), or `None`.
    pub fn unavailable(&self) -> Option<String> {
        self.engine.unavailable(None)
    }

    /// A subscription was refused with [`crate::Error::Behind`] (a position this node has not
    /// reached, or a copy not loaded from the log yet): the engine brings the node up to its
    /// log's head, and fences the topic (a new epoch) if the log is behind `since` under the
    /// same epoch — the log rolled back. Answers once done (at once on a single node, which is
    /// never behind); then subscribe again.
    pub fn reach(&self, topic: Topic, since: Option<&modelcast_protocol::Since>) -> Pending<()> {
        self.engine.reach(topic, since)
    }

    /// The topics whose copy is not loaded from the engine's log yet (right after a start):
    /// subscriptions to them wait for [`Hub::reach`]. Empty on a single node.
    pub fn loading(&self) -> Vec<Topic> {
        self.topics.loading()
    }

    /// Opens a connection: an outbox and the subscriptions that feed it.
    pub fn connect(&self) -> Connection {
        let id = self.topics.next_connection_id();
        self.topics.stats.connection_opened();
        let outbox = Arc::new(Outbox::new(self.topics.config.outbox_capacity));
        Connection::new(self.topics.clone(), id, outbox)
    }

    /// Publishes a run of messages (one message is a run of one), in order, each with its
    /// policy: a throttled update waits for its key's window, a transition first releases a
    /// pending update of its key, everything else goes out now. Consecutive messages of one
    /// topic that go out at once (no throttle, no transition, no idempotency key) go to the
    /// engine together, which an in-process engine fans out together: each subscriber's
    /// queue is locked once for them instead of once per message, which is most of a
    /// fan-out's cost when a backend streams messages (one read of its connection holds many).
    /// One answer per message, in order. Never blocks on subscribers. Throttling needs a tokio
    /// runtime (it arms timers).
    pub fn publish(&self, run: impl Into<Run>) -> Vec<Published> {
        let Run(publishes) = run.into();
        let mut out = Vec::with_capacity(publishes.len());
        if let [_] = publishes.as_slice() {
            // The common case, a lone message, goes its own way: no run to gather.
            out.extend(publishes.into_iter().map(|p| self.publish_one(p)));
            return out;
        }
        let mut together: Vec<Publish> = Vec::new();
        for publish in publishes {
            let immediate = publish.idempotency_key.is_none()
                && publish.throttle.is_none()
                && publish.kind != Kind::Transition;
            if !immediate || together.first().is_some_and(|p| p.topic != publish.topic) {
                self.append_together(&mut together, &mut out);
            }
            if immediate {
                together.push(publish);
            } else {
                out.push(self.publish_one(publish));
            }
        }
        self.append_together(&mut together, &mut out);
        out
    }

    /// One message with its policy (see [`Hub::publish`]).
    pub(crate) fn publish_one(&self, publish: Publish) -> Published {
        let Some(key) = publish.state_key() else { return self.publish_now(publish, Vec::new()) };
        match (publish.kind, publish.throttle) {
            (Kind::Update, Some(interval)) => self.throttled(key, publish, interval),
            (Kind::Transition, _) => {
                self.throttle.transition(key, publish, |p| self.publish_now(p, Vec::new()))
            }
            _ => self.publish_now(publish, Vec::new()),
        }
    }

    /// Hands `together` (consecutive messages of one topic, to go out now) to the engine in
    /// one call; their answers go to `out`.
    fn append_together(&self, together: &mut Vec<Publish>, out: &mut Vec<Published>) {
        if together.is_empty() {
            return;
        }
        if let Some(reason) = self.engine.unavailable(together.first().map(|p| p.topic)) {
            out.extend(together.drain(..).map(|_| unavailable(&reason)));
            return;
        }
        let appends = together.drain(..).map(|p| self.append_of(p, Vec::new())).collect();
        out.extend(self.engine.append(appends).into_iter().map(published));
    }

    /// Claims a publisher's idempotency key for one request (`request`: a digest of it, e.g.
    /// of an HTTP body) before any of the request's messages is published, so that a key names
    /// one request: [`Claim::New`] the first time (publish the messages, each with a key of
    /// its own derived from this one), [`Claim::Retry`] for the same request again within
    /// [`crate::IDEMPOTENCY_TTL`] (publish them again: each answers its first position),
    /// and [`Error::IdempotencyConflict`] when the key names another request (publish
    /// nothing). A full table refuses as [`Error::IdempotencyFull`] does.
    pub fn claim(&self, key: &str, request: &str) -> Pending<Claim> {
        if let Some(reason) = self.engine.unavailable(None) {
            return Pending::ready(Err(Error::Unavailable(reason)));
        }
        self.engine.claim(key, request)
    }

    fn throttled(&self, key: Key, publish: Publish, interval: Duration) -> Published {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, no timers: deliver rather than lose or hold the update.
            return self.publish_now(publish, Vec::new());
        };
        let topic = publish.topic;
        let stats = &self.topics.stats;
        match self
            .throttle
            .offer(key.clone(), publish, interval, stats, |p| self.publish_now(p, vec![]))
        {
            Offered::Sent { sent, window_end } => {
                self.arm(&runtime, topic, key, window_end);
                sent
            }
            Offered::Held => Published::Held,
        }
    }

    fn arm(&self, runtime: &tokio::runtime::Handle, topic: Topic, key: Key, at: Instant) {
        let hub = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            let next = hub.throttle.window_ended(topic, &key, |p| hub.publish_now(p, Vec::new()));
            if let (Some(next), Ok(runtime)) = (next, tokio::runtime::Handle::try_current()) {
                hub.arm(&runtime, topic, key, next);
            }
        });
    }

    /// Hands one message to the engine now; `constituents` (a batch's parts) only update the
    /// retained state.
    pub(crate) fn publish_now(&self, publish: Publish, constituents: Vec<Publish>) -> Published {
        if let Some(reason) = self.engine.unavailable(Some(publish.topic)) {
            return unavailable(&reason);
        }
        let appended = self.engine.append(vec![self.append_of(publish, constituents)]);
        appended
            .into_iter()
            .next()
            .map_or_else(|| unavailable("the engine answered nothing"), published)
    }

    /// The engine's form of a publish: serialized once here, for every engine.
    fn append_of(&self, publish: Publish, constituents: Vec<Publish>) -> Append {
        let topic = publish.topic;
        let idempotency_key = publish.idempotency_key.as_ref().map(|k| k.to_string());
        let wire = Wire::from_publish(publish, constituents, &self.topics.stats);
        Append { topic, wire, idempotency_key }
    }

    /// The frames retained on `topic` now, oldest first, as a new subscriber receives them
    /// (marked `"late":true`).
    pub fn retained(&self, topic: Topic) -> Vec<Frame> {
        self.topics.retained(topic)
    }

    /// Removes `key`'s current (retained) state on `topic` — the state of `audience`'s key,
    /// if one is named, else the state published without an audience — and tells its
    /// subscribers with a `state_cleared` frame (on every node, through the engine); answers
    /// whether there was any. For state a publisher left behind.
    pub async fn clear_state(
        &self,
        topic: Topic,
        key: &str,
        audience: Option<&Audience>,
    ) -> Result<bool> {
        if let Some(reason) = self.engine.unavailable(Some(topic)) {
            return Err(Error::Unavailable(reason));
        }
        let key = crate::audience::state_key(&Key::from(key), audience).to_string();
        self.engine.clear(topic, key).wait().await
    }

    /// Whether something on this hub holds `key` now (retained state, history, a filter):
    /// keys are freed with their last user.
    pub fn knows_key(&self, key: &str) -> bool {
        self.topics.keys.lookup(key).is_some()
    }

    /// A page of `topic`'s retained state, in the order a new subscriber receives it: the
    /// frames after the cursor `after` (the previous page's [`StatePage::next`]), at least
    /// `limit` unless the state ends first (a batch's parts, which share a `seq`, are never
    /// split across pages).
    ///
    /// `reader`: `None` for everything (an operator's view); a viewer for exactly what a
    /// subscription of that viewer receives — the same check as every hand-out to a
    /// subscriber, so inspection can never show a viewer more than subscribing would.
    pub fn state_page(
        &self,
        topic: Topic,
        after: Option<u64>,
        limit: usize,
        reader: Option<&Viewer>,
    ) -> StatePage {
        let reader = reader.map(|v| crate::reach::Who::new(v.clone(), &self.topics.keys));
        self.topics.retained_page(topic, after, limit, reader)
    }

    /// Whether `topic` holds current state for `key` of `audience` (`None`: published to
    /// everyone) now. State evicted past `state_max_keys`, cleared, or older than
    /// `retained_ttl` is not held.
    pub fn holds_state(&self, topic: Topic, key: &str, audience: Option<&Audience>) -> bool {
        let key = crate::audience::state_key(&Key::from(key), audience);
        self.topics.holds_state(topic, &key)
    }

    /// Counts a conflation by the batcher (which lives outside the hub's core).
    pub(crate) fn stats_handle(&self) -> &crate::stats::Stats {
        &self.topics.stats
    }
}

/// What [`Hub::publish`] takes: messages to publish in order. One message is a run of one.
#[derive(Debug)]
pub struct Run(Vec<Publish>);

impl From<Publish> for Run {
    fn from(publish: Publish) -> Self {
        Self(vec![publish])
    }
}

impl From<Vec<Publish>> for Run {
    fn from(publishes: Vec<Publish>) -> Self {
        Self(publishes)
    }
}

/// A publish refused because the engine cannot take it now.
fn unavailable(reason: &str) -> Published {
    Published::Appending(Pending::ready(Err(Error::Unavailable(reason.to_owned()))))
}

/// What the engine's answer means for the publisher.
fn published(appended: Appended) -> Published {
    match appended {
        Appended::Done(Ok(at)) => Published::Sent(at),
        Appended::Done(Err(refused)) => Published::Appending(Pending::ready(Err(refused))),
        Appended::Pending(pending) => Published::Appending(pending),
    }
}
