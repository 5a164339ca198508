//! The delivery contract over real sockets: `model_ids` filters pass every message about no
//! model, `max_hz` delivers a key's newest value (marked `late`, never mistaken for a
//! duplicate), and the Rust client, reconnecting through a proxy that cuts its connections,
//! delivers every event and every key's newest value in order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use modelcast_client::{Client, ConnectOptions, Event, SubscribeOptions, Subscription};
use modelcast_hub::{Kind, Publish, Retain};
use modelcast_protocol::{ServerMessage, Topic};
use modelcast_tests::msg::{alert, progress, ts};
use modelcast_tests::server_util::{PATIENCE, Proxy, TestServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn system_stats() -> Value {
    json!({"type": "system_stats", "data": {"cpu_percent": 12.5, "memory_percent": 40.0, "memory_used_mb": 6400.0, "memory_total_mb": 16000.0,
        "gpu_percent": 80.0, "vram_used_mb": 8000.0, "vram_total_mb": 24000.0,
        "timestamp": "2025-08-27T10:30:00Z"}})
}

fn alert_about(id: &str, model: Option<&str>) -> Value {
    let mut a = json!({"type": "alert", "data": {"alert_id": id, "level": "warning",
        "title": "t", "message": "m", "timestamp": "2025-08-27T10:30:00Z"}});
    if let Some(model) = model {
        a["data"]["model_id"] = json!(model);
    }
    a
}

/// Before the fix, a filtered subscriber got nothing on `system_stats` and no alert at all:
/// the filter matched the policy's made-up keys (`system`, alert ids).
#[tokio::test]
async fn a_model_filter_passes_model_less_messages_and_messages_about_its_models() {
    let server = TestServer::start(&[]).await;
    let mut filtered = server.ws("/ws/filtered").await;
    let mut plain = server.ws("/ws/plain").await;
    for topic in ["system_stats", "alerts"] {
        let sub = json!({"action": "subscribe", "topic": topic, "filter": {"model_ids": ["m1"]}});
        filtered.send_json(&sub).await;
        assert_eq!(filtered.next_of_type("subscribed").await["data"]["topic"], topic);
        plain.subscribe(topic).await;
    }
    let (status, body) = server.post("/api/publish", &system_stats()).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = server
        .post(
            "/api/publish",
            &json!([
                alert_about("a-m2", Some("m2")),
                alert_about("a-m1", Some("m1")),
                alert_about("a-none", None)
            ]),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    let stats = filtered.next_json().await;
    assert_eq!(stats["type"], "system_stats", "system stats are about no model: {stats}");
    let first = filtered.next_json().await;
    let second = filtered.next_json().await;
    let ids: Vec<&Value> = [&first, &second].map(|f| &f["data"]["alert_id"]).into();
    assert_eq!(ids, ["a-m1", "a-none"], "m2's alert filtered out, m1's and the model-less kept");

    assert_eq!(plain.next_json().await["type"], "system_stats");
    for id in ["a-m2", "a-m1", "a-none"] {
        assert_eq!(plain.next_json().await["data"]["alert_id"], id);
    }
}

/// Before the fix, the held-back update of `a` went out after `b`'s newer frame, with a lower
/// `seq`, and the Rust client dropped it as a duplicate: `a`'s newest value never arrived.
#[tokio::test]
async fn max_hz_delivers_the_newest_value_marked_late_and_the_client_keeps_it() {
    let server = TestServer::start(&[]).await;
    let mut raw = server.ws("/ws/raw").await;
    raw.send_json(&json!({"action": "subscribe", "topic": "download_progress", "max_hz": 2})).await;
    raw.next_of_type("subscribed").await;
    let client = Client::connect(&format!("ws://{}/ws/rust", server.addr), Default::default())
        .await
        .unwrap();
    let mut sub = client
        .subscribe_with(Topic::DownloadProgress, SubscribeOptions::default().max_hz(2.0))
        .await
        .unwrap();

    let publish = |model: &str, percent: f64| {
        let p = Publish::new(progress(model, percent)).unwrap();
        server.hub.publish(p.key(model).subject(model).kind(Kind::Update).retain(Retain::Keep))
    };
    publish("a", 10.0); // seq 1: sent
    publish("a", 20.0); // seq 2: held back (max 2 per second)
    publish("b", 50.0); // seq 3: sent, ahead of seq 2

    let frames: Vec<Value> =
        vec![raw.next_json().await, raw.next_json().await, raw.next_json().await];
    let order: Vec<(u64, bool)> =
        frames.iter().map(|f| (f["seq"].as_u64().unwrap(), f["late"] == true)).collect();
    assert_eq!(order, [(1, false), (3, false), (2, true)], "{frames:?}");
    assert_eq!(frames[2]["data"]["progress_percent"], 20.0);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(PATIENCE, sub.next()).await.expect("in time").expect("open") {
            Event::Message { seq, late, message: ServerMessage::DownloadProgressUpdate(p) } => {
                seen.push((seq, late, p.model_id, p.progress_percent));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [(1, false, "a".into(), 10.0), (3, false, "b".into(), 50.0), (2, true, "a".into(), 20.0)]
    );
    assert_eq!(client.stats().duplicates_discarded, 0);
}

/// One published message of the randomized run.
#[derive(Debug, Clone)]
struct Sent {
    key: usize,
    subject: Option<usize>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Op {
    Publish(Sent),
    /// Cut every connection (the client reconnects with `since`).
    Cut,
    /// Let the client run for a few milliseconds.
    Pause(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let kind =
        prop_oneof![3 => Just(Kind::Update), 1 => Just(Kind::Transition), 1 => Just(Kind::Event)];
    prop_oneof![
        10 => (0..3usize, proptest::option::weighted(0.7, 0..3usize), kind)
            .prop_map(|(key, subject, kind)| Op::Publish(Sent { key, subject, kind })),
        1 => Just(Op::Cut),
        2 => (1..30u64).prop_map(Op::Pause),
    ]
}

const SUBJECTS: [&str; 3] = ["m0", "m1", "m2"];

/// The events the application sees until the subscription is quiet for `until_quiet`.
async fn collect(sub: &mut Subscription, until_quiet: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(until_quiet, sub.next()).await {
        events.push(event);
    }
    events
}

fn run_with_client(
    filter: Option<BTreeSet<usize>>,
    max_hz: Option<f64>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let server = TestServer::start(&[]).await;
        let proxy = Proxy::start(server.addr).await;
        let options = ConnectOptions::default()
            .reconnect_delays(Duration::from_millis(10), Duration::from_millis(50));
        let client =
            Client::connect(&format!("ws://{}/ws/model", proxy.addr), options).await.unwrap();
        let mut sub_options = SubscribeOptions::default();
        if let Some(f) = &filter {
            sub_options = sub_options.models(f.iter().map(|s| SUBJECTS[*s]));
        }
        if let Some(hz) = max_hz {
            sub_options = sub_options.max_hz(hz);
        }
        let mut sub = client.subscribe_with(Topic::Alerts, sub_options).await.unwrap();
        let mut sent: Vec<Sent> = Vec::new();
        let mut events = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Publish(s) => {
                    let mut message = alert(&format!("a{n}"));
                    if let (ServerMessage::Alert(a), Some(subject)) = (&mut message, s.subject) {
                        a.model_id = Some(SUBJECTS[subject].into());
                        a.timestamp = ts();
                    }
                    let retain = if s.kind == Kind::Event { Retain::No } else { Retain::Keep };
                    let mut p = Publish::new(message)
                        .unwrap()
                        .key(format!("k{}", s.key))
                        .kind(s.kind)
                        .retain(retain);
                    if let Some(subject) = s.subject {
                        p = p.subject(SUBJECTS[subject]);
                    }
                    server.hub.publish(p);
                    sent.push(s);
                }
                Op::Cut => proxy.drop_all(),
                Op::Pause(ms) => events.extend(collect(&mut sub, Duration::from_millis(ms)).await),
            }
        }
        // Quiet for longer than any `max_hz` hold-back and reconnect: everything is in.
        events.extend(collect(&mut sub, Duration::from_millis(1200)).await);

        let passes = |m: &Sent| match (&filter, m.subject) {
            (Some(f), Some(subject)) => f.contains(&subject),
            _ => true,
        };
        let mut last = 0;
        let mut seen: BTreeMap<u64, bool> = BTreeMap::new();
        // A gap spans from its `last_seq` to the first message in order after it.
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            if let Event::Gap { last_seq } = event {
                let end = events[i..].iter().find_map(|e| match e {
                    Event::Message { seq, late: false, .. } => Some(*seq),
                    _ => None,
                });
                gaps.push((*last_seq, end.unwrap_or(u64::MAX)));
            }
        }
        for event in &events {
            let Event::Message { seq, late, .. } = event else { continue };
            prop_assert!(*seq >= 1 && (*seq as usize) <= sent.len());
            let m = &sent[*seq as usize - 1];
            prop_assert!(passes(m), "seq {seq} passed the filter {filter:?}");
            if !late {
                prop_assert!(*seq > last, "seq {seq} after {last}: out of order or duplicated");
                last = *seq;
            }
            seen.insert(*seq, *late);
        }
        let in_gap = |seq: u64| gaps.iter().any(|(from, to)| seq > *from && seq < *to);
        for (i, m) in sent.iter().enumerate() {
            let seq = i as u64 + 1;
            if m.kind != Kind::Update && passes(m) && !in_gap(seq) {
                prop_assert!(
                    seen.contains_key(&seq),
                    "{:?} at seq {seq} lost without a gap",
                    m.kind
                );
            }
        }
        let mut newest: BTreeMap<usize, u64> = BTreeMap::new();
        for (i, m) in sent.iter().enumerate() {
            newest.insert(m.key, i as u64 + 1);
        }
        for (key, seq) in newest {
            let m = &sent[seq as usize - 1];
            if m.kind != Kind::Event && passes(m) {
                prop_assert!(
                    seen.contains_key(&seq),
                    "newest value of k{key} (seq {seq}) never reached the app"
                );
            }
        }
        prop_assert_eq!(
            client.stats().duplicates_discarded,
            0,
            "the server sent nothing twice in order"
        );
        Ok(())
    })
}

/// The Rust client in the loop: random publishes (keys, subjects, kinds) while the proxy cuts
/// the connection; a random filter and `max_hz`. 12 cases (each a real server, proxy and
/// client; a fifth of `PROPTEST_CASES`); more: `PROPTEST_CASES=1000 cargo test -p
/// modelcast-tests --test tests delivery_contract`.
#[test]
fn the_rust_client_keeps_the_contract_across_reconnects() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64) / 5;
    let config = Config { cases: cases.max(1), failure_persistence: None, ..Config::default() };
    let strategy = (
        proptest::option::of(proptest::collection::btree_set(0..3usize, 0..3)),
        prop_oneof![Just(None), Just(Some(5.0)), Just(Some(20.0))],
        proptest::collection::vec(op(), 1..120),
    );
    TestRunner::new(config)
        .run(&strategy, |(filter, max_hz, ops)| run_with_client(filter, max_hz, ops))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `max_hz: 1e-20` once panicked the connection task (a `Duration` overflow). Now every rate
/// outside one per day .. finite is an `error` reply, and the connection keeps working.
#[tokio::test]
async fn an_impossible_max_hz_is_an_error_reply_not_a_panic() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws("/ws/rates").await;
    for (id, hz) in [(1, json!(1e-20)), (2, json!(0)), (3, json!(-5)), (4, json!(1e300))] {
        ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "max_hz": hz, "id": id}))
            .await;
        let reply = ws.next_json().await;
        if id == 4 {
            // Huge rates are valid: "no limit" in practice.
            assert_eq!(reply["type"], "subscribed", "{reply}");
            continue;
        }
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["data"]["code"], "invalid_message");
        assert_eq!(reply["data"]["request_id"], id);
        assert!(reply["data"]["message"].as_str().unwrap().contains("max_hz"), "{reply}");
    }
    ws.send_json(&json!({"action": "ping", "id": 9})).await;
    assert_eq!(ws.next_of_type("pong").await["data"]["request_id"], 9);
}
