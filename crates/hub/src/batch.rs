//! [`Batcher`]: collects keyed messages over a short window and publishes them as one.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use modelcast_protocol::ServerMessage;

use crate::stats::ConflateReason;
use crate::{Hub, Publish, Published};

/// Turns the messages of one window into one message of the same topic.
pub type Combiner = Arc<dyn Fn(&[ServerMessage]) -> ServerMessage + Send + Sync>;

/// Collects messages for `window`, newest per key, then publishes them: a lone message as it
/// is (with its own policy), several as the combiner's one message. Each part still updates the
/// retained state under its own key, so a new subscriber sees every key's newest value.
///
/// Needs a tokio runtime (the window is a timer); without one, messages go out at once.
#[derive(Clone)]
pub struct Batcher {
    hub: Hub,
    window: Duration,
    combine: Combiner,
    state: Arc<Mutex<BatchState>>,
}

#[derive(Default)]
struct BatchState {
    items: Vec<Publish>,
    armed: bool,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").field("window", &self.window).finish_non_exhaustive()
    }
}

impl Batcher {
    /// A batcher publishing into `hub`, combining with `combine`.
    pub fn new(
        hub: &Hub,
        window: Duration,
        combine: impl Fn(&[ServerMessage]) -> ServerMessage + Send + Sync + 'static,
    ) -> Self {
        Self { hub: hub.clone(), window, combine: Arc::new(combine), state: Default::default() }
    }

    fn lock(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a message to the current window (replacing an older one with the same key).
    pub fn publish(&self, publish: Publish) -> Published {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.hub.publish_one(publish);
        };
        let mut state = self.lock();
        if let Some(key) = publish.state_key() {
            let before = state.items.len();
            state.items.retain(|p| p.state_key().as_ref() != Some(&key));
            let replaced = (before - state.items.len()) as u64;
            self.hub.stats_handle().conflated(Some(publish.topic), ConflateReason::Batch, replaced);
        }
        state.items.push(publish);
        if !state.armed {
            state.armed = true;
            // The window starts now, not when the timer task first runs.
            let deadline = tokio::time::Instant::now() + self.window;
            let this = self.clone();
            runtime.spawn(async move {
                tokio::time::sleep_until(deadline).await;
                this.flush();
            });
        }
        Published::Held
    }

    /// Publishes what the current window holds now: one batch per audience (a batch never
    /// mixes audiences), in the order each audience first appeared in the window.
    pub fn flush(&self) {
        let items = {
            let mut state = self.lock();
            state.armed = false;
            std::mem::take(&mut state.items)
        };
        let mut groups: Vec<Vec<Publish>> = Vec::new();
        for item in items {
            match groups.iter_mut().find(|g| g[0].audience == item.audience) {
                Some(group) => group.push(item),
                None => groups.push(vec![item]),
            }
        }
        for group in groups {
            self.publish_batch(group);
        }
    }

    /// Publishes the items of one audience: a lone one as it is, several combined.
    fn publish_batch(&self, items: Vec<Publish>) {
        match items.len() {
            0 => {}
            1 => {
                self.hub.publish(items);
            }
            _ => {
                let messages: Vec<ServerMessage> =
                    items.iter().map(|p| p.message.clone()).collect();
                let combined = (self.combine)(&messages);
                let urgent = items.iter().any(|p| p.urgent);
                match Publish::new(combined) {
                    Some(mut p) if p.topic == items[0].topic => {
                        p.audience.clone_from(&items[0].audience);
                        self.hub.publish_now(p.urgent(urgent), items);
                    }
                    _ => {
                        tracing::error!(
                            "batch combiner returned a message of another topic; publishing the parts one by one"
                        );
                        self.hub.publish(items);
                    }
                }
            }
        }
    }
}
