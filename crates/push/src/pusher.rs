//! [`Pusher`]: the service. Messages offered by the hub's tap wait in a bounded queue (full:
//! dropped and counted, never waited for); a dispatcher claims each (one node of a cluster
//! pushes it), picks the devices owed it — its audience's users, or the users whose roles may
//! read the topic; of the types each device wants; offline users only, unless `always`;
//! within each user's rate — and queues one job per device; a fixed number of workers send
//! them, retry what the service asks to be retried (its `Retry-After`, else backoff), and
//! forget devices the service says are gone.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::Digest as _;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::device::{Device, Invalid, Registration, Rules};
use crate::send::{Apns, FcmAccount, Job, Outcome, Sender};
use crate::store::{Presence, Registry, Store};
use crate::webpush::{MAX_PAYLOAD, Vapid};

/// When a user's devices get a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only while the user has no WebSocket or event stream open on any node.
    Offline,
    /// For every message owed, connected or not.
    Always,
}

/// What push needs to know. [`PushConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The message types pushed (`type` of the frame).
    pub types: Vec<String>,
    /// Offline users only, or always.
    pub when: When,
    /// How long a push service may hold a push for an unreachable device.
    pub ttl: Duration,
    /// Messages waiting to be dispatched, and pushes waiting to be sent (each bound).
    pub queue: usize,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Pushes per user per minute; past it, dropped (counted).
    pub per_user_per_minute: u32,
    /// Devices per user.
    pub max_devices: usize,
    /// `http://` endpoints on loopback are accepted (tests only).
    pub insecure_endpoints: bool,
    /// Web Push's keys.
    pub vapid: Option<Vapid>,
    /// FCM's service account and API base URL.
    pub fcm: Option<(FcmAccount, String)>,
    /// APNs' key and identifiers.
    pub apns: Option<Apns>,
    /// A CA (PEM) trusted besides the public roots (a private push gateway, a test's).
    pub extra_ca: Option<Vec<u8>>,
    /// How often the devices are read again from the store (a cluster's other nodes add them).
    pub refresh: Duration,
}

impl PushConfig {
    /// The defaults: `types`, offline users, a day of TTL, 10,000 queued, 32 in flight, 30
    /// per user per minute, 10 devices per user, the store read every 2 s.
    pub fn new(types: Vec<String>) -> Self {
        Self {
            types,
            when: When::Offline,
            ttl: Duration::from_secs(24 * 3600),
            queue: 10_000,
            concurrency: 32,
            per_user_per_minute: 30,
            max_devices: 10,
            insecure_endpoints: false,
            vapid: None,
            fcm: None,
            apns: None,
            extra_ca: None,
            refresh: Duration::from_secs(2),
        }
    }
}

/// One message the hub sequenced, as push sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Unique across the cluster (`topic:epoch:seq`): the claim's key.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its frame's `type`.
    pub type_name: String,
    /// The frame as the WebSocket carries it (JSON).
    pub frame: Bytes,
    /// Its audience (`None`: everyone who may read the topic): users, roles.
    pub audience: Option<(Vec<String>, Vec<String>)>,
    /// Its state key (one collapse key per state key), if any.
    pub key: Option<String>,
    /// A failure or a critical alert: `Urgency: high`.
    pub high: bool,
}

/// Who may read a topic, by roles (the server's topic roles).
pub type MayRead = Arc<dyn Fn(&str, &[String]) -> bool + Send + Sync>;

/// Push's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushStats {
    /// Pushes a service accepted.
    pub sent: u64,
    /// Pushes not delivered, by reason: `gone`, `refused`, `retries_exhausted`,
    /// `rate_limited`, `queue_full`, `too_large`.
    pub failed: Vec<(&'static str, u64)>,
    /// Devices forgotten because their service said they are gone.
    pub devices_removed: u64,
    /// Pushes waiting to be sent now.
    pub queued: u64,
    /// Devices registered (this node's copy).
    pub devices: u64,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The request names a bad field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The user has the most devices allowed.
    #[error("at most {0} devices per user; remove one first")]
    TooMany(usize),
    /// The store did not answer.
    #[error("the registrations store: {0}")]
    Store(String),
}

const REASONS: [&str; 6] =
    ["gone", "refused", "retries_exhausted", "rate_limited", "queue_full", "too_large"];

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: [AtomicU64; 6],
    removed: AtomicU64,
}

impl Counters {
    fn failed(&self, reason: &'static str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A job for a worker: whose device, what, and how many times it was tried.
struct Work {
    user: String,
    device: Device,
    job: Arc<Job>,
    attempt: u32,
}

struct Inner {
    config: PushConfig,
    store: Arc<dyn Store>,
    presence: Arc<dyn Presence>,
    may_read: MayRead,
    sender: Sender,
    registry: RwLock<Arc<Registry>>,
    jobs: mpsc::Sender<Work>,
    counters: Counters,
    /// Per-user push rate; pruned to the users seen recently at every refresh.
    limiter: DefaultKeyedRateLimiter<String>,
    stop: CancellationToken,
}

/// The push service (see the module docs). Cheap to clone; stops when the last clone goes.
#[derive(Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
    messages: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").field("types", &self.inner.config.types).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Pusher {
    /// Starts the service (its dispatcher, workers and refresh) on the current runtime.
    pub fn start(
        config: PushConfig,
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
        may_read: MayRead,
    ) -> Result<Self, String> {
        let sender = Sender::new(
            config.vapid.clone(),
            config.fcm.clone(),
            config.apns.clone(),
            config.extra_ca.as_deref(),
        )?;
        let (messages, inbox) = mpsc::channel(config.queue.max(1));
        let (jobs, job_inbox) = mpsc::channel(config.queue.max(1));
        let per_minute =
            NonZeroU32::new(config.per_user_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let inner = Arc::new(Inner {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            config,
            store,
            presence,
            may_read,
            sender,
            registry: RwLock::new(Arc::default()),
            jobs,
            counters: Counters::default(),
            stop: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&inner);
        let stop = inner.stop.clone();
        let concurrency = inner.config.concurrency.max(1);
        // Push runs on a thread of its own at a lower priority: its cryptography (two P-256
        // multiplications per Web Push) and its dispatching never take the CPU from delivery;
        // on a busy server push gets what delivery leaves (and about a tenth of a saturated
        // core), its bounded queues absorbing the rest.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("push: cannot start its runtime: {e}"))?;
        std::thread::Builder::new()
            .name("modelcast-push".into())
            .spawn(move || {
                lower_priority();
                runtime.block_on(async move {
                    tokio::spawn(dispatch(weak.clone(), inbox, stop.clone()));
                    let job_inbox = Arc::new(Mutex::new(job_inbox));
                    for _ in 0..concurrency {
                        tokio::spawn(work(weak.clone(), job_inbox.clone(), stop.clone()));
                    }
                    tokio::spawn(refresh(weak, stop.clone()));
                    stop.cancelled().await;
                });
            })
            .map_err(|e| format!("push: cannot start its thread: {e}"))?;
        Ok(Self { inner, messages })
    }

    /// The VAPID public key browsers subscribe with, when Web Push is on.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.inner.config.vapid.as_ref().map(Vapid::public_key)
    }

    /// Whether any device is registered (this node's copy of the registrations): without one,
    /// nothing is worth offering.
    pub fn has_devices(&self) -> bool {
        !self.inner.registry.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Whether messages of `type_name` are pushed.
    pub fn pushes(&self, type_name: &str) -> bool {
        self.inner.config.types.iter().any(|t| t == type_name)
    }

    /// Offers a sequenced message: queued at once, or dropped (counted) when the queue is
    /// full. Never waits.
    pub fn offer(&self, message: Message) {
        if self.messages.try_send(message).is_err() {
            self.inner.counters.failed("queue_full");
        }
    }

    /// Registers a device of `user` (who holds `roles` now).
    pub async fn register(
        &self,
        user: &str,
        roles: Vec<String>,
        registration: Registration,
    ) -> Result<Device, RegisterError> {
        let config = &self.inner.config;
        let rules = Rules {
            insecure_endpoints: config.insecure_endpoints,
            types: &config.types,
            web: config.vapid.is_some(),
            fcm: config.fcm.is_some(),
            apns: config.apns.is_some(),
        };
        let device = registration.device(&rules, roles, unix_now() as i64)?;
        let stored = self.inner.store.put(user, device.clone(), config.max_devices).await;
        match stored {
            Ok(true) => {
                // A device belongs to one user: the browser or phone another user registered
                // before (a shared machine, a new sign-in) is no longer theirs.
                let registry = self.inner.store.all().await.map_err(RegisterError::Store)?;
                for (other, devices) in &registry {
                    if other != user && devices.iter().any(|d| d.id == device.id) {
                        let removed = self.inner.store.remove(other, &device.id).await;
                        removed.map_err(RegisterError::Store)?;
                    }
                }
                self.inner.reload().await;
                Ok(device)
            }
            Ok(false) => Err(RegisterError::TooMany(config.max_devices)),
            Err(err) => Err(RegisterError::Store(err)),
        }
    }

    /// `user`'s devices, from the store.
    pub async fn devices(&self, user: &str) -> Result<Vec<Device>, String> {
        Ok(self.inner.store.all().await?.remove(user).unwrap_or_default())
    }

    /// Removes `user`'s device `id`; whether it was registered.
    pub async fn unregister(&self, user: &str, id: &str) -> Result<bool, String> {
        let removed = self.inner.store.remove(user, id).await?;
        self.inner.reload().await;
        Ok(removed)
    }

    /// The counters now.
    pub fn stats(&self) -> PushStats {
        let c = &self.inner.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let registry = self.inner.registry.read().unwrap_or_else(|e| e.into_inner()).clone();
        PushStats {
            sent: n(&c.sent),
            failed: REASONS.iter().zip(&c.failed).map(|(r, a)| (*r, n(a))).collect(),
            devices_removed: n(&c.removed),
            queued: (self.inner.jobs.max_capacity() - self.inner.jobs.capacity()) as u64,
            devices: registry.values().map(|d| d.len() as u64).sum(),
        }
    }
}

impl Inner {
    /// Reads the devices again from the store.
    async fn reload(&self) {
        match self.store.all().await {
            Ok(registry) => {
                *self.registry.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registry)
            }
            Err(err) => tracing::warn!("push: cannot read the registrations: {err}"),
        }
    }

    /// The devices owed `message` by audience or topic roles and by their types, by user:
    /// borrowed from `registry` (a device is copied only when a push of it is queued).
    fn recipients<'r>(
        &self,
        registry: &'r Registry,
        message: &Message,
    ) -> Vec<(&'r str, Vec<&'r Device>)> {
        let mut out = Vec::new();
        for (user, devices) in registry {
            let owed: Vec<&Device> = devices
                .iter()
                .filter(|d| d.types.as_ref().is_none_or(|t| t.contains(&message.type_name)))
                .filter(|d| match &message.audience {
                    Some((users, roles)) => {
                        users.contains(user) || d.roles.iter().any(|r| roles.contains(r))
                    }
                    None => (self.may_read)(&message.topic, &d.roles),
                })
                .collect();
            if !owed.is_empty() {
                out.push((user.as_str(), owed));
            }
        }
        out
    }

    /// Picks `message`'s devices; when there are any, claims it (one node of a cluster pushes
    /// it), drops the users who are connected (`offline`), and queues a job per device within
    /// its user's rate.
    async fn dispatch_one(&self, message: Message) {
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut recipients = self.recipients(&registry, &message);
        tracing::trace!(id = %message.id, users = recipients.len(), "push: dispatching");
        if recipients.is_empty() {
            return;
        }
        match self.store.claim(&message.id).await {
            Ok(true) => {}
            Ok(false) => return, // another node pushes it
            Err(err) => {
                tracing::debug!("push: cannot claim {}: {err}", message.id);
                return;
            }
        }
        if self.config.when == When::Offline {
            let users: Vec<&str> = recipients.iter().map(|(user, _)| *user).collect();
            let online = self.presence.online(&users).await;
            let mut online = online.into_iter();
            recipients.retain(|_| !online.next().unwrap_or(false));
        }
        let Some(job) = self.job_of(&message) else { return };
        for (user, devices) in recipients {
            let user = user.to_owned();
            for device in devices {
                if self.limiter.check_key(&user).is_err() {
                    self.counters.failed("rate_limited");
                    continue;
                }
                let work = Work {
                    user: user.clone(),
                    device: device.clone(),
                    job: job.clone(),
                    attempt: 0,
                };
                if self.jobs.try_send(work).is_err() {
                    self.counters.failed("queue_full");
                }
            }
        }
    }

    /// The push of `message`: its frame, or — larger than one Web Push record — a short
    /// frame saying what it was (`truncated: true`; the app fetches the rest).
    fn job_of(&self, message: &Message) -> Option<Arc<Job>> {
        let frame: serde_json::Value = serde_json::from_slice(&message.frame).ok()?;
        let payload = if message.frame.len() <= MAX_PAYLOAD {
            message.frame.clone()
        } else {
            self.counters.failed("too_large");
            let short = serde_json::json!({
                "type": message.type_name, "topic": message.topic, "seq": frame.get("seq"),
                "truncated": true,
            });
            Bytes::from(short.to_string())
        };
        let collapse = message.key.as_ref().map(|key| {
            let digest = sha2::Sha256::digest(format!("{}\0{key}", message.topic).as_bytes());
            URL_SAFE_NO_PAD.encode(digest)[..32].to_owned()
        });
        Some(Arc::new(Job {
            payload,
            ttl: self.config.ttl.as_secs(),
            high: message.high,
            collapse,
            title: title_of(&message.type_name, &frame),
        }))
    }

    /// Sends one job; what the service answered decides what follows.
    async fn send(self: &Arc<Self>, work: Work) {
        match self.sender.send(&work.device.target, &work.job).await {
            Outcome::Sent => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Gone => {
                self.counters.failed("gone");
                match self.store.remove(&work.user, &work.device.id).await {
                    Ok(true) => {
                        self.counters.removed.fetch_add(1, Ordering::Relaxed);
                        self.reload().await;
                    }
                    Ok(false) => {}
                    Err(err) => tracing::warn!("push: cannot forget a gone device: {err}"),
                }
            }
            Outcome::Retry(after, why) if work.attempt < 4 => {
                let delay = after
                    .unwrap_or(Duration::from_secs(1 << work.attempt))
                    .min(Duration::from_secs(300));
                tracing::debug!(attempt = work.attempt, ?delay, "push: retrying ({why})");
                let me = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(me) = me.upgrade() {
                        let work = Work { attempt: work.attempt + 1, ..work };
                        if me.jobs.try_send(work).is_err() {
                            me.counters.failed("queue_full");
                        }
                    }
                });
            }
            Outcome::Retry(_, why) => {
                tracing::debug!("push: giving up after retries ({why})");
                self.counters.failed("retries_exhausted");
            }
            Outcome::Failed(why) => {
                tracing::debug!("push refused: {why}");
                self.counters.failed("refused");
            }
        }
    }
}

/// A notification's line: an alert's title, a download's or model's id and status, else the
/// type.
fn title_of(type_name: &str, frame: &serde_json::Value) -> String {
    let data = &frame["data"];
    let text = |k: &str| data.get(k).and_then(|v| v.as_str());
    let status = text("status").or_else(|| text("new_status"));
    match (text("title"), text("model_id"), status) {
        (Some(title), _, _) => title.to_owned(),
        (None, Some(model), Some(status)) => format!("{model}: {status}"),
        (None, Some(model), None) => format!("{model}: {type_name}"),
        _ => type_name.replace('_', " "),
    }
}

async fn dispatch(
    inner: std::sync::Weak<Inner>,
    mut inbox: mpsc::Receiver<Message>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = inbox.recv() => match message { Some(m) => m, None => return },
        };
        let Some(inner) = inner.upgrade() else { return };
        inner.dispatch_one(message).await;
    }
}

async fn work(
    inner: std::sync::Weak<Inner>,
    inbox: Arc<Mutex<mpsc::Receiver<Work>>>,
    stop: CancellationToken,
) {
    loop {
        let work = tokio::select! {
            () = stop.cancelled() => return,
            work = async { inbox.lock().await.recv().await } => match work { Some(w) => w, None => return },
        };
        let Some(inner) = inner.upgrade() else { return };
        inner.send(work).await;
    }
}

async fn refresh(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    loop {
        let every = match inner.upgrade() {
            Some(inner) => {
                inner.reload().await;
                // Users whose rate is back to full leave the limiter: it holds only the recent.
                inner.limiter.retain_recent();
                inner.limiter.shrink_to_fit();
                inner.config.refresh
            }
            None => return,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// This thread's nice value raised to [`PUSH_NICE`] (Linux: per thread). Best effort: where it
/// cannot be raised, push runs at the same priority as delivery.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(err) = rustix::process::setpriority_process(Some(tid), PUSH_NICE) {
            tracing::debug!("push: cannot lower its thread's priority: {err}");
        }
    }
}

/// The push thread's nice value: a CPU weight of about a tenth of delivery's (nice 0).
const PUSH_NICE: i32 = 10;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
