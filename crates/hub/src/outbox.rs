//! A connection's bounded outbox: two lanes, per-key collapsing when full, per-key rate limits
//! that keep the ordering contract.
//!
//! What happens when it fills (the decision, written down):
//! 1. Queued *conflatable* messages (updates with a key) collapse to the newest per
//!    (topic, key), which stays where it was queued. Transitions, events and control messages
//!    are never collapsed; order among the survivors is kept.
//! 2. If that made room, the message is queued, followed by one typed `lagging` notice (only
//!    one waits at a time).
//! 3. Otherwise the subscriber is dropped with [`DropReason::SlowConsumer`]: its queue is
//!    freed at once and the owner's next `recv` returns the reason.
//!
//! The frames a subscription starts with (its replay or current state) do not count against
//! the capacity: they are bounded by the history and the retained state, and counting them
//! would close a client whose recovery is larger than its queue every time it reconnects —
//! the documented reaction to the close. A re-subscription first removes what is still queued
//! of its topic, so at most one start per topic waits.
//!
//! Order (why it holds): the urgent lane is drained first, so an urgent frame may only go there
//! while no routine frame *of its topic* waits; otherwise it queues behind them on the routine
//! lane. Live frames arrive in `seq` order, so only two kinds of frame can arrive below a
//! connection's position: the state sent on (re)subscribing, which the topic stores already
//! marked `"late":true`, and a `max_hz` update released after newer frames of its topic. For
//! the latter, a rate-limited connection tracks its position per topic (in [`Rated`], which
//! other connections never allocate) and marks the release late when it is below it.
//!
//! Publishers never wait: a push takes a short, uncontended lock and returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use modelcast_protocol::{Lagging, ServerFrame, ServerMessage, Topic};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::DropReason;
use crate::frame::{Frame, encode};
use crate::keys::{KeyId, KeyRef, id_of};
use crate::publish::Kind;
use crate::reach::Who;
use crate::stats::{ConflateReason, Stats};

const TOPICS: usize = Topic::ALL.len();
const _: () = assert!(TOPICS <= 16, "State::routine_topics has a bit per topic");

/// One frame for a connection, with what the outbox needs to know about it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub(crate) frame: Frame,
    /// `None` for control frames.
    pub(crate) topic: Option<Topic>,
    /// The state key (collapsing, `max_hz`).
    pub(crate) key: KeyId,
    pub(crate) kind: Kind,
    /// Publish time, for latency measurements by the owner.
    pub(crate) published_at: Option<Instant>,
    /// The message type's index in `ServerMessage::TYPES` (for per-type metrics).
    pub(crate) type_index: u8,
    origin: Origin,
}

/// Where a queued frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A live publish or a control reply: counts against the capacity.
    Live,
    /// A subscription's replay or current state: outside the capacity.
    Start,
    /// The outbox's own `lagging` notice.
    Notice,
}

// A fan-out writes one `Delivery` per subscriber into its queue; with deep queues the hub is
// bound by memory bandwidth, so every byte here is paid per delivery (72 bytes measured 45%
// slower than 64 in `cargo bench -p modelcast-hub --bench fanout`).
const _: () = assert!(std::mem::size_of::<Delivery>() <= 64);

impl Delivery {
    /// The frame to write.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Takes the frame.
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    /// The topic; `None` for control frames (replies, notices).
    pub fn topic(&self) -> Option<Topic> {
        self.topic
    }

    /// Whether the frame is marked `"late":true` (delivered below the connection's position in
    /// its topic: apply as the key's current value).
    pub fn is_late(&self) -> bool {
        self.frame.is_late()
    }

    /// The message type's index in `modelcast_protocol::ServerMessage::TYPES`.
    pub fn type_index(&self) -> usize {
        usize::from(self.type_index)
    }

    /// When the message was published, for publish-to-write latency; `None` for control
    /// frames and for replayed or retained frames.
    pub fn published_at(&self) -> Option<Instant> {
        self.published_at
    }

    pub(crate) fn control(frame: Frame, type_index: u8) -> Self {
        Self {
            frame,
            topic: None,
            key: KeyId::NONE,
            kind: Kind::Event,
            published_at: None,
            type_index,
            origin: Origin::Live,
        }
    }

    /// Whether `who` may still receive it (control frames and messages without an audience:
    /// always). A renewed token that is no longer in a message's audience takes its frame
    /// back while it waits ([`Outbox::narrow`]).
    fn admits(&self, who: &Who) -> bool {
        self.frame.reach().is_none_or(|reach| reach.admits(who))
    }

    fn conflatable(&self) -> bool {
        self.kind == Kind::Update && self.key != KeyId::NONE && self.topic.is_some()
    }
}

/// What a topic frame needs to become a [`Delivery`].
#[derive(Debug, Clone)]
pub(crate) struct TopicFrame {
    pub(crate) frame: Frame,
    pub(crate) topic: Topic,
    pub(crate) seq: u64,
    /// The state key, held: history and retained state keep it interned.
    pub(crate) key: Option<KeyRef>,
    pub(crate) kind: Kind,
    pub(crate) type_index: u8,
}

impl TopicFrame {
    pub(crate) fn delivery(&self, published_at: Option<Instant>) -> Delivery {
        Delivery {
            frame: self.frame.clone(),
            topic: Some(self.topic),
            key: id_of(self.key.as_ref()),
            kind: self.kind,
            published_at,
            type_index: self.type_index,
            origin: Origin::Live,
        }
    }
}

/// What a non-blocking take found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// At least one frame was taken.
    Some,
    /// Nothing was queued; a held-back update is due at `next_due`, if any.
    None { next_due: Option<Instant> },
}

/// What became of a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for the writer.
    Queued,
    /// Held back by the subscription's `max_hz`; it (or a newer value) follows when due.
    Deferred,
    /// The outbox was already closed; the item was discarded.
    Closed,
    /// This push overflowed the outbox and the subscriber was dropped.
    Dropped,
}

#[derive(Debug)]
struct Deferred {
    due: Instant,
    seq: u64,
    item: Delivery,
    /// The subscription's interval: the key's next window starts when this goes out.
    rate: Duration,
}

/// A (topic, key) of a rate-limited subscription. The key is held, so it keeps meaning the
/// same string for as long as something is held back for it.
type Slot = (Topic, KeyRef);

/// `max_hz` state: allocated on a connection's first rate-limited frame, so the per-delivery
/// path of every other connection stays small. Bounded: at most the outbox's capacity of keys
/// held back (past that, an update of another key goes out at once), and windows that ended are
/// pruned as the map grows (past four times the capacity of open windows, all are forgotten:
/// the next update of each key goes out at once).
#[derive(Debug, Default)]
struct Rated {
    /// The newest held-back update per (topic, key), and when it may go.
    deferred: HashMap<Slot, Deferred>,
    /// When the next update per (topic, key) may go (its window's end).
    next_send: HashMap<Slot, Instant>,
    /// `next_send`'s size after its last pruning.
    pruned_len: usize,
    /// The highest `seq` given per topic: a held-back update released below it is late.
    position: [u64; TOPICS],
    /// The highest `seq` per topic the owner has taken (or the subscription started at): what
    /// `position` falls back to when queued frames are taken back ([`Outbox::narrow`]).
    taken: [u64; TOPICS],
}

impl Rated {
    fn forget(&mut self, topic: Topic) {
        self.deferred.retain(|(t, _), _| *t != topic);
        self.next_send.retain(|(t, _), _| *t != topic);
    }

    /// Opens `slot`'s window until `until`, pruning windows that ended once the map doubled.
    fn sent(&mut self, slot: Slot, until: Instant, now: Instant, capacity: usize) {
        self.next_send.insert(slot, until);
        if self.next_send.len() > 2 * self.pruned_len + 64 {
            self.next_send.retain(|_, until| *until > now);
            if self.next_send.len() > 4 * capacity {
                self.next_send.clear();
            }
            self.pruned_len = self.next_send.len();
        }
    }

    /// `item` (at `seq`) goes out now: marks it late if newer frames of its topic went out
    /// before it.
    fn release(&mut self, mut item: Delivery, seq: u64) -> Delivery {
        if let Some(topic) = item.topic {
            let position = &mut self.position[topic.index()];
            if seq < *position {
                if !item.frame.is_late() {
                    item.frame = item.frame.late();
                }
            } else {
                *position = seq;
            }
        }
        item
    }
}

#[derive(Debug, Default)]
struct State {
    closed: Option<DropReason>,
    urgent: VecDeque<Delivery>,
    routine: VecDeque<Delivery>,
    /// The topics (bits by `Topic::index`) that put frames on the routine lane since it was
    /// last empty: an urgent frame of such a topic queues behind them, so it never overtakes
    /// its own topic. Conservative (cleared only when the lane empties), and one word instead
    /// of a counter per topic: it shares a cache line with the lanes.
    routine_topics: u16,
    lagging_queued: bool,
    /// Frames queued with [`Origin::Start`] (outside the capacity). A `u32` (bounded by the
    /// history and retained state) so that `State` keeps its size: a fan-out touches one
    /// outbox per subscriber, and a larger one measured 20% slower.
    start_queued: u32,
    conflated_since_notice: u64,
    rated: Option<Box<Rated>>,
}

// One outbox per subscriber is touched by every fan-out: its size decides how many cache lines
// a delivery costs (96 bytes measured 20% slower than 88 in the fanout bench).
const _: () = assert!(std::mem::size_of::<State>() <= 88);

impl State {
    fn len(&self) -> usize {
        self.urgent.len() + self.routine.len()
    }

    /// Frames that count against the capacity.
    fn live_len(&self) -> usize {
        self.len() - self.start_queued as usize
    }

    /// Puts `item` on its lane.
    #[inline(always)]
    fn place(&mut self, item: Delivery, urgent: bool) {
        let Some(topic) = item.topic else {
            self.urgent.push_back(item);
            return;
        };
        let bit = 1u16 << topic.index();
        if urgent && self.routine_topics & bit == 0 {
            self.urgent.push_back(item);
        } else {
            self.routine_topics |= bit;
            self.routine.push_back(item);
        }
    }

    fn pop(&mut self) -> Option<Delivery> {
        if let Some(item) = self.urgent.pop_front() {
            return Some(item);
        }
        let item = self.routine.pop_front();
        if self.routine.is_empty() {
            self.routine_topics = 0;
        }
        item
    }

    /// Keeps the queued frames `keep` says yes to, in order (the `lagging` notice stays
    /// whatever `keep` says: it is the outbox's own).
    fn retain(&mut self, mut keep: impl FnMut(&Delivery) -> bool) {
        let mut removed_start = 0;
        for lane in [&mut self.urgent, &mut self.routine] {
            lane.retain(|d| {
                let kept = d.origin == Origin::Notice || keep(d);
                if !kept && d.origin == Origin::Start {
                    removed_start += 1;
                }
                kept
            });
        }
        self.start_queued -= removed_start;
        if self.routine.is_empty() {
            self.routine_topics = 0;
        }
    }

    fn clear(&mut self) {
        self.urgent.clear();
        self.routine.clear();
        self.routine_topics = 0;
        self.start_queued = 0;
        self.rated = None;
    }
}

/// The outbox shared by a connection's owner (who receives) and the topics (which push).
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queues inconsistent (every mutation
        // is a single push/pop/clear), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a live `frame` (published `now`) of a subscription; with a per-key `rate`
    /// (from `max_hz`), an update inside its key's window is held back (replacing an older
    /// held-back one) until the window ends.
    #[inline]
    pub(crate) fn push(
        &self,
        frame: &TopicFrame,
        urgent: bool,
        rate: Option<Duration>,
        now: Instant,
        stats: &Stats,
    ) -> Pushed {
        let Some(rate) = rate else {
            let mut state = self.lock();
            if state.closed.is_some() {
                return Pushed::Closed;
            }
            return match self.enqueue(&mut state, frame.delivery(Some(now)), urgent, stats) {
                Pushed::Dropped => self.dropped(state),
                outcome => outcome,
            };
        };
        self.push_rated(frame, urgent, rate, now, stats)
    }

    /// [`Outbox::push`] with a `rate`.
    fn push_rated(
        &self,
        frame: &TopicFrame,
        urgent: bool,
        rate: Duration,
        now: Instant,
        stats: &Stats,
    ) -> Pushed {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        let (seq, topic) = (frame.seq, frame.topic);
        let mut item = frame.delivery(Some(now));
        let capacity = self.capacity;
        let rated = state.rated.get_or_insert_with(Box::default);
        if let Some(key) = &frame.key {
            let slot = (topic, key.clone());
            if item.conflatable() {
                let due = rated.next_send.get(&slot).copied().filter(|due| now < *due);
                let room = rated.deferred.len() < capacity || rated.deferred.contains_key(&slot);
                if let Some(due) = due.filter(|_| room) {
                    let held = Deferred { due, seq, item, rate };
                    if let Some(old) = rated.deferred.insert(slot, held) {
                        stats.conflated(old.item.topic, ConflateReason::MaxHz, 1);
                    }
                    drop(state);
                    self.notify.notify_one(); // the receiver may need an earlier deadline
                    return Pushed::Deferred;
                }
                // A held-back older value of the key is superseded, never sent after this one.
                if let Some(old) = rated.deferred.remove(&slot) {
                    stats.conflated(old.item.topic, ConflateReason::MaxHz, 1);
                }
                rated.sent(slot, now + rate, now, capacity);
            } else {
                // A transition or event releases the held-back update of its key first: the
                // key's own order is kept.
                let held = rated.deferred.remove(&slot);
                rated.sent(slot, now + rate, now, capacity);
                if let Some(held) = held {
                    let held = rated.release(held.item, held.seq);
                    if self.enqueue(&mut state, held, false, stats) == Pushed::Dropped {
                        return self.dropped(state);
                    }
                }
            }
        }
        if let Some(rated) = state.rated.as_mut() {
            item = rated.release(item, seq);
        }
        match self.enqueue(&mut state, item, urgent, stats) {
            Pushed::Dropped => self.dropped(state),
            outcome => outcome,
        }
    }

    /// Queues frames (`(index, frame, urgent)`, in order, published `now`) with one
    /// acquisition of the lock — a fan-out of several messages locks each subscriber once, not
    /// once per message; none at all when nothing passes its filter. Calls `queued(index)` for
    /// each frame queued now; returns `false` once the outbox is closed or this push dropped
    /// the subscriber. With a `rate` (`max_hz`) each frame goes through
    /// [`Outbox::push`].
    pub(crate) fn push_many<'a>(
        &self,
        items: impl Iterator<Item = (usize, &'a TopicFrame, bool)>,
        rate: Option<Duration>,
        now: Instant,
        stats: &Stats,
        mut queued: impl FnMut(usize),
    ) -> bool {
        let mut items = items.peekable();
        if items.peek().is_none() {
            return true;
        }
        if let Some(rate) = rate {
            for (index, frame, urgent) in items {
                match self.push(frame, urgent, Some(rate), now, stats) {
                    Pushed::Queued => queued(index),
                    Pushed::Deferred => {}
                    Pushed::Closed | Pushed::Dropped => return false,
                }
            }
            return true;
        }
        let mut state = self.lock();
        if state.closed.is_some() {
            return false;
        }
        for (index, frame, urgent) in items {
            let item = frame.delivery(Some(now));
            if self.enqueue(&mut state, item, urgent, stats) == Pushed::Dropped {
                self.dropped(state);
                return false;
            }
            queued(index);
        }
        true
    }

    fn dropped(&self, state: std::sync::MutexGuard<'_, State>) -> Pushed {
        drop(state);
        self.notify.notify_one();
        Pushed::Dropped
    }

    /// Queues one of the frames a subscription starts with (replay or current state, at `seq`),
    /// outside the capacity (see the module docs). Returns `Pushed::Closed` if closed.
    pub(crate) fn push_start(&self, item: Delivery, seq: u64, urgent: bool) -> Pushed {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        let was_empty = state.len() == 0;
        let mut item = Delivery { origin: Origin::Start, ..item };
        if let Some(rated) = state.rated.as_mut() {
            item = rated.release(item, seq);
        }
        state.place(item, urgent);
        state.start_queued += 1;
        drop(state);
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Queues a control frame (replies, notices) on the urgent lane.
    pub(crate) fn push_control(&self, frame: Frame, type_index: u8, stats: &Stats) -> Pushed {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        match self.enqueue(&mut state, Delivery::control(frame, type_index), true, stats) {
            Pushed::Dropped => self.dropped(state),
            outcome => outcome,
        }
    }

    /// A subscription to `topic` starts (or is replaced) at `position`; `rated` when it has a
    /// `max_hz`. The previous subscription's held-back updates are forgotten: the new one
    /// starts from the current state or from history.
    pub(crate) fn start(&self, topic: Topic, position: u64, rated: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.retain(|d| d.topic != Some(topic));
        if rated {
            let rated = state.rated.get_or_insert_with(Box::default);
            rated.position[topic.index()] = position;
            rated.taken[topic.index()] = position;
        }
        if let Some(rated) = state.rated.as_mut() {
            rated.forget(topic);
        }
    }

    /// The subscription to `topic` ended: what is queued or held back of it is dropped, so
    /// nothing of the topic arrives after its end (an unsubscribe, or a renewed token whose
    /// roles no longer allow the topic).
    pub(crate) fn forget(&self, topic: Topic) {
        let mut state = self.lock();
        state.retain(|d| d.topic != Some(topic));
        if let Some(rated) = state.rated.as_mut() {
            rated.forget(topic);
        }
    }

    /// The connection's viewer became `who`: every frame waiting (queued or held back by
    /// `max_hz`) whose audience `who` is not in is dropped. A renewed token that narrows what
    /// a connection may see applies to what was queued for the old one too, so nothing
    /// admitted for an earlier viewer is written after the renewal.
    pub(crate) fn narrow(&self, who: &Who) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.retain(|d| d.admits(who));
        if let Some(rated) = state.rated.as_mut() {
            rated.deferred.retain(|_, held| held.item.admits(who));
            // A frame taken back no longer counts for the position its topic's releases are
            // judged against: walk what is left, in the order it will be taken, from what was
            // taken. A released update marked late only because of a frame taken back is in
            // order after all: its mark goes.
            rated.position = rated.taken;
            for item in state.urgent.iter_mut().chain(state.routine.iter_mut()) {
                let Some(topic) = item.topic else { continue };
                let seq = item.frame.seq().unwrap_or(0);
                let position = &mut rated.position[topic.index()];
                let released = item.origin == Origin::Live && item.frame.is_late();
                if released && seq > *position {
                    item.frame = item.frame.on_time();
                }
                if !item.frame.is_late() {
                    *position = (*position).max(seq);
                }
            }
        }
    }

    #[inline(always)]
    fn enqueue(&self, state: &mut State, item: Delivery, urgent: bool, stats: &Stats) -> Pushed {
        let was_empty = state.len() == 0;
        if state.live_len() >= self.capacity {
            let collapsed = collapse(state, stats);
            state.conflated_since_notice += collapsed;
            let notice = usize::from(!state.lagging_queued);
            if state.live_len() + 1 + notice > self.capacity {
                // Even collapsed, it does not fit: drop the subscriber and free its queue now.
                let lost = state.urgent.drain(..).chain(state.routine.drain(..));
                for lost in lost.chain(std::iter::once(item)) {
                    stats.dropped_message(lost.topic);
                }
                state.clear();
                state.closed = Some(DropReason::SlowConsumer);
                stats.subscriber_dropped(DropReason::SlowConsumer);
                return Pushed::Dropped;
            }
            if notice == 1 {
                let lagging = ServerMessage::Lagging(Lagging {
                    conflated: state.conflated_since_notice,
                    queued: u32::try_from(state.len() + 1).unwrap_or(u32::MAX),
                    capacity: u32::try_from(self.capacity).unwrap_or(u32::MAX),
                    timestamp: chrono::Utc::now(),
                });
                let type_index = u8::try_from(lagging.type_index()).unwrap_or_default();
                let frame = encode(&ServerFrame::control(lagging), stats);
                state.urgent.push_back(Delivery {
                    origin: Origin::Notice,
                    ..Delivery::control(frame, type_index)
                });
                state.lagging_queued = true;
                state.conflated_since_notice = 0;
            }
        }
        state.place(item, urgent);
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Waits for frames and moves up to `max` of them into `out`, urgent ones first.
    /// Returns the reason once the outbox is closed.
    pub(crate) async fn recv(&self, out: &mut Vec<Delivery>, max: usize) -> Result<(), DropReason> {
        loop {
            let next_due = match self.take(out, max)? {
                Taken::Some => return Ok(()),
                Taken::None { next_due } => next_due,
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        () = self.notify.notified() => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Moves up to `max` queued frames into `out` without waiting.
    pub(crate) fn take(&self, out: &mut Vec<Delivery>, max: usize) -> Result<Taken, DropReason> {
        let mut state = self.lock();
        if let Some(reason) = state.closed {
            return Err(reason);
        }
        release_due(&mut state, self.capacity);
        let start = out.len();
        while out.len() - start < max {
            let Some(item) = state.pop() else { break };
            match item.origin {
                Origin::Notice => state.lagging_queued = false, // the notice is on its way
                Origin::Start => state.start_queued -= 1,
                Origin::Live => {}
            }
            out.push(item);
        }
        // Only a rate-limited connection keeps positions (see `Rated`): what it has taken.
        if let Some(rated) = state.rated.as_mut() {
            for item in &out[start..] {
                if let (Some(topic), false) = (item.topic, item.frame.is_late()) {
                    let taken = &mut rated.taken[topic.index()];
                    *taken = (*taken).max(item.frame.seq().unwrap_or(0));
                }
            }
        }
        if out.len() > start {
            return Ok(Taken::Some);
        }
        let next_due = state.rated.as_ref().and_then(|r| r.deferred.values().map(|d| d.due).min());
        Ok(Taken::None { next_due })
    }

    /// Closes the outbox with `reason`; the owner's `recv` returns it. Queued frames are freed.
    pub(crate) fn close(&self, reason: DropReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
            state.clear();
        }
        drop(state);
        self.notify.notify_one();
    }

    /// The close reason, if closed.
    pub(crate) fn closed(&self) -> Option<DropReason> {
        self.lock().closed
    }

    /// Frames waiting now.
    pub(crate) fn queued(&self) -> usize {
        self.lock().len()
    }
}

/// Moves due `max_hz` updates into the routine lane (they were admitted when deferred), in
/// `seq` order; each is marked late if newer frames of its topic went out meanwhile, and opens
/// its key's next window.
fn release_due(state: &mut State, capacity: usize) {
    // Most connections have no `max_hz`: no clock read for them.
    let Some(rated) = state.rated.as_mut().filter(|r| !r.deferred.is_empty()) else { return };
    let now = Instant::now();
    let due_slots: Vec<Slot> =
        rated.deferred.iter().filter(|(_, d)| d.due <= now).map(|(slot, _)| slot.clone()).collect();
    let mut due: Vec<(Slot, Deferred)> = due_slots
        .into_iter()
        .filter_map(|slot| rated.deferred.remove(&slot).map(|d| (slot, d)))
        .collect();
    due.sort_by_key(|(_, d)| d.seq);
    let mut released = Vec::with_capacity(due.len());
    for (slot, held) in due {
        rated.sent(slot, now + held.rate, now, capacity);
        released.push(rated.release(held.item, held.seq));
    }
    for item in released {
        state.place(item, false);
    }
}

/// Keeps only the newest conflatable item per (topic, key) in both lanes, each where it was;
/// returns how many were removed.
fn collapse(state: &mut State, stats: &Stats) -> u64 {
    let mut removed = 0;
    let mut removed_start = 0;
    for urgent in [false, true] {
        let lane = if urgent { &mut state.urgent } else { &mut state.routine };
        let mut seen: HashSet<(Option<Topic>, KeyId)> = HashSet::new();
        let mut keep = vec![true; lane.len()];
        for (i, item) in lane.iter().enumerate().rev() {
            if item.conflatable() && !seen.insert((item.topic, item.key)) {
                keep[i] = false;
            }
        }
        let mut i = 0;
        lane.retain(|item| {
            let k = keep[i];
            i += 1;
            if !k {
                stats.conflated(item.topic, ConflateReason::QueueFull, 1);
                if item.origin == Origin::Start {
                    removed_start += 1;
                }
                removed += 1;
            }
            k
        });
    }
    state.start_queued -= removed_start;
    removed
}
