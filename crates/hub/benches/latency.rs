//! Publish latency with 10,000 subscribers and 100 concurrent publishers (one topic).
//!
//! `cargo bench -p modelcast-hub --bench latency`
//!
//! 100 tokio tasks on a 2-thread runtime each publish 200 messages as fast as they can; every
//! `publish` call is timed. One drainer thread empties the 10,000 outboxes meanwhile, as the
//! server's writers would. Prints p50/p99/max of the `publish` call and the delivery rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use modelcast_hub::{Connection, Hub, HubConfig, Publish, SubscribeOptions};
use modelcast_protocol::{ServerMessage, Topic};

const SUBSCRIBERS: usize = 10_000;
const PUBLISHERS: usize = 100;
const PER_PUBLISHER: usize = 200;

fn message(i: usize) -> ServerMessage {
    serde_json::from_value(serde_json::json!({
        "type": "download_progress_update",
        "data": {
            "model_id": format!("model-{}", i % 8), "status": "downloading",
            "progress_percent": 45.5, "downloaded_mb": 455.0, "total_mb": 1000.0,
            "speed_mbps": 15.2, "eta_seconds": 36.0, "can_pause": true, "can_resume": true,
            "can_cancel": true, "timestamp": "2025-08-27T10:30:00Z"
        }
    }))
    .expect("valid message")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[allow(clippy::print_stdout)]
fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let hub = Hub::new(HubConfig::default());
    let conns: Vec<Connection> = (0..SUBSCRIBERS).map(|_| hub.connect()).collect();
    for c in &conns {
        c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).expect("subscribe");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(1024);
            while !stop.load(Ordering::Relaxed) {
                for c in &conns {
                    let _ = c.try_recv(&mut buf, 1024);
                    buf.clear();
                }
            }
            conns
        })
    };

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("rt");
    let started = Instant::now();
    let mut latencies: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let mut own = Vec::with_capacity(PER_PUBLISHER);
                    for i in 0..PER_PUBLISHER {
                        let publish = Publish::new(message(p + i)).expect("topic message");
                        let t = Instant::now();
                        hub.publish(publish);
                        own.push(t.elapsed());
                        tokio::task::yield_now().await;
                    }
                    own
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("publisher"));
        }
        all
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let conns = drainer.join().expect("drainer");
    latencies.sort();
    let stats = hub.stats();
    let topic = stats.topic(Topic::DownloadProgress);
    println!("publish latency, {SUBSCRIBERS} subscribers, {PUBLISHERS} concurrent publishers");
    println!("  publishes        {}", latencies.len());
    println!("  p50              {:?}", percentile(&latencies, 0.50));
    println!("  p99              {:?}", percentile(&latencies, 0.99));
    println!("  max              {:?}", latencies.last().expect("some"));
    println!("  deliveries/s     {:.2} M", topic.delivered as f64 / elapsed.as_secs_f64() / 1e6);
    println!("  conflated/dropped {}/{}", topic.conflated, topic.dropped);
    drop(conns);
}
