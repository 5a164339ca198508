//! Server: `POST /api/publish`, retained state and recovery across a reconnect, a slow reader
//! next to a fast one, and the observability endpoints.

use modelcast_tests::fixtures;
use modelcast_tests::server_util::TestServer;
use serde_json::{Value, json};

fn seed(name: &str) -> Value {
    fixtures("seed").into_iter().find(|(n, _)| n == name).expect(name).1
}

fn alert(id: &str, message: &str) -> Value {
    json!({"type": "alert", "data": {"alert_id": id, "level": "warning", "title": "t",
        "message": message, "timestamp": "2025-08-27T10:30:00Z"}})
}

#[tokio::test]
async fn publish_validates_with_the_typed_protocol_and_names_the_field() {
    let server = TestServer::start(&[]).await;
    let mut broken = seed("download_progress_update");
    broken["data"]["progress_percent"] = json!("half");
    let (status, body) = server.post("/api/publish", &broken).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_message");
    assert_eq!(body["error"]["field"], "data.progress_percent", "{body}");

    let mut missing = seed("download_retry");
    missing["data"].as_object_mut().unwrap().remove("max_retries");
    let (status, body) =
        server.post("/api/publish", &json!([seed("download_retry"), missing])).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["index"], 1);
    assert!(body["error"]["message"].as_str().unwrap().contains("max_retries"), "{body}");
    assert_eq!(
        server.hub.last_seq(modelcast_protocol::Topic::DownloadProgress),
        0,
        "nothing published from a bad batch"
    );

    let cases = [
        (json!({"type": "weather_report", "data": {}}), "unknown variant"),
        (json!({"type": "pong", "data": {"timestamp": "2025-08-27T10:30:00Z"}}), "control message"),
        (json!([]), "empty"),
    ];
    for (body, needle) in cases {
        let (status, reply) = server.post("/api/publish", &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(needle), "{reply}");
    }
    // The unknown-type error lists what may be published, not control replies.
    let (_, reply) =
        server.post("/api/publish", &json!({"type": "weather_report", "data": {}})).await;
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("download_progress_update") && !message.contains("welcome"),
        "{message}"
    );
    // A bad timestamp says what is expected.
    let mut bad_time = alert("t", "m");
    bad_time["data"]["timestamp"] = json!("yesterday");
    let (status, reply) = server.post("/api/publish", &bad_time).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (400, Some("data.timestamp")));
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("RFC 3339, e.g. 2025-08-27T10:30:00Z")
    );
    let mut wrong_topic = seed("download_retry");
    wrong_topic["topic"] = json!("alerts");
    let (status, reply) = server.post("/api/publish", &wrong_topic).await;
    assert_eq!((status, reply["error"]["field"].as_str()), (400, Some("topic")));

    let (status, reply) = server.request("POST", "/api/publish", Some("{oops".into())).await;
    assert_eq!(status, 400);
    assert!(reply.contains("invalid_json"), "{reply}");
    assert_eq!(server.get("/api/publish").await.0, 405);
    assert_eq!(server.get("/nowhere").await.0, 404);

    // Accepted: 202 with topic, epoch and seq of each.
    let (status, body) =
        server.post("/api/publish", &json!([alert("a", "m"), alert("b", "m")])).await;
    assert_eq!(status, 202);
    let epoch = server.hub.position(modelcast_protocol::Topic::Alerts).0;
    assert_eq!(
        body["accepted"][0],
        json!({"type": "alert", "topic": "alerts", "epoch": epoch, "seq": 1, "status": "sent"})
    );
    assert_eq!(body["accepted"][1]["seq"], 2);
}

/// A download's progress is retained: a client subscribing later gets it first.
#[tokio::test]
async fn a_late_subscriber_gets_the_retained_state_first() {
    let server = TestServer::start(&[]).await;
    assert_eq!(server.post("/api/publish", &seed("download_progress_update")).await.0, 202);
    let mut ws = server.ws("/ws/late").await;
    let subscribed = ws.subscribe("download_progress").await;
    assert_eq!(subscribed["data"]["seq"], 1);
    let first = ws.next_json().await;
    assert_eq!(first["type"], "download_progress_update");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["data"], seed("download_progress_update")["data"]);
}

/// A client that reconnects with `since` gets exactly what it missed, `recovered: true`.
#[tokio::test]
async fn recovery_with_since_across_a_reconnect() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws("/ws/r").await;
    let subscribed = ws.subscribe("alerts").await;
    let epoch = subscribed["data"]["epoch"].clone();
    for i in 0..3 {
        server.post("/api/publish", &alert(&format!("a{i}"), "before")).await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = ws.next_json().await["seq"].as_u64().unwrap();
    }
    drop(ws);
    for i in 3..6 {
        server.post("/api/publish", &alert(&format!("a{i}"), "while away")).await;
    }
    let mut ws = server.ws("/ws/r").await;
    ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "id": "re",
        "since": {"epoch": epoch, "seq": last}}))
        .await;
    let subscribed = ws.next_of_type("subscribed").await;
    assert_eq!(subscribed["data"]["recovered"], true);
    assert_eq!(subscribed["data"]["request_id"], "re");
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let f = ws.next_json().await;
        assert_eq!(f["data"]["message"], "while away");
        seqs.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [4, 5, 6]);
}

/// A reader that stops reading does not delay a fast one: the fast one gets everything in
/// order while the slow one is dropped as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_delay_a_fast_one() {
    const N: usize = 3000;
    let server = TestServer::start(&["--queue-size", "200"]).await;
    let mut slow = server.ws("/ws/slow").await;
    slow.subscribe("alerts").await;
    let mut fast = server.ws("/ws/fast").await;
    fast.subscribe("alerts").await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(N);
            while seqs.len() < N {
                let f = fast.next_json().await;
                if f["type"] == "alert" {
                    seqs.push(f["seq"].as_u64().unwrap());
                    progress.store(seqs.len(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            seqs
        })
    };
    let payload = "x".repeat(4000);
    for chunk in 0..N / 100 {
        let batch: Vec<Value> =
            (0..100).map(|i| alert(&format!("{chunk}-{i}"), &payload)).collect();
        assert_eq!(server.post("/api/publish", &Value::Array(batch)).await.0, 202);
        // A fast reader keeps up with bursts that fit its queue: wait for it, not for the slow one.
        while progress.load(std::sync::atomic::Ordering::Relaxed) < (chunk + 1) * 100 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    let seqs = reader.await.unwrap();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    let (_, stats) = server.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["connections_dropped"]["slow_consumer"], 1, "{stats}");
    assert!(stats["topics"]["alerts"]["discarded_with_dropped_subscribers"].as_u64().unwrap() > 0);
    assert!(stats["help"]["skipped_per_subscriber"].is_string(), "every figure is explained");
    let (close, frames) = slow.until_close().await;
    assert!(frames.len() < N, "the slow reader cannot have received everything");
    if let Some((code, _)) = close {
        assert_eq!(code, modelcast_protocol::close::SLOW_CONSUMER);
    }
}

#[tokio::test]
async fn health_readiness_stats_and_metrics() {
    let server = TestServer::start(&[]).await;
    let (status, page) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"<script type="module" src="/assets/dashboard.js">"#));
    let (status, script) = server.get("/assets/dashboard.js").await;
    assert_eq!(status, 200);
    // The bundled TypeScript client: subscribes and resubscribes with `since`.
    assert!(script.contains(r#""subscribe""#) && script.contains("since"), "{}", &script[..200]);
    assert_eq!(server.get("/healthz").await.0, 200);
    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, ready.contains("ready")), (200, true));

    let before = metrics(&server).await;
    let mut ws = server.ws("/ws/m").await;
    ws.subscribe("alerts").await;
    server.post("/api/publish", &alert("a", "m")).await;
    assert_eq!(ws.next_of_type("alert").await["seq"], 1);
    let after = metrics(&server).await;
    let get = |samples: &[prometheus_parse::Sample],
               name: &str,
               label: Option<(&str, &str)>|
     -> f64 {
        samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    for (name, label) in [
        ("modelcast_connections_opened_total", None),
        ("modelcast_messages_published_total", Some(("type", "alert"))),
        ("modelcast_messages_delivered_total", Some(("type", "alert"))),
        ("modelcast_messages_delivered_total", Some(("type", "welcome"))),
    ] {
        assert!(
            get(&after, name, label) > get(&before, name, label),
            "{name} {label:?} did not move"
        );
    }
    assert_eq!(get(&after, "modelcast_connections_active", None), 1.0);
    assert_eq!(get(&after, "modelcast_subscriptions", Some(("topic", "alerts"))), 1.0);
    assert!(after.iter().any(|s| s.metric.starts_with("modelcast_publish_to_write_seconds")));
    for reason in ["throttle", "batch", "max_hz", "queue_full"] {
        assert!(
            after.iter().any(|s| s.metric == "modelcast_messages_conflated_total"
                && s.labels.get("reason") == Some(reason)),
            "no conflation series for {reason}"
        );
    }

    let (_, stats) = server.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["topics"]["alerts"]["subscriptions"], 1);
    assert_eq!(stats["topics"]["alerts"]["published"], 1);
    assert!(stats["uptime_seconds"].as_f64().unwrap() > 0.0);
}

async fn metrics(server: &TestServer) -> Vec<prometheus_parse::Sample> {
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text").samples
}

/// Over real sockets: a client subscribing mid-download first gets the current progress, then
/// live updates.
#[tokio::test]
async fn subscribing_mid_download_gets_the_current_progress_then_live_updates() {
    let server = TestServer::start(&["--download-progress-throttle", "0.05"]).await;
    let progress = |pct: f64| {
        let mut p = seed("download_progress_update");
        p["data"]["progress_percent"] = json!(pct);
        p
    };
    server.post("/api/publish", &seed("download_status_change")).await;
    server.post("/api/publish", &progress(30.0)).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    server.post("/api/publish", &progress(40.0)).await;
    let mut ws = server.ws("/ws/late").await;
    ws.subscribe("download_progress").await;
    let current = ws.next_json().await;
    assert_eq!(
        (current["type"].as_str(), current["data"]["progress_percent"].as_f64()),
        (Some("download_progress_update"), Some(40.0))
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    server.post("/api/publish", &progress(50.0)).await;
    let live = ws.next_json().await;
    assert_eq!(live["data"]["progress_percent"], 50.0);
    assert!(live["seq"].as_u64() > current["seq"].as_u64());
}

/// Part of issue 15: a publish with several problems fails with all of them in one 400
/// (`errors: [{field, message}]`), and the server, as the newest writer, refuses nonsense the
/// lenient readers would keep: unknown vocabulary values, out-of-range numbers.
#[tokio::test]
async fn a_bad_publish_reports_every_problem_at_once_and_nonsense_is_refused() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .post(
            "/api/publish",
            &json!({"type": "alert", "data": {"level": "warning", "message": "m"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["data.alert_id", "data.title"], "the timestamp is stamped: {body}");

    let mut nonsense = seed("download_progress_update");
    nonsense["data"]["progress_percent"] = json!(150.0);
    nonsense["data"]["downloaded_mb"] = json!(-1.0);
    nonsense["data"]["status"] = json!("downloadin");
    let (status, body) = server.post("/api/publish", &json!([alert("fine", "m"), nonsense])).await;
    assert_eq!(status, 400, "{body}");
    let errors = body["error"]["errors"].as_array().unwrap();
    let fields: Vec<&str> = errors.iter().map(|e| e["field"].as_str().unwrap()).collect();
    for field in ["data.progress_percent", "data.downloaded_mb", "data.status"] {
        assert!(fields.contains(&field), "{field} in {body}");
    }
    assert!(errors.iter().all(|e| e["index"] == 1), "{body}");
    assert!(
        server.hub.retained(modelcast_protocol::Topic::DownloadProgress).is_empty(),
        "nothing retained"
    );
    assert_eq!(
        server.hub.last_seq(modelcast_protocol::Topic::Alerts),
        0,
        "nothing published from the batch"
    );
}

/// Every example of the seed passes the publish checks as it is.
#[test]
fn the_seed_examples_have_no_publish_problems() {
    for (name, frame) in fixtures("seed") {
        let problems =
            modelcast_protocol::publish_problems(frame["type"].as_str().unwrap(), &frame["data"]);
        assert!(problems.is_empty(), "{name}: {problems:?}");
    }
}

/// Part of issue 15: a publisher may leave `timestamp` to the server (the schemas say so).
#[tokio::test]
async fn a_missing_timestamp_is_stamped_by_the_server() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws("/ws/stamp").await;
    ws.subscribe("alerts").await;
    let before = chrono::Utc::now();
    let (status, body) = server
        .post(
            "/api/publish",
            &json!({"type": "alert", "data": {"alert_id": "a", "level": "info",
            "title": "t", "message": "m"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let frame = ws.next_json().await;
    let stamped: chrono::DateTime<chrono::Utc> =
        frame["data"]["timestamp"].as_str().unwrap().parse().expect("RFC 3339");
    assert!(stamped >= before - chrono::Duration::seconds(1), "{frame}");
}

/// Part of issue 15: a download published over HTTP whose publisher goes silent turns `stale`
/// (it stayed "downloading 45.5%" forever), as notifier-driven downloads already did.
#[tokio::test]
async fn an_http_published_download_that_goes_silent_turns_stale() {
    let server = TestServer::start(&["--stale-after", "0.3"]).await;
    let mut ws = server.ws("/ws/stale").await;
    ws.subscribe("download_progress").await;
    let (status, body) = server.post("/api/publish", &seed("download_progress_update")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(ws.next_json().await["type"], "download_progress_update");
    let change = ws.next_of_type("download_status_change").await;
    assert_eq!(change["data"]["new_status"], "stale", "{change}");
    assert_eq!(change["data"]["old_status"], "downloading", "{change}");
}

/// Part of issue 15: `GET /api/state?topic=…` shows what a new subscriber gets first, and state
/// whose publisher vanished is dropped after `MODELCAST_STATE_TTL` (the README's own example
/// used to haunt every new subscriber forever).
#[tokio::test]
async fn current_state_can_be_inspected_and_expires() {
    let server = TestServer::start(&["--state-ttl", "0.5"]).await;
    let (status, body) = server.post("/api/publish", &seed("download_progress_update")).await;
    assert_eq!(status, 202, "{body}");
    let (status, text) = server.get("/api/state?topic=download_progress").await;
    assert_eq!(status, 200, "{text}");
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["state"].as_array().unwrap().len(), 1, "{state}");
    assert_eq!(state["state"][0]["type"], "download_progress_update");
    assert_eq!(state["state"][0]["late"], true, "as a subscriber receives it");

    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let (_, text) = server.get("/api/state?topic=download_progress").await;
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["state"], json!([]), "expired: {state}");
    let mut ws = server.ws("/ws/late-comer").await;
    ws.subscribe("download_progress").await;
    ws.send_json(&json!({"action": "ping", "id": 1})).await;
    assert_eq!(ws.next_json().await["type"], "pong", "no expired state is sent");

    assert_eq!(server.get("/api/state?topic=weather").await.0, 400);
    assert_eq!(server.get("/api/state").await.0, 400);
}

/// Part of issue 15: the OpenAPI document served is the committed one (`cargo xtask codegen`).
#[tokio::test]
async fn the_openapi_document_is_served() {
    let server = TestServer::start(&[]).await;
    let (status, text) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(&text).unwrap();
    let committed =
        modelcast_tests::read_json(&modelcast_tests::root().join("schemas/openapi.json"));
    assert_eq!(served, committed);
    assert!(served["paths"]["/api/publish"]["post"]["responses"]["400"].is_object());
}

/// Part of issue 15: the example backend (`crates/server/examples/publish_download.rs`)
/// publishes a whole download to a running server over HTTP, and a subscriber sees it.
#[tokio::test]
async fn the_example_backend_publishes_a_download_to_a_running_server() {
    let server = TestServer::start(&["--download-progress-throttle", "0.001"]).await;
    let mut ws = server.ws("/ws/watcher").await;
    ws.subscribe("download_progress").await;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", "modelcast-server", "--example", "publish_download"])
        .current_dir(modelcast_tests::root())
        .status()
        .expect("cargo build runs");
    assert!(built.success());
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().and_then(|d| d.parent()).unwrap().join("examples/publish_download");
    let out = tokio::process::Command::new(example)
        .args([&format!("http://{}", server.addr), "5"])
        .output()
        .await
        .expect("the example runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = Vec::new();
    loop {
        let frame = ws.next_json().await;
        let last =
            frame["type"] == "download_status_change" && frame["data"]["new_status"] == "completed";
        seen.push(frame);
        if last {
            break;
        }
    }
    assert_eq!(seen[0]["data"]["new_status"], "downloading", "started first");
    assert!(seen.iter().any(|f| f["type"] == "download_progress_update"), "progress in between");
    assert!(
        server.hub.retained(modelcast_protocol::Topic::DownloadProgress).is_empty(),
        "finished: no state left"
    );
}

/// Part of issue 15: state a vanished publisher left behind can be cleared, and subscribers
/// are told (`state_cleared`); new subscribers no longer receive it.
#[tokio::test]
async fn an_operator_clears_a_keys_state_and_subscribers_are_told() {
    let key = "publish-key-0123456789";
    let server = TestServer::start(&["--publish-key", key]).await;
    let bearer = format!("Bearer {key}");
    let auth = [("authorization", bearer.as_str())];
    let progress = seed("download_progress_update").to_string();
    let (status, _) = server.request_with("POST", "/api/publish", &auth, Some(progress)).await;
    assert_eq!(status, 202);
    let mut ws = server.ws("/ws/watching").await;
    ws.subscribe("download_progress").await;
    assert_eq!(ws.next_json().await["late"], true, "the current state");

    let path = "/api/state/download_progress/t2v-a14b";
    assert_eq!(server.request("DELETE", path, None).await.0, 401, "needs a publish key");
    let (status, body) = server.request_with("DELETE", path, &auth, None).await;
    assert_eq!(status, 200, "{body}");
    let told = ws.next_json().await;
    assert_eq!(told["type"], "state_cleared", "{told}");
    assert_eq!(
        (told["data"]["topic"].as_str(), told["data"]["key"].as_str()),
        (Some("download_progress"), Some("t2v-a14b"))
    );
    let (_, state) = server.get("/api/state?topic=download_progress").await;
    assert!(state.contains("\"state\":[]"), "{state}");
    assert_eq!(server.request_with("DELETE", path, &auth, None).await.0, 404, "nothing left");
    assert_eq!(server.request_with("DELETE", "/api/state/weather/x", &auth, None).await.0, 400);
}
