//! Security over real sockets: tokens, roles, publish keys, origins, limits, and a parser that
//! never panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use modelcast_protocol::{ClientMessage, close};
use modelcast_tests::msg::alert;
use modelcast_tests::server_util::{Client, TestServer};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret-0123456789-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn valid(roles: &[&str]) -> String {
    token(json!({"sub": "alice", "roles": roles, "exp": now() + 3600, "aud": "modelcast"}), SECRET)
}

/// The HTTP status of a refused handshake (panics if it was accepted).
async fn refused(server: &TestServer, path_and_query: &str, origin: Option<&str>) -> (u16, Value) {
    let mut req = format!("ws://{}{path_and_query}", server.addr).into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).unwrap())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Ok(_) => panic!("{path_and_query}: the handshake was accepted"),
        Err(e) => panic!("{path_and_query}: {e}"),
    }
}

async fn authed_server(extra: &[&str]) -> TestServer {
    let mut args =
        vec!["--jwt-secret", SECRET, "--jwt-audience", "modelcast", "--auth-deadline", "0.5"];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

#[tokio::test]
async fn bad_tokens_are_refused_at_the_handshake() {
    let server = authed_server(&[]).await;
    let cases = [
        (
            "bad signature",
            token(
                json!({"sub": "a", "exp": now() + 60, "aud": "modelcast"}),
                "another-secret-xxxxxxxx",
            ),
            "signature",
        ),
        (
            "expired",
            token(json!({"sub": "a", "exp": now() - 600, "aud": "modelcast"}), SECRET),
            "expired",
        ),
        (
            "wrong audience",
            token(json!({"sub": "a", "exp": now() + 60, "aud": "elsewhere"}), SECRET),
            "audience",
        ),
        ("no expiry", token(json!({"sub": "a", "aud": "modelcast"}), SECRET), "exp"),
        ("garbage", "not.a.jwt".to_owned(), "invalid"),
        // Probe finding 12: without `sub`, every such token was the user "" (and could
        // replace the others' connections).
        ("no subject", token(json!({"exp": now() + 60, "aud": "modelcast"}), SECRET), "`sub`"),
        (
            "empty subject",
            token(json!({"sub": "", "exp": now() + 60, "aud": "modelcast"}), SECRET),
            "`sub`",
        ),
    ];
    for (what, t, needle) in cases {
        let (status, body) = refused(&server, &format!("/ws/x?token={t}"), None).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{what}: {body}");
    }
    // A valid token in the URL: in, and subscriptions work.
    let mut ws = server.ws(&format!("/ws/ok?token={}", valid(&[]))).await;
    assert_eq!(ws.subscribe("alerts").await["data"]["topic"], "alerts");
}

/// Without a URL token: only `auth` is accepted, and the connection is closed with 4401 if
/// none arrives before the deadline; a first-frame token works.
#[tokio::test]
async fn a_missing_token_must_arrive_as_a_first_frame_before_the_deadline() {
    let server = authed_server(&[]).await;
    let mut anonymous = server.ws("/ws/anon").await;
    anonymous.send_json(&json!({"action": "subscribe", "topic": "alerts", "id": 1})).await;
    let reply = anonymous.next_json().await;
    assert_eq!(
        (reply["data"]["code"].as_str(), reply["data"]["request_id"].as_i64()),
        (Some("unauthorized"), Some(1))
    );
    let (close_frame, _) = anonymous.until_close().await;
    assert_eq!(close_frame.map(|c| c.0), Some(close::UNAUTHORIZED));

    let mut later = server.ws("/ws/later").await;
    later.send_json(&json!({"action": "auth", "token": "nonsense", "id": "a1"})).await;
    assert_eq!(later.next_json().await["data"]["code"], "unauthorized");
    later.send_json(&json!({"action": "auth", "token": valid(&[])})).await;
    assert_eq!(later.subscribe("alerts").await["type"], "subscribed");
    tokio::time::sleep(Duration::from_millis(800)).await;
    later.send_json(&json!({"action": "ping"})).await;
    assert_eq!(
        later.next_of_type("pong").await["type"],
        "pong",
        "authenticated in time: still open"
    );
}

/// A token that expires while connected: the connection is told, and closed unless refreshed.
#[tokio::test]
async fn an_expiring_token_is_announced_and_must_be_refreshed() {
    let server = authed_server(&[]).await;
    // Valid for one more second, plus the 5 s leeway every token gets (the expiry follows the
    // rule the token was accepted by).
    let short = token(json!({"sub": "alice", "exp": now() + 1, "aud": "modelcast"}), SECRET);
    let mut lazy = server.ws(&format!("/ws/lazy?token={short}")).await;
    let mut diligent = server.ws(&format!("/ws/diligent?token={short}")).await;
    for ws in [&mut lazy, &mut diligent] {
        let told = ws.next_of_type("error").await;
        assert_eq!(told["data"]["code"], "unauthorized");
        assert!(told["data"]["message"].as_str().unwrap().contains("expired"), "{told}");
    }
    diligent.send_json(&json!({"action": "auth", "token": valid(&[])})).await;
    let (close_frame, _) = lazy.until_close().await;
    assert_eq!(
        close_frame.map(|c| (c.0, c.1)),
        Some((close::UNAUTHORIZED, "token expired".into()))
    );
    diligent.send_json(&json!({"action": "ping"})).await;
    assert_eq!(diligent.next_of_type("pong").await["type"], "pong", "refreshed: still open");
}

#[tokio::test]
async fn topics_are_restricted_by_role_and_the_connection_stays() {
    let server =
        authed_server(&["--topic-roles", "analytics_updates=admin,alerts=admin|ops"]).await;
    let mut viewer = server.ws(&format!("/ws/v?token={}", valid(&["viewer"]))).await;
    viewer.send_json(&json!({"action": "subscribe", "topic": "analytics_updates", "id": 9})).await;
    let reply = viewer.next_json().await;
    assert_eq!(
        (reply["data"]["code"].as_str(), reply["data"]["request_id"].as_i64()),
        (Some("forbidden"), Some(9))
    );
    assert_eq!(
        viewer.subscribe("model_status").await["type"],
        "subscribed",
        "other topics still work"
    );
    let mut ops = server.ws(&format!("/ws/o?token={}", valid(&["ops"]))).await;
    assert_eq!(ops.subscribe("alerts").await["type"], "subscribed");
    let mut admin = server.ws(&format!("/ws/a?token={}", valid(&["admin"]))).await;
    assert_eq!(admin.subscribe("analytics_updates").await["type"], "subscribed");
}

/// A key pair made with `openssl`: (private PEM path, public PEM path).
fn key_pair(kind: &str, genpkey_args: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("modelcast-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl is needed to make a test key")
            .success()
    };
    let mut gen_args: Vec<&std::ffi::OsStr> = vec!["genpkey".as_ref()];
    gen_args.extend(genpkey_args.iter().map(std::ffi::OsStr::new));
    gen_args.extend(["-out".as_ref(), private.as_os_str()]);
    let ok = run(&gen_args)
        && run(&[
            "pkey".as_ref(),
            "-pubout".as_ref(),
            "-in".as_ref(),
            private.as_os_str(),
            "-out".as_ref(),
            public.as_os_str(),
        ]);
    assert!(ok, "openssl could not make a {kind} key");
    (private, public)
}

#[tokio::test]
async fn public_keys_verify_tokens_es256_and_rs256() {
    let cases = [
        (
            "ES256",
            Algorithm::ES256,
            key_pair("es256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ),
        (
            "RS256",
            Algorithm::RS256,
            key_pair("rs256", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ),
    ];
    for (name, alg, (private, public)) in cases {
        let server = TestServer::start(&[
            "--jwt-public-key",
            public.to_str().unwrap(),
            "--jwt-algorithm",
            name,
        ])
        .await;
        let pem = std::fs::read(&private).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let t = jsonwebtoken::encode(
            &Header::new(alg),
            &json!({"sub": "svc", "exp": now() + 60}),
            &key,
        )
        .unwrap();
        let mut ws = server.ws(&format!("/ws/pk?token={t}")).await;
        assert_eq!(ws.subscribe("alerts").await["type"], "subscribed", "{name}");
        let forged = token(json!({"sub": "svc", "exp": now() + 60}), SECRET);
        let (status, _) = refused(&server, &format!("/ws/f?token={forged}"), None).await;
        assert_eq!(status, 401, "{name}: an HS256 token must not pass");
    }
}

#[tokio::test]
async fn publishing_needs_a_valid_key_when_keys_are_configured() {
    let server = TestServer::start(&[
        "--publish-key",
        "old-key-0123456789",
        "--publish-key",
        "new-key-0123456789",
    ])
    .await;
    let body = serde_json::to_string(&alert("k")).unwrap();
    let send = |auth: Option<&'static str>| {
        let server = &server;
        let body = body.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = hyper::Request::post("/api/publish").header("host", "x");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = sender
                .send_request(
                    req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&text).unwrap())
        }
    };
    let (status, body) = send(None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = send(Some("Bearer wrong-key-0123456789")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(send(Some("Bearer old-key-0123456789")).await.0, 202);
    assert_eq!(
        send(Some("Bearer new-key-0123456789")).await.0,
        202,
        "both keys work during a rotation"
    );
}

#[tokio::test]
async fn an_open_publish_endpoint_off_loopback_is_refused_at_start() {
    let config =
        modelcast_server::Config::try_parse_args(["modelcast", "--bind", "0.0.0.0:0"]).unwrap();
    let err = modelcast_server::Server::bind(config).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("MODELCAST_PUBLISH_KEYS")
            && err.to_string().contains("insecure-publish"),
        "{err}"
    );
}

#[tokio::test]
async fn another_origin_is_refused_with_403() {
    let server = TestServer::start(&["--allowed-origin", "https://app.example.com"]).await;
    let (status, body) = refused(&server, "/ws/x", Some("https://evil.example.net")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("origin_not_allowed")));
    let mut req = format!("ws://{}/ws/y", server.addr).into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://app.example.com".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok(), "the allowed origin connects");
    server.ws("/ws/no-origin").await; // not a browser: no Origin, allowed
}

#[tokio::test]
async fn too_many_subscriptions_get_an_error_and_the_connection_stays() {
    let server = TestServer::start(&["--max-subscriptions", "2"]).await;
    let mut ws = server.ws("/ws/s").await;
    ws.subscribe("alerts").await;
    ws.subscribe("model_status").await;
    assert_eq!(ws.subscribe("model_status").await["type"], "subscribed", "renewing one is fine");
    ws.send_json(&json!({"action": "subscribe", "topic": "system_stats", "id": 3})).await;
    let reply = ws.next_json().await;
    assert_eq!(reply["data"]["code"], "too_many_subscriptions");
    ws.send_json(&json!({"action": "ping"})).await;
    assert_eq!(ws.next_of_type("pong").await["type"], "pong");
}

#[tokio::test]
async fn connection_attempts_per_address_are_limited() {
    let server = TestServer::start(&["--connect-rate", "1"]).await; // burst 10
    let mut refused_count = 0;
    let mut open = Vec::new();
    for i in 0..20 {
        match tokio_tungstenite::connect_async(format!("ws://{}/ws/c{i}", server.addr)).await {
            Ok(c) => open.push(c),
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429);
                refused_count += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused_count >= 5, "only {refused_count} of 20 rapid attempts were limited");
    assert!(open.len() >= 10, "the burst is admitted");
}

/// A client flooding 10,000 subscribe frames is limited and finally closed, while another
/// client's messages still all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_while_others_are_served() {
    let server =
        TestServer::start(&["--rate-limit", "20", "--rate-burst", "20", "--abuse-limit", "500"])
            .await;
    let mut calm = server.ws("/ws/calm").await;
    calm.subscribe("alerts").await;
    let mut flooder: Client = server.ws("/ws/flood").await;
    let frame = json!({"action": "subscribe", "topic": "alerts"}).to_string();
    let flood = tokio::spawn(async move {
        use futures_util::SinkExt;
        for _ in 0..10_000 {
            if flooder.ws.feed(tungstenite::Message::Text(frame.clone().into())).await.is_err() {
                break;
            }
        }
        let _ = flooder.ws.flush().await;
        flooder.until_close().await
    });
    for i in 0..100 {
        modelcast_tests::msg::send(&server.hub, alert(&format!("a{i}"))).unwrap();
    }
    for i in 0..100u64 {
        let f = calm.next_of_type("alert").await;
        assert_eq!(f["seq"], i + 1);
    }
    let (close_frame, frames) = flood.await.unwrap();
    assert!(frames.iter().any(|f| f["data"]["code"] == "rate_limited"), "the flooder was told");
    let subscribed = frames.iter().filter(|f| f["type"] == "subscribed").count();
    assert!(subscribed <= 25, "{subscribed} of 10,000 subscribe frames were served");
    assert_eq!(close_frame.map(|c| c.0), Some(close::POLICY_VIOLATION));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, .. ProptestConfig::default() })]

    /// The client-message parser never panics, whatever the bytes.
    #[test]
    fn the_client_message_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ClientMessage::parse_frame(&String::from_utf8_lossy(&bytes));
    }

    /// … nor on JSON-shaped input close to real messages.
    #[test]
    fn the_client_message_parser_never_panics_on_near_miss_json(
        action in prop_oneof![
            Just("subscribe".to_owned()), Just("unsubscribe".to_owned()), Just("ping".to_owned()),
            Just("auth".to_owned()), "[a-z]{0,8}"
        ],
        topic in prop_oneof![Just("alerts".to_owned()), "[a-z_]{0,20}", Just(String::new())],
        extra in "[\\[\\]{}\":,0-9a-z. -]{0,40}",
    ) {
        let text = format!(r#"{{"action":"{action}","topic":"{topic}",{extra}}}"#);
        let _ = ClientMessage::parse_frame(&text);
        let text = format!(r#"{{"action":"{action}","topic":"{topic}","since":{extra}}}"#);
        let _ = ClientMessage::parse_frame(&text);
    }
}

/// Probe finding 4: with an audience and issuer configured, tokens *without* them were
/// accepted, as was a token not valid for another hour; a short or empty HS256 secret started
/// the server (and a token forged with the empty key was accepted).
#[tokio::test]
async fn configured_claims_are_required_nbf_is_checked_and_short_secrets_refused() {
    let server = authed_server(&["--jwt-issuer", "https://issuer.example"]).await;
    let iss = "https://issuer.example";
    let cases = [
        ("no aud", json!({"sub": "a", "exp": now() + 60, "iss": iss}), "aud"),
        ("no iss", json!({"sub": "a", "exp": now() + 60, "aud": "modelcast"}), "iss"),
        (
            "not yet valid",
            json!({"sub": "a", "exp": now() + 7200, "nbf": now() + 3600, "aud": "modelcast", "iss": iss}),
            "not valid yet",
        ),
    ];
    for (what, claims, needle) in cases {
        let (status, body) =
            refused(&server, &format!("/ws/x?token={}", token(claims, SECRET)), None).await;
        assert_eq!(status, 401, "{what}");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{what}: {body}");
    }
    let ok = token(json!({"sub": "a", "exp": now() + 60, "aud": "modelcast", "iss": iss}), SECRET);
    server.ws(&format!("/ws/ok?token={ok}")).await;

    for secret in ["", "x", "31-bytes-is-one-too-few-0123456"] {
        let config = modelcast_server::Config::try_parse_args([
            "modelcast",
            "--bind",
            "127.0.0.1:0",
            "--jwt-secret",
            secret,
        ])
        .expect("parses");
        let err = modelcast_server::Server::bind(config).await.expect_err("refused at start");
        assert!(err.to_string().contains("MODELCAST_JWT_SECRET"), "{err}");
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }
}

/// Probe finding 5: an admin subscribed to `alerts` who re-authenticated as a plain user kept
/// receiving alerts.
#[tokio::test]
async fn a_renewed_token_with_fewer_roles_ends_the_forbidden_subscriptions() {
    let server = authed_server(&["--topic-roles", "alerts=admin"]).await;
    let mut ws = server.ws(&format!("/ws/admin?token={}", valid(&["admin"]))).await;
    assert_eq!(ws.subscribe("alerts").await["type"], "subscribed");
    assert_eq!(ws.subscribe("model_status").await["type"], "subscribed");
    ws.send_json(&json!({"action": "auth", "token": valid(&["user"])})).await;
    let error = ws.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "forbidden");
    assert!(error["data"]["message"].as_str().unwrap().contains("alerts"), "{error}");
    modelcast_tests::msg::send(&server.hub, alert("after")).unwrap();
    ws.send_json(&json!({"action": "ping", "id": "p"})).await;
    let next = ws.next_json().await;
    assert_eq!(next["type"], "pong", "no alert reaches the demoted connection: {next}");
    // Its other subscription stays.
    ws.send_json(&json!({"action": "unsubscribe", "topic": "model_status"})).await;
    assert_eq!(ws.next_json().await["type"], "unsubscribed");
}

/// Probe finding 6: any authenticated user could open `/ws/<someone else's id>` and close the
/// victim's connection (4002). Ids now live within the token's subject.
#[tokio::test]
async fn another_user_cannot_take_over_a_connection_id() {
    let server = authed_server(&[]).await;
    let alice = |roles: &[&str]| {
        token(
            json!({"sub": "alice", "roles": roles, "exp": now() + 3600, "aud": "modelcast"}),
            SECRET,
        )
    };
    let bob = token(json!({"sub": "bob", "exp": now() + 3600, "aud": "modelcast"}), SECRET);
    let mut victim = server.ws(&format!("/ws/tab-1?token={}", alice(&[]))).await;
    victim.subscribe("alerts").await;
    // Bob, by URL token and by first frame: both get their own `tab-1`.
    let mut attacker = server.ws(&format!("/ws/tab-1?token={bob}")).await;
    attacker.subscribe("alerts").await;
    let mut late_attacker = server.ws("/ws/tab-1").await;
    late_attacker.send_json(&json!({"action": "auth", "token": bob})).await;
    assert_eq!(late_attacker.subscribe("alerts").await["type"], "subscribed");
    modelcast_tests::msg::send(&server.hub, alert("still-there")).unwrap();
    assert_eq!(victim.next_json().await["data"]["alert_id"], "still-there");
    // Bob's second connection replaced his first, within his namespace.
    let (close_frame, _) = attacker.until_close().await;
    assert_eq!(close_frame.map(|c| c.0), Some(close::REPLACED));
    // Alice reopening her own id still replaces her old connection.
    let _again = server.ws(&format!("/ws/tab-1?token={}", alice(&[]))).await;
    let (close_frame, _) = victim.until_close().await;
    assert_eq!(close_frame.map(|c| c.0), Some(close::REPLACED));
}

/// Issue 34, critical: `deploy/production.env` as shipped (its two placeholders given real
/// secrets, the bind moved to loopback, a local key) showed admin-only and audience-only state
/// to anyone without a token, and `/api/stats` and `/metrics` too, while `/sse` said 401.
/// Every path data leaves by now asks who the caller is: no credential gets nothing; a token
/// gets what it could subscribe to (its topic roles, its audience); an operator (the metrics
/// token, a publish key, a token with role admin) gets every figure and key.
#[tokio::test]
async fn the_shipped_production_config_shows_data_only_to_whom_may_see_it() {
    use modelcast_tests::server_util::{BinaryServer, http_request_full};
    let text = std::fs::read_to_string(modelcast_tests::root().join("deploy/production.env"));
    let env = crate::deploy::systemd_environment(&text.unwrap());
    let (private, public) =
        key_pair("prod-rs256", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (publish_key, metrics_token) =
        ("a-publish-key-of-32-characters--", "a-metrics-token-of-32-characters");
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.retain(|(k, _)| !["MODELCAST_PUBLISH_KEYS", "MODELCAST_METRICS_TOKEN"].contains(k));
    let public = public.to_str().unwrap().to_owned();
    vars.extend([
        ("MODELCAST_JWT_PUBLIC_KEY", public.as_str()),
        ("MODELCAST_PUBLISH_KEYS", publish_key),
        ("MODELCAST_METRICS_TOKEN", metrics_token),
    ]);
    let server = BinaryServer::start(&[], &vars).await;
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let token_of = |sub: &str, roles: &[&str]| {
        let claims = json!({"sub": sub, "roles": roles, "exp": now() + 600,
            "aud": env["MODELCAST_JWT_AUDIENCE"], "iss": env["MODELCAST_JWT_ISSUER"]});
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
    };
    let get = |path: &str, bearer: Option<String>| {
        let path = path.to_owned();
        async move {
            let header = bearer.map(|b| format!("Bearer {b}"));
            let headers: Vec<(&str, &str)> =
                header.iter().map(|h| ("authorization", h.as_str())).collect();
            let (status, _, body) =
                http_request_full(server.addr, "GET", &path, &headers, None).await.unwrap();
            (status, body)
        }
    };
    // Admin-only state (analytics_updates=admin) and alice's download.
    let usage = json!({"type": "usage_statistics_update", "data": {"total_models": 5,
        "active_models": 3, "most_used_model": "t2v-a14b", "usage_trends": {"daily_usage": 25}}});
    let download = json!({"type": "download_progress_update", "audience": {"users": ["alice"]},
        "data": {"model_id": "m1", "status": "downloading", "progress_percent": 10.0,
        "downloaded_mb": 10.0, "total_mb": 100.0, "speed_mbps": 1.0, "eta_seconds": 90.0,
        "can_pause": true, "can_resume": false, "can_cancel": true}});
    let bearer = format!("Bearer {publish_key}");
    for body in [usage, download] {
        let published = http_request_full(
            server.addr,
            "POST",
            "/api/publish",
            &[("authorization", bearer.as_str())],
            Some(body.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(published.0, 202, "{}", published.2);
    }
    let analytics = "/api/state?topic=analytics_updates";
    let downloads = "/api/state?topic=download_progress";

    // No credential: nothing, on every path.
    for path in [analytics, downloads, "/api/stats", "/metrics", "/sse?topic=alerts"] {
        let (status, body) = get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(!body.contains("m1") && !body.contains("t2v-a14b"), "{path}: {body}");
    }
    // bob's token: what bob could subscribe to — not the admin topic, not alice's download,
    // not the operator's figures.
    let bob = token_of("bob", &["user"]);
    assert_eq!(get(analytics, Some(bob.clone())).await.0, 403);
    let (status, body) = get(downloads, Some(bob.clone())).await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &page["keys"], &page["state"]), (200, &json!(0), &json!([])), "{body}");
    assert!(page.get("audiences").is_none(), "{body}");
    for path in ["/api/stats", "/metrics"] {
        assert_eq!(get(path, Some(bob.clone())).await.0, 403, "{path}");
    }
    // alice's token (in the URL, as a browser page sends it): her download, nothing else.
    let alice = token_of("alice", &["user"]);
    let (status, body) = get(&format!("{downloads}&token={alice}"), None).await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &page["keys"]), (200, &json!(1)), "{body}");
    assert_eq!(page["state"][0]["data"]["model_id"], "m1");
    // Operators: the metrics token, a publish key, a token with role admin.
    for operator in [metrics_token.to_owned(), publish_key.to_owned(), token_of("ops", &["admin"])]
    {
        for path in ["/api/stats", "/metrics"] {
            assert_eq!(get(path, Some(operator.clone())).await.0, 200, "{path}");
        }
        let (status, body) = get(analytics, Some(operator.clone())).await;
        assert!(status == 200 && body.contains("t2v-a14b"), "{body}");
        let (_, body) = get(downloads, Some(operator.clone())).await;
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["audiences"], json!([{"users": ["alice"]}]), "{body}");
    }
    // A credential that is none of these is refused, never read as anonymous.
    assert_eq!(get("/api/stats", Some("not-a-key".into())).await.0, 403);

    // The same rule with only a JWT secret set: nothing open.
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    for path in [analytics, downloads, "/api/stats", "/metrics"] {
        assert_eq!(server.get(path).await.0, 401, "{path}");
    }
}

/// Issue 34, high: a socket subscribed as alice renewed with bob's token was accepted, and
/// received alice's update that `max_hz` held back. A renewal keeps the user: another `sub` is
/// refused and the connection closed with 4401, and nothing of alice's reaches it.
#[tokio::test]
async fn a_renewal_for_another_user_is_refused_and_closes_the_connection() {
    let server = authed_server(&[]).await;
    let alice = token(json!({"sub": "alice", "exp": now() + 600, "aud": "modelcast"}), SECRET);
    let bob = token(json!({"sub": "bob", "exp": now() + 600, "aud": "modelcast"}), SECRET);
    let mut ws = server.ws(&format!("/ws/a?token={alice}")).await;
    ws.send_json(&json!({"action": "subscribe", "topic": "download_progress", "max_hz": 0.5}))
        .await;
    assert_eq!(ws.next_of_type("subscribed").await["type"], "subscribed");
    let notifier = server.notifiers.downloads().to(modelcast_hub::Audience::users(["alice"]));
    notifier.progress("m1", 10.0, 100.0, 1.0);
    assert_eq!(ws.next_of_type("download_progress_update").await["data"]["model_id"], "m1");
    // Held back by max_hz (and by the throttle): alice's, due later.
    server.hub.publish(
        modelcast_hub::Publish::new(modelcast_tests::msg::progress("m1", 20.0))
            .unwrap()
            .key("m1")
            .kind(modelcast_hub::Kind::Update)
            .audience(modelcast_hub::Audience::users(["alice"])),
    );
    ws.send_json(&json!({"action": "auth", "token": bob})).await;
    let (close_frame, frames) = ws.until_close().await;
    assert_eq!(close_frame.map(|c| c.0), Some(close::UNAUTHORIZED));
    let error = frames.iter().find(|f| f["type"] == "error").expect("told why");
    assert!(error["data"]["message"].as_str().unwrap().contains("same user"), "{error}");
    assert!(
        frames.iter().all(|f| f["type"] != "download_progress_update"),
        "nothing of alice's after the renewal: {frames:?}"
    );
}

/// Issue 34, high: a renewal that drops a role still delivered what the role admitted: queued
/// `ops` alerts, and `max_hz` hold-backs seconds later. What waits for the connection is
/// checked again against the new token.
#[tokio::test]
async fn a_renewal_that_drops_a_role_takes_back_what_waits() {
    let server = authed_server(&[]).await;
    let carol = |roles: &[&str]| {
        token(
            json!({"sub": "carol", "roles": roles, "exp": now() + 600, "aud": "modelcast"}),
            SECRET,
        )
    };
    let ops = modelcast_hub::Audience::roles(["ops"]);
    // A held-back update: the first of a key goes out, the second waits for its window (2 s).
    let mut ws = server.ws(&format!("/ws/c?token={}", carol(&["ops"]))).await;
    ws.send_json(&json!({"action": "subscribe", "topic": "download_progress", "max_hz": 0.5}))
        .await;
    ws.next_of_type("subscribed").await;
    for percent in [10.0, 20.0] {
        server.hub.publish(
            modelcast_hub::Publish::new(modelcast_tests::msg::progress("m1", percent))
                .unwrap()
                .key("m1")
                .kind(modelcast_hub::Kind::Update)
                .audience(ops.clone()),
        );
    }
    assert_eq!(ws.next_of_type("download_progress_update").await["data"]["progress_percent"], 10.0);
    ws.send_json(&json!({"action": "auth", "token": carol(&["user"])})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the window
    ws.send_json(&json!({"action": "ping", "id": "after"})).await;
    let mut rest = Vec::new();
    loop {
        let frame = ws.next_json().await;
        if frame["type"] == "pong" {
            break;
        }
        rest.push(frame);
    }
    assert!(rest.iter().all(|f| f["type"] != "download_progress_update"), "{rest:?}");

    // Queued frames: 300 large ops alerts while the client does not read; after the renewal
    // only what was already on the wire arrives.
    let mut ws = server.ws(&format!("/ws/q?token={}", carol(&["ops"]))).await;
    ws.subscribe("alerts").await;
    let big = "x".repeat(60_000);
    for n in 0..300 {
        let mut message = alert(&format!("ops-{n}"));
        if let modelcast_protocol::ServerMessage::Alert(a) = &mut message {
            a.message = big.clone();
        }
        server.hub.publish(modelcast_hub::Publish::new(message).unwrap().audience(ops.clone()));
    }
    ws.send_json(&json!({"action": "auth", "token": carol(&["user"])})).await;
    ws.send_json(&json!({"action": "ping", "id": "after"})).await;
    let mut received = 0;
    loop {
        let frame = ws.next_json().await;
        match frame["type"].as_str() {
            Some("pong") => break,
            Some("alert") => received += 1,
            _ => {}
        }
    }
    assert!(received < 300, "every queued ops alert arrived after the renewal ({received})");
}

/// `max_hz` has a documented lower bound (0.01: nothing is held back longer than 100 s).
#[tokio::test]
async fn max_hz_has_a_lower_bound() {
    let server = TestServer::start(&[]).await;
    let mut ws = server.ws("/ws/slow").await;
    ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "max_hz": 0.0001, "id": 1}))
        .await;
    let reply = ws.next_json().await;
    assert_eq!(reply["data"]["code"], "invalid_message", "{reply}");
    assert!(reply["data"]["message"].as_str().unwrap().contains("0.01"), "{reply}");
    ws.send_json(&json!({"action": "subscribe", "topic": "alerts", "max_hz": 0.01})).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
}

/// Issue 34, medium: the expiry timer ignored the leeway (an event stream ended at exp + 0.9 s;
/// a WebSocket token expired 3 s ago was accepted and at once told it had expired). One rule
/// for both transports: a token is good until `exp` + `MODELCAST_JWT_LEEWAY`.
#[tokio::test]
async fn both_transports_hold_a_token_to_its_expiry_plus_the_leeway() {
    let server = authed_server(&["--jwt-leeway", "3"]).await;
    // Expired a second ago: accepted (within the leeway), and good for about 2 s more.
    let t = token(json!({"sub": "alice", "exp": now() - 1, "aud": "modelcast"}), SECRET);
    let mut ws = server.ws(&format!("/ws/late?token={t}")).await;
    let mut sse = modelcast_tests::server_util::Sse::open(
        server.addr,
        &format!("/sse?topic=alerts&token={t}"),
        &[],
    )
    .await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    sse.until("subscribed").await;
    // Not told at once.
    ws.send_json(&json!({"action": "ping", "id": 1})).await;
    assert_eq!(ws.next_json().await["type"], "pong", "not told it expired at once");
    tokio::time::sleep(Duration::from_millis(800)).await;
    modelcast_tests::msg::send(&server.hub, alert("still-valid")).unwrap();
    assert_eq!(sse.messages(1).await[0].data["data"]["alert_id"], "still-valid");
    // Then both end on the same rule.
    let told = ws.next_of_type("error").await;
    assert!(told["data"]["message"].as_str().unwrap().contains("expired"), "{told}");
    let end = sse.until("error").await;
    assert_eq!(end.data["data"]["code"], "unauthorized", "{:?}", end.data);
}
