//! [`Connection`]: one subscriber's outbox and subscriptions.

use std::fmt;
use std::sync::{Arc, Mutex};

use modelcast_protocol::{ServerFrame, ServerMessage, Topic};

use crate::hub::encode;
use crate::outbox::{Outbox, Pushed};
use crate::{Delivery, DropReason, Error, Hub, Result, SubscribeOptions, SubscribeOutcome};

/// A subscriber (for the server: one WebSocket). Cheap to clone: a reader task subscribes while
/// a writer task receives. Dropping the last clone unsubscribes from everything.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    id: u64,
    outbox: Arc<Outbox>,
    topics: Mutex<[bool; Topic::ALL.len()]>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("subscriptions", &self.subscriptions())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(hub: Hub, id: u64, outbox: Arc<Outbox>) -> Self {
        Self { inner: Arc::new(Inner { hub, id, outbox, topics: Mutex::new(Default::default()) }) }
    }

    /// The hub-assigned id, unique per hub.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Subscribes to `topic` (again, replacing the options, if already subscribed). Queues the
    /// `subscribed` reply, then the replayed or retained frames, then live ones follow.
    pub fn subscribe(&self, topic: Topic, options: SubscribeOptions) -> Result<SubscribeOutcome> {
        let outcome =
            self.inner.hub.subscribe(self.inner.id, &self.inner.outbox, topic, options)?;
        self.topics()[topic.index()] = true;
        Ok(outcome)
    }

    /// Unsubscribes from `topic`; returns whether it was subscribed.
    pub fn unsubscribe(&self, topic: Topic) -> bool {
        self.topics()[topic.index()] = false;
        self.inner.hub.unsubscribe(self.inner.id, topic)
    }

    /// The topics subscribed to now.
    pub fn subscriptions(&self) -> Vec<Topic> {
        let topics = self.topics();
        Topic::ALL.into_iter().filter(|t| topics[t.index()]).collect()
    }

    /// Queues a control message (a reply or notice) ahead of routine messages.
    pub fn send(&self, message: &ServerMessage) -> Result<()> {
        let stats = &self.inner.hub.inner.stats;
        let type_index = u8::try_from(message.type_index()).unwrap_or_default();
        let frame = encode(&ServerFrame::control(message.clone()), stats);
        match self.inner.outbox.push_control(frame, type_index, stats) {
            Pushed::Queued | Pushed::Deferred => Ok(()),
            Pushed::Closed | Pushed::Dropped => {
                Err(Error::Closed(self.inner.outbox.closed().unwrap_or(DropReason::Closed)))
            }
        }
    }

    /// Waits until frames are queued, then moves up to `max` of them into `out` (urgent ones
    /// first), so a writer can send a burst with one flush. Returns the reason once the
    /// connection is closed (e.g. dropped as a slow consumer).
    pub async fn recv(&self, out: &mut Vec<Delivery>, max: usize) -> Result<(), DropReason> {
        self.inner.outbox.recv(out, max.max(1)).await
    }

    /// Moves up to `max` queued frames into `out` without waiting; returns how many.
    pub fn try_recv(&self, out: &mut Vec<Delivery>, max: usize) -> Result<usize, DropReason> {
        let before = out.len();
        self.inner.outbox.take(out, max)?;
        Ok(out.len() - before)
    }

    /// Closes the connection: `recv` returns `reason`, queued frames are freed, and the
    /// subscriptions end.
    pub fn close(&self, reason: DropReason) {
        if self.inner.outbox.closed().is_none() {
            self.inner.hub.inner.stats.subscriber_dropped(reason);
        }
        self.inner.outbox.close(reason);
        for topic in self.subscriptions() {
            self.unsubscribe(topic);
        }
    }

    /// Why the connection was closed, if it was.
    pub fn closed(&self) -> Option<DropReason> {
        self.inner.outbox.closed()
    }

    /// Frames waiting to be received.
    pub fn queued(&self) -> usize {
        self.inner.outbox.queued()
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, [bool; Topic::ALL.len()]> {
        self.inner.topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let topics = *self.topics.get_mut().unwrap_or_else(|e| e.into_inner());
        for topic in Topic::ALL {
            if topics[topic.index()] {
                self.hub.unsubscribe(self.id, topic);
            }
        }
        self.outbox.close(DropReason::Closed);
        self.hub.inner.stats.connection_closed();
    }
}
