//! What the engine's tasks share: the command connection, the names, the scripts, the health,
//! the settings, and the restart check that every task runs before Redis is used again after
//! it lost its script cache.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use modelcast_hub::new_epoch;
use modelcast_protocol::Topic;

use crate::conn::Conn;
use crate::health::Health;
use crate::names::Names;
use crate::scripts::{RestartCheck, Scripts};
use crate::target::{Target, address, manager_config};

/// A topic's Redis `run_id` per [`Topic::index`] (in a cluster, its shard primary's).
type RunIds = [String; Topic::ALL.len()];

/// How long an idempotency key is remembered (the hub's rule, in Redis: a key with a TTL).
pub(crate) const IDEMPOTENCY_TTL_SECS: u64 = modelcast_hub::IDEMPOTENCY_TTL.as_secs();

/// The engine's settings (see [`crate::RedisSettings`]).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) history_size: usize,
    pub(crate) state_max_keys: usize,
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
    /// The cluster's epoch for topics Redis has none for (`{prefix}:epoch`), read by the
    /// follower on each (re)connect.
    candidate: Mutex<String>,
    /// One restart check at a time (the appender and the follower may both find `NOSCRIPT`).
    checking: tokio::sync::Mutex<()>,
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
            candidate: Mutex::new(String::new()),
            checking: tokio::sync::Mutex::new(()),
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
            let conn = client.get_connection_manager_with_config(manager_config()).await?;
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

    /// Runs the restart check on every topic (a topic last written under another Redis that
    /// could lose acknowledged writes gets a new epoch), then loads the scripts. In this order:
    /// a node whose `EVALSHA` succeeds knows some node checked first, so no append after a
    /// restart ever reuses a number of the lost tail under the old epoch.
    pub(crate) async fn restart_check(&self) -> redis::RedisResult<()> {
        let _one = self.checking.lock().await;
        let mut conn = self.conn();
        let new_epoch = new_epoch();
        let mut run_ids = RunIds::default();
        // Per topic, on the primary that holds it (one Redis: the same each time). Whether a
        // primary can lose writes is asked, and the scripts loaded, once per primary.
        let mut seen: Vec<(String, bool, Topic)> = Vec::new();
        for topic in Topic::ALL {
            let meta = &self.names.of(topic).meta;
            let info = conn.on_primary_of(meta, redis::cmd("INFO").arg("server")).await?;
            let info: String = redis::from_redis_value(info)?;
            let run_id = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|id| id.trim().to_owned())
                .unwrap_or_default();
            let lossy = match seen.iter().find(|p| p.0 == run_id) {
                Some(known) => known.1,
                None => {
                    let lossy = lossy(&mut conn, meta).await;
                    seen.push((run_id.clone(), lossy, topic));
                    lossy
                }
            };
            let check =
                RestartCheck { run_id: run_id.clone(), lossy, new_epoch: new_epoch.clone() };
            let cmd = self.scripts.restart_call(self.names.of(topic), &check);
            let fenced: i64 = cmd.query_async(&mut conn).await?;
            if fenced == 1 {
                self.health.fences.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    %topic,
                    %new_epoch,
                    "redis restarted (or failed over) without appendfsync always: it may have \
                     lost acknowledged messages, so the topic gets a new epoch (clients are told)"
                );
            }
            run_ids[topic.index()] = run_id;
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
            match primaries(&mut conn, &self.names).await {
                Ok(primaries) => self.health.set_primaries(primaries),
                Err(err) => tracing::debug!("cannot read the cluster's slot map: {err}"),
            }
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

/// Each topic's primary address in a cluster (per [`Topic::index`]): `CLUSTER SLOTS`, and the
/// slot of each topic's keys.
async fn primaries(conn: &mut Conn, names: &Names) -> redis::RedisResult<Vec<String>> {
    let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut owners: Vec<(i64, i64, String)> = Vec::new();
    if let redis::Value::Array(ranges) = slots {
        for range in ranges {
            let redis::Value::Array(range) = range else { continue };
            if let [start, end, redis::Value::Array(primary), ..] = range.as_slice()
                && let [ip, port, ..] = primary.as_slice()
            {
                let ip: String = redis::from_redis_value_ref(ip)?;
                let port: i64 = redis::from_redis_value_ref(port)?;
                let start: i64 = redis::from_redis_value_ref(start)?;
                let end: i64 = redis::from_redis_value_ref(end)?;
                owners.push((start, end, format!("{ip}:{port}")));
            }
        }
    }
    let mut out = Vec::with_capacity(Topic::ALL.len());
    for topic in Topic::ALL {
        let mut keyslot = redis::cmd("CLUSTER");
        keyslot.arg("KEYSLOT").arg(&names.of(topic).meta);
        let slot: i64 = keyslot.query_async(conn).await?;
        let owner = owners.iter().find(|(from, to, _)| (*from..=*to).contains(&slot));
        out.push(owner.map_or_else(|| "?".to_owned(), |o| o.2.clone()));
    }
    Ok(out)
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
