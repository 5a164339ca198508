//! The HTTP and WebSocket edge as real clients, proxies and scanners meet it (the probe's
//! findings 5–11): methods and `Allow`, an oversized body refused before it is read, state keys
//! that need percent-decoding, the dashboard's security headers, RFC 6455's handshake checks,
//! shutdown that no log failure can stop, and tokens that never reach a log.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use modelcast_tests::server_util::{BinaryServer, PATIENCE, TestServer, http_request_full};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as raw bytes and reads the answer's head (until the blank line).
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("an answer") {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn every_route_answers_its_methods_and_405_says_which() {
    let server = TestServer::start(&[]).await;
    let cases = [
        ("PUT", "/", "GET, HEAD"),
        ("POST", "/api/openapi.json", "GET, HEAD"),
        ("PATCH", "/assets/dashboard.js", "GET, HEAD"),
        ("GET", "/api/state/download_progress/m1", "DELETE"),
        ("PUT", "/api/state/download_progress/m1", "DELETE"),
        ("GET", "/api/publish", "POST, OPTIONS"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("POST", "/ws/x", "GET"),
    ];
    for (method, path, allow) in cases {
        let (status, headers, body) =
            http_request_full(server.addr, method, path, &[], None).await.unwrap();
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(headers["allow"], allow, "{method} {path}");
    }
    assert_eq!(server.request("GET", "/nowhere", None).await.0, 404);

    // HEAD is answered as GET, without the body.
    let head = raw(server.addr, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");
    for path in ["/healthz", "/api/openapi.json", "/assets/dashboard.css", "/metrics"] {
        let (status, _, body) =
            http_request_full(server.addr, "HEAD", path, &[], None).await.unwrap();
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}");
    }
}

/// Probe finding 6: a declared body over the limit waited out the body timeout, then got 408.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let server = TestServer::start(&["--body-timeout", "30"]).await;
    let started = std::time::Instant::now();
    let head = raw(
        server.addr,
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    // Not after the 30 s body timeout: at once (the bound only separates the two).
    assert!(started.elapsed() < Duration::from_secs(15), "answered after {:?}", started.elapsed());
}

fn progress(model: &str) -> Value {
    json!({"type": "download_progress_update", "data": {"model_id": model,
        "status": "downloading", "progress_percent": 5.0, "downloaded_mb": 5.0, "total_mb": 100.0,
        "speed_mbps": 1.0, "can_pause": true, "can_resume": true, "can_cancel": true,
        "timestamp": "2025-08-27T10:30:00Z"}})
}

/// Probe finding 7: the state of `sp ace` or `a/b` could not be removed, and an empty
/// `model_id` made a card that could never be cleared.
#[tokio::test]
async fn state_keys_are_percent_decoded_and_empty_ids_are_refused() {
    let server = TestServer::start(&[]).await;
    for model in ["sp ace", "a/b", "ü"] {
        assert_eq!(server.post("/api/publish", &progress(model)).await.0, 202);
    }
    for encoded in ["sp%20ace", "a%2Fb", "%C3%BC"] {
        let path = format!("/api/state/download_progress/{encoded}");
        let (status, body) = server.request("DELETE", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert!(server.hub.retained(modelcast_protocol::Topic::DownloadProgress).is_empty());
    let (status, body) = server.request("DELETE", "/api/state/download_progress/%FF", None).await;
    assert_eq!(status, 400, "not UTF-8: {body}");

    let (status, body) = server.post("/api/publish", &progress("")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "data.model_id", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("must not be empty"));
}

/// Probe finding 8: the dashboard had no security headers.
#[tokio::test]
async fn the_dashboard_and_its_assets_carry_security_headers() {
    let server = TestServer::start(&[]).await;
    let (status, headers, _) = http_request_full(server.addr, "GET", "/", &[], None).await.unwrap();
    assert_eq!(status, 200);
    let policy = headers["content-security-policy"].to_str().unwrap();
    let host = server.addr.to_string();
    for directive in [
        "default-src 'self'".to_owned(),
        format!("connect-src 'self' ws://{host} wss://{host}"),
        "frame-ancestors 'none'".to_owned(),
    ] {
        assert!(policy.contains(&directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    for path in ["/", "/assets/dashboard.js", "/assets/dashboard.css"] {
        let (_, headers, _) = http_request_full(server.addr, "GET", path, &[], None).await.unwrap();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    // A Host that is not a host name never reaches the policy.
    let head =
        raw(server.addr, "GET / HTTP/1.1\r\nHost: x; script-src *\r\nConnection: close\r\n\r\n")
            .await;
    let policy = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .unwrap_or_else(|| panic!("{head}"));
    assert!(policy.contains("connect-src 'self';") && !policy.contains("script-src"), "{policy}");
}

/// Probe finding 9: keys that are not 16 bytes of base64, and two versions, were accepted.
#[tokio::test]
async fn the_handshake_checks_key_and_version_as_rfc_6455_says() {
    let server = TestServer::start(&[]).await;
    let handshake = |headers: &str| {
        format!(
            "GET /ws/h HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{headers}\r\n"
        )
    };
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let version = "Sec-WebSocket-Version: 13\r\n";
    let cases = [
        (handshake(&format!("{good_key}{version}")), "101"),
        (handshake(&format!("Sec-WebSocket-Key: \r\n{version}")), "400"),
        (handshake(&format!("Sec-WebSocket-Key: not base64 at all!!!!!!!\r\n{version}")), "400"),
        (handshake(&format!("Sec-WebSocket-Key: c2hvcnQ=\r\n{version}")), "400"),
        (handshake(&format!("{good_key}{good_key}{version}")), "400"),
        (handshake(version), "400"),
        (handshake(&format!("{good_key}{version}Sec-WebSocket-Version: 8\r\n")), "400"),
        (handshake(&format!("{good_key}Sec-WebSocket-Version: 8\r\n")), "426"),
    ];
    for (request, status) in cases {
        let head = raw(server.addr, &request).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{request}→ {head}");
        if status == "426" {
            assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
        }
    }
}

/// Probe finding 10: `modelcast 2>&1 | head -1`, then SIGTERM: it kept serving forever.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_server_after_its_log_pipe_closed() {
    let (reader, writer) = std::io::pipe().unwrap();
    let mut server = BinaryServer::start_with(
        &[],
        &[("MODELCAST_LOG", "info")],
        writer.try_clone().unwrap().into(),
        writer.into(),
    )
    .await;
    // `head -1`: one line read, then the reader is gone.
    let mut first = String::new();
    BufReader::new(reader).read_line(&mut first).unwrap();
    assert!(first.contains("listening"), "{first}");
    // Logged at info, into the closed pipe.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws/bad!id", server.addr)).await;
    assert!(refused.is_err());
    server.signal("-TERM");
    let status = server.exited_within(PATIENCE).await.expect("SIGTERM ends the server");
    assert_eq!(status.code(), Some(0));
}

/// Probe finding 11: with `--log trace` the WebSocket library printed `auth` frames (the
/// server's frame layer is its own now, and logs no frame).
#[tokio::test]
async fn no_token_reaches_the_log_even_at_trace() {
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let server = BinaryServer::start_logged(&["--log", "trace", "--jwt-secret", secret], &[]).await;
    // Two tokens of one user (a renewal keeps the user), told apart by their expiry.
    let token = |valid_for: i64| {
        let claims = json!({"sub": "user", "exp": chrono::Utc::now().timestamp() + valid_for});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let (in_url, in_frame) = (token(600), token(900));
    let mut ws = modelcast_tests::server_util::Client::connect(
        server.addr,
        &format!("/ws/t?token={in_url}"),
    )
    .await;
    assert_eq!(ws.next_json().await["type"], "welcome");
    ws.send_json(&json!({"action": "auth", "token": in_frame, "id": "renew"})).await;
    ws.send_json(&json!({"action": "ping", "id": "p"})).await;
    while ws.next_json().await["type"] != "pong" {}
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = server.log();
    drop(server);
    // Not vacuous: the session's own debug events are in the log.
    assert!(text.contains("DEBUG modelcast_server::session"), "the server logs at debug: {text}");
    for (name, token) in [("the URL's", &in_url), ("the auth frame's", &in_frame)] {
        // A token's signature is the part that must never be seen.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "{name} token is in the log");
    }
}
