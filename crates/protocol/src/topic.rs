//! The nine subscription topics.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A subscription topic. Clients subscribe to topics; every topic message belongs to exactly one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// System performance metrics (CPU, memory, GPU).
    SystemStats,
    /// Progress of AI generation tasks.
    GenerationProgress,
    /// Generation queue status.
    QueueUpdates,
    /// System alerts.
    Alerts,
    /// Model availability status changes.
    ModelStatus,
    /// Real-time download progress and download lifecycle.
    DownloadProgress,
    /// Model health alerts and monitoring: health checks, corruption, degradation, repair.
    HealthMonitoring,
    /// Fallback strategy notifications: alternatives, queue positions, wait estimates.
    FallbackNotifications,
    /// Usage analytics and recommendations.
    AnalyticsUpdates,
}

impl Topic {
    /// Every topic, in a stable order.
    pub const ALL: [Topic; 9] = [
        Topic::SystemStats,
        Topic::GenerationProgress,
        Topic::QueueUpdates,
        Topic::Alerts,
        Topic::ModelStatus,
        Topic::DownloadProgress,
        Topic::HealthMonitoring,
        Topic::FallbackNotifications,
        Topic::AnalyticsUpdates,
    ];

    /// The topic's name on the wire, e.g. `"download_progress"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Topic::SystemStats => "system_stats",
            Topic::GenerationProgress => "generation_progress",
            Topic::QueueUpdates => "queue_updates",
            Topic::Alerts => "alerts",
            Topic::ModelStatus => "model_status",
            Topic::DownloadProgress => "download_progress",
            Topic::HealthMonitoring => "health_monitoring",
            Topic::FallbackNotifications => "fallback_notifications",
            Topic::AnalyticsUpdates => "analytics_updates",
        }
    }

    /// A dense index in `0..Topic::ALL.len()`, for per-topic arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a string that names no topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTopicError {
    /// The string that was not a topic.
    pub input: String,
}

impl fmt::Display for ParseTopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown topic `{}`; expected one of: ", self.input)?;
        for (i, t) in Topic::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(t.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseTopicError {}

impl FromStr for Topic {
    type Err = ParseTopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ParseTopicError { input: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_and_serde_agree_for_every_topic() {
        for (i, t) in Topic::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(t.as_str().parse::<Topic>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        let err = "model-status".parse::<Topic>().unwrap_err();
        assert!(err.to_string().contains("model_status"), "{err}");
    }
}
