//! [`Hub`]: topics, sequencing, history, retained state and fan-out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use modelcast_protocol::{RequestId, ServerFrame, ServerMessage, Since, Subscribed, Topic};
use tokio::time::Instant;

use crate::backplane::{Backplane, Inbound, MemoryBackplane, NodeId};
use crate::keys::{Interner, KeyId};
use crate::outbox::{Item, Outbox, Pushed};
use crate::stats::{HubStats, Stats};
use crate::throttle::Throttle;
use crate::{Connection, Error, Frame, Key, Kind, Publish, Result, Retain};

/// The hub's limits. `Default` gives PRODUCT.md's defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Messages kept per topic for recovery (default 1000).
    pub history_size: usize,
    /// How long a message stays recoverable (default 5 minutes).
    pub history_age: Duration,
    /// Frames that may wait per connection before it is collapsed, then dropped (default 1000).
    pub outbox_capacity: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self { history_size: 1000, history_age: Duration::from_secs(300), outbox_capacity: 1000 }
    }
}

impl HubConfig {
    /// Sets [`HubConfig::history_size`].
    pub fn history_size(mut self, n: usize) -> Self {
        self.history_size = n;
        self
    }

    /// Sets [`HubConfig::history_age`].
    pub fn history_age(mut self, age: Duration) -> Self {
        self.history_age = age;
        self
    }

    /// Sets [`HubConfig::outbox_capacity`].
    pub fn outbox_capacity(mut self, n: usize) -> Self {
        self.outbox_capacity = n;
        self
    }
}

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

/// How to subscribe: all optional.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Echoed in the `subscribed` reply.
    pub request_id: Option<RequestId>,
    /// Recover from this position instead of receiving the retained state.
    pub since: Option<Since>,
    /// Only messages with one of these keys (messages without a key always pass).
    pub keys: Option<Vec<String>>,
    /// At most this many updates per second per key (newest wins; transitions always pass).
    pub max_hz: Option<f64>,
}

impl SubscribeOptions {
    /// Sets the request id.
    pub fn request_id(mut self, id: Option<RequestId>) -> Self {
        self.request_id = id;
        self
    }

    /// Sets the recovery position.
    pub fn since(mut self, since: Option<Since>) -> Self {
        self.since = since;
        self
    }

    /// Sets the key filter.
    pub fn keys(mut self, keys: Option<Vec<String>>) -> Self {
        self.keys = keys;
        self
    }

    /// Sets the per-key rate.
    pub fn max_hz(mut self, max_hz: Option<f64>) -> Self {
        self.max_hz = max_hz;
        self
    }
}

/// What a subscription started with (also sent to the connection as `subscribed`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOutcome {
    /// The hub's epoch.
    pub epoch: String,
    /// The topic's newest seq when the subscription started.
    pub seq: u64,
    /// Whether every message after `since` was replayed.
    pub recovered: bool,
    /// How many frames (replayed or retained) were queued before live ones.
    pub initial: usize,
}

/// The modelcast engine: a cheap, cloneable handle.
///
/// Publishing assigns each message the next `seq` of its topic, serializes it once, records it
/// in the topic's history (and retained state, if asked) and queues the same bytes to every
/// matching subscriber's outbox. See the crate docs for the full contract.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<HubInner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("epoch", &self.inner.epoch).finish_non_exhaustive()
    }
}

pub(crate) struct HubInner {
    pub(crate) config: HubConfig,
    pub(crate) epoch: String,
    pub(crate) node: NodeId,
    topics: [Mutex<TopicState>; Topic::ALL.len()],
    pub(crate) keys: Interner,
    pub(crate) stats: Stats,
    pub(crate) throttle: Throttle,
    backplane: Arc<dyn Backplane>,
    next_connection: AtomicU64,
}

struct Sub {
    connection: u64,
    outbox: Arc<Outbox>,
    filter: Option<Arc<HashSet<KeyId>>>,
    rate: Option<Duration>,
}

struct HistoryEntry {
    seq: u64,
    type_index: u8,
    at: Instant,
    key: KeyId,
    kind: Kind,
    urgent: bool,
    frame: Frame,
}

struct RetainedEntry {
    seq: u64,
    type_index: u8,
    kind: Kind,
    urgent: bool,
    frame: Frame,
}

#[derive(Default)]
struct TopicState {
    seq: u64,
    history: VecDeque<HistoryEntry>,
    retained: HashMap<KeyId, RetainedEntry>,
    subs: Vec<Sub>,
}

impl TopicState {
    fn prune(&mut self, config: &HubConfig, now: Instant) {
        while self.history.len() > config.history_size {
            self.history.pop_front();
        }
        while self.history.front().is_some_and(|e| now.duration_since(e.at) > config.history_age) {
            self.history.pop_front();
        }
    }
}

/// Serializes a frame; the one place the hub turns messages into bytes.
pub(crate) fn encode(frame: &ServerFrame, stats: &Stats) -> Frame {
    stats.serialized();
    Frame::from_json(serde_json::to_string(frame).expect("protocol types always serialize"))
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
        let hub = Hub {
            inner: Arc::new(HubInner {
                config,
                epoch: format!("{:016x}", rand::random::<u64>()),
                node: NodeId::new(),
                topics: Default::default(),
                keys: Interner::default(),
                stats: Stats::default(),
                throttle: Throttle::default(),
                backplane,
                next_connection: AtomicU64::new(1),
            }),
        };
        hub.inner.backplane.attach(hub.inner.node, Inbound::new(&hub));
        hub
    }

    /// The hub's epoch: random per hub lifetime. Positions (`seq`) are only comparable within
    /// one epoch.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The newest seq of `topic` (0 before the first publish).
    pub fn last_seq(&self, topic: Topic) -> u64 {
        self.topic(topic).seq
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HubStats {
        self.inner.stats.snapshot()
    }

    /// Opens a connection: an outbox and the subscriptions that feed it.
    pub fn connect(&self) -> Connection {
        let id = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        self.inner.stats.connection_opened();
        Connection::new(self.clone(), id, Arc::new(Outbox::new(self.inner.config.outbox_capacity)))
    }

    /// Publishes a message with its policy: throttled updates wait for their window,
    /// transitions release a pending update of their key first, everything else goes out now.
    /// Never blocks on subscribers. Throttling needs a tokio runtime (it arms timers).
    pub fn publish(&self, publish: Publish) -> Published {
        match (publish.kind, publish.throttle, publish.key.is_some()) {
            (Kind::Update, Some(interval), true) => self.throttled(publish, interval),
            (Kind::Transition, _, true) => Published::Sent { seq: self.transition(publish) },
            _ => Published::Sent { seq: self.publish_now(publish, Vec::new()) },
        }
    }

    /// Publishes `message` with default policy (an event, no key).
    pub fn publish_message(&self, message: ServerMessage) -> Result<Published> {
        let type_name = message.type_name();
        let publish = Publish::new(message).ok_or(Error::NotATopicMessage { type_name })?;
        Ok(self.publish(publish))
    }

    fn topic(&self, topic: Topic) -> MutexGuard<'_, TopicState> {
        // Every mutation of a topic is completed before its lock is released, so a poisoned
        // lock (a panic elsewhere while holding it) still guards consistent state.
        self.inner.topics[topic.index()].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sequences, records and fans out one message now; `constituents` (a batch's parts) only
    /// update the retained state. Forwards the publish to the other nodes.
    pub(crate) fn publish_now(&self, publish: Publish, constituents: Vec<Publish>) -> u64 {
        self.inner.backplane.forward(self.inner.node, &publish, &constituents);
        self.publish_local(publish, constituents)
    }

    /// As [`Hub::publish_now`], without forwarding (for messages from other nodes).
    pub(crate) fn publish_local(&self, publish: Publish, constituents: Vec<Publish>) -> u64 {
        let inner = &*self.inner;
        let topic = publish.topic;
        let key = inner.keys.intern(publish.key.as_ref());
        let (kind, urgent, retain) = (publish.kind, publish.urgent, publish.retain);
        let type_index = u8::try_from(publish.message.type_index()).unwrap_or_default();
        // Serialize once, outside the topic lock, without the seq; splice the seq in below.
        let unsequenced = serde_json::to_string(&ServerFrame {
            topic: Some(topic),
            seq: None,
            message: publish.message,
        })
        .expect("protocol types always serialize");
        inner.stats.serialized();
        let parts: Vec<(KeyId, Retain, Kind, bool, u8, String)> = constituents
            .into_iter()
            .map(|p| {
                let key = inner.keys.intern(p.key.as_ref());
                let type_index = u8::try_from(p.message.type_index()).unwrap_or_default();
                let json = serde_json::to_string(&ServerFrame {
                    topic: Some(p.topic),
                    seq: None,
                    message: p.message,
                })
                .expect("protocol types always serialize");
                inner.stats.serialized();
                (key, p.retain, p.kind, p.urgent, type_index, json)
            })
            .collect();

        let now = Instant::now();
        let mut state = self.topic(topic);
        state.seq += 1;
        let seq = state.seq;
        let frame = with_seq(&unsequenced, seq);
        state.history.push_back(HistoryEntry {
            seq,
            type_index,
            at: now,
            key,
            kind,
            urgent,
            frame: frame.clone(),
        });
        state.prune(&inner.config, now);
        let mut retain_ops = vec![(key, retain, kind, urgent, type_index, None)];
        retain_ops
            .extend(parts.into_iter().map(|(k, r, kd, u, t, json)| (k, r, kd, u, t, Some(json))));
        for (key, retain, kind, urgent, type_index, json) in retain_ops {
            if key == KeyId::NONE {
                continue;
            }
            match retain {
                Retain::No => {}
                Retain::Clear => {
                    state.retained.remove(&key);
                }
                Retain::Keep => {
                    let frame = json.map_or_else(|| frame.clone(), |j| with_seq(&j, seq));
                    state
                        .retained
                        .insert(key, RetainedEntry { seq, type_index, kind, urgent, frame });
                }
            }
        }

        let item = Item::new(frame, topic, key, kind, type_index, Some(now));
        let mut delivered = 0u64;
        let mut gone = Vec::new();
        for (i, sub) in state.subs.iter().enumerate() {
            if let Some(filter) = &sub.filter
                && key != KeyId::NONE
                && !filter.contains(&key)
            {
                continue;
            }
            match sub.outbox.push(item.clone(), urgent, sub.rate, now, &inner.stats) {
                Pushed::Queued => delivered += 1,
                Pushed::Deferred => {}
                Pushed::Closed | Pushed::Dropped => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            state.subs.swap_remove(i);
            inner.stats.unsubscribed(topic);
        }
        drop(state);
        inner.stats.published(topic, type_index, delivered);
        seq
    }

    /// Adds (or replaces) `connection`'s subscription to `topic`, queueing `subscribed` and then
    /// the replayed or retained frames into `outbox`, atomically with respect to publishers.
    pub(crate) fn subscribe(
        &self,
        connection: u64,
        outbox: &Arc<Outbox>,
        topic: Topic,
        options: SubscribeOptions,
    ) -> Result<SubscribeOutcome> {
        let rate = match options.max_hz {
            None => None,
            Some(hz) if hz.is_finite() && hz > 0.0 => Some(Duration::from_secs_f64(1.0 / hz)),
            Some(hz) => return Err(Error::InvalidMaxHz(hz)),
        };
        let inner = &*self.inner;
        let filter: Option<Arc<HashSet<KeyId>>> = options.keys.map(|keys| {
            Arc::new(keys.iter().map(|k| inner.keys.intern(Some(&Key::from(k.as_str())))).collect())
        });
        let now = Instant::now();
        let mut state = self.topic(topic);
        state.prune(&inner.config, now);
        let replaced = remove_sub(&mut state, connection);
        let top = state.seq;

        // Recovery: the whole range (since, top] must still be held.
        let replay = options.since.as_ref().and_then(|since| {
            if since.epoch != inner.epoch || since.seq > top {
                return None;
            }
            let oldest = state.history.front().map_or(top + 1, |e| e.seq);
            (since.seq + 1 >= oldest || since.seq == top).then_some(since.seq)
        });
        let recovered = replay.is_some();
        let reply = ServerMessage::Subscribed(Subscribed {
            topic,
            epoch: inner.epoch.clone(),
            seq: top,
            recovered,
            request_id: options.request_id,
        });
        let type_index = u8::try_from(reply.type_index()).unwrap_or_default();
        let frame = encode(&ServerFrame::control(reply), &inner.stats);
        if outbox.push_control(frame, type_index, &inner.stats) != Pushed::Queued {
            if replaced {
                inner.stats.unsubscribed(topic);
            }
            return Err(Error::Closed(outbox.closed().unwrap_or(crate::DropReason::Closed)));
        }
        let passes = |key: KeyId| match &filter {
            Some(f) => key == KeyId::NONE || f.contains(&key),
            None => true,
        };
        let mut initial: Vec<(Frame, KeyId, Kind, bool, u8)> = match replay {
            Some(after) => state
                .history
                .iter()
                .filter(|e| e.seq > after && passes(e.key))
                .map(|e| (e.frame.clone(), e.key, e.kind, e.urgent, e.type_index))
                .collect(),
            None => {
                let mut entries: Vec<(&KeyId, &RetainedEntry)> =
                    state.retained.iter().filter(|(k, _)| passes(**k)).collect();
                entries.sort_by_key(|(_, e)| e.seq);
                entries
                    .into_iter()
                    .map(|(k, e)| (e.frame.clone(), *k, e.kind, e.urgent, e.type_index))
                    .collect()
            }
        };
        let count = initial.len();
        for (frame, key, kind, urgent, type_index) in initial.drain(..) {
            let item = Item::new(frame, topic, key, kind, type_index, None);
            // Initial frames keep their order: they go on the routine lane unless urgent.
            if outbox.push(item, urgent, None, now, &inner.stats) == Pushed::Dropped {
                return Err(Error::Closed(crate::DropReason::SlowConsumer));
            }
        }
        inner.stats.delivered(topic, count as u64);
        state.subs.push(Sub { connection, outbox: outbox.clone(), filter, rate });
        if !replaced {
            inner.stats.subscribed(topic);
        }
        Ok(SubscribeOutcome { epoch: inner.epoch.clone(), seq: top, recovered, initial: count })
    }

    /// Removes `connection`'s subscription to `topic`; returns whether there was one.
    pub(crate) fn unsubscribe(&self, connection: u64, topic: Topic) -> bool {
        let removed = remove_sub(&mut self.topic(topic), connection);
        if removed {
            self.inner.stats.unsubscribed(topic);
        }
        removed
    }

    /// The frames retained on `topic` now, oldest first (for inspection and tests).
    pub fn retained(&self, topic: Topic) -> Vec<Frame> {
        let state = self.topic(topic);
        let mut entries: Vec<&RetainedEntry> = state.retained.values().collect();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| e.frame.clone()).collect()
    }

    /// Whether `key` has ever been used on this hub (keys are interned for the hub's life).
    pub fn knows_key(&self, key: &str) -> bool {
        self.inner.keys.lookup(key).is_some()
    }
}

fn remove_sub(state: &mut TopicState, connection: u64) -> bool {
    match state.subs.iter().position(|s| s.connection == connection) {
        Some(i) => {
            state.subs.swap_remove(i);
            true
        }
        None => false,
    }
}

/// `{"topic":...}` + seq → `{"seq":N,"topic":...}`: one small copy instead of a second
/// serialization.
fn with_seq(unsequenced: &str, seq: u64) -> Frame {
    use std::fmt::Write as _;
    debug_assert!(unsequenced.starts_with('{'));
    let mut out = String::with_capacity(unsequenced.len() + 28);
    let _ = write!(out, "{{\"seq\":{seq},");
    out.push_str(&unsequenced[1..]);
    Frame::from_json(out)
}
