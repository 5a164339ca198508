//! Hub: throttling, transitions, batching and per-subscriber `max_hz`, on tokio's paused clock.

use std::time::Duration;

use modelcast_hub::{
    Batcher, ConflateReason, Connection, Hub, Kind, Publish, Retain, SubscribeOptions,
};
use modelcast_protocol::{DownloadStatus, Topic};
use modelcast_tests::msg::{model_status, progress, status_change};
use modelcast_tests::recv::drain;
use serde_json::Value;
use tokio::time::Instant;

/// Advances the paused clock and lets woken timers run.
async fn tick(d: Duration) {
    tokio::time::advance(d).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn take(c: &Connection) -> Vec<Value> {
    drain(c, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f["type"] != "subscribed")
        .collect()
}

fn update(model: &str, pct: f64, throttle: Duration) -> Publish {
    Publish::new(progress(model, pct)).unwrap().key(model).kind(Kind::Update).throttle(throttle)
}

fn pct(f: &Value) -> f64 {
    f["data"]["progress_percent"].as_f64().unwrap()
}

/// At most one update per interval per key, the newest value at each window's end, and the
/// final 100% always arrives.
#[tokio::test(start_paused = true)]
async fn throttling_is_trailing_edge_and_delivers_the_final_value() {
    let hub = Hub::default();
    let c = hub.connect();
    c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    let interval = Duration::from_secs(2);
    let start = Instant::now();
    let mut got: Vec<(Duration, f64)> = Vec::new();
    // 101 updates of each key every 100 ms, then 3 s more to let the last window end.
    for i in 0..131 {
        if i <= 100 {
            hub.publish(update("m", f64::from(i), interval));
            // Another key is throttled independently.
            hub.publish(update("other", f64::from(i), interval));
        }
        let frames = take(&c).await;
        let of_m = frames.iter().filter(|f| f["data"]["model_id"] == "m");
        got.extend(of_m.map(|f| (start.elapsed(), pct(f))));
        tick(Duration::from_millis(100)).await;
    }
    assert_eq!(got.first().unwrap().1, 0.0, "the first update goes out at once");
    assert_eq!(got.last().unwrap().1, 100.0, "the final value arrives: {got:?}");
    for w in got.windows(2) {
        assert!(w[1].0 - w[0].0 >= interval, "two updates within one interval: {w:?}");
        assert!(w[1].1 > w[0].1, "out of order: {w:?}");
    }
    // ~10 s of updates at one per 2 s: about 6, not 101.
    assert!((5..=8).contains(&got.len()), "{} deliveries: {got:?}", got.len());
    let stats = hub.stats();
    assert!(stats.topic(Topic::DownloadProgress).conflated > 150);
    assert_eq!(
        stats.topic(Topic::DownloadProgress).conflated_by[0],
        (ConflateReason::Throttle, stats.topic(Topic::DownloadProgress).conflated)
    );
}

/// A transition releases the pending throttled update of its key first, then goes out — at
/// once, never overtaking the progress before it.
#[tokio::test(start_paused = true)]
async fn a_transition_flushes_the_pending_update_first() {
    let hub = Hub::default();
    let c = hub.connect();
    c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    let interval = Duration::from_secs(2);
    hub.publish(update("m", 10.0, interval));
    hub.publish(update("m", 20.0, interval)); // pending
    hub.publish(update("m", 30.0, interval)); // replaces 20
    let paused = status_change("m", DownloadStatus::Downloading, DownloadStatus::Paused);
    hub.publish(Publish::new(paused).unwrap().key("m").kind(Kind::Transition));
    let frames = take(&c).await;
    let seen: Vec<String> = frames
        .iter()
        .map(|f| match f["type"].as_str().unwrap() {
            "download_progress_update" => format!("{}", pct(f)),
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(seen, ["10", "30", "download_status_change"]);
    // Nothing more arrives when the window ends.
    tick(Duration::from_secs(3)).await;
    assert!(take(&c).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_batched_and_a_lone_update_goes_out_plain() {
    let hub = Hub::default();
    let c = hub.connect();
    c.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
    let batcher =
        Batcher::new(&hub, Duration::from_millis(100), modelcast_notifiers::combine_model_status);
    let keep = |m: &str, size: f64| {
        Publish::new(model_status(m, size)).unwrap().key(m).retain(Retain::Keep)
    };

    batcher.publish(keep("a", 1.0));
    batcher.publish(keep("b", 1.0));
    batcher.publish(keep("a", 2.0)); // newest per key
    assert!(take(&c).await.is_empty(), "nothing before the window ends");
    tick(Duration::from_millis(100)).await;
    let frames = take(&c).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "batch_model_status_update");
    assert_eq!(frames[0]["data"]["count"], 2);
    let batch = hub.stats().topic(Topic::ModelStatus).conflated_by.clone();
    assert!(batch.contains(&(ConflateReason::Batch, 1)), "the older `a` was replaced: {batch:?}");
    let models: Vec<(&str, f64)> = frames[0]["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["model_id"].as_str().unwrap(), m["size_mb"].as_f64().unwrap()))
        .collect();
    assert_eq!(models, [("b", 1.0), ("a", 2.0)]);
    // Each part is retained under its own key, as a plain update.
    let retained: Vec<Value> = hub
        .retained(Topic::ModelStatus)
        .iter()
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect();
    assert_eq!(retained.len(), 2);
    assert!(retained.iter().all(|f| f["type"] == "model_status_update" && f["seq"] == 1));

    batcher.publish(keep("c", 1.0));
    tick(Duration::from_millis(100)).await;
    let frames = take(&c).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "model_status_update");
    assert_eq!(frames[0]["seq"], 2);
}

/// `max_hz` per subscription: at most that many updates per second per key, newest value,
/// transitions never held back and never overtaking.
#[tokio::test(start_paused = true)]
async fn max_hz_limits_one_subscriber_per_key_without_dropping_transitions() {
    let hub = Hub::default();
    let limited = hub.connect();
    let full = hub.connect();
    limited
        .subscribe(Topic::DownloadProgress, SubscribeOptions::default().max_hz(Some(2.0)))
        .unwrap();
    full.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    let start = Instant::now();
    let mut got: Vec<(Duration, String)> = Vec::new();
    for i in 0..20 {
        let p = Publish::new(progress("m", f64::from(i))).unwrap().key("m").kind(Kind::Update);
        hub.publish(p);
        if i == 12 {
            let paused = status_change("m", DownloadStatus::Downloading, DownloadStatus::Paused);
            hub.publish(Publish::new(paused).unwrap().key("m").kind(Kind::Transition));
        }
        for f in take(&limited).await {
            let what = match f["type"].as_str().unwrap() {
                "download_progress_update" => format!("{}", pct(&f)),
                other => other.to_owned(),
            };
            got.push((start.elapsed(), what));
        }
        tick(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        got.extend(take(&limited).await.iter().map(|f| (start.elapsed(), format!("{}", pct(f)))));
        tick(Duration::from_millis(100)).await;
    }
    let labels: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
    // 0 at once; then the newest each 500 ms; 12 is released by the transition, which follows
    // it at once; the last value (19) arrives at the end.
    assert_eq!(labels.first(), Some(&"0"));
    let t =
        labels.iter().position(|l| *l == "download_status_change").expect("transition delivered");
    assert_eq!(labels[t - 1], "12", "the held update goes right before the transition: {labels:?}");
    assert_eq!(labels.last(), Some(&"19"), "{labels:?}");
    let updates: Vec<&(Duration, String)> =
        got.iter().filter(|(_, l)| l.parse::<f64>().is_ok()).collect();
    assert!(updates.len() <= 7, "{labels:?}");
    assert_eq!(take(&full).await.len(), 21, "an unlimited subscriber gets everything");
    let by = hub.stats().topic(Topic::DownloadProgress).conflated_by.clone();
    assert!(by.iter().any(|(r, n)| *r == ConflateReason::MaxHz && *n > 5), "{by:?}");
}
