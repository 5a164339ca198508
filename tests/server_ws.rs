//! Server: the seed's flow, bad input, limits, replacement, heartbeat, shutdown — over real
//! sockets on 127.0.0.1.

use std::time::Duration;

use modelcast_protocol::{ServerMessage, close};
use modelcast_tests::fixtures;
use modelcast_tests::server_util::{PATIENCE, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn seed(name: &str) -> Value {
    fixtures("seed").into_iter().find(|(n, _)| n == name).expect(name).1
}

/// The seed's JavaScript, replayed: connect to `/ws/<id>`, send its two subscribe frames,
/// a backend publishes over HTTP, and the typed frames arrive.
#[tokio::test]
async fn the_seed_javascript_flow_works_unchanged() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws_raw("/ws/connection_id").await;
    let welcome = ws.next_json().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["data"]["connection_id"], "connection_id");
    assert_eq!(welcome["data"]["heartbeat_interval_seconds"], 30);
    ws.send_json(&json!({"action": "subscribe", "topic": "model_status"})).await;
    ws.send_json(&json!({"action": "subscribe", "topic": "download_progress"})).await;
    assert_eq!(ws.next_json().await["data"]["topic"], "model_status");
    assert_eq!(ws.next_json().await["data"]["topic"], "download_progress");

    let (status, body) = server
        .post(
            "/api/publish",
            &json!([seed("model_status_update"), seed("download_progress_update")]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"][1]["topic"], "download_progress");
    assert_eq!(body["accepted"][1]["seq"], 1);

    let mut got = Vec::new();
    for _ in 0..2 {
        let frame = ws.next_json().await;
        // Typed: every frame parses as a ServerMessage, and `data` is the seed's, unchanged.
        let msg: ServerMessage = serde_json::from_value(frame.clone()).expect("typed frame");
        assert_eq!(frame["data"], seed(msg.type_name())["data"]);
        got.push(msg.type_name());
    }
    got.sort_unstable();
    assert_eq!(got, ["download_progress_update", "model_status_update"]);
}

/// Every bad input gets an `error` with its code (and the request id), and the connection
/// stays: a ping afterwards still gets its pong.
#[tokio::test]
async fn bad_input_gets_an_error_reply_and_the_connection_stays() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws("/ws/bad-input").await;
    let cases: [(Message, &str); 7] = [
        (Message::Text("{not json".into()), "invalid_json"),
        (Message::Text(r#"{"action":"dance","id":1}"#.into()), "unknown_action"),
        (
            Message::Text(r#"{"action":"subscribe","topic":"weather","id":2}"#.into()),
            "unknown_topic",
        ),
        (Message::Text(r#"{"action":"subscribe","id":3}"#.into()), "invalid_message"),
        (Message::Text(r#"{"action":"subscribe","topic":7,"id":4}"#.into()), "invalid_message"),
        (Message::Text(r#"[1,2]"#.into()), "invalid_message"),
        (Message::Binary(vec![1, 2, 3].into()), "binary_not_supported"),
    ];
    for (frame, code) in cases {
        let sent = format!("{frame:?}");
        ws.send(frame).await;
        let reply = ws.next_json().await;
        assert_eq!(reply["type"], "error", "{sent}: {reply}");
        assert_eq!(reply["data"]["code"], code, "{sent}: {reply}");
        assert!(!reply["data"]["message"].as_str().unwrap().is_empty());
    }
    // Request ids are echoed.
    ws.send_json(&json!({"action": "subscribe", "topic": "weather", "id": "req-9"})).await;
    assert_eq!(ws.next_json().await["data"]["request_id"], "req-9");
    ws.send_json(&json!({"action": "unsubscribe", "topic": "alerts", "id": 5})).await;
    let reply = ws.next_json().await;
    assert_eq!(
        (reply["data"]["code"].as_str(), reply["data"]["request_id"].as_i64()),
        (Some("not_subscribed"), Some(5))
    );
    ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "max_hz": -1})).await;
    assert_eq!(ws.next_json().await["data"]["code"], "invalid_message");

    ws.send_json(&json!({"action": "ping", "id": 10})).await;
    let pong = ws.next_json().await;
    assert_eq!(
        (pong["type"].as_str(), pong["data"]["request_id"].as_i64()),
        (Some("pong"), Some(10))
    );
    // The error counter moved.
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains(r#"modelcast_errors_total{code="invalid_json"} 1"#), "{metrics}");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_with_1009() {
    let server = TestServer::start(&["--max-frame-size", "1024"]).await;
    let mut ws = server.ws("/ws/big").await;
    let big = format!(r#"{{"action":"ping","id":"{}"}}"#, "x".repeat(4096));
    ws.send(Message::Text(big.into())).await;
    let (close, _) = ws.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(close::MESSAGE_TOO_BIG));
}

#[tokio::test]
async fn an_open_id_is_replaced_and_the_old_connection_told_why() {
    let server = TestServer::start(&[]).await;
    let mut first = server.ws("/ws/tab").await;
    first.subscribe("alerts").await;
    let mut second = server.ws("/ws/tab").await;
    let (close, _) = first.until_close().await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, close::REPLACED);
    assert!(reason.contains("replaced"), "{reason}");
    // The new one works.
    second.send_json(&json!({"action": "ping"})).await;
    assert_eq!(second.next_json().await["type"], "pong");
    // A bad id is refused at the handshake.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws/bad%20id", server.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn above_max_connections_the_handshake_gets_503_with_a_json_body() {
    let server = TestServer::start(&["--max-connections", "2"]).await;
    let _a = server.ws("/ws/a").await;
    let _b = server.ws("/ws/b").await;
    match tokio_tungstenite::connect_async(format!("ws://{}/ws/c", server.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
            assert_eq!(body["error"]["max_connections"], 2);
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // A freed slot can be used again.
    drop(_a);
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = tokio_tungstenite::connect_async(format!("ws://{}/ws/d", server.addr)).await
        {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "the slot of a closed connection is released");
}

/// A peer that answers nothing (not even pings) for two heartbeat intervals is dropped.
#[tokio::test]
async fn a_silent_peer_is_dropped_after_two_heartbeats() {
    // An interval long enough that a busy machine (every test at once on two cores) never
    // makes the answering peer look silent.
    let server = TestServer::start(&["--heartbeat-interval", "1"]).await;
    let mut silent = server.ws("/ws/silent").await;
    let mut lively = server.ws("/ws/lively").await;
    // Not polling `silent` means its pings are never answered.
    let keep_alive = tokio::spawn(async move {
        for _ in 0..16 {
            lively.send_json(&json!({"action": "ping"})).await;
            lively.next_of_type("pong").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lively
    });
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (close, _) = silent.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(close::HEARTBEAT_TIMEOUT));
    let mut lively = keep_alive.await.unwrap();
    lively.send_json(&json!({"action": "ping"})).await;
    assert_eq!(lively.next_of_type("pong").await["type"], "pong", "an answering peer stays");
}

/// Shutdown: readyz turns 503, every client gets 1001 after its queued frames, `run` returns.
#[tokio::test]
async fn shutdown_drains_and_closes_every_client_with_1001() {
    let server = TestServer::start(&[]).await;
    let mut a = server.ws("/ws/a").await;
    let mut b = server.ws("/ws/b").await;
    a.subscribe("alerts").await;
    let alert = json!({"type": "alert", "data": {"alert_id": "x", "level": "info", "title": "t",
        "message": "m", "timestamp": "2025-08-27T10:30:00Z"}});
    assert_eq!(server.post("/api/publish", &alert).await.0, 202);
    let addr = server.addr;
    server.stop().await.expect("clean exit");
    let (close, frames) = a.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(close::GOING_AWAY));
    assert_eq!(
        frames.last().map(|f| f["type"].clone()),
        Some(json!("alert")),
        "queued frames drained first"
    );
    assert_eq!(b.until_close().await.0.map(|c| c.0), Some(close::GOING_AWAY));
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

/// A client that never completes its handshake — silent, or one byte at a time — is cut off
/// after the handshake timeout; hundreds of them do not stop a real client.
#[tokio::test]
async fn slow_or_silent_handshakes_are_cut_off() {
    // The silent sockets come from the same address as the real client: raise its share of
    // HTTP connections so that this test is about the timeouts (the per-address cap has
    // its own test).
    let server =
        TestServer::start(&["--handshake-timeout", "0.5", "--max-http-connections-per-ip", "1000"])
            .await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut dripping = TcpStream::connect(server.addr).await.unwrap();
    let drip = tokio::spawn(async move {
        for b in b"GET /ws/slow HTTP/1.1\r\nHost: x\r\n".iter() {
            if dripping.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut buf = [0u8; 64];
        matches!(dripping.read(&mut buf).await, Ok(0) | Err(_))
    });
    // A real client is served meanwhile.
    let mut real = server.ws("/ws/real").await;
    real.send_json(&json!({"action": "ping"})).await;
    assert_eq!(real.next_json().await["type"], "pong");

    assert!(drip.await.unwrap(), "the dripping client was cut off");
    for mut s in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "a silent socket was answered or kept: {n:?}");
    }
}

/// The `modelcast` binary exits 0 on SIGTERM after closing its clients with 1001.
#[cfg(unix)]
#[tokio::test]
async fn the_binary_shuts_down_on_sigterm_and_exits_zero() {
    let bin = modelcast_tests::server_util::binary();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(bin)
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env("MODELCAST_LOG", "info")
        .env("MODELCAST_LOG_FORMAT", "text")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn modelcast");
    let mut client = None;
    for _ in 0..100 {
        if let Ok((ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/x")).await
        {
            client = Some(modelcast_tests::server_util::Client { ws });
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("the binary serves");
    assert_eq!(client.next_json().await["type"], "welcome");
    // A refused handshake is logged with its reason.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/bad!id")).await;
    assert!(refused.is_err());
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    assert_eq!(client.until_close().await.0.map(|c| c.0), Some(close::GOING_AWAY));
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("exits in time")
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    // What an operator reads: where to look, why a client was refused, how many were drained.
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains(&format!("open http://127.0.0.1:{port}/")), "{log}");
    assert!(
        log.contains("websocket handshake refused") && log.contains("invalid_connection_id"),
        "{log}"
    );
    assert!(log.contains("shutting down: draining clients connections=1"), "{log}");
}
