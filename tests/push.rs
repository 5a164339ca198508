//! Push (issue 38) through the real protocols, against local stand-ins: a Web Push service in
//! Python that verifies VAPID and decrypts with an implementation of its own, an FCM token and
//! send endpoint checking the service account's assertion, an APNs endpoint over HTTP/2 and
//! TLS checking the provider token. Real `modelcast` processes; users with HS256 tokens.

use std::process::Command;
use std::time::Duration;

use modelcast_tests::cluster_util::{Node, Redis};
use modelcast_tests::push_util::{WebPushService, apns_stand_in, fcm_stand_in, wait_recorded};
use modelcast_tests::server_util::{BinaryServer, binary, http_request_full};
use modelcast_tests::tls_util::Pki;
use serde_json::{Value, json};

const SECRET: &str = "push-test-secret-0123456789-0123456789";

fn token(sub: &str, roles: &[&str]) -> String {
    modelcast_tests::server_util::hs256_token(SECRET, sub, roles)
}

/// A temporary directory for one test (removed on drop).
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "modelcast-push-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A VAPID key made by `modelcast push-keys`, in `dir`.
fn vapid_key(dir: &Dir) -> String {
    let out = Command::new(binary()).arg("push-keys").output().expect("push-keys runs");
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("public key"));
    let path = dir.path("vapid.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

/// The flags of a server with Web Push to loopback stand-ins and users' tokens.
fn web_push_args(dir: &Dir, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--jwt-secret",
        SECRET,
        "--vapid-subject",
        "mailto:ops@example.com",
        "--push-insecure-endpoints",
        "--topic-roles",
        "alerts=ops",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(["--vapid-private-key".to_owned(), vapid_key(dir)]);
    args.extend(["--data-dir".to_owned(), dir.path("data")]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// `method path` on `addr` as `user`'s token, with a JSON body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    user: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let bearer = format!("Bearer {user}");
    let (status, _, text) = http_request_full(
        addr,
        method,
        path,
        &[("authorization", &bearer)],
        body.map(|b| b.to_string()),
    )
    .await
    .expect("the server answers");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Registers `browser` (a `PushSubscription`) for the token's user; the device.
async fn register(addr: std::net::SocketAddr, user: &str, browser: &Value) -> Value {
    let (status, device) =
        call(addr, "POST", "/api/push/subscriptions", user, Some(browser.clone())).await;
    assert_eq!(status, 201, "{device}");
    device
}

/// A download that finished (or failed) for `model`, to `audience`.
fn finished(model: &str, status: &str, audience: Option<Value>) -> Value {
    let mut message = json!({"type": "download_status_change", "data": {
        "model_id": model, "old_status": "downloading", "new_status": status,
        "progress_percent": 100.0, "reason": "r", "timestamp": "2025-08-27T10:30:00Z"}});
    if let Some(audience) = audience {
        message["audience"] = audience;
    }
    message
}

/// `/metrics`, read with an operator's token (a server that requires tokens guards it).
async fn metrics(addr: std::net::SocketAddr) -> String {
    let bearer = format!("Bearer {}", token("ops", &["admin"]));
    let (status, metrics) = modelcast_tests::server_util::http_request(
        addr,
        "GET",
        "/metrics",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{metrics}");
    metrics
}

async fn publish(addr: std::net::SocketAddr, body: &Value) {
    let (status, _, text) =
        http_request_full(addr, "POST", "/api/publish", &[], Some(body.to_string())).await.unwrap();
    assert_eq!(status, 202, "{text}");
}

/// An offline user's browser gets a push (VAPID verified, decrypted, the WebSocket's frame);
/// while the user has a WebSocket open, it gets none (`offline`, the default).
#[tokio::test]
async fn an_offline_user_is_pushed_the_frame_and_an_online_one_is_not() {
    let dir = Dir::new("offline");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &[]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let (status, key) = call(server.addr, "GET", "/api/push/vapid-public-key", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(key["key"].as_str().unwrap().len(), 87, "65 bytes, base64url: {key}");
    let alice = token("alice", &["user"]);
    let browser = service.browser("alice-laptop").await;
    register(server.addr, &alice, &browser).await;

    // Online: a WebSocket with alice's token.
    let url = format!("ws://{}/ws/a?token={alice}", server.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let audience = Some(json!({"users": ["alice"]}));
    publish(server.addr, &finished("m1", "completed", audience.clone())).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(service.received("alice-laptop").await.is_empty(), "online: no push");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    publish(server.addr, &finished("m2", "failed", audience)).await;
    let received = service.wait_for("alice-laptop", 1).await;
    let push = &received[0];
    assert_eq!(push["payload"]["type"], "download_status_change", "{push}");
    assert_eq!(push["payload"]["data"]["model_id"], "m2");
    assert!(push["payload"]["seq"].as_u64().is_some(), "the frame as the WebSocket carries it");
    assert_eq!(push["headers"]["urgency"], "high", "a failure is urgent");
    assert_eq!(push["headers"]["ttl"], "86400");
    // A download that only progressed is not pushed (the type's rule).
    publish(server.addr, &finished("m3", "paused", Some(json!({"users": ["alice"]})))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(service.received("alice-laptop").await.len(), 1);
}

/// A phone shows the newest state of a model, not each one: pushes of one model share one
/// `Topic` (collapse key; at most 32 URL-safe characters), another model's differ. Only a
/// model becoming available or unavailable is pushed, not one being downloaded.
#[tokio::test]
async fn pushes_of_one_model_share_a_collapse_key() {
    let dir = Dir::new("collapse");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &[]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    register(server.addr, &token("alice", &["user"]), &service.browser("phone").await).await;
    let change = |model: &str, old: &str, new: &str| {
        json!({"type": "model_availability_change", "data": {"model_id": model,
            "old_availability": old, "new_availability": new, "reason": "r",
            "timestamp": "2025-08-27T10:30:00Z"}})
    };
    publish(server.addr, &change("a", "missing", "downloading")).await;
    publish(server.addr, &change("a", "downloading", "available")).await;
    publish(server.addr, &change("a", "available", "corrupted")).await;
    publish(server.addr, &change("b", "missing", "available")).await;
    let got = service.wait_for("phone", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(service.received("phone").await.len(), 3, "downloading is not pushed");
    let topic = |i: usize| got[i]["headers"]["topic"].as_str().expect("a Topic header").to_owned();
    let model = |i: usize| got[i]["payload"]["data"]["model_id"].as_str().unwrap().to_owned();
    let (a, b): (Vec<usize>, Vec<usize>) = (0..3).partition(|&i| model(i) == "a");
    assert_eq!((a.len(), b.len()), (2, 1));
    assert_eq!(topic(a[0]), topic(a[1]), "one collapse key per model");
    assert_ne!(topic(a[0]), topic(b[0]));
    assert!(
        topic(b[0]).len() <= 32
            && topic(b[0]).bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    let urgent: Vec<_> = a
        .iter()
        .map(|&i| got[i]["headers"]["urgency"].as_str().unwrap_or("normal").to_owned())
        .collect();
    assert!(urgent.contains(&"high".to_owned()), "corrupted is urgent: {urgent:?}");
}

/// A message for alice reaches alice's devices only; one for role ops, ops' devices; one
/// without audience on a topic of role ops (MODELCAST_TOPIC_ROLES), only users holding it.
#[tokio::test]
async fn audiences_and_topic_roles_decide_whose_devices_are_pushed() {
    let dir = Dir::new("audience");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &[]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let alice = token("alice", &["user"]);
    let bob = token("bob", &["ops"]);
    register(server.addr, &alice, &service.browser("alice").await).await;
    register(server.addr, &bob, &service.browser("bob").await).await;
    publish(server.addr, &finished("for-alice", "completed", Some(json!({"users": ["alice"]}))))
        .await;
    publish(server.addr, &finished("for-ops", "completed", Some(json!({"roles": ["ops"]})))).await;
    let critical = json!({"type": "alert", "data": {"alert_id": "c1", "level": "critical",
        "title": "GPU on fire", "message": "m"}});
    publish(server.addr, &critical).await;
    let bob_got = service.wait_for("bob", 2).await;
    let alice_got = service.wait_for("alice", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = |got: &[Value]| -> Vec<String> {
        got.iter()
            .map(|p| {
                let data = &p["payload"]["data"];
                data.get("model_id")
                    .or(data.get("alert_id"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        ids(&service.received("alice").await),
        ["for-alice"],
        "alice never gets ops' or the alert"
    );
    let mut bob_ids = ids(&service.received("bob").await);
    bob_ids.sort();
    assert_eq!(bob_ids, ["c1", "for-ops"], "bob never gets alice's");
    assert_eq!(alice_got.len(), 1);
    assert!(
        bob_got.iter().any(|p| p["headers"]["urgency"] == "high"),
        "a critical alert is urgent"
    );
}

/// A browser registered by alice, then by bob (a shared machine, another sign-in), is bob's
/// alone: alice's messages no longer reach it, and her list no longer shows it.
#[tokio::test]
async fn a_device_registered_by_another_user_is_no_longer_the_first_users() {
    let dir = Dir::new("moved");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &[]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let (alice, bob) = (token("alice", &["user"]), token("bob", &["user"]));
    let shared = service.browser("shared").await;
    register(server.addr, &alice, &shared).await;
    register(server.addr, &bob, &shared).await;
    let (_, listed) = call(server.addr, "GET", "/api/push/subscriptions", &alice, None).await;
    assert_eq!(listed["devices"], json!([]), "{listed}");
    publish(server.addr, &finished("alices", "completed", Some(json!({"users": ["alice"]})))).await;
    publish(server.addr, &finished("bobs", "completed", Some(json!({"users": ["bob"]})))).await;
    let got = service.wait_for("shared", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if got.len() > 1 { got } else { service.received("shared").await };
    let models: Vec<&Value> = got.iter().map(|p| &p["payload"]["data"]["model_id"]).collect();
    assert_eq!(models, [&json!("bobs")], "alice's message never reaches bob's browser");
}

/// 410 from the push service forgets the device; 429 with `Retry-After` is retried after it.
#[tokio::test]
async fn a_gone_device_is_forgotten_and_a_429_is_retried_after_retry_after() {
    let dir = Dir::new("gone");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &[]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let alice = token("alice", &["user"]);
    register(server.addr, &alice, &service.browser("busy").await).await;
    service.behave("busy", 429, Some(1), 1).await;
    let before = std::time::Instant::now();
    publish(server.addr, &finished("r1", "completed", Some(json!({"users": ["alice"]})))).await;
    let got = service.wait_for("busy", 2).await;
    assert_eq!(got[0]["answered"], 429);
    assert_eq!(got[1]["payload"]["data"]["model_id"], "r1", "{got:?}");
    assert!(before.elapsed() >= Duration::from_secs(1), "retried after Retry-After");

    let bob = token("bob", &["user"]);
    register(server.addr, &bob, &service.browser("gone").await).await;
    service.behave("gone", 410, None, 1).await;
    publish(server.addr, &finished("g1", "completed", Some(json!({"users": ["bob"]})))).await;
    service.wait_for("gone", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, devices) =
            call(server.addr, "GET", "/api/push/subscriptions", &bob, None).await;
        assert_eq!(status, 200);
        if devices["devices"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gone device stays: {devices}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = metrics(server.addr).await;
    assert!(metrics.contains("modelcast_push_devices_removed_total 1"), "{metrics}");
    assert!(metrics.contains("modelcast_push_sent_total 1"), "{metrics}");
}

/// Registrations survive a restart (the file under MODELCAST_DATA_DIR); a user's device is
/// listed without its keys and removed by its endpoint.
#[tokio::test]
async fn registrations_survive_a_restart_and_are_listed_and_removed() {
    let dir = Dir::new("restart");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = BinaryServer::start(&args, &[]).await;
    let alice = token("alice", &["user"]);
    let browser = service.browser("phone").await;
    let device = register(server.addr, &alice, &browser).await;
    drop(server);
    let server = BinaryServer::start(&args, &[]).await;
    let (_, listed) = call(server.addr, "GET", "/api/push/subscriptions", &alice, None).await;
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{listed}");
    assert_eq!(devices[0]["id"], device["id"]);
    assert_eq!(devices[0]["kind"], "web");
    assert!(
        devices[0].get("p256dh").is_none() && devices[0].get("auth").is_none(),
        "no keys shown"
    );
    publish(
        server.addr,
        &finished("after-restart", "completed", Some(json!({"users": ["alice"]}))),
    )
    .await;
    service.wait_for("phone", 1).await;
    let endpoint = json!({"endpoint": browser["endpoint"]});
    let (status, _) =
        call(server.addr, "DELETE", "/api/push/subscriptions", &alice, Some(endpoint.clone()))
            .await;
    assert_eq!(status, 204);
    let (status, _) =
        call(server.addr, "DELETE", "/api/push/subscriptions", &alice, Some(endpoint)).await;
    assert_eq!(status, 404);
}

/// Bad registrations are refused with the field named; anonymous callers get 401; a user has
/// at most MODELCAST_PUSH_MAX_DEVICES devices.
#[tokio::test]
async fn bad_registrations_name_their_field() {
    let dir = Dir::new("bad");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &["--push-max-devices", "1"]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let alice = token("alice", &["user"]);
    let browser = service.browser("b").await;
    let (status, body) =
        call(server.addr, "POST", "/api/push/subscriptions", "", Some(browser.clone())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let field =
        |body: &Value| body["error"]["errors"][0]["field"].as_str().unwrap_or_default().to_owned();
    let cases = [
        (json!({"endpoint": "ftp://x/y", "keys": browser["keys"]}), "endpoint"),
        (json!({"endpoint": "http://push.example.com/x", "keys": browser["keys"]}), "endpoint"),
        (
            json!({"endpoint": browser["endpoint"], "keys": {"p256dh": "AAAA", "auth": browser["keys"]["auth"]}}),
            "keys.p256dh",
        ),
        (
            json!({"endpoint": browser["endpoint"], "keys": {"p256dh": browser["keys"]["p256dh"], "auth": "AA"}}),
            "keys.auth",
        ),
        (json!({"endpoint": browser["endpoint"]}), "keys"),
        (
            json!({"endpoint": browser["endpoint"], "keys": browser["keys"], "types": ["weather"]}),
            "types",
        ),
        (json!({"fcm_token": "t"}), "fcm_token"),
    ];
    for (registration, expected) in cases {
        let (status, body) = call(
            server.addr,
            "POST",
            "/api/push/subscriptions",
            &alice,
            Some(registration.clone()),
        )
        .await;
        assert_eq!(status, 400, "{registration}: {body}");
        assert_eq!(body["error"]["code"], "invalid_registration");
        assert_eq!(field(&body), expected, "{registration}: {body}");
    }
    register(server.addr, &alice, &browser).await;
    register(server.addr, &alice, &browser).await; // the same browser again: the same device
    let other = service.browser("c").await;
    let (status, body) =
        call(server.addr, "POST", "/api/push/subscriptions", &alice, Some(other)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("too_many_devices")), "{body}");
}

/// A user's pushes beyond MODELCAST_PUSH_RATE per minute are dropped and counted.
#[tokio::test]
async fn a_users_pushes_are_rate_limited() {
    let dir = Dir::new("rate");
    let service = WebPushService::start();
    let args = web_push_args(&dir, &["--push-rate", "2"]);
    let server =
        BinaryServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).await;
    let alice = token("alice", &["user"]);
    register(server.addr, &alice, &service.browser("r").await).await;
    for i in 0..5 {
        publish(
            server.addr,
            &finished(&format!("m{i}"), "completed", Some(json!({"users": ["alice"]}))),
        )
        .await;
    }
    service.wait_for("r", 2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(service.received("r").await.len(), 2);
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains(r#"modelcast_push_failed_total{reason="rate_limited"} 3"#),
        "{metrics}"
    );
}

/// Two nodes on one Redis: a device registered on one is pushed exactly once per message,
/// whichever node the message was published on, and the registration is the cluster's.
#[tokio::test]
async fn two_nodes_on_redis_push_each_message_once() {
    let dir = Dir::new("cluster");
    let service = WebPushService::start();
    let redis = Redis::start(false);
    let args = web_push_args(&dir, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = [Node::on(&redis, "p0", &args).await, Node::on(&redis, "p1", &args).await];
    let alice = token("alice", &["user"]);
    register(nodes[0].addr, &alice, &service.browser("once").await).await;
    let (_, listed) = call(nodes[1].addr, "GET", "/api/push/subscriptions", &alice, None).await;
    assert_eq!(
        listed["devices"].as_array().unwrap().len(),
        1,
        "the cluster's registration: {listed}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // both nodes read the registrations
    for i in 0..3 {
        let body = finished(&format!("c{i}"), "completed", Some(json!({"users": ["alice"]})));
        let (status, _, _) = nodes[i % 2].publish(&body, &[]).await;
        assert_eq!(status, 202);
    }
    service.wait_for("once", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = service.received("once").await;
    let mut ids: Vec<&str> =
        got.iter().map(|p| p["payload"]["data"]["model_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["c0", "c1", "c2"], "once each");
    // Online on node 1 means online for the cluster: node 0 does not push.
    let url = format!("ws://{}/ws/a?token={alice}", nodes[1].addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _) = nodes[0]
        .publish(&finished("online", "completed", Some(json!({"users": ["alice"]}))), &[])
        .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(service.received("once").await.len(), 3, "alice is online on node 1");
    drop(ws);
}

/// FCM HTTP v1: the service account's assertion (RS256) gets an access token, each push is
/// sent with it to the project's `messages:send`, the frame in `data.frame`.
#[tokio::test]
async fn fcm_pushes_carry_the_frame_with_an_access_token_from_the_service_account() {
    let dir = Dir::new("fcm");
    let ssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(&dir.0).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"]);
    ssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    let public = std::fs::read(dir.path("sa.pub")).unwrap();
    let email = "modelcast@project.iam.gserviceaccount.com".to_owned();
    let (addr, recorded) = fcm_stand_in(public, email.clone()).await;
    let account = json!({"type": "service_account", "project_id": "p", "client_email": email,
        "private_key": std::fs::read_to_string(dir.path("sa.key")).unwrap(),
        "token_uri": format!("http://{addr}/token")});
    std::fs::write(dir.path("sa.json"), account.to_string()).unwrap();
    let (sa, url, data) = (dir.path("sa.json"), format!("http://{addr}"), dir.path("data"));
    let args = [
        "--jwt-secret",
        SECRET,
        "--fcm-service-account",
        &sa,
        "--fcm-url",
        &url,
        "--data-dir",
        &data,
    ];
    let server = BinaryServer::start(&args, &[]).await;
    let alice = token("alice", &["user"]);
    let (status, _) = call(
        server.addr,
        "POST",
        "/api/push/subscriptions",
        &alice,
        Some(json!({"fcm_token": "device-1"})),
    )
    .await;
    assert_eq!(status, 201);
    publish(server.addr, &finished("f1", "failed", Some(json!({"users": ["alice"]})))).await;
    let sent = wait_recorded(&recorded, 1).await;
    assert_eq!(sent[0]["path"], "/v1/projects/p/messages:send");
    let message = &sent[0]["message"];
    assert_eq!(message["token"], "device-1");
    assert_eq!(message["android"]["priority"], "high");
    let frame: Value = serde_json::from_str(message["data"]["frame"].as_str().unwrap()).unwrap();
    assert_eq!(frame["data"]["model_id"], "f1");
}

/// APNs over HTTP/2 and TLS: a provider token (ES256, the key's id, the team) on every push,
/// `apns-topic` the bundle; a 410 forgets the device.
#[tokio::test]
async fn apns_pushes_go_over_http2_with_a_provider_token_and_a_410_forgets_the_device() {
    let dir = Dir::new("apns");
    let pki = Pki::new();
    let ssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(&dir.0).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    ssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "apns.p8"]);
    ssl(&["pkey", "-in", "apns.p8", "-pubout", "-out", "apns.pub"]);
    let tls = server_tls(&pki);
    let gone = vec!["dead0000".to_owned()];
    let public = std::fs::read(dir.path("apns.pub")).unwrap();
    let (addr, recorded) = apns_stand_in(tls, public, "KEY123".into(), "TEAM42".into(), gone).await;
    let (p8, url, data, ca) = (
        dir.path("apns.p8"),
        format!("https://localhost:{}", addr.port()),
        dir.path("data"),
        pki.arg("ca.pem"),
    );
    let args = [
        "--jwt-secret",
        SECRET,
        "--apns-key",
        &p8,
        "--apns-key-id",
        "KEY123",
        "--apns-team-id",
        "TEAM42",
        "--apns-topic",
        "com.example.app",
        "--apns-url",
        &url,
        "--push-ca",
        &ca,
        "--data-dir",
        &data,
    ];
    let server = BinaryServer::start(&args, &[]).await;
    let alice = token("alice", &["user"]);
    let bob = token("bob", &["user"]);
    let (status, _) = call(
        server.addr,
        "POST",
        "/api/push/subscriptions",
        &alice,
        Some(json!({"apns_token": "ABCDEF01"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        server.addr,
        "POST",
        "/api/push/subscriptions",
        &bob,
        Some(json!({"apns_token": "dead0000"})),
    )
    .await;
    assert_eq!(status, 201);
    publish(server.addr, &finished("a1", "completed", Some(json!({"users": ["alice", "bob"]}))))
        .await;
    let sent = wait_recorded(&recorded, 1).await;
    assert_eq!(sent[0]["token"], "abcdef01");
    assert_eq!(sent[0]["topic"], "com.example.app");
    assert_eq!(sent[0]["priority"], "5");
    assert_eq!(sent[0]["body"]["frame"]["data"]["model_id"], "a1");
    assert_eq!(sent[0]["body"]["aps"]["alert"]["title"], "a1: completed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, devices) = call(server.addr, "GET", "/api/push/subscriptions", &bob, None).await;
        if devices["devices"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the 410'd device stays: {devices}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The PKI's server certificate for an HTTP/2 stand-in (ALPN h2).
#[allow(deprecated)] // ring: no post-quantum key exchange, which is all rustls warns of
fn server_tls(pki: &Pki) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

/// `--check-config` names what push needs: a readable EC P-256 key (and how to make one), a
/// subject, users (a JWT setting); a valid configuration says what is pushed to whom.
#[test]
fn check_config_names_what_push_needs() {
    let dir = Dir::new("check");
    let key = vapid_key(&dir);
    let check = |args: &[&str]| {
        let out = Command::new(binary()).arg("--check-config").args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let subject = ["--vapid-subject", "mailto:ops@example.com"];
    let (ok, text) = check(&[&["--vapid-private-key", &key][..], &subject].concat());
    assert!(!ok && text.contains("MODELCAST_JWT_SECRET"), "push needs users: {text}");
    let (ok, text) = check(&["--jwt-secret", SECRET, "--vapid-private-key", &key]);
    assert!(!ok && text.contains("MODELCAST_VAPID_SUBJECT"), "{text}");
    let not_a_key = dir.path("not-a-key.pem");
    std::fs::write(&not_a_key, "hello").unwrap();
    let (ok, text) = check(
        &[&["--jwt-secret", SECRET, "--vapid-private-key", &not_a_key][..], &subject].concat(),
    );
    assert!(
        !ok && text.contains("MODELCAST_VAPID_PRIVATE_KEY") && text.contains("modelcast push-keys"),
        "{text}"
    );
    let (ok, text) =
        check(&[&["--jwt-secret", SECRET, "--vapid-private-key", &key][..], &subject].concat());
    assert!(ok, "{text}");
    assert!(text.contains("push: web to offline users"), "{text}");
}
