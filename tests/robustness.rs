//! The findings of a black-box probe of the server, each kept as a test over real sockets:
//! recovery that never trips the slow-consumer guard, gaps that still deliver what history
//! holds, and the defences of the HTTP, JWT and WebSocket layers.

use modelcast_tests::server_util::TestServer;
use serde_json::{Value, json};

fn alerts(from: usize, n: usize) -> Value {
    let items: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"type": "alert", "data": {"alert_id": format!("a{i}"), "level": "warning",
                "title": "t", "message": "m", "timestamp": "2025-08-27T10:30:00Z"}})
        })
        .collect();
    Value::Array(items)
}

/// Publishes `n` alerts in batches.
async fn publish_alerts(server: &TestServer, n: usize) {
    for start in (0..n).step_by(500) {
        let (status, body) = server.post("/api/publish", &alerts(start, 500.min(n - start))).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// Subscribes to `alerts` with `since` and reads the reply and then `count` alerts; returns
/// the reply and the alerts' seqs.
async fn resubscribe(server: &TestServer, since: Value, count: usize) -> (Value, Vec<u64>) {
    let mut ws = server.ws("/ws/returning").await;
    ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "since": since})).await;
    let reply = ws.next_json().await;
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "alert", "no close, no other frame: {frame}");
        seqs.push(frame["seq"].as_u64().unwrap());
    }
    (reply, seqs)
}

/// Probe finding 1: with exactly `--history-size` messages missed (and more than the queue
/// holds), the recovery was closed with 4001 before `subscribed`, and again on every retry.
#[tokio::test]
async fn a_recovery_larger_than_the_queue_is_delivered_not_closed() {
    for (history, published, missed) in [(1000, 2000, 1000), (3000, 3000, 1500)] {
        let history_arg = history.to_string();
        let server = TestServer::start(&["--history-size", &history_arg]).await;
        publish_alerts(&server, published).await;
        let epoch = server.hub.epoch().to_owned();
        let since = json!({"epoch": epoch, "seq": published - missed});
        let (reply, seqs) = resubscribe(&server, since, missed).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["data"]["recovered"], true, "{reply}");
        let expected: Vec<u64> = ((published - missed + 1) as u64..=published as u64).collect();
        assert_eq!(seqs, expected, "history {history}: exactly the missed alerts, in order");
    }
}

/// Probe finding 2: a gap delivered nothing on an event topic; now what history still holds
/// follows the gap, and after a restart the new epoch's whole history is replayed.
#[tokio::test]
async fn a_gap_still_delivers_what_history_holds() {
    let server = TestServer::start(&[]).await;
    publish_alerts(&server, 2000).await;
    let since = json!({"epoch": server.hub.epoch(), "seq": 500});
    let (reply, seqs) = resubscribe(&server, since, 1000).await;
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    assert_eq!(reply["data"]["seq"], 1000, "the frames continue after seq 1000: {reply}");
    assert_eq!(seqs, (1001..=2000).collect::<Vec<u64>>());

    // A restart: another epoch. What was published since is replayed in full.
    let old_epoch = server.hub.epoch().to_owned();
    drop(server);
    let restarted = TestServer::start(&[]).await;
    publish_alerts(&restarted, 1).await;
    let since = json!({"epoch": old_epoch, "seq": 2000});
    let (reply, seqs) = resubscribe(&restarted, since, 1).await;
    assert_eq!(reply["data"]["recovered"], false, "{reply}");
    assert_eq!(reply["data"]["epoch"], restarted.hub.epoch());
    assert_eq!(seqs, [1], "the alert published after the restart");
}

/// Opens a TCP connection that sends a publish's headers and one byte of its body.
async fn slow_publisher(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .expect("write");
    stream
}

/// Reads what the server sends until it closes (or 5 s pass).
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Probe finding 3: a publish body that never completes held its connection for 400 s+, and
/// 1,100 of them exhausted the file descriptors (`/healthz` and new WebSockets timed out).
/// Now a body has a deadline (408) and connections that are not WebSockets are capped below
/// the open-file limit: over the cap a client gets 503 at once, never a hang.
#[tokio::test]
async fn slow_publish_bodies_time_out_and_cannot_exhaust_the_server() {
    let server = TestServer::start(&["--max-http-connections", "20", "--body-timeout", "1"]).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(slow_publisher(server.addr).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut extra = slow_publisher(server.addr).await;
    let busy = read_to_close(&mut extra).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("Retry-After: 1") && busy.contains("server_busy"), "{busy}");
    for stream in &mut slow {
        let reply = read_to_close(stream).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("body_timeout"), "{reply}");
    }
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    server.ws("/ws/after").await;
}

/// Probe finding 10: with no publish keys (the loopback default), a cross-origin `text/plain`
/// POST from any web page published. A browser request (Origin or Sec-Fetch-Site) now needs an
/// allowed origin; backends (no Origin) are unaffected.
#[tokio::test]
async fn browser_pages_cannot_publish_unless_their_origin_is_allowed() {
    let body = Some(alerts(0, 1).to_string());
    let server = TestServer::start(&[]).await;
    for headers in [
        vec![("origin", "https://evil.example"), ("content-type", "text/plain")],
        vec![("sec-fetch-site", "cross-site")],
    ] {
        let (status, text) =
            server.request_with("POST", "/api/publish", &headers, body.clone()).await;
        assert_eq!(status, 403, "{headers:?}: {text}");
        assert!(text.contains("forbidden_origin") && text.contains("MODELCAST_ALLOWED_ORIGINS"));
    }
    assert_eq!(server.hub.last_seq(modelcast_protocol::Topic::Alerts), 0, "nothing published");
    let (status, _) = server.request_with("POST", "/api/publish", &[], body.clone()).await;
    assert_eq!(status, 202, "a backend (no Origin) publishes");

    let allowed = TestServer::start(&["--allowed-origin", "https://ops.example"]).await;
    let ops = [("origin", "https://ops.example"), ("access-control-request-method", "POST")];
    let (status, text) = allowed.request_with("OPTIONS", "/api/publish", &ops, None).await;
    assert_eq!(status, 204, "an allowed page's CORS preflight passes: {text}");
    let evil = [("origin", "https://evil.example"), ("access-control-request-method", "POST")];
    assert_eq!(allowed.request_with("OPTIONS", "/api/publish", &evil, None).await.0, 403);
    let (status, text) = allowed
        .request_with("POST", "/api/publish", &[("origin", "https://ops.example")], body)
        .await;
    assert_eq!(status, 202, "{text}");
}

/// Probe finding 12: `/readyz` never said 503 during shutdown (the listener closed first),
/// `/metrics` and `/api/stats` were open whatever the auth, and duplicate JSON keys were read
/// "last one wins".
#[tokio::test]
async fn readiness_during_drain_a_metrics_token_and_duplicate_keys() {
    // A slow publish holds the drain open for about a second.
    let server = TestServer::start(&["--body-timeout", "1", "--shutdown-timeout", "5"]).await;
    let _slow = slow_publisher(server.addr).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    server.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, body) = server.get("/readyz").await;
    assert_eq!((status, body.contains("shutting_down")), (503, true), "{body}");
    server.stop().await.expect("drains and stops");

    let token = "metrics-token-0123456789";
    let server = TestServer::start(&["--metrics-token", token]).await;
    for path in ["/metrics", "/api/stats"] {
        assert_eq!(server.get(path).await.0, 401, "{path}");
        let wrong = [("authorization", "Bearer nope")];
        assert_eq!(server.request_with("GET", path, &wrong, None).await.0, 403, "{path}");
        let bearer = format!("Bearer {token}");
        let right = [("authorization", bearer.as_str())];
        assert_eq!(server.request_with("GET", path, &right, None).await.0, 200, "{path}");
    }

    let dup = r#"{"type":"alert","data":{"alert_id":"a","level":"warning","title":"t","title":"u","message":"m","timestamp":"2025-08-27T10:30:00Z"}}"#;
    let (status, text) = server.request("POST", "/api/publish", Some(dup.into())).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("data.title") && text.contains("twice"), "{text}");
    let mut ws = server.ws("/ws/dup").await;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"action":"subscribe","topic":"alerts","topic":"system_stats"}"#.into(),
    ))
    .await;
    let reply = ws.next_json().await;
    assert_eq!(reply["data"]["code"], "invalid_message", "{reply}");
    assert!(reply["data"]["message"].as_str().unwrap().contains("`topic` appears twice"));
}

/// Probe finding 9: 5,000 messages a second for 4 s were never closed — served frames reset
/// the run of refusals — and most refused frames were dropped without a word. Now every
/// refused frame is answered, and more than `MODELCAST_ABUSE_LIMIT` refusals within a second
/// close the connection, however they interleave with served frames.
#[tokio::test]
async fn a_sustained_flood_is_closed_and_every_refused_frame_is_answered() {
    use futures_util::SinkExt;
    let server = TestServer::start(&[]).await; // 50/s, bursts of 100, abuse limit 200
    let ws = server.ws("/ws/flood").await;
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws.ws);
    let sender = tokio::spawn(async move {
        // About 5,000 frames a second for up to 4 s.
        for batch in 0..800 {
            for i in 0..25 {
                let frame = json!({"action": "ping", "id": batch * 25 + i}).to_string();
                if sink
                    .feed(tokio_tungstenite::tungstenite::Message::Text(frame.into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    let (mut pongs, mut refused) = (0usize, 0usize);
    let close = loop {
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures_util::StreamExt::next(&mut stream),
        )
        .await
        .expect("closed within the flood");
        match next {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let frame: Value = serde_json::from_str(t.as_str()).unwrap();
                match frame["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") if frame["data"]["code"] == "rate_limited" => {
                        // The refused request is named, though the frame was not read.
                        assert!(frame["data"]["request_id"].is_u64(), "{frame}");
                        refused += 1;
                    }
                    _ => panic!("unexpected {frame}"),
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => break c,
            Some(Ok(_)) => {}
            other => panic!("the stream ended without a close frame: {other:?}"),
        }
    };
    sender.abort();
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), modelcast_protocol::close::POLICY_VIOLATION, "{close:?}");
    // At least the limit (more if a slow machine let the one-second window roll over).
    assert!(refused >= 200, "every refused frame up to the limit was answered: {refused}");
    assert!(pongs >= 100, "the burst was served: {pongs}");
}

/// Opens a WebSocket to `server` with `X-Forwarded-For: forwarded_for`; the HTTP status and
/// `Retry-After` of the answer (101 when accepted).
async fn handshake_from(server: &TestServer, forwarded_for: &str) -> (u16, Option<String>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", forwarded_for.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((_ws, resp)) => (resp.status().as_u16(), None),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (resp.status().as_u16(), retry)
        }
        Err(e) => panic!("{e}"),
    }
}

/// Probe finding 11: behind a reverse proxy every client had the proxy's address, so a
/// reconnect storm hit the per-IP limit; `X-Forwarded-For` was ignored and refusals carried
/// no `Retry-After`.
#[tokio::test]
async fn trusted_proxies_name_the_client_and_refusals_say_when_to_retry() {
    // 1 connection per second per client, bursts of 10.
    let proxied =
        TestServer::start(&["--connect-rate", "1", "--trusted-proxy", "127.0.0.0/8"]).await;
    for i in 0..30 {
        let (status, _) = handshake_from(&proxied, &format!("198.51.100.{i}, 127.0.0.2")).await;
        assert_eq!(status, 101, "client {i} is its own address behind the proxy");
    }
    for _ in 0..10 {
        assert_eq!(handshake_from(&proxied, "203.0.113.7").await.0, 101);
    }
    let (status, retry) = handshake_from(&proxied, "203.0.113.7").await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")), "one client's burst is spent");

    // A peer that is not a trusted proxy cannot pick its address with a header.
    let direct = TestServer::start(&["--connect-rate", "1"]).await;
    for i in 0..10 {
        assert_eq!(handshake_from(&direct, &format!("198.51.100.{i}")).await.0, 101);
    }
    assert_eq!(handshake_from(&direct, "198.51.100.99").await.0, 429);
}

/// Probe finding 8: history was capped by count only (1,000 alerts of 1 MiB took 1 GiB of
/// RSS on one topic), and the publish size limit was not the one `--help` named. Now history
/// has a byte budget (oldest dropped first; a recovery from before it reports the gap), and
/// one publish limit, MODELCAST_MAX_PUBLISH_BYTES.
#[tokio::test]
async fn history_has_a_byte_budget_and_publishes_one_size_limit() {
    let server =
        TestServer::start(&["--history-bytes", "200000", "--max-publish-bytes", "50000"]).await;
    let big = "x".repeat(10_000);
    for i in 0..100 {
        let alert = json!({"type": "alert", "data": {"alert_id": format!("a{i}"), "level": "warning",
            "title": "t", "message": big, "timestamp": "2025-08-27T10:30:00Z"}});
        let (status, body) = server.post("/api/publish", &alert).await;
        assert_eq!(status, 202, "{body}");
    }
    let since = json!({"epoch": server.hub.epoch(), "seq": 0});
    let mut ws = server.ws("/ws/big").await;
    ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "since": since})).await;
    let reply = ws.next_json().await;
    assert_eq!(reply["data"]["recovered"], false, "the oldest alerts were dropped: {reply}");
    let first_held = reply["data"]["seq"].as_u64().unwrap() + 1;
    let held = 100 - first_held + 1;
    assert!((15..=20).contains(&held), "about 200,000 bytes of 10 kB alerts: {held}");
    for seq in first_held..=100 {
        assert_eq!(ws.next_json().await["seq"], seq);
    }

    let too_big = json!({"type": "alert", "data": {"alert_id": "huge", "level": "warning",
        "title": "t", "message": "x".repeat(60_000), "timestamp": "2025-08-27T10:30:00Z"}});
    let (status, body) = server.post("/api/publish", &too_big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("MODELCAST_MAX_PUBLISH_BYTES"));
}

/// Probe finding 7 (RFC 6455 closing handshake), the cases a client meets most; the full
/// Autobahn 2–7 run is `tests/autobahn/closing.py` in CI. The server never answered a client's
/// close (clients saw 1006), closed protocol errors with 1008 and invalid UTF-8 with 1000.
#[tokio::test]
async fn the_closing_handshake_follows_rfc_6455() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    let server = TestServer::start(&[]).await;

    // The client closes: the server echoes its code, cleanly.
    let mut ws = server.ws("/ws/polite").await;
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() }))).await;
    let (close, _) = ws.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(1001), "the client's code is echoed");

    // Invalid UTF-8 in a text frame: 1007.
    let mut ws = server.ws("/ws/bad-utf8").await;
    let frame = Frame::message(vec![0xce, 0xba, 0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await;
    let (close, _) = ws.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(modelcast_protocol::close::INVALID_PAYLOAD));

    // A protocol error (a reserved opcode): 1002.
    let mut ws = server.ws("/ws/bad-opcode").await;
    let frame = Frame::message(b"x".to_vec(), OpCode::Data(Data::Reserved(3)), true);
    ws.send(Message::Frame(frame)).await;
    let (close, _) = ws.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(modelcast_protocol::close::PROTOCOL_ERROR));
}

/// A closed tab or a dropped network (TCP gone without a close frame) was counted as a
/// `policy_violation`, where an operator's alert would fire; it is `client_gone` now.
#[tokio::test]
async fn an_abrupt_disconnect_is_counted_as_client_gone() {
    let server = TestServer::start(&[]).await;
    let ws = server.ws("/ws/tab").await;
    drop(ws); // no close frame: the socket just goes
    let mut text = String::new();
    for _ in 0..200 {
        text = server.get("/metrics").await.1;
        if text.contains("reason=\"client_gone\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let closed: Vec<&str> =
        text.lines().filter(|l| l.starts_with("modelcast_connections_closed")).collect();
    assert!(closed.iter().any(|l| l.contains("reason=\"client_gone\"} 1")), "{closed:?}");
    assert!(
        !closed.iter().any(|l| l.contains("policy_violation") || l.contains("protocol_error")),
        "{closed:?}"
    );
}
