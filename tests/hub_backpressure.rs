//! Hub: bounded outboxes — collapse, `lagging`, then drop; others unaffected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use modelcast_hub::{ConflateReason, DropReason, Hub, HubConfig, Kind, Publish, SubscribeOptions};
use modelcast_protocol::{DownloadStatus, Topic};
use modelcast_tests::msg::{progress, status_change};
use modelcast_tests::recv::{drain, of_type, seqs};
use serde_json::Value;

/// The i-th message of a download stream: mostly progress, every 7th a status change.
fn nth(i: u64) -> Publish {
    let model = format!("m{}", i % 10);
    if i.is_multiple_of(7) {
        let change = status_change(&model, DownloadStatus::Downloading, DownloadStatus::Paused);
        Publish::new(change).unwrap().key(model).kind(Kind::Transition)
    } else {
        Publish::new(progress(&model, i as f64)).unwrap().key(model).kind(Kind::Update)
    }
}

/// One subscriber reads once (and sees `lagging`) and then never again while 10,000 messages
/// are published: the others get every one, its queue never exceeds its bound, it is
/// collapsed, then dropped as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_and_the_others_get_everything() {
    const TOTAL: u64 = 10_000;
    let hub = Hub::new(HubConfig::default().outbox_capacity(1000));
    let slow = hub.connect();
    slow.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    let progress_made: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let fast: Vec<_> = (0..3)
        .map(|i| {
            let c = hub.connect();
            c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
            let progress_made = progress_made.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < TOTAL as usize {
                    let mut out = Vec::new();
                    c.recv(&mut out, 256).await.unwrap();
                    for d in out {
                        let v: Value = serde_json::from_slice(d.frame().as_bytes()).unwrap();
                        if let Some(seq) = v["seq"].as_u64() {
                            got.push(seq);
                        }
                    }
                    progress_made[i].store(got.len() as u64, Ordering::Relaxed);
                }
                (got, c)
            })
        })
        .collect();

    let mut max_queued = 0;
    let mut saw_lagging = false;
    for i in 1..=TOTAL {
        hub.publish(nth(i));
        max_queued = max_queued.max(slow.queued());
        // Once, right after its queue first overflows, the slow one looks: it is told.
        if !saw_lagging && hub.stats().topic(Topic::DownloadProgress).conflated > 0 {
            let seen = drain(&slow, Duration::from_millis(50)).await.unwrap();
            assert_eq!(seen[1]["type"], "lagging", "first after `subscribed`: {:?}", &seen[..2]);
            saw_lagging = true;
        }
        if i % 100 == 0 {
            // Keep the readers within reach (they are fast, the machine may not be).
            while progress_made.iter().any(|p| p.load(Ordering::Relaxed) + 500 < i) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let mut keep_open = Vec::new();
    for f in fast {
        let (got, conn) = f.await.unwrap();
        assert_eq!(got, (1..=TOTAL).collect::<Vec<_>>());
        keep_open.push(conn);
    }
    assert!(saw_lagging, "the slow subscriber never overflowed");
    assert!(max_queued <= 1000, "queue grew to {max_queued}");
    assert_eq!(slow.closed(), Some(DropReason::SlowConsumer));
    assert_eq!(slow.queued(), 0, "a dropped subscriber's queue is freed");
    let mut out = Vec::new();
    assert_eq!(slow.recv(&mut out, 10).await, Err(DropReason::SlowConsumer));
    let stats = hub.stats();
    assert_eq!(stats.drops(DropReason::SlowConsumer), 1);
    assert!(stats.topic(Topic::DownloadProgress).conflated > 0);
    let queue_full = stats.topic(Topic::DownloadProgress).conflated_by.clone();
    assert!(
        queue_full.iter().any(|(r, n)| *r == ConflateReason::QueueFull && *n > 0),
        "{queue_full:?}"
    );
    assert!(stats.topic(Topic::DownloadProgress).dropped > 0);
    assert_eq!(stats.topic(Topic::DownloadProgress).subscribers, 3);
}

/// A full queue collapses progress to the newest value per key, keeps every status change in
/// order, and tells the subscriber with one `lagging` notice, first in line.
#[tokio::test]
async fn a_full_queue_collapses_updates_keeps_transitions_and_says_lagging() {
    let hub = Hub::new(HubConfig::default().outbox_capacity(100));
    let c = hub.connect();
    c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    for i in 1..=300 {
        hub.publish(nth(i));
    }
    assert!(c.queued() <= 100);
    let frames = drain(&c, Duration::from_millis(200)).await.unwrap();
    assert_eq!(c.closed(), None, "collapsing made room: not dropped");
    let lagging = of_type(&frames, "lagging");
    assert_eq!(lagging.len(), 1, "one notice at a time");
    assert_eq!(frames[0]["type"], "subscribed");
    assert_eq!(frames[1]["type"], "lagging", "the notice goes ahead of the queued updates");
    assert!(lagging[0]["data"]["conflated"].as_u64().unwrap() > 0);
    assert_eq!(lagging[0]["data"]["capacity"], 100);
    // Every status change survived, in order.
    let transitions: Vec<u64> = of_type(&frames, "download_status_change")
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(transitions, (1..=300).filter(|i| i % 7 == 0).collect::<Vec<_>>());
    // Everything is in seq order, and each key's newest progress is there.
    let all = seqs(&frames);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    for k in 0..10u64 {
        let newest = (1..=300).rev().find(|i| i % 10 == k && i % 7 != 0).unwrap();
        assert!(all.contains(&newest), "newest progress of m{k} (seq {newest}) is missing");
    }
}

/// A run fanned out at once (`Hub::publish` with several messages) fills a small queue as the same publishes one by
/// one do: updates collapse to the newest per key with one `lagging` notice, and events that
/// still do not fit drop the subscriber as a slow consumer.
#[tokio::test]
async fn a_run_published_at_once_collapses_and_drops_as_one_by_one() {
    async fn run(many: bool, events: usize) -> (Result<Vec<Value>, DropReason>, u64) {
        let hub = Hub::new(HubConfig::default().outbox_capacity(8));
        let c = hub.connect();
        c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
        drain(&c, Duration::from_millis(100)).await.unwrap();
        let updates = (0..40u32).map(|i| {
            let model = format!("m{}", i % 4);
            Publish::new(progress(&model, f64::from(i))).unwrap().key(model).kind(Kind::Update)
        });
        let stops = (0..events).map(|i| {
            let model = format!("e{i}");
            let change = status_change(&model, DownloadStatus::Downloading, DownloadStatus::Paused);
            Publish::new(change).unwrap()
        });
        let script: Vec<Publish> = updates.chain(stops).collect();
        if many {
            hub.publish(script);
        } else {
            script.into_iter().for_each(|p| drop(hub.publish(p)));
        }
        let frames = drain(&c, Duration::from_millis(100)).await.map(|frames| {
            frames
                .into_iter()
                .map(|mut f| {
                    f["data"].as_object_mut().map(|d| d.remove("timestamp"));
                    f
                })
                .collect()
        });
        (frames, hub.stats().drops(DropReason::SlowConsumer))
    }
    // Collapsed, not dropped: 4 keys' newest values, a lagging notice, 3 events.
    let (one_by_one, dropped) = run(false, 3).await;
    assert_eq!(run(true, 3).await, (one_by_one.clone(), dropped));
    let frames = one_by_one.unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(of_type(&frames, "lagging").len(), 1);
    assert_eq!(of_type(&frames, "download_progress_update").len(), 4);
    // Events beyond what collapsing frees: dropped, the same way.
    let (one_by_one, dropped) = run(false, 20).await;
    assert_eq!(run(true, 20).await, (one_by_one.clone(), dropped));
    assert_eq!((one_by_one, dropped), (Err(DropReason::SlowConsumer), 1));
}
