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

/// A TCP connection from `local` (a loopback address of its own) to `server`.
async fn connect_from(local: &str, server: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// What a raw connection is answered, read to its end: the status line, or `None` for a reset
/// or a close without an answer.
async fn answer_of(stream: &mut tokio::net::TcpStream, request: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(
        modelcast_tests::server_util::PATIENCE,
        stream.read_to_end(&mut reply),
    );
    read.await.ok()?.ok()?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    (!reply.is_empty()).then_some(reply)
}

/// Issue 34, medium: ~4,100 silent TCP connections from one address held the whole HTTP
/// connection cap (a victim published 6 times in 61, 54 resets). One address now holds at most
/// its share (`MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP`; WebSockets and event streams:
/// `MODELCAST_MAX_CONNECTIONS_PER_IP`), a silent connection is closed after
/// `MODELCAST_FIRST_BYTE_TIMEOUT`, and over a cap the answer is 503 with `Retry-After`, never
/// a reset.
#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let server = TestServer::start(&[
        "--max-http-connections",
        "60",
        "--max-http-connections-per-ip",
        "20",
        "--max-connections-per-ip",
        "2",
        "--first-byte-timeout",
        "1",
    ])
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from("127.0.0.2", server.addr).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The attacker's next connection is answered 503, not reset, with what to do.
    let mut over = connect_from("127.0.0.2", server.addr).await;
    let request = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    let answer = answer_of(&mut over, request).await.expect("an answer, not a reset");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("Retry-After: 1") && answer.contains("too_many_connections_from_address")
    );
    // A victim at another address publishes every time meanwhile.
    for i in 0..20 {
        let (status, body) = server.post("/api/publish", &alerts(i, 1)).await;
        assert_eq!(status, 202, "{body}");
    }
    // The silent ones are closed after the first-byte timeout: the address's share is back.
    for mut stream in silent {
        assert_eq!(answer_of(&mut stream, "").await, None, "closed without an answer");
    }
    let mut again = connect_from("127.0.0.2", server.addr).await;
    let answer =
        answer_of(&mut again, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.await.unwrap().starts_with("HTTP/1.1 200"));

    // WebSockets per address: the third from one address is refused with 503 and a reason.
    let _first = server.ws("/ws/one").await;
    let _second = server.ws("/ws/two").await;
    let url = format!("ws://{}/ws/three", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("MODELCAST_MAX_CONNECTIONS_PER_IP"), "{body}");
        }
        other => panic!("the third WebSocket from one address was not refused: {other:?}"),
    }
}

/// Issue 34, medium: after SIGTERM, publishes were answered 202 for about a second after every
/// subscriber had been closed: acknowledged, delivered to no one. Now a publish acknowledged
/// before the drain reaches every subscriber before it is closed, and one after is refused
/// (503 `shutting_down`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_acknowledged_during_a_shutdown_reaches_the_subscribers() {
    let server = TestServer::start(&["--shutdown-timeout", "5"]).await;
    // The first publish builds the validators (slow in a debug build): before the clock runs.
    assert_eq!(server.post("/api/publish", &alerts(1000, 1)).await.0, 202);
    let mut ws = server.ws("/ws/listener").await;
    ws.subscribe("alerts").await;
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let body = alerts(i, 1).to_string();
            let answer = modelcast_tests::server_util::http_request_full(
                addr,
                "POST",
                "/api/publish",
                &[],
                Some(body),
            )
            .await;
            match answer {
                Some((202, _, _)) => acknowledged.push(format!("a{i}")),
                Some((503, _, body)) => {
                    assert!(body.contains("shutting_down"), "{body}");
                    break;
                }
                Some((status, _, body)) => panic!("{status}: {body}"),
                // The drain ended between two publishes and the listener closed with it: the
                // connection is refused (nothing acknowledged, so nothing to deliver).
                None => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.begin_shutdown();
    let (close, frames) = ws.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    let acknowledged = publisher.await.unwrap();
    assert!(acknowledged.len() > 5, "the publisher ran: {}", acknowledged.len());
    let received: Vec<&str> =
        frames.iter().filter_map(|f| f["data"]["alert_id"].as_str()).collect();
    let lost: Vec<&String> =
        acknowledged.iter().filter(|id| !received.contains(&id.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged but never delivered: {lost:?}");
}

/// Issue 34, medium: an idempotency key reused with another body answered 202 with another
/// message's `(topic, seq)` and published nothing; a single publish keyed `k-c#0` met element 0
/// of an array keyed `k-c`, which was silently not published. A key names one request.
#[tokio::test]
async fn an_idempotency_key_names_one_request() {
    let server = TestServer::start(&[]).await;
    let post = |key: &'static str, body: Value| {
        let server = &server;
        async move {
            let headers = [("idempotency-key", key)];
            let (status, text) =
                server.request_with("POST", "/api/publish", &headers, Some(body.to_string())).await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let (status, first) = post("k-1", alerts(0, 1)).await;
    assert_eq!(status, 202, "{first}");
    // A retry: the same answer, nothing new.
    assert_eq!(post("k-1", alerts(0, 1)).await, (202, first.clone()));
    // Another body under the key: refused, naming it; nothing published.
    let (status, refused) = post("k-1", alerts(7, 1)).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("idempotency_key_reused")));
    assert!(refused["error"]["message"].as_str().unwrap().contains("`k-1`"), "{refused}");
    assert_eq!(server.hub.last_seq(modelcast_protocol::Topic::Alerts), 1);
    // Keys cannot meet: a single publish keyed `k-c#0` and an array keyed `k-c` both publish.
    let (status, single) = post("k-c#0", alerts(10, 1)).await;
    assert_eq!(status, 202, "{single}");
    let (status, array) = post("k-c", alerts(20, 2)).await;
    assert_eq!(status, 202, "{array}");
    let seqs: Vec<u64> =
        array["accepted"].as_array().unwrap().iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4], "both elements published");
}

/// Issue 34, medium: `1e400`, a lone `\ud800` and nesting 200 deep were refused as "data:
/// expected object, got null". The 400 names the real problem.
#[tokio::test]
async fn json_the_parser_cannot_hold_is_refused_with_its_real_problem() {
    let server = TestServer::start(&[]).await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let cases = [
        (
            r#"{"alert_id":"a","level":"info","title":"t","message":"m","n":1e400}"#.to_owned(),
            "out of range",
        ),
        (
            r#"{"alert_id":"a","level":"info","title":"\ud800","message":"m"}"#.to_owned(),
            "surrogate",
        ),
        (
            format!(r#"{{"alert_id":"a","level":"info","title":"t","message":"m","x":{deep}}}"#),
            "deeper than 128",
        ),
    ];
    for (data, problem) in cases {
        let body = format!(r#"{{"type":"alert","data":{data}}}"#);
        let (status, text) = server.request("POST", "/api/publish", Some(body)).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(problem) && !text.contains("got null"), "{problem}: {text}");
    }
}

/// Issue 34, medium: zero-length continuation frames were never closed (62 M frames in 9 s
/// cost 3 s of server CPU). A message may be cut into `MODELCAST_MAX_FRAGMENTS` frames.
#[tokio::test]
async fn a_message_in_endless_empty_fragments_is_closed() {
    let server = TestServer::start(&["--max-fragments", "16"]).await;
    let mut raw = modelcast_tests::server_util::RawWs::connect(server.addr, "/ws/frag", None).await;
    raw.send_frame(0x01, b"{").await; // a text message begins
    for _ in 0..20 {
        raw.send_frame(0x00, b"").await; // empty continuations
    }
    assert_eq!(raw.until_close().await, Some(1008));
}

/// A download progress update of `model`, as a backend that never finishes it publishes.
fn unfinished(model: &str) -> Value {
    json!({"type": "download_progress_update", "data": {"model_id": model,
        "status": "downloading", "progress_percent": 1.0, "downloaded_mb": 1.0,
        "total_mb": 100.0, "speed_mbps": 1.0, "eta_seconds": 99.0, "can_pause": true,
        "can_resume": false, "can_cancel": true}})
}

/// Issue 34, high: downloads that never finish stayed in memory after their state's TTL
/// (6,000 of 32 KB ids kept 384 MiB): the stale watchdog's entry had no owner. It lives as
/// long as the hub holds the download's state, and never more of them than
/// `MODELCAST_STATE_MAX_KEYS`.
#[tokio::test]
async fn abandoned_downloads_are_forgotten_with_their_state() {
    let server = TestServer::start(&[
        "--state-max-keys",
        "100",
        "--stale-after",
        "0.5",
        "--state-ttl",
        "2",
        "--download-progress-throttle",
        "0.05",
        "--history-size",
        "10",
    ])
    .await;
    let downloads = server.notifiers.downloads();
    let id = |n: usize| format!("{n:04}-{}", "x".repeat(1000));
    for batch in 0..10 {
        let body: Vec<Value> =
            (batch * 100..(batch + 1) * 100).map(|n| unfinished(&id(n))).collect();
        let (status, text) = server.post("/api/publish", &Value::Array(body)).await;
        assert_eq!(status, 202, "{text}");
        assert!(downloads.tracked_count() <= 100, "bounded: {}", downloads.tracked_count());
    }
    // Past the state's TTL (and a watchdog check), nothing of them is left.
    let gone = async {
        while downloads.tracked_count() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), gone)
        .await
        .unwrap_or_else(|_| panic!("{} downloads still tracked", downloads.tracked_count()));
    let (_, state) = server.get("/api/state?topic=download_progress").await;
    assert!(state.contains("\"keys\":0"), "{state}");
    // History holds the last 10 messages' keys; the others are freed.
    assert!(!server.hub.knows_key(&id(0)), "the id itself is freed");
}

/// Issue 34, high: after subscribers got `state_cleared d1` (the state cap), the watchdog
/// published `stale` for d1, which came back and evicted an active download. An evicted or
/// cleared download is gone for the watchdog too.
#[tokio::test]
async fn the_stale_watchdog_never_brings_back_evicted_state() {
    let server = TestServer::start(&["--state-max-keys", "2", "--stale-after", "0.5"]).await;
    let mut ws = server.ws("/ws/watcher").await;
    ws.subscribe("download_progress").await;
    for model in ["d1", "d2", "d3"] {
        assert_eq!(server.post("/api/publish", &unfinished(model)).await.0, 202);
    }
    // d2 and d3 turn stale; d1, evicted by d3, never does.
    let mut stale = Vec::new();
    let mut cleared = Vec::new();
    while stale.len() < 2 {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("state_cleared") => {
                cleared.push(frame["data"]["key"].as_str().unwrap().to_owned())
            }
            Some("download_status_change") if frame["data"]["new_status"] == "stale" => {
                stale.push(frame["data"]["model_id"].as_str().unwrap().to_owned());
            }
            _ => {}
        }
    }
    assert_eq!(cleared, ["d1"]);
    stale.sort();
    assert_eq!(stale, ["d2", "d3"]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // more checks pass
    let (_, state) = server.get("/api/state?topic=download_progress").await;
    assert!(!state.contains("\"d1\""), "d1 came back: {state}");
    assert!(state.contains("\"d2\"") && state.contains("\"d3\""), "{state}");
}
