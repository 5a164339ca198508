//! Per-(topic, key) throttling, trailing edge, with transitions that never overtake.
//!
//! The first update of a key goes out at once and opens a window of `interval`. Updates inside
//! the window replace one pending update; when the window ends the pending one goes out and a
//! new window opens. A transition of the same key first releases the pending update, then goes
//! out itself. Every slot has one timer armed at its window's end; a timer that finds nothing
//! pending removes the slot, so idle keys cost nothing.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use modelcast_protocol::Topic;
use tokio::time::Instant;

use crate::keys::KeyId;
use crate::stats::ConflateReason;
use crate::{Hub, Publish, Published};

#[derive(Debug)]
struct Slot {
    window_end: Instant,
    interval: Duration,
    pending: Option<Publish>,
}

/// The throttle's slots. Lock order: throttle, then a topic, then an outbox.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    slots: Mutex<HashMap<(Topic, KeyId), Slot>>,
}

impl Throttle {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Topic, KeyId), Slot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Hub {
    pub(crate) fn throttled(&self, publish: Publish, interval: Duration) -> Published {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, no timers: deliver rather than lose or hold the update.
            return Published::Sent { seq: self.publish_now(publish, Vec::new()) };
        };
        let topic = publish.topic;
        let key = self.inner.keys.intern(publish.key.as_ref());
        let now = Instant::now();
        let mut slots = self.inner.throttle.lock();
        if let Some(slot) = slots.get_mut(&(topic, key)) {
            slot.interval = interval;
            if slot.pending.replace(publish).is_some() {
                self.inner.stats.conflated(Some(topic), ConflateReason::Throttle, 1);
            }
            return Published::Held;
        }
        let window_end = now + interval;
        slots.insert((topic, key), Slot { window_end, interval, pending: None });
        // Deliver under the throttle lock so that a timer flush cannot interleave.
        let seq = self.publish_now(publish, Vec::new());
        drop(slots);
        self.arm(&runtime, topic, key, window_end);
        Published::Sent { seq }
    }

    pub(crate) fn transition(&self, publish: Publish) -> u64 {
        let topic = publish.topic;
        let key = self.inner.keys.intern(publish.key.as_ref());
        let mut slots = self.inner.throttle.lock();
        if let Some(pending) = slots.get_mut(&(topic, key)).and_then(|s| s.pending.take()) {
            self.publish_now(pending, Vec::new());
        }
        let seq = self.publish_now(publish, Vec::new());
        drop(slots);
        seq
    }

    fn arm(&self, runtime: &tokio::runtime::Handle, topic: Topic, key: KeyId, at: Instant) {
        let hub = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            hub.window_ended(topic, key);
        });
    }

    fn window_ended(&self, topic: Topic, key: KeyId) {
        let mut slots = self.inner.throttle.lock();
        let Some(slot) = slots.get_mut(&(topic, key)) else { return };
        match slot.pending.take() {
            Some(pending) => {
                let now = Instant::now();
                slot.window_end = now + slot.interval;
                let next = slot.window_end;
                self.publish_now(pending, Vec::new());
                drop(slots);
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    self.arm(&runtime, topic, key, next);
                }
            }
            None => {
                slots.remove(&(topic, key));
            }
        }
    }
}
