//! modelcast-notifiers: the model domain on top of the hub — the seed's "Model Notification
//! Integrator" in idiomatic Rust.
//!
//! It owns
//! - the **policy** ([`Policy`]): for every message type its key, whether it is retained (and
//!   when cleared), whether it is an update (throttled, collapsible), a transition or an event,
//!   whether it is urgent or batched, and which health results are worth notifying. Everything
//!   published — in-process or over `POST /api/publish` — goes through it;
//! - the **typed notifiers** ([`Notifiers`]): downloads, health, availability, fallback,
//!   analytics and the core topics, so a Rust service never writes JSON;
//! - **component integration**: event channels a downloader, health monitor or fallback manager
//!   feeds ([`Notifiers::download_events`] …), an [`AvailabilitySource`] swept every
//!   `MODEL_STATUS_UPDATE_INTERVAL`, and a watchdog that marks silent downloads `stale`;
//! - the **demo** ([`demo`]) behind `modelcast --demo`.
//!
//! Depends on `modelcast-protocol` and `modelcast-hub`; must not depend on the server, sockets
//! or HTTP.
//!
//! ```
//! use modelcast_hub::Hub;
//! use modelcast_notifiers::{Notifiers, NotifiersConfig, Policy, PolicyConfig};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = Hub::default();
//! let notifiers = Notifiers::new(Policy::new(&hub, PolicyConfig::default()), NotifiersConfig::default());
//! let downloads = notifiers.downloads();
//! downloads.started("t2v-a14b", 1000.0);
//! downloads.progress("t2v-a14b", 455.0, 1000.0, 15.2);
//! downloads.completed("t2v-a14b");
//! # }
//! ```

mod availability;
pub mod demo;
mod downloads;
mod fallback;
mod health;
mod policy;
mod system;

use std::time::Duration;

pub use availability::{AvailabilityNotifier, AvailabilitySource, ModelState};
pub use downloads::{DownloadEvent, DownloadNotifier, retry_backoff};
pub use fallback::{FallbackEvent, FallbackNotifier, Strategy, Suggestion};
pub use health::{HealthEvent, HealthNotifier, HealthReport};
pub use policy::{Outcome, Outgoing, Policy, PolicyConfig, Rule, combine_model_status};
pub use system::SystemNotifier;
use tokio::sync::mpsc;

/// Settings of the integrator itself (the policy has its own).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NotifiersConfig {
    /// A download silent for this long is shown as `stale` (default 30 s).
    pub stale_after: Duration,
    /// Room in each component event channel before a sender waits (default 1024).
    pub channel_capacity: usize,
}

impl Default for NotifiersConfig {
    fn default() -> Self {
        Self { stale_after: Duration::from_secs(30), channel_capacity: 1024 }
    }
}

impl NotifiersConfig {
    /// Sets [`NotifiersConfig::stale_after`].
    pub fn stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }
}

/// The integrator: one per hub, handing out typed notifiers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifiers {
    policy: Policy,
    config: NotifiersConfig,
    downloads: DownloadNotifier,
    availability: AvailabilityNotifier,
}

impl Notifiers {
    /// The integrator over `policy`. Inside a tokio runtime it also starts the stale-download
    /// watchdog (checking every `stale_after / 4`), which ends when the last clone is dropped.
    pub fn new(policy: Policy, config: NotifiersConfig) -> Self {
        let downloads = DownloadNotifier::new(policy.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            downloads.spawn_watchdog(&runtime, config.stale_after);
        }
        let availability = AvailabilityNotifier::new(policy.clone());
        Self { policy, config, downloads, availability }
    }

    /// These notifiers, publishing everything to `audience` only (e.g. one user's downloads
    /// and generations): the same hub and policy, downloads tracked apart per audience.
    pub fn to(&self, audience: impl Into<std::sync::Arc<modelcast_hub::Audience>>) -> Self {
        let audience = Some(audience.into());
        Self {
            policy: self.policy.with_audience(audience.clone()),
            config: self.config.clone(),
            downloads: self.downloads.with_audience(audience.clone()),
            availability: self.availability.with_audience(audience),
        }
    }

    /// The policy everything is published through.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Download notifications.
    pub fn downloads(&self) -> DownloadNotifier {
        self.downloads.clone()
    }

    /// Health notifications.
    pub fn health(&self) -> HealthNotifier {
        HealthNotifier::new(self.policy.clone())
    }

    /// Availability notifications and sweeps.
    pub fn availability(&self) -> AvailabilityNotifier {
        self.availability.clone()
    }

    /// Fallback notifications.
    pub fn fallback(&self) -> FallbackNotifier {
        FallbackNotifier::new(self.policy.clone())
    }

    /// Analytics and the core topics (system stats, generation, queue, alerts).
    pub fn system(&self) -> SystemNotifier {
        SystemNotifier::new(self.policy.clone())
    }

    /// A channel a downloader feeds: `downloader.on_event(notifiers.download_events())`.
    /// Needs a tokio runtime.
    pub fn download_events(&self) -> mpsc::Sender<DownloadEvent> {
        let downloads = self.downloads();
        self.feed(move |e| {
            downloads.apply(e);
        })
    }

    /// A channel a health monitor feeds. Needs a tokio runtime.
    pub fn health_events(&self) -> mpsc::Sender<HealthEvent> {
        let health = self.health();
        self.feed(move |e| {
            health.apply(e);
        })
    }

    /// A channel a fallback manager feeds. Needs a tokio runtime.
    pub fn fallback_events(&self) -> mpsc::Sender<FallbackEvent> {
        let fallback = self.fallback();
        self.feed(move |e| {
            fallback.apply(e);
        })
    }

    /// Sweeps an availability manager every `interval` (`MODEL_STATUS_UPDATE_INTERVAL`),
    /// publishing only what changed. Needs a tokio runtime.
    pub fn watch_availability(
        &self,
        source: impl AvailabilitySource,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.availability().watch(source, interval)
    }

    fn feed<E: Send + 'static>(&self, apply: impl Fn(E) + Send + 'static) -> mpsc::Sender<E> {
        let (tx, mut rx) = mpsc::channel(self.config.channel_capacity.max(1));
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                apply(event);
            }
        });
        tx
    }
}
