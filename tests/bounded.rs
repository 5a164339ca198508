//! Nothing a client or publisher sends grows the server's memory without limit (the probe's
//! findings 1–4, over real sockets): a filter costs memory only while it exists and has a
//! length limit; retained state has a count limit, visible when reached; `GET /api/state` is
//! paged and written from the frames the hub holds; an idempotency key is honoured for its
//! whole window or the keyed publish is refused — never forgotten early.
//!
//! The memory tests run the real binary and read its RSS from `/proc`, with bounds several
//! times what the fixed server uses and a fraction of what the unfixed one took.

use std::time::Duration;

use futures_util::future::join_all;
use modelcast_tests::server_util::{BinaryServer, Client, PATIENCE, TestServer, http_request_full};
use serde_json::{Value, json};

/// `GET /api/stats`'s document.
async fn stats(addr: std::net::SocketAddr) -> Value {
    let (status, _, body) = http_request_full(addr, "GET", "/api/stats", &[], None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/api/stats`'s `keys` is `want`.
async fn keys_become(addr: std::net::SocketAddr, want: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let keys = stats(addr).await["keys"].as_u64().unwrap();
        if keys == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "keys stayed at {keys}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subscribe_with(ids: impl Iterator<Item = String>) -> Value {
    let ids: Vec<String> = ids.collect();
    json!({"action": "subscribe", "topic": "alerts", "filter": {"model_ids": ids}})
}

#[tokio::test]
async fn a_filter_costs_memory_only_while_it_exists_and_has_a_length_limit() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws("/ws/filtering").await;
    for round in 0..30 {
        ws.send_json(&subscribe_with((0..256).map(|i| format!("r{round}-model-{i}")))).await;
        assert_eq!(ws.next_json().await["type"], "subscribed");
    }
    // Each subscribe replaced the last filter: one filter's ids are held, not thirty.
    assert_eq!(stats(server.addr).await["keys"], 256);

    ws.send_json(&subscribe_with((0..257).map(|i| format!("too-many-{i}")))).await;
    let error = ws.next_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["data"]["code"], "invalid_message");
    let message = error["data"]["message"].as_str().unwrap();
    assert!(message.contains("MODELCAST_MAX_FILTER_IDS") && message.contains("256"), "{message}");
    ws.send_json(&json!({"action": "ping", "id": "p"})).await;
    assert_eq!(ws.next_json().await["type"], "pong", "the connection stays");

    drop(ws);
    keys_become(server.addr, 0).await;
}

/// Probe finding 1: 1,000 connections re-subscribing with fresh ids took RSS from 7 to 282 MB,
/// and nothing came back after they closed.
#[tokio::test]
async fn fresh_filters_do_not_grow_the_servers_memory() {
    let server =
        BinaryServer::start(&["--rate-limit", "10000", "--rate-burst", "10000"], &[]).await;
    let addr = server.addr;
    let round = |connection: usize| async move {
        let mut ws = Client::connect(addr, &format!("/ws/f{connection}")).await;
        assert_eq!(ws.next_json().await["type"], "welcome");
        for round in 0..100 {
            let ids = (0..256).map(|i| format!("c{connection}-r{round}-model-{i:04}"));
            ws.send_json(&subscribe_with(ids)).await;
            assert_eq!(ws.next_json().await["type"], "subscribed");
        }
        ws
    };
    // Warm up (allocator arenas, buffers), then measure what the same work adds.
    drop(join_all((0..40).map(round)).await);
    keys_become(addr, 0).await;
    let before = server.memory_kib("VmRSS");
    let open = join_all((100..140).map(round)).await;
    // 40 × 100 × 256 = 1,024,000 ids sent; 40 filters (10,240 ids) are alive.
    assert_eq!(stats(addr).await["keys"], 40 * 256);
    let after = server.memory_kib("VmRSS");
    drop(open);
    keys_become(addr, 0).await;
    let grown = after.saturating_sub(before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB for a million ids sent");
}

fn generation(task: &str) -> Value {
    json!({"type": "generation_progress", "data": {"task_id": task, "status": "running",
        "progress_percent": 10.0, "timestamp": "2025-08-27T10:30:00Z"}})
}

async fn publish_tasks(addr: std::net::SocketAddr, from: usize, n: usize) {
    for start in (from..from + n).step_by(1000) {
        let end = (start + 1000).min(from + n);
        let body: Vec<Value> = (start..end).map(|i| generation(&format!("task-{i:06}"))).collect();
        let body = Value::Array(body).to_string();
        let (status, _, reply) =
            http_request_full(addr, "POST", "/api/publish", &[], Some(body)).await.unwrap();
        assert_eq!(status, 202, "{reply}");
    }
}

/// Probe finding 2: 200,000 running task ids were all kept, for a day.
#[tokio::test]
async fn retained_state_has_a_count_limit_and_evictions_are_announced_and_counted() {
    let server = TestServer::start(&["--state-max-keys", "100"]).await;
    let mut ws = server.ws("/ws/watcher").await;
    ws.subscribe("generation_progress").await;
    publish_tasks(server.addr, 0, 300).await;
    let (_, body) = server.get("/api/state?topic=generation_progress").await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["keys"], 100, "{page}");
    let held: Vec<&str> = page["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["data"]["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(held.first(), Some(&"task-000200"), "the newest 100 stay");
    let mut cleared = Vec::new();
    while cleared.len() < 200 {
        let frame = ws.next_json().await;
        if frame["type"] == "state_cleared" {
            cleared.push(frame["data"]["key"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(cleared[0], "task-000000", "the oldest-updated key leaves first");
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("modelcast_state_evicted_total{topic=\"generation_progress\"} 200"),
        "{metrics}"
    );
    assert!(metrics.contains("modelcast_state_keys{topic=\"generation_progress\"} 100"));
    let topic = &stats(server.addr).await["topics"]["generation_progress"];
    assert_eq!(
        (topic["state_keys"].as_u64(), topic["state_evicted"].as_u64()),
        (Some(100), Some(200))
    );
}

#[tokio::test]
async fn state_is_paged_with_a_cursor_and_each_key_comes_once() {
    let server = TestServer::start(&[]).await;
    publish_tasks(server.addr, 0, 2500).await;
    let mut seen = Vec::new();
    let mut query = "/api/state?topic=generation_progress&limit=1000".to_owned();
    let mut pages = 0;
    loop {
        let (status, body) = server.get(&query).await;
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).expect("the page is JSON");
        assert_eq!(page["keys"], 2500);
        for frame in page["state"].as_array().unwrap() {
            assert_eq!(frame["late"], true, "as a subscriber receives it");
            seen.push(frame["data"]["task_id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match page["next"].as_u64() {
            Some(next) => {
                query = format!("/api/state?topic=generation_progress&limit=1000&after={next}");
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..2500).map(|i| format!("task-{i:06}")).collect();
    assert_eq!((pages, seen), (3, expected));
    for bad in ["limit=0", "limit=10001", "limit=x", "after=-1"] {
        let (status, body) =
            server.get(&format!("/api/state?topic=generation_progress&{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// Probe finding 3: three concurrent `GET /api/state` on 100k keys peaked at 789 MB.
#[tokio::test]
async fn reading_the_state_does_not_amplify_it_in_memory() {
    let server = BinaryServer::start(&["--state-max-keys", "30000"], &[]).await;
    publish_tasks(server.addr, 0, 30_000).await;
    // The peak from here on (Linux resets VmHWM to the current RSS on `5`).
    std::fs::write(format!("/proc/{}/clear_refs", server.pid()), "5").unwrap();
    let before = server.memory_kib("VmRSS");
    let reads = (0..3).map(|_| async {
        let mut after = None;
        let mut frames = 0;
        loop {
            let mut path = "/api/state?topic=generation_progress&limit=10000".to_owned();
            if let Some(cursor) = after {
                path.push_str(&format!("&after={cursor}"));
            }
            let (status, _, body) =
                http_request_full(server.addr, "GET", &path, &[], None).await.unwrap();
            assert_eq!(status, 200);
            let page: Value = serde_json::from_str(&body).unwrap();
            frames += page["state"].as_array().unwrap().len();
            match page["next"].as_u64() {
                Some(next) => after = Some(next),
                None => return frames,
            }
        }
    });
    assert_eq!(join_all(reads).await, [30_000; 3]);
    let peak = server.memory_kib("VmHWM");
    let grown = peak.saturating_sub(before);
    // The whole state is ~8 MB of frames; three readers at once added 30× that before.
    assert!(grown < 24 * 1024, "reading the state raised the peak RSS by {grown} KiB");
}

/// Probe finding 4: after 110,000 other keyed publishes, a retry of an earlier key was
/// published again. Now the key is honoured for its whole window, and when no more keys fit
/// the publish is refused with when to retry.
#[tokio::test]
async fn an_idempotency_key_is_honoured_for_its_window_or_the_publish_is_refused() {
    let server = TestServer::start(&["--idempotency-keys", "50"]).await;
    let keyed = |key: String, i: usize| async move {
        let body = json!({"type": "alert", "data": {"alert_id": format!("a{i}"), "level": "info",
            "title": "t", "message": "m", "timestamp": "2025-08-27T10:30:00Z"}});
        http_request_full(
            server.addr,
            "POST",
            "/api/publish",
            &[("idempotency-key", &key)],
            Some(body.to_string()),
        )
        .await
        .unwrap()
    };
    let (status, _, first) = keyed("key-0".into(), 0).await;
    assert_eq!(status, 202, "{first}");
    for i in 1..50 {
        assert_eq!(keyed(format!("key-{i}"), i).await.0, 202);
    }
    let (status, headers, body) = keyed("key-50".into(), 50).await;
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "idempotency_keys_full", "{error}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((590..=601).contains(&retry), "retry after the oldest key expires: {retry}");
    assert_eq!(server.hub.last_seq(modelcast_protocol::Topic::Alerts), 50, "nothing published");

    // The oldest key is still honoured: its seq again, nothing new.
    let (status, _, again) = keyed("key-0".into(), 0).await;
    assert_eq!(status, 202);
    let seq =
        |body: &str| serde_json::from_str::<Value>(body).unwrap()["accepted"][0]["seq"].clone();
    assert_eq!(seq(&again), seq(&first));
    assert_eq!(server.hub.last_seq(modelcast_protocol::Topic::Alerts), 50);
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("modelcast_errors_total{code=\"idempotency_keys_full\"} 1"),
        "{metrics}"
    );
}
