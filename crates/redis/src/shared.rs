//! What the engine's tasks share: the command connection, the names, the scripts, the health,
//! the settings, and the restart check that every task runs before Redis is used again after
//! it lost its script cache.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use modelcast_hub::new_epoch;
use modelcast_protocol::Topic;
use redis::aio::ConnectionManager;

use crate::health::Health;
use crate::names::Names;
use crate::scripts::{RestartCheck, Scripts};
use crate::target::{Target, address};

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
    /// The command connection to the primary now (replaced when Sentinel names another).
    conn: RwLock<ConnectionManager>,
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
    /// The Redis `run_id` the restart check last ran under.
    run_id: Mutex<String>,
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
        conn: ConnectionManager,
        target: Target,
        primary: String,
        names: Names,
        limits: Limits,
    ) -> Self {
        Self {
            conn: RwLock::new(conn),
            target,
            primary: Mutex::new(primary),
            names,
            scripts: Scripts::default(),
            health: Health::default(),
            limits,
            node_epoch: new_epoch(),
            run_id: Mutex::new(String::new()),
            candidate: Mutex::new(String::new()),
            checking: tokio::sync::Mutex::new(()),
        }
    }

    /// The command connection (a clone: cheap, shares the one connection).
    pub(crate) fn conn(&self) -> ConnectionManager {
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

    /// Asks where the primary is now (Sentinel: the sentinels; one Redis: always the same),
    /// moves the command connection there if it moved (said once, at warn), and returns a
    /// client for it (the follower's pub/sub connection).
    pub(crate) async fn follow_primary(&self) -> redis::RedisResult<redis::Client> {
        let client = self.target.primary().await?;
        if !self.follows_failovers() {
            return Ok(client);
        }
        let now = address(&client);
        let before = self.primary();
        if now != before {
            let conn = client.get_connection_manager_with_config(manager_config()).await?;
            *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
            *self.primary.lock().unwrap_or_else(|e| e.into_inner()) = now.clone();
            self.health.failovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                from = %before,
                to = %now,
                "redis sentinel names another primary (a failover): the engine moved its \
                 connections there and catches up from its log"
            );
        }
        Ok(client)
    }

    /// The cluster's epoch candidate (empty until the follower read it).
    pub(crate) fn candidate(&self) -> String {
        self.candidate.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_candidate(&self, epoch: String) {
        *self.candidate.lock().unwrap_or_else(|e| e.into_inner()) = epoch;
    }

    /// The Redis `run_id` the last restart check ran under.
    pub(crate) fn run_id(&self) -> String {
        self.run_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs the restart check on every topic (a topic last written under another Redis that
    /// could lose acknowledged writes gets a new epoch), then loads the scripts. In this order:
    /// a node whose `EVALSHA` succeeds knows some node checked first, so no append after a
    /// restart ever reuses a number of the lost tail under the old epoch.
    pub(crate) async fn restart_check(&self) -> redis::RedisResult<()> {
        let _one = self.checking.lock().await;
        let mut conn = self.conn();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .unwrap_or_default();
        let lossy = self.lossy().await;
        let check = RestartCheck { run_id: run_id.clone(), lossy, new_epoch: new_epoch() };
        let mut pipe = redis::pipe();
        for topic in Topic::ALL {
            pipe.add_command(self.scripts.restart_call(self.names.of(topic), &check));
        }
        let fenced: Vec<i64> = pipe.query_async(&mut conn).await?;
        for (topic, fenced) in Topic::ALL.into_iter().zip(fenced) {
            if fenced == 1 {
                self.health.fences.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    %topic,
                    new_epoch = %check.new_epoch,
                    "redis restarted (or failed over) without appendfsync always: it may have \
                     lost acknowledged messages, so the topic gets a new epoch (clients are told)"
                );
            }
        }
        let mut pipe = redis::pipe();
        for script in self.scripts.all() {
            pipe.add_command(script.load());
        }
        let shas: Vec<String> = pipe.query_async(&mut conn).await?;
        for (script, sha) in self.scripts.all().into_iter().zip(shas) {
            if !script.has_sha(&sha) {
                tracing::error!(script = script.name, %sha, "redis loaded the script under another SHA1");
            }
        }
        *self.run_id.lock().unwrap_or_else(|e| e.into_inner()) = run_id;
        Ok(())
    }

    /// Whether Redis can lose acknowledged writes on a crash: anything but `appendonly yes`
    /// with `appendfsync always` (and when its configuration cannot be read).
    async fn lossy(&self) -> bool {
        let mut conn = self.conn();
        let get = |name: &'static str| {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            cmd
        };
        let aof: redis::RedisResult<Vec<String>> = get("appendonly").query_async(&mut conn).await;
        let fsync: redis::RedisResult<Vec<String>> =
            get("appendfsync").query_async(&mut conn).await;
        !matches!((aof.as_deref(), fsync.as_deref()), (Ok([_, a]), Ok([_, f])) if a == "yes" && f == "always")
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

/// How the command connection behaves: fail fast (a second to connect, two to answer, one
/// retry), so a publish meets an unreachable Redis with a 503, not a wait.
pub(crate) fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// How often every topic's seq is compared with the node's, and the probes sent.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
