//! The engine seam: where a topic's `seq`, history and retained state live when a hub is one
//! node of several.
//!
//! A hub made with [`Hub::new`](crate::Hub::new) is its own engine: it sequences in memory
//! (one process, no services). A hub made with [`Hub::with_engine`](crate::Hub::with_engine)
//! is a *replica*: every message it publishes (after throttling and batching, which stay per
//! node) is [`Engine::append`]ed to the topic's shared log, which gives it the next `seq`; the
//! engine then hands each sequenced message, in `seq` order, to every node's [`Replica`],
//! which records and fans it out exactly as a local publish. Subscriptions, recovery and
//! current state are then served from the node's copy, which the engine keeps contiguous: a
//! missing range is read back from the log ([`Replica::apply`] says [`Applied::Gap`]), and a
//! change of epoch or a range the log no longer holds replaces the copy ([`Replica::reset`]).
//!
//! Two implementations: [`MemoryEngine`] (several hubs in one process, for tests and
//! embedding) and the server's Redis engine.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use modelcast_protocol::Topic;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::idempotency::Remembered;
use crate::publish::Sequenced;
use crate::topics::{Applied, HubConfig, Logged, Topics, new_epoch};
use crate::wire::StateChange;

/// A sequenced, shared log per topic with its retained state: what makes several hubs one.
pub trait Engine: Send + Sync + fmt::Debug + 'static {
    /// A hub joins: the engine brings `replica` up to date, then hands it every sequenced
    /// message, in `seq` order per topic.
    fn attach(&self, replica: Replica);

    /// Appends a message to its topic's log as the next `seq` and answers on `append.reply`
    /// with its position once it is stored (or with [`Error::Unavailable`]: also at once when
    /// the engine's bounded queue of appends is full). Called under the hub's throttle lock: it
    /// must not block, and must store one node's appends of a topic in call order.
    fn append(&self, append: Append);

    /// Removes `key`'s retained state on `topic` everywhere, each node telling its
    /// subscribers ([`Replica::cleared`]). Answers whether there was any.
    fn clear(&self, topic: Topic, key: String) -> Pending<bool>;

    /// `None` when appends can succeed now; otherwise why not (publishers get a retryable
    /// error at once instead of waiting).
    fn unavailable(&self) -> Option<String>;

    /// A client asked this node for `since` in `topic`, which it has not reached: bring the
    /// node's copy up to the log's newest `seq`; if the log's head under `since`'s epoch is
    /// below it, the log rolled back (the client holds acknowledged messages the log lost):
    /// give the topic a new epoch. Answers once done.
    fn reach(&self, topic: Topic, since: &modelcast_protocol::Since) -> Pending<()>;
}

/// One message for [`Engine::append`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Append {
    /// Its topic.
    pub topic: Topic,
    /// The message in the engine payload format, as stored in the log and handed to
    /// [`Replica::apply`] (opaque to engines).
    pub payload: Bytes,
    /// What it does to retained state, for engines that keep the state apart from the log.
    pub state: Vec<StateChange>,
    /// A publisher's idempotency key: an append with a key already appended (within the
    /// engine's memory of keys) answers the earlier `seq` and appends nothing.
    pub idempotency_key: Option<String>,
    /// Where the position (or the failure) goes.
    pub reply: oneshot::Sender<Result<Sequenced>>,
}

/// An answer an engine gives later.
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<Result<T>>);

impl<T> Pending<T> {
    /// A pending answer and the sender that gives it.
    pub fn new() -> (oneshot::Sender<Result<T>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Self(rx))
    }

    /// An answer known now.
    pub fn ready(value: Result<T>) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(value);
        Self(rx)
    }

    /// Waits for the answer. An engine that dropped the request answers
    /// [`Error::Unavailable`].
    pub async fn wait(self) -> Result<T> {
        self.0.await.unwrap_or_else(|_| Err(Error::Unavailable("the engine stopped".into())))
    }
}

/// Where sequenced messages enter a hub. Holds the hub's topics weakly: a dropped hub stops
/// receiving ([`Replica::is_alive`]).
#[derive(Clone)]
pub struct Replica {
    topics: Weak<Topics>,
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica").field("alive", &self.is_alive()).finish()
    }
}

impl Replica {
    pub(crate) fn new(topics: &Arc<Topics>) -> Self {
        Self { topics: Arc::downgrade(topics) }
    }

    /// Whether the hub still exists.
    pub fn is_alive(&self) -> bool {
        self.topics.strong_count() > 0
    }

    /// The topic's epoch and newest `seq` on this node (`None` if the hub is gone).
    pub fn position(&self, topic: Topic) -> Option<(Arc<str>, u64)> {
        Some(self.topics.upgrade()?.position(topic))
    }

    /// Records and fans out `logged`, sequenced under `epoch`, if it is the next message;
    /// otherwise says what the engine must do (see [`Applied`]).
    pub fn apply(&self, topic: Topic, epoch: &str, logged: &Logged) -> Applied {
        match self.topics.upgrade() {
            Some(topics) => topics.apply(topic, epoch, logged),
            None => Applied::Gone,
        }
    }

    /// Replaces the node's copy of `topic` with the log's: `top` is the newest seq under
    /// `epoch`, `history` what the log holds (oldest first), `retained` the current state.
    /// Subscribers are told (a new `subscribed`, then what they can still get).
    pub fn reset(
        &self,
        topic: Topic,
        epoch: &str,
        top: u64,
        history: Vec<Logged>,
        retained: Vec<Logged>,
    ) {
        if let Some(topics) = self.topics.upgrade() {
            topics.reset(topic, epoch, top, history, retained);
        }
    }

    /// `key`'s retained state on `topic` was cleared: drop it and tell the subscribers.
    pub fn cleared(&self, topic: Topic, key: &str) -> bool {
        self.topics.upgrade().is_some_and(|t| t.clear_state(topic, key))
    }
}

#[derive(Debug, Default)]
struct MemoryLog {
    seq: u64,
    log: VecDeque<Logged>,
    retained: HashMap<String, Logged>,
}

#[derive(Debug)]
struct MemoryState {
    topics: HashMap<Topic, MemoryLog>,
    replicas: Vec<Replica>,
    idempotency: Remembered,
}

/// An engine in memory shared by hubs in one process: one `seq` per topic across them, like
/// the Redis engine across processes, with history of `history_size` messages per topic.
#[derive(Debug)]
pub struct MemoryEngine {
    epoch: String,
    history_size: usize,
    state: Mutex<MemoryState>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new(1000)
    }
}

impl MemoryEngine {
    /// An empty engine keeping `history_size` messages per topic.
    pub fn new(history_size: usize) -> Self {
        let state = MemoryState {
            topics: HashMap::new(),
            replicas: Vec::new(),
            idempotency: Remembered::new(HubConfig::default().idempotency_keys),
        };
        Self { epoch: new_epoch(), history_size, state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Engine for MemoryEngine {
    fn attach(&self, replica: Replica) {
        let mut state = self.lock();
        state.replicas.retain(Replica::is_alive);
        for topic in Topic::ALL {
            let log = state.topics.entry(topic).or_default();
            let mut retained: Vec<Logged> = log.retained.values().cloned().collect();
            retained.sort_by_key(|l| l.seq);
            replica.reset(topic, &self.epoch, log.seq, log.log.iter().cloned().collect(), retained);
        }
        state.replicas.push(replica);
    }

    fn append(&self, append: Append) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = tokio::time::Instant::now();
        if let Some(key) = &append.idempotency_key {
            match state.idempotency.check(key, now) {
                Ok(None) => {}
                Ok(Some(at)) => {
                    let _ = append.reply.send(Ok(at));
                    return;
                }
                Err(refused) => {
                    let _ = append.reply.send(Err(refused));
                    return;
                }
            }
        }
        let log = state.topics.entry(append.topic).or_default();
        log.seq += 1;
        let seq = log.seq;
        let published_ms = chrono::Utc::now().timestamp_millis();
        let logged = Logged { seq, published_ms, payload: append.payload };
        for change in append.state {
            match change {
                StateChange::Keep { key, payload } => {
                    log.retained.insert(key, Logged { seq, published_ms, payload });
                }
                StateChange::Clear { key } => {
                    log.retained.remove(&key);
                }
            }
        }
        log.log.push_back(logged.clone());
        while log.log.len() > self.history_size {
            log.log.pop_front();
        }
        let at = Sequenced { epoch: Arc::from(self.epoch.as_str()), seq };
        if let Some(key) = &append.idempotency_key {
            state.idempotency.record(key, at.clone(), now);
        }
        // Delivered under the engine's lock: every replica applies the topic's messages in
        // `seq` order, so none ever sees a gap.
        for replica in &state.replicas {
            let applied = replica.apply(append.topic, &self.epoch, &logged);
            debug_assert!(matches!(applied, Applied::Applied | Applied::Gone), "{applied:?}");
        }
        let _ = append.reply.send(Ok(at));
    }

    fn clear(&self, topic: Topic, key: String) -> Pending<bool> {
        let state = &mut *self.lock();
        let had = state.topics.entry(topic).or_default().retained.remove(&key).is_some();
        for replica in &state.replicas {
            replica.cleared(topic, &key);
        }
        Pending::ready(Ok(had))
    }

    fn unavailable(&self) -> Option<String> {
        None
    }

    fn reach(&self, _topic: Topic, _since: &modelcast_protocol::Since) -> Pending<()> {
        // Every replica applies under the engine's lock: none is ever behind.
        Pending::ready(Ok(()))
    }
}
