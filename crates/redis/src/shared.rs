//! What the engine's tasks share: the command connection, the names, the scripts, the health,
//! the settings, and the restart check that every task runs before Redis is used again after
//! it lost its script cache.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use modelcast_hub::{generation, new_epoch};
use modelcast_protocol::Topic;

use crate::conn::Conn;
use crate::health::Health;
use crate::names::Names;
use crate::scripts::{RestartCheck, Scripts};
use crate::target::{Target, address};

/// A topic's Redis `run_id` per [`Topic::index`] (in a cluster, its shard primary's).
type RunIds = [String; Topic::ALL.len()];

/// How long an idempotency key is remembered (the hub's rule, in Redis: a key with a TTL).
pub(crate) const IDEMPOTENCY_TTL_SECS: u64 = modelcast_hub::IDEMPOTENCY_TTL.as_secs();

/// The engine's settings (see [`crate::RedisSettings`]).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) history_size: usize,
    pub(crate) state_max_keys: usize,
    /// Replicas that must hold an append before it is acknowledged, and how long to wait.
    pub(crate) ack: Option<Ack>,
}

/// `WAIT` after each append: `replicas` must hold it within `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) replicas: usize,
    pub(crate) timeout: Duration,
}

/// The shared part of the engine.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The command connection to the primary now (replaced when Sentinel names another), or
    /// to the cluster.
    conn: RwLock<Conn>,
    /// Where Redis is.
    target: Target,
    /// The primary's address the command connection goes to.
    primary: Mutex<String>,
    pub(crate) names: Names,
    pub(crate) scripts: Scripts,
    pub(crate) health: Health,
    pub(crate) limits: Limits,
    /// The epoch a topic gets if this node appends to it first (the follower normally set the
    /// cluster's already).
    pub(crate) node_epoch: String,
    /// The Redis `run_id` the restart check last ran under, per topic.
    run_ids: Mutex<RunIds>,
    /// The highest generation of each topic's epochs this node has seen: an epoch below it
    /// came back (a failback) and is fenced. Kept in the node, where a returning primary
    /// cannot roll it back (clients keep theirs in their positions: see the follower).
    generations: Mutex<[u32; Topic::ALL.len()]>,
    /// The cluster's epoch for topics Redis has none for (`{prefix}:epoch`), read by the
    /// follower on each (re)connect.
    candidate: Mutex<String>,
    /// One restart check at a time (the appender and the follower may both find `NOSCRIPT`).
    checking: tokio::sync::Mutex<()>,
    /// A cluster's restart check skipped a topic whose shard did not answer: run it again
    /// once the shard answers (the follower's check), or a failover there goes unseen.
    pub(crate) recheck: std::sync::atomic::AtomicBool,
}

/// Whether a Redis error says the script cache is empty (restart, failover, flush) or that
/// Redis restarted since this node's restart check.
pub(crate) fn needs_restart_check(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        || err.code() == Some("RESTARTED")
        || err.to_string().contains("RESTARTED")
}

impl Shared {
    pub(crate) fn new(
        conn: Conn,
        target: Target,
        primary: String,
        names: Names,
        limits: Limits,
    ) -> Self {
        let scripts = Scripts::new(target.is_cluster());
        Self {
            conn: RwLock::new(conn),
            target,
            primary: Mutex::new(primary),
            names,
            scripts,
            health: Health::default(),
            limits,
            node_epoch: new_epoch(),
            run_ids: Mutex::new(RunIds::default()),
            generations: Mutex::new([0; Topic::ALL.len()]),
            candidate: Mutex::new(String::new()),
            checking: tokio::sync::Mutex::new(()),
            recheck: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The command connection (a clone: cheap, shares the one connection).
    pub(crate) fn conn(&self) -> Conn {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the primary can move (Redis Sentinel).
    pub(crate) fn follows_failovers(&self) -> bool {
        self.target.follows_failovers()
    }

    /// The primary's address the engine uses now.
    pub(crate) fn primary(&self) -> String {
        self.primary.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether Redis is a Redis Cluster (sharded pub/sub, a primary per shard).
    pub(crate) fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    /// Where Redis is.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Asks where the primary is now (Sentinel: the sentinels; one Redis: always the same),
    /// moves the command connection there if it moved (said once, at warn), and returns a
    /// client for it (the follower's pub/sub connection); `None` for a cluster.
    pub(crate) async fn follow_primary(&self) -> redis::RedisResult<Option<redis::Client>> {
        let Some(client) = self.target.primary().await? else { return Ok(None) };
        if !self.follows_failovers() {
            return Ok(Some(client));
        }
        let now = address(&client);
        let before = self.primary();
        if now != before {
            let conn =
                client.get_connection_manager_with_config(self.target.manager_config()).await?;
            *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Conn::Single(conn);
            *self.primary.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
            self.health.failovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                from = %before,
                to = %now,
                "redis sentinel names another primary (a failover): the engine moved its \
                 connections there and catches up from its log"
            );
        }
        Ok(Some(client))
    }

    /// The cluster's epoch candidate (empty until the follower read it).
    pub(crate) fn candidate(&self) -> String {
        self.candidate.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_candidate(&self, epoch: String) {
        *self.candidate.lock().unwrap_or_else(|e| e.into_inner()) = epoch;
    }

    /// The Redis `run_id` the last restart check of `topic` ran under.
    pub(crate) fn run_id(&self, topic: Topic) -> String {
        self.run_ids.lock().unwrap_or_else(|e| e.into_inner())[topic.index()].clone()
    }

    /// The address of the Redis that holds `topic` as this node last saw it ("" when not
    /// known: a cluster's slot map not read yet).
    pub(crate) fn address_of(&self, topic: Topic) -> String {
        if self.is_cluster() {
            self.health.place(topic).filter(|p| p != "?").unwrap_or_default()
        } else {
            self.primary()
        }
    }

    /// The highest generation of `topic`'s epochs this node has seen (0: none yet).
    pub(crate) fn highest_generation(&self, topic: Topic) -> u32 {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())[topic.index()]
    }

    /// Notes that `topic` had `epoch`; answers whether that epoch is older than one the node
    /// saw already (it came back: a failback to a primary with older data).
    pub(crate) fn saw_epoch(&self, topic: Topic, epoch: &str) -> bool {
        let seen = generation(epoch);
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let highest = &mut generations[topic.index()];
        let returned = seen < *highest;
        *highest = (*highest).max(seen);
        returned
    }

    /// The least generation a new epoch of `topic` gets: past every one the node has seen.
    pub(crate) fn min_generation(&self, topic: Topic) -> u32 {
        self.highest_generation(topic).saturating_add(1)
    }

    /// `topic`'s appends or checks failed with `err`: on a Redis Cluster only its shard is
    /// down (the other topics go on); on one Redis the engine is.
    pub(crate) fn topic_failed(&self, topic: Topic, err: &redis::RedisError) {
        if self.is_cluster() {
            self.health.set_topic(topic, Some(format!("redis: {err}")));
        } else {
            self.health.set_down(format!("redis: {err}"));
        }
    }

    /// Whether a failover or restart may have lost acknowledged appends (unless Redis itself
    /// cannot: `appendfsync always`): not when every append waited for a replica.
    pub(crate) fn waits_for_replicas(&self) -> bool {
        self.limits.ack.is_some()
    }

    /// Runs the restart check on every topic (a topic last written under another Redis that
    /// could lose acknowledged writes gets a new epoch), then loads the scripts. In this order:
    /// a node whose `EVALSHA` succeeds knows some node checked first, so no append after a
    /// restart ever reuses a number of the lost tail under the old epoch. The check of one
    /// event is one step in Redis (the script compares the topic's `run` with the `run_id` of
    /// the Redis it runs on), so however many nodes run it, one event makes one epoch.
    pub(crate) async fn restart_check(&self) -> redis::RedisResult<()> {
        let _one = self.checking.lock().await;
        let mut conn = self.conn();
        // A cluster's primaries now: a topic last written under one of them moved with its
        // slot (whole), not through a failover.
        let (live, addresses) = self.where_topics_are(&mut conn).await;
        let mut run_ids = self.run_ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut fenced: Vec<&str> = Vec::new();
        // Per topic, on the primary that holds it (one Redis: the same each time). Whether a
        // primary can lose writes is asked, and the scripts loaded, once per primary.
        let mut seen: Vec<(String, bool, Topic)> = Vec::new();
        let mut failed = None;
        for topic in Topic::ALL {
            let at = &addresses[topic.index()];
            match self.check_topic(&mut conn, topic, at, &live, &mut seen).await {
                Ok((done, run)) => {
                    fenced.extend(done.then_some(topic.as_str()));
                    run_ids[topic.index()] = run;
                }
                // On a cluster a shard that does not answer (failing over) is checked when it
                // answers again: its topics' appends meet `RESTARTED` until then.
                Err(err) if self.is_cluster() => {
                    self.topic_failed(topic, &err);
                    failed = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        self.recheck.store(failed.is_some(), std::sync::atomic::Ordering::SeqCst);
        if let Some(err) = failed
            && seen.is_empty()
        {
            return Err(err);
        }
        if !fenced.is_empty() {
            tracing::warn!(
                topics = %fenced.join(","),
                "redis restarted or failed over, and may have lost acknowledged messages (no \
                 appendfsync always, no replica acknowledgements): these topics get a new epoch; \
                 clients resuming across it are told (recovered: false)"
            );
        }
        for (_, _, topic) in seen {
            for script in self.scripts.all() {
                let sha = conn.on_primary_of(&self.names.of(topic).meta, &script.load()).await?;
                let sha: String = redis::from_redis_value(sha)?;
                if !script.has_sha(&sha) {
                    tracing::error!(script = script.name, %sha, "redis loaded the script under another SHA1");
                }
            }
        }
        let before = std::mem::replace(
            &mut *self.run_ids.lock().unwrap_or_else(|e| e.into_inner()),
            run_ids.clone(),
        );
        if self.is_cluster() {
            self.note_places(&mut conn).await;
            // A shard's primary that is another Redis now (a failover, a restart, a slot that
            // moved): said once per check, with the topics it holds.
            let moved: Vec<&str> = Topic::ALL
                .into_iter()
                .filter(|t| {
                    let (old, new) = (&before[t.index()], &run_ids[t.index()]);
                    !old.is_empty() && old != new
                })
                .map(Topic::as_str)
                .collect();
            if !moved.is_empty() {
                self.health.failovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    topics = %moved.join(","),
                    "redis cluster: these topics are on another primary now (a failover, a \
                     restart or a slot migration); the engine follows the new slot map and \
                     catches up from the log"
                );
            }
        }
        Ok(())
    }

    /// The restart check of one topic (see [`Shared::restart_check`]): whether it fenced, and
    /// the `run_id` it ran under. `seen` remembers, per primary, whether it can lose writes.
    async fn check_topic(
        &self,
        conn: &mut Conn,
        topic: Topic,
        address: &str,
        live: &[String],
        seen: &mut Vec<(String, bool, Topic)>,
    ) -> redis::RedisResult<(bool, String)> {
        let meta = &self.names.of(topic).meta;
        let run_id = run_id_of(conn, meta).await?;
        let lossy_restart = match seen.iter().find(|p| p.0 == run_id) {
            Some(known) => known.1,
            None => {
                let lossy = lossy(conn, meta).await;
                seen.push((run_id.clone(), lossy, topic));
                lossy
            }
        };
        // One Redis at a fixed address never fails over: any new run_id is a restart.
        let lossy_failover = match self.target.is_fixed() {
            true => lossy_restart,
            false => !self.waits_for_replicas(),
        };
        let min_generation = self.min_generation(topic);
        let check = RestartCheck {
            lossy_restart,
            lossy_failover,
            address,
            min_generation,
            primaries: live,
        };
        let cmd = self.scripts.restart_call(self.names.of(topic), &check);
        let (done, run, epoch): (i64, String, String) = cmd.query_async(conn).await?;
        if done == 1 {
            self.health.fences.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.saw_epoch(topic, &epoch);
        Ok((done == 1, run))
    }

    /// The `run_id`s of a cluster's primaries, and each topic's Redis address (per
    /// [`Topic::index`]). Without a readable slot map, no `run_id`s (no evidence of a
    /// migration: a topic on another Redis is then taken for a failover) and `?`s. One Redis
    /// or Sentinel: no `run_id`s, and the primary's address for every topic.
    async fn where_topics_are(&self, conn: &mut Conn) -> (Vec<String>, Vec<String>) {
        if !self.is_cluster() {
            return (Vec::new(), vec![self.primary(); Topic::ALL.len()]);
        }
        let unknown = vec!["?".to_owned(); Topic::ALL.len()];
        let places = match cluster_places(conn).await {
            Ok(places) => places,
            Err(err) => {
                tracing::debug!("cannot read the cluster's slot map: {err}");
                return (Vec::new(), unknown);
            }
        };
        let addresses = topic_primaries(conn, &self.names, &places).await.unwrap_or(unknown);
        (run_ids_of(conn, &places).await, addresses)
    }

    /// Where each topic of a cluster lives now, for the health report.
    async fn note_places(&self, conn: &mut Conn) {
        let places = match cluster_places(conn).await {
            Ok(places) => places,
            Err(err) => return tracing::debug!("cannot read the cluster's slot map: {err}"),
        };
        match topic_primaries(conn, &self.names, &places).await {
            Ok(primaries) => self.health.set_primaries(primaries),
            Err(err) => tracing::debug!("cannot read the topics' slots: {err}"),
        }
    }

    /// Runs `cmd` (an `EVALSHA`); after a `NOSCRIPT` or `RESTARTED`, the restart check, then
    /// once more.
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = self.conn();
        match cmd.query_async(&mut conn).await {
            Err(err) if needs_restart_check(&err) => {
                self.restart_check().await?;
                cmd.query_async(&mut conn).await
            }
            done => done,
        }
    }
}

/// A cluster's slot ranges and their primaries (`host`, `port`), from `CLUSTER SLOTS`.
async fn cluster_places(conn: &mut Conn) -> redis::RedisResult<Vec<(i64, i64, String, u16)>> {
    let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut owners = Vec::new();
    if let redis::Value::Array(ranges) = slots {
        for range in ranges {
            let redis::Value::Array(range) = range else { continue };
            if let [start, end, redis::Value::Array(primary), ..] = range.as_slice()
                && let [ip, port, ..] = primary.as_slice()
            {
                let ip: String = redis::from_redis_value_ref(ip)?;
                let port: u16 = redis::from_redis_value_ref(port)?;
                let start: i64 = redis::from_redis_value_ref(start)?;
                let end: i64 = redis::from_redis_value_ref(end)?;
                owners.push((start, end, ip, port));
            }
        }
    }
    Ok(owners)
}

/// Each topic's primary address in a cluster (per [`Topic::index`]): the slot of each topic's
/// keys in `places`.
async fn topic_primaries(
    conn: &mut Conn,
    names: &Names,
    places: &[(i64, i64, String, u16)],
) -> redis::RedisResult<Vec<String>> {
    let mut out = Vec::with_capacity(Topic::ALL.len());
    for topic in Topic::ALL {
        let mut keyslot = redis::cmd("CLUSTER");
        keyslot.arg("KEYSLOT").arg(&names.of(topic).meta);
        let slot: i64 = keyslot.query_async(conn).await?;
        let owner = places.iter().find(|(from, to, ..)| (*from..=*to).contains(&slot));
        out.push(owner.map_or_else(|| "?".to_owned(), |o| format!("{}:{}", o.2, o.3)));
    }
    Ok(out)
}

/// The `run_id`s of the primaries in `places` that answer (one that does not is no evidence
/// of a migration).
async fn run_ids_of(conn: &mut Conn, places: &[(i64, i64, String, u16)]) -> Vec<String> {
    let mut addresses: Vec<(&str, u16)> = places.iter().map(|p| (p.2.as_str(), p.3)).collect();
    addresses.sort_unstable();
    addresses.dedup();
    let mut out = Vec::new();
    for (host, port) in addresses {
        if let Ok(info) = conn.on_address(host, port, redis::cmd("INFO").arg("server")).await
            && let Ok(info) = redis::from_redis_value::<String>(info)
            && let Some(id) = run_id_in(&info)
        {
            out.push(id);
        }
    }
    out
}

/// The `run_id` of the Redis that holds `key`.
async fn run_id_of(conn: &mut Conn, key: &str) -> redis::RedisResult<String> {
    let info = conn.on_primary_of(key, redis::cmd("INFO").arg("server")).await?;
    let info: String = redis::from_redis_value(info)?;
    Ok(run_id_in(&info).unwrap_or_default())
}

/// The `run_id` line of an `INFO server` answer.
fn run_id_in(info: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|id| id.trim().to_owned())
}

/// Whether the Redis holding `key` can lose acknowledged writes on a crash: anything but
/// `appendonly yes` with `appendfsync always` (and when its configuration cannot be read).
async fn lossy(conn: &mut Conn, key: &str) -> bool {
    let mut get = async |name: &'static str| -> Option<String> {
        let value = conn.on_primary_of(key, redis::cmd("CONFIG").arg("GET").arg(name)).await;
        let pair: Vec<String> = redis::from_redis_value(value.ok()?).ok()?;
        pair.into_iter().nth(1)
    };
    let aof = get("appendonly").await;
    let fsync = get("appendfsync").await;
    !(aof.as_deref() == Some("yes") && fsync.as_deref() == Some("always"))
}

/// How often every topic's seq is compared with the node's, and the probes sent.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
