//! permessage-deflate (RFC 7692) over real sockets, with a client written byte by byte
//! (`RawWs`: it inflates with flate2, not with the server's code): what is agreed for which
//! offer, one compression per published message however many connections receive it,
//! compressing and plain subscribers side by side, the inflation bomb, fragmented compressed
//! client messages, control frames during a long write.

use std::time::Duration;

use modelcast_tests::server_util::{BinaryServer, RawWs, TestServer, deflate};
use serde_json::{Value, json};

/// What the server answers to any offer it accepts.
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What browsers offer.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

fn alert(id: &str, message: &str) -> Value {
    json!({"type": "alert", "data": {"alert_id": id, "level": "warning", "title": "t",
        "message": message, "timestamp": "2025-08-27T10:30:00Z"}})
}

/// Opens a compressing connection, reads the welcome and subscribes to `alerts`.
async fn subscriber(server: &TestServer, id: &str, offer: Option<&str>) -> RawWs {
    let mut ws = RawWs::connect(server.addr, &format!("/ws/{id}"), offer).await;
    assert_eq!(ws.next_json().await.0["type"], "welcome");
    ws.send_text(r#"{"action":"subscribe","topic":"alerts"}"#).await;
    while ws.next_json().await.0["type"] != "subscribed" {}
    ws
}

/// `/api/stats`' compression figures.
async fn compression(server: &TestServer) -> Value {
    let (status, body) = server.get("/api/stats").await;
    assert_eq!(status, 200);
    serde_json::from_str::<Value>(&body).unwrap()["compression"].clone()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a number: {v}"))
}

#[tokio::test]
async fn deflate_is_agreed_when_offered_and_declined_when_not_or_malformed() {
    let server = TestServer::start(&[]).await;
    // What browsers, Node's ws and Python's websockets offer.
    for offer in [
        BROWSER_OFFER,
        "permessage-deflate; client_max_window_bits=15; server_no_context_takeover",
        "permessage-deflate",
        "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
    ] {
        let mut ws = RawWs::connect(server.addr, "/ws", Some(offer)).await;
        assert_eq!(ws.extensions.as_deref(), Some(AGREED), "{offer}");
        let welcome = ws.next_message().await.unwrap();
        assert!(
            welcome.compressed,
            "the welcome ({} bytes) comes compressed",
            welcome.payload.len()
        );
        assert_eq!(welcome.json()["type"], "welcome");
    }
    // Not offered, or offered with a parameter RFC 7692 does not allow: no extension, nothing
    // compressed, and a compressed frame from the client is a protocol error (1002).
    for offer in [
        None,
        Some("permessage-deflate; server_max_window_bits=7"),
        Some("permessage-deflate; server_max_window_bits"),
        Some("permessage-deflate; client_no_context_takeover=yes"),
        Some("permessage-deflate; mystery"),
        Some("x-webkit-deflate-frame"),
    ] {
        let mut ws = RawWs::connect(server.addr, "/ws", offer).await;
        assert_eq!(ws.extensions, None, "{offer:?}");
        assert!(!ws.next_message().await.unwrap().compressed, "{offer:?}");
        ws.send_compressed(r#"{"action":"ping"}"#, 1).await;
        assert_eq!(ws.until_close().await, Some(1002), "{offer:?}");
    }
    // A client that inflates with a smaller window: echoed; a frame longer than the window
    // goes uncompressed, a shorter one compressed.
    for (bits, compressed) in [(8, false), (9, true)] {
        let offer = format!("permessage-deflate; server_max_window_bits={bits}");
        let mut ws = RawWs::connect(server.addr, "/ws", Some(&offer)).await;
        assert_eq!(ws.extensions, Some(format!("{AGREED}; server_max_window_bits={bits}")));
        let welcome = ws.next_message().await.unwrap();
        assert!((257..=512).contains(&welcome.payload.len()), "{}", welcome.payload.len());
        assert_eq!(welcome.compressed, compressed, "window of {bits} bits");
        assert_eq!(welcome.json()["type"], "welcome");
    }
    // Off by setting.
    let off = TestServer::start(&["--compression", "off"]).await;
    let mut ws = RawWs::connect(off.addr, "/ws", Some(BROWSER_OFFER)).await;
    assert_eq!(ws.extensions, None);
    assert!(!ws.next_message().await.unwrap().compressed);
    assert_eq!(compression(&off).await["enabled"], false);
}

#[tokio::test]
async fn a_message_is_compressed_once_for_a_hundred_compressing_subscribers() {
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        clients.push(subscriber(&server, &format!("z{i}"), Some(BROWSER_OFFER)).await);
    }
    let before = compression(&server).await;
    assert_eq!(before["connections"], 100);
    let messages: Vec<Value> =
        (0..5).map(|i| alert(&format!("a{i}"), &format!("disk {i} is almost full"))).collect();
    assert_eq!(server.post("/api/publish", &Value::Array(messages)).await.0, 202);
    for ws in &mut clients {
        for i in 0..5 {
            let (frame, compressed) = ws.next_json().await;
            assert!(compressed, "{frame}");
            assert_eq!(frame["data"]["alert_id"], format!("a{i}"));
            assert_eq!(frame["seq"], i + 1);
        }
    }
    let after = compression(&server).await;
    assert_eq!(n(&after["compressions"]) - n(&before["compressions"]), 5, "{before} {after}");
    assert_eq!(n(&after["frames"]) - n(&before["frames"]), 500);
    let raw = n(&after["bytes_before"]) - n(&before["bytes_before"]);
    let sent = n(&after["bytes_after"]) - n(&before["bytes_after"]);
    assert!(sent < raw * 9 / 10, "compressed {raw} bytes to {sent}");
    let metrics = server.get("/metrics").await.1;
    let line = metrics.lines().find(|l| l.starts_with("modelcast_compressions_total ")).unwrap();
    assert_eq!(line.split(' ').nth(1).unwrap().parse::<u64>().unwrap(), n(&after["compressions"]));
}

#[tokio::test]
async fn compressing_and_plain_subscribers_of_one_topic_get_the_same_messages() {
    let server = TestServer::start(&[]).await;
    let mut zipped = subscriber(&server, "zipped", Some(BROWSER_OFFER)).await;
    let mut raw_plain = subscriber(&server, "raw-plain", None).await;
    // tungstenite refuses any frame with RSV1 set: it proves nothing compressed reaches it.
    let mut plain = server.ws("/ws/plain").await;
    plain.subscribe("alerts").await;
    let sizes = [1usize, 40, 100, 500, 3000, 20_000];
    let messages: Vec<Value> =
        sizes.iter().map(|&len| alert(&format!("len-{len}"), &"x".repeat(len))).collect();
    assert_eq!(server.post("/api/publish", &Value::Array(messages)).await.0, 202);
    for len in sizes {
        let (from_zipped, compressed) = zipped.next_json().await;
        let (from_raw_plain, raw_compressed) = raw_plain.next_json().await;
        let from_plain = plain.next_json().await;
        assert_eq!(from_zipped, from_plain);
        assert_eq!(from_raw_plain, from_plain);
        assert!(!raw_compressed);
        assert_eq!(from_zipped["data"]["alert_id"], format!("len-{len}"));
        // Every alert frame is over the 128-byte minimum, and text of one letter deflates.
        assert!(compressed, "a {len}-character alert");
    }
}

#[tokio::test]
async fn a_small_frame_that_inflates_past_the_limit_closes_1009_without_the_memory() {
    let server = BinaryServer::start(&[], &[]).await;
    let bomb = deflate(&vec![b' '; 64 << 20]);
    assert!(bomb.len() < 65_536, "{} bytes: within the 64 KiB frame limit", bomb.len());
    let mut ws = RawWs::connect(server.addr, "/ws", Some(BROWSER_OFFER)).await;
    assert_eq!(ws.next_json().await.0["type"], "welcome");
    let peak_before = server.memory_kib("VmHWM");
    ws.send_frame(0xC1, &bomb).await;
    assert_eq!(ws.until_close().await, Some(1009));
    let grown = server.memory_kib("VmHWM") - peak_before;
    assert!(grown < 8 * 1024, "the peak grew {grown} KiB inflating a 64 MiB bomb");
    // The connection went, the server did not.
    let mut again = RawWs::connect(server.addr, "/ws", Some(BROWSER_OFFER)).await;
    assert_eq!(again.next_json().await.0["type"], "welcome");
}

#[tokio::test]
async fn fragmented_compressed_client_messages_are_read_and_rsv1_on_a_ping_is_1002() {
    let server = TestServer::start(&[]).await;
    let mut ws = RawWs::connect(server.addr, "/ws", Some(BROWSER_OFFER)).await;
    assert_eq!(ws.next_json().await.0["type"], "welcome");
    // One message in three compressed fragments, a ping between the first two.
    let subscribe = json!({"action": "subscribe", "topic": "alerts", "id": "frag"}).to_string();
    let compressed = deflate(subscribe.as_bytes());
    let third = compressed.len().div_ceil(3);
    ws.send_frame(0x41, &compressed[..third]).await;
    ws.send_frame(0x89, b"between").await;
    ws.send_frame(0x00, &compressed[third..2 * third]).await;
    ws.send_frame(0x80, &compressed[2 * third..]).await;
    let pong = ws.next_message().await.unwrap();
    assert_eq!((pong.opcode, &pong.payload[..]), (10, &b"between"[..]));
    let (reply, _) = ws.next_json().await;
    assert_eq!(
        (reply["type"].as_str(), reply["data"]["request_id"].as_str()),
        (Some("subscribed"), Some("frag"))
    );
    // One compressed frame, as browsers send every message.
    ws.send_compressed(r#"{"action":"ping","id":"whole"}"#, 1).await;
    let (pong, _) = ws.next_json().await;
    assert_eq!(
        (pong["type"].as_str(), pong["data"]["request_id"].as_str()),
        (Some("pong"), Some("whole"))
    );
    // RSV1 on a control frame: 1002.
    ws.send_frame(0xC9, b"").await;
    assert_eq!(ws.until_close().await, Some(1002));
}

#[tokio::test]
async fn pings_are_answered_and_a_close_echoed_during_a_long_write() {
    const TOTAL: usize = 4000;
    let server = TestServer::start(&["--queue-size", "5000"]).await;
    let mut ws = subscriber(&server, "busy", None).await;
    // 16 MB of frames: more than loopback's socket buffers, so the writer is still writing
    // (bursts of frames, each burst one writev after another) when the ping arrives.
    let payload = "y".repeat(4000);
    for chunk in 0..TOTAL / 200 {
        let batch: Vec<Value> =
            (0..200).map(|i| alert(&format!("{chunk}-{i}"), &payload)).collect();
        assert_eq!(server.post("/api/publish", &Value::Array(batch)).await.0, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send_frame(0x89, b"are you there").await;
    let mut seqs = Vec::new();
    loop {
        let message = ws.next_message().await.expect("open");
        match message.opcode {
            1 => seqs.push(message.json()["seq"].as_u64().unwrap()),
            10 => {
                assert_eq!(message.payload, b"are you there");
                break;
            }
            other => panic!("opcode {other}"),
        }
    }
    assert!(seqs.len() < TOTAL, "the pong went between bursts, not after all {TOTAL} frames");
    // A close now: what was in flight arrives whole, then the echo, then the TCP close.
    ws.send_frame(0x88, &1000u16.to_be_bytes()).await;
    let close = loop {
        let message = ws.next_message().await.expect("a close frame before the TCP close");
        match message.opcode {
            1 => seqs.push(message.json()["seq"].as_u64().unwrap()),
            8 => break message.payload,
            other => panic!("opcode {other}"),
        }
    };
    assert_eq!(close, 1000u16.to_be_bytes(), "the client's code echoed");
    assert!(ws.next_frame().await.is_none(), "the server closed the TCP connection");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "whole frames, in order");
}
