//! Server-Sent Events (`GET /sse`) over real sockets: the WebSocket's frames as events, every
//! event's `id` a position that recovers every topic of the stream (`Last-Event-ID`), the
//! same checks as a WebSocket (tokens, roles), and an end that is always clean.

use std::time::Duration;

use modelcast_tests::server_util::{Event, Sse, TestServer};
use serde_json::{Value, json};

fn alert(i: usize) -> Value {
    json!({"type": "alert", "data": {"alert_id": format!("a{i}"), "level": "info", "title": "t", "message": "m"}})
}

fn lifecycle(i: usize) -> Value {
    json!({"type": "model_lifecycle", "data": {"model_id": format!("m{i}"), "event": "loaded"}})
}

/// 10 alerts and 10 model lifecycle events, interleaved.
async fn publish_pairs(server: &TestServer, from: usize) {
    let body: Vec<Value> = (from..from + 10).flat_map(|i| [alert(i), lifecycle(i)]).collect();
    let (status, reply) = server.post("/api/publish", &Value::Array(body)).await;
    assert_eq!(status, 202, "{reply}");
}

fn key(event: &Event) -> (String, u64) {
    (event.data["topic"].as_str().unwrap().to_owned(), event.data["seq"].as_u64().unwrap())
}

#[tokio::test]
async fn a_reconnect_with_the_last_event_id_gets_exactly_what_was_missed_on_every_topic() {
    let server = TestServer::start(&[]).await;
    let path = "/sse?topic=alerts&topic=model_status";
    let mut sse = Sse::open(server.addr, path, &[]).await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    let head = sse.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    assert_eq!(sse.until("welcome").await.data["type"], "welcome");
    publish_pairs(&server, 0).await;
    let first = sse.messages(20).await;
    let last_id = first.last().unwrap().id.clone().expect("every event has an id");
    drop(sse); // the connection is cut

    publish_pairs(&server, 10).await;
    let mut back = Sse::open(server.addr, path, &[("Last-Event-ID", &last_id)]).await;
    let (mut recovered, mut missed) = (0, Vec::new());
    while recovered < 2 || missed.len() < 20 {
        let event = back.next().await.expect("the stream goes on");
        if event.data["type"] == "subscribed" {
            assert_eq!(event.data["data"]["recovered"], true, "{:?}", event.data);
            recovered += 1;
        } else if event.data.get("seq").is_some() {
            assert!(event.data.get("late").is_none(), "nothing resent: {:?}", event.data);
            missed.push(event);
        }
    }
    let mut alerts: Vec<u64> =
        missed.iter().filter(|e| e.data["topic"] == "alerts").map(|e| key(e).1).collect();
    let mut statuses: Vec<u64> =
        missed.iter().filter(|e| e.data["topic"] == "model_status").map(|e| key(e).1).collect();
    assert_eq!(alerts, (11..=20).collect::<Vec<_>>(), "the missed alerts, once, in order");
    assert_eq!(
        statuses,
        (11..=20).collect::<Vec<_>>(),
        "the missed lifecycle events, once, in order"
    );
    alerts.clear();
    statuses.clear();
    // The id moved with every frame: it covers both topics.
    let id = missed.last().unwrap().id.clone().unwrap();
    assert!(id.starts_with("1.") && id.matches('.').count() == 2, "{id}");

    // The same with the id in the URL (what a client that opens a new stream sends).
    drop(back);
    publish_pairs(&server, 20).await;
    let with_query = format!("{path}&last_event_id={id}");
    let mut again = Sse::open(server.addr, &with_query, &[]).await;
    let missed = again.messages(20).await;
    assert_eq!(missed.first().map(key), Some(("alerts".to_owned(), 21)));
}

#[tokio::test]
async fn a_position_past_history_or_from_another_epoch_gets_the_state_and_a_bad_id_an_error() {
    let server = TestServer::start(&["--history-size", "5"]).await;
    let path = "/sse?topic=alerts";
    let mut sse = Sse::open(server.addr, path, &[]).await;
    publish_pairs(&server, 0).await;
    let id = sse.messages(10).await.last().unwrap().id.clone().unwrap();
    drop(sse);
    publish_pairs(&server, 10).await; // 10 more: past the 5 of history
    let mut back = Sse::open(server.addr, path, &[("Last-Event-ID", &id)]).await;
    let subscribed = back.until("subscribed").await;
    assert_eq!(subscribed.data["data"]["recovered"], false, "{:?}", subscribed.data);
    assert_eq!(back.messages(5).await.first().map(key), Some(("alerts".to_owned(), 16)));

    let other_epoch = id.replacen(&server.hub.epoch()[..4], "ffff", 1);
    let mut other = Sse::open(server.addr, path, &[("Last-Event-ID", &other_epoch)]).await;
    assert_eq!(other.until("subscribed").await.data["data"]["recovered"], false);

    let mut bad = Sse::open(server.addr, path, &[("Last-Event-ID", "not-an-id")]).await;
    assert_eq!(bad.status(), 200, "{}", bad.head);
    let error = bad.until("error").await;
    assert_eq!(error.data["data"]["code"], "invalid_message");
    assert!(error.data["data"]["message"].as_str().unwrap().contains("not an event id"));
    assert_eq!(bad.until("subscribed").await.data["data"]["recovered"], false);

    let (status, body) = server.get("/sse").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/sse?topic=weather").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn tokens_and_roles_apply_as_on_a_websocket() {
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let server =
        TestServer::start(&["--jwt-secret", secret, "--topic-roles", "analytics_updates=admin"])
            .await;
    let token = |roles: &[&str]| {
        let claims =
            json!({"sub": "u", "roles": roles, "exp": chrono::Utc::now().timestamp() + 600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let path = "/sse?topic=alerts&topic=analytics_updates";
    let anonymous = Sse::open(server.addr, path, &[]).await;
    assert_eq!(anonymous.status(), 401, "{}", anonymous.head);
    let viewer = token(&["viewer"]);
    let mut sse = Sse::open(server.addr, &format!("{path}&token={viewer}"), &[]).await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    let forbidden = sse.until("error").await;
    assert_eq!(forbidden.data["data"]["code"], "forbidden", "reported as an event");
    let bearer = format!("Bearer {}", token(&["admin"]));
    let mut admin = Sse::open(server.addr, path, &[("Authorization", &bearer)]).await;
    assert_eq!(admin.status(), 200);
    server.post("/api/publish", &alert(1)).await;
    assert_eq!(sse.messages(1).await[0].data["topic"], "alerts", "the rest keeps working");
    assert_eq!(admin.messages(1).await[0].data["topic"], "alerts");
}

#[tokio::test]
async fn streams_are_counted_and_a_shutdown_ends_them_cleanly() {
    let server = TestServer::start(&[]).await;
    let mut sse = Sse::open(server.addr, "/sse?topic=alerts", &[]).await;
    sse.until("subscribed").await;
    let (_, stats) = server.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (stats["sse_connections"].as_i64(), stats["connections"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("modelcast_sse_connections_active 1"), "{metrics}");
    server.begin_shutdown();
    // The stream ends cleanly: a comment saying so, then the chunked body's last chunk.
    while sse.next().await.is_some() {}
    assert!(sse.ended, "the body's last chunk arrived: a clean end, not a cut connection");
    tokio::time::timeout(Duration::from_secs(10), server.stop()).await.expect("stops").unwrap();
}

/// A reader that stops reading is bounded like a WebSocket one: its queue fills, the hub drops
/// it as a slow consumer, and the stream ends (the reader may reconnect and recover).
#[tokio::test]
async fn a_reader_that_stops_reading_is_let_go() {
    let server = TestServer::start(&["--queue-size", "20"]).await;
    let mut sse = Sse::open(server.addr, "/sse?topic=alerts", &[]).await;
    sse.until("subscribed").await;
    // About 8 MB of alerts: far more than the socket buffers hold.
    let text = "x".repeat(4000);
    for start in (0..2000).step_by(100) {
        let body: Vec<Value> = (start..start + 100)
            .map(|i| json!({"type": "alert", "data": {"alert_id": format!("a{i}"), "level": "info", "title": "t", "message": text}}))
            .collect();
        let (status, _) = server.post("/api/publish", &Value::Array(body)).await;
        assert_eq!(status, 202);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = server.get("/api/stats").await;
        let stats: Value = serde_json::from_str(&stats).unwrap();
        if stats["sse_connections"] == 0 {
            assert!(
                stats["connections_dropped"]["slow_consumer"].as_u64().unwrap() >= 1,
                "{stats}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slow reader is still held: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("modelcast_sse_connections_closed_total{reason="), "{metrics}");
    drop(sse);
}
