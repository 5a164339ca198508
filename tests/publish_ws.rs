//! Publishing over a WebSocket (`{"action":"publish",…}`), a backend's persistent channel:
//! the same checks as `POST /api/publish`, who may use it, and that it is not rate limited.

use modelcast_tests::server_util::{Client, TestServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A client on `/ws/<id>` with extra handshake headers, past its `welcome`; or the refusal's
/// HTTP status.
async fn open(
    server: &TestServer,
    id: &str,
    headers: &[(&'static str, &str)],
) -> Result<Client, u16> {
    let mut req = format!("ws://{}/ws/{id}", server.addr).into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => {
            let mut client = Client { ws };
            assert_eq!(client.next_json().await["type"], "welcome");
            Ok(client)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(err) => panic!("{err}"),
    }
}

fn publish(id: Option<&str>, alert_id: &str) -> Value {
    let mut frame = json!({"action": "publish", "type": "alert", "data": {
        "alert_id": alert_id, "level": "warning", "title": "Disk", "message": "Low disk"}});
    if let Some(id) = id {
        frame["id"] = json!(id);
    }
    frame
}

#[tokio::test]
async fn a_backend_publishes_over_its_websocket_with_the_http_checks() {
    let server = TestServer::start(&[]).await;
    let mut subscriber = server.ws("/ws/sub").await;
    subscriber.subscribe("alerts").await;
    let mut backend = open(&server, "backend", &[]).await.unwrap();

    // With an id: answered with its epoch and seq; the subscriber gets the alert (timestamp
    // stamped).
    backend.send_json(&publish(Some("p1"), "a1")).await;
    let ack = backend.next_of_type("published").await;
    let epoch = server.hub.position(modelcast_protocol::Topic::Alerts).0;
    assert_eq!(
        ack["data"],
        json!({"topic": "alerts", "status": "sent", "epoch": epoch, "seq": 1, "request_id": "p1"})
    );
    let alert = subscriber.next_of_type("alert").await;
    assert_eq!((alert["seq"].as_u64(), alert["data"]["alert_id"].as_str()), (Some(1), Some("a1")));
    assert!(alert["data"]["timestamp"].is_string());

    // Without an id: not answered, still published.
    backend.send_json(&publish(None, "a2")).await;
    assert_eq!(subscriber.next_of_type("alert").await["data"]["alert_id"], "a2");

    // Refused like over HTTP: the error names the field and the request.
    let bad = json!({"action": "publish", "id": 7, "type": "download_progress_update", "data": {
        "model_id": "m", "status": "downloading", "progress_percent": 150.0, "downloaded_mb": 1.0,
        "total_mb": 2.0, "speed_mbps": 1.0, "can_pause": true, "can_resume": true,
        "can_cancel": true}});
    backend.send_json(&bad).await;
    let error = backend.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "invalid_message");
    assert_eq!(error["data"]["request_id"], 7);
    assert!(
        error["data"]["message"].as_str().unwrap().contains("data.progress_percent"),
        "{error}"
    );
    let wrong_topic = json!({"action": "publish", "id": "t", "topic": "system_stats", "type": "alert",
        "data": publish(None, "x")["data"]});
    backend.send_json(&wrong_topic).await;
    let error = backend.next_of_type("error").await;
    assert!(error["data"]["message"].as_str().unwrap().starts_with("topic:"), "{error}");
    let control = json!({"action": "publish", "id": "c", "type": "pong", "data": {}});
    backend.send_json(&control).await;
    let error = backend.next_of_type("error").await;
    assert!(error["data"]["message"].as_str().unwrap().contains("control message"), "{error}");
}

#[tokio::test]
async fn only_allowed_connections_publish() {
    // No publish keys: a browser page may subscribe, but not publish unless its origin is one
    // MODELCAST_ALLOWED_ORIGINS lists (as for HTTP publishing).
    let open_server = TestServer::start(&[]).await;
    let mut page =
        open(&open_server, "page", &[("origin", "https://any.example.com")]).await.unwrap();
    page.send_json(&publish(Some("b"), "x")).await;
    let error = page.next_of_type("error").await;
    assert_eq!(
        (error["data"]["code"].as_str(), error["data"]["request_id"].as_str()),
        (Some("forbidden"), Some("b"))
    );

    // With publish keys: only a connection opened with one; a wrong key is refused at once.
    let key = "0123456789abcdef-publish";
    let server = TestServer::start(&["--publish-key", key]).await;
    let mut subscriber = server.ws("/ws/sub").await;
    subscriber.subscribe("alerts").await;
    let mut anonymous = open(&server, "anon", &[]).await.unwrap();
    anonymous.send_json(&publish(Some("n"), "x")).await;
    let error = anonymous.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "forbidden");
    assert!(error["data"]["message"].as_str().unwrap().contains("publish key"), "{error}");
    let wrong = open(&server, "wrong", &[("authorization", "Bearer not-the-key-at-all")]).await;
    assert_eq!(wrong.err(), Some(403));
    let bearer = format!("Bearer {key}");
    let mut backend = open(&server, "backend", &[("authorization", &bearer)]).await.unwrap();
    backend.send_json(&publish(Some("k"), "keyed")).await;
    assert_eq!(backend.next_of_type("published").await["data"]["seq"], 1);
    assert_eq!(subscriber.next_of_type("alert").await["data"]["alert_id"], "keyed");
}

/// The per-connection rate limit guards against subscribers' floods; a publisher's `publish`
/// frames are its traffic, as unlimited as HTTP publishing (other frames still count).
#[tokio::test]
async fn publish_frames_are_not_rate_limited() {
    let server = TestServer::start(&["--rate-limit", "5", "--rate-burst", "5"]).await;
    let mut subscriber = server.ws("/ws/sub").await;
    subscriber.subscribe("alerts").await;
    let mut backend = open(&server, "backend", &[]).await.unwrap();
    for k in 0..50 {
        backend.send_json(&publish(None, &format!("r{k}"))).await;
    }
    for k in 0..50 {
        assert_eq!(subscriber.next_of_type("alert").await["data"]["alert_id"], format!("r{k}"));
    }
    for _ in 0..10 {
        backend.send_json(&json!({"action": "ping"})).await;
    }
    assert_eq!(backend.next_of_type("error").await["data"]["code"], "rate_limited");
}

/// `modelcast_frames_per_flush` (count, sum) from `/metrics`.
async fn flushes(server: &TestServer) -> (f64, f64) {
    let (_, text) = server.get("/metrics").await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    (value("modelcast_frames_per_flush_count "), value("modelcast_frames_per_flush_sum "))
}

/// The mechanism behind one-message-per-publish throughput: frames queued while a
/// subscriber's writer is busy leave in one flush. 100 publishes arriving together (one read
/// of a backend's channel) reach a subscriber in far fewer than 100 flushes.
#[tokio::test]
async fn frames_queued_while_a_writer_is_busy_share_a_flush() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(&[]).await;
    let mut subscriber = server.ws("/ws/sub").await;
    subscriber.subscribe("alerts").await;
    let mut backend = open(&server, "backend", &[]).await.unwrap();
    let (count0, sum0) = flushes(&server).await;
    for k in 0..100 {
        let frame = publish(None, &format!("f{k}")).to_string();
        backend.ws.feed(Message::text(frame)).await.unwrap();
    }
    backend.ws.flush().await.unwrap();
    for k in 0..100 {
        assert_eq!(subscriber.next_of_type("alert").await["data"]["alert_id"], format!("f{k}"));
    }
    let (count1, sum1) = flushes(&server).await;
    assert_eq!(sum1 - sum0, 100.0, "every frame is counted once");
    let flushes = count1 - count0;
    assert!((1.0..100.0).contains(&flushes), "100 frames took {flushes} flushes");
}

/// `publish` frames that arrive in one read are published together (a topic's run is fanned
/// out at once) but answered one by one, in order: a refusal and another action in the middle
/// keep their place, and subscribers get every accepted message in order.
#[tokio::test]
async fn publish_frames_read_together_are_answered_in_order() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(&[]).await;
    let mut subscriber = server.ws("/ws/sub").await;
    subscriber.subscribe("alerts").await;
    subscriber.subscribe("model_status").await;
    let mut backend = open(&server, "backend", &[]).await.unwrap();
    let status = |k: u64| {
        json!({"action": "publish", "id": k, "type": "model_status_update", "data": {
            "model_id": format!("m{k}"), "availability_status": "available", "is_available": true,
            "is_loaded": false, "size_mb": 10.0, "integrity_score": 1.0, "performance_score": 1.0,
            "usage_frequency": 0.0, "update_available": false}})
    };
    let frames: Vec<Value> = (0..40u64)
        .map(|k| match k {
            10 => {
                json!({"action": "publish", "id": k, "type": "alert", "data": {"level": "warning"}})
            }
            20 => json!({"action": "ping", "id": k}),
            k if k % 7 == 3 => status(k),
            k => publish(None, &format!("a{k}"))
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .chain([("id".to_owned(), json!(k))])
                .collect(),
        })
        .collect();
    for frame in &frames {
        backend.ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    backend.ws.flush().await.unwrap();

    let mut answers = Vec::new();
    while answers.len() < 40 {
        let frame = backend.next_json().await;
        if let Some(id) = frame["data"]["request_id"].as_u64() {
            answers.push((id, frame["type"].as_str().unwrap().to_owned()));
        }
    }
    let expected: Vec<(u64, String)> = (0..40u64)
        .map(|k| {
            let ty = match k {
                10 => "error",
                20 => "pong",
                _ => "published",
            };
            (k, ty.to_owned())
        })
        .collect();
    assert_eq!(answers, expected);

    let alerts: Vec<u64> = (0..40u64).filter(|k| *k != 10 && *k != 20 && k % 7 != 3).collect();
    let mut got = Vec::new();
    while got.len() < alerts.len() {
        let alert = subscriber.next_of_type("alert").await;
        got.push(alert["data"]["alert_id"].as_str().unwrap()[1..].parse::<u64>().unwrap());
        assert_eq!(alert["seq"].as_u64(), Some(got.len() as u64), "consecutive seqs");
    }
    assert_eq!(got, alerts);
    // The model statuses went through their batch window (answered `held`) and still arrive.
    let statuses = loop {
        let frame = subscriber.next_json().await;
        if frame["topic"] == "model_status" {
            break frame;
        }
    };
    assert!(statuses.to_string().contains("\"m3\""), "{statuses}");
}
