//! `modelcast --demo`: a simulated model catalog that exercises every message type through the
//! same notifiers and policy production uses.
//!
//! One cycle takes about a minute and then repeats with new random speeds:
//! - `ti2v-5b` (10 GB) downloads at fast-mirror speeds, hits a network timeout and retries with
//!   backoff, is paused by the user and resumed, completes, fails its checksum, is repaired,
//!   becomes available and is loaded;
//! - `s2v-14b` starts downloading, its source goes silent (shown as `stale`), comes back, and is
//!   then cancelled or fails;
//! - a request for the missing `t2v-a14b` triggers a fallback to an alternative and a queue
//!   position counting down;
//! - `i2v-a14b` degrades, a disk-space alert fires, cleanup and priority recommendations follow;
//! - the user `demo` downloads a LoRA of their own (`lora-demo-style`), published to that user
//!   only (an audience): a connection whose token's `sub` is `demo` sees it, no one else;
//! - throughout: system stats, generation tasks, the generation queue, usage statistics, and
//!   the availability source swept every `MODEL_STATUS_UPDATE_INTERVAL`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelcast_protocol::{
    AlertLevel, AvailabilityStatus, CorruptionType, GenerationStatus, HealthStatus, LifecycleEvent,
    Priority, QueueItem, Severity, StrategyType, SystemStats,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::{HealthReport, ModelState, Notifiers, Strategy, Suggestion};

/// The user whose downloads the demo publishes to that user only.
pub const DEMO_USER: &str = "demo";

/// How the demo runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DemoConfig {
    /// How often the simulated availability manager is swept (`MODEL_STATUS_UPDATE_INTERVAL`).
    pub model_status_interval: Duration,
    /// Seed of the randomness (speeds, which way a cycle goes).
    pub seed: u64,
    /// The notifiers' stale threshold: the silent download stays silent a little longer.
    pub stale_after: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            model_status_interval: Duration::from_secs(5),
            seed: 7,
            stale_after: Duration::from_secs(30),
        }
    }
}

impl DemoConfig {
    /// Sets the sweep interval.
    pub fn model_status_interval(mut self, d: Duration) -> Self {
        self.model_status_interval = d;
        self
    }

    /// Sets the stale threshold the demo's silent download must outlast.
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// The simulated catalog the availability sweep reads.
type Catalog = Arc<Mutex<BTreeMap<String, ModelState>>>;

fn set(catalog: &Catalog, model: &str, status: AvailabilityStatus) {
    let mut c = catalog.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = c.get_mut(model) {
        m.is_available =
            matches!(status, AvailabilityStatus::Available | AvailabilityStatus::Loaded);
        m.is_loaded = status == AvailabilityStatus::Loaded;
        // The demo's stand-in for a measured figure: half the size on disk while loaded.
        m.vram_mb = m.is_loaded.then_some(m.size_mb / 2.0);
        m.availability_status = status;
    }
}

/// Starts the demo's tasks; abort the returned handles to stop it.
pub fn spawn(notifiers: &Notifiers, config: DemoConfig) -> Vec<JoinHandle<()>> {
    let catalog: Catalog = Arc::new(Mutex::new(
        [
            ModelState::new("t2v-a14b", AvailabilityStatus::Missing, 0.0),
            ModelState::new("i2v-a14b", AvailabilityStatus::Loaded, 27_648.0),
            ModelState::new("ti2v-5b", AvailabilityStatus::Missing, 0.0),
            ModelState::new("s2v-14b", AvailabilityStatus::Missing, 0.0),
        ]
        .into_iter()
        .map(|mut m| {
            m.vram_mb = m.is_loaded.then_some(m.size_mb / 2.0);
            (m.model_id.clone(), m)
        })
        .collect(),
    ));
    let source = {
        let catalog = catalog.clone();
        move || {
            catalog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect()
        }
    };
    vec![
        notifiers.watch_availability(source, config.model_status_interval),
        tokio::spawn(system_stats(notifiers.clone(), config.seed)),
        tokio::spawn(generation(notifiers.clone(), config.seed + 1)),
        tokio::spawn(cycles(notifiers.clone(), catalog, config.seed + 2, config.stale_after)),
        tokio::spawn(personal_downloads(notifiers.clone(), config.seed + 3)),
    ]
}

async fn system_stats(n: Notifiers, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut usage_tick = 0u32;
    loop {
        let cpu: f64 = rng.random_range(15.0..65.0);
        n.system().system_stats(SystemStats {
            cpu_percent: cpu,
            memory_percent: rng.random_range(40.0..70.0),
            memory_used_mb: rng.random_range(26_000.0..44_000.0),
            memory_total_mb: 65_536.0,
            gpu_percent: Some(rng.random_range(30.0..99.0)),
            vram_used_mb: Some(rng.random_range(12_000.0..22_000.0)),
            vram_total_mb: Some(24_576.0),
            disk_free_mb: Some(rng.random_range(40_000.0..60_000.0)),
            timestamp: chrono::Utc::now(),
        });
        // Every 4 s: enough points for the dashboard's usage chart to show a trend.
        if usage_tick.is_multiple_of(2) {
            let daily = rng.random_range(20..40);
            n.system().usage_statistics(
                4,
                rng.random_range(1..=3),
                Some("i2v-a14b"),
                BTreeMap::from([("daily_usage".into(), daily), ("weekly_usage".into(), daily * 6)]),
            );
        }
        usage_tick += 1;
        sleep(Duration::from_secs(2)).await;
    }
}

async fn generation(n: Notifiers, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut task = 0u32;
    loop {
        task += 1;
        let id = format!("gen-{task}");
        let waiting = format!("gen-{}", task + 1);
        n.system().queue_update(vec![
            QueueItem {
                task_id: id.clone(),
                model_id: Some("i2v-a14b".into()),
                position: 0,
                status: GenerationStatus::Running,
            },
            QueueItem {
                task_id: waiting,
                model_id: Some("i2v-a14b".into()),
                position: 1,
                status: GenerationStatus::Queued,
            },
        ]);
        let steps = 20;
        for step in 1..=steps {
            let eta = f64::from(steps - step) * 0.4;
            n.system().generation_progress(
                &id,
                Some("i2v-a14b"),
                GenerationStatus::Running,
                Some((step, steps)),
                Some(eta),
            );
            sleep(Duration::from_millis(400)).await;
        }
        let done = if rng.random_bool(0.9) {
            GenerationStatus::Completed
        } else {
            GenerationStatus::Failed
        };
        n.system().generation_progress(&id, Some("i2v-a14b"), done, Some((steps, steps)), None);
        sleep(Duration::from_secs(1)).await;
    }
}

/// The demo user's own download, again and again: published to that user only.
async fn personal_downloads(n: Notifiers, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mine = n.to(modelcast_hub::Audience::users([DEMO_USER]));
    let d = mine.downloads();
    let model = "lora-demo-style";
    let total = 1_536.0;
    loop {
        let speed: f64 = rng.random_range(60.0..120.0);
        d.started(model, total);
        let mut done = 0.0;
        while done < total {
            sleep(Duration::from_millis(500)).await;
            done = (done + speed * 0.5).min(total);
            d.progress(model, done, total, speed);
        }
        d.completed(model);
        sleep(Duration::from_secs(10)).await;
    }
}

/// Long enough for the watchdog (checking every `stale_after / 4`) to notice.
fn config_silence(stale_after: Duration) -> Duration {
    stale_after + stale_after / 2 + Duration::from_secs(1)
}

async fn cycles(n: Notifiers, catalog: Catalog, seed: u64, stale_after: Duration) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cycle = 0u32;
    loop {
        cycle += 1;
        let speed: f64 = rng.random_range(200.0..320.0);
        let main = tokio::spawn(main_download(n.clone(), catalog.clone(), speed));
        let silence = config_silence(stale_after);
        let side = tokio::spawn(silent_download(
            n.clone(),
            catalog.clone(),
            rng.random_bool(0.5),
            silence,
        ));
        fallback(&n).await;
        sleep(Duration::from_secs(8)).await;
        trouble(&n, cycle).await;
        let _ = main.await;
        let _ = side.await;
        // Start over: free the space again.
        sleep(Duration::from_secs(5)).await;
        n.availability().lifecycle(
            "ti2v-5b",
            LifecycleEvent::Unloading,
            Some("Demo cycle restarts"),
        );
        n.availability().lifecycle("ti2v-5b", LifecycleEvent::Unloaded, None);
        set(&catalog, "ti2v-5b", AvailabilityStatus::Missing);
        sleep(Duration::from_secs(3)).await;
    }
}

/// ti2v-5b: download with a retry and a pause, checksum failure, repair, load.
async fn main_download(n: Notifiers, catalog: Catalog, speed: f64) {
    let model = "ti2v-5b";
    let total = 10_240.0;
    let d = n.downloads();
    let h = n.health();
    set(&catalog, model, AvailabilityStatus::Downloading);
    d.started(model, total);
    let mut done = 0.0;
    let mut retried = false;
    let mut paused = false;
    let tick = Duration::from_millis(500);
    while done < total {
        let jitter = 0.85 + (done / total * 7.0).sin().abs() * 0.3;
        done = (done + speed * jitter * tick.as_secs_f64()).min(total);
        d.progress(model, done, total, speed * jitter);
        if !retried && done > total * 0.25 {
            retried = true;
            d.retry(model, "Network timeout", 3);
            sleep(crate::retry_backoff(1)).await;
        }
        if !paused && done > total * 0.55 {
            paused = true;
            d.paused(model, "Paused by user");
            sleep(Duration::from_secs(3)).await;
            d.resumed(model);
        }
        sleep(tick).await;
    }
    d.completed(model);
    // Verification finds a bad shard; it is repaired automatically.
    h.check_result(
        model,
        HealthReport::new(HealthStatus::Corrupted, 0.82, 5, total)
            .issues(vec!["model-00003-of-00005.safetensors: checksum mismatch".into()]),
    );
    h.corruption_detected(
        model,
        CorruptionType::ChecksumMismatch,
        Severity::High,
        "Re-download corrupted files",
        false,
    );
    set(&catalog, model, AvailabilityStatus::Corrupted);
    h.repair_started(model, "Re-download corrupted files");
    sleep(Duration::from_secs(3)).await;
    h.repair_finished(model, "Re-download corrupted files", true, Some("1 file replaced".into()));
    h.check_result(model, HealthReport::new(HealthStatus::Healthy, 1.0, 5, total));
    {
        let mut c = catalog.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = c.get_mut(model) {
            m.size_mb = total;
        }
    }
    set(&catalog, model, AvailabilityStatus::Available);
    n.availability().change(
        model,
        AvailabilityStatus::Corrupted,
        AvailabilityStatus::Available,
        "Repair completed",
    );
    n.availability().lifecycle(
        model,
        LifecycleEvent::Loading,
        Some("Requested by a generation task"),
    );
    sleep(Duration::from_secs(2)).await;
    n.availability().lifecycle(model, LifecycleEvent::Loaded, None);
    set(&catalog, model, AvailabilityStatus::Loaded);
}

/// s2v-14b: its source goes silent (stale), comes back, then is cancelled or fails.
async fn silent_download(n: Notifiers, catalog: Catalog, cancel: bool, silence: Duration) {
    let model = "s2v-14b";
    let total = 28_672.0;
    let d = n.downloads();
    set(&catalog, model, AvailabilityStatus::Downloading);
    sleep(Duration::from_secs(2)).await;
    d.started(model, total);
    let mut done = 0.0;
    for _ in 0..10 {
        done += 45.0;
        d.progress(model, done, total, 90.0);
        sleep(Duration::from_millis(500)).await;
    }
    // Silence: the watchdog marks the download stale.
    sleep(silence).await;
    for _ in 0..6 {
        done += 45.0;
        d.progress(model, done, total, 90.0);
        sleep(Duration::from_millis(500)).await;
    }
    if cancel {
        d.cancelled(model, "Cancelled by user");
    } else {
        d.failed(model, "Disk full: 0 bytes left on /models");
    }
    set(&catalog, model, AvailabilityStatus::Missing);
}

/// A request for the missing t2v-a14b: fallback, suggestion, queue countdown.
async fn fallback(n: &Notifiers) {
    let f = n.fallback();
    f.strategy_activated(
        "t2v-a14b",
        Strategy::new(
            StrategyType::AlternativeModel,
            "Use alternative model",
            "t2v-a14b is not downloaded; ti2v-5b can render this request",
        )
        .alternative("ti2v-5b"),
    );
    f.alternative_suggested(
        "t2v-a14b",
        Suggestion::new("ti2v-5b", 0.85, -0.1, "Similar capabilities with slightly lower quality"),
    );
    for position in (0..=3).rev() {
        f.queue_position("t2v-a14b", position, f64::from(position) * 45.0);
        sleep(Duration::from_secs(2)).await;
    }
}

/// Degradation, an alert, recommendations.
async fn trouble(n: &Notifiers, cycle: u32) {
    let h = n.health();
    h.check_result(
        "i2v-a14b",
        HealthReport::new(HealthStatus::Degraded, 0.97, 6, 27_648.0)
            .issues(vec!["Generation slower than baseline".into()]),
    );
    h.performance_degradation(
        "i2v-a14b",
        "generation_time_seconds",
        30.0,
        42.0 + f64::from(cycle % 3) * 4.0,
    );
    sleep(Duration::from_secs(2)).await;
    n.system().alert(
        &format!("disk-{cycle}"),
        AlertLevel::Warning,
        "Disk space low",
        "Less than 50 GB free on /models",
        None,
    );
    n.system().cleanup_recommendation(
        vec!["s2v-14b".into(), "t2v-a14b-int8".into()],
        38_912.0,
        Priority::Medium,
    );
    n.availability().priority_recommendation(
        "i2v-a14b",
        Priority::High,
        "Most used model: keep it loaded",
    );
}
