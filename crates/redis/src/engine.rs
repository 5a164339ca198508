//! [`RedisEngine`]: the [`Engine`] the hub appends to and is fed by, and its tasks.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelcast_hub::{Append, Appended, Claim, Engine, Error as HubError, Pending, Replica};
use modelcast_protocol::{Since, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::follower::{TopicHandle, Work, topic_channels};
use crate::health::HealthReport;
use crate::names::Names;
use crate::queued::Queued;
use crate::scripts::clear_call;
use crate::shared::{Ack, IDEMPOTENCY_TTL_SECS, Limits, Shared};
use crate::target::{RedisTls, Target, Where};

/// What the engine needs to know. Build with [`RedisSettings::new`] and the setters.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    url: String,
    sentinels: Vec<String>,
    master: Option<String>,
    sentinel_password: Option<String>,
    cluster: Vec<String>,
    prefix: String,
    node: String,
    history_size: usize,
    state_max_keys: usize,
    append_queue: usize,
    ack: Option<Ack>,
    tls: Option<RedisTls>,
}

impl RedisSettings {
    /// Redis at `url` (e.g. `redis://127.0.0.1:6379/0`), keys under `prefix` (several clusters
    /// can share one Redis), this node named `node` (its probes); history of 1,000 messages
    /// and state of 10,000 keys per topic, 10,000 appends queued at most.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sentinels: Vec::new(),
            master: None,
            sentinel_password: None,
            cluster: Vec::new(),
            prefix: prefix.into(),
            node: node.into(),
            history_size: 1000,
            state_max_keys: 10_000,
            append_queue: 10_000,
            ack: None,
            tls: None,
        }
    }

    /// Redis Sentinel: the primary is the one these sentinels (`host:port`) name for `master`,
    /// asked again whenever a connection fails or the primary turns read-only (a failover);
    /// the URL still gives the database, password and TLS of the data connections.
    /// `password` is the sentinels' own, if they have one.
    pub fn sentinel(
        mut self,
        sentinels: Vec<String>,
        master: impl Into<String>,
        password: Option<String>,
    ) -> Self {
        self.sentinels = sentinels;
        self.master = Some(master.into());
        self.sentinel_password = password;
        self
    }

    /// Redis Cluster, found through these seed nodes (`host:port`): each topic lives on the
    /// shard of its hash tag (its name), its messages are published sharded (`SPUBLISH`) and
    /// followed with sharded subscriptions; the URL still gives the user and password.
    pub fn cluster(mut self, seeds: Vec<String>) -> Self {
        self.cluster = seeds;
        self
    }

    /// Messages kept per topic in the log (a capped stream).
    pub fn history_size(mut self, n: usize) -> Self {
        self.history_size = n;
        self
    }

    /// Keys with retained state per topic; past it the least recently updated leaves.
    pub fn state_max_keys(mut self, n: usize) -> Self {
        self.state_max_keys = n;
        self
    }

    /// TLS beyond what a `rediss://` URL says (a private CA, a client certificate), for every
    /// connection the engine makes. Set without `rediss://`, the engine refuses to start
    /// rather than connect in plain text.
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Acknowledge an append only once `replicas` replicas of its primary hold it (`WAIT`):
    /// past `timeout` the publish is refused as unavailable (retry with the same idempotency
    /// key; the message may have gone out). A failover to such a replica loses nothing
    /// acknowledged, so it keeps the topics' epochs. 0 (the default): acknowledged once the
    /// primary has it.
    pub fn ack_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.ack = (replicas > 0).then_some(Ack { replicas, timeout });
        self
    }

    /// Appends that may wait for Redis; past it an append is refused at once (a retryable
    /// [`HubError::Unavailable`]).
    pub fn append_queue(mut self, n: usize) -> Self {
        self.append_queue = n.max(1);
        self
    }
}

/// The Redis engine (see the crate docs). Made by [`RedisEngine::start`]; stopped (its tasks
/// ended, queued appends answered) by [`RedisEngine::stop`].
pub struct RedisEngine {
    shared: Arc<Shared>,
    appends: mpsc::Sender<Queued>,
    append_queue: usize,
    topics: Vec<TopicHandle>,
    /// Hands the hub's replica to the follower (once).
    attach: Mutex<Option<oneshot::Sender<Replica>>>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.shared.names.prefix)
            .field("health", &self.shared.health.report())
            .finish_non_exhaustive()
    }
}

impl RedisEngine {
    /// Connects to Redis (failing if it cannot be reached now), checks its configuration and
    /// whether it restarted since the cluster last wrote, and starts the engine's tasks. A
    /// Redis that is reachable but refuses (a password, a read-only replica) does not stop
    /// the start: the engine is down, says why, and comes up when Redis lets it.
    pub async fn start(settings: RedisSettings) -> Result<Arc<Self>> {
        let connect =
            |source: redis::RedisError| Error::Connect { url: redact(&settings.url), source };
        let at = Where {
            url: &settings.url,
            sentinels: &settings.sentinels,
            master: settings.master.as_deref(),
            sentinel_password: settings.sentinel_password.as_deref(),
            cluster: &settings.cluster,
            tls: settings.tls.as_ref(),
        };
        let waits = settings.ack.map_or(Duration::ZERO, |ack| ack.timeout);
        let target = Target::new(at, waits).map_err(connect)?;
        let (mut conn, primary) = target.connect().await.map_err(connect)?;
        let names = Names::new(&settings.prefix, &settings.node);
        let warning = eviction_warning(&mut conn, &names).await;
        if let Some(warning) = &warning {
            tracing::warn!("{warning}");
        }
        let limits = Limits {
            history_size: settings.history_size,
            state_max_keys: settings.state_max_keys,
            ack: settings.ack,
        };
        let shared = Arc::new(Shared::new(conn, target, primary, names, limits));
        shared.health.set_warning(warning);
        if let Err(err) = shared.restart_check().await {
            shared.health.set_down(format!("redis: {err}"));
        }
        let (appends, queue) = mpsc::channel(settings.append_queue);
        let (handles, inboxes) = topic_channels();
        let (attach, attached) = oneshot::channel();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(crate::appender::run(shared.clone(), queue, stop.clone()));
        tracker.spawn(crate::follower::run(
            shared.clone(),
            attached,
            inboxes,
            handles.clone(),
            tracker.clone(),
            stop.clone(),
        ));
        Ok(Arc::new(Self {
            shared,
            appends,
            append_queue: settings.append_queue,
            topics: handles,
            attach: Mutex::new(Some(attach)),
            stop,
            tracker,
        }))
    }

    /// What else a cluster keeps in Redis: push registrations, claims and presence.
    pub fn kv(&self) -> crate::Kv {
        crate::Kv::new(self.shared.clone())
    }

    /// The engine's health now.
    pub fn health(&self) -> HealthReport {
        self.shared.health.report()
    }

    /// The topology (`single`, `sentinel` or `cluster`) and the primary's address the engine
    /// uses now (`host:port`; a cluster's seed nodes).
    pub fn topology(&self) -> (&'static str, String) {
        let kind = if self.shared.is_cluster() {
            "cluster"
        } else if self.shared.follows_failovers() {
            "sentinel"
        } else {
            "single"
        };
        (kind, self.shared.primary())
    }

    /// Stops the engine's tasks and waits for them: appends still queued are answered
    /// unavailable; nothing runs after this returns.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl RedisEngine {
    /// One message on its way to Redis: queued (bounded: full is a refusal at once).
    fn append_one(&self, append: Append) -> Appended {
        let (payload, state) = append.wire.encode();
        let (reply, pending) = Pending::new();
        let topic = append.topic;
        let idempotency_key = append.idempotency_key;
        match self.appends.try_send(Queued { topic, payload, state, idempotency_key, reply }) {
            Ok(()) => Appended::Pending(pending),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.health.appends_refused_full.fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "{} appends are waiting for redis already (it is slow): retry shortly",
                    self.append_queue
                );
                Appended::Done(Err(HubError::Unavailable(message)))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Appended::Done(Err(HubError::Unavailable("the server is stopping".into())))
            }
        }
    }
}

impl Engine for RedisEngine {
    fn attach(&self, replica: Replica) {
        match self.attach.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(attach) => {
                let _ = attach.send(replica);
            }
            None => tracing::error!("a redis engine serves one hub; a second attach was ignored"),
        }
    }

    fn append(&self, run: Vec<Append>) -> Vec<Appended> {
        run.into_iter().map(|append| self.append_one(append)).collect()
    }

    fn claim(&self, key: &str, request: &str) -> Pending<Claim> {
        let (tx, pending) = Pending::new();
        let shared = self.shared.clone();
        let (key, request) = (key.to_owned(), request.to_owned());
        self.tracker.spawn(async move {
            // One atomic command (Redis 7): set if absent, and say what was there.
            let mut cmd = redis::cmd("SET");
            cmd.arg(shared.names.claim(&key))
                .arg(&request)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(IDEMPOTENCY_TTL_SECS);
            let mut conn = shared.conn();
            let known: redis::RedisResult<Option<String>> = cmd.query_async(&mut conn).await;
            let answer = match known {
                Ok(None) => Ok(Claim::New),
                Ok(Some(known)) if known == request => Ok(Claim::Retry),
                Ok(Some(_)) => Err(HubError::IdempotencyConflict { key }),
                Err(err) => Err(HubError::Unavailable(format!("redis: {err}"))),
            };
            let _ = tx.send(answer);
        });
        pending
    }

    fn clear(&self, topic: Topic, key: String) -> Pending<bool> {
        let (tx, pending) = Pending::new();
        let shared = self.shared.clone();
        self.tracker.spawn(async move {
            let cmd = clear_call(&shared.scripts, shared.names.of(topic), &key);
            let result: redis::RedisResult<i64> = shared.eval(&cmd).await;
            let _ =
                tx.send(result.map(|n| n == 1).map_err(|e| HubError::Unavailable(e.to_string())));
        });
        pending
    }

    fn unavailable(&self, topic: Option<Topic>) -> Option<String> {
        self.shared.health.unavailable(topic)
    }

    fn reach(&self, topic: Topic, since: Option<&Since>) -> Pending<()> {
        let (reply, pending) = Pending::new();
        let work = Work { since: since.cloned(), reply };
        if let Err(err) = self.topics[topic.index()].work.try_send(work) {
            let message = match &err {
                mpsc::error::TrySendError::Full(_) => {
                    "this node is busy catching up: retry shortly"
                }
                mpsc::error::TrySendError::Closed(_) => "the server is stopping",
            };
            let _ = err.into_inner().reply.send(Err(HubError::Unavailable(message.into())));
        }
        pending
    }
}

/// Redis's eviction policy must be `noeviction`: an evicted key would silently drop history,
/// state or an idempotency key. Returns what is wrong, if anything.
/// On a cluster, every primary that holds a topic is asked; the first problem is said.
async fn eviction_warning(conn: &mut Conn, names: &Names) -> Option<String> {
    for topic in Topic::ALL {
        let warning = eviction_warning_of(conn, &names.of(topic).meta).await;
        if warning.is_some() {
            return warning;
        }
    }
    None
}

/// [`eviction_warning`] of the Redis that holds `key`.
async fn eviction_warning_of(conn: &mut Conn, key: &str) -> Option<String> {
    let reply = conn
        .on_primary_of(key, redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
        .await
        .and_then(|v| Ok(redis::from_redis_value::<Vec<String>>(v)?));
    match reply.as_deref() {
        Ok([_, policy]) if policy == "noeviction" => None,
        Ok([_, policy]) => Some(format!(
            "redis maxmemory-policy is `{policy}`, not `noeviction`: under memory pressure Redis \
             would silently drop history, current state or idempotency keys; set \
             `maxmemory-policy noeviction`"
        )),
        Ok(_) => Some("redis did not report maxmemory-policy; make sure it is `noeviction`".into()),
        Err(err) => Some(format!(
            "cannot read redis maxmemory-policy ({err}); make sure it is `noeviction`"
        )),
    }
}

/// `url` with its password hidden, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
