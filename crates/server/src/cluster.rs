//! The Redis engine: several modelcast nodes, one `seq` per topic, history and retained state
//! that outlive any node.
//!
//! Per topic `T` (the topic is the Redis Cluster hash tag, so one topic's keys share a slot):
//! `{prefix}:{T}:meta` (hash: `epoch`, `seq`), `{prefix}:{T}:log` (stream, entry id `0-<seq>`,
//! fields `p` payload and `t` publish time in ms, capped at `history_size`), `{prefix}:{T}:ret`
//! (hash: state key → `seq\nms\npayload`), `{prefix}:{T}:reto` (sorted set: state key by the
//! seq of its newest message, to evict the least recently updated past
//! `MODELCAST_STATE_MAX_KEYS`), `{prefix}:{T}:idem:<key>` (idempotency keys) and the channel
//! `{prefix}:{T}:ch`. One Lua script appends atomically: epoch, `HINCRBY`,
//! `XADD`, retained state, `PUBLISH` `m\n<epoch>\n<seq>\n<ms>\n<payload>`.
//!
//! Every node, the publishing one included, applies messages from the channel in `seq` order
//! (the hub's `Replica`); a hole (`seq > last + 1`), a pub/sub reconnect, a periodic check of
//! every topic's `seq`, or a client asking for a position the node has not reached triggers
//! one stream read for the topic, shared by all its local subscribers. A probe message on a
//! node's own channel detects a pub/sub connection that is open but delivers nothing. A log
//! whose `seq` went backwards under the same epoch (Redis lost its tail) gets a new epoch
//! rather than reused numbers.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use modelcast_hub::{
    Append, Applied, Engine, Error as HubError, Logged, Pending, Replica, StateChange, new_epoch,
};
use modelcast_protocol::Topic;
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Appends a message: see the module docs.
const APPEND: &str = r#"
if ARGV[7] == '1' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return tonumber(prev) end
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '0-' .. seq, 'p', ARGV[3], 't', ARGV[4])
for i = 9, #ARGV, 3 do
  if ARGV[i] == 'k' then
    redis.call('HSET', KEYS[3], ARGV[i + 1], seq .. '\n' .. ARGV[4] .. '\n' .. ARGV[i + 2])
    redis.call('ZADD', KEYS[5], seq, ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[3], ARGV[i + 1])
    redis.call('ZREM', KEYS[5], ARGV[i + 1])
  end
end
while redis.call('ZCARD', KEYS[5]) > tonumber(ARGV[8]) do
  local oldest = redis.call('ZPOPMIN', KEYS[5])
  redis.call('HDEL', KEYS[3], oldest[1])
end
redis.call('PUBLISH', ARGV[1], 'm\n' .. epoch .. '\n' .. seq .. '\n' .. ARGV[4] .. '\n' .. ARGV[3])
if ARGV[7] == '1' then redis.call('SET', KEYS[4], seq, 'EX', ARGV[6]) end
return seq
"#;

/// Reads a topic: its epoch (set to the candidate if it has none), newest seq, the log from a
/// seq, and (if asked) the retained state — one consistent snapshot.
const SNAPSHOT: &str = r#"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local entries = redis.call('XRANGE', KEYS[2], '0-' .. ARGV[2], '+', 'COUNT', ARGV[4])
local state = {}
if ARGV[3] == '1' then state = redis.call('HGETALL', KEYS[3]) end
return {meta[1], meta[2] or '0', entries, state}
"#;

/// The rollback fence: a new epoch when the log's seq is below what a node already applied.
/// `ARGV[4] == '1'`: unconditionally (a node saw a reused seq), numbering continuing above
/// both Redis's seq and the node's.
const FENCE: &str = r#"
local e = redis.call('HGET', KEYS[1], 'epoch')
local s = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local min = tonumber(ARGV[2])
if e == ARGV[1] and (ARGV[4] == '1' or s < min) then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'seq', math.max(s, min))
  return 1
end
return 0
"#;

/// Clears a key's retained state and tells every node.
const CLEAR: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', ARGV[1], 'c\n' .. ARGV[2])
  return 1
end
return 0
"#;

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 600;
/// How often every topic's seq is compared with the node's, and the pub/sub probe sent.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Probes unanswered for this many checks mean the pub/sub connection is wedged.
const PROBE_PATIENCE: u64 = 3;

/// One topic's Redis names (the topic in braces: the Redis Cluster hash tag).
#[derive(Debug)]
struct TopicKeys {
    meta: String,
    log: String,
    ret: String,
    /// The retained keys by the seq of their newest message (a sorted set): the least recently
    /// updated leaves first when the topic holds `MODELCAST_STATE_MAX_KEYS`, as on every node.
    order: String,
    channel: String,
    /// `<idem><key>` is an idempotency key's record.
    idem: String,
}

/// Every name the engine uses, made once at start-up.
#[derive(Debug)]
struct Keys {
    prefix: String,
    topics: Vec<TopicKeys>,
    /// The cluster's epoch for topics Redis has none for.
    epoch: String,
    /// This node's probe channel.
    probe: String,
    /// This node's write probe (a key that expires).
    alive: String,
}

impl Keys {
    fn new(prefix: &str, node: &str) -> Self {
        let topics = Topic::ALL
            .iter()
            .map(|t| {
                let base = format!("{prefix}:{{{}}}:", t.as_str());
                TopicKeys {
                    meta: format!("{base}meta"),
                    log: format!("{base}log"),
                    ret: format!("{base}ret"),
                    order: format!("{base}reto"),
                    channel: format!("{base}ch"),
                    idem: format!("{base}idem:"),
                }
            })
            .collect();
        Keys {
            prefix: prefix.to_owned(),
            topics,
            epoch: format!("{prefix}:epoch"),
            probe: format!("{prefix}:probe:{node}"),
            alive: format!("{prefix}:alive:{node}"),
        }
    }

    fn of(&self, topic: Topic) -> &TopicKeys {
        &self.topics[topic.index()]
    }

    fn topic_of_channel(&self, channel: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| self.of(*t).channel == channel)
    }
}

/// The engine's health, shared with its tasks and the server's probes.
#[derive(Debug, Default)]
pub(crate) struct Health {
    up: AtomicBool,
    reason: Mutex<String>,
    /// What is wrong with Redis's configuration but does not stop the engine (found at start).
    warning: Mutex<Option<String>>,
    /// Appends that failed (Redis unreachable or erroring).
    pub(crate) append_failures: AtomicU64,
    /// Topic repairs from the log (holes, reconnects, checks).
    pub(crate) repairs: AtomicU64,
    /// Topic resets (new epoch, or a hole the log no longer held).
    pub(crate) resets: AtomicU64,
    /// Pub/sub reconnects.
    pub(crate) reconnects: AtomicU64,
    /// Whether the node's pub/sub connection is subscribed and caught up (messages flow).
    pub(crate) following: AtomicBool,
}

impl Health {
    fn set_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!("redis engine is up");
        }
    }
    /// The engine cannot take appends now, for `reason`: logged at warn when it goes down and
    /// whenever the reason changes (once, not per retry), so an operator sees why from the
    /// log alone — also when it never came up (a `NOAUTH` or a read-only replica from start).
    fn set_down(&self, reason: String) {
        let was_up = self.up.swap(false, Ordering::SeqCst);
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if was_up || *current != reason {
            tracing::warn!(%reason, "redis engine is down: publishes are refused (503) until it recovers");
        }
        *current = reason;
    }
    /// Whether the engine is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
    fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// What is wrong with Redis's configuration, if anything (shown by `/readyz`).
    pub(crate) fn warning(&self) -> Option<String> {
        self.warning.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Redis's eviction policy must be `noeviction`: an evicted key would silently drop history,
/// state or an idempotency key. Returns what is wrong, if anything.
async fn eviction_warning(conn: &mut ConnectionManager) -> Option<String> {
    let reply: redis::RedisResult<Vec<String>> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(conn).await;
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

/// The Redis engine (see the module docs).
pub(crate) struct RedisEngine {
    conn: ConnectionManager,
    appends: mpsc::UnboundedSender<Append>,
    catch_up: mpsc::UnboundedSender<Topic>,
    /// Hands the hub's replica to the follower (once).
    attach: Mutex<Option<oneshot::Sender<Replica>>>,
    keys: Arc<Keys>,
    pub(crate) health: Arc<Health>,
}

impl fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.keys.prefix)
            .field("up", &self.health.is_up())
            .finish_non_exhaustive()
    }
}

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) node: String,
    pub(crate) history_size: usize,
    pub(crate) state_max_keys: usize,
}

impl RedisEngine {
    /// Connects to Redis (failing if it cannot be reached now) and starts the engine's tasks,
    /// which stop with `stop`.
    pub(crate) async fn start(
        settings: RedisSettings,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = client.get_connection_manager_with_config(config).await?;
        let keys = Arc::new(Keys::new(&settings.prefix, &settings.node));
        let health = Arc::new(Health::default());
        if let Some(warning) = eviction_warning(&mut conn).await {
            tracing::warn!("{warning}");
            *health.warning.lock().unwrap_or_else(|e| e.into_inner()) = Some(warning);
        }
        let (appends, appends_rx) = mpsc::unbounded_channel();
        let (catch_up, catch_up_rx) = mpsc::unbounded_channel();
        let (attach, attached) = oneshot::channel();
        let appender = Appender {
            keys: keys.clone(),
            conn: conn.clone(),
            health: health.clone(),
            history_size: settings.history_size,
            state_max_keys: settings.state_max_keys,
            node_epoch: new_epoch(),
        };
        tokio::spawn(appender.run(appends_rx, stop.clone()));
        let follower = Follower {
            client,
            keys: keys.clone(),
            conn: conn.clone(),
            health: health.clone(),
            history_size: settings.history_size,
            candidate: String::new(),
        };
        tokio::spawn(follower.run(attached, catch_up_rx, stop));
        Ok(Arc::new(Self {
            conn,
            appends,
            catch_up,
            attach: Mutex::new(Some(attach)),
            keys,
            health,
        }))
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

    fn append(&self, append: Append) {
        if let Err(mpsc::error::SendError(append)) = self.appends.send(append) {
            let _ = append.reply.send(Err(HubError::Unavailable("the server is stopping".into())));
        }
    }

    fn clear(&self, topic: Topic, key: String) -> Pending<bool> {
        let (tx, pending) = Pending::new();
        let mut conn = self.conn.clone();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            let names = keys.of(topic);
            let result: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg(CLEAR)
                .arg(2)
                .arg(&names.ret)
                .arg(&names.order)
                .arg(&names.channel)
                .arg(&key)
                .query_async(&mut conn)
                .await;
            let _ =
                tx.send(result.map(|n| n == 1).map_err(|e| HubError::Unavailable(e.to_string())));
        });
        pending
    }

    fn unavailable(&self) -> Option<String> {
        (!self.health.is_up()).then(|| self.health.reason())
    }

    fn catch_up(&self, topic: Topic) {
        let _ = self.catch_up.send(topic);
    }
}

/// Sends appends to Redis in order, pipelined: everything queued while a round trip is in
/// flight goes in the next one.
struct Appender {
    keys: Arc<Keys>,
    conn: ConnectionManager,
    health: Arc<Health>,
    history_size: usize,
    state_max_keys: usize,
    /// The epoch a topic gets if Redis has none for it when this node appends first (the
    /// follower normally set it already).
    node_epoch: String,
}

impl Appender {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Append>, stop: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, 1024) => n,
                () = stop.cancelled() => 0,
            };
            if n == 0 {
                return;
            }
            let calls: Vec<_> = batch.iter().map(|a| self.call(a)).collect();
            let results = futures_util::future::join_all(calls).await;
            for (append, result) in batch.drain(..).zip(results) {
                let reply = match result {
                    Ok(seq) => Ok(seq),
                    Err(err) => {
                        // Unreachable, or refusing writes (a read-only replica, NOAUTH, OOM):
                        // publishes fail fast until the follower's write probe succeeds.
                        self.health.append_failures.fetch_add(1, Ordering::Relaxed);
                        self.health.set_down(format!("redis: {err}"));
                        tracing::debug!(topic = %append.topic, "append failed: {err}");
                        Err(HubError::Unavailable(format!("redis: {err}")))
                    }
                };
                let _ = append.reply.send(reply);
            }
        }
    }

    fn call(&self, append: &Append) -> impl Future<Output = redis::RedisResult<u64>> + use<> {
        let topic = append.topic;
        let idem = append.idempotency_key.as_deref();
        let names = self.keys.of(topic);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPEND)
            .arg(5)
            .arg(&names.meta)
            .arg(&names.log)
            .arg(&names.ret)
            .arg(format!("{}{}", names.idem, idem.unwrap_or("-")))
            .arg(&names.order)
            .arg(&names.channel)
            .arg(&self.node_epoch)
            .arg(append.payload.as_ref())
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(self.history_size.max(1))
            .arg(IDEMPOTENCY_TTL_SECS)
            .arg(if idem.is_some() { "1" } else { "0" })
            .arg(self.state_max_keys.max(1));
        for change in &append.state {
            match change {
                StateChange::Keep { key, payload } => {
                    cmd.arg("k").arg(key).arg(payload.as_ref());
                }
                StateChange::Clear { key } => {
                    cmd.arg("c").arg(key).arg("");
                }
            }
        }
        let mut conn = self.conn.clone();
        async move { cmd.query_async::<u64>(&mut conn).await }
    }
}

/// A topic read from Redis.
struct Snapshot {
    epoch: String,
    top: u64,
    entries: Vec<Logged>,
    retained: Vec<Logged>,
}

/// Follows the topics' channels and keeps the node's copy contiguous.
struct Follower {
    client: redis::Client,
    keys: Arc<Keys>,
    conn: ConnectionManager,
    health: Arc<Health>,
    history_size: usize,
    /// The cluster's epoch for topics Redis has none for (`{prefix}:epoch`).
    candidate: String,
}

/// Why [`Follower::follow`] returned.
enum Exit {
    Stop,
    Reconnect,
}

impl Follower {
    async fn run(
        mut self,
        attached: oneshot::Receiver<Replica>,
        mut catch_up: mpsc::UnboundedReceiver<Topic>,
        stop: CancellationToken,
    ) {
        let replica = tokio::select! {
            replica = attached => match replica {
                Ok(replica) => replica,
                Err(_) => return, // the engine was dropped without a hub
            },
            () = stop.cancelled() => return,
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe(&replica).await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    self.health.following.store(true, Ordering::SeqCst);
                    self.health.set_up();
                    if let Exit::Stop = self.follow(pubsub, &replica, &mut catch_up, &stop).await {
                        return;
                    }
                    self.health.following.store(false, Ordering::SeqCst);
                }
                Err(err) => self.health.set_down(format!("redis: {err}")),
            }
            self.health.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A pub/sub connection subscribed to every topic's channel and the probe, then every
    /// topic caught up: subscribed first, so nothing published in between is missed (it is
    /// in the snapshot, on the channel, or both).
    async fn subscribe(&mut self, replica: &Replica) -> redis::RedisResult<redis::aio::PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        let mut channels: Vec<&str> = self.keys.topics.iter().map(|t| t.channel.as_str()).collect();
        channels.push(&self.keys.probe);
        pubsub.subscribe(&channels).await?;
        self.sync_all(replica).await?;
        Ok(pubsub)
    }

    /// Applies channel messages, serves catch-up requests and checks every second, until the
    /// connection is lost or wedged (reconnect) or the server stops.
    async fn follow(
        &mut self,
        pubsub: redis::aio::PubSub,
        replica: &Replica,
        catch_up: &mut mpsc::UnboundedReceiver<Topic>,
        stop: &CancellationToken,
    ) -> Exit {
        let mut messages = pubsub.into_on_message();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut probes_sent, mut probes_seen) = (0u64, 0u64);
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return Exit::Stop,
                message = messages.next() => {
                    let Some(message) = message else {
                        // Publishing goes on (another connection); delivery resumes, with the
                        // hole filled from the log, once reconnected.
                        tracing::warn!("redis pub/sub connection lost; reconnecting");
                        return Exit::Reconnect;
                    };
                    let channel = message.get_channel_name();
                    if channel == self.keys.probe {
                        probes_seen = probes_sent;
                        continue;
                    }
                    match self.keys.topic_of_channel(channel) {
                        Some(topic) => self.on_message(replica, topic, message.get_payload_bytes()).await,
                        None => Ok(()),
                    }
                }
                Some(topic) = catch_up.recv() => self.repair(replica, topic).await,
                _ = tick.tick() => {
                    if probes_sent.saturating_sub(probes_seen) > PROBE_PATIENCE {
                        tracing::warn!("redis pub/sub delivers nothing (probes lost); reconnecting");
                        return Exit::Reconnect;
                    }
                    probes_sent += 1;
                    self.check_and_probe(replica, probes_sent).await
                }
            };
            match result {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!("redis: {err}");
                    self.health.set_down(format!("redis: {err}"));
                }
            }
        }
    }

    /// The periodic check (every topic's seq against the node's), a write (Redis takes
    /// writes: not a read-only replica, authenticated, not out of memory), then a probe on the
    /// node's own channel (it must come back on the pub/sub connection).
    async fn check_and_probe(&mut self, replica: &Replica, probe: u64) -> redis::RedisResult<()> {
        self.check(replica).await?;
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(&self.keys.alive)
            .arg(probe)
            .arg("PX")
            .arg(10_000)
            .query_async::<()>(&mut conn)
            .await?;
        self.health.set_up();
        redis::cmd("PUBLISH")
            .arg(&self.keys.probe)
            .arg(probe)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// A message from a topic's channel.
    async fn on_message(
        &mut self,
        replica: &Replica,
        topic: Topic,
        payload: &[u8],
    ) -> redis::RedisResult<()> {
        let mut fields = payload.splitn(5, |b| *b == b'\n');
        match fields.next() {
            Some(b"m") => {
                let epoch = fields.next().and_then(|f| std::str::from_utf8(f).ok()).unwrap_or("");
                let num = |f: Option<&[u8]>| {
                    f.and_then(|f| std::str::from_utf8(f).ok()).and_then(|s| s.parse::<i64>().ok())
                };
                let (Some(seq), Some(ms)) = (num(fields.next()), num(fields.next())) else {
                    tracing::warn!(%topic, "undecodable message on the channel; skipped");
                    return Ok(());
                };
                let payload = Bytes::copy_from_slice(fields.next().unwrap_or_default());
                let logged = Logged { seq: seq as u64, published_ms: ms, payload };
                match replica.apply(topic, epoch, &logged) {
                    Applied::Applied | Applied::Duplicate | Applied::Gone => Ok(()),
                    Applied::Gap { .. } | Applied::OtherEpoch => self.repair(replica, topic).await,
                    // Redis handed out a seq again (it lost its tail, then took publishes
                    // before any check noticed): whatever its seq is now, fence.
                    Applied::Conflict => self.fence(replica, topic, true).await,
                    Applied::Invalid(err) => {
                        tracing::warn!(%topic, seq, "{err}");
                        Ok(())
                    }
                }
            }
            Some(b"c") => {
                let key = fields.next().map(String::from_utf8_lossy).unwrap_or_default();
                replica.cleared(topic, &key);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sets the cluster's epoch candidate and brings every topic up to date.
    async fn sync_all(&mut self, replica: &Replica) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let fresh = new_epoch();
        let _: Value = redis::cmd("SET")
            .arg(&self.keys.epoch)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        self.candidate = redis::cmd("GET").arg(&self.keys.epoch).query_async(&mut conn).await?;
        for topic in Topic::ALL {
            self.repair(replica, topic).await?;
        }
        Ok(())
    }

    /// Compares every topic's newest seq in Redis with the node's; repairs what differs.
    async fn check(&mut self, replica: &Replica) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for topic in Topic::ALL {
            pipe.cmd("HMGET").arg(&self.keys.of(topic).meta).arg("epoch").arg("seq");
        }
        let mut conn = self.conn.clone();
        let metas: Vec<(Option<String>, Option<u64>)> = pipe.query_async(&mut conn).await?;
        for (topic, (epoch, seq)) in Topic::ALL.into_iter().zip(metas) {
            let Some((mine, last)) = replica.position(topic) else { return Ok(()) };
            if epoch.as_deref() != Some(&*mine) || seq.unwrap_or(0) != last {
                self.repair(replica, topic).await?;
            }
        }
        Ok(())
    }

    /// Brings `topic` up to Redis's newest seq: the missing range from the log if it holds
    /// it, else (or on another epoch) a reset to Redis's snapshot. Fences a rollback.
    async fn repair(&mut self, replica: &Replica, topic: Topic) -> redis::RedisResult<()> {
        let Some((mine, last)) = replica.position(topic) else { return Ok(()) };
        let snap = self.snapshot(topic, last + 1, false).await?;
        if snap.epoch == *mine && snap.top < last {
            // Redis lost messages this node applied: never hand out their numbers again.
            tracing::warn!(%topic, redis = snap.top, node = last, "redis's log went backwards");
            return self.fence(replica, topic, false).await;
        }
        if snap.epoch == *mine && snap.top == last {
            return Ok(());
        }
        let contiguous =
            snap.epoch == *mine && snap.entries.first().is_some_and(|e| e.seq == last + 1);
        if !contiguous {
            return self.reset(replica, topic).await;
        }
        self.health.repairs.fetch_add(1, Ordering::Relaxed);
        for entry in snap.entries {
            match replica.apply(topic, &snap.epoch, &entry) {
                Applied::Applied | Applied::Duplicate | Applied::Gone => {}
                Applied::Invalid(err) => tracing::warn!(%topic, seq = entry.seq, "{err}"),
                other => {
                    tracing::warn!(%topic, seq = entry.seq, "repair did not apply ({other:?}); resetting");
                    return self.reset(replica, topic).await;
                }
            }
        }
        Ok(())
    }

    /// Gives `topic` a new epoch (if it still has the node's: `forced`, or Redis's seq below
    /// the node's), numbering on above both, then resets the node's copy from Redis.
    async fn fence(
        &mut self,
        replica: &Replica,
        topic: Topic,
        forced: bool,
    ) -> redis::RedisResult<()> {
        let Some((mine, last)) = replica.position(topic) else { return Ok(()) };
        let fenced = new_epoch();
        tracing::warn!(%topic, node = last, "fencing a rolled-back log: new epoch {fenced}");
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("EVAL")
            .arg(FENCE)
            .arg(1)
            .arg(&self.keys.of(topic).meta)
            .arg(&*mine)
            .arg(last)
            .arg(&fenced)
            .arg(if forced { "1" } else { "0" })
            .query_async(&mut conn)
            .await?;
        self.reset(replica, topic).await
    }

    async fn reset(&mut self, replica: &Replica, topic: Topic) -> redis::RedisResult<()> {
        let snap = self.snapshot(topic, 1, true).await?;
        self.health.resets.fetch_add(1, Ordering::Relaxed);
        if replica.position(topic).is_some_and(|(_, seq)| seq > 0) {
            tracing::info!(%topic, epoch = %snap.epoch, seq = snap.top, "topic reset from redis");
        } else {
            tracing::debug!(%topic, epoch = %snap.epoch, seq = snap.top, "topic loaded from redis");
        }
        replica.reset(topic, &snap.epoch, snap.top, snap.entries, snap.retained);
        Ok(())
    }

    async fn snapshot(&self, topic: Topic, from: u64, state: bool) -> redis::RedisResult<Snapshot> {
        let mut conn = self.conn.clone();
        let candidate = if self.candidate.is_empty() { "0" } else { &self.candidate };
        let names = self.keys.of(topic);
        let value: Value = redis::cmd("EVAL")
            .arg(SNAPSHOT)
            .arg(3)
            .arg(&names.meta)
            .arg(&names.log)
            .arg(&names.ret)
            .arg(candidate)
            .arg(from)
            .arg(if state { "1" } else { "0" })
            .arg(self.history_size.max(1))
            .query_async(&mut conn)
            .await?;
        parse_snapshot(value).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected snapshot reply"))
        })
    }
}

fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn number_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
    }
}

fn array_of(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

fn parse_snapshot(value: Value) -> Option<Snapshot> {
    let parts = array_of(&value)?;
    let epoch = String::from_utf8(bytes_of(parts.first()?)?.to_vec()).ok()?;
    let top = number_of(parts.get(1)?)? as u64;
    let mut entries = Vec::new();
    for entry in array_of(parts.get(2)?)? {
        let [id, fields] = array_of(entry)? else { return None };
        let id = std::str::from_utf8(bytes_of(id)?).ok()?;
        let seq: u64 = id.strip_prefix("0-")?.parse().ok()?;
        let fields = array_of(fields)?;
        let (mut payload, mut ms) = (None, 0);
        for pair in fields.chunks(2) {
            match (bytes_of(&pair[0])?, pair.get(1)) {
                (b"p", Some(v)) => payload = Some(bytes_of(v)?.to_vec()),
                (b"t", Some(v)) => ms = number_of(v)?,
                _ => {}
            }
        }
        entries.push(Logged { seq, published_ms: ms, payload: payload?.into() });
    }
    let mut retained = Vec::new();
    for pair in array_of(parts.get(3)?)?.chunks(2) {
        let value = bytes_of(pair.get(1)?)?;
        let mut fields = value.splitn(3, |b| *b == b'\n');
        let seq = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let ms = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        retained.push(Logged { seq, published_ms: ms, payload: fields.next()?.to_vec().into() });
    }
    retained.sort_by_key(|l| l.seq);
    Some(Snapshot { epoch, top, entries, retained })
}

/// `url` with its password hidden, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
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
