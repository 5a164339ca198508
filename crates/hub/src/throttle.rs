//! Per-(topic, key) throttling, trailing edge, with transitions that never overtake.
//!
//! The first update of a key goes out at once and opens a window of `interval`. Updates inside
//! the window replace one pending update; when the window ends the pending one goes out and a
//! new window opens. A transition of the same key first releases the pending update, then goes
//! out itself. Every slot has one timer armed at its window's end; a timer that finds nothing
//! pending removes the slot, so idle keys cost nothing.
//!
//! This module is the state machine only: the hub arms the timers and passes a `send` closure,
//! which runs under the throttle's lock so that a timer's flush cannot interleave with a
//! publish of the same key.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use modelcast_protocol::Topic;
use tokio::time::Instant;

use crate::publish::{Key, Publish};
use crate::stats::{ConflateReason, Stats};

#[derive(Debug)]
struct Slot {
    interval: Duration,
    pending: Option<Publish>,
}

/// What [`Throttle::offer`] did with an update.
#[derive(Debug)]
pub(crate) enum Offered<R> {
    /// Sent now (`sent` is what `send` returned); a window opened: arm a timer for
    /// `window_end`.
    Sent { sent: R, window_end: Instant },
    /// Held until the key's window ends.
    Held,
}

/// The throttle's slots. Lock order: throttle, then a topic, then an outbox.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    slots: Mutex<HashMap<(Topic, Key), Slot>>,
}

impl Throttle {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Topic, Key), Slot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An update of `key`: sent at once if its window is closed, else held (replacing the
    /// pending one).
    pub(crate) fn offer<R>(
        &self,
        key: Key,
        publish: Publish,
        interval: Duration,
        stats: &Stats,
        send: impl FnOnce(Publish) -> R,
    ) -> Offered<R> {
        let topic = publish.topic;
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(&(topic, key.clone())) {
            slot.interval = interval;
            if slot.pending.replace(publish).is_some() {
                stats.conflated(Some(topic), ConflateReason::Throttle, 1);
            }
            return Offered::Held;
        }
        let window_end = Instant::now() + interval;
        slots.insert((topic, key), Slot { interval, pending: None });
        Offered::Sent { sent: send(publish), window_end }
    }

    /// A transition of `key`: releases the pending update first, then sends the transition.
    pub(crate) fn transition<R>(
        &self,
        key: Key,
        publish: Publish,
        mut send: impl FnMut(Publish) -> R,
    ) -> R {
        let mut slots = self.lock();
        if let Some(pending) = slots.get_mut(&(publish.topic, key)).and_then(|s| s.pending.take()) {
            send(pending);
        }
        send(publish)
    }

    /// The window of `(topic, key)` ended: sends the pending update and returns when the next
    /// window ends (arm a timer), or removes the idle slot and returns `None`.
    pub(crate) fn window_ended<R>(
        &self,
        topic: Topic,
        key: &Key,
        send: impl FnOnce(Publish) -> R,
    ) -> Option<Instant> {
        let mut slots = self.lock();
        let slot = slots.get_mut(&(topic, key.clone()))?;
        match slot.pending.take() {
            Some(pending) => {
                let next = Instant::now() + slot.interval;
                send(pending);
                Some(next)
            }
            None => {
                slots.remove(&(topic, key.clone()));
                None
            }
        }
    }
}
