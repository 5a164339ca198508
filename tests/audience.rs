//! Audiences over real sockets: a message for one user or one role, inside a shared topic,
//! reaches only the connections whose token is in its audience — live, as state for a later
//! subscriber, in a replay after a cut, as `state_cleared`, after a token renewal, and across
//! two nodes on Redis. alice and bob hold role `user`, carol holds `ops` (HS256 tokens).

use std::time::Duration;

use modelcast_tests::cluster_util::{Node, Redis};
use modelcast_tests::server_util::{Client, TestServer};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-0123456789-0123456789";

fn token(sub: &str, roles: &[&str]) -> String {
    modelcast_tests::server_util::hs256_token(SECRET, sub, roles)
}

fn alice() -> String {
    token("alice", &["user"])
}
fn bob() -> String {
    token("bob", &["user"])
}
fn carol() -> String {
    token("carol", &["ops"])
}

async fn server() -> TestServer {
    TestServer::start(&["--jwt-secret", SECRET]).await
}

/// A download progress update of `model` at `percent`, to `audience` (none: everyone).
fn download(model: &str, percent: f64, audience: Option<Value>) -> Value {
    let mut body = json!({"type": "download_progress_update", "data": {
        "model_id": model, "progress_percent": percent, "downloaded_mb": percent,
        "total_mb": 100.0, "speed_mbps": 1.0, "eta_seconds": 1.0, "status": "downloading",
        "can_pause": true, "can_resume": false, "can_cancel": true}});
    if let Some(audience) = audience {
        body["audience"] = audience;
    }
    body
}

fn alert(id: &str, audience: Option<Value>) -> Value {
    let mut body = json!({"type": "alert", "data": {
        "alert_id": id, "level": "info", "title": "t", "message": "m"}});
    if let Some(audience) = audience {
        body["audience"] = audience;
    }
    body
}

async fn publish(server: &TestServer, body: Value) -> Value {
    let (status, reply) = server.post("/api/publish", &body).await;
    assert_eq!(status, 202, "{reply}");
    reply
}

/// Every frame that arrives before the answer to a ping sent now (the server answers in
/// order, so everything queued before it is in).
async fn drain(client: &mut Client) -> Vec<Value> {
    client.send_json(&json!({"action": "ping", "id": "barrier"})).await;
    let mut frames = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "pong" {
            return frames;
        }
        frames.push(frame);
    }
}

/// What the frames are about: alert ids and download `model@percent`, in order.
fn about(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f["type"].as_str()? {
            "alert" => Some(f["data"]["alert_id"].as_str()?.to_owned()),
            "download_progress_update" => Some(format!(
                "{}@{}{}",
                f["data"]["model_id"].as_str()?,
                f["data"]["progress_percent"],
                if f["late"] == true { " late" } else { "" }
            )),
            "state_cleared" => Some(format!("cleared {}", f["data"]["key"].as_str()?)),
            _ => None,
        })
        .collect()
}

async fn connect(server: &TestServer, id: &str, token: &str, topics: &[&str]) -> Client {
    let mut client = server.ws(&format!("/ws/{id}?token={token}")).await;
    for topic in topics {
        assert_eq!(client.subscribe(topic).await["type"], "subscribed");
    }
    client
}

#[tokio::test]
async fn a_users_download_reaches_that_user_only_live_as_state_in_a_replay_and_when_cleared() {
    let server = server().await;
    let topics = ["download_progress", "alerts"];
    let mut a = connect(&server, "a", &alice(), &topics).await;
    let mut b = connect(&server, "b", &bob(), &topics).await;
    let mut c = connect(&server, "c", &carol(), &topics).await;

    publish(&server, download("m1", 10.0, Some(json!({"users": ["alice"]})))).await;
    publish(&server, download("m1", 20.0, Some(json!({"users": ["bob"]})))).await;
    publish(&server, alert("for-ops", Some(json!({"roles": ["ops"]})))).await;
    publish(&server, alert("for-all", None)).await;
    // An array with audiences per element, and a user or a role in one audience.
    publish(
        &server,
        json!([
            alert("alice-or-ops", Some(json!({"users": ["alice"], "roles": ["ops"]}))),
            alert("for-users", Some(json!({"roles": ["user"]}))),
        ]),
    )
    .await;

    let a_frames = drain(&mut a).await;
    assert_eq!(about(&a_frames), ["m1@10.0", "for-all", "alice-or-ops", "for-users"]);
    assert_eq!(about(&drain(&mut b).await), ["m1@20.0", "for-all", "for-users"]);
    assert_eq!(about(&drain(&mut c).await), ["for-ops", "for-all", "alice-or-ops"]);
    // The frame is the same as without an audience: no one sees its members.
    assert!(a_frames.iter().all(|f| f.get("audience").is_none()), "{a_frames:?}");
    // `seq` is per topic: alice sees gaps where messages were for others.
    let alert_seqs: Vec<u64> = a_frames
        .iter()
        .filter(|f| f["topic"] == "alerts")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(alert_seqs, [2, 3, 4]);

    // State: alice's and bob's downloads of m1 are two keys; each later subscriber gets its own.
    let mut a2 = connect(&server, "a2", &alice(), &["download_progress"]).await;
    assert_eq!(about(&drain(&mut a2).await), ["m1@10.0 late"]);
    let mut b2 = connect(&server, "b2", &bob(), &["download_progress"]).await;
    assert_eq!(about(&drain(&mut b2).await), ["m1@20.0 late"]);
    let mut c2 = connect(&server, "c2", &carol(), &["download_progress"]).await;
    assert_eq!(about(&drain(&mut c2).await), Vec::<String>::new());
    // An operator (a token with role admin) sees all of it, with whom each key is for.
    let operator = format!("Bearer {}", token("op", &["admin"]));
    let (status, body) = server
        .request_with(
            "GET",
            "/api/state?topic=download_progress",
            &[("authorization", &operator)],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["keys"], 2, "{state}");
    assert_eq!(state["audiences"], json!([{"users": ["alice"]}, {"users": ["bob"]}]), "{state}");
    // alice's token sees what alice's subscription gets (and not who else a key is for);
    // without a token, nothing: this server requires tokens.
    let path = format!("/api/state?topic=download_progress&token={}", alice());
    let (status, body) = server.get(&path).await;
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &state["keys"]), (200, &json!(1)), "{state}");
    assert_eq!(about(state["state"].as_array().unwrap()), ["m1@10.0 late"]);
    assert!(state.get("audiences").is_none(), "{state}");
    assert_eq!(server.get("/api/state?topic=download_progress").await.0, 401);

    // A replay after a cut: alice comes back with `since` and gets her own messages only (and
    // her newest m1 again, marked late, as every recovery resends state). Each download's
    // first message opens its throttle window, so each of these goes out at once.
    let subscribed = a.subscribe("download_progress").await;
    let (epoch, seq) = (subscribed["data"]["epoch"].clone(), subscribed["data"]["seq"].clone());
    drop(a);
    publish(&server, download("m3", 30.0, Some(json!({"users": ["bob"]})))).await;
    publish(&server, download("m3", 40.0, Some(json!({"users": ["alice"]})))).await;
    publish(&server, download("m2", 5.0, None)).await;
    let mut a = server.ws(&format!("/ws/a?token={}", alice())).await;
    a.send_json(&json!({"action": "subscribe", "topic": "download_progress",
        "since": {"epoch": epoch, "seq": seq}}))
        .await;
    let replay = drain(&mut a).await;
    assert_eq!(replay[0]["data"]["recovered"], true, "{replay:?}");
    assert_eq!(about(&replay), ["m1@10.0 late", "m3@40.0", "m2@5.0"]);

    // Clearing alice's key tells alice (under the key's own name), no one else.
    drain(&mut b2).await;
    let (status, body) =
        server.request("DELETE", "/api/state/download_progress/m1?user=alice", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(about(&drain(&mut a).await), ["cleared m1"]);
    assert_eq!(about(&drain(&mut b2).await), Vec::<String>::new());
    // bob's key is still there, and clearing without the audience finds nothing of it.
    let (status, _) = server.request("DELETE", "/api/state/download_progress/m1", None).await;
    assert_eq!(status, 404);
    let (status, _) =
        server.request("DELETE", "/api/state/download_progress/m1?user=bob", None).await;
    assert_eq!(status, 200);
    assert_eq!(about(&drain(&mut b2).await), ["cleared m1"]);
}

#[tokio::test]
async fn a_renewed_token_with_another_role_changes_what_arrives_from_then_on() {
    let server = server().await;
    let mut c = connect(&server, "c", &token("carol", &["user"]), &["alerts"]).await;
    publish(&server, alert("ops-1", Some(json!({"roles": ["ops"]})))).await;
    assert_eq!(about(&drain(&mut c).await), Vec::<String>::new());
    c.send_json(&json!({"action": "auth", "token": carol()})).await;
    publish(&server, alert("ops-2", Some(json!({"roles": ["ops"]})))).await;
    publish(&server, alert("users-1", Some(json!({"roles": ["user"]})))).await;
    assert_eq!(about(&drain(&mut c).await), ["ops-2"]);
}

#[tokio::test]
async fn without_tokens_a_connection_gets_only_messages_without_an_audience() {
    let server = TestServer::start(&[]).await;
    let mut anon = server.ws("/ws/anon").await;
    assert_eq!(anon.subscribe("alerts").await["type"], "subscribed");
    publish(&server, alert("for-alice", Some(json!({"users": ["alice"]})))).await;
    publish(&server, alert("for-ops", Some(json!({"roles": ["ops"]})))).await;
    publish(&server, alert("for-all", None)).await;
    assert_eq!(about(&drain(&mut anon).await), ["for-all"]);
    // Published over the WebSocket publish channel too.
    let mut backend = server.ws("/ws/backend").await;
    let mut frame = alert("ws-for-alice", Some(json!({"users": ["alice"]})));
    frame["action"] = json!("publish");
    frame["id"] = json!(1);
    backend.send_json(&frame).await;
    assert_eq!(backend.next_of_type("published").await["data"]["status"], "sent");
    assert_eq!(about(&drain(&mut anon).await), Vec::<String>::new());
}

#[tokio::test]
async fn a_bad_audience_is_refused_with_the_other_problems_and_publishes_nothing() {
    let server = TestServer::start(&[]).await;
    let mut bad = alert("x", Some(json!({"users": [], "roles": ["", 7], "team": ["a"]})));
    bad["data"]["level"] = json!(5);
    let (status, reply) = server.post("/api/publish", &json!([alert("ok", None), bad])).await;
    assert_eq!(status, 400, "{reply}");
    let mut fields: Vec<String> = reply["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["index"], e["field"].as_str().unwrap()))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "1:audience.roles[0]",
            "1:audience.roles[1]",
            "1:audience.team",
            "1:audience.users",
            "1:data.level"
        ],
        "{reply}"
    );
    assert_eq!(server.hub.last_seq(modelcast_protocol::Topic::Alerts), 0);
    let (status, reply) = server.post("/api/publish", &alert("x", Some(json!(["alice"])))).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["field"], "audience");
    // Over the WebSocket: an `error` naming the field.
    let mut backend = server.ws("/ws/backend").await;
    let mut frame = alert("y", Some(json!({"users": ["x".repeat(300)]})));
    frame["action"] = json!("publish");
    frame["id"] = json!("p1");
    backend.send_json(&frame).await;
    let error = backend.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "invalid_message");
    assert!(error["data"]["message"].as_str().unwrap().contains("audience.users[0]"), "{error}");
}

/// What `client` receives until `n` messages are in (or ten seconds pass).
async fn wait_for(client: &mut Client, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < n && tokio::time::Instant::now() < deadline {
        seen.extend(about(&drain(client).await));
    }
    seen
}

/// Across two nodes on Redis: the audience travels with the message through the engine, for
/// live delivery and for the state a later subscriber on the other node gets.
#[tokio::test]
async fn across_two_nodes_on_redis_the_audience_holds() {
    let redis = Redis::start(false);
    let args = ["--jwt-secret", SECRET];
    let n0 = Node::on(&redis, "n0", &args).await;
    let n1 = Node::on(&redis, "n1", &args).await;
    let mut a = n1.ws(&format!("a?token={}", alice())).await;
    let mut b = n1.ws(&format!("b?token={}", bob())).await;
    for client in [&mut a, &mut b] {
        assert_eq!(client.subscribe("download_progress").await["type"], "subscribed");
    }
    let body = json!([
        download("m1", 10.0, Some(json!({"users": ["alice"]}))),
        download("m1", 20.0, Some(json!({"users": ["bob"]}))),
        download("m2", 30.0, None),
    ]);
    let (status, _, reply) = n0.publish(&body, &[]).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(wait_for(&mut a, 2).await, ["m1@10.0", "m2@30.0"]);
    assert_eq!(wait_for(&mut b, 2).await, ["m1@20.0", "m2@30.0"]);
    // State on the other node (it got the messages from Redis), per audience.
    let mut a0 = n0.ws(&format!("a0?token={}", alice())).await;
    assert_eq!(a0.subscribe("download_progress").await["type"], "subscribed");
    assert_eq!(about(&drain(&mut a0).await), ["m1@10.0 late", "m2@30.0 late"]);
    let mut b0 = n0.ws(&format!("b0?token={}", bob())).await;
    assert_eq!(b0.subscribe("download_progress").await["type"], "subscribed");
    assert_eq!(about(&drain(&mut b0).await), ["m1@20.0 late", "m2@30.0 late"]);
}

/// The in-process notifiers: `Notifiers::to(audience)` publishes one user's downloads to that
/// user, and the stale watchdog marks each user's silent download stale for that user only,
/// even when another user downloads the same model.
#[tokio::test]
async fn in_process_notifiers_publish_to_an_audience_and_the_watchdog_keeps_it() {
    let server = TestServer::start(&["--jwt-secret", SECRET, "--stale-after", "0.4"]).await;
    let mut a = connect(&server, "a", &alice(), &["download_progress"]).await;
    let mut b = connect(&server, "b", &bob(), &["download_progress"]).await;
    let for_alice = server.notifiers.to(modelcast_hub::Audience::users(["alice"]));
    let for_bob = server.notifiers.to(modelcast_hub::Audience::users(["bob"]));
    for_alice.downloads().started("m1", 100.0);
    for_bob.downloads().started("m1", 200.0);
    for_bob.downloads().progress("m1", 50.0, 200.0, 5.0);
    let statuses = |frames: &[Value]| -> Vec<String> {
        frames
            .iter()
            .filter_map(|f| {
                let data = &f["data"];
                let status = data.get("new_status").or(data.get("status"))?;
                Some(format!("{}:{}", f["type"].as_str()?, status.as_str()?))
            })
            .collect()
    };
    assert_eq!(statuses(&drain(&mut a).await), ["download_status_change:downloading"]);
    assert_eq!(
        statuses(&drain(&mut b).await),
        ["download_status_change:downloading", "download_progress_update:downloading"]
    );
    // Only bob keeps reporting; alice's download goes silent and is marked stale for her.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    while !seen_a.iter().any(|s: &String| s.ends_with(":stale"))
        && tokio::time::Instant::now() < deadline
    {
        for_bob.downloads().progress("m1", 60.0, 200.0, 5.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen_a.extend(statuses(&drain(&mut a).await));
        seen_b.extend(statuses(&drain(&mut b).await));
    }
    assert_eq!(seen_a, ["download_status_change:stale"]);
    assert!(!seen_b.iter().any(|s| s.ends_with(":stale")), "{seen_b:?}");
    assert_eq!(for_alice.downloads().active(), ["m1"]);
}

/// A batch never mixes audiences: model status updates of one window go out as one batch per
/// audience, each to its own audience (hub connections, no sockets).
#[tokio::test]
async fn a_batch_window_makes_one_batch_per_audience() {
    use modelcast_hub::{Audience, Delivery, Hub, HubConfig, SubscribeOptions, Viewer};
    use modelcast_notifiers::{Policy, PolicyConfig};
    use modelcast_protocol::Topic;
    use modelcast_tests::msg::model_status;

    let hub = Hub::new(HubConfig::default());
    let policy = Policy::new(&hub, PolicyConfig::default().batch_window(Duration::from_millis(50)));
    let viewer = |user: &str| {
        let conn = hub.connect();
        conn.set_viewer(Viewer::new(user, ["user"]));
        conn.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
        conn
    };
    let (a, b) = (viewer("alice"), viewer("bob"));
    policy.to(Audience::users(["alice"])).publish([model_status("m1", 1.0)]);
    policy.to(Audience::users(["bob"])).publish([model_status("m2", 2.0)]);
    policy.to(Audience::users(["bob"])).publish([model_status("m3", 3.0)]);
    policy.to(Audience::users(["alice"])).publish([model_status("m4", 4.0)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let models = |conn: &modelcast_hub::Connection| {
        let mut out: Vec<Delivery> = Vec::new();
        conn.try_recv(&mut out, 100).unwrap();
        out.iter()
            .map(|d| serde_json::from_str::<Value>(d.frame().as_str()).unwrap())
            .filter(|f| f["type"] == "batch_model_status_update")
            .map(|f| {
                f["data"]["models"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["model_id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(models(&a), [["m1", "m4"]]);
    assert_eq!(models(&b), [["m2", "m3"]]);
    // Each part is its audience's own state: a later subscriber gets its keys only.
    let a2 = viewer("alice");
    let mut out: Vec<Delivery> = Vec::new();
    a2.try_recv(&mut out, 100).unwrap();
    let retained: Vec<String> = out
        .iter()
        .map(|d| serde_json::from_str::<Value>(d.frame().as_str()).unwrap())
        .filter(|f| f["type"] == "model_status_update")
        .map(|f| f["data"]["model_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(retained, ["m1", "m4"]);
}

/// Server-Sent Events take the token's viewer too: each stream gets its own user's messages.
#[tokio::test]
async fn event_streams_receive_their_tokens_audience_only() {
    use modelcast_tests::server_util::Sse;
    let server = server().await;
    let open = |token: String| {
        let path = format!("/sse?topic=alerts&token={token}");
        async move { Sse::open(server.addr, &path, &[]).await }
    };
    let mut a = open(alice()).await;
    let mut b = open(bob()).await;
    for sse in [&mut a, &mut b] {
        assert_eq!(sse.status(), 200, "{}", sse.head);
        sse.until("subscribed").await;
    }
    publish(&server, alert("for-alice", Some(json!({"users": ["alice"]})))).await;
    publish(&server, alert("for-all", None)).await;
    let ids = |events: Vec<modelcast_tests::server_util::Event>| -> Vec<String> {
        events.iter().map(|e| e.data["data"]["alert_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(a.messages(2).await), ["for-alice", "for-all"]);
    assert_eq!(ids(b.messages(1).await), ["for-all"]);
}

/// The names an audience or a viewer makes the hub keep are freed with their owner: a
/// message's audience with its history entry, a connection's viewer with the connection (or
/// when a renewal replaces it).
#[tokio::test]
async fn audience_and_viewer_names_are_freed_with_their_owner() {
    use modelcast_hub::{Audience, Hub, HubConfig, Publish, SubscribeOptions, Viewer};
    use modelcast_protocol::Topic;
    use modelcast_tests::msg;

    let hub = Hub::new(HubConfig::default().history_size(1));
    let conn = hub.connect();
    conn.set_viewer(Viewer::new("viewer-before", ["role-before"]));
    conn.subscribe(Topic::Alerts, SubscribeOptions::default()).unwrap();
    assert!(hub.knows_key("viewer-before") && hub.knows_key("role-before"));
    conn.set_viewer(Viewer::new("viewer-after", Vec::<&str>::new()));
    assert!(!hub.knows_key("viewer-before") && !hub.knows_key("role-before"), "renewed away");

    let to_once = Audience::new(["only-once"], ["role-once"]);
    hub.publish(Publish::new(msg::alert("a1")).unwrap().audience(to_once));
    assert!(hub.knows_key("only-once") && hub.knows_key("role-once"), "held by history");
    hub.publish(Publish::new(msg::alert("a2")).unwrap());
    assert!(!hub.knows_key("only-once") && !hub.knows_key("role-once"), "gone with its entry");

    drop(conn);
    assert!(!hub.knows_key("viewer-after"), "gone with the connection");
}
