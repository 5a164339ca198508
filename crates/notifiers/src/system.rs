//! Analytics and the core topics: usage statistics, system stats, generation progress, the
//! generation queue, alerts.

use std::collections::BTreeMap;

use modelcast_protocol::{
    Alert, AlertLevel, GenerationProgress, GenerationStatus, Priority, QueueItem, QueueUpdate,
    ServerMessage, SystemStats, UsageStatisticsUpdate,
};

use crate::{Outcome, Policy};

/// Publishes analytics and core-topic notifications.
#[derive(Debug, Clone)]
pub struct SystemNotifier {
    policy: Policy,
}

impl SystemNotifier {
    pub(crate) fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// Usage statistics (the latest is retained).
    pub fn usage_statistics(
        &self,
        total_models: u32,
        active_models: u32,
        most_used_model: Option<&str>,
        trends: BTreeMap<String, u64>,
    ) -> Outcome {
        self.policy.publish_topic(ServerMessage::UsageStatisticsUpdate(UsageStatisticsUpdate {
            total_models,
            active_models,
            most_used_model: most_used_model.map(str::to_owned),
            usage_trends: trends.into_iter().map(|(k, v)| (k, v.into())).collect(),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// A cleanup recommendation (analytics).
    pub fn cleanup_recommendation(
        &self,
        models: Vec<String>,
        space_mb: f64,
        priority: Priority,
    ) -> Outcome {
        self.policy.publish_topic(crate::availability::cleanup_message(models, space_mb, priority))
    }

    /// System metrics (the latest is retained).
    pub fn system_stats(&self, stats: SystemStats) -> Outcome {
        self.policy.publish_topic(ServerMessage::SystemStats(stats))
    }

    /// A generation task's progress (retained until it finishes).
    pub fn generation_progress(
        &self,
        task_id: &str,
        model_id: Option<&str>,
        status: GenerationStatus,
        step: Option<(u32, u32)>,
        eta_seconds: Option<f64>,
    ) -> Outcome {
        let progress_percent = match (&status, step) {
            (GenerationStatus::Completed, _) => 100.0,
            (_, Some((current, total))) if total > 0 => {
                f64::from(current) / f64::from(total) * 100.0
            }
            _ => 0.0,
        };
        self.policy.publish_topic(ServerMessage::GenerationProgress(GenerationProgress {
            task_id: task_id.to_owned(),
            model_id: model_id.map(str::to_owned),
            status,
            progress_percent,
            current_step: step.map(|s| s.0),
            total_steps: step.map(|s| s.1),
            eta_seconds,
            message: None,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// The generation queue (the latest is retained).
    pub fn queue_update(&self, items: Vec<QueueItem>) -> Outcome {
        let active = items.iter().filter(|i| i.status == GenerationStatus::Running).count();
        self.policy.publish_topic(ServerMessage::QueueUpdate(QueueUpdate {
            queue_length: u32::try_from(items.len() - active).unwrap_or(u32::MAX),
            active_tasks: u32::try_from(active).unwrap_or(u32::MAX),
            items,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// A system alert (urgent).
    pub fn alert(
        &self,
        alert_id: &str,
        level: AlertLevel,
        title: &str,
        message: &str,
        model_id: Option<&str>,
    ) -> Outcome {
        self.policy.publish_topic(ServerMessage::Alert(Alert {
            alert_id: alert_id.to_owned(),
            level,
            title: title.to_owned(),
            message: message.to_owned(),
            source: None,
            model_id: model_id.map(str::to_owned),
            timestamp: chrono::Utc::now(),
        }))
    }
}
