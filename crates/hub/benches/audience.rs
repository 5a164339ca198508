//! What an audience costs the fan-out: one publish to a topic with 1,000 subscribers, each a
//! different user (role `user`), on the calling thread.
//!
//! `cargo bench -p modelcast-hub --bench audience`
//!
//! Throughput is subscribers *looked at* per publish (1,000), so the rows compare the cost of
//! each check per subscriber:
//! - `everyone`: no filter, no audience; 1,000 deliveries (the baseline of a delivery).
//! - `filter_one`: each subscription filters on its own subject, the message is about one:
//!   one delivery, 999 filter checks that fail (what a filter costs per subscriber today).
//! - `user_one`: no filter, the message's audience is one user: one delivery, 999 audience
//!   checks that fail (the case of issue 27: every message for one user).
//! - `role_all`: the audience is the role every subscriber holds: 1,000 deliveries, each
//!   after an audience check that passes.
//!
//! Outboxes are drained every 200 publishes, outside the timed section.

use std::time::Duration;

mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelcast_hub::{Audience, Connection, Hub, HubConfig, Publish, SubscribeOptions, Viewer};
use modelcast_protocol::Topic;
use support::{message, timed};

const SUBSCRIBERS: usize = 1_000;

/// 1,000 subscribers, `user-<i>` with role `user`; filtered on `m<i>` if `filtered`.
fn setup(filtered: bool) -> (Hub, Vec<Connection>) {
    let hub = Hub::new(HubConfig::default());
    let conns: Vec<Connection> = (0..SUBSCRIBERS).map(|_| hub.connect()).collect();
    for (i, c) in conns.iter().enumerate() {
        c.set_viewer(Viewer::new(format!("user-{i}").as_str(), ["user"]));
        let options = SubscribeOptions::default().subjects(filtered.then(|| vec![format!("m{i}")]));
        c.subscribe(Topic::DownloadProgress, options).expect("subscribe");
    }
    (hub, conns)
}

fn audience(c: &mut Criterion) {
    let mut group = c.benchmark_group("audience");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.sample_size(30).measurement_time(Duration::from_secs(8));
    let msg = message();
    let plain = || Publish::new(msg.clone()).expect("topic message");
    // The audiences and subjects, made before timing (a publisher builds its own anyway).
    let users: Vec<std::sync::Arc<Audience>> = (0..SUBSCRIBERS)
        .map(|i| std::sync::Arc::new(Audience::users([format!("user-{i}").as_str()])))
        .collect();
    let role = std::sync::Arc::new(Audience::roles(["user"]));
    let pick = |i: u64| (i as usize * 7919) % SUBSCRIBERS;

    let (hub, conns) = setup(false);
    group.bench_function("everyone", |b| {
        b.iter_custom(|n| timed(&hub, &conns, n, 200, |_| plain()))
    });
    group.bench_function("user_one", |b| {
        b.iter_custom(|n| timed(&hub, &conns, n, 200, |i| plain().audience(users[pick(i)].clone())))
    });
    group.bench_function("role_all", |b| {
        b.iter_custom(|n| timed(&hub, &conns, n, 200, |_| plain().audience(role.clone())))
    });
    drop(conns);

    let (hub, conns) = setup(true);
    group.bench_function("filter_one", |b| {
        b.iter_custom(|n| timed(&hub, &conns, n, 200, |i| plain().subject(format!("m{}", pick(i)))))
    });
    group.finish();
}

criterion_group!(benches, audience);
criterion_main!(benches);
