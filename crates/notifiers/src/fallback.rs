//! Fallback notifications: strategies, alternative models, queue positions and waits.

use modelcast_protocol::{
    AlternativeModelSuggestion, FallbackStrategy, ModelQueueUpdate, ServerMessage, StrategyType,
};

use crate::{Outcome, Policy};

/// A fallback strategy chosen for a model that cannot be used.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Strategy {
    /// The strategy.
    pub strategy_type: StrategyType,
    /// What is recommended, for people.
    pub recommended_action: String,
    /// The model to use instead, if any.
    pub alternative_model: Option<String>,
    /// The message to show the user.
    pub user_message: String,
    /// Whether the user must choose.
    pub user_interaction_required: bool,
    /// Estimated wait, seconds.
    pub estimated_wait_time: Option<f64>,
}

impl Strategy {
    /// A strategy with its action and user message.
    pub fn new(strategy_type: StrategyType, recommended_action: &str, user_message: &str) -> Self {
        Self {
            strategy_type,
            recommended_action: recommended_action.to_owned(),
            alternative_model: None,
            user_message: user_message.to_owned(),
            user_interaction_required: false,
            estimated_wait_time: None,
        }
    }

    /// Names the alternative model.
    pub fn alternative(mut self, model: &str) -> Self {
        self.alternative_model = Some(model.to_owned());
        self
    }

    /// Asks the user to choose.
    pub fn interactive(mut self) -> Self {
        self.user_interaction_required = true;
        self
    }

    /// Adds an estimated wait.
    pub fn wait(mut self, seconds: f64) -> Self {
        self.estimated_wait_time = Some(seconds);
        self
    }
}

/// A suggested replacement model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Suggestion {
    /// The suggested model.
    pub suggested_model: String,
    /// Fit, 0 to 1.
    pub compatibility_score: f64,
    /// Relative performance (negative is worse).
    pub performance_difference: f64,
    /// Why, for people.
    pub reason: String,
}

impl Suggestion {
    /// A suggestion.
    pub fn new(
        model: &str,
        compatibility_score: f64,
        performance_difference: f64,
        reason: &str,
    ) -> Self {
        Self {
            suggested_model: model.to_owned(),
            compatibility_score,
            performance_difference,
            reason: reason.to_owned(),
        }
    }
}

/// Something a fallback manager reports, for [`crate::Notifiers::fallback_events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FallbackEvent {
    /// A strategy was activated for `original_model`.
    Strategy {
        /// The requested model.
        original_model: String,
        /// The strategy.
        strategy: Strategy,
    },
    /// An alternative was suggested for `original_model`.
    Suggestion {
        /// The requested model.
        original_model: String,
        /// The suggestion.
        suggestion: Suggestion,
    },
    /// A request waits in the queue for `model_id` (position 0: served).
    Queue {
        /// The model.
        model_id: String,
        /// Position, 1 is next; 0 served.
        position: u32,
        /// Estimated wait, seconds.
        estimated_wait: f64,
    },
}

/// Publishes fallback notifications (all urgent).
#[derive(Debug, Clone)]
pub struct FallbackNotifier {
    policy: Policy,
}

impl FallbackNotifier {
    pub(crate) fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// Applies one event from a fallback manager.
    pub fn apply(&self, event: FallbackEvent) -> Outcome {
        match event {
            FallbackEvent::Strategy { original_model, strategy } => {
                self.strategy_activated(&original_model, strategy)
            }
            FallbackEvent::Suggestion { original_model, suggestion } => {
                self.alternative_suggested(&original_model, suggestion)
            }
            FallbackEvent::Queue { model_id, position, estimated_wait } => {
                self.queue_position(&model_id, position, estimated_wait)
            }
        }
    }

    /// A strategy was activated.
    pub fn strategy_activated(&self, original_model: &str, s: Strategy) -> Outcome {
        self.policy.publish_topic(ServerMessage::FallbackStrategy(FallbackStrategy {
            original_model: original_model.to_owned(),
            strategy_type: s.strategy_type,
            recommended_action: s.recommended_action,
            alternative_model: s.alternative_model,
            user_message: s.user_message,
            user_interaction_required: s.user_interaction_required,
            estimated_wait_time: s.estimated_wait_time,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// An alternative model was suggested.
    pub fn alternative_suggested(&self, original_model: &str, s: Suggestion) -> Outcome {
        self.policy.publish_topic(ServerMessage::AlternativeModelSuggestion(
            AlternativeModelSuggestion {
                original_model: original_model.to_owned(),
                suggested_model: s.suggested_model,
                compatibility_score: s.compatibility_score,
                performance_difference: s.performance_difference,
                reason: s.reason,
                timestamp: chrono::Utc::now(),
            },
        ))
    }

    /// A queue position and wait estimate (retained until position 0, served).
    pub fn queue_position(&self, model_id: &str, position: u32, estimated_wait: f64) -> Outcome {
        self.policy.publish_topic(ServerMessage::ModelQueueUpdate(ModelQueueUpdate {
            model_id: model_id.to_owned(),
            queue_position: position,
            estimated_wait_time: estimated_wait,
            timestamp: chrono::Utc::now(),
        }))
    }
}
