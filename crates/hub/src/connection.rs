//! [`Connection`]: one subscriber's outbox and subscriptions.

use std::fmt;
use std::sync::{Arc, Mutex};

use modelcast_protocol::{ServerFrame, ServerMessage, Topic};

use crate::audience::Viewer;
use crate::error::{DropReason, Error, Result};
use crate::frame::encode;
use crate::outbox::{Delivery, Outbox, Pushed};
use crate::reach::Who;
use crate::topics::{SubscribeOptions, SubscribeOutcome, Topics};

/// A subscriber (for the server: one WebSocket). Cheap to clone: a reader task subscribes while
/// a writer task receives. Dropping the last clone unsubscribes from everything.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    topics: Arc<Topics>,
    id: u64,
    outbox: Arc<Outbox>,
    subscribed: Mutex<[bool; Topic::ALL.len()]>,
    /// Who the connection is, for audiences. Held while subscribing and while re-set, so a
    /// subscription never starts with a viewer a renewal already replaced.
    viewer: Mutex<Who>,
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
    pub(crate) fn new(topics: Arc<Topics>, id: u64, outbox: Arc<Outbox>) -> Self {
        let subscribed = Mutex::new(Default::default());
        let viewer = Mutex::new(Who::anonymous());
        Self { inner: Arc::new(Inner { topics, id, outbox, subscribed, viewer }) }
    }

    /// The hub-assigned id, unique per hub.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Subscribes to `topic` (again, replacing the options, if already subscribed). Queues the
    /// `subscribed` reply, then the replayed or retained frames, then live ones follow.
    pub fn subscribe(&self, topic: Topic, options: SubscribeOptions) -> Result<SubscribeOutcome> {
        let inner = &*self.inner;
        let viewer = self.held_viewer();
        let outcome =
            inner.topics.subscribe(inner.id, &inner.outbox, topic, options, viewer.clone())?;
        self.subscribed()[topic.index()] = true;
        Ok(outcome)
    }

    /// Sets who the connection is (anonymous until then): messages with an audience reach it
    /// only if `viewer` is in it. From now on, for every subscription, and for what waits in
    /// the connection's queue: a frame queued or held back (`max_hz`) for the previous viewer
    /// that `viewer` is not in is dropped, so a renewed token that narrows what a connection
    /// may see never receives what only the old one could.
    pub fn set_viewer(&self, viewer: Viewer) {
        let mut held = self.held_viewer();
        if *held.viewer() == viewer {
            return;
        }
        *held = Who::new(viewer, &self.inner.topics.keys);
        // Every subscription first (no fan-out queues for the old viewer after this), then
        // what the old one left waiting.
        for topic in self.subscriptions() {
            self.inner.topics.set_viewer(self.inner.id, topic, &held);
        }
        self.inner.outbox.narrow(&held);
    }

    /// Who the connection is.
    pub fn viewer(&self) -> Viewer {
        self.held_viewer().viewer().clone()
    }

    fn held_viewer(&self) -> std::sync::MutexGuard<'_, Who> {
        self.inner.viewer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Unsubscribes from `topic`; returns whether it was subscribed. Nothing of the topic
    /// arrives afterwards: what is queued or held back (`max_hz`) of it is dropped.
    pub fn unsubscribe(&self, topic: Topic) -> bool {
        self.subscribed()[topic.index()] = false;
        self.inner.topics.unsubscribe(self.inner.id, &self.inner.outbox, topic)
    }

    /// The topics subscribed to now.
    pub fn subscriptions(&self) -> Vec<Topic> {
        let subscribed = self.subscribed();
        Topic::ALL.into_iter().filter(|t| subscribed[t.index()]).collect()
    }

    /// Queues a control message (a reply or notice) ahead of routine messages.
    pub fn send(&self, message: &ServerMessage) -> Result<()> {
        let stats = &self.inner.topics.stats;
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
            self.inner.topics.stats.subscriber_dropped(reason);
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

    fn subscribed(&self) -> std::sync::MutexGuard<'_, [bool; Topic::ALL.len()]> {
        self.inner.subscribed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let subscribed = *self.subscribed.get_mut().unwrap_or_else(|e| e.into_inner());
        for topic in Topic::ALL {
            if subscribed[topic.index()] {
                self.topics.unsubscribe(self.id, &self.outbox, topic);
            }
        }
        self.outbox.close(DropReason::Closed);
        self.topics.stats.connection_closed();
    }
}
