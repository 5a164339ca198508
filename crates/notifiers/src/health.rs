//! Health notifications: scheduled check results, corruption, performance degradation,
//! automatic repair.

use modelcast_protocol::{
    CorruptionDetection, CorruptionType, HealthMonitoringAlert, HealthStatus, ModelRepair,
    PerformanceDegradation, RepairPhase, ServerMessage, Severity,
};

use crate::{Outcome, Policy};

/// The result of one health check.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The check's outcome.
    pub health_status: HealthStatus,
    /// File integrity, 0 to 1.
    pub integrity_score: f64,
    /// Number of files.
    pub file_count: u32,
    /// Total size, MB.
    pub total_size_mb: f64,
    /// Problems found, for people.
    pub issues: Vec<String>,
}

impl HealthReport {
    /// A report with the given outcome and figures, no issues.
    pub fn new(
        health_status: HealthStatus,
        integrity_score: f64,
        file_count: u32,
        total_size_mb: f64,
    ) -> Self {
        Self { health_status, integrity_score, file_count, total_size_mb, issues: Vec::new() }
    }

    /// Adds the problems found.
    pub fn issues(mut self, issues: Vec<String>) -> Self {
        self.issues = issues;
        self
    }
}

/// Something a health monitor reports, for [`crate::Notifiers::health_events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HealthEvent {
    /// A scheduled check finished.
    Checked {
        /// The model.
        model_id: String,
        /// The result.
        report: HealthReport,
    },
    /// Corruption was found.
    Corruption {
        /// The model.
        model_id: String,
        /// What kind.
        corruption_type: CorruptionType,
        /// How bad.
        severity: Severity,
        /// What will be done.
        repair_action: String,
        /// Whether a person must act.
        requires_user_action: bool,
    },
    /// A metric got worse than its baseline.
    Degraded {
        /// The model.
        model_id: String,
        /// The metric.
        metric: String,
        /// Baseline value.
        baseline: f64,
        /// Current value.
        current: f64,
    },
    /// A repair started.
    RepairStarted {
        /// The model.
        model_id: String,
        /// What the repair does.
        action: String,
    },
    /// A repair finished (`ok`: the model is healthy again).
    RepairFinished {
        /// The model.
        model_id: String,
        /// What the repair did.
        action: String,
        /// Whether it worked.
        ok: bool,
        /// Details, for people.
        message: Option<String>,
    },
}

/// Publishes health notifications.
#[derive(Debug, Clone)]
pub struct HealthNotifier {
    policy: Policy,
}

impl HealthNotifier {
    pub(crate) fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// Applies one event from a health monitor.
    pub fn apply(&self, event: HealthEvent) -> Outcome {
        match event {
            HealthEvent::Checked { model_id, report } => self.check_result(&model_id, report),
            HealthEvent::Corruption {
                model_id,
                corruption_type,
                severity,
                repair_action,
                requires_user_action,
            } => self.corruption_detected(
                &model_id,
                corruption_type,
                severity,
                &repair_action,
                requires_user_action,
            ),
            HealthEvent::Degraded { model_id, metric, baseline, current } => {
                self.performance_degradation(&model_id, &metric, baseline, current)
            }
            HealthEvent::RepairStarted { model_id, action } => {
                self.repair_started(&model_id, &action)
            }
            HealthEvent::RepairFinished { model_id, action, ok, message } => {
                self.repair_finished(&model_id, &action, ok, message)
            }
        }
    }

    /// A scheduled check's result (published only at or above `HEALTH_CHECK_NOTIFICATION_LEVEL`).
    pub fn check_result(&self, model_id: &str, report: HealthReport) -> Outcome {
        self.policy.publish_topic(ServerMessage::HealthMonitoringAlert(HealthMonitoringAlert {
            model_id: model_id.to_owned(),
            is_healthy: report.health_status == HealthStatus::Healthy,
            health_status: report.health_status,
            integrity_score: report.integrity_score,
            file_count: report.file_count,
            total_size_mb: report.total_size_mb,
            issues: (!report.issues.is_empty()).then_some(report.issues),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Corruption found (always published, urgent).
    pub fn corruption_detected(
        &self,
        model_id: &str,
        corruption_type: CorruptionType,
        severity: Severity,
        repair_action: &str,
        requires_user_action: bool,
    ) -> Outcome {
        self.policy.publish_topic(ServerMessage::CorruptionDetection(CorruptionDetection {
            model_id: model_id.to_owned(),
            corruption_type,
            severity,
            repair_action: repair_action.to_owned(),
            requires_user_action,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// A metric is worse than its baseline. Higher is worse (times, memory); the severity
    /// follows the relative degradation: ≥ 100% critical, ≥ 50% high, ≥ 20% medium, else low.
    pub fn performance_degradation(
        &self,
        model_id: &str,
        metric: &str,
        baseline: f64,
        current: f64,
    ) -> Outcome {
        let percent = if baseline.abs() > f64::EPSILON {
            (current - baseline) / baseline.abs() * 100.0
        } else {
            0.0
        };
        let severity = match percent {
            p if p >= 100.0 => Severity::Critical,
            p if p >= 50.0 => Severity::High,
            p if p >= 20.0 => Severity::Medium,
            _ => Severity::Low,
        };
        self.policy.publish_topic(ServerMessage::PerformanceDegradation(PerformanceDegradation {
            model_id: model_id.to_owned(),
            metric: metric.to_owned(),
            baseline_value: baseline,
            current_value: current,
            degradation_percent: percent,
            severity,
            recommendation: None,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// An automatic repair started.
    pub fn repair_started(&self, model_id: &str, action: &str) -> Outcome {
        self.repair(model_id, RepairPhase::Started, action, None)
    }

    /// An automatic repair finished.
    pub fn repair_finished(
        &self,
        model_id: &str,
        action: &str,
        ok: bool,
        message: Option<String>,
    ) -> Outcome {
        let phase = if ok { RepairPhase::Completed } else { RepairPhase::Failed };
        self.repair(model_id, phase, action, message)
    }

    fn repair(
        &self,
        model_id: &str,
        phase: RepairPhase,
        action: &str,
        message: Option<String>,
    ) -> Outcome {
        self.policy.publish_topic(ServerMessage::ModelRepair(ModelRepair {
            model_id: model_id.to_owned(),
            phase,
            repair_action: action.to_owned(),
            message,
            timestamp: chrono::Utc::now(),
        }))
    }
}
