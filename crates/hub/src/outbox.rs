//! A connection's bounded outbox: two lanes, per-key collapsing when full, per-key rate limits.
//!
//! What happens when it fills (the decision, written down):
//! 1. Queued *conflatable* messages (updates with a key) collapse to the newest per
//!    (topic, key). Transitions, events and control messages are never collapsed; order among
//!    the survivors is kept.
//! 2. If that made room, the message is queued, followed by one typed `lagging` notice (only
//!    one waits at a time).
//! 3. Otherwise the subscriber is dropped with [`DropReason::SlowConsumer`]: its queue is
//!    freed at once and the owner's next `recv` returns the reason.
//!
//! Publishers never wait: a push takes a short, uncontended lock and returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use modelcast_protocol::{Lagging, ServerFrame, ServerMessage, Topic};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::keys::KeyId;
use crate::stats::{ConflateReason, Stats};
use crate::{DropReason, Frame, Kind};

/// One frame for a connection, with what the outbox needs to know about it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub(crate) frame: Frame,
    /// `None` for control frames.
    pub(crate) topic: Option<Topic>,
    pub(crate) key: KeyId,
    pub(crate) kind: Kind,
    /// Publish time, for latency measurements by the owner.
    pub(crate) published_at: Option<Instant>,
    /// The message type's index in `ServerMessage::TYPES` (for per-type metrics).
    pub(crate) type_index: u8,
    /// This is the outbox's own `lagging` notice.
    notice: bool,
}

pub(crate) type Item = Delivery;

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

    /// The message type's index in `modelcast_protocol::ServerMessage::TYPES`.
    pub fn type_index(&self) -> usize {
        usize::from(self.type_index)
    }

    /// When the message was published, for publish-to-write latency; `None` for control
    /// frames and for replayed or retained frames.
    pub fn published_at(&self) -> Option<Instant> {
        self.published_at
    }

    pub(crate) fn new(
        frame: Frame,
        topic: Topic,
        key: KeyId,
        kind: Kind,
        type_index: u8,
        published_at: Option<Instant>,
    ) -> Self {
        Self { frame, topic: Some(topic), key, kind, published_at, type_index, notice: false }
    }

    pub(crate) fn control(frame: Frame, type_index: u8) -> Self {
        Self {
            frame,
            topic: None,
            key: KeyId::NONE,
            kind: Kind::Event,
            published_at: None,
            type_index,
            notice: false,
        }
    }

    fn conflatable(&self) -> bool {
        self.kind == Kind::Update && self.key != KeyId::NONE && self.topic.is_some()
    }

    fn slot(&self) -> (Option<Topic>, KeyId) {
        (self.topic, self.key)
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
    item: Item,
}

#[derive(Debug, Default)]
struct State {
    urgent: VecDeque<Item>,
    routine: VecDeque<Item>,
    /// `max_hz`: the newest held-back update per (topic, key), and when it may go.
    deferred: HashMap<(Option<Topic>, KeyId), Deferred>,
    /// `max_hz`: when the last update per (topic, key) was queued.
    last_sent: HashMap<(Option<Topic>, KeyId), Instant>,
    conflated_since_notice: u64,
    lagging_queued: bool,
    closed: Option<DropReason>,
}

impl State {
    fn len(&self) -> usize {
        self.urgent.len() + self.routine.len()
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

    /// Queues `item`, applying the subscription's per-key `rate` (from `max_hz`).
    pub(crate) fn push(
        &self,
        item: Item,
        urgent: bool,
        rate: Option<Duration>,
        now: Instant,
        stats: &Stats,
    ) -> Pushed {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        if let Some(rate) = rate {
            let slot = item.slot();
            if item.conflatable() {
                let next = state.last_sent.get(&slot).map(|last| *last + rate);
                if let Some(due) = next.filter(|due| now < *due) {
                    if let Some(old) = state.deferred.insert(slot, Deferred { due, item }) {
                        stats.conflated(old.item.topic, ConflateReason::MaxHz, 1);
                    }
                    drop(state);
                    self.notify.notify_one(); // the receiver may need an earlier deadline
                    return Pushed::Deferred;
                }
                state.last_sent.insert(slot, now);
                // A held-back older value of the key is superseded, never sent after this one.
                if let Some(old) = state.deferred.remove(&slot) {
                    stats.conflated(old.item.topic, ConflateReason::MaxHz, 1);
                }
            } else if item.key != KeyId::NONE {
                // A transition releases the held-back update of its key first: order is kept.
                if let Some(held) = state.deferred.remove(&slot)
                    && self.enqueue(&mut state, held.item, false, stats) == Pushed::Dropped
                {
                    return self.dropped(state);
                }
                if item.kind == Kind::Transition {
                    state.last_sent.insert(slot, now);
                }
            }
        }
        match self.enqueue(&mut state, item, urgent, stats) {
            Pushed::Dropped => self.dropped(state),
            outcome => outcome,
        }
    }

    fn dropped(&self, state: std::sync::MutexGuard<'_, State>) -> Pushed {
        drop(state);
        self.notify.notify_one();
        Pushed::Dropped
    }

    /// Queues a control frame (replies, notices) on the urgent lane.
    pub(crate) fn push_control(&self, frame: Frame, type_index: u8, stats: &Stats) -> Pushed {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        match self.enqueue(&mut state, Item::control(frame, type_index), true, stats) {
            Pushed::Dropped => self.dropped(state),
            outcome => outcome,
        }
    }

    fn enqueue(&self, state: &mut State, item: Item, urgent: bool, stats: &Stats) -> Pushed {
        let was_empty = state.len() == 0;
        if state.len() >= self.capacity {
            let collapsed =
                collapse(&mut state.routine, stats) + collapse(&mut state.urgent, stats);
            state.conflated_since_notice += collapsed;
            let notice = usize::from(!state.lagging_queued);
            if state.len() + 1 + notice > self.capacity {
                // Even collapsed, it does not fit: drop the subscriber and free its queue now.
                let lost = state.urgent.drain(..).chain(state.routine.drain(..));
                for lost in lost.chain(std::iter::once(item)) {
                    stats.dropped_message(lost.topic);
                }
                state.deferred.clear();
                state.last_sent.clear();
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
                let frame = crate::hub::encode(&ServerFrame::control(lagging), stats);
                state.urgent.push_back(Item { notice: true, ..Item::control(frame, type_index) });
                state.lagging_queued = true;
                state.conflated_since_notice = 0;
            }
        }
        if urgent {
            state.urgent.push_back(item);
        } else {
            state.routine.push_back(item);
        }
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Waits for frames and moves up to `max` of them into `out`, urgent ones first.
    /// Returns the reason once the outbox is closed.
    pub(crate) async fn recv(&self, out: &mut Vec<Item>, max: usize) -> Result<(), DropReason> {
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
    pub(crate) fn take(&self, out: &mut Vec<Item>, max: usize) -> Result<Taken, DropReason> {
        let mut state = self.lock();
        if let Some(reason) = state.closed {
            return Err(reason);
        }
        if !state.deferred.is_empty() {
            release_due(&mut state, Instant::now());
        }
        let start = out.len();
        while out.len() - start < max {
            let Some(item) = state.urgent.pop_front().or_else(|| state.routine.pop_front()) else {
                break;
            };
            if item.notice {
                state.lagging_queued = false; // the lagging notice is on its way
            }
            out.push(item);
        }
        if out.len() > start {
            return Ok(Taken::Some);
        }
        Ok(Taken::None { next_due: state.deferred.values().map(|d| d.due).min() })
    }

    /// Closes the outbox with `reason`; the owner's `recv` returns it. Queued frames are freed.
    pub(crate) fn close(&self, reason: DropReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
            state.urgent.clear();
            state.routine.clear();
            state.deferred.clear();
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

/// Moves due `max_hz` updates into the routine lane (they were admitted when deferred).
fn release_due(state: &mut State, now: Instant) {
    let due: Vec<_> =
        state.deferred.iter().filter(|(_, d)| d.due <= now).map(|(slot, _)| *slot).collect();
    for slot in due {
        if let Some(held) = state.deferred.remove(&slot) {
            state.last_sent.insert(slot, now);
            state.routine.push_back(held.item);
        }
    }
}

/// Keeps only the newest conflatable item per (topic, key); returns how many were removed.
fn collapse(lane: &mut VecDeque<Item>, stats: &Stats) -> u64 {
    let mut seen: HashSet<(Option<Topic>, KeyId)> = HashSet::new();
    let mut keep = vec![true; lane.len()];
    for (i, item) in lane.iter().enumerate().rev() {
        if item.conflatable() && !seen.insert(item.slot()) {
            keep[i] = false;
            stats.conflated(item.topic, ConflateReason::QueueFull, 1);
        }
    }
    let before = lane.len();
    let mut i = 0;
    lane.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
    (before - lane.len()) as u64
}
