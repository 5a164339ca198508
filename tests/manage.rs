//! Subscription management over real sockets: who is connected (`/api/connections`,
//! `/api/presence`), disconnecting and revoking (`/api/disconnect`, `/api/revoke`), on one
//! node and on three nodes sharing a private Redis.

use std::net::SocketAddr;
use std::time::Duration;

use modelcast_tests::cluster_util::{Node, Redis, alert, progress};
use modelcast_tests::server_util::{
    Client, PATIENCE, Sse, TestServer, hs256_token_issued, http_request, unix_now,
};
use serde_json::{Value, json};

const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";
const KEY: &str = "a-publish-key-of-32-characters--";

fn token(user: &str, roles: &[&str]) -> String {
    hs256_token_issued(SECRET, user, roles, unix_now())
}

/// A token issued a minute ago (before any revocation a test makes).
fn old_token(user: &str) -> String {
    hs256_token_issued(SECRET, user, &[], unix_now() - 60)
}

fn args() -> Vec<&'static str> {
    vec!["--jwt-secret", SECRET, "--publish-key", KEY, "--presence-lease", "2"]
}

/// `method path` with `bearer`; the status and the JSON body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {bearer}");
    let headers: Vec<(&str, &str)> =
        if bearer.is_empty() { vec![] } else { vec![("authorization", auth.as_str())] };
    let (status, text) =
        http_request(addr, method, path, &headers, body.map(|b| b.to_string())).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn connect(addr: SocketAddr, id: &str, token: &str) -> Client {
    let mut client = Client::connect(addr, &format!("/ws/{id}?token={token}")).await;
    let welcome = client.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

async fn subscribe(client: &mut Client, request: Value) {
    client.send_json(&request).await;
    let reply = client.next_of_type("subscribed").await;
    assert_eq!(reply["data"]["topic"], request["topic"], "{reply}");
}

/// The ids of `GET /api/connections` (with `query`) on `addr`, following every page.
async fn listed(addr: SocketAddr, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let path = format!("/api/connections?limit=1{query}{cursor}");
        let (status, page) = call(addr, "GET", &path, KEY, None).await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["connections"].as_array().expect("a list").iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return all,
        }
    }
}

fn ids(entries: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .iter()
        .map(|e| e["connection_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits until `GET /api/connections` (with `query`) on `addr` lists exactly `want` (ids,
/// sorted).
async fn until_listed(addr: SocketAddr, query: &str, want: &[&str]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let entries = listed(addr, query).await;
        if ids(&entries) == want {
            return entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed {:?}, want {want:?}",
            ids(&entries)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_node_lists_counts_disconnects_and_revokes() {
    let server = TestServer::start(&args()).await;
    let addr = server.addr;
    let mut alice = connect(addr, "alice-tab", &token("alice", &[])).await;
    subscribe(
        &mut alice,
        json!({"action": "subscribe", "topic": "model_status",
        "filter": {"model_ids": ["m1", "m2"]}, "max_hz": 2.0}),
    )
    .await;
    subscribe(&mut alice, json!({"action": "subscribe", "topic": "alerts"})).await;
    let bob_token = old_token("bob");
    let mut bob = Sse::open(addr, &format!("/sse?topic=model_status&token={bob_token}"), &[]).await;
    bob.until("subscribed").await;

    // Operators only: no credential, a user's token, then the key.
    let (status, _) = call(addr, "GET", "/api/connections", "", None).await;
    assert_eq!(status, 401);
    let (status, body) = call(addr, "GET", "/api/connections", &token("bob", &[]), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let admin = token("root", &["admin"]);
    let (status, _) = call(addr, "GET", "/api/connections", &admin, None).await;
    assert_eq!(status, 200, "an admin token is an operator credential");

    let entries = listed(addr, "").await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let a = entries.iter().find(|e| e["connection_id"] == "alice-tab").expect("alice listed");
    assert_eq!(a["user"], "alice");
    assert_eq!(a["transport"], "ws");
    let topics = a["topics"].as_array().expect("topics");
    assert!(
        topics.contains(&json!({"topic": "model_status",
        "filter": {"model_ids": ["m1", "m2"]}, "max_hz": 2.0})),
        "{a}"
    );
    assert!(topics.contains(&json!({"topic": "alerts", "filter": null, "max_hz": null})), "{a}");
    assert_eq!(topics.len(), 2);
    assert!(a["connected_at"].is_string() && a["queued"].is_u64() && a["node"].is_string(), "{a}");
    let b = entries.iter().find(|e| e["user"] == "bob").expect("bob listed");
    assert_eq!(b["transport"], "sse");
    assert_eq!(ids(&listed(addr, "&user=alice").await), ["alice-tab"]);
    assert_eq!(ids(&listed(addr, "&topic=alerts").await), ["alice-tab"]);

    let (status, presence) = call(addr, "GET", "/api/presence?topic=model_status", KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(presence["connections"], 2, "{presence}");
    assert_eq!(presence["users"], 2);
    assert_eq!(presence["unfiltered"], 1);
    assert_eq!(presence["models"], json!({"m1": 1, "m2": 1}));

    // Bad input names the field.
    for (path, code, field) in [
        ("/api/connections?topic=nope", "unknown_topic", "topic"),
        ("/api/connections?limit=0", "invalid_limit", "limit"),
        ("/api/connections?after=x", "invalid_cursor", "after"),
    ] {
        let (status, body) = call(addr, "GET", path, KEY, None).await;
        assert_eq!(
            (status, &body["error"]["code"], &body["error"]["field"]),
            (400, &json!(code), &json!(field)),
            "{path}: {body}"
        );
    }
    for body in [json!({}), json!({"user": "a", "connection_id": "b"}), json!({"user": 3})] {
        let (status, answer) = call(addr, "POST", "/api/disconnect", KEY, Some(body.clone())).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("invalid_request")),
            "{body}: {answer}"
        );
    }
    let (status, answer) =
        call(addr, "POST", "/api/revoke", KEY, Some(json!({"user": "x", "issued_before": "soon"})))
            .await;
    assert_eq!((status, &answer["error"]["field"]), (400, &json!("issued_before")), "{answer}");

    // Disconnect alice: 4403, and bob stays.
    let (status, answer) =
        call(addr, "POST", "/api/disconnect", KEY, Some(json!({"user": "alice"}))).await;
    assert_eq!((status, &answer["closed"]), (200, &json!(1)), "{answer}");
    let (close, _) = alice.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(4403));
    until_listed(addr, "&user=alice", &[]).await;
    assert_eq!(listed(addr, "&user=bob").await.len(), 1, "bob stays");

    // Revoke bob: his stream ends with `revoked`; the old token is refused, a new one is not.
    let (status, answer) =
        call(addr, "POST", "/api/revoke", KEY, Some(json!({"user": "bob"}))).await;
    assert_eq!((status, &answer["closed"]), (200, &json!(1)), "{answer}");
    let error = bob.until("error").await;
    assert_eq!(error.data["data"]["code"], "revoked", "{:?}", error.data);
    assert!(bob.next().await.is_none(), "the stream ends");
    let again = Sse::open(addr, &format!("/sse?topic=alerts&token={bob_token}"), &[]).await;
    assert!(again.head.starts_with("HTTP/1.1 401"), "{}", again.head);
    let handshake =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/b?token={bob_token}")).await;
    match handshake {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401, "the WebSocket handshake refuses it too");
        }
        other => panic!("the old token connected: {other:?}"),
    }
    let mut fresh =
        Sse::open(addr, &format!("/sse?topic=alerts&token={}", token("bob", &[])), &[]).await;
    assert!(fresh.head.starts_with("HTTP/1.1 200"), "a new token connects: {}", fresh.head);
    fresh.until("subscribed").await;
}

#[tokio::test]
async fn three_nodes_share_the_roster_and_a_revocation_reaches_every_node() {
    let redis = Redis::start(false);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Node::on(&redis, &format!("n{i}"), &args()).await);
    }
    let mut addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let alice_token = old_token("alice");
    let mut alice0 = connect(addrs[0], "a0", &alice_token).await;
    subscribe(
        &mut alice0,
        json!({"action": "subscribe", "topic": "download_progress",
        "filter": {"model_ids": ["m1"]}}),
    )
    .await;
    let mut alice1 = connect(addrs[1], "a1", &alice_token).await;
    subscribe(&mut alice1, json!({"action": "subscribe", "topic": "download_progress"})).await;
    let mut carol = connect(addrs[1], "c1", &token("carol", &[])).await;
    let mut bob = Sse::open(
        addrs[2],
        &format!("/sse?topic=download_progress&token={}", token("bob", &[])),
        &[],
    )
    .await;
    bob.until("subscribed").await;

    // Every node lists every node's connections, each with its node.
    for &addr in &addrs {
        let entries =
            until_listed(addr, "&user=alice&topic=download_progress", &["a0", "a1"]).await;
        assert!(
            entries.iter().any(|e| e["connection_id"] == "a0" && e["node"] == "n0"),
            "{entries:?}"
        );
    }
    until_listed(addrs[0], "&user=carol", &["c1"]).await;
    let (_, presence) =
        call(addrs[2], "GET", "/api/presence?topic=download_progress", KEY, None).await;
    assert_eq!(presence["nodes"], 3, "{presence}");
    assert_eq!(presence["users"], 2, "alice and bob: {presence}");
    assert_eq!(presence["models"], json!({"m1": 1}));

    // A revocation asked of node 2 closes alice on nodes 0 and 1; the old token is refused
    // on every node (a node that starts later too), a new one is not.
    let (status, answer) =
        call(addrs[2], "POST", "/api/revoke", KEY, Some(json!({"user": "alice"}))).await;
    assert_eq!(status, 200, "{answer}");
    for client in [&mut alice0, &mut alice1] {
        let (close, _) = client.until_close().await;
        assert_eq!(close.map(|c| c.0), Some(4403));
    }
    nodes.push(Node::on(&redis, "n3", &args()).await);
    addrs.push(nodes[3].addr);
    for (i, addr) in addrs.iter().enumerate() {
        let handshake =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws/x?token={alice_token}")).await;
        assert!(
            matches!(&handshake, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
            "node {i} let the revoked token in: {handshake:?}"
        );
    }
    connect(addrs[3], "a3", &token("alice", &[])).await;

    // A server-side subscription asked of node 0 reaches carol on node 1.
    let body = json!({"user": "carol", "topic": "alerts"});
    let (status, answer) = call(addrs[0], "POST", "/api/subscriptions", KEY, Some(body)).await;
    assert_eq!((status, &answer["sessions"]), (200, &json!(0)), "carol is not on node 0: {answer}");
    let subscribed = carol.next_of_type("subscribed").await;
    assert_eq!(subscribed["data"]["topic"], "alerts");

    // A disconnect by connection id, asked of another node.
    let (status, _) =
        call(addrs[0], "POST", "/api/disconnect", KEY, Some(json!({"connection_id": "c1"}))).await;
    assert_eq!(status, 200);
    let (close, _) = carol.until_close().await;
    assert_eq!(close.map(|c| c.0), Some(4403));

    // A killed node's entries are gone within its lease (2 s here).
    let listed_bob = listed(addrs[0], "&topic=download_progress").await;
    assert!(listed_bob.iter().any(|e| e["user"] == "bob"), "{listed_bob:?}");
    nodes[2].kill();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while listed(addrs[0], "&user=bob").await.iter().any(|e| e["node"] == "n2") {
        assert!(tokio::time::Instant::now() < deadline, "n2's entries outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server with publish keys and nothing else shows `/api/stats` to anyone (and warns off
/// loopback), but never the list of users or the power to disconnect them.
#[tokio::test]
async fn a_server_with_only_publish_keys_still_guards_management() {
    let server = TestServer::start(&["--publish-key", KEY]).await;
    let _listener = server.ws("/ws/someone").await;
    for (method, path, body) in [
        ("GET", "/api/connections", None),
        ("GET", "/api/presence", None),
        ("POST", "/api/disconnect", Some(json!({"connection_id": "someone"}))),
        ("POST", "/api/revoke", Some(json!({"user": "someone"}))),
    ] {
        let (status, answer) = call(server.addr, method, path, "", body.clone()).await;
        assert_eq!(status, 401, "{method} {path}: {answer}");
        let (status, answer) = call(server.addr, method, path, "not-the-key", body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    assert_eq!(ids(&listed(server.addr, "").await), ["someone"], "the key opens it");
}

/// A backend subscribes a user's sessions server-side: each gets `subscribed` and the state as
/// if it had asked, its filter applied, its roles still checked; `DELETE` unsubscribes.
#[tokio::test]
async fn server_side_subscriptions_act_as_if_the_session_had_asked() {
    let mut server_args = args();
    server_args.extend(["--topic-roles", "analytics_updates=admin"]);
    let server = TestServer::start(&server_args).await;
    let addr = server.addr;
    let (status, _) = call(addr, "POST", "/api/publish", KEY, Some(progress("m1", 10.0))).await;
    assert_eq!(status, 202);
    let mut alice = connect(addr, "alice-tab", &token("alice", &[])).await;
    let mut other = connect(addr, "bob-tab", &token("bob", &[])).await;

    let body =
        json!({"user": "alice", "topic": "download_progress", "filter": {"model_ids": ["m1"]}});
    let (status, answer) = call(addr, "POST", "/api/subscriptions", KEY, Some(body)).await;
    assert_eq!((status, &answer["sessions"]), (200, &json!(1)), "{answer}");
    let subscribed = alice.next_of_type("subscribed").await;
    assert_eq!(subscribed["data"]["topic"], "download_progress");
    let state = alice.next_json().await;
    assert_eq!(
        (state["data"]["model_id"].as_str(), state["late"].as_bool()),
        (Some("m1"), Some(true)),
        "{state}"
    );
    let page = listed(addr, "&user=alice").await;
    assert_eq!(page[0]["topics"][0]["filter"], json!({"model_ids": ["m1"]}), "{page:?}");
    call(addr, "POST", "/api/publish", KEY, Some(progress("m2", 20.0))).await;
    call(addr, "POST", "/api/publish", KEY, Some(progress("m1", 30.0))).await;
    let live = alice.next_json().await;
    assert_eq!(live["data"]["model_id"], "m1", "the filter holds: {live}");
    assert_eq!(live["data"]["progress_percent"], 30.0);

    // Roles still apply: a topic alice may not read is refused to her, as if she had asked.
    let body = json!({"user": "alice", "topic": "analytics_updates"});
    let (status, _) = call(addr, "POST", "/api/subscriptions", KEY, Some(body)).await;
    assert_eq!(status, 200);
    let refused = alice.next_of_type("error").await;
    assert_eq!(refused["data"]["code"], "forbidden", "{refused}");

    // Unsubscribe.
    let body = json!({"connection_id": "alice-tab", "topic": "download_progress"});
    let (status, answer) = call(addr, "DELETE", "/api/subscriptions", KEY, Some(body)).await;
    assert_eq!((status, &answer["sessions"]), (200, &json!(1)), "{answer}");
    let done = alice.next_of_type("unsubscribed").await;
    assert_eq!(done["data"]["topic"], "download_progress");

    // Bad input names the field; a missing credential is refused.
    for (body, code, field) in [
        (json!({"user": "alice", "topic": "nope"}), "unknown_topic", "topic"),
        (json!({"user": "alice"}), "invalid_request", "topic"),
        (json!({"topic": "alerts"}), "invalid_request", "user"),
        (
            json!({"user": "alice", "topic": "alerts", "filter": {"model_ids": "m1"}}),
            "invalid_request",
            "filter",
        ),
        (json!({"user": "alice", "topic": "alerts", "max_hz": 0}), "invalid_request", "max_hz"),
    ] {
        let (status, answer) =
            call(addr, "POST", "/api/subscriptions", KEY, Some(body.clone())).await;
        assert_eq!(
            (status, &answer["error"]["code"], &answer["error"]["field"]),
            (400, &json!(code), &json!(field)),
            "{body}: {answer}"
        );
    }
    let (status, _) = call(
        addr,
        "POST",
        "/api/subscriptions",
        "",
        Some(json!({"user": "alice", "topic": "alerts"})),
    )
    .await;
    assert_eq!(status, 401);

    // Bob was never touched.
    call(addr, "POST", "/api/publish", KEY, Some(alert("x1"))).await;
    other.send_json(&json!({"action": "ping", "id": 7})).await;
    let pong = other.next_json().await;
    assert_eq!(pong["type"], "pong", "bob got nothing but his pong: {pong}");
}

/// The models `models` announced by the backend (a `model_status_update` each): demand counts
/// only models the hub knows.
async fn announce(addr: SocketAddr, models: &[&str]) {
    for model in models {
        let message =
            serde_json::to_value(modelcast_tests::msg::model_status(model, 1000.0)).unwrap();
        let (status, answer) = call(addr, "POST", "/api/publish", KEY, Some(message)).await;
        assert_eq!(status, 202, "{answer}");
    }
}

/// A webhook receiver: answers each request with the next status of `statuses` (then 200)
/// and hands over (headers, body) of each.
async fn receiver(
    statuses: Vec<u16>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut buffer = Vec::new();
            let (head, body) = loop {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buffer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buffer).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = text[..end].to_owned();
                    let length: usize = head
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(str::to_owned))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if text.len() >= end + 4 + length {
                        break (head, text[end + 4..end + 4 + length].to_owned());
                    }
                }
            };
            if head.is_empty() {
                continue;
            }
            let status = statuses.next().unwrap_or(200);
            let _ = tx.send((head, body));
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (addr, rx)
}

/// The Standard Webhooks check a receiver makes: HMAC-SHA256 of `{id}.{timestamp}.{body}`.
fn signature_holds(head: &str, body: &str, key: &[u8]) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(
        format!("{}.{}.{body}", header("webhook-id"), header("webhook-timestamp")).as_bytes(),
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header("webhook-signature").split(' ').any(|s| s == format!("v1,{expected}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_counts_watchers_and_the_webhook_is_told_once_per_change_signed_and_retried() {
    let secret = "a-demand-secret-of-some-length";
    let (hook, mut calls) = receiver(vec![500]).await;
    let url = format!("http://{hook}/demand");
    let mut server_args = args();
    server_args.extend([
        "--demand-webhook",
        &url,
        "--demand-webhook-secret",
        secret,
        "--demand-debounce",
        "2",
    ]);
    let server = TestServer::start(&server_args).await;
    let addr = server.addr;
    announce(addr, &["m1"]).await;
    let watch = json!({"action": "subscribe", "topic": "model_status",
        "filter": {"model_ids": ["m1", "never-announced"]}});
    let mut first = connect(addr, "w1", &token("alice", &[])).await;
    subscribe(&mut first, watch.clone()).await;
    // Someone else's download of m9 in progress, scoped to bob: bob wants m9.
    let mut download = progress("m9", 10.0);
    download["audience"] = json!({"users": ["bob"]});
    let (status, answer) = call(addr, "POST", "/api/publish", KEY, Some(download)).await;
    assert_eq!(status, 202, "{answer}");

    // The first call fails (500) and is retried; both attempts carry the same id, signed.
    let (head, body) = tokio::time::timeout(PATIENCE, calls.recv()).await.unwrap().unwrap();
    let (head2, body2) = tokio::time::timeout(PATIENCE, calls.recv()).await.unwrap().unwrap();
    assert_eq!(body, body2, "the retry is the same call");
    let id = |h: &str| {
        h.lines().find(|l| l.to_ascii_lowercase().starts_with("webhook-id:")).map(str::to_owned)
    };
    assert_eq!(id(&head), id(&head2));
    assert!(signature_holds(&head2, &body2, secret.as_bytes()), "{head2}");
    let mut watched: Vec<Value> = vec![serde_json::from_str(&body2).unwrap()];
    let (_, body3) = tokio::time::timeout(PATIENCE, calls.recv()).await.unwrap().unwrap();
    watched.push(serde_json::from_str(&body3).unwrap());
    watched.sort_by_key(|c| c["data"]["model_id"].as_str().unwrap_or_default().to_owned());
    assert_eq!(watched[0]["type"], "model.watched");
    assert_eq!(watched[0]["data"], json!({"model_id": "m1", "watchers": 1}));
    assert_eq!(watched[1]["data"], json!({"model_id": "m9", "watchers": 1}));

    let (status, demand) = call(addr, "GET", "/api/demand", KEY, None).await;
    assert_eq!(status, 200);
    let m1 = demand["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == "m1")
        .cloned()
        .unwrap();
    assert_eq!((m1["watchers"].as_u64(), m1["subscriptions"].as_u64()), (Some(1), Some(1)), "{m1}");
    assert!(m1["since"].is_string() && m1["peak_last_hour"] == 1, "{m1}");
    let names: Vec<&str> = demand["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["model_id"].as_str())
        .collect();
    assert_eq!(names, ["m1", "m9"], "a filter naming a model never announced is not counted");
    let m9 = demand["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == "m9")
        .cloned()
        .unwrap();
    assert_eq!(m9["in_progress"], 1, "{m9}");
    let (status, _) = call(addr, "GET", "/api/demand", "", None).await;
    assert_eq!(status, 401);

    // A reconnect storm (gone and back within the debounce) is no change; leaving is one.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = connect(addr, "w1", &token("alice", &[])).await;
    subscribe(&mut again, watch).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(calls.try_recv().is_err(), "a flap within the debounce was told");
    drop(again);
    let (_, body) = tokio::time::timeout(PATIENCE, calls.recv()).await.unwrap().unwrap();
    let unwatched: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(unwatched["type"], "model.unwatched");
    assert_eq!(unwatched["data"], json!({"model_id": "m1", "watchers": 0}));
}

/// On a cluster every node counts every node's watchers, and one node (the lease holder)
/// tells the webhook: one call per change, whichever node the watcher is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_tells_the_webhook_once_per_change() {
    let redis = Redis::start(false);
    let (hook, mut calls) = receiver(vec![]).await;
    let url = format!("http://{hook}/demand");
    let mut node_args = args();
    node_args.extend([
        "--demand-webhook",
        &url,
        "--demand-webhook-secret",
        "a-demand-secret-of-some-length",
        "--demand-debounce",
        "1",
    ]);
    let nodes =
        [Node::on(&redis, "d0", &node_args).await, Node::on(&redis, "d1", &node_args).await];
    announce(nodes[0].addr, &["m7"]).await;
    let mut watcher = connect(nodes[1].addr, "w", &token("alice", &[])).await;
    subscribe(
        &mut watcher,
        json!({"action": "subscribe", "topic": "model_status", "filter": {"model_ids": ["m7"]}}),
    )
    .await;
    let (_, body) = tokio::time::timeout(PATIENCE, calls.recv()).await.unwrap().unwrap();
    let told: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (told["type"].as_str(), &told["data"]["model_id"]),
        (Some("model.watched"), &json!("m7"))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(calls.try_recv().is_err(), "a second node told the webhook too");
    for node in &nodes {
        let (_, demand) = call(node.addr, "GET", "/api/demand", KEY, None).await;
        assert_eq!(demand["models"][0]["watchers"], 1, "every node counts every node's: {demand}");
    }
}
