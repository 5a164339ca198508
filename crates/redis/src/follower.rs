//! Following the topics' channels: one pub/sub connection (subscribed to every topic's channel
//! and the node's probe) whose messages are applied as they arrive, and a check each second.
//! On a Redis Cluster the subscriptions are sharded (`SSUBSCRIBE`): one RESP3 cluster
//! connection holds one connection per shard primary that has a topic, grouped by node, and
//! subscribes again on that shard's new primary after a failover or a slot migration; what
//! was published in between is read back from the log by the check each second.
//! Whatever needs Redis again — a hole to fill, a rollback to fence, a client's position to
//! reach — goes to the topic's own worker task, so a slow repair blocks only its topic, and
//! never the messages of the others.
//!
//! Nothing here queues without bound: a repair is a flag per topic (`Notify`, and a flag for a
//! seq handed out twice), not a queue; a message that arrives while its topic is being repaired
//! is applied if it is next, or left to the repair (the log has it); a topic's queue of client
//! positions to reach is bounded.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use modelcast_hub::{
    Applied, Error as HubError, Logged, Replica, Result as HubResult, generation, new_epoch,
};
use modelcast_protocol::{Since, Topic};
use redis::{AsyncConnectionConfig, Msg, ProtocolVersion, Value};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::scripts::{FenceWhy, fence_call, publish_command, snapshot_call};
use crate::shared::{CHECK_EVERY, Shared};
use crate::snapshot::{Snapshot, parse_snapshot};
use crate::target::Watch;

/// Probes unanswered for this many checks mean the pub/sub connection is wedged.
const PROBE_PATIENCE: u64 = 3;
/// Client positions that may wait per topic to be reached; more are refused (retry).
pub(crate) const TOPIC_QUEUE: usize = 256;
/// At most one fence per topic in this time on a client's word (a position past the log's
/// head): a made-up position must not make every subscriber start over again and again. A
/// client asking within it is not recovered (it gets the current state), never replayed from a
/// range the log may hand out again.
const CLIENT_FENCE_EVERY: Duration = Duration::from_secs(60);

/// Work for a topic's worker: a client asked for a position this node has not reached, or
/// subscribed before the topic was loaded.
#[derive(Debug)]
pub(crate) struct Work {
    pub(crate) since: Option<Since>,
    pub(crate) reply: oneshot::Sender<HubResult<()>>,
}

/// What the follower and the checks ask of a topic's worker, as flags (never a queue).
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Bring the topic up to the log's head.
    repair: Notify,
    /// The log handed a seq out again (a message at a seq the node holds, with other
    /// content): fence, whatever its seq is now.
    reused: AtomicBool,
}

impl Signals {
    pub(crate) fn repair(&self) {
        self.repair.notify_one();
    }

    fn reused(&self) {
        self.reused.store(true, Ordering::SeqCst);
        self.repair.notify_one();
    }
}

/// How the engine reaches a topic's worker.
#[derive(Debug, Clone)]
pub(crate) struct TopicHandle {
    pub(crate) work: mpsc::Sender<Work>,
    pub(crate) signals: Arc<Signals>,
}

/// A topic worker's inbox, handed to the follower when the engine starts.
#[derive(Debug)]
pub(crate) struct TopicInbox {
    work: mpsc::Receiver<Work>,
    signals: Arc<Signals>,
}

/// A new handle and inbox per topic.
pub(crate) fn topic_channels() -> (Vec<TopicHandle>, Vec<TopicInbox>) {
    Topic::ALL
        .iter()
        .map(|_| {
            let (tx, rx) = mpsc::channel(TOPIC_QUEUE);
            let signals = Arc::new(Signals::default());
            (TopicHandle { work: tx, signals: signals.clone() }, TopicInbox { work: rx, signals })
        })
        .unzip()
}

/// Follows the channels until `stop`: waits for the hub's replica, starts a worker per topic,
/// then keeps a pub/sub connection (reconnecting with backoff).
pub(crate) async fn run(
    shared: Arc<Shared>,
    attached: oneshot::Receiver<Replica>,
    inboxes: Vec<TopicInbox>,
    handles: Vec<TopicHandle>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let replica = tokio::select! {
        replica = attached => match replica {
            Ok(replica) => replica,
            Err(_) => return, // the engine was dropped without a hub
        },
        () = stop.cancelled() => return,
    };
    for (topic, inbox) in Topic::ALL.into_iter().zip(inboxes) {
        let worker = Worker {
            topic,
            shared: shared.clone(),
            replica: replica.clone(),
            last_client_fence: None,
        };
        tracker.spawn(worker.run(inbox, stop.clone()));
    }
    let mut follower = Follower { shared, replica, handles, overflow: Arc::default() };
    let mut backoff = Duration::from_millis(100);
    loop {
        match follower.subscribe().await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                follower.shared.health.set_following(true);
                let switches = follower.shared.target().switch_watch(None).await;
                let exit = follower.follow(pubsub, switches, &stop).await;
                follower.shared.health.set_following(false);
                if exit.is_none() {
                    return;
                }
            }
            Err(err) => follower.shared.health.set_down(format!("redis: {err}")),
        }
        follower.shared.health.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The messages of every topic's channel and of the probe, as they arrive.
type Feed = Pin<Box<dyn Stream<Item = Msg> + Send>>;

/// Pushes that may wait for the follower; past it they are dropped and every topic is
/// repaired from the log (the messages are there).
const FEED: usize = 4096;

/// The messages among a connection's pushes. The connection lives as long as the feed;
/// pushes other than messages (the confirmations, a resubscription after a failover) are
/// skipped. The feed ends when the connection does, and — on a cluster — when a channel's
/// slot moved to another shard (`sunsubscribe` from Redis; redis-rs does not follow it): the
/// follower then subscribes again along the new slot map.
fn feed<C: Send + 'static>(conn: C, pushes: mpsc::Receiver<redis::PushInfo>) -> Feed {
    Box::pin(futures_util::stream::unfold((conn, pushes), |(conn, mut pushes)| async {
        loop {
            let push = pushes.recv().await?;
            match push.kind {
                redis::PushKind::Disconnection => return None,
                redis::PushKind::SUnsubscribe => {
                    tracing::info!(
                        "redis cluster: a topic's slot moved to another shard; subscribing again there"
                    );
                    return None;
                }
                _ => {}
            }
            if let Some(msg) = Msg::from_push_info(push) {
                return Some((msg, (conn, pushes)));
            }
        }
    }))
}

struct Follower {
    shared: Arc<Shared>,
    replica: Replica,
    handles: Vec<TopicHandle>,
    /// Set when the feed dropped a message (full): every topic is repaired.
    overflow: Arc<AtomicBool>,
}

impl Follower {
    /// A pub/sub connection subscribed to every topic's channel and the probe, then the
    /// restart check and every topic marked for repair: subscribed first, so nothing published
    /// in between is missed (it is in the log, on the channel, or both).
    async fn subscribe(&mut self) -> redis::RedisResult<Feed> {
        let mut channels: Vec<&str> = self.shared.names.channels().collect();
        channels.push(&self.shared.names.probe);
        // Where the primary is now (after a failover: the one Sentinel names; the command
        // connection moves with it), then the pub/sub connection there; on a cluster, sharded
        // subscriptions, each on the primary of its channel's slot.
        let (push, pushes) = mpsc::channel(FEED);
        let overflow = self.overflow.clone();
        // The connection's pushes (messages, confirmations) into a bounded queue: never
        // waiting (that would stall the connection), and never growing without bound — a
        // message that does not fit is dropped and every topic repaired from the log.
        let sender = move |info: redis::PushInfo| {
            if let Err(mpsc::error::TrySendError::Full(_)) = push.try_send(info) {
                overflow.store(true, Ordering::SeqCst);
            }
            Ok::<(), ()>(())
        };
        let feed: Feed = match self.shared.follow_primary().await? {
            Some(client) => {
                let info = client.get_connection_info().clone();
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_push_sender(sender);
                let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
                conn.subscribe(&channels).await?;
                feed(conn, pushes)
            }
            None => {
                let client = self.shared.target().cluster_pubsub(sender)?;
                let mut conn = client.get_async_connection().await?;
                // One command per channel: each goes to the primary of its slot.
                for channel in &channels {
                    conn.ssubscribe(*channel).await?;
                }
                feed(conn, pushes)
            }
        };
        self.shared.restart_check().await?;
        let mut conn = self.shared.conn();
        let fresh = new_epoch();
        let names = &self.shared.names;
        let _: Value = redis::cmd("SET")
            .arg(&names.epoch)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let candidate: String = redis::cmd("GET").arg(&names.epoch).query_async(&mut conn).await?;
        self.shared.set_candidate(candidate);
        self.repair_all();
        self.shared.health.set_up();
        Ok(feed)
    }

    /// Routes channel messages and checks every second, until the connection is lost or
    /// wedged (`Some`: reconnect) or the engine stops (`None`).
    async fn follow(
        &mut self,
        mut messages: Feed,
        mut switches: Option<Watch>,
        stop: &CancellationToken,
    ) -> Option<()> {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut probes_sent, mut probes_seen) = (0u64, 0u64);
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                switch = next_switch(&mut switches) => match switch {
                    Some(payload) => {
                        tracing::warn!("redis sentinel announces a failover ({payload}); following");
                        return Some(());
                    }
                    None => {
                        // The watched sentinel is gone: watch another (each check also asks
                        // a sentinel which primary it names, so nothing waits on the watch).
                        let lost = switches.take().map(|w| (w.index, w.sentinel));
                        switches = self.shared.target().switch_watch(lost.as_ref().map(|l| l.0)).await;
                        let lost = lost.map_or_else(String::new, |l| l.1);
                        match &switches {
                            Some(now) => tracing::warn!(
                                %lost, watching = %now.sentinel,
                                "lost the +switch-master watch on a sentinel; watching another"
                            ),
                            None => tracing::warn!(
                                %lost,
                                "lost the +switch-master watch and no sentinel answers: asking \
                                 them each second instead"
                            ),
                        }
                    }
                },
                message = messages.next() => {
                    let Some(message) = message else {
                        if stop.is_cancelled() {
                            return None;
                        }
                        // Publishing goes on (another connection); delivery resumes, with the
                        // hole filled from the log, once reconnected.
                        tracing::warn!("redis pub/sub connection lost; reconnecting");
                        return Some(());
                    };
                    if self.overflow.swap(false, Ordering::SeqCst) {
                        tracing::warn!("redis pub/sub messages came faster than applied: {FEED} waiting; repairing every topic from the log");
                        self.repair_all();
                    }
                    let channel = message.get_channel_name();
                    if channel == self.shared.names.probe {
                        probes_seen = probes_sent;
                        continue;
                    }
                    if let Some(topic) = self.shared.names.topic_of_channel(channel) {
                        self.on_message(topic, message.get_payload_bytes());
                    }
                }
                _ = tick.tick() => {
                    if probes_sent.saturating_sub(probes_seen) > PROBE_PATIENCE {
                        tracing::warn!("redis pub/sub delivers nothing (probes lost); reconnecting");
                        return Some(());
                    }
                    probes_sent += 1;
                    if self.overflow.swap(false, Ordering::SeqCst) {
                        self.repair_all();
                    }
                    if switches.is_none() && self.shared.follows_failovers() {
                        switches = self.shared.target().switch_watch(None).await;
                    }
                    if let Some(named) = self.shared.target().named_primary().await
                        && named != self.shared.primary()
                    {
                        tracing::warn!(
                            %named, writing_to = %self.shared.primary(),
                            "redis sentinel names another primary than the one this node writes to; following"
                        );
                        return Some(());
                    }
                    match self.check_and_probe(probes_sent).await {
                        Ok(sent) => {
                            if !sent {
                                probes_sent -= 1; // nothing to wait for
                            }
                            self.shared.health.set_up();
                            if self.shared.recheck.load(Ordering::SeqCst)
                                && let Err(err) = self.shared.restart_check().await
                            {
                                tracing::debug!("redis: the restart check again: {err}");
                            }
                        }
                        Err(err) => {
                            self.shared.health.set_down(format!("redis: {err}"));
                            // Under Sentinel a primary that fails or turned read-only (demoted)
                            // means "ask again": reconnect, through the sentinels.
                            if self.shared.follows_failovers() && moved(&err) {
                                tracing::warn!("redis primary unreachable or demoted ({err}); asking sentinel");
                                return Some(());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Marks every topic for repair from the log.
    fn repair_all(&self) {
        for handle in &self.handles {
            handle.signals.repair();
        }
    }

    /// A channel message, applied at once if it is the topic's next; anything else is the
    /// topic worker's (a hole to fill, another epoch, a seq handed out twice).
    fn on_message(&self, topic: Topic, payload: &[u8]) {
        let signals = &self.handles[topic.index()].signals;
        match decode(topic, payload) {
            Some(Channel::Message { epoch, logged }) => {
                match self.replica.apply(topic, &epoch, &logged) {
                    Applied::Applied | Applied::Duplicate | Applied::Gone => {}
                    Applied::Gap { .. } | Applied::OtherEpoch => signals.repair(),
                    // Redis handed out a seq again (it lost its tail, then took publishes
                    // before any check noticed): whatever its seq is now, fence.
                    Applied::Conflict => signals.reused(),
                    Applied::Invalid(err) => tracing::warn!(%topic, seq = logged.seq, "{err}"),
                }
            }
            Some(Channel::Cleared(key)) => {
                self.replica.cleared(topic, &key);
            }
            None => {}
        }
    }

    /// The periodic check: every topic's seq against the node's (differing topics are marked
    /// for repair), a write (Redis takes writes: not a read-only replica, authenticated, not
    /// out of memory), then a probe on the node's own channel (it must come back on the
    /// pub/sub connection).
    async fn check_and_probe(&mut self, probe: u64) -> redis::RedisResult<bool> {
        let names = &self.shared.names;
        let conn = self.shared.conn();
        // One command per topic, all at once: on a cluster each goes to its topic's primary.
        let metas = Topic::ALL.map(|topic| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&names.of(topic).meta).arg("epoch").arg("seq");
            async move { cmd.query_async::<(Option<String>, Option<u64>)>(&mut conn).await }
        });
        let metas = futures_util::future::join_all(metas).await;
        let answered: Vec<bool> = metas.iter().map(Result::is_ok).collect();
        self.shared.health.set_topics_up(&answered);
        let cluster = self.shared.is_cluster();
        let mut conn = conn;
        for (topic, meta) in Topic::ALL.into_iter().zip(metas) {
            // On a cluster a topic whose shard does not answer is down alone.
            let (epoch, seq) = match meta {
                Ok(meta) => meta,
                Err(err) if cluster => {
                    self.shared.topic_failed(topic, &err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            if cluster {
                self.shared.health.set_topic(topic, None);
            }
            let Some((mine, last)) = self.replica.position(topic) else { continue };
            if epoch.as_deref() != Some(&*mine) || seq.unwrap_or(0) != last {
                self.handles[topic.index()].signals.repair();
            }
        }
        let probes = async {
            redis::cmd("SET")
                .arg(&names.alive)
                .arg(probe)
                .arg("PX")
                .arg(10_000)
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd(publish_command(cluster))
                .arg(&names.probe)
                .arg(probe)
                .query_async::<i64>(&mut conn)
                .await
        };
        match probes.await {
            Ok(_) => Ok(true),
            // On a cluster the probes live on one shard among several: its failover is that
            // shard's (the topics' checks above say which are down), not the engine's; a
            // lost pub/sub connection still shows as probes that never come back.
            Err(err) if cluster => {
                tracing::debug!("redis cluster: the probe's shard did not answer: {err}");
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }
}

/// The next `+switch-master` announcement for our master (its payload: `<master> <old ip>
/// <old port> <new ip> <new port>`), if watching; never ready otherwise. `None` when the
/// watch's connection ended.
async fn next_switch(switches: &mut Option<Watch>) -> Option<String> {
    let Some(watch) = switches else { return std::future::pending().await };
    let master = watch.master.clone();
    let mut messages = watch.pubsub.on_message();
    loop {
        let payload =
            String::from_utf8_lossy(messages.next().await?.get_payload_bytes()).into_owned();
        if payload.split(' ').next() == Some(master.as_str()) {
            return Some(payload);
        }
    }
}

/// Whether `err` says the primary is gone or no longer the primary.
fn moved(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
}

/// What a topic's channel carries.
enum Channel {
    /// A sequenced message.
    Message { epoch: String, logged: Logged },
    /// A key's retained state was cleared.
    Cleared(String),
}

/// A channel message: `m\n<epoch>\n<seq>\n<ms>\n<payload>` or `c\n<key>`.
fn decode(topic: Topic, payload: &[u8]) -> Option<Channel> {
    let mut fields = payload.splitn(5, |b| *b == b'\n');
    match fields.next() {
        Some(b"m") => {
            let epoch = fields.next().and_then(|f| std::str::from_utf8(f).ok())?.to_owned();
            let num = |f: Option<&[u8]>| {
                f.and_then(|f| std::str::from_utf8(f).ok()).and_then(|s| s.parse::<i64>().ok())
            };
            let (Some(seq), Some(ms)) = (num(fields.next()), num(fields.next())) else {
                tracing::warn!(%topic, "undecodable message on the channel; skipped");
                return None;
            };
            let payload = Bytes::copy_from_slice(fields.next().unwrap_or_default());
            let logged = Logged { seq: seq as u64, published_ms: ms, payload };
            Some(Channel::Message { epoch, logged })
        }
        Some(b"c") => {
            Some(Channel::Cleared(fields.next().map(String::from_utf8_lossy)?.into_owned()))
        }
        _ => None,
    }
}

/// One topic's worker: applies its messages in order and keeps its copy contiguous.
struct Worker {
    topic: Topic,
    shared: Arc<Shared>,
    replica: Replica,
    /// When a client's position last fenced this topic.
    last_client_fence: Option<Instant>,
}

impl Worker {
    async fn run(mut self, mut inbox: TopicInbox, stop: CancellationToken) {
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                () = inbox.signals.repair.notified() => {
                    if inbox.signals.reused.swap(false, Ordering::SeqCst) {
                        let (known, last) = self.position();
                        self.fence(&known, FenceWhy::Reused { min: last }).await
                    } else {
                        self.repair().await
                    }
                }
                work = inbox.work.recv() => match work {
                    None => return,
                    Some(Work { since, reply }) => {
                        let reached = self.reach(since.as_ref()).await;
                        let answer = reached.as_ref().map(|_| ()).map_err(|e| {
                            HubError::Unavailable(format!("cannot reach the position now: redis: {e}"))
                        });
                        let _ = reply.send(answer);
                        reached
                    }
                },
            };
            if let Err(err) = result {
                let topic = self.topic;
                tracing::debug!(%topic, "redis: {err}");
                self.shared.topic_failed(topic, &err);
                // The periodic check asks again once Redis answers.
            }
        }
    }

    /// The epoch and newest seq of the node's copy ("" and 0 before it is loaded).
    fn position(&self) -> (String, u64) {
        self.replica.position(self.topic).map_or((String::new(), 0), |(e, s)| (e.to_string(), s))
    }

    /// Brings the topic up to the log's head. A client past that head under the same epoch
    /// holds acknowledged messages the log lost; a client holding a later generation than
    /// the topic's epoch saw an epoch after it (the topic's came back): fence, at most once per
    /// [`CLIENT_FENCE_EVERY`] (the client's word alone; its generation is never adopted).
    async fn reach(&mut self, since: Option<&Since>) -> redis::RedisResult<()> {
        self.repair().await?;
        let Some(since) = since else { return Ok(()) };
        let Some((epoch, last)) = self.replica.position(self.topic) else { return Ok(()) };
        let past_head = *epoch == *since.epoch && last < since.seq;
        let later = generation(&since.epoch) > generation(&epoch);
        let due = self.last_client_fence.is_none_or(|at| at.elapsed() >= CLIENT_FENCE_EVERY);
        if (past_head || later) && due {
            self.last_client_fence = Some(Instant::now());
            let why = if past_head {
                tracing::warn!(
                    topic = %self.topic, log = last, client = since.seq,
                    "a client holds a position past the log's head: the log rolled back; fencing"
                );
                FenceWhy::Behind { min: since.seq }
            } else {
                tracing::warn!(
                    topic = %self.topic, %epoch, client = %since.epoch,
                    "a client holds a later epoch than the topic's: an old epoch came back; fencing"
                );
                FenceWhy::Returned { min: last }
            };
            self.fence(&epoch, why).await?;
        }
        Ok(())
    }

    /// Brings the topic up to Redis's newest seq: the missing range from the log if it holds
    /// it, else (or on another epoch) a reset to Redis's snapshot. Fences a rollback.
    async fn repair(&mut self) -> redis::RedisResult<()> {
        let topic = self.topic;
        let Some((mine, last)) = self.replica.position(topic) else { return Ok(()) };
        let snap = self.snapshot(last + 1, false).await?;
        if self.shared.saw_epoch(topic, &snap.epoch) {
            return self.fence_returned(&snap.epoch, last.max(snap.top)).await;
        }
        if snap.epoch == *mine && snap.top < last {
            // Redis lost messages this node applied: never hand out their numbers again.
            tracing::warn!(%topic, redis = snap.top, node = last, "redis's log went backwards");
            return self.fence(&mine, FenceWhy::Behind { min: last }).await;
        }
        if snap.epoch == *mine && snap.top == last {
            return Ok(());
        }
        let contiguous =
            snap.epoch == *mine && snap.entries.first().is_some_and(|e| e.seq == last + 1);
        if !contiguous {
            return self.reset().await;
        }
        self.shared.health.repairs.fetch_add(1, Ordering::Relaxed);
        for entry in snap.entries {
            match self.replica.apply(topic, &snap.epoch, &entry) {
                Applied::Applied | Applied::Duplicate | Applied::Gone => {}
                Applied::Invalid(err) => tracing::warn!(%topic, seq = entry.seq, "{err}"),
                other => {
                    tracing::warn!(%topic, seq = entry.seq, "repair did not apply ({other:?}); resetting");
                    return self.reset().await;
                }
            }
        }
        Ok(())
    }

    /// Redis holds `epoch`, older than one this node saw: a primary with older data took over
    /// again (a failback). Its epoch must not be current again — a client holding a position
    /// in it would be told `recovered: true` over what it missed — so it is fenced.
    async fn fence_returned(&mut self, epoch: &str, min: u64) -> redis::RedisResult<()> {
        tracing::warn!(
            topic = %self.topic, %epoch, seen = self.shared.highest_generation(self.topic),
            "redis holds an epoch this node saw replaced (a failback to older data); fencing"
        );
        self.fence(epoch, FenceWhy::Returned { min }).await
    }

    /// Gives the topic a new epoch (if it still has `known`), numbering on above `why`'s seq,
    /// of a generation past every one this node saw, then resets the node's copy from Redis.
    async fn fence(&mut self, known: &str, why: FenceWhy) -> redis::RedisResult<()> {
        if known.is_empty() {
            return Ok(());
        }
        tracing::debug!(topic = %self.topic, ?why, "fencing: a new epoch");
        let names = self.shared.names.of(self.topic);
        let min_generation = self.shared.min_generation(self.topic);
        let address = self.shared.address_of(self.topic);
        let call = fence_call(&self.shared.scripts, names, known, why, min_generation, &address);
        let done: i64 = self.shared.eval(&call).await?;
        if done == 1 {
            self.shared.health.fences.fetch_add(1, Ordering::Relaxed);
        }
        self.reset().await
    }

    /// Replaces the node's copy with Redis's (fencing first an epoch that came back).
    async fn reset(&mut self) -> redis::RedisResult<()> {
        let topic = self.topic;
        let mut snap = self.snapshot(1, true).await?;
        // A returned epoch is fenced, then read again; the fence's epoch is past every one
        // seen, so twice is enough unless another failback comes in between (then the next
        // check fences it).
        for _ in 0..2 {
            if !self.shared.saw_epoch(topic, &snap.epoch) {
                break;
            }
            let min = self.position().1.max(snap.top);
            tracing::warn!(topic = %self.topic, epoch = %snap.epoch, "an epoch came back; fencing");
            let names = self.shared.names.of(topic);
            let min_generation = self.shared.min_generation(topic);
            let why = FenceWhy::Returned { min };
            let address = self.shared.address_of(topic);
            let call =
                fence_call(&self.shared.scripts, names, &snap.epoch, why, min_generation, &address);
            if self.shared.eval::<i64>(&call).await? == 1 {
                self.shared.health.fences.fetch_add(1, Ordering::Relaxed);
            }
            snap = self.snapshot(1, true).await?;
        }
        self.shared.health.resets.fetch_add(1, Ordering::Relaxed);
        if self.replica.position(topic).is_some_and(|(_, seq)| seq > 0) {
            tracing::info!(%topic, epoch = %snap.epoch, seq = snap.top, "topic reset from redis");
        } else {
            tracing::debug!(%topic, epoch = %snap.epoch, seq = snap.top, "topic loaded from redis");
        }
        self.replica.reset(topic, &snap.epoch, snap.top, snap.entries, snap.retained);
        Ok(())
    }

    async fn snapshot(&self, from: u64, with_state: bool) -> redis::RedisResult<Snapshot> {
        let candidate = self.shared.candidate();
        let candidate = if candidate.is_empty() { "0".to_owned() } else { candidate };
        let names = self.shared.names.of(self.topic);
        let cmd = snapshot_call(
            &self.shared.scripts,
            names,
            &candidate,
            from,
            with_state,
            self.shared.limits.history_size,
        );
        let value: Value = self.shared.eval(&cmd).await?;
        parse_snapshot(&value).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected snapshot reply"))
        })
    }
}
