//! The engine's health: one state (up or down with the reason, whether the node follows the
//! channels, what is wrong with Redis's configuration, and on a Redis Cluster each topic's:
//! its shard may be failing over while the others take publishes) behind one lock, so a
//! reader never sees an "up" with a stale reason (atomic mirrors of "up" and of the topics
//! that are down spare every publish the lock); and counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use modelcast_protocol::Topic;

#[derive(Debug, Default, Clone)]
struct State {
    up: bool,
    reason: String,
    following: bool,
    warning: Option<String>,
    /// Per topic (a cluster): the primary that holds it, and whether its last check answered.
    places: Vec<(String, bool)>,
    /// Per topic (a cluster), why its shard cannot take its appends now.
    topics_down: Vec<Option<String>>,
}

/// One shard of a Redis Cluster, as this node last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shard {
    /// Its primary's address (`host:port`).
    pub primary: String,
    /// The topics it holds.
    pub topics: Vec<Topic>,
    /// Whether every one of those topics answered the last check.
    pub up: bool,
}

/// The engine's health, shared by its tasks. Down ("connecting") until the engine first
/// reaches Redis.
#[derive(Debug)]
pub(crate) struct Health {
    state: Mutex<State>,
    /// `state.up`, written under the lock, read without it by every publish.
    up: AtomicBool,
    /// A bit per [`Topic::index`] whose `state.topics_down` is set; written under the lock.
    down_topics: AtomicU32,
    /// Appends Redis failed or refused.
    pub(crate) append_failures: AtomicU64,
    /// Appends refused at once because the queue to Redis was full.
    pub(crate) appends_refused_full: AtomicU64,
    /// Topic repairs from the log (holes, reconnects, checks).
    pub(crate) repairs: AtomicU64,
    /// Topic resets (new epoch, or a hole the log no longer held).
    pub(crate) resets: AtomicU64,
    /// Rollback fences (new epochs this node gave a topic).
    pub(crate) fences: AtomicU64,
    /// Pub/sub reconnects.
    pub(crate) reconnects: AtomicU64,
    /// Times Sentinel named another primary and the engine moved to it, or a restart check
    /// found a cluster's topics on another primary.
    pub(crate) failovers: AtomicU64,
}

/// A snapshot of the engine's health (for `/readyz`, `/api/stats`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Whether appends can succeed now.
    pub up: bool,
    /// Why not, when down.
    pub reason: Option<String>,
    /// Whether the node's pub/sub connection is subscribed and caught up.
    pub following: bool,
    /// What is wrong with Redis's configuration but does not stop the engine.
    pub warning: Option<String>,
    /// Appends Redis failed or refused.
    pub append_failures: u64,
    /// Appends refused at once because the queue to Redis was full.
    pub appends_refused_full: u64,
    /// Topic repairs from the log.
    pub repairs: u64,
    /// Topic resets from Redis.
    pub resets: u64,
    /// Rollback fences.
    pub fences: u64,
    /// Pub/sub reconnects.
    pub reconnects: u64,
    /// Failovers followed (Redis Sentinel named another primary; a cluster's topics on
    /// another primary).
    pub failovers: u64,
    /// A cluster's shards that hold topics (empty for one Redis or Sentinel).
    pub shards: Vec<Shard>,
}

impl Default for Health {
    fn default() -> Self {
        let connecting = State { reason: "connecting to redis".into(), ..State::default() };
        Self {
            state: Mutex::new(connecting),
            up: AtomicBool::new(false),
            down_topics: AtomicU32::new(0),
            append_failures: AtomicU64::new(0),
            appends_refused_full: AtomicU64::new(0),
            repairs: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            fences: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_up(&self) {
        let mut state = self.lock();
        if !state.up {
            tracing::info!("redis engine is up");
        }
        state.up = true;
        state.reason.clear();
        self.up.store(true, Ordering::SeqCst);
    }

    /// The engine cannot take appends now, for `reason`: logged at warn when it goes down and
    /// whenever the reason changes (once, not per retry), so an operator sees why from the
    /// log alone — also when it never came up (a `NOAUTH` or a read-only replica from start).
    pub(crate) fn set_down(&self, reason: String) {
        let mut state = self.lock();
        if state.up || state.reason != reason {
            tracing::warn!(%reason, "redis engine is down: publishes are refused (503) until it recovers");
        }
        state.up = false;
        state.reason = reason;
        self.up.store(false, Ordering::SeqCst);
    }

    pub(crate) fn set_following(&self, following: bool) {
        self.lock().following = following;
    }

    /// Where each topic lives (a cluster: its primary's address, per [`Topic::index`]).
    pub(crate) fn set_primaries(&self, primaries: Vec<String>) {
        let mut state = self.lock();
        let up = |i: usize| state.places.get(i).is_none_or(|p| p.1);
        let places = primaries.into_iter().enumerate().map(|(i, p)| (p, up(i))).collect();
        state.places = places;
    }

    /// Where `topic` lives (a cluster: its primary's address), if known.
    pub(crate) fn place(&self, topic: Topic) -> Option<String> {
        self.lock().places.get(topic.index()).map(|p| p.0.clone())
    }

    /// Whether each topic's check answered (per [`Topic::index`]).
    pub(crate) fn set_topics_up(&self, up: &[bool]) {
        for (place, up) in self.lock().places.iter_mut().zip(up) {
            place.1 = *up;
        }
    }

    /// On a Redis Cluster, `topic`'s shard cannot take its appends now (`Some(why)`: said at
    /// warn once per change) or can again (`None`); the other topics go on.
    pub(crate) fn set_topic(&self, topic: Topic, down: Option<String>) {
        let mut state = self.lock();
        if state.topics_down.len() < Topic::ALL.len() {
            state.topics_down.resize(Topic::ALL.len(), None);
        }
        let slot = &mut state.topics_down[topic.index()];
        match (&slot, &down) {
            (Some(was), Some(now)) if was == now => return,
            (None, None) => return,
            (_, Some(reason)) => tracing::warn!(
                %topic, %reason,
                "redis cluster: the shard of this topic is down: its publishes are refused \
                 (503) until it recovers; other topics go on"
            ),
            (Some(_), None) => {
                tracing::info!(%topic, "redis cluster: the shard of this topic is up")
            }
        }
        *slot = down;
        let bits = state
            .topics_down
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .fold(0u32, |bits, (i, _)| bits | 1 << i);
        self.down_topics.store(bits, Ordering::SeqCst);
    }

    pub(crate) fn set_warning(&self, warning: Option<String>) {
        self.lock().warning = warning;
    }

    /// `None` when appends (of `topic`, or of any topic) can succeed, else why not. Asked by
    /// every publish: no lock while up.
    pub(crate) fn unavailable(&self, topic: Option<Topic>) -> Option<String> {
        let bit = topic.map_or(0, |t| 1u32 << t.index());
        if self.up.load(Ordering::SeqCst) && self.down_topics.load(Ordering::SeqCst) & bit == 0 {
            return None;
        }
        let state = self.lock();
        if !state.up {
            return Some(state.reason.clone());
        }
        let topic = topic?;
        state.topics_down.get(topic.index()).cloned().flatten()
    }

    pub(crate) fn report(&self) -> HealthReport {
        let state = self.lock().clone();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HealthReport {
            up: state.up,
            reason: (!state.up).then_some(state.reason),
            following: state.following,
            warning: state.warning,
            append_failures: n(&self.append_failures),
            appends_refused_full: n(&self.appends_refused_full),
            repairs: n(&self.repairs),
            resets: n(&self.resets),
            fences: n(&self.fences),
            reconnects: n(&self.reconnects),
            failovers: n(&self.failovers),
            shards: shards(&state.places, &state.topics_down),
        }
    }
}

/// The topics' places grouped by primary, in topic order.
fn shards(places: &[(String, bool)], down: &[Option<String>]) -> Vec<Shard> {
    let mut shards: Vec<Shard> = Vec::new();
    for (topic, (primary, up)) in Topic::ALL.into_iter().zip(places) {
        let up = &(*up && down.get(topic.index()).is_none_or(Option::is_none));
        match shards.iter_mut().find(|s| s.primary == *primary) {
            Some(shard) => {
                shard.topics.push(topic);
                shard.up &= *up;
            }
            None => shards.push(Shard { primary: primary.clone(), topics: vec![topic], up: *up }),
        }
    }
    shards
}
