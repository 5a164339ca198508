//! The engine seam: the one way a message gets its `seq`. Every hub has an engine, and every
//! publish (after throttling and batching, which stay per node) is [`Engine::append`]ed to it.
//!
//! - [`LocalEngine`] (what [`Hub::new`](crate::Hub::new) uses): one process, no services. It
//!   sequences on the hub's own topics at once ([`Replica::sequence`]), so a publish is
//!   answered before `append` returns and a run of one topic's messages is fanned out together.
//! - [`MemoryEngine`]: several hubs in one process sharing one log per topic (tests, embedding).
//! - The Redis engine (`modelcast-redis`): several processes. It stores each message and hands
//!   it, in `seq` order, to every node's [`Replica::apply`], which records and fans it out as a
//!   local publish does. Subscriptions, recovery and current state are served from the node's
//!   copy, which the engine keeps contiguous: a missing range is read back from the log
//!   ([`Applied::Gap`]), and a change of epoch or a range the log no longer holds replaces the
//!   copy ([`Replica::reset`]).
//!
//! Each engine holds idempotency keys by the one rule of `idempotency.rs`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use modelcast_protocol::Topic;
use tokio::sync::oneshot;

use crate::epoch::new_epoch;
use crate::error::{Error, Result};
use crate::idempotency::{Claim, Claims, Remembered};
use crate::publish::Sequenced;
use crate::topics::{Applied, HubConfig, Logged, Topics};
use crate::wire::{StateChange, Wire};

/// Where messages get their `seq`, and where history and retained state are kept for the
/// hubs that share them (see the module docs).
pub trait Engine: Send + Sync + fmt::Debug + 'static {
    /// A hub joins: the engine brings `replica` up to date, then hands it every sequenced
    /// message, in `seq` order per topic.
    fn attach(&self, replica: Replica);

    /// Appends messages, in order, each to its topic as the next `seq` (one message is a run
    /// of one; consecutive messages of one topic without an idempotency key an in-process
    /// engine fans out together, each subscriber's queue locked once for them). One answer
    /// per message: [`Appended::Done`] when the engine sequenced it at once (in process),
    /// [`Appended::Pending`] when it answers once stored. Refusals (unavailable, a full queue,
    /// a full idempotency table) are errors, never a wait. Called under the hub's throttle
    /// lock: it must not block, and must sequence one node's appends of a topic in call
    /// order.
    fn append(&self, run: Vec<Append>) -> Vec<Appended>;

    /// Claims a publisher's idempotency key for the request whose digest is `request`, before
    /// any of its messages is appended (see [`crate::Hub::claim`]), with the same window and
    /// capacity as the keys of messages.
    fn claim(&self, key: &str, request: &str) -> Pending<Claim>;

    /// Removes `key`'s retained state on `topic` everywhere, each node telling its
    /// subscribers ([`Replica::cleared`]). Answers whether there was any.
    fn clear(&self, topic: Topic, key: String) -> Pending<bool>;

    /// `None` when appends of `topic` (`None`: of every topic — the engine as a whole) can
    /// succeed now; otherwise why not (publishers get a retryable error at once instead of
    /// waiting). An engine whose topics live in several places (a Redis Cluster's shards)
    /// refuses only the topics whose place is down.
    fn unavailable(&self, topic: Option<Topic>) -> Option<String>;

    /// A client asked this node for `topic` from `since`, which it has not reached, or before
    /// the node's copy was loaded from the log: load or bring the copy up to the log's newest
    /// `seq`; if the log's head under `since`'s epoch is below it, the log rolled back (the
    /// client holds acknowledged messages the log lost): give the topic a new epoch. Answers
    /// once done.
    fn reach(&self, topic: Topic, since: Option<&modelcast_protocol::Since>) -> Pending<()>;
}

/// One message for [`Engine::append`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Append {
    /// Its topic.
    pub topic: Topic,
    /// The message, serialized once, with its policy.
    pub wire: Wire,
    /// A publisher's idempotency key: an append with a key already appended (within its
    /// window, see [`crate::IDEMPOTENCY_TTL`]) answers the earlier position and appends
    /// nothing.
    pub idempotency_key: Option<String>,
}

/// What [`Engine::append`] did.
#[derive(Debug)]
pub enum Appended {
    /// Sequenced (or refused) at once.
    Done(Result<Sequenced>),
    /// Answered once the engine stored it.
    Pending(Pending<Sequenced>),
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

    /// Declares the hub's own topics the log (an engine in the same process, which sequences
    /// on them): until an engine does this or [`Replica::reset`]s a topic, the node's copy is
    /// not the log's, and a client's position in it waits for [`Engine::reach`].
    pub fn own(&self) {
        if let Some(topics) = self.topics.upgrade() {
            topics.own();
        }
    }

    /// `key`'s retained state on `topic` was cleared: drop it and tell the subscribers.
    pub fn cleared(&self, topic: Topic, key: &str) -> bool {
        self.topics.upgrade().is_some_and(|t| t.clear_state(topic, key))
    }

    /// Sequences `run` (consecutive messages of `topic`) on the node itself — for an engine
    /// in the same process, whose log is the node's — recording and fanning them out together.
    /// Their positions (`None` if the hub is gone).
    pub fn sequence(&self, topic: Topic, run: Vec<Wire>) -> Option<Vec<Sequenced>> {
        let (epoch, seqs) = self.topics.upgrade()?.publish_run(topic, run);
        Some(seqs.into_iter().map(|seq| Sequenced { epoch: epoch.clone(), seq }).collect())
    }
}

/// The engine of a single node (what [`Hub::new`](crate::Hub::new) uses): it sequences on the
/// hub's own topics, in this process, at once; the hub's history and retained state are its
/// log. Idempotency keys by the one rule (`idempotency.rs`).
#[derive(Debug)]
pub struct LocalEngine {
    replica: OnceLock<Replica>,
    idempotency: Mutex<Remembered>,
    claims: Mutex<Claims>,
}

impl LocalEngine {
    /// An engine remembering at most `idempotency_keys` unexpired idempotency keys.
    pub fn new(idempotency_keys: usize) -> Self {
        Self {
            replica: OnceLock::new(),
            idempotency: Mutex::new(Remembered::new(idempotency_keys)),
            claims: Mutex::new(Claims::new(idempotency_keys)),
        }
    }

    fn sequence(&self, topic: Topic, run: Vec<Wire>) -> Vec<Appended> {
        let n = run.len();
        match self.replica.get().and_then(|r| r.sequence(topic, run)) {
            Some(positions) => positions.into_iter().map(|at| Appended::Done(Ok(at))).collect(),
            None => (0..n).map(|_| Appended::Done(Err(Error::Unavailable(GONE.into())))).collect(),
        }
    }

    /// One message, remembering its idempotency key (held across the publish: a retry racing
    /// the first waits for its answer).
    fn append_one(&self, append: Append) -> Appended {
        let Some(key) = append.idempotency_key else {
            return self.sequence(append.topic, vec![append.wire]).remove(0);
        };
        let mut remembered = self.idempotency.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        match remembered.check(&key, now) {
            Ok(Some(at)) => Appended::Done(Ok(at)),
            Ok(None) => {
                let appended = self.sequence(append.topic, vec![append.wire]).remove(0);
                if let Appended::Done(Ok(at)) = &appended {
                    remembered.record(&key, at.clone(), now);
                }
                appended
            }
            Err(refused) => Appended::Done(Err(refused)),
        }
    }
}

const GONE: &str = "the hub is gone";

impl Engine for LocalEngine {
    fn attach(&self, replica: Replica) {
        replica.own();
        if self.replica.set(replica).is_err() {
            tracing::error!("a local engine serves one hub; a second attach was ignored");
        }
    }

    fn append(&self, run: Vec<Append>) -> Vec<Appended> {
        let Some(first) = run.first() else { return Vec::new() };
        let topic = first.topic;
        if run.iter().all(|a| a.idempotency_key.is_none() && a.topic == topic) {
            return self.sequence(topic, run.into_iter().map(|a| a.wire).collect());
        }
        run.into_iter().map(|append| self.append_one(append)).collect()
    }

    fn claim(&self, key: &str, request: &str) -> Pending<Claim> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        Pending::ready(claims.claim(key, request, tokio::time::Instant::now()))
    }

    fn clear(&self, topic: Topic, key: String) -> Pending<bool> {
        Pending::ready(Ok(self.replica.get().is_some_and(|r| r.cleared(topic, &key))))
    }

    fn unavailable(&self, _topic: Option<Topic>) -> Option<String> {
        None
    }

    fn reach(&self, _topic: Topic, _since: Option<&modelcast_protocol::Since>) -> Pending<()> {
        // The node is the log: never behind. A position past it in its epoch is made up (a
        // process's epoch is its own), and the subscription starts from the current state.
        Pending::ready(Ok(()))
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
    claims: Claims,
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
            claims: Claims::new(HubConfig::default().idempotency_keys),
        };
        Self { epoch: new_epoch(), history_size, state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One message: sequenced, logged, and applied by every replica under the lock.
    fn append_one(&self, append: Append) -> Appended {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = tokio::time::Instant::now();
        if let Some(key) = &append.idempotency_key {
            match state.idempotency.check(key, now) {
                Ok(None) => {}
                Ok(Some(at)) => return Appended::Done(Ok(at)),
                Err(refused) => return Appended::Done(Err(refused)),
            }
        }
        let (payload, changes) = append.wire.encode();
        let log = state.topics.entry(append.topic).or_default();
        log.seq += 1;
        let seq = log.seq;
        let published_ms = chrono::Utc::now().timestamp_millis();
        let logged = Logged { seq, published_ms, payload };
        for change in changes {
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
        Appended::Done(Ok(at))
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
            let history = log.log.iter().cloned().collect();
            replica.reset(topic, &self.epoch, log.seq, history, retained);
        }
        state.replicas.push(replica);
    }

    fn append(&self, run: Vec<Append>) -> Vec<Appended> {
        run.into_iter().map(|append| self.append_one(append)).collect()
    }

    fn claim(&self, key: &str, request: &str) -> Pending<Claim> {
        let now = tokio::time::Instant::now();
        Pending::ready(self.lock().claims.claim(key, request, now))
    }

    fn clear(&self, topic: Topic, key: String) -> Pending<bool> {
        let state = &mut *self.lock();
        let had = state.topics.entry(topic).or_default().retained.remove(&key).is_some();
        for replica in &state.replicas {
            replica.cleared(topic, &key);
        }
        Pending::ready(Ok(had))
    }

    fn unavailable(&self, _topic: Option<Topic>) -> Option<String> {
        None
    }

    fn reach(&self, _topic: Topic, _since: Option<&modelcast_protocol::Since>) -> Pending<()> {
        // Every replica applies under the engine's lock: none is ever behind.
        Pending::ready(Ok(()))
    }
}
