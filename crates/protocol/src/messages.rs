//! Every message the server sends: the original design's 13 types, the core topics' types, the lifecycle
//! events the seed's prose names, and the control replies.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::client::RequestId;
use crate::{
    AlertLevel, AvailabilityStatus, CorruptionType, DownloadEvent, DownloadStatus, ErrorCode,
    GenerationStatus, HealthStatus, LifecycleEvent, Priority, RepairPhase, Severity, StrategyType,
    Timestamp, Topic,
};

macro_rules! server_messages {
    (
        $( $(#[doc = $doc:literal])* $variant:ident($data:ident) = $wire:literal => $topic:expr; )+
    ) => {
        /// A message from the server: `{"type": "...", "data": {...}}`.
        ///
        /// Topic messages (every type with a topic) are delivered to subscribers of their topic;
        /// control messages (`welcome`, `subscribed`, `unsubscribed`, `pong`, `lagging`, `error`)
        /// answer one connection. New types may be added in later versions: a reader should
        /// ignore a `type` it does not know.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type", content = "data")]
        #[non_exhaustive]
        pub enum ServerMessage {
            $( $(#[doc = $doc])* #[serde(rename = $wire)] $variant($data), )+
        }

        impl ServerMessage {
            /// Every message type name, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($wire),+];

            /// The message's `type` on the wire, e.g. `"download_progress_update"`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $wire, )+
                }
            }

            /// The topic this message is published on; `None` for control messages.
            pub fn topic(&self) -> Option<Topic> {
                match self {
                    $( Self::$variant(_) => $topic, )+
                }
            }

            /// Reads the `data` of the message type named `type_name` straight from `data` (no
            /// intermediate value), so a deserialization error keeps its path. `Ok(None)` for an
            /// unknown type name.
            pub fn from_type_and_data<'de, D: serde::Deserializer<'de>>(
                type_name: &str,
                data: D,
            ) -> Result<Option<Self>, D::Error> {
                Ok(Some(match type_name {
                    $( $wire => Self::$variant(<$data as Deserialize>::deserialize(data)?), )+
                    _ => return Ok(None),
                }))
            }

            /// The topic of the message type named `type_name`; `None` for control messages and
            /// unknown names.
            pub fn topic_of(type_name: &str) -> Option<Topic> {
                match type_name {
                    $( $wire => $topic, )+
                    _ => None,
                }
            }
        }

        /// `(type name, topic, schema of its data)` for every message type.
        pub(crate) fn data_schemas(
            generator: &mut schemars::SchemaGenerator,
        ) -> Vec<(&'static str, Option<Topic>, schemars::Schema)> {
            vec![ $( ($wire, $topic, generator.subschema_for::<$data>()), )+ ]
        }
    };
}

server_messages! {
    // --- model_status ------------------------------------------------------------------------
    /// The full availability status of one model.
    ModelStatusUpdate(ModelStatusUpdate) = "model_status_update" => Some(Topic::ModelStatus);
    /// A model's availability changed from one status to another.
    ModelAvailabilityChange(ModelAvailabilityChange) = "model_availability_change" => Some(Topic::ModelStatus);
    /// Several models' status at once (a burst of updates coalesced).
    BatchModelStatusUpdate(BatchModelStatusUpdate) = "batch_model_status_update" => Some(Topic::ModelStatus);
    /// A model is being loaded into or unloaded from memory.
    ModelLifecycle(ModelLifecycle) = "model_lifecycle" => Some(Topic::ModelStatus);

    // --- download_progress -------------------------------------------------------------------
    /// Progress of one download.
    DownloadProgressUpdate(DownloadProgressUpdate) = "download_progress_update" => Some(Topic::DownloadProgress);
    /// A download changed state: started, paused, resumed, cancelled, completed, failed, stale.
    DownloadStatusChange(DownloadStatusChange) = "download_status_change" => Some(Topic::DownloadProgress);
    /// A failed download attempt will be retried after a backoff.
    DownloadRetry(DownloadRetry) = "download_retry" => Some(Topic::DownloadProgress);

    // --- health_monitoring -------------------------------------------------------------------
    /// The result of a health check of one model.
    HealthMonitoringAlert(HealthMonitoringAlert) = "health_monitoring_alert" => Some(Topic::HealthMonitoring);
    /// Corruption was found in a model's files.
    CorruptionDetection(CorruptionDetection) = "corruption_detection" => Some(Topic::HealthMonitoring);
    /// A model performs measurably worse than its baseline.
    PerformanceDegradation(PerformanceDegradation) = "performance_degradation" => Some(Topic::HealthMonitoring);
    /// An automatic repair of a model started, completed or failed.
    ModelRepair(ModelRepair) = "model_repair" => Some(Topic::HealthMonitoring);

    // --- fallback_notifications --------------------------------------------------------------
    /// A fallback strategy was activated for a model that cannot be used.
    FallbackStrategy(FallbackStrategy) = "fallback_strategy" => Some(Topic::FallbackNotifications);
    /// Another model is suggested in place of the requested one.
    AlternativeModelSuggestion(AlternativeModelSuggestion) = "alternative_model_suggestion" => Some(Topic::FallbackNotifications);
    /// A request for a model waits in a queue.
    ModelQueueUpdate(ModelQueueUpdate) = "model_queue_update" => Some(Topic::FallbackNotifications);

    // --- analytics_updates -------------------------------------------------------------------
    /// Usage statistics across models.
    UsageStatisticsUpdate(UsageStatisticsUpdate) = "usage_statistics_update" => Some(Topic::AnalyticsUpdates);
    /// Models recommended for removal to free space.
    CleanupRecommendation(CleanupRecommendation) = "cleanup_recommendation" => Some(Topic::AnalyticsUpdates);
    /// A recommended change of a model's priority (keep loaded, preload, evict first).
    PriorityRecommendation(PriorityRecommendation) = "priority_recommendation" => Some(Topic::AnalyticsUpdates);

    // --- core topics -------------------------------------------------------------------------
    /// System performance metrics.
    SystemStats(SystemStats) = "system_stats" => Some(Topic::SystemStats);
    /// Progress of one generation task.
    GenerationProgress(GenerationProgress) = "generation_progress" => Some(Topic::GenerationProgress);
    /// The generation queue's state.
    QueueUpdate(QueueUpdate) = "queue_update" => Some(Topic::QueueUpdates);
    /// A system alert.
    Alert(Alert) = "alert" => Some(Topic::Alerts);

    // --- control -----------------------------------------------------------------------------
    /// Sent once when a connection opens.
    Welcome(Welcome) = "welcome" => None;
    /// Confirms a subscription; recovery outcome included.
    Subscribed(Subscribed) = "subscribed" => None;
    /// Confirms an unsubscription.
    Unsubscribed(Unsubscribed) = "unsubscribed" => None;
    /// Answers a client `ping`.
    Pong(Pong) = "pong" => None;
    /// The connection falls behind: queued progress was collapsed to the newest values.
    Lagging(Lagging) = "lagging" => None;
    /// A request could not be served. The connection stays open.
    Error(ErrorMessage) = "error" => None;
    /// An operator removed a key's current state: forget it (it will not come back as state).
    StateCleared(StateCleared) = "state_cleared" => None;
    /// Confirms a `publish` action that carried an `id`.
    Published(Published) = "published" => None;
}

impl ServerMessage {
    /// The model this message concerns, if it concerns exactly one (its `model_id`, or for
    /// fallback messages the `original_model`).
    pub fn model_id(&self) -> Option<&str> {
        match self {
            Self::ModelStatusUpdate(d) => Some(&d.model_id),
            Self::ModelAvailabilityChange(d) => Some(&d.model_id),
            Self::ModelLifecycle(d) => Some(&d.model_id),
            Self::DownloadProgressUpdate(d) => Some(&d.model_id),
            Self::DownloadStatusChange(d) => Some(&d.model_id),
            Self::DownloadRetry(d) => Some(&d.model_id),
            Self::HealthMonitoringAlert(d) => Some(&d.model_id),
            Self::CorruptionDetection(d) => Some(&d.model_id),
            Self::PerformanceDegradation(d) => Some(&d.model_id),
            Self::ModelRepair(d) => Some(&d.model_id),
            Self::FallbackStrategy(d) => Some(&d.original_model),
            Self::AlternativeModelSuggestion(d) => Some(&d.original_model),
            Self::ModelQueueUpdate(d) => Some(&d.model_id),
            Self::PriorityRecommendation(d) => Some(&d.model_id),
            Self::GenerationProgress(d) => d.model_id.as_deref(),
            Self::Alert(d) => d.model_id.as_deref(),
            Self::BatchModelStatusUpdate(_)
            | Self::UsageStatisticsUpdate(_)
            | Self::CleanupRecommendation(_)
            | Self::SystemStats(_)
            | Self::QueueUpdate(_)
            | Self::Welcome(_)
            | Self::Subscribed(_)
            | Self::Unsubscribed(_)
            | Self::Pong(_)
            | Self::Lagging(_)
            | Self::Error(_)
            | Self::StateCleared(_)
            | Self::Published(_) => None,
        }
    }

    /// The position of this message's type in [`ServerMessage::TYPES`].
    pub fn type_index(&self) -> usize {
        let name = self.type_name();
        Self::TYPES.iter().position(|t| *t == name).unwrap_or_default()
    }

    /// Whether this is a control message (no topic).
    pub fn is_control(&self) -> bool {
        self.topic().is_none()
    }
}

// ============================================================================================
// model_status
// ============================================================================================

/// The full availability status of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelStatusUpdate {
    /// The model's identifier, e.g. `t2v-a14b`.
    pub model_id: String,
    /// Whether the model can be used right now.
    pub availability_status: AvailabilityStatus,
    /// `true` when the model can be used now.
    pub is_available: bool,
    /// `true` when the model is loaded in memory.
    pub is_loaded: bool,
    /// The model's size on disk, in MB.
    pub size_mb: f64,
    /// File integrity, from 0 (broken) to 1 (verified).
    pub integrity_score: f64,
    /// Recent performance relative to its baseline, from 0 to 1.
    pub performance_score: f64,
    /// Average uses per day.
    pub usage_frequency: f64,
    /// `true` when a newer version can be downloaded.
    pub update_available: bool,
    /// GPU memory the model occupies while loaded, in MB; absent when it is not loaded or the
    /// publisher does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<f64>,
    /// When the status was observed.
    pub timestamp: Timestamp,
}

/// A model's availability changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelAvailabilityChange {
    /// The model's identifier.
    pub model_id: String,
    /// The availability before the change.
    pub old_availability: AvailabilityStatus,
    /// The availability after the change.
    pub new_availability: AvailabilityStatus,
    /// Why it changed, for people.
    pub reason: String,
    /// When it changed.
    pub timestamp: Timestamp,
}

/// Several models' status at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchModelStatusUpdate {
    /// One entry per model, newest status each.
    pub models: Vec<ModelStatusSummary>,
    /// The number of entries in `models`.
    pub count: u32,
    /// When the batch was made.
    pub timestamp: Timestamp,
}

/// One model's status inside a `batch_model_status_update`: the id and status, plus whichever
/// of the other `model_status_update` fields were known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelStatusSummary {
    /// The model's identifier.
    pub model_id: String,
    /// Whether the model can be used right now.
    pub availability_status: AvailabilityStatus,
    /// `true` when the model can be used now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_available: Option<bool>,
    /// `true` when the model is loaded in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_loaded: Option<bool>,
    /// The model's size on disk, in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<f64>,
    /// File integrity, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity_score: Option<f64>,
    /// Recent performance relative to its baseline, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_score: Option<f64>,
    /// Average uses per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_frequency: Option<f64>,
    /// `true` when a newer version can be downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_available: Option<bool>,
    /// GPU memory the model occupies while loaded, in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<f64>,
}

impl From<&ModelStatusUpdate> for ModelStatusSummary {
    fn from(u: &ModelStatusUpdate) -> Self {
        Self {
            model_id: u.model_id.clone(),
            availability_status: u.availability_status.clone(),
            is_available: Some(u.is_available),
            is_loaded: Some(u.is_loaded),
            size_mb: Some(u.size_mb),
            integrity_score: Some(u.integrity_score),
            performance_score: Some(u.performance_score),
            usage_frequency: Some(u.usage_frequency),
            update_available: Some(u.update_available),
            vram_mb: u.vram_mb,
        }
    }
}

/// A model is being loaded into or unloaded from memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelLifecycle {
    /// The model's identifier.
    pub model_id: String,
    /// What happened.
    pub event: LifecycleEvent,
    /// Why, for people (e.g. "Evicted to free VRAM").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it happened.
    pub timestamp: Timestamp,
}

// ============================================================================================
// download_progress
// ============================================================================================

/// Progress of one download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownloadProgressUpdate {
    /// The model being downloaded.
    pub model_id: String,
    /// The download's state.
    pub status: DownloadStatus,
    /// Completion, from 0 to 100.
    pub progress_percent: f64,
    /// MB downloaded so far.
    pub downloaded_mb: f64,
    /// MB in total.
    pub total_mb: f64,
    /// Current transfer speed, MB per second.
    pub speed_mbps: f64,
    /// Estimated seconds until completion; absent when unknown (e.g. speed is zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// Whether the download can be paused now.
    pub can_pause: bool,
    /// Whether the download can be resumed now.
    pub can_resume: bool,
    /// Whether the download can be cancelled now.
    pub can_cancel: bool,
    /// When the progress was measured.
    pub timestamp: Timestamp,
}

/// A download changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownloadStatusChange {
    /// The model being downloaded.
    pub model_id: String,
    /// The state before the change.
    pub old_status: DownloadStatus,
    /// The state after the change.
    pub new_status: DownloadStatus,
    /// Completion at the moment of the change, from 0 to 100.
    pub progress_percent: f64,
    /// Why it changed, for people (e.g. "Download started").
    pub reason: String,
    /// The lifecycle event this change represents, when the sender names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<DownloadEvent>,
    /// The error, for a failed download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When it changed.
    pub timestamp: Timestamp,
}

/// A failed download attempt will be retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DownloadRetry {
    /// The model being downloaded.
    pub model_id: String,
    /// Which retry this is, from 1.
    pub retry_count: u32,
    /// How many retries are allowed in total.
    pub max_retries: u32,
    /// What made the last attempt fail.
    pub error_message: String,
    /// Seconds until the next attempt (exponential backoff).
    pub next_retry_in_seconds: u64,
    /// When the attempt failed.
    pub timestamp: Timestamp,
}

// ============================================================================================
// health_monitoring
// ============================================================================================

/// The result of a health check of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthMonitoringAlert {
    /// The model checked.
    pub model_id: String,
    /// The check's outcome.
    pub health_status: HealthStatus,
    /// `true` when every check passed.
    pub is_healthy: bool,
    /// File integrity, from 0 to 1.
    pub integrity_score: f64,
    /// How many files the model has.
    pub file_count: u32,
    /// The model's total size, in MB.
    pub total_size_mb: f64,
    /// Problems found, for people; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issues: Option<Vec<String>>,
    /// When the check ran.
    pub timestamp: Timestamp,
}

/// Corruption was found in a model's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CorruptionDetection {
    /// The corrupted model.
    pub model_id: String,
    /// What kind of corruption.
    pub corruption_type: CorruptionType,
    /// How serious it is.
    pub severity: Severity,
    /// What will be or should be done, for people.
    pub repair_action: String,
    /// `true` when a person must act (the repair is not automatic).
    pub requires_user_action: bool,
    /// When it was found.
    pub timestamp: Timestamp,
}

/// A model performs measurably worse than its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PerformanceDegradation {
    /// The model.
    pub model_id: String,
    /// The degraded metric, e.g. `generation_time_seconds` or `vram_usage_mb`.
    pub metric: String,
    /// The metric's baseline value.
    pub baseline_value: f64,
    /// The metric's current value.
    pub current_value: f64,
    /// How much worse than baseline, in percent.
    pub degradation_percent: f64,
    /// How serious it is.
    pub severity: Severity,
    /// What is recommended, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
    /// When it was measured.
    pub timestamp: Timestamp,
}

/// An automatic repair of a model started, completed or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRepair {
    /// The model being repaired.
    pub model_id: String,
    /// The repair's phase.
    pub phase: RepairPhase,
    /// What the repair does, e.g. "Re-download corrupted files".
    pub repair_action: String,
    /// The outcome or the error, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the phase began.
    pub timestamp: Timestamp,
}

// ============================================================================================
// fallback_notifications
// ============================================================================================

/// A fallback strategy was activated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FallbackStrategy {
    /// The model that was requested and cannot be used.
    pub original_model: String,
    /// The strategy chosen.
    pub strategy_type: StrategyType,
    /// What the system recommends, for people.
    pub recommended_action: String,
    /// The model to use instead, for `alternative_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternative_model: Option<String>,
    /// A message to show the user.
    pub user_message: String,
    /// `true` when the user must choose (show a dialog); otherwise a notice is enough.
    pub user_interaction_required: bool,
    /// Estimated seconds to wait, for `queue_and_wait` and `download_and_retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_wait_time: Option<f64>,
    /// When it was activated.
    pub timestamp: Timestamp,
}

/// Another model is suggested in place of the requested one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlternativeModelSuggestion {
    /// The model that was requested.
    pub original_model: String,
    /// The suggested model.
    pub suggested_model: String,
    /// How well the suggestion fits the request, from 0 to 1.
    pub compatibility_score: f64,
    /// Relative performance of the suggestion: negative is slower or worse, e.g. -0.1.
    pub performance_difference: f64,
    /// Why this model, for people.
    pub reason: String,
    /// When it was suggested.
    pub timestamp: Timestamp,
}

/// A request for a model waits in a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelQueueUpdate {
    /// The model the request waits for.
    pub model_id: String,
    /// Position in the queue, 1 is next; 0 means served.
    pub queue_position: u32,
    /// Estimated seconds until served.
    pub estimated_wait_time: f64,
    /// When the position was computed.
    pub timestamp: Timestamp,
}

// ============================================================================================
// analytics_updates
// ============================================================================================

/// Usage statistics across models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageStatisticsUpdate {
    /// How many models are known.
    pub total_models: u32,
    /// How many were used recently.
    pub active_models: u32,
    /// The most used model; absent when no model was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub most_used_model: Option<String>,
    /// Named usage counters, e.g. `daily_usage` and `weekly_usage`.
    pub usage_trends: BTreeMap<String, serde_json::Number>,
    /// When the statistics were computed.
    pub timestamp: Timestamp,
}

/// Models recommended for removal to free space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CleanupRecommendation {
    /// Ids of the models that could be removed.
    pub recommended_cleanup: Vec<String>,
    /// MB freed by removing them all.
    pub potential_space_saved_mb: f64,
    /// How urgent the cleanup is.
    pub cleanup_priority: Priority,
    /// When the recommendation was made.
    pub timestamp: Timestamp,
}

/// A recommended change of a model's priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PriorityRecommendation {
    /// The model.
    pub model_id: String,
    /// The recommended priority (keep loaded at `high`, evict first at `low`).
    pub recommended_priority: Priority,
    /// Why, for people.
    pub reason: String,
    /// When the recommendation was made.
    pub timestamp: Timestamp,
}

// ============================================================================================
// core topics
// ============================================================================================

/// System performance metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SystemStats {
    /// CPU use across all cores, percent.
    pub cpu_percent: f64,
    /// Memory in use, percent.
    pub memory_percent: f64,
    /// Memory in use, MB.
    pub memory_used_mb: f64,
    /// Memory in total, MB.
    pub memory_total_mb: f64,
    /// GPU use, percent; absent without a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_percent: Option<f64>,
    /// GPU memory in use, MB; absent without a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_used_mb: Option<f64>,
    /// GPU memory in total, MB; absent without a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_total_mb: Option<f64>,
    /// Free disk space for models, MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_mb: Option<f64>,
    /// When the metrics were sampled.
    pub timestamp: Timestamp,
}

/// Progress of one generation task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerationProgress {
    /// The task's identifier.
    pub task_id: String,
    /// The model generating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// The task's state.
    pub status: GenerationStatus,
    /// Completion, from 0 to 100.
    pub progress_percent: f64,
    /// The current step, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<u32>,
    /// The number of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u32>,
    /// Estimated seconds until done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// A status line or the error, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the progress was measured.
    pub timestamp: Timestamp,
}

/// The generation queue's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueUpdate {
    /// Tasks waiting.
    pub queue_length: u32,
    /// Tasks running now.
    pub active_tasks: u32,
    /// The waiting and running tasks, in queue order.
    pub items: Vec<QueueItem>,
    /// When the snapshot was taken.
    pub timestamp: Timestamp,
}

/// One task in the generation queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueItem {
    /// The task's identifier.
    pub task_id: String,
    /// The model it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Position in the queue, 1 is next; 0 means running.
    pub position: u32,
    /// The task's state.
    pub status: GenerationStatus,
}

/// A system alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// A stable id, so a later alert can refer to or resolve this one.
    pub alert_id: String,
    /// How serious it is.
    pub level: AlertLevel,
    /// A short title.
    pub title: String,
    /// The details, for people.
    pub message: String,
    /// The component that raised it, e.g. `downloader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The model it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// When it was raised.
    pub timestamp: Timestamp,
}

// ============================================================================================
// control
// ============================================================================================

/// Sent once when a connection opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Welcome {
    /// The connection's id: the one in the URL, or one the server made.
    pub connection_id: String,
    /// The protocol version the server speaks.
    pub protocol_version: u32,
    /// Seconds between server heartbeats (WebSocket pings).
    pub heartbeat_interval_seconds: u64,
    /// The topics a client may subscribe to.
    pub topics: Vec<Topic>,
    /// The server's current epoch; recovery with `since` needs a matching epoch. In a cluster
    /// each topic's epoch is the one its `subscribed` reply names.
    pub epoch: String,
    /// The id of the node (server process) the connection is on, for support and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Whether the connection's credential also opens the operator endpoints (`/api/stats`,
    /// `/metrics`, every key of `/api/state`): a publish key, a token with an operator role,
    /// or a server that requires no credential at all. A page asks for server figures only
    /// when it may. Absent: not an operator. Only ever sent as `true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("const" = true))]
    pub operator: bool,
    /// Present when the server requires a credential and this connection has none: the
    /// seconds it has to send an `auth` frame before it is closed with 4401. Until then every
    /// other request is refused (`unauthorized`). A client without a token stops here and
    /// says a token is needed, instead of waiting to be closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_deadline_seconds: Option<f64>,
    /// When the connection opened.
    pub timestamp: Timestamp,
}

/// Confirms a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Subscribed {
    /// The topic subscribed to.
    pub topic: Topic,
    /// The epoch of the topic's sequence numbers. Remember it with the last `seq` received.
    pub epoch: String,
    /// The position the frames that follow continue from; take it as the last `seq`
    /// received. Without `since`: the topic's newest `seq` (the current state follows, marked
    /// `late`). Recovered: the `since` sent. After a gap: the `seq` before the oldest message
    /// history still holds (those messages follow, then the current state, marked `late`).
    pub seq: u64,
    /// With `since`: `true` when every missed message follows; `false` when some could not be
    /// recovered (too old, or the server restarted): what history still holds follows, then
    /// the current state. Without `since`: `false`.
    pub recovered: bool,
    /// The request's `id`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// Confirms an unsubscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Unsubscribed {
    /// The topic unsubscribed from.
    pub topic: Topic,
    /// The request's `id`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// Answers a client `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Pong {
    /// The request's `id`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The server's time.
    pub timestamp: Timestamp,
}

/// The connection falls behind. Queued progress updates were collapsed to the newest value per
/// key; state changes, alerts and health reports were kept in order. If it keeps falling
/// behind, the server closes the connection (the client can reconnect and recover).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lagging {
    /// How many queued messages were collapsed into newer ones since the last notice.
    pub conflated: u64,
    /// Messages waiting for this connection now.
    pub queued: u32,
    /// The most messages that may wait for this connection.
    pub capacity: u32,
    /// When the notice was queued.
    pub timestamp: Timestamp,
}

/// A key's current state on a topic was removed by an operator (`DELETE /api/state/…`), e.g. a
/// download left "in progress" by a publisher that vanished. Sent to the topic's subscribers
/// at once; new subscribers simply no longer receive the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StateCleared {
    /// The topic.
    pub topic: Topic,
    /// The state key that was cleared (for model topics, the `model_id`).
    pub key: String,
    /// When it was cleared.
    pub timestamp: Timestamp,
}

/// Confirms a `publish` action sent with an `id` (without one, a publish is not answered
/// unless it fails).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Published {
    /// The topic it was published on.
    pub topic: Topic,
    /// `sent` (sequenced at `seq`), `held` (a throttle or batch window holds it; it or a newer
    /// value of its key goes out when the window ends) or `filtered` (below the server's
    /// health notification level: not published).
    pub status: String,
    /// Its position in the topic, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The topic's epoch `seq` belongs to, when sent: a publisher that sees it change knows the
    /// numbering started again (a rolled-back log was fenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The request's `id`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// A request could not be served. The connection stays open unless the server says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorMessage {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The request's `id`, echoed when the request had one that could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}
