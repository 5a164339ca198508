//! Download notifications: started, progress, paused, resumed, cancelled, retry, completed,
//! failed — and `stale` when a download's source stops reporting.
//!
//! Each active download is tracked (its status, sizes, last report), keyed by a
//! publisher-chosen model id, so the table has the owner and limit every such map needs: an
//! entry lives only as long as the hub holds the download's current state. A finished download
//! leaves at once; one whose state the hub no longer holds (evicted past `state_max_keys`,
//! cleared with `DELETE /api/state`, expired after `retained_ttl`) leaves at the watchdog's next
//! check once it has been silent for the stale interval, and is never marked stale (which would
//! bring its state back); and the table never holds more than the hub's `state_max_keys`
//! downloads: past that, the ones without state go first, then the least recently reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use modelcast_hub::Audience;
use modelcast_protocol::{
    DownloadEvent as WireEvent, DownloadProgressUpdate, DownloadRetry, DownloadStatus,
    DownloadStatusChange, ServerMessage, Topic,
};
use tokio::time::Instant;

use crate::{Outcome, Policy};

/// A tracked download: its audience (`None`: everyone's) and model. alice's and bob's
/// downloads of one model are two downloads.
type Tracked = (Option<Arc<Audience>>, String);
type Table = HashMap<Tracked, Download>;

/// How long a download just reported is kept even without state in the hub: its first
/// message may still be on its way to the hub's state (an engine's round trip).
const STATE_GRACE: Duration = Duration::from_secs(2);

/// The longest wait between retries, whatever the attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The delay before retry number `attempt` (from 1): 2, 4, 8, … seconds, at most 300.
pub fn retry_backoff(attempt: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempt.min(16))).min(MAX_BACKOFF)
}

#[derive(Debug, Clone)]
struct Download {
    status: DownloadStatus,
    downloaded_mb: f64,
    total_mb: f64,
    retries: u32,
    last_report: Instant,
}

impl Download {
    fn percent(&self) -> f64 {
        if self.total_mb > 0.0 {
            tenths((self.downloaded_mb / self.total_mb * 100.0).clamp(0.0, 100.0))
        } else {
            0.0
        }
    }
}

/// Rounded to a tenth: what people read (`313.6 s`, `45.5 %`), not `313.5777777777778`.
fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Something a downloader reports, for [`crate::Notifiers::download_events`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DownloadEvent {
    /// A download began (`total_mb` if known, else 0).
    Started {
        /// The model.
        model_id: String,
        /// Its size in MB.
        total_mb: f64,
    },
    /// Bytes arrived.
    Progress {
        /// The model.
        model_id: String,
        /// MB downloaded so far.
        downloaded_mb: f64,
        /// MB in total.
        total_mb: f64,
        /// Current speed, MB/s.
        speed_mbps: f64,
    },
    /// Paused.
    Paused {
        /// The model.
        model_id: String,
        /// Why, for people.
        reason: String,
    },
    /// Resumed after a pause.
    Resumed {
        /// The model.
        model_id: String,
    },
    /// Cancelled.
    Cancelled {
        /// The model.
        model_id: String,
        /// Why, for people.
        reason: String,
    },
    /// An attempt failed and will be retried.
    Retry {
        /// The model.
        model_id: String,
        /// What failed.
        error: String,
        /// Retries allowed in total.
        max_retries: u32,
    },
    /// Finished and verified.
    Completed {
        /// The model.
        model_id: String,
    },
    /// Failed for good.
    Failed {
        /// The model.
        model_id: String,
        /// What failed.
        error: String,
    },
}

/// Publishes download notifications, keeping each download's state so every status change
/// says where it came from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DownloadNotifier {
    policy: Policy,
    downloads: Arc<Mutex<Table>>,
}

impl DownloadNotifier {
    pub(crate) fn new(policy: Policy) -> Self {
        Self { policy, downloads: Arc::default() }
    }

    /// Checks for silent downloads every `after / 4` until the notifier's last clone is gone.
    pub(crate) fn spawn_watchdog(&self, runtime: &tokio::runtime::Handle, after: Duration) {
        let policy = self.policy.clone();
        let weak: Weak<Mutex<Table>> = Arc::downgrade(&self.downloads);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval((after / 4).max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                let Some(downloads) = weak.upgrade() else { break };
                DownloadNotifier { policy: policy.clone(), downloads }.mark_stale(after);
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.downloads.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the hub holds current state for the download `tracked`.
    fn has_state(&self, (audience, model): &Tracked) -> bool {
        self.policy.hub().holds_state(Topic::DownloadProgress, model, audience.as_deref())
    }

    /// The table with room for `tracked`: past the hub's `state_max_keys`, the downloads the
    /// hub holds no state for go first (those just reported excepted), then the least recently
    /// reported, down to three quarters of the cap (so the work is done once per quarter of
    /// the cap, not once per new download).
    fn with_room(&self, tracked: &Tracked) -> MutexGuard<'_, Table> {
        let cap = self.policy.hub().config().state_max_keys.max(1);
        let mut downloads = self.lock();
        if downloads.len() < cap || downloads.contains_key(tracked) {
            return downloads;
        }
        let now = Instant::now();
        downloads
            .retain(|t, d| now.duration_since(d.last_report) < STATE_GRACE || self.has_state(t));
        let keep = cap - cap / 4;
        if downloads.len() > keep {
            let mut reports: Vec<Instant> = downloads.values().map(|d| d.last_report).collect();
            reports.sort_unstable();
            let cut = reports[downloads.len() - keep];
            downloads.retain(|_, d| d.last_report >= cut);
        }
        downloads
    }

    /// This notifier, for the downloads of `audience` (e.g. one user): its messages reach
    /// that audience only, and its downloads are tracked (and marked stale) apart from the
    /// same models' downloads of anyone else.
    pub fn to(&self, audience: impl Into<Arc<Audience>>) -> Self {
        self.with_audience(Some(audience.into()))
    }

    /// This notifier for `audience` (`None`: every subscriber).
    pub fn with_audience(&self, audience: Option<Arc<Audience>>) -> Self {
        Self { policy: self.policy.with_audience(audience), downloads: self.downloads.clone() }
    }

    /// The table's key of `model_id` for this notifier's audience.
    fn tracked(&self, model_id: &str) -> Tracked {
        (self.policy.audience().cloned(), model_id.to_owned())
    }

    /// Applies one event from a downloader.
    pub fn apply(&self, event: DownloadEvent) -> Outcome {
        match event {
            DownloadEvent::Started { model_id, total_mb } => self.started(&model_id, total_mb),
            DownloadEvent::Progress { model_id, downloaded_mb, total_mb, speed_mbps } => {
                self.progress(&model_id, downloaded_mb, total_mb, speed_mbps)
            }
            DownloadEvent::Paused { model_id, reason } => self.paused(&model_id, &reason),
            DownloadEvent::Resumed { model_id } => self.resumed(&model_id),
            DownloadEvent::Cancelled { model_id, reason } => self.cancelled(&model_id, &reason),
            DownloadEvent::Retry { model_id, error, max_retries } => {
                self.retry(&model_id, &error, max_retries)
            }
            DownloadEvent::Completed { model_id } => self.completed(&model_id),
            DownloadEvent::Failed { model_id, error } => self.failed(&model_id, &error),
        }
    }

    /// Moves `model_id` to `new` and publishes the `download_status_change`.
    fn change(
        &self,
        model_id: &str,
        new: DownloadStatus,
        event: WireEvent,
        reason: &str,
        error: Option<&str>,
    ) -> Outcome {
        let (old, percent) = {
            let tracked = self.tracked(model_id);
            let mut downloads = self.with_room(&tracked);
            let d = downloads.entry(tracked).or_insert_with(|| Download {
                status: DownloadStatus::Queued,
                downloaded_mb: 0.0,
                total_mb: 0.0,
                retries: 0,
                last_report: Instant::now(),
            });
            let old = std::mem::replace(&mut d.status, new.clone());
            d.last_report = Instant::now();
            let percent = d.percent();
            if crate::policy::download_finished(&new) {
                downloads.remove(&self.tracked(model_id));
            }
            (old, percent)
        };
        self.policy.publish_topic(ServerMessage::DownloadStatusChange(DownloadStatusChange {
            model_id: model_id.to_owned(),
            old_status: old,
            new_status: new,
            progress_percent: percent,
            reason: reason.to_owned(),
            event: Some(event),
            error_message: error.map(str::to_owned),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// A download began.
    pub fn started(&self, model_id: &str, total_mb: f64) -> Outcome {
        {
            let tracked = self.tracked(model_id);
            let mut downloads = self.with_room(&tracked);
            let d = downloads.entry(tracked).or_insert_with(|| Download {
                status: DownloadStatus::Queued,
                downloaded_mb: 0.0,
                total_mb,
                retries: 0,
                last_report: Instant::now(),
            });
            d.total_mb = total_mb;
            d.downloaded_mb = 0.0;
            d.retries = 0;
        }
        self.change(
            model_id,
            DownloadStatus::Downloading,
            WireEvent::Started,
            "Download started",
            None,
        )
    }

    /// Progress: throttled per model by the policy, the newest value always delivered.
    /// A report after a retry or a stale period first moves the download back to
    /// `downloading`.
    pub fn progress(
        &self,
        model_id: &str,
        downloaded_mb: f64,
        total_mb: f64,
        speed_mbps: f64,
    ) -> Outcome {
        let back = {
            let tracked = self.tracked(model_id);
            let mut downloads = self.with_room(&tracked);
            let d = downloads.entry(tracked).or_insert_with(|| Download {
                status: DownloadStatus::Downloading,
                downloaded_mb,
                total_mb,
                retries: 0,
                last_report: Instant::now(),
            });
            d.downloaded_mb = downloaded_mb;
            d.total_mb = total_mb;
            d.last_report = Instant::now();
            matches!(
                d.status,
                DownloadStatus::Retrying | DownloadStatus::Stale | DownloadStatus::Queued
            )
            .then(|| d.status.clone())
        };
        if let Some(from) = back {
            let reason = match from {
                DownloadStatus::Stale => "Progress reports resumed",
                DownloadStatus::Retrying => "Retry attempt started",
                _ => "Download started",
            };
            self.change(model_id, DownloadStatus::Downloading, WireEvent::Resumed, reason, None);
        }
        self.publish_progress(model_id, speed_mbps)
    }

    fn publish_progress(&self, model_id: &str, speed_mbps: f64) -> Outcome {
        let Some(d) = self.lock().get(&self.tracked(model_id)).cloned() else {
            return Outcome::Filtered { topic: modelcast_protocol::Topic::DownloadProgress };
        };
        let remaining = (d.total_mb - d.downloaded_mb).max(0.0);
        let downloading = d.status == DownloadStatus::Downloading;
        self.policy.publish_topic(ServerMessage::DownloadProgressUpdate(DownloadProgressUpdate {
            model_id: model_id.to_owned(),
            status: d.status.clone(),
            progress_percent: d.percent(),
            downloaded_mb: d.downloaded_mb,
            total_mb: d.total_mb,
            speed_mbps,
            eta_seconds: (downloading && speed_mbps > 0.0).then(|| tenths(remaining / speed_mbps)),
            can_pause: downloading,
            can_resume: d.status == DownloadStatus::Paused,
            can_cancel: true,
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Paused.
    pub fn paused(&self, model_id: &str, reason: &str) -> Outcome {
        self.change(model_id, DownloadStatus::Paused, WireEvent::Paused, reason, None)
    }

    /// Resumed after a pause.
    pub fn resumed(&self, model_id: &str) -> Outcome {
        self.change(
            model_id,
            DownloadStatus::Downloading,
            WireEvent::Resumed,
            "Download resumed",
            None,
        )
    }

    /// Cancelled; the download leaves the retained state.
    pub fn cancelled(&self, model_id: &str, reason: &str) -> Outcome {
        self.change(model_id, DownloadStatus::Cancelled, WireEvent::Cancelled, reason, None)
    }

    /// An attempt failed and will be retried after an exponential backoff
    /// ([`retry_backoff`]). Past `max_retries` the download fails instead.
    pub fn retry(&self, model_id: &str, error: &str, max_retries: u32) -> Outcome {
        let attempt = {
            let mut downloads = self.lock();
            downloads.get_mut(&self.tracked(model_id)).map_or(1, |d| {
                d.retries += 1;
                d.retries
            })
        };
        if attempt > max_retries {
            return self
                .failed(model_id, &format!("{error} (gave up after {max_retries} retries)"));
        }
        self.change(
            model_id,
            DownloadStatus::Retrying,
            WireEvent::Retrying,
            "Retrying after an error",
            Some(error),
        );
        self.policy.publish_topic(ServerMessage::DownloadRetry(DownloadRetry {
            model_id: model_id.to_owned(),
            retry_count: attempt,
            max_retries,
            error_message: error.to_owned(),
            next_retry_in_seconds: retry_backoff(attempt).as_secs(),
            timestamp: chrono::Utc::now(),
        }))
    }

    /// Finished: the final 100% goes out (even if a throttle window holds an older value),
    /// then the status change; the download leaves the retained state.
    pub fn completed(&self, model_id: &str) -> Outcome {
        let known = {
            let mut downloads = self.lock();
            downloads.get_mut(&self.tracked(model_id)).map(|d| {
                d.downloaded_mb = d.total_mb;
            })
        };
        if known.is_some() {
            self.publish_progress(model_id, 0.0);
        }
        self.change(
            model_id,
            DownloadStatus::Completed,
            WireEvent::Completed,
            "Download completed",
            None,
        )
    }

    /// Failed for good; the download leaves the retained state.
    pub fn failed(&self, model_id: &str, error: &str) -> Outcome {
        self.change(
            model_id,
            DownloadStatus::Failed,
            WireEvent::Failed,
            "Download failed",
            Some(error),
        )
    }

    /// Marks every active download (of every audience) silent for longer than `after` as
    /// `stale` (once), published to its own audience; a later report moves it back to
    /// `downloading`. A download silent that long whose state the hub no longer holds
    /// (evicted, cleared, expired) is forgotten instead: it is gone for the watchdog too, and
    /// marking it would bring its state back. Returns the models marked.
    pub fn mark_stale(&self, after: Duration) -> Vec<String> {
        let now = Instant::now();
        let silent: Vec<(Tracked, DownloadStatus)> = self
            .lock()
            .iter()
            .filter(|(_, d)| now.duration_since(d.last_report) > after)
            .map(|(t, d)| (t.clone(), d.status.clone()))
            .collect();
        let mut stale = Vec::new();
        for (tracked, status) in silent {
            if !self.has_state(&tracked) {
                self.lock().remove(&tracked);
            } else if status == DownloadStatus::Downloading {
                stale.push(tracked);
            }
        }
        for (audience, model) in &stale {
            // Marked stale for the audience that downloads it, no one else.
            self.with_audience(audience.clone()).change(
                model,
                DownloadStatus::Stale,
                WireEvent::Stale,
                &format!("No progress reported for {} s", after.as_secs()),
                None,
            );
        }
        stale.into_iter().map(|(_, model)| model).collect()
    }

    /// How many downloads are tracked now (every audience).
    pub fn tracked_count(&self) -> usize {
        self.lock().len()
    }

    /// A download message someone else published (over HTTP) to this notifier's audience:
    /// tracked like the notifier's own,
    /// so a download whose publisher goes silent turns `stale` here too, and a finished one
    /// leaves the state.
    pub fn observe(&self, message: &ServerMessage) {
        let (model, status, sizes) = match message {
            ServerMessage::DownloadProgressUpdate(p) => {
                (&p.model_id, p.status.clone(), Some((p.downloaded_mb, p.total_mb)))
            }
            ServerMessage::DownloadStatusChange(c) => (&c.model_id, c.new_status.clone(), None),
            ServerMessage::DownloadRetry(r) => (&r.model_id, DownloadStatus::Retrying, None),
            _ => return,
        };
        let tracked = self.tracked(model);
        if crate::policy::download_finished(&status) {
            self.lock().remove(&tracked);
            return;
        }
        let mut downloads = self.with_room(&tracked);
        let d = downloads.entry(tracked).or_insert_with(|| Download {
            status: status.clone(),
            downloaded_mb: 0.0,
            total_mb: 0.0,
            retries: 0,
            last_report: Instant::now(),
        });
        d.status = status;
        d.last_report = Instant::now();
        if let Some((downloaded_mb, total_mb)) = sizes {
            d.downloaded_mb = downloaded_mb;
            d.total_mb = total_mb;
        }
    }

    /// The models with an active download of this notifier's audience.
    pub fn active(&self) -> Vec<String> {
        let audience = self.policy.audience();
        let mut models: Vec<String> = self
            .lock()
            .keys()
            .filter(|(a, _)| a.as_ref() == audience)
            .map(|(_, m)| m.clone())
            .collect();
        models.sort();
        models
    }
}
