//! Fan-out throughput: one publish to 10,000 subscribers of one topic, on the calling thread.
//!
//! `cargo bench -p modelcast-hub --bench fanout`
//!
//! - `fanout/quiet`: 10,000 subscribers; throughput is deliveries into outboxes per second.
//! - `fanout/churn`: the same while another thread makes 10,000 other connections subscribe
//!   and unsubscribe on the same topic without pause (with a filter that matches nothing, so
//!   the delivery count per publish stays 10,000 and only the contention differs).
//!
//! Outboxes are drained every 500 publishes, outside the timed section.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelcast_hub::{Connection, Hub, HubConfig, Publish, SubscribeOptions};
use modelcast_protocol::Topic;
use support::{message, timed};

const SUBSCRIBERS: usize = 10_000;

fn setup() -> (Hub, Vec<Connection>) {
    let hub = Hub::new(HubConfig::default());
    let conns: Vec<Connection> = (0..SUBSCRIBERS).map(|_| hub.connect()).collect();
    for c in &conns {
        c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).expect("subscribe");
    }
    (hub, conns)
}

/// Publishes `iters` progress updates about `m1`, timing only the publishes.
fn timed_publishes(hub: &Hub, conns: &[Connection], iters: u64) -> Duration {
    let msg = message();
    timed(hub, conns, iters, 500, |_| {
        Publish::new(msg.clone()).expect("topic message").subject("m1")
    })
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.sample_size(20).measurement_time(Duration::from_secs(10));

    let (hub, conns) = setup();
    group.bench_function("quiet", |b| b.iter_custom(|iters| timed_publishes(&hub, &conns, iters)));

    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churner = {
        let (hub, stop, churned) = (hub.clone(), stop.clone(), churned.clone());
        std::thread::spawn(move || {
            let pool: Vec<Connection> = (0..SUBSCRIBERS).map(|_| hub.connect()).collect();
            let nobody = SubscribeOptions::default().subjects(Some(vec!["nobody".into()]));
            while !stop.load(Ordering::Relaxed) {
                for c in &pool {
                    c.subscribe(Topic::DownloadProgress, nobody.clone()).expect("subscribe");
                    c.unsubscribe(Topic::DownloadProgress);
                    churned.fetch_add(2, Ordering::Relaxed);
                }
            }
        })
    };
    let started = Instant::now();
    group.bench_function("churn", |b| b.iter_custom(|iters| timed_publishes(&hub, &conns, iters)));
    stop.store(true, Ordering::Relaxed);
    churner.join().expect("churner");
    let rate = churned.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    #[allow(clippy::print_stderr)]
    {
        eprintln!("churn: {rate:.0} subscribe/unsubscribe operations per second during the run");
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
