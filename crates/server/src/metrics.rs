//! Prometheus metrics (`GET /metrics`) through `prometheus-client`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use modelcast_hub::{DropReason, HubStats};
use modelcast_protocol::{ErrorCode, ServerMessage, Topic};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

/// The engine's topology and the primary (or a cluster's seeds) it uses now.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EngineLabel {
    pub(crate) topology: String,
    pub(crate) primary: String,
}

/// A Redis Cluster shard, by its primary's address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShardLabel {
    pub(crate) primary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicTypeLabel {
    topic: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicReasonLabel {
    topic: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// The server's metrics. Hot-path counters are pre-resolved handles (one atomic add each).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections_active: Gauge,
    opened: Counter,
    closed: Family<ReasonLabel, Counter>,
    published: Family<TopicTypeLabel, Counter>,
    /// Delivered frames (written to sockets), by message type index.
    delivered_by_type: Vec<Counter>,
    subscriptions: Family<TopicLabel, Gauge>,
    conflated: Family<TopicReasonLabel, Counter>,
    dropped: Family<TopicLabel, Counter>,
    drops: Family<ReasonLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    pub(crate) latency: LatencyHistogram,
    /// Frames written per flush (one `write` to the socket, unless the kernel takes less).
    pub(crate) frames_per_flush: Histogram,
    /// 1 when the engine accepts publishes, 0 when not (Redis unreachable).
    pub(crate) engine_up: Gauge,
    /// 1 for the engine's topology and primary now (the series is replaced on a failover).
    pub(crate) engine_info: Family<EngineLabel, Gauge>,
    /// Per shard of a Redis Cluster (by its primary now): 1 when its topics answered the last
    /// check, else 0. Replaced on every scrape, so a shard that moved leaves no stale series.
    pub(crate) engine_shard_up: Family<ShardLabel, Gauge>,
    state_keys: Family<TopicLabel, Gauge>,
    state_evicted: Family<TopicLabel, Counter>,
    keys: Gauge,
    sse_active: Gauge,
    sse_closed: Family<ReasonLabel, Counter>,
    /// Frames compressed (deflate runs): at most one per frame, however many connections
    /// receive it compressed.
    pub(crate) compressions: Counter,
    /// Open WebSocket connections that agreed on permessage-deflate.
    pub(crate) compressing: Gauge,
    compressed_frames: Counter,
    compressed_bytes_before: Counter,
    compressed_bytes_after: Counter,
    /// Push's figures, brought up to date at each scrape.
    push: PushMetrics,
}

/// Push's series: counters advanced by what push counted since the last scrape.
#[derive(Debug, Default)]
struct PushMetrics {
    sent: Counter,
    failed: Family<ReasonLabel, Counter>,
    removed: Counter,
    queued: Gauge,
    devices: Gauge,
    /// Push's totals at the last scrape (sent, removed, each reason's).
    seen: std::sync::Mutex<(u64, u64, Vec<u64>)>,
}

impl PushMetrics {
    fn register(registry: &mut Registry) -> Self {
        let push = Self::default();
        registry.register("push_sent", "Pushes a push service accepted", push.sent.clone());
        registry.register(
            "push_failed",
            "Pushes not delivered, by reason (gone, refused, retries_exhausted, rate_limited, queue_full, too_large: sent shortened)",
            push.failed.clone(),
        );
        registry.register(
            "push_devices_removed",
            "Devices forgotten: their push service said they are gone",
            push.removed.clone(),
        );
        registry.register("push_queue_depth", "Pushes waiting to be sent", push.queued.clone());
        registry.register(
            "push_devices",
            "Devices registered for push (this node's copy)",
            push.devices.clone(),
        );
        push
    }

    fn update(&self, stats: &modelcast_push::PushStats) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sent.inc_by(stats.sent.saturating_sub(seen.0));
        self.removed.inc_by(stats.devices_removed.saturating_sub(seen.1));
        seen.2.resize(stats.failed.len(), 0);
        for ((reason, n), before) in stats.failed.iter().zip(seen.2.iter_mut()) {
            let label = ReasonLabel { reason: (*reason).to_owned() };
            self.failed.get_or_create(&label).inc_by(n.saturating_sub(*before));
            *before = *n;
        }
        seen.0 = stats.sent;
        seen.1 = stats.devices_removed;
        self.queued.set(stats.queued as i64);
        self.devices.set(stats.devices as i64);
    }
}

impl Metrics {
    /// Brings push's series up to date (at a scrape).
    pub(crate) fn push(&self, stats: &modelcast_push::PushStats) {
        self.push.update(stats);
    }

    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("modelcast");
        let connections_active = Gauge::default();
        let opened = Counter::default();
        let closed = Family::<ReasonLabel, Counter>::default();
        let published = Family::<TopicTypeLabel, Counter>::default();
        let delivered = Family::<TopicTypeLabel, Counter>::default();
        let subscriptions = Family::<TopicLabel, Gauge>::default();
        let conflated = Family::<TopicReasonLabel, Counter>::default();
        let dropped = Family::<TopicLabel, Counter>::default();
        let drops = Family::<ReasonLabel, Counter>::default();
        let errors = Family::<CodeLabel, Counter>::default();
        // 50 µs … ~1.6 s.
        let latency = LatencyHistogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let frames_per_flush = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "connections_active",
            "Open WebSocket connections",
            connections_active.clone(),
        );
        registry.register("connections_opened", "WebSocket connections opened", opened.clone());
        registry.register(
            "connections_closed",
            "WebSocket connections closed, by reason: client_closed (close frame), client_gone \
             (no close frame: reset, EOF), slow_consumer, replaced, shutdown, write_failed, \
             policy_violation (abuse), protocol_error, invalid_utf8, frame_too_large, \
             unauthorized, heartbeat_timeout",
            closed.clone(),
        );
        registry.register(
            "messages_published",
            "Messages published, by topic and type",
            published.clone(),
        );
        registry.register(
            "messages_delivered",
            "Frames written to clients, by topic and type",
            delivered.clone(),
        );
        registry.register("subscriptions", "Subscriptions, by topic", subscriptions.clone());
        registry.register(
            "messages_conflated",
            "Updates replaced by newer ones of the same key, by topic and reason",
            conflated.clone(),
        );
        registry.register(
            "messages_dropped",
            "Frames discarded with a dropped subscriber, by topic",
            dropped.clone(),
        );
        registry.register("subscribers_dropped", "Subscribers dropped, by reason", drops.clone());
        registry.register("errors", "Error replies sent to clients, by code", errors.clone());
        registry.register(
            "publish_to_write_seconds",
            "Time from publish to the frame's flush to the socket",
            latency.clone(),
        );
        registry.register(
            "frames_per_flush",
            "Frames a connection's writer sent per flush: above 1 when frames queued while it was busy went out together",
            frames_per_flush.clone(),
        );
        let engine_up = Gauge::default();
        registry.register(
            "engine_up",
            "1 when the message store (memory, or Redis in a cluster) accepts publishes, else 0",
            engine_up.clone(),
        );
        let engine_info = Family::<EngineLabel, Gauge>::default();
        registry.register(
            "engine_info",
            "1 for the engine's topology (memory, single, sentinel, cluster) and the primary it uses now (a cluster: its seeds)",
            engine_info.clone(),
        );
        let engine_shard_up = Family::<ShardLabel, Gauge>::default();
        registry.register(
            "engine_shard_up",
            "Per Redis Cluster shard (by its primary): 1 when its topics answered the last check",
            engine_shard_up.clone(),
        );
        let state_keys = Family::<TopicLabel, Gauge>::default();
        registry.register(
            "state_keys",
            "Keys with current state (sent to new subscribers), by topic; at most MODELCAST_STATE_MAX_KEYS each",
            state_keys.clone(),
        );
        let state_evicted = Family::<TopicLabel, Counter>::default();
        registry.register(
            "state_evicted",
            "Keys whose current state was evicted (subscribers got state_cleared) because the topic held MODELCAST_STATE_MAX_KEYS keys, by topic",
            state_evicted.clone(),
        );
        let keys = Gauge::default();
        registry.register(
            "interned_keys",
            "Distinct keys and filter ids held now (state keys, subjects, subscription filters); each is freed with its last user",
            keys.clone(),
        );
        let sse_active = Gauge::default();
        registry.register(
            "sse_connections_active",
            "Open Server-Sent Events streams (GET /sse); not in connections_active, which counts WebSockets",
            sse_active.clone(),
        );
        let sse_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sse_connections_closed",
            "Server-Sent Events streams ended, by reason: client_gone, shutdown, slow_consumer, unauthorized (token expired)",
            sse_closed.clone(),
        );
        let compressions = Counter::default();
        registry.register(
            "compressions",
            "Frames compressed for permessage-deflate: once per frame, however many connections receive it compressed",
            compressions.clone(),
        );
        let compressing = Gauge::default();
        registry.register(
            "connections_compressing",
            "Open WebSocket connections that agreed on permessage-deflate",
            compressing.clone(),
        );
        let compressed_frames = Counter::default();
        registry.register(
            "compressed_frames",
            "Frames written compressed (each delivery counts)",
            compressed_frames.clone(),
        );
        let compressed_bytes_before = Counter::default();
        registry.register(
            "compressed_frames_bytes_before",
            "Bytes of the frames written compressed, before compression",
            compressed_bytes_before.clone(),
        );
        let compressed_bytes_after = Counter::default();
        registry.register(
            "compressed_frames_bytes_after",
            "Bytes of the frames written compressed, as written (payloads, without frame headers)",
            compressed_bytes_after.clone(),
        );
        let delivered_by_type = ServerMessage::TYPES
            .iter()
            .map(|ty| {
                let topic = ServerMessage::topic_of(ty).map_or("", Topic::as_str);
                delivered
                    .get_or_create(&TopicTypeLabel { topic: topic.into(), r#type: (*ty).into() })
                    .clone()
            })
            .collect();
        let push = PushMetrics::register(&mut registry);
        Self {
            registry,
            connections_active,
            opened,
            closed,
            published,
            delivered_by_type,
            subscriptions,
            conflated,
            dropped,
            drops,
            errors,
            latency,
            frames_per_flush,
            engine_up,
            engine_info,
            engine_shard_up,
            state_keys,
            state_evicted,
            keys,
            sse_active,
            sse_closed,
            compressions,
            compressing,
            compressed_frames,
            compressed_bytes_before,
            compressed_bytes_after,
            push,
        }
    }

    /// Counts `frames` written compressed: `before` bytes as `after`.
    pub(crate) fn compressed(&self, frames: u64, before: u64, after: u64) {
        if frames > 0 {
            self.compressed_frames.inc_by(frames);
            self.compressed_bytes_before.inc_by(before);
            self.compressed_bytes_after.inc_by(after);
        }
    }

    /// The compression figures for `/api/stats`: (compressions, frames, bytes before, bytes
    /// after, compressing connections).
    pub(crate) fn compression(&self) -> (u64, u64, u64, u64, i64) {
        (
            self.compressions.get(),
            self.compressed_frames.get(),
            self.compressed_bytes_before.get(),
            self.compressed_bytes_after.get(),
            self.compressing.get(),
        )
    }

    pub(crate) fn opened(&self) {
        self.opened.inc();
        self.connections_active.inc();
    }

    pub(crate) fn closed(&self, reason: &str) {
        self.connections_active.dec();
        self.closed.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub(crate) fn sse_opened(&self) {
        self.sse_active.inc();
    }

    pub(crate) fn sse_closed(&self, reason: &str) {
        self.sse_active.dec();
        self.sse_closed.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// Open Server-Sent Events streams.
    pub(crate) fn sse_active(&self) -> i64 {
        self.sse_active.get()
    }

    pub(crate) fn delivered(&self, type_index: usize, n: u64) {
        if let Some(c) = self.delivered_by_type.get(type_index) {
            c.inc_by(n);
        }
    }

    /// The counter of error replies with `code`, for a task that outlives the borrow.
    pub(crate) fn error_counter(&self, code: &ErrorCode) -> Counter {
        self.errors.get_or_create(&CodeLabel { code: code.as_str().into() }).clone()
    }

    pub(crate) fn error(&self, code: &ErrorCode) {
        self.errors.get_or_create(&CodeLabel { code: code.as_str().into() }).inc();
    }

    /// Encodes the registry, first bringing the hub-owned numbers up to date.
    pub(crate) fn encode(&self, stats: &HubStats) -> String {
        for t in &stats.topics {
            let label = TopicLabel { topic: t.topic.as_str().into() };
            self.subscriptions.get_or_create(&label).set(t.subscribers as i64);
            for (reason, n) in &t.conflated_by {
                let label = TopicReasonLabel {
                    topic: t.topic.as_str().into(),
                    reason: reason.as_str().into(),
                };
                catch_up(&self.conflated.get_or_create(&label), *n);
            }
            catch_up(&self.dropped.get_or_create(&label), t.dropped);
            catch_up(&self.state_evicted.get_or_create(&label), t.state_evicted);
            self.state_keys.get_or_create(&label).set(t.state_keys as i64);
        }
        self.keys.set(stats.keys as i64);
        for (type_name, n) in &stats.published_by_type {
            if let Some(topic) = ServerMessage::topic_of(type_name) {
                let label =
                    TopicTypeLabel { topic: topic.as_str().into(), r#type: (*type_name).into() };
                catch_up(&self.published.get_or_create(&label), *n);
            }
        }
        for reason in DropReason::ALL {
            catch_up(
                &self.drops.get_or_create(&ReasonLabel { reason: reason.as_str().into() }),
                stats.drops(reason),
            );
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A histogram of durations that writers fill once per flush, lock-free: one atomic add per
/// bucket a flush touches. `prometheus-client`'s own takes a lock per observation, and every
/// delivered frame is one (3% of the server's CPU in a one-message-per-publish fan-out).
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram(Arc<LatencyBuckets>);

#[derive(Debug)]
pub(crate) struct LatencyBuckets {
    /// Upper bounds in seconds, ascending; the last is +Inf.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn new(bounds: impl Iterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.chain(std::iter::once(f64::INFINITY)).collect();
        assert!(bounds.len() <= 24, "observe_since counts into 24 local buckets");
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(LatencyBuckets { bounds, counts, sum_nanos: AtomicU64::new(0) }))
    }

    /// Records `now - at` for every `at` of one flush.
    pub(crate) fn observe_since(&self, now: tokio::time::Instant, stamps: &[tokio::time::Instant]) {
        let h = &*self.0;
        let mut counts = [0u64; 24];
        let mut sum = Duration::ZERO;
        for at in stamps {
            let d = now.duration_since(*at);
            sum += d;
            let secs = d.as_secs_f64();
            let bucket = h.bounds.partition_point(|bound| *bound < secs);
            counts[bucket.min(counts.len() - 1)] += 1;
        }
        for (count, n) in h.counts.iter().zip(counts) {
            if n > 0 {
                count.fetch_add(n, Relaxed);
            }
        }
        if !stamps.is_empty() {
            h.sum_nanos.fetch_add(u64::try_from(sum.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        }
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        let buckets: Vec<(f64, u64)> =
            h.bounds.iter().zip(&h.counts).map(|(b, c)| (*b, c.load(Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(h.sum_nanos.load(Relaxed)).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Moves a counter mirrored from the hub up to the hub's value.
fn catch_up(counter: &Counter<u64, AtomicU64>, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_counts_each_frame_of_a_flush_in_its_bucket() {
        let latency = LatencyHistogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let now = tokio::time::Instant::now();
        let ages = [40, 60, 60, 150, 3_000_000]; // µs: ≤ 50 µs, 2 × ≤ 100 µs, ≤ 200 µs, > 1.6 s
        let stamps: Vec<_> = ages.iter().map(|us| now - Duration::from_micros(*us)).collect();
        latency.observe_since(now, &stamps[..2]);
        latency.observe_since(now, &stamps[2..]);
        latency.observe_since(now, &[]);
        let mut registry = Registry::default();
        registry.register("latency", "test", latency);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} in {text}"))
        };
        assert_eq!(line("latency_count"), "latency_count 5");
        assert_eq!(line("latency_bucket{le=\"0.00005\"}"), "latency_bucket{le=\"0.00005\"} 1");
        assert_eq!(line("latency_bucket{le=\"0.0001\"}"), "latency_bucket{le=\"0.0001\"} 3");
        assert_eq!(line("latency_bucket{le=\"0.0002\"}"), "latency_bucket{le=\"0.0002\"} 4");
        assert_eq!(line("latency_bucket{le=\"1.6384\"}"), "latency_bucket{le=\"1.6384\"} 4");
        assert_eq!(line("latency_bucket{le=\"+Inf\"}"), "latency_bucket{le=\"+Inf\"} 5");
        let sum: f64 = line("latency_sum ").trim_start_matches("latency_sum ").parse().unwrap();
        assert!((sum - 3.00031).abs() < 1e-9, "sum {sum}");
    }
}
