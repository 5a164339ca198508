//! What a publisher hands the hub: a message plus how to treat it.

use std::sync::Arc;
use std::time::Duration;

use modelcast_protocol::{ServerMessage, Topic};

use crate::audience::Audience;

/// A key within a topic, cheap to clone. Used for two separate jobs, each with its own field of
/// [`Publish`]: the *state key* (retained state, throttling, collapsing, `max_hz`) and the
/// *filter subject* (what a subscriber's filter matches).
pub type Key = Arc<str>;

/// Where a message was sequenced: its topic's epoch then, and its `seq` in it. A publisher
/// that sees the epoch change knows the numbering started again (a rollback was fenced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// The topic's epoch the `seq` belongs to.
    pub epoch: Arc<str>,
    /// The message's position in its topic.
    pub seq: u64,
}

/// What a publish does to the topic's retained state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retain {
    /// Leave the retained state alone.
    #[default]
    No,
    /// Keep this message as the newest state of its key; new subscribers receive it first.
    Keep,
    /// Deliver this message, then forget the key's retained state (e.g. a finished download).
    Clear,
}

/// How a message relates to the messages before it with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// A self-contained event: never collapsed, never throttled.
    #[default]
    Event,
    /// A newer value replaces an older one of the same key (progress): it may be throttled,
    /// rate-limited per subscriber and collapsed in a slow subscriber's queue.
    Update,
    /// A state change (paused, completed, failed…): never dropped or collapsed, and it first
    /// releases a pending throttled update of the same key, so it never overtakes it.
    Transition,
}

/// A message to publish, with its key and policy. Build with [`Publish::new`] and the setters.
#[derive(Debug, Clone)]
pub struct Publish {
    pub(crate) message: ServerMessage,
    pub(crate) topic: Topic,
    pub(crate) key: Option<Key>,
    pub(crate) subject: Option<Key>,
    pub(crate) retain: Retain,
    pub(crate) kind: Kind,
    pub(crate) urgent: bool,
    pub(crate) throttle: Option<Duration>,
    pub(crate) idempotency_key: Option<Key>,
    pub(crate) audience: Option<Arc<Audience>>,
}

impl Publish {
    /// A message to publish on its own topic. Returns `None` for a control message, which has
    /// no topic and is never published.
    pub fn new(message: ServerMessage) -> Option<Self> {
        let topic = message.topic()?;
        Some(Self {
            message,
            topic,
            key: None,
            subject: None,
            retain: Retain::No,
            kind: Kind::Event,
            urgent: false,
            throttle: None,
            idempotency_key: None,
            audience: None,
        })
    }

    /// Sets the state key: retained state, throttling, collapsing and `max_hz` work per key.
    /// It never decides who receives the message (see [`Publish::subject`]).
    pub fn key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the filter subject (for the model domain: the `model_id` the message is about). A
    /// subscription filtered to some subjects receives the messages about one of them and
    /// every message without a subject.
    pub fn subject(mut self, subject: impl Into<Key>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets what the publish does to the retained state. Needs a key to take effect.
    pub fn retain(mut self, retain: Retain) -> Self {
        self.retain = retain;
        self
    }

    /// Sets the message's kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Marks the message urgent: it goes ahead of routine messages in every subscriber's queue.
    pub fn urgent(mut self, urgent: bool) -> Self {
        self.urgent = urgent;
        self
    }

    /// Throttles an [`Kind::Update`] to at most one per `interval` per key, trailing edge: the
    /// newest value is always delivered at the end of the window.
    pub fn throttle(mut self, interval: Duration) -> Self {
        self.throttle = Some(interval);
        self
    }

    /// Sets a publisher's idempotency key: publishing again with the same key (a retry) gives
    /// the first publish's `seq` and publishes nothing new. Applies to messages sent at once,
    /// not to ones a throttle or batch holds (those are newest-value state anyway).
    pub fn idempotency_key(mut self, key: impl Into<Key>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Addresses the message to `audience` only: it reaches the connections whose viewer is
    /// in it, and its state key becomes a key of that audience (the same key for two
    /// audiences is two states, throttled, batched and collapsed apart).
    pub fn audience(mut self, audience: impl Into<Arc<Audience>>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The state key as the hub keeps it: scoped to the audience, if there is one.
    pub(crate) fn state_key(&self) -> Option<Key> {
        let key = self.key.as_ref()?;
        Some(crate::audience::state_key(key, self.audience.as_deref()))
    }

    /// The message.
    pub fn message(&self) -> &ServerMessage {
        &self.message
    }

    /// The topic it is published on.
    pub fn topic(&self) -> Topic {
        self.topic
    }
}
