//! The policy table: how each message type is published.

use std::sync::Arc;
use std::time::Duration;

use modelcast_hub::{Audience, Batcher, Hub, Kind, Pending, Publish, Published, Retain, Sequenced};
use modelcast_protocol::{
    AlertLevel, BatchModelStatusUpdate, DownloadStatus, GenerationStatus, HealthStatus,
    ModelStatusSummary, ServerMessage, Severity, Topic,
};

/// The knobs of the policy (the seed's `DOWNLOAD_PROGRESS_THROTTLE` and
/// `HEALTH_CHECK_NOTIFICATION_LEVEL`, and the batch window).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// At most one download progress update per model per this interval (default 2 s).
    pub download_progress_throttle: Duration,
    /// Health results below this level are not published (default `warning`).
    pub health_level: AlertLevel,
    /// Model status updates arriving within this window are batched (default 100 ms).
    pub batch_window: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            download_progress_throttle: Duration::from_secs(2),
            health_level: AlertLevel::Warning,
            batch_window: Duration::from_millis(100),
        }
    }
}

impl PolicyConfig {
    /// Sets the download progress throttle.
    pub fn download_progress_throttle(mut self, d: Duration) -> Self {
        self.download_progress_throttle = d;
        self
    }

    /// Sets the lowest health level that is published.
    pub fn health_level(mut self, level: AlertLevel) -> Self {
        self.health_level = level;
        self
    }

    /// Sets the model status batch window.
    pub fn batch_window(mut self, d: Duration) -> Self {
        self.batch_window = d;
        self
    }
}

/// How one message is published: the row of the table that applies to it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Rule {
    /// The state key within the topic: retained state, throttling, collapsing and `max_hz`
    /// work per key. Model-less messages get a fixed key (`system`, `usage`, …) or their own
    /// id; it never decides who receives them.
    pub key: Option<String>,
    /// The filter subject: the model the message is about, matched against a subscriber's
    /// `filter.model_ids`. `None` (a batch, system stats, an alert about no model) passes every
    /// filter.
    pub subject: Option<String>,
    /// What it does to the retained state.
    pub retain: Retain,
    /// Update, transition or event.
    pub kind: Kind,
    /// Goes ahead of routine messages.
    pub urgent: bool,
    /// Throttle interval per key, for updates.
    pub throttle: Option<Duration>,
    /// Coalesced with others of its type within the batch window.
    pub batched: bool,
    /// Below the configured health level: not published.
    pub filtered: bool,
}

impl Rule {
    fn new(key: Option<&str>, kind: Kind) -> Self {
        Self {
            key: key.map(str::to_owned),
            subject: None,
            retain: Retain::No,
            kind,
            urgent: false,
            throttle: None,
            batched: false,
            filtered: false,
        }
    }
    fn retain(mut self, retain: Retain) -> Self {
        self.retain = retain;
        self
    }
    fn urgent(mut self) -> Self {
        self.urgent = true;
        self
    }
}

/// What [`Policy::publish`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Handed to the cluster's engine, which answers with the position once stored.
    Appending {
        /// The topic.
        topic: Topic,
        /// The engine's answer.
        pending: Pending<Sequenced>,
    },
    /// Published now on `topic`, at `at`.
    Sent {
        /// The topic.
        topic: Topic,
        /// Its epoch and `seq` in the topic.
        at: Sequenced,
    },
    /// Held by a throttle or batch window; goes out (or is superseded) when the window ends.
    Held {
        /// The topic.
        topic: Topic,
    },
    /// Below `HEALTH_CHECK_NOTIFICATION_LEVEL`: not published.
    Filtered {
        /// The topic.
        topic: Topic,
    },
}

/// Where a message goes by its rule.
/// One message for [`Policy::publish`]: the message, and who it is for and a publisher's
/// idempotency key if the caller says so. From a [`ServerMessage`] alone: the policy's
/// audience, no key.
#[derive(Debug, Clone)]
pub struct Outgoing {
    message: ServerMessage,
    audience: Option<Arc<Audience>>,
    idempotency_key: Option<String>,
}

impl Outgoing {
    /// `message`, for the policy's audience, without a key.
    pub fn new(message: ServerMessage) -> Self {
        Self { message, audience: None, idempotency_key: None }
    }

    /// For `audience` (`None`: the policy's own, every subscriber for a policy without one).
    pub fn to(mut self, audience: Option<Arc<Audience>>) -> Self {
        self.audience = audience;
        self
    }

    /// With a publisher's idempotency key ([`Publish::idempotency_key`]): a retry with the
    /// same key gets the first `seq`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

impl From<ServerMessage> for Outgoing {
    fn from(message: ServerMessage) -> Self {
        Self::new(message)
    }
}

enum Routed {
    /// Nowhere: decided already (filtered).
    Done(Outcome),
    /// Into the model-status batcher.
    Batched(Publish),
    /// Straight to the hub.
    Hub(Publish),
}

fn outcome_of(topic: Topic, published: Published) -> Outcome {
    match published {
        Published::Sent(at) => Outcome::Sent { topic, at },
        Published::Appending(pending) => Outcome::Appending { topic, pending },
        _ => Outcome::Held { topic },
    }
}

/// The policy, bound to a hub: the one way messages are published.
#[derive(Debug, Clone)]
pub struct Policy {
    hub: Hub,
    config: Arc<PolicyConfig>,
    model_status: Batcher,
    /// Who everything published through this policy is for (`None`: every subscriber).
    audience: Option<Arc<Audience>>,
}

/// Rank of a level, for comparisons (unknown levels rank as `warning`).
fn rank(level: &AlertLevel) -> u8 {
    match level {
        AlertLevel::Info => 0,
        AlertLevel::Error => 2,
        AlertLevel::Critical => 3,
        _ => 1,
    }
}

fn health_level(status: &HealthStatus) -> AlertLevel {
    match status {
        HealthStatus::Healthy => AlertLevel::Info,
        HealthStatus::Corrupted | HealthStatus::Missing => AlertLevel::Error,
        _ => AlertLevel::Warning,
    }
}

fn severity_level(severity: &Severity) -> AlertLevel {
    match severity {
        Severity::Low => AlertLevel::Info,
        Severity::High => AlertLevel::Error,
        Severity::Critical => AlertLevel::Critical,
        _ => AlertLevel::Warning,
    }
}

/// Whether a download in `status` is over (its retained state is cleared).
pub(crate) fn download_finished(status: &DownloadStatus) -> bool {
    matches!(status, DownloadStatus::Completed | DownloadStatus::Failed | DownloadStatus::Cancelled)
}

/// The model-status batch combiner: `model_status_update`s become one
/// `batch_model_status_update` (other messages are left out).
pub fn combine_model_status(messages: &[ServerMessage]) -> ServerMessage {
    let models: Vec<ModelStatusSummary> = messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::ModelStatusUpdate(u) => Some(ModelStatusSummary::from(u)),
            _ => None,
        })
        .collect();
    ServerMessage::BatchModelStatusUpdate(BatchModelStatusUpdate {
        count: u32::try_from(models.len()).unwrap_or(u32::MAX),
        models,
        timestamp: chrono::Utc::now(),
    })
}

impl Policy {
    /// The policy for `hub`.
    pub fn new(hub: &Hub, config: PolicyConfig) -> Self {
        let model_status = Batcher::new(hub, config.batch_window, combine_model_status);
        Self { hub: hub.clone(), config: Arc::new(config), model_status, audience: None }
    }

    /// This policy, publishing everything to `audience` only (e.g. one user's downloads):
    /// same hub, same batch window (a batch never mixes audiences).
    pub fn to(&self, audience: impl Into<Arc<Audience>>) -> Self {
        self.with_audience(Some(audience.into()))
    }

    /// This policy with `audience` (`None`: every subscriber).
    pub fn with_audience(&self, audience: Option<Arc<Audience>>) -> Self {
        Self { audience, ..self.clone() }
    }

    /// Who this policy publishes to (`None`: every subscriber).
    pub fn audience(&self) -> Option<&Arc<Audience>> {
        self.audience.as_ref()
    }

    /// The hub it publishes into.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The table: how `message` is published. Control messages get an event rule (they are
    /// never published).
    ///
    /// | type | state key | kind | retained | urgent | other |
    /// | --- | --- | --- | --- | --- | --- |
    /// | `model_status_update` | model | update | kept | | batched |
    /// | `model_availability_change`, `model_lifecycle` | model | transition | | | |
    /// | `batch_model_status_update` | — | event | | | |
    /// | `download_progress_update` | model | update (transition if finished) | kept (cleared if finished) | | throttled (unless finished) |
    /// | `download_status_change` | model | transition | kept; cleared when completed, failed or cancelled | | |
    /// | `download_retry` | model | transition | kept | | |
    /// | `health_monitoring_alert` | model | event | | yes | level-filtered by health status |
    /// | `corruption_detection` | model | event | | yes | |
    /// | `performance_degradation` | model | event | | yes | level-filtered by severity |
    /// | `model_repair` | model | transition | | yes | |
    /// | `fallback_strategy`, `alternative_model_suggestion` | original model | event | | yes | |
    /// | `model_queue_update` | model | update | kept; cleared at position 0 (served) | yes | |
    /// | `usage_statistics_update` | `usage` | update | kept | | |
    /// | `cleanup_recommendation`, `priority_recommendation` | — / model | event | | | |
    /// | `system_stats` | `system` | update | kept | | |
    /// | `generation_progress` | task | update; transition when finished | kept; cleared when finished | | |
    /// | `queue_update` | `queue` | update | kept | | |
    /// | `alert` | alert id | event | | yes | |
    ///
    /// Every rule's subject is the message's `model_id` (the original model for fallback
    /// messages), whatever its key.
    pub fn rule(&self, message: &ServerMessage) -> Rule {
        let model = message.model_id();
        Rule { subject: model.map(str::to_owned), ..self.rule_by_type(message, model) }
    }

    fn rule_by_type(&self, message: &ServerMessage, model: Option<&str>) -> Rule {
        use Kind::{Event, Transition, Update};
        match message {
            ServerMessage::ModelStatusUpdate(_) => {
                Rule { batched: true, ..Rule::new(model, Update).retain(Retain::Keep) }
            }
            ServerMessage::ModelAvailabilityChange(_) | ServerMessage::ModelLifecycle(_) => {
                Rule::new(model, Transition)
            }
            // A finished download's last progress is a transition: never throttled, held back
            // by `max_hz` or collapsed, so "100%" is never lost.
            ServerMessage::DownloadProgressUpdate(d) if download_finished(&d.status) => {
                Rule::new(model, Transition).retain(Retain::Clear)
            }
            ServerMessage::DownloadProgressUpdate(_) => Rule {
                throttle: Some(self.config.download_progress_throttle),
                ..Rule::new(model, Update).retain(Retain::Keep)
            },
            ServerMessage::DownloadStatusChange(d) => {
                let retain =
                    if download_finished(&d.new_status) { Retain::Clear } else { Retain::Keep };
                Rule::new(model, Transition).retain(retain)
            }
            ServerMessage::DownloadRetry(_) => Rule::new(model, Transition).retain(Retain::Keep),
            ServerMessage::HealthMonitoringAlert(h) => Rule {
                filtered: rank(&health_level(&h.health_status)) < rank(&self.config.health_level),
                ..Rule::new(model, Event).urgent()
            },
            ServerMessage::PerformanceDegradation(p) => Rule {
                filtered: rank(&severity_level(&p.severity)) < rank(&self.config.health_level),
                ..Rule::new(model, Event).urgent()
            },
            ServerMessage::CorruptionDetection(_)
            | ServerMessage::FallbackStrategy(_)
            | ServerMessage::AlternativeModelSuggestion(_) => Rule::new(model, Event).urgent(),
            ServerMessage::ModelRepair(_) => Rule::new(model, Transition).urgent(),
            ServerMessage::ModelQueueUpdate(q) => {
                let retain = if q.queue_position == 0 { Retain::Clear } else { Retain::Keep };
                Rule::new(model, Update).retain(retain).urgent()
            }
            ServerMessage::UsageStatisticsUpdate(_) => {
                Rule::new(Some("usage"), Update).retain(Retain::Keep)
            }
            ServerMessage::SystemStats(_) => Rule::new(Some("system"), Update).retain(Retain::Keep),
            ServerMessage::QueueUpdate(_) => Rule::new(Some("queue"), Update).retain(Retain::Keep),
            ServerMessage::GenerationProgress(g) => {
                let finished = matches!(
                    g.status,
                    GenerationStatus::Completed
                        | GenerationStatus::Failed
                        | GenerationStatus::Cancelled
                );
                let (kind, retain) =
                    if finished { (Transition, Retain::Clear) } else { (Update, Retain::Keep) };
                Rule::new(Some(&g.task_id), kind).retain(retain)
            }
            ServerMessage::Alert(a) => Rule::new(Some(&a.alert_id), Event).urgent(),
            _ => Rule::new(model, Event),
        }
    }

    /// Publishes a message the caller built as a topic message (the typed notifiers do).
    pub(crate) fn publish_topic(&self, message: ServerMessage) -> Outcome {
        let type_name = message.type_name();
        self.publish([message]).pop().flatten().unwrap_or_else(|| {
            unreachable!("notifiers build topic messages only, not `{type_name}`")
        })
    }

    /// Publishes messages, in order, each by its rule (one message is a run of one): the one
    /// way messages are published, in-process and over HTTP alike. Consecutive messages of
    /// one topic that go out at once are fanned out together ([`Hub::publish`]). One outcome
    /// per message, `None` for a control message (never published).
    pub fn publish<M: Into<Outgoing>>(
        &self,
        run: impl IntoIterator<Item = M>,
    ) -> Vec<Option<Outcome>> {
        let run = run.into_iter();
        let mut outcomes = Vec::with_capacity(run.size_hint().0);
        // Messages for the hub, waiting to go in one call, with their index in `outcomes`.
        let mut waiting: Vec<(usize, Publish)> = Vec::new();
        for outgoing in run {
            let Outgoing { message, audience, idempotency_key } = outgoing.into();
            let audience = audience.or_else(|| self.audience.clone());
            match self.route(message, idempotency_key.as_deref(), audience) {
                Some(Routed::Hub(publish)) => {
                    waiting.push((outcomes.len(), publish));
                    outcomes.push(None);
                }
                routed => {
                    // Anything else goes after what waits, to keep the order.
                    self.publish_waiting(&mut waiting, &mut outcomes);
                    outcomes.push(routed.map(|routed| self.settle(routed)));
                }
            }
        }
        self.publish_waiting(&mut waiting, &mut outcomes);
        outcomes
    }

    /// Hands `waiting` to the hub in one call and fills in their outcomes.
    fn publish_waiting(
        &self,
        waiting: &mut Vec<(usize, Publish)>,
        outcomes: &mut [Option<Outcome>],
    ) {
        let (slots, publishes): (Vec<(usize, Topic)>, Vec<Publish>) =
            waiting.drain(..).map(|(index, p)| ((index, p.topic()), p)).unzip();
        for ((index, topic), published) in slots.into_iter().zip(self.hub.publish(publishes)) {
            outcomes[index] = Some(outcome_of(topic, published));
        }
    }

    /// Publishes one routed message.
    fn settle(&self, routed: Routed) -> Outcome {
        match routed {
            Routed::Done(outcome) => outcome,
            Routed::Batched(publish) => {
                outcome_of(publish.topic(), self.model_status.publish(publish))
            }
            Routed::Hub(publish) => {
                let topic = publish.topic();
                let published = self.hub.publish(publish).pop();
                published.map_or(Outcome::Filtered { topic }, |p| outcome_of(topic, p))
            }
        }
    }

    /// Applies `message`'s rule, for `audience`: where it goes, or what became of it already.
    fn route(
        &self,
        message: ServerMessage,
        idempotency_key: Option<&str>,
        audience: Option<Arc<Audience>>,
    ) -> Option<Routed> {
        let rule = self.rule(&message);
        let mut publish = Publish::new(message)?;
        let topic = publish.topic();
        if rule.filtered {
            return Some(Routed::Done(Outcome::Filtered { topic }));
        }
        if let Some(key) = rule.key {
            publish = publish.key(key);
        }
        if let Some(subject) = rule.subject {
            publish = publish.subject(subject);
        }
        publish = publish.retain(rule.retain).kind(rule.kind).urgent(rule.urgent);
        if let Some(interval) = rule.throttle {
            publish = publish.throttle(interval);
        }
        if let Some(key) = idempotency_key {
            publish = publish.idempotency_key(key);
        }
        if let Some(audience) = audience {
            publish = publish.audience(audience);
        }
        Some(if rule.batched { Routed::Batched(publish) } else { Routed::Hub(publish) })
    }
}
