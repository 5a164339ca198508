//! [`Topics`]: the per-topic table — `seq`, history, retained state, subscribers — and the two
//! operations on it: sequence-and-fan-out a message, and start a subscription atomically with
//! publishers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use modelcast_protocol::{RequestId, ServerFrame, ServerMessage, Since, Subscribed, Topic};
use tokio::time::Instant;

use crate::audience::{Audience, unscoped};
use crate::epoch::{generation, new_epoch};
use crate::error::{DropReason, Error, MIN_MAX_HZ, Result};
use crate::frame::{encode, with_seq};
use crate::keys::{Interner, KeyId, KeyRef, id_of};
use crate::outbox::{Outbox, Pushed, TopicFrame};
use crate::publish::{Key, Kind, Retain};
use crate::reach::{Reach, Who};
use crate::retained::{Entry, Retained};
use crate::stats::Stats;
use crate::tap::{Tap, Tapped};
use crate::wire::Wire;

/// The hub's limits. `Default` gives the product's defaults: 1000 messages or 5 minutes of
/// history per topic, 1000 queued frames per connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Messages kept per topic for recovery (default 1000).
    pub history_size: usize,
    /// How long a message stays recoverable (default 5 minutes).
    pub history_age: Duration,
    /// Frames that may wait per connection before it is collapsed, then dropped (default 1000).
    pub outbox_capacity: usize,
    /// Bytes of history kept, all topics together (default 256 MiB): a topic publishing over
    /// the budget drops its own oldest messages first.
    pub history_bytes: usize,
    /// How long a key's retained state lives without a newer message (default 24 hours):
    /// older state is dropped, so a publisher that vanished does not haunt new subscribers.
    pub retained_ttl: Duration,
    /// Keys with retained state per topic (default 10,000): keeping one more evicts the key
    /// updated longest ago, whose subscribers get `state_cleared`.
    pub state_max_keys: usize,
    /// Subjects a subscription's filter may list (default 256): a longer filter is refused
    /// with [`Error::FilterTooLarge`].
    pub filter_max_subjects: usize,
    /// Idempotency keys remembered at once, each for
    /// [`IDEMPOTENCY_TTL`](crate::IDEMPOTENCY_TTL) (default 100,000): with that many
    /// unexpired, a publish with a new key is refused with [`Error::IdempotencyFull`].
    pub idempotency_keys: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_age: Duration::from_secs(300),
            outbox_capacity: 1000,
            history_bytes: 256 << 20,
            retained_ttl: Duration::from_secs(24 * 3600),
            state_max_keys: 10_000,
            filter_max_subjects: 256,
            idempotency_keys: 100_000,
        }
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

    /// Sets [`HubConfig::retained_ttl`].
    pub fn retained_ttl(mut self, ttl: Duration) -> Self {
        self.retained_ttl = ttl;
        self
    }

    /// Sets [`HubConfig::history_bytes`].
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = bytes;
        self
    }

    /// Sets [`HubConfig::state_max_keys`].
    pub fn state_max_keys(mut self, n: usize) -> Self {
        self.state_max_keys = n;
        self
    }

    /// Sets [`HubConfig::filter_max_subjects`].
    pub fn filter_max_subjects(mut self, n: usize) -> Self {
        self.filter_max_subjects = n;
        self
    }

    /// Sets [`HubConfig::idempotency_keys`].
    pub fn idempotency_keys(mut self, n: usize) -> Self {
        self.idempotency_keys = n;
        self
    }

    /// Sets [`HubConfig::outbox_capacity`].
    pub fn outbox_capacity(mut self, n: usize) -> Self {
        self.outbox_capacity = n;
        self
    }
}

/// How to subscribe: all optional.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Echoed in the `subscribed` reply.
    pub request_id: Option<RequestId>,
    /// Recover from this position instead of receiving the retained state.
    pub since: Option<Since>,
    /// Only messages whose subject is one of these, and every message without a subject.
    pub subjects: Option<Vec<String>>,
    /// At most this many updates per second per key (newest wins; transitions and events
    /// always pass).
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

    /// Sets the subject filter.
    pub fn subjects(mut self, subjects: Option<Vec<String>>) -> Self {
        self.subjects = subjects;
        self
    }

    /// Sets the per-key rate.
    pub fn max_hz(mut self, max_hz: Option<f64>) -> Self {
        self.max_hz = max_hz;
        self
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// The current state (retained frames, late), then live frames after the top.
    State,
    /// Recovered: state below the position nothing newer touched, then the history after it.
    Recover(u64),
    /// Not recoverable: the history after this position, then the current state.
    Gap(u64),
    /// The position asked for is ahead of this node's newest `seq` in the same epoch, or the
    /// node's copy is not loaded from the log yet: the engine must bring it up first.
    Ahead,
}

/// What a subscription started with (also sent to the connection as `subscribed`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOutcome {
    /// The hub's epoch.
    pub epoch: String,
    /// The position the frames that follow continue from: the topic's newest seq, `since`
    /// when recovered, or after a gap the seq before the oldest message history still holds.
    pub seq: u64,
    /// Whether every message after `since` was replayed.
    pub recovered: bool,
    /// How many frames (replayed or retained) were queued before live ones.
    pub initial: usize,
}

/// A subscription's subject filter: the ids it matches, and the held keys that keep each id
/// meaning its string for as long as the filter exists (and no longer: a client's filter costs
/// memory only while its subscription lives).
struct Filter {
    ids: HashSet<KeyId>,
    _held: Vec<KeyRef>,
}

type FilterRef = Option<Arc<Filter>>;

/// Who may receive what of a topic: a filter on subjects and a viewer. **The one predicate**
/// every hand-out of a topic makes — live fan-out (single messages and runs), the state after
/// `subscribed`, the replay, a recovery's state, `state_cleared` — and the state inspection
/// (`Hub::state_page` for a viewer: a gate without a filter), so no path can forget an
/// audience.
struct Gate {
    filter: FilterRef,
    /// Who the connection is (re-set when its token is renewed).
    who: Who,
}

impl Gate {
    /// Whether a message about `subject` for `audience` passes: the filter passes the subject
    /// and the viewer is in the audience.
    #[inline]
    fn admits(&self, subject: KeyId, audience: Option<&Reach>) -> bool {
        if let Some(filter) = &self.filter
            && subject != KeyId::NONE
            && !filter.ids.contains(&subject)
        {
            return false;
        }
        // Without an audience (most messages) the viewer is not even looked at.
        audience.is_none_or(|a| a.admits(&self.who))
    }

    /// Whether `entry` (history or retained state) passes.
    fn admits_entry(&self, entry: &Entry) -> bool {
        self.admits(entry.subject_id(), entry.audience())
    }
}

/// One connection's subscription to a topic.
struct Sub {
    connection: u64,
    outbox: Arc<Outbox>,
    rate: Option<Duration>,
    gate: Gate,
}

impl Sub {
    /// Whether a message about `subject` for `audience` may reach this subscription
    /// ([`Gate::admits`]).
    #[inline]
    fn admits(&self, subject: KeyId, audience: Option<&Reach>) -> bool {
        self.gate.admits(subject, audience)
    }

    /// Whether `entry` (history or retained state) may reach this subscription.
    fn admits_entry(&self, entry: &Entry) -> bool {
        self.gate.admits_entry(entry)
    }
}

#[derive(Default)]
struct TopicState {
    /// The epoch of `seq`: the hub's own, or the engine's for the topic.
    epoch: Arc<str>,
    seq: u64,
    history: VecDeque<Entry>,
    /// The newest `Retain::Keep` message per state key, with when it was published; frames
    /// stored marked late, since they are only ever sent below a new subscription's position.
    retained: Retained,
    subs: Vec<Sub>,
    /// Whether this copy is the log's: reset from it by the engine, or the hub's own log
    /// ([`Topics::own`]). Until then, no position is judged against it.
    loaded: bool,
}

impl TopicState {
    /// Drops retained state older than `retained_ttl`. Only where state is read (subscribe,
    /// inspection), never per publish: it is bounded by `state_max_keys` anyway.
    fn expire_retained(&mut self, config: &HubConfig, now: Instant) {
        self.retained.expire(config.retained_ttl, now);
    }

    /// Drops the oldest messages beyond the count, the age, and the byte budget shared by all
    /// topics (`total`: the bytes of every topic's history).
    fn prune(&mut self, config: &HubConfig, now: Instant, total: &AtomicUsize) {
        while let Some(front) = self.history.front() {
            let over = self.history.len() > config.history_size
                || now.duration_since(front.at) > config.history_age
                || total.load(Ordering::Relaxed) > config.history_bytes;
            if !over {
                break;
            }
            let bytes = front.cost();
            self.history.pop_front();
            total.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn remove_sub(&mut self, connection: u64) -> bool {
        match self.subs.iter().position(|s| s.connection == connection) {
            Some(i) => {
                self.subs.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// A message recorded at its `seq`, to be fanned out.
struct Recorded {
    frame: TopicFrame,
    seq: u64,
    subject: KeyId,
    urgent: bool,
    type_index: u8,
}

/// One message serialized (without its `seq`) and its keys interned, ready for the topic lock.
struct Prepared {
    text: String,
    key: Option<KeyRef>,
    subject: Option<KeyRef>,
    audience: Option<Arc<Reach>>,
    retain: Retain,
    kind: Kind,
    urgent: bool,
    type_index: u8,
}

impl Prepared {
    /// The record of this message at `seq` (its frame marked `late` for retained state, which
    /// is only ever sent below a subscriber's position).
    fn entry(&self, topic: Topic, seq: u64, at: Instant, late: bool) -> Entry {
        let frame = with_seq(&self.text, seq, self.audience.clone());
        let frame = TopicFrame {
            frame: if late { frame.late() } else { frame },
            topic,
            seq,
            key: self.key.clone(),
            kind: self.kind,
            type_index: self.type_index,
        };
        Entry { frame, subject: self.subject.clone(), urgent: self.urgent, at }
    }
}

/// What [`Replica::apply`](crate::Replica::apply) did with a message sequenced elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Recorded and fanned out: it was the next `seq`.
    Applied,
    /// Already had it (`seq` at or below the node's newest): ignored.
    Duplicate,
    /// Messages are missing between the node's newest `seq` (`last`) and this one: read
    /// `last + 1 ..` from the log and apply in order (or reset the topic).
    Gap {
        /// The node's newest seq of the topic.
        last: u64,
    },
    /// The message belongs to another epoch than the node's: reset the topic from the engine.
    OtherEpoch,
    /// The node holds a *different* message at this `seq` under this epoch: the log went back
    /// and handed the number out again. The engine must give the topic a new epoch.
    Conflict,
    /// The payload could not be decoded (a node of another version?): skipped, logged.
    Invalid(String),
    /// The hub is gone.
    Gone,
}

/// A logged message as an engine reads it back: its position, when it was published
/// (milliseconds since the Unix epoch) and its payload.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Its `seq` in the topic.
    pub seq: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub published_ms: i64,
    /// The engine payload (see [`crate::Engine`]).
    pub payload: bytes::Bytes,
}

/// The topic table shared by the hub and its connections.
pub(crate) struct Topics {
    pub(crate) config: HubConfig,
    pub(crate) epoch: String,
    topics: [Mutex<TopicState>; Topic::ALL.len()],
    pub(crate) keys: Interner,
    pub(crate) stats: Stats,
    next_connection: AtomicU64,
    /// Bytes of history across all topics (for `history_bytes`).
    history_bytes: AtomicUsize,
    /// Told of every sequenced message, when set ([`crate::Hub::set_tap`]).
    pub(crate) tap: std::sync::OnceLock<Arc<dyn Tap>>,
}

/// A wall-clock publish time as an `Instant` on this node's clock (for age limits).
fn instant_of(published_ms: i64, now: Instant) -> Instant {
    let age_ms = chrono::Utc::now().timestamp_millis().saturating_sub(published_ms).max(0);
    now.checked_sub(Duration::from_millis(age_ms as u64)).unwrap_or(now)
}

impl Topics {
    pub(crate) fn new(config: HubConfig) -> Self {
        let epoch = new_epoch();
        let shared: Arc<str> = Arc::from(epoch.as_str());
        Self {
            config,
            topics: std::array::from_fn(|_| {
                Mutex::new(TopicState { epoch: shared.clone(), ..TopicState::default() })
            }),
            epoch,
            keys: Interner::default(),
            stats: Stats::default(),
            next_connection: AtomicU64::new(1),
            history_bytes: AtomicUsize::new(0),
            tap: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self, topic: Topic) -> MutexGuard<'_, TopicState> {
        // Every mutation of a topic is completed before its lock is released, so a poisoned
        // lock (a panic elsewhere while holding it) still guards consistent state.
        self.topics[topic.index()].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn last_seq(&self, topic: Topic) -> u64 {
        self.lock(topic).seq
    }

    /// The topic's epoch and newest seq on this node.
    /// Declares every topic's copy the log itself (an engine in this process): positions are
    /// judged against it from now on.
    pub(crate) fn own(&self) {
        for topic in Topic::ALL {
            self.lock(topic).loaded = true;
        }
    }

    /// The topics whose copy is not loaded from the log yet.
    pub(crate) fn loading(&self) -> Vec<Topic> {
        Topic::ALL.into_iter().filter(|t| !self.lock(*t).loaded).collect()
    }

    pub(crate) fn position(&self, topic: Topic) -> (Arc<str>, u64) {
        let state = self.lock(topic);
        (state.epoch.clone(), state.seq)
    }

    fn prepare_wire(&self, wire: Wire) -> Prepared {
        let intern = |k: &Option<Key>| k.as_ref().map(|k| self.keys.intern(k));
        Prepared {
            key: intern(&wire.key),
            subject: intern(&wire.subject),
            audience: wire.audience.clone().map(|a| Arc::new(Reach::new(a, &self.keys))),
            retain: wire.retain(),
            kind: wire.kind(),
            urgent: wire.urgent,
            type_index: wire.type_index,
            text: wire.frame,
        }
    }

    /// A message and its parts (a batch's constituents, which only update the retained state,
    /// under the message's `seq`), ready for the topic lock.
    fn prepare_all(&self, mut wire: Wire) -> (Prepared, Vec<Prepared>) {
        let parts = std::mem::take(&mut wire.parts);
        let parts = parts.into_iter().map(|p| self.prepare_wire(p)).collect();
        (self.prepare_wire(wire), parts)
    }

    /// A message and its parts from the engine's payload.
    fn prepare_payload(&self, payload: &[u8]) -> Result<(Prepared, Vec<Prepared>), String> {
        Ok(self.prepare_all(Wire::parse(payload)?))
    }

    /// Records and fans out a message an engine sequenced under `epoch`, if it is the next one
    /// this node expects.
    pub(crate) fn apply(&self, topic: Topic, epoch: &str, logged: &Logged) -> Applied {
        let (main, parts) = match self.prepare_payload(&logged.payload) {
            Ok(prepared) => prepared,
            Err(err) => return Applied::Invalid(err),
        };
        let seq = logged.seq;
        let now = Instant::now();
        let mut state = self.lock(topic);
        if *state.epoch != *epoch {
            return Applied::OtherEpoch;
        }
        if seq <= state.seq {
            return match state.history.iter().rev().find(|e| e.frame.seq == seq) {
                Some(held) if held.frame.frame != with_seq(&main.text, seq, None) => {
                    Applied::Conflict
                }
                _ => Applied::Duplicate,
            };
        }
        if seq > state.seq + 1 {
            return Applied::Gap { last: state.seq };
        }
        let at = instant_of(logged.published_ms, now);
        let recorded = self.record(&mut state, topic, seq, now, at, main, parts);
        self.fan_out(state, topic, now, std::slice::from_ref(&recorded));
        Applied::Applied
    }

    /// Sequences, records and fans out messages of one topic, in order, under one acquisition
    /// of the topic lock: each subscriber's outbox is locked once for
    /// all of them. Returns the topic's epoch and their `seq`s.
    pub(crate) fn publish_run(&self, topic: Topic, run: Vec<Wire>) -> (Arc<str>, Vec<u64>) {
        // Serialized once (by the hub, without the seq; spliced in below), interned outside
        // the topic lock.
        let prepared: Vec<(Prepared, Vec<Prepared>)> =
            run.into_iter().map(|wire| self.prepare_all(wire)).collect();
        let now = Instant::now();
        let mut state = self.lock(topic);
        let mut recorded = Vec::with_capacity(prepared.len());
        for (main, parts) in prepared {
            let seq = state.seq + 1;
            recorded.push(self.record(&mut state, topic, seq, now, now, main, parts));
        }
        let seqs = recorded.iter().map(|r| r.seq).collect();
        let epoch = state.epoch.clone();
        self.fan_out(state, topic, now, &recorded);
        (epoch, seqs)
    }

    /// Records `main` (and `parts`) at `seq`: the topic's position, retained state, history.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        state: &mut TopicState,
        topic: Topic,
        seq: u64,
        now: Instant,
        at: Instant,
        main: Prepared,
        parts: Vec<Prepared>,
    ) -> Recorded {
        state.seq = seq;
        for part in std::iter::once(&main).chain(&parts) {
            let Some(key) = &part.key else { continue };
            match part.retain {
                Retain::No => {}
                Retain::Clear => {
                    state.retained.remove(key.id());
                }
                Retain::Keep => {
                    let entry = part.entry(topic, seq, at, true);
                    if let Some(evicted) = state.retained.keep(entry, self.config.state_max_keys) {
                        self.stats.state_evicted(topic);
                        self.tell_cleared(state, topic, &evicted);
                    }
                }
            }
        }
        self.stats.state_keys(topic, state.retained.len());
        let entry = main.entry(topic, seq, at, false);
        let frame = entry.frame.clone();
        self.history_bytes.fetch_add(entry.cost(), Ordering::Relaxed);
        state.history.push_back(entry);
        // May drop this very message from history if it alone is over the byte budget: it is
        // still delivered, only not recoverable.
        state.prune(&self.config, now, &self.history_bytes);
        Recorded {
            frame,
            seq,
            subject: id_of(main.subject.as_ref()),
            urgent: main.urgent,
            type_index: main.type_index,
        }
    }

    /// Queues `recorded` (in order) to every subscriber whose filter passes, one outbox lock
    /// per subscriber; drops the subscribers that are gone; releases the topic lock.
    fn fan_out(
        &self,
        mut state: MutexGuard<'_, TopicState>,
        topic: Topic,
        now: Instant,
        recorded: &[Recorded],
    ) {
        let mut delivered = vec![0u64; recorded.len()];
        let mut gone = Vec::new();
        // A single message's audience, read once rather than per subscriber.
        let single_audience = match recorded {
            [one] => one.frame.frame.reach(),
            _ => None,
        };
        for (i, sub) in state.subs.iter().enumerate() {
            let alive = if let [one] = recorded {
                // One message, as every single publish: pushed directly. Through `push_many`'s
                // iterator it measured 7–10% more server CPU per delivery at one message per
                // HTTP request (three alternated pairs), the delivery being moved through it.
                if !sub.admits(one.subject, single_audience) {
                    continue;
                }
                let pushed = sub.outbox.push(&one.frame, one.urgent, sub.rate, now, &self.stats);
                match pushed {
                    Pushed::Queued => {
                        delivered[0] += 1;
                        true
                    }
                    Pushed::Deferred => true,
                    Pushed::Closed | Pushed::Dropped => false,
                }
            } else {
                let passing = recorded
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| sub.admits(r.subject, r.frame.frame.reach()))
                    .map(|(j, r)| (j, &r.frame, r.urgent));
                sub.outbox.push_many(passing, sub.rate, now, &self.stats, |j| delivered[j] += 1)
            };
            if !alive {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            state.subs.swap_remove(i);
            self.stats.unsubscribed(topic);
        }
        let tapped = self.tap.get().map(|tap| (tap, state.epoch.clone()));
        drop(state);
        for (r, delivered) in recorded.iter().zip(delivered) {
            self.stats.published(topic, r.type_index, delivered);
        }
        if let Some((tap, epoch)) = tapped {
            for r in recorded {
                tap.sequenced(Tapped {
                    topic,
                    epoch: &epoch,
                    seq: r.seq,
                    type_name: ServerMessage::TYPES
                        .get(usize::from(r.type_index))
                        .copied()
                        .unwrap_or_default(),
                    frame: &r.frame.frame,
                    audience: r.frame.frame.reach().map(|reach| &*reach.audience),
                    key: r.frame.key.as_ref().map(|k| &**k.name()),
                });
            }
        }
    }

    /// Replaces the topic's history and retained state with the engine's (`top` is the log's
    /// newest seq under `epoch`), when the node cannot continue from what it has: another
    /// epoch, or a gap the log no longer holds. Every subscriber is restarted as if it had
    /// resubscribed with its old position: a new `subscribed` (not recovered, unless nothing
    /// was missed), what history holds, then the current state.
    pub(crate) fn reset(
        &self,
        topic: Topic,
        epoch: &str,
        top: u64,
        history: Vec<Logged>,
        retained: Vec<Logged>,
    ) {
        let now = Instant::now();
        let decode = |logged: Vec<Logged>| -> Vec<(Prepared, u64, Instant)> {
            logged
                .into_iter()
                .filter_map(|l| match self.prepare_payload(&l.payload) {
                    Ok((p, _)) => Some((p, l.seq, instant_of(l.published_ms, now))),
                    Err(err) => {
                        tracing::warn!(%topic, seq = l.seq, "skipping a stored message: {err}");
                        None
                    }
                })
                .collect()
        };
        let history = decode(history);
        let retained = decode(retained);
        let mut guard = self.lock(topic);
        let state = &mut *guard;
        let old = Since { epoch: state.epoch.to_string(), seq: state.seq };
        state.loaded = true;
        let dropped: usize = state.history.iter().map(Entry::cost).sum();
        self.history_bytes.fetch_sub(dropped, Ordering::Relaxed);
        state.history.clear();
        state.retained.clear();
        state.epoch = Arc::from(epoch);
        state.seq = top;
        for (p, seq, at) in history {
            let entry = p.entry(topic, seq, at, false);
            self.history_bytes.fetch_add(entry.cost(), Ordering::Relaxed);
            state.history.push_back(entry);
        }
        for (p, seq, at) in retained.into_iter().filter(|(p, ..)| p.key.is_some()) {
            // Past the cap the least recently updated keys leave (as they would have here).
            let _ = state.retained.keep(p.entry(topic, seq, at, true), self.config.state_max_keys);
        }
        self.stats.state_keys(topic, state.retained.len());
        state.prune(&self.config, now, &self.history_bytes);
        state.expire_retained(&self.config, now);
        // Every subscriber restarts from the same old position. (A node is never ahead of the
        // log it was reset to; if it were, the current state is the honest start.)
        let start = match self.start_of(state, Some(&old)) {
            Start::Ahead => Start::State,
            start => start,
        };
        for sub in std::mem::take(&mut state.subs) {
            match self.begin(state, &sub, topic, start, None) {
                Ok(_) => state.subs.push(sub),
                Err(_) => self.stats.unsubscribed(topic),
            }
        }
    }

    /// Where a subscription asking for `since` starts in `state`.
    fn start_of(&self, state: &TopicState, since: Option<&Since>) -> Start {
        let top = state.seq;
        let epoch = &*state.epoch;
        let oldest = state.history.front().map_or(top + 1, |e| e.frame.seq);
        match since {
            // A copy not yet loaded from the log has neither its epoch nor its state: the
            // engine loads it first (and fences, if the client holds a position the log lost).
            _ if !state.loaded => Start::Ahead,
            None => Start::State,
            // Recovery: the whole range (since, top] is still held.
            Some(since)
                if since.epoch == epoch
                    && since.seq <= top
                    && (since.seq + 1 >= oldest || since.seq == top) =>
            {
                Start::Recover(since.seq)
            }
            // Ahead of this node: it has not received everything the client has (the engine
            // catches it up), or the log rolled back (the engine fences), or it is made up.
            Some(since) if since.epoch == epoch && since.seq > top => Start::Ahead,
            // A gap in this epoch: what history still holds, then the state.
            Some(since) if since.epoch == epoch && since.seq < oldest => Start::Gap(oldest - 1),
            // A later epoch than this node's: the client saw an epoch after this one, so this
            // one came back (a failback to older data): the engine fences it first.
            Some(since) if generation(&since.epoch) > generation(epoch) => Start::Ahead,
            // Another epoch (a restart, a failover, a fence): everything history still holds
            // (an engine's log numbers on through a new epoch, so it may hold messages the
            // client missed before it), as after a gap in one epoch, then the state.
            Some(_) => Start::Gap(oldest.saturating_sub(1)),
        }
    }

    /// Queues `subscribed` and the start frames of `sub` starting at `start` into its outbox,
    /// under the topic's lock. Returns the outcome.
    fn begin(
        &self,
        state: &TopicState,
        sub: &Sub,
        topic: Topic,
        start: Start,
        request_id: Option<RequestId>,
    ) -> Result<SubscribeOutcome> {
        let top = state.seq;
        let outbox = &sub.outbox;
        let history_after = |after: u64| {
            state
                .history
                .iter()
                .filter(move |e| e.frame.seq > after && sub.admits_entry(e))
                .map(|e| (e.frame.clone(), e.urgent))
        };
        let retained = || {
            state
                .retained
                .in_order()
                .filter(|e| sub.admits_entry(e))
                .map(|e| (e.frame.clone(), e.urgent))
        };
        let (position, initial): (u64, Vec<(TopicFrame, bool)>) = match start {
            Start::State => (top, retained().collect()),
            Start::Recover(after) => {
                let mut frames = state_below(state, after, sub);
                frames.extend(history_after(after));
                (after, frames)
            }
            Start::Gap(after) => (after, history_after(after).chain(retained()).collect()),
            Start::Ahead => return Err(Error::Behind { topic, have: top }),
        };
        let recovered = matches!(start, Start::Recover(_));
        let epoch = state.epoch.to_string();
        let reply = ServerMessage::Subscribed(Subscribed {
            topic,
            epoch: epoch.clone(),
            seq: position,
            recovered,
            request_id,
        });
        let type_index = u8::try_from(reply.type_index()).unwrap_or_default();
        let frame = encode(&ServerFrame::control(reply), &self.stats);
        if outbox.push_control(frame, type_index, &self.stats) != Pushed::Queued {
            return Err(Error::Closed(outbox.closed().unwrap_or(DropReason::Closed)));
        }
        outbox.start(topic, position, sub.rate.is_some());
        let count = initial.len();
        for (frame, urgent) in initial {
            if outbox.push_start(frame.delivery(None), frame.seq, urgent) != Pushed::Queued {
                return Err(Error::Closed(outbox.closed().unwrap_or(DropReason::Closed)));
            }
        }
        self.stats.delivered(topic, count as u64);
        Ok(SubscribeOutcome { epoch, seq: position, recovered, initial: count })
    }

    /// Adds (or replaces) `connection`'s subscription to `topic` as `viewer`, queueing
    /// `subscribed` and then the replayed or retained frames into `outbox`, atomically with
    /// respect to publishers.
    pub(crate) fn subscribe(
        &self,
        connection: u64,
        outbox: &Arc<Outbox>,
        topic: Topic,
        options: SubscribeOptions,
        who: Who,
    ) -> Result<SubscribeOutcome> {
        let rate = match options.max_hz {
            None => None,
            Some(hz) if hz.is_finite() && hz >= MIN_MAX_HZ => {
                Some(Duration::from_secs_f64(1.0 / hz))
            }
            Some(hz) => return Err(Error::InvalidMaxHz(hz)),
        };
        let max = self.config.filter_max_subjects;
        let filter: FilterRef = match options.subjects {
            Some(subjects) if subjects.len() > max => {
                return Err(Error::FilterTooLarge { got: subjects.len(), max });
            }
            Some(subjects) => {
                let held: Vec<KeyRef> =
                    subjects.iter().map(|s| self.keys.intern(&Key::from(s.as_str()))).collect();
                Some(Arc::new(Filter { ids: held.iter().map(KeyRef::id).collect(), _held: held }))
            }
            None => None,
        };
        let now = Instant::now();
        let mut state = self.lock(topic);
        state.prune(&self.config, now, &self.history_bytes);
        state.expire_retained(&self.config, now);
        let start = self.start_of(&state, options.since.as_ref());
        if let Start::Ahead = start {
            // Leave any current subscription as it is: the caller retries once caught up.
            return Err(Error::Behind { topic, have: state.seq });
        }
        let replaced = state.remove_sub(connection);
        let sub = Sub { connection, outbox: outbox.clone(), rate, gate: Gate { filter, who } };
        let begun = self.begin(&state, &sub, topic, start, options.request_id);
        let outcome = match begun {
            Ok(outcome) => outcome,
            Err(err) => {
                if replaced {
                    self.stats.unsubscribed(topic);
                }
                return Err(err);
            }
        };
        state.subs.push(sub);
        if !replaced {
            self.stats.subscribed(topic);
        }
        Ok(outcome)
    }

    /// From now on, `connection`'s subscription to `topic` (if any) receives what `who` may.
    pub(crate) fn set_viewer(&self, connection: u64, topic: Topic, who: &Who) {
        let mut state = self.lock(topic);
        if let Some(sub) = state.subs.iter_mut().find(|s| s.connection == connection) {
            sub.gate.who = who.clone();
        }
    }

    /// Removes `connection`'s subscription to `topic`; returns whether there was one.
    pub(crate) fn unsubscribe(&self, connection: u64, outbox: &Outbox, topic: Topic) -> bool {
        let removed = self.lock(topic).remove_sub(connection);
        if removed {
            outbox.forget(topic);
            self.stats.unsubscribed(topic);
        }
        removed
    }

    /// Removes `key`'s retained state on `topic` and tells the subscribers whose filter passes
    /// it (a `state_cleared` control frame). Returns whether there was any.
    pub(crate) fn clear_state(&self, topic: Topic, key: &str) -> bool {
        let Some(held) = self.keys.lookup(key) else { return false };
        let mut state = self.lock(topic);
        let Some(entry) = state.retained.remove(held.id()) else { return false };
        self.stats.state_keys(topic, state.retained.len());
        self.tell_cleared(&state, topic, &entry);
        true
    }

    /// Tells the subscribers of `topic` whose filter passes `entry` that its key's state is gone
    /// (a `state_cleared` control frame).
    fn tell_cleared(&self, state: &TopicState, topic: Topic, entry: &Entry) {
        let Some(key) = &entry.frame.key else { return };
        let notice = ServerMessage::StateCleared(modelcast_protocol::StateCleared {
            topic,
            key: unscoped(key.name(), entry.audience().is_some()).to_string(),
            timestamp: chrono::Utc::now(),
        });
        let type_index = u8::try_from(notice.type_index()).unwrap_or_default();
        let frame = encode(&ServerFrame::control(notice), &self.stats);
        for sub in state.subs.iter().filter(|s| s.admits_entry(entry)) {
            sub.outbox.push_control(frame.clone(), type_index, &self.stats);
        }
    }

    /// The frames retained on `topic` now, in the order a new subscriber gets them.
    pub(crate) fn retained(&self, topic: Topic) -> Vec<crate::Frame> {
        self.retained_page(topic, None, usize::MAX, None).frames
    }

    /// A page of the frames retained on `topic`: those after the cursor `after` (from the
    /// previous page), at least `limit` unless the state ends first (the keys of one `seq`, a
    /// batch's parts, are never split). With a `reader`, only what a subscription of that
    /// viewer without a filter would receive ([`Gate::admits`]: the check every hand-out
    /// makes), and `keys` counts those; without one, everything.
    pub(crate) fn retained_page(
        &self,
        topic: Topic,
        after: Option<u64>,
        limit: usize,
        reader: Option<Who>,
    ) -> StatePage {
        let gate = reader.map(|who| Gate { filter: None, who });
        let admitted = |e: &Entry| gate.as_ref().is_none_or(|g| g.admits_entry(e));
        let mut state = self.lock(topic);
        state.expire_retained(&self.config, Instant::now());
        let (entries, next) = state.retained.page(after, limit, admitted);
        let keys = match &gate {
            None => state.retained.len(),
            Some(_) => state.retained.in_order().filter(|e| admitted(e)).count(),
        };
        StatePage {
            audiences: entries
                .iter()
                .map(|e| e.audience().map(|r| Audience::clone(&r.audience)))
                .collect(),
            frames: entries.into_iter().map(|e| e.frame.frame.clone()).collect(),
            next,
            epoch: state.epoch.to_string(),
            seq: state.seq,
            keys,
        }
    }

    /// Whether `topic` holds state for the (audience-scoped) state `key` now — what the stale
    /// watchdog asks before it speaks of a download: state evicted, cleared or expired is gone
    /// for it too.
    pub(crate) fn holds_state(&self, topic: Topic, key: &str) -> bool {
        let Some(held) = self.keys.lookup(key) else { return false };
        let mut state = self.lock(topic);
        state.expire_retained(&self.config, Instant::now());
        state.retained.contains(held.id())
    }
}

/// A page of a topic's retained state ([`crate::Hub::state_page`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StatePage {
    /// The frames, as a new subscriber receives them (marked `"late":true`).
    pub frames: Vec<crate::Frame>,
    /// Who each frame is for, in the same order (`None`: every subscriber).
    pub audiences: Vec<Option<Audience>>,
    /// The cursor of the next page (pass it as `after`), or `None` after the last.
    pub next: Option<u64>,
    /// The topic's epoch.
    pub epoch: String,
    /// The topic's newest `seq`.
    pub seq: u64,
    /// How many keys the topic holds state for (that the reader may see), all pages together.
    pub keys: usize,
}

/// For a subscription recovering from `after`: the retained value of every key that nothing
/// newer has touched, where it is at or below `after`, marked late. A client's position can
/// pass a key's newest value without the client having it — `max_hz` held it back, or the
/// connection was lost in the middle of the current state sent after `subscribed` — so a
/// recovery sends it again: applying a key's newest value twice is harmless, losing it is not.
/// Keys touched after `after` are left to the replay.
fn state_below(state: &TopicState, after: u64, sub: &Sub) -> Vec<(TopicFrame, bool)> {
    let mut newest_in_history: HashMap<KeyId, u64> = HashMap::new();
    for entry in &state.history {
        newest_in_history.insert(id_of(entry.frame.key.as_ref()), entry.frame.seq);
    }
    state
        .retained
        .in_order()
        .filter(|e| {
            let key = id_of(e.frame.key.as_ref());
            e.frame.seq <= after
                && newest_in_history.get(&key).is_none_or(|seq| *seq <= e.frame.seq)
                && sub.admits_entry(e)
        })
        .map(|e| (e.frame.clone(), e.urgent))
        .collect()
}
