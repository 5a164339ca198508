//! Availability notifications: status, changes, batches, loading/unloading, recommendations —
//! and periodic sweeps of an availability source that publish only what changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelcast_protocol::{
    AvailabilityStatus, BatchModelStatusUpdate, CleanupRecommendation, LifecycleEvent,
    ModelAvailabilityChange, ModelLifecycle, ModelStatusSummary, ModelStatusUpdate, Priority,
    PriorityRecommendation, ServerMessage,
};

use crate::{Outcome, Policy};

/// One model's availability as a source reports it (a `model_status_update` without its
/// timestamp).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelState {
    /// The model.
    pub model_id: String,
    /// Whether it can be used.
    pub availability_status: AvailabilityStatus,
    /// `true` when usable now.
    pub is_available: bool,
    /// `true` when loaded in memory.
    pub is_loaded: bool,
    /// Size on disk, MB.
    pub size_mb: f64,
    /// Integrity, 0 to 1.
    pub integrity_score: f64,
    /// Performance, 0 to 1.
    pub performance_score: f64,
    /// Uses per day.
    pub usage_frequency: f64,
    /// A newer version exists.
    pub update_available: bool,
    /// GPU memory it occupies while loaded, MB (`None`: not loaded, or unknown).
    pub vram_mb: Option<f64>,
}

impl ModelState {
    /// A model in `status`, with neutral figures; adjust the fields as needed.
    pub fn new(model_id: impl Into<String>, status: AvailabilityStatus, size_mb: f64) -> Self {
        let is_available =
            matches!(status, AvailabilityStatus::Available | AvailabilityStatus::Loaded);
        Self {
            model_id: model_id.into(),
            is_loaded: status == AvailabilityStatus::Loaded,
            availability_status: status,
            is_available,
            size_mb,
            integrity_score: 1.0,
            performance_score: 1.0,
            usage_frequency: 0.0,
            update_available: false,
            vram_mb: None,
        }
    }
}

/// A `cleanup_recommendation` (an availability and an analytics notification alike).
pub(crate) fn cleanup_message(
    models: Vec<String>,
    space_mb: f64,
    priority: Priority,
) -> ServerMessage {
    ServerMessage::CleanupRecommendation(CleanupRecommendation {
        recommended_cleanup: models,
        potential_space_saved_mb: space_mb,
        cleanup_priority: priority,
        timestamp: chrono::Utc::now(),
    })
}

/// Where the availability manager's current state comes from, swept every
/// `MODEL_STATUS_UPDATE_INTERVAL`.
pub trait AvailabilitySource: Send + Sync + 'static {
    /// Every model's current state.
    fn snapshot(&self) -> Vec<ModelState>;
}

impl<F: Fn() -> Vec<ModelState> + Send + Sync + 'static> AvailabilitySource for F {
    fn snapshot(&self) -> Vec<ModelState> {
        self()
    }
}

/// Publishes availability notifications. Cheap to clone; clones share what was announced.
#[derive(Debug, Clone)]
pub struct AvailabilityNotifier {
    policy: Policy,
    /// The last availability announced per model, by [`AvailabilityNotifier::change`] or a
    /// sweep: a sweep's change says where the model really came from, even when someone
    /// announced a change between two sweeps.
    announced: Arc<Mutex<HashMap<String, AvailabilityStatus>>>,
}

impl AvailabilityNotifier {
    /// This notifier publishing to `audience` (`None`: every subscriber), sharing what was
    /// announced.
    pub(crate) fn with_audience(
        &self,
        audience: Option<std::sync::Arc<modelcast_hub::Audience>>,
    ) -> Self {
        Self { policy: self.policy.with_audience(audience), announced: self.announced.clone() }
    }

    pub(crate) fn new(policy: Policy) -> Self {
        Self { policy, announced: Arc::default() }
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, HashMap<String, AvailabilityStatus>> {
        self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A model's full status (retained per model; bursts are batched).
    pub fn status(&self, state: &ModelState) -> Outcome {
        self.policy.publish_topic(ServerMessage::ModelStatusUpdate(ModelStatusUpdate {
            model_id: state.model_id.clone(),
            availability_status: state.availability_status.clone(),
            is_available: state.is_available,
            is_loaded: state.is_loaded,
            size_mb: state.size_mb,
            integrity_score: state.integrity_score,
            performance_score: state.performance_score,
            usage_frequency: state.usage_frequency,
            update_available: state.update_available,
            vram_mb: state.vram_mb,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Availability changed from `old` to `new`.
    pub fn change(
        &self,
        model_id: &str,
        old: AvailabilityStatus,
        new: AvailabilityStatus,
        reason: &str,
    ) -> Outcome {
        self.announced().insert(model_id.to_owned(), new.clone());
        self.policy.publish_topic(ServerMessage::ModelAvailabilityChange(ModelAvailabilityChange {
            model_id: model_id.to_owned(),
            old_availability: old,
            new_availability: new,
            reason: reason.to_owned(),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Several models' status in one message.
    pub fn batch(&self, models: Vec<ModelStatusSummary>) -> Outcome {
        self.policy.publish_topic(ServerMessage::BatchModelStatusUpdate(BatchModelStatusUpdate {
            count: u32::try_from(models.len()).unwrap_or(u32::MAX),
            models,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// A model is loading into, or unloading from, memory.
    pub fn lifecycle(
        &self,
        model_id: &str,
        event: LifecycleEvent,
        reason: Option<&str>,
    ) -> Outcome {
        self.policy.publish_topic(ServerMessage::ModelLifecycle(ModelLifecycle {
            model_id: model_id.to_owned(),
            event,
            reason: reason.map(str::to_owned),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Models recommended for removal.
    pub fn cleanup_recommendation(
        &self,
        models: Vec<String>,
        space_mb: f64,
        priority: Priority,
    ) -> Outcome {
        self.policy.publish_topic(cleanup_message(models, space_mb, priority))
    }

    /// A recommended priority for a model.
    pub fn priority_recommendation(
        &self,
        model_id: &str,
        priority: Priority,
        reason: &str,
    ) -> Outcome {
        self.policy.publish_topic(ServerMessage::PriorityRecommendation(PriorityRecommendation {
            model_id: model_id.to_owned(),
            recommended_priority: priority,
            reason: reason.to_owned(),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Sweeps `source` every `interval` until the returned task is aborted (or the runtime
    /// stops): a model whose state changed gets a `model_status_update` (bursts batched by the
    /// policy), and a `model_availability_change` when its availability differs. Unchanged
    /// models publish nothing.
    pub fn watch(
        &self,
        source: impl AvailabilitySource,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let notifier = self.clone();
        let source = Arc::new(source);
        tokio::spawn(async move {
            let mut last: HashMap<String, ModelState> = HashMap::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                notifier.sweep(source.snapshot(), &mut last);
            }
        })
    }

    /// One sweep: publishes what differs from `last` and remembers the new state.
    pub fn sweep(
        &self,
        snapshot: Vec<ModelState>,
        last: &mut HashMap<String, ModelState>,
    ) -> usize {
        let mut changed = 0;
        for state in snapshot {
            let previous = last.get(&state.model_id);
            if previous == Some(&state) {
                continue;
            }
            // Where the model came from: what was last announced (a change published between
            // sweeps counts), else what the last sweep saw.
            let announced = self.announced().get(&state.model_id).cloned();
            let from = announced.or_else(|| previous.map(|p| p.availability_status.clone()));
            if let Some(from) = from
                && from != state.availability_status
            {
                self.change(
                    &state.model_id,
                    from,
                    state.availability_status.clone(),
                    "Detected by the availability sweep",
                );
            }
            self.status(&state);
            changed += 1;
            last.insert(state.model_id.clone(), state);
        }
        changed
    }
}
