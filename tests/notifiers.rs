//! Notifiers: seed shapes, policy behaviour over a download's life, health level filtering,
//! stale downloads, availability sweeps, component channels, and the demo.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use modelcast_hub::{Connection, Hub, HubConfig, SubscribeOptions};
use modelcast_notifiers::demo::{self, DemoConfig};
use modelcast_notifiers::{
    DownloadEvent, HealthReport, ModelState, Notifiers, NotifiersConfig, Outcome, Policy,
    PolicyConfig, Strategy, Suggestion, retry_backoff,
};
use modelcast_protocol::{
    AlertLevel, AvailabilityStatus, CorruptionType, HealthStatus, ModelStatusSummary, Priority,
    ServerMessage, Severity, StrategyType, Topic,
};
use modelcast_tests::fixtures;
use modelcast_tests::recv::drain;
use serde_json::{Value, json};

fn setup(policy: PolicyConfig) -> (Hub, Notifiers, Connection) {
    let hub = Hub::new(HubConfig::default().outbox_capacity(1_000_000));
    let notifiers = Notifiers::new(Policy::new(&hub, policy), NotifiersConfig::default());
    let conn = hub.connect();
    for topic in Topic::ALL {
        conn.subscribe(topic, SubscribeOptions::default()).unwrap();
    }
    (hub, notifiers, conn)
}

async fn frames(conn: &Connection) -> Vec<Value> {
    drain(conn, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f["type"] != "subscribed")
        .collect()
}

fn seed(name: &str) -> Value {
    fixtures("seed").into_iter().find(|(n, _)| n == name).expect(name).1
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `ours` has every field of the seed's example with the same JSON type, plus only the named
/// additive fields; with `exact`, the values match too (timestamps aside).
fn assert_seed_shape(ours: &Value, name: &str, extra: &[&str], exact: bool) {
    let theirs = seed(name);
    assert_eq!(ours["type"], name);
    let (o, t) = (ours["data"].as_object().unwrap(), theirs["data"].as_object().unwrap());
    for (k, v) in t {
        let mine = o.get(k).unwrap_or_else(|| panic!("{name}: missing {k}"));
        assert_eq!(json_type(mine), json_type(v), "{name}.{k}");
        if exact && k != "timestamp" {
            assert_eq!(mine, v, "{name}.{k}");
        }
    }
    for k in o.keys() {
        assert!(t.contains_key(k) || extra.contains(&k.as_str()), "{name}: unexpected field {k}");
    }
}

#[tokio::test(start_paused = true)]
async fn every_notifier_produces_the_seeds_message_shape() {
    let (_hub, n, conn) = setup(PolicyConfig::default().health_level(AlertLevel::Info));
    let take = |conn: &Connection| {
        let conn = conn.clone();
        async move { frames(&conn).await }
    };

    let mut state = ModelState::new("t2v-a14b", AvailabilityStatus::Available, 1024.0);
    (state.integrity_score, state.performance_score, state.usage_frequency) = (0.95, 0.88, 2.5);
    n.availability().status(&state);
    tokio::time::sleep(Duration::from_millis(150)).await; // the batch window
    assert_seed_shape(&take(&conn).await[0], "model_status_update", &[], true);

    n.availability().change(
        "i2v-a14b",
        AvailabilityStatus::Missing,
        AvailabilityStatus::Downloading,
        "User requested download",
    );
    assert_seed_shape(&take(&conn).await[0], "model_availability_change", &[], true);

    n.availability().batch(vec![ModelStatusSummary {
        integrity_score: Some(0.98),
        ..ModelStatusSummary::from(&serde_json::from_value(json!({
            "model_id": "t2v-a14b", "availability_status": "available", "is_available": true,
            "is_loaded": false, "size_mb": 1.0, "integrity_score": 0.98, "performance_score": 1.0,
            "usage_frequency": 0.0, "update_available": false, "timestamp": "2025-08-27T10:30:00Z"
        })).unwrap())
    }]);
    let batch = take(&conn).await.remove(0);
    assert_eq!(batch["data"]["count"], 1);
    assert_eq!(batch["data"]["models"][0]["integrity_score"], 0.98);

    let d = n.downloads();
    d.started("t2v-a14b", 1000.0);
    assert_seed_shape(&take(&conn).await[0], "download_status_change", &["event"], true);
    d.progress("t2v-a14b", 455.0, 1000.0, 15.2);
    let progress = take(&conn).await.remove(0);
    assert_seed_shape(&progress, "download_progress_update", &[], false);
    assert_eq!(progress["data"]["progress_percent"], 45.5);
    // 545 MB left at 15.2 MB/s = 35.855… s, rounded to a tenth for people.
    assert_eq!(progress["data"]["eta_seconds"], 35.9);
    d.retry("t2v-a14b", "Network timeout", 3);
    d.retry("t2v-a14b", "Network timeout", 3);
    let retries: Vec<Value> =
        take(&conn).await.into_iter().filter(|f| f["type"] == "download_retry").collect();
    assert_seed_shape(&retries[1], "download_retry", &[], true);

    n.health().check_result("t2v-a14b", HealthReport::new(HealthStatus::Healthy, 0.98, 5, 1024.0));
    assert_seed_shape(&take(&conn).await[0], "health_monitoring_alert", &["issues"], true);
    n.health().corruption_detected(
        "t2v-a14b",
        CorruptionType::ChecksumMismatch,
        Severity::High,
        "Re-download corrupted files",
        true,
    );
    assert_seed_shape(&take(&conn).await[0], "corruption_detection", &[], true);

    n.fallback().strategy_activated(
        "unavailable-model",
        Strategy::new(
            StrategyType::AlternativeModel,
            "Use alternative model",
            "Suggested alternative model available",
        )
        .alternative("backup-model"),
    );
    assert_seed_shape(&take(&conn).await[0], "fallback_strategy", &["estimated_wait_time"], true);
    n.fallback().alternative_suggested(
        "requested-model",
        Suggestion::new(
            "alternative-model",
            0.85,
            -0.1,
            "Similar capabilities with slightly lower performance",
        ),
    );
    assert_seed_shape(&take(&conn).await[0], "alternative_model_suggestion", &[], true);
    n.fallback().queue_position("queued-model", 2, 300.0);
    assert_seed_shape(&take(&conn).await[0], "model_queue_update", &[], true);

    n.system().usage_statistics(
        5,
        3,
        Some("t2v-a14b"),
        BTreeMap::from([("daily_usage".into(), 25), ("weekly_usage".into(), 150)]),
    );
    assert_seed_shape(&take(&conn).await[0], "usage_statistics_update", &[], true);
    n.system().cleanup_recommendation(
        vec!["unused-model-1".into(), "unused-model-2".into()],
        2048.0,
        Priority::Medium,
    );
    assert_seed_shape(&take(&conn).await[0], "cleanup_recommendation", &[], true);
}

/// A download's life through the policy: the throttle never loses the final 100% and never
/// lets a status change overtake the progress before it; the retained state follows the
/// download and is cleared when it completes.
#[tokio::test(start_paused = true)]
async fn a_downloads_life_keeps_order_final_progress_and_retained_state() {
    let (hub, n, conn) = setup(PolicyConfig::default());
    let d = n.downloads();
    d.started("m", 1000.0);
    for i in 1..=100 {
        d.progress("m", f64::from(i) * 10.0, 1000.0, 100.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if i == 50 {
            assert_eq!(
                hub.retained(Topic::DownloadProgress).len(),
                1,
                "the active download is retained"
            );
        }
    }
    d.completed("m");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = frames(&conn).await;
    let events: Vec<String> = all
        .iter()
        .map(|f| match f["type"].as_str().unwrap() {
            "download_progress_update" => format!("{}", f["data"]["progress_percent"]),
            _ => f["data"]["new_status"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("downloading"));
    assert_eq!(&events[events.len() - 2..], ["100.0", "completed"], "{events:?}");
    let percents: Vec<f64> = events.iter().filter_map(|e| e.parse().ok()).collect();
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    assert!(percents.len() < 10, "throttled to one per 2 s: {percents:?}");
    assert!(
        hub.retained(Topic::DownloadProgress).is_empty(),
        "a finished download leaves the state"
    );
}

#[tokio::test(start_paused = true)]
async fn health_results_are_filtered_by_level() {
    let healthy = || HealthReport::new(HealthStatus::Healthy, 1.0, 1, 1.0);
    let degraded = || HealthReport::new(HealthStatus::Degraded, 0.9, 1, 1.0);
    let (_h, n, conn) = setup(PolicyConfig::default()); // warning
    assert!(matches!(n.health().check_result("m", healthy()), Outcome::Filtered { .. }));
    assert!(matches!(n.health().check_result("m", degraded()), Outcome::Sent { .. }));
    assert!(
        matches!(
            n.health().performance_degradation("m", "t", 10.0, 11.0),
            Outcome::Filtered { .. }
        ),
        "10% is low severity"
    );
    assert_eq!(frames(&conn).await.len(), 1);
    let (_h, n, conn) = setup(PolicyConfig::default().health_level(AlertLevel::Info));
    n.health().check_result("m", healthy());
    assert_eq!(frames(&conn).await.len(), 1);
    let (_h, n, conn) = setup(PolicyConfig::default().health_level(AlertLevel::Critical));
    n.health().check_result("m", HealthReport::new(HealthStatus::Corrupted, 0.1, 1, 1.0));
    // Corruption reports are not health-check results: always published.
    n.health().corruption_detected("m", CorruptionType::MissingFiles, Severity::Low, "x", true);
    let got = frames(&conn).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["type"], "corruption_detection");
}

#[tokio::test(start_paused = true)]
async fn a_silent_download_turns_stale_and_recovers_when_reports_resume() {
    let hub = Hub::default();
    let n = Notifiers::new(
        Policy::new(&hub, PolicyConfig::default()),
        NotifiersConfig::default().stale_after(Duration::from_secs(10)),
    );
    let conn = hub.connect();
    conn.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    let d = n.downloads();
    d.started("m", 100.0);
    d.progress("m", 10.0, 100.0, 1.0);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(frames(&conn).await.iter().all(|f| f["data"]["new_status"] != "stale"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stale: Vec<Value> =
        frames(&conn).await.into_iter().filter(|f| f["data"]["new_status"] == "stale").collect();
    assert_eq!(stale.len(), 1, "marked stale once");
    assert_eq!(stale[0]["data"]["event"], "stale");
    assert_eq!(hub.retained(Topic::DownloadProgress).len(), 1, "a stale download is still shown");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(frames(&conn).await.is_empty(), "not marked again");
    d.progress("m", 20.0, 100.0, 1.0);
    let back = frames(&conn).await;
    assert_eq!(
        (back[0]["data"]["old_status"].as_str(), back[0]["data"]["new_status"].as_str()),
        (Some("stale"), Some("downloading"))
    );
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_and_give_up_after_the_maximum() {
    assert_eq!([1, 2, 3, 4].map(|a| retry_backoff(a).as_secs()), [2, 4, 8, 16]);
    assert_eq!(retry_backoff(40), Duration::from_secs(300));
    let (_h, n, conn) = setup(PolicyConfig::default());
    let d = n.downloads();
    d.started("m", 10.0);
    for _ in 0..3 {
        d.retry("m", "timeout", 2);
    }
    let f = frames(&conn).await;
    let retries: Vec<u64> = f
        .iter()
        .filter(|f| f["type"] == "download_retry")
        .map(|f| f["data"]["next_retry_in_seconds"].as_u64().unwrap())
        .collect();
    assert_eq!(retries, [2, 4]);
    let last = f.last().unwrap();
    assert_eq!(last["data"]["new_status"], "failed");
    assert!(last["data"]["error_message"].as_str().unwrap().contains("gave up after 2 retries"));
}

#[tokio::test(start_paused = true)]
async fn an_availability_sweep_publishes_only_what_changed() {
    let (_h, n, conn) = setup(PolicyConfig::default());
    let mut last = HashMap::new();
    let a = ModelState::new("a", AvailabilityStatus::Available, 1.0);
    let b = ModelState::new("b", AvailabilityStatus::Missing, 0.0);
    assert_eq!(n.availability().sweep(vec![a.clone(), b.clone()], &mut last), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let first = frames(&conn).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["type"], "batch_model_status_update", "a burst becomes one batch");
    assert_eq!(n.availability().sweep(vec![a.clone(), b.clone()], &mut last), 0);
    let downloading = ModelState::new("b", AvailabilityStatus::Downloading, 0.0);
    assert_eq!(n.availability().sweep(vec![a, downloading], &mut last), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let types: Vec<Value> = frames(&conn).await.iter().map(|f| f["type"].clone()).collect();
    assert_eq!(types, [json!("model_availability_change"), json!("model_status_update")]);
}

/// Part of issue 15: a change announced between two sweeps (the demo's repair: corrupted →
/// available) is where the next swept change starts from, not the state the sweep saw last.
#[tokio::test(start_paused = true)]
async fn a_swept_change_starts_from_the_last_announced_status() {
    let (_h, n, conn) = setup(PolicyConfig::default());
    let mut last = HashMap::new();
    let corrupted = ModelState::new("m", AvailabilityStatus::Corrupted, 1.0);
    n.availability().sweep(vec![corrupted], &mut last);
    n.availability().change(
        "m",
        AvailabilityStatus::Corrupted,
        AvailabilityStatus::Available,
        "Repair completed",
    );
    let loaded = ModelState::new("m", AvailabilityStatus::Loaded, 1.0);
    n.availability().sweep(vec![loaded], &mut last);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let changes: Vec<(Value, Value)> = frames(&conn)
        .await
        .iter()
        .filter(|f| f["type"] == "model_availability_change")
        .map(|f| (f["data"]["old_availability"].clone(), f["data"]["new_availability"].clone()))
        .collect();
    assert_eq!(
        changes,
        [(json!("corrupted"), json!("available")), (json!("available"), json!("loaded"))]
    );
}

#[tokio::test]
async fn wiring_a_downloader_is_one_channel() {
    let (_h, n, conn) = setup(PolicyConfig::default());
    let events = n.download_events();
    events.send(DownloadEvent::Started { model_id: "m".into(), total_mb: 10.0 }).await.unwrap();
    events.send(DownloadEvent::Completed { model_id: "m".into() }).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.extend(frames(&conn).await);
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let statuses: Vec<&str> =
        seen.iter().filter_map(|f| f["data"]["new_status"].as_str()).collect();
    assert_eq!(statuses, ["downloading", "completed"]);
}

/// The demo publishes every topic message type within two simulated minutes.
#[tokio::test(start_paused = true)]
async fn the_demo_emits_every_message_type() {
    let hub = Hub::new(HubConfig::default().outbox_capacity(1_000_000));
    let n = Notifiers::new(
        Policy::new(&hub, PolicyConfig::default()),
        NotifiersConfig::default().stale_after(Duration::from_secs(10)),
    );
    let conn = hub.connect();
    // The demo user's own download reaches a connection of that user, no one else.
    let user = hub.connect();
    user.set_viewer(modelcast_hub::Viewer::new(demo::DEMO_USER, Vec::<&str>::new()));
    for topic in Topic::ALL {
        conn.subscribe(topic, SubscribeOptions::default()).unwrap();
        user.subscribe(topic, SubscribeOptions::default()).unwrap();
    }
    let tasks = demo::spawn(&n, DemoConfig::default().stale_after(Duration::from_secs(10)));
    let mut seen = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    let mut personal: Vec<String> = Vec::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for f in frames(&conn).await {
            if let Some(s) = f["data"]["new_status"].as_str() {
                statuses.insert(s.to_owned());
            }
            assert_ne!(f["data"]["model_id"], "lora-demo-style", "the user's own download leaked");
            seen.insert(f["type"].as_str().unwrap().to_owned());
        }
        for f in frames(&user).await {
            if f["data"]["model_id"] == "lora-demo-style"
                && let Some(s) = f["data"]["new_status"].as_str()
            {
                personal.push(s.to_owned());
            }
        }
    }
    assert!(personal.starts_with(&["downloading".into(), "completed".into()]), "{personal:?}");
    for t in tasks {
        t.abort();
    }
    let expected: BTreeSet<String> = ServerMessage::TYPES
        .iter()
        .filter(|t| ServerMessage::topic_of(t).is_some())
        .map(|t| (*t).to_owned())
        .collect();
    let missing: Vec<&String> = expected.difference(&seen).collect();
    assert!(missing.is_empty(), "the demo never published {missing:?}");
    for s in ["downloading", "paused", "retrying", "completed", "stale"] {
        assert!(statuses.contains(s), "no download went {s}: {statuses:?}");
    }
    assert!(statuses.contains("cancelled") || statuses.contains("failed"));
}
