//! The Rust client against the real server: nothing lost or duplicated across a dropped
//! connection or a listener restart, retained state first, dead servers detected, gaps said,
//! and `modelcast-watch --json`.

use std::time::Duration;

use futures_util::StreamExt;
use modelcast_client::{Client, ConnectOptions, Event, Subscription};
use modelcast_protocol::{ServerMessage, Topic};
use modelcast_tests::cluster_util::{Node, Redis, progress};
use modelcast_tests::msg::alert;
use modelcast_tests::server_util::{PATIENCE, Proxy, TestServer};
use serde_json::Value;

fn fast() -> ConnectOptions {
    ConnectOptions::default()
        .reconnect_delays(Duration::from_millis(20), Duration::from_millis(200))
}

/// Reads `n` live messages, asserting seqs are consecutive from `from`; returns the last.
async fn expect_consecutive(sub: &mut Subscription, from: u64, n: u64) -> u64 {
    let mut next = from;
    while next < from + n {
        let event = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("an event in time")
            .expect("open");
        match event {
            Event::Message { seq, late: false, .. } => {
                assert_eq!(seq, next, "lost or duplicated around seq {next}");
                next += 1;
            }
            Event::Message { late: true, .. } => {}
            other => panic!("unexpected {other:?} at seq {next}"),
        }
    }
    next - 1
}

/// A publisher runs while the TCP connection is cut again and again: every message arrives
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_and_duplicate_nothing() {
    const TOTAL: u64 = 2000;
    let server = TestServer::start(&[]).await;
    let proxy = Proxy::start(server.addr).await;
    let client = Client::connect(&format!("ws://{}/ws/svc", proxy.addr), fast()).await.unwrap();
    let mut sub = client.subscribe(Topic::Alerts).await.unwrap();
    let hub = server.hub.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..TOTAL {
            modelcast_tests::msg::send(&hub, alert(&format!("a{i}"))).unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let cutter = tokio::spawn(async move {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            proxy.drop_all();
        }
        proxy
    });
    assert_eq!(expect_consecutive(&mut sub, 1, TOTAL).await, TOTAL);
    publisher.await.unwrap();
    let _proxy = cutter.await.unwrap();
    assert!(
        client.stats().reconnects >= 3,
        "only {} reconnects: the test cut too little",
        client.stats().reconnects
    );
}

/// The server's listener goes away (clients closed with 1001) and comes back on the same
/// address in front of the same hub: the client recovers every message, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_restart_loses_and_duplicates_nothing() {
    let server = TestServer::start(&[]).await;
    let (addr, notifiers, hub) = (server.addr, server.notifiers.clone(), server.hub.clone());
    let client = Client::connect(&format!("ws://{addr}/ws/svc"), fast()).await.unwrap();
    let mut sub = client.subscribe(Topic::Alerts).await.unwrap();
    for i in 0..100 {
        modelcast_tests::msg::send(&hub, alert(&format!("before-{i}"))).unwrap();
    }
    expect_consecutive(&mut sub, 1, 100).await;
    server.stop().await.unwrap();
    for i in 0..100 {
        modelcast_tests::msg::send(&hub, alert(&format!("while-down-{i}"))).unwrap();
    }
    let _restarted = TestServer::restart_on(addr, notifiers).await;
    for i in 0..100 {
        modelcast_tests::msg::send(&hub, alert(&format!("after-{i}"))).unwrap();
    }
    assert_eq!(expect_consecutive(&mut sub, 101, 200).await, 300);
    assert!(client.stats().reconnects >= 1);
}

#[tokio::test]
async fn the_first_subscribe_delivers_the_retained_state_first() {
    let server = TestServer::start(&[]).await;
    server.notifiers.downloads().started("m", 100.0);
    server.notifiers.downloads().progress("m", 40.0, 100.0, 5.0);
    let client = Client::connect(&format!("ws://{}/ws/svc", server.addr), fast()).await.unwrap();
    let mut sub = client.subscribe(Topic::DownloadProgress).await.unwrap();
    match tokio::time::timeout(PATIENCE, sub.next()).await.unwrap().unwrap() {
        Event::Message {
            late: true, message: ServerMessage::DownloadProgressUpdate(p), ..
        } => {
            assert_eq!(p.progress_percent, 40.0);
        }
        other => panic!("expected the retained progress, got {other:?}"),
    }
    server.notifiers.downloads().paused("m", "user");
    match tokio::time::timeout(PATIENCE, sub.next()).await.unwrap().unwrap() {
        Event::Message { late: false, message: ServerMessage::DownloadStatusChange(c), .. } => {
            assert_eq!(c.new_status.as_str(), "paused");
        }
        other => panic!("expected the live status change, got {other:?}"),
    }
}

/// A server that stops answering without closing the connection is detected by silence and
/// reconnected to; what was published meanwhile is recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_detected_by_the_heartbeat() {
    let server = TestServer::start(&[]).await;
    let proxy = Proxy::start(server.addr).await;
    let options = fast().dead_after(Duration::from_millis(600));
    let client = Client::connect(&format!("ws://{}/ws/svc", proxy.addr), options).await.unwrap();
    let mut sub = client.subscribe(Topic::Alerts).await.unwrap();
    modelcast_tests::msg::send(&server.hub, alert("one")).unwrap();
    expect_consecutive(&mut sub, 1, 1).await;
    proxy.freeze_all();
    for i in 0..5 {
        modelcast_tests::msg::send(&server.hub, alert(&format!("during-{i}"))).unwrap();
    }
    assert_eq!(expect_consecutive(&mut sub, 2, 5).await, 6);
    assert_eq!(client.stats().reconnects, 1);
}

/// When the missed range is no longer held, the stream says so, then delivers what history
/// still holds, then the current state, then live messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecoverable_gap_is_reported_then_the_current_state_follows() {
    let server = TestServer::start(&["--history-size", "5"]).await;
    let proxy = Proxy::start(server.addr).await;
    let client = Client::connect(
        &format!("ws://{}/ws/svc", proxy.addr),
        fast().dead_after(Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let mut sub = client.subscribe(Topic::DownloadProgress).await.unwrap();
    let d = server.notifiers.downloads();
    d.started("m", 100.0);
    expect_consecutive(&mut sub, 1, 1).await;
    proxy.freeze_all();
    for i in 0..20 {
        d.paused("m", &format!("p{i}"));
    }
    let mut saw_gap = false;
    let mut replayed = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, sub.next()).await.unwrap().unwrap() {
            Event::Gap { last_seq } => {
                assert_eq!(last_seq, 1);
                saw_gap = true;
            }
            // What history still holds (5 messages) follows the gap, in order.
            Event::Message { late: false, seq, .. } => {
                assert!(saw_gap, "the gap is announced before the replay");
                replayed.push(seq);
            }
            Event::Message { late: true, seq, message: ServerMessage::DownloadStatusChange(c) } => {
                assert_eq!(replayed, (17..=21).collect::<Vec<_>>(), "the history after the gap");
                assert_eq!(
                    (seq, c.reason.as_str()),
                    (21, "p19"),
                    "the current state is the newest"
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A failover's new epoch (here: Redis back with `appendfsync everysec`, which the nodes fence
/// with a new epoch) replays the log numbered anew: the stream says `Gap`, then hands the
/// application only what it had not delivered — no replayed message and no state frame twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_a_new_epoch_delivers_nothing_twice() {
    let mut redis = Redis::with_aof(Some("everysec"));
    let node = Node::on(&redis, "n", &[]).await;
    let client = Client::connect(&format!("ws://{}/ws/svc", node.addr), fast()).await.unwrap();
    let mut sub = client.subscribe(Topic::DownloadProgress).await.unwrap();
    for k in 0..5 {
        let (status, _, reply) = node.publish(&progress(&format!("m{k}"), 10.0), &[]).await;
        assert_eq!(status, 202, "{reply}");
    }
    let mut before = Vec::new();
    while before.len() < 5 {
        match tokio::time::timeout(PATIENCE, sub.next()).await.unwrap().unwrap() {
            Event::Message {
                late: false,
                message: ServerMessage::DownloadProgressUpdate(p),
                ..
            } => {
                before.push(p.model_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    redis.restart();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for k in 5..7 {
        loop {
            let (status, _, reply) = node.publish(&progress(&format!("m{k}"), 10.0), &[]).await;
            if status == 202 {
                break;
            }
            assert!(status == 503 && tokio::time::Instant::now() < deadline, "{status} {reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut gap = false;
    let mut after = Vec::new();
    // m5's retry may be `held` by the throttle (its failed attempt opened the window): it
    // follows when the window ends, after m6.
    while after.iter().filter(|(_, late)| !late).count() < 2 {
        match tokio::time::timeout(PATIENCE, sub.next()).await.unwrap().unwrap() {
            Event::Gap { last_seq } => {
                assert_eq!(last_seq, 5);
                gap = true;
            }
            Event::Message { late, message: ServerMessage::DownloadProgressUpdate(p), .. } => {
                assert!(gap, "the gap is said before anything of the new epoch");
                after.push((p.model_id, late));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut models: Vec<&str> = after.iter().map(|(m, _)| m.as_str()).collect();
    models.sort_unstable();
    assert_eq!(models, ["m5", "m6"], "only what was not delivered before: {after:?}");
    assert!(client.stats().duplicates_discarded >= 5, "{:?}", client.stats());
}

/// `modelcast-watch <extra> alerts` against `server`, its stdout piped, once it is subscribed.
async fn watch_alerts(server: &TestServer, extra: &[&str]) -> tokio::process::Child {
    let bin = modelcast_tests::server_util::built_binary("modelcast-client", "modelcast-watch");
    let url = format!("ws://{}/ws/watcher", server.addr);
    let child = tokio::process::Command::new(bin)
        .args(extra)
        .args(["--url", &url, "alerts"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("modelcast-watch starts");
    for _ in 0..200 {
        if server.hub.stats().topic(Topic::Alerts).subscribers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modelcast_watch_json_prints_valid_frames() {
    let server = TestServer::start(&[]).await;
    let mut child = watch_alerts(&server, &["--json"]).await;
    for i in 0..3 {
        modelcast_tests::msg::send(&server.hub, alert(&format!("w{i}"))).unwrap();
    }
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let schema = modelcast_tests::validator("server-message.schema.json");
    for i in 0..3 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("a line");
        let frame: Value = serde_json::from_str(&line).expect("a JSON line");
        assert!(schema.is_valid(&frame), "invalid frame: {line}");
        assert_eq!(frame["type"], "alert");
        assert_eq!(frame["topic"], "alerts");
        assert_eq!(frame["seq"], i + 1);
        assert_eq!(frame["data"]["alert_id"], format!("w{i}"));
    }
    // `modelcast-watch --json | head -3`: the reader goes away; the next line ends the
    // program quietly (it used to panic on the broken pipe).
    drop(lines);
    modelcast_tests::msg::send(&server.hub, alert("after-the-pipe-closed")).unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(0), "a closed pipe ends modelcast-watch quietly");
}

/// Against a server that requires tokens: the client authenticates with a URL token or a
/// first-message token, keeps doing so across reconnects, and a missing token fails clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_authenticates_by_url_or_first_message() {
    use modelcast_client::{SubscribeError, TokenMode};
    let secret = "client-secret-0123456789-0123456789";
    let server = TestServer::start(&[
        "--jwt-secret",
        secret,
        "--topic-roles",
        "alerts=ops",
        "--auth-deadline",
        "1",
    ])
    .await;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        + 3600;
    let token = |roles: &[&str]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "svc", "roles": roles, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let proxy = Proxy::start(server.addr).await;
    for mode in [TokenMode::Query, TokenMode::FirstMessage] {
        let options = fast().token(token(&["ops"])).token_mode(mode);
        let client = Client::connect(&format!("ws://{}/ws/svc-{mode:?}", proxy.addr), options)
            .await
            .unwrap();
        let mut sub = client.subscribe(Topic::Alerts).await.unwrap();
        let first = server.hub.last_seq(Topic::Alerts);
        modelcast_tests::msg::send(&server.hub, alert("before")).unwrap();
        expect_consecutive(&mut sub, first + 1, 1).await;
        proxy.drop_all(); // the reconnect must authenticate again
        // Wait for it: a message published at once may still leave on the old socket.
        let reconnected = async {
            while client.stats().reconnects == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(PATIENCE, reconnected).await.expect("reconnected");
        modelcast_tests::msg::send(&server.hub, alert("after")).unwrap();
        expect_consecutive(&mut sub, first + 2, 1).await;
    }
    let viewer = Client::connect(
        &format!("ws://{}/ws/viewer", server.addr),
        fast().token(token(&["viewer"])),
    )
    .await
    .unwrap();
    match viewer.subscribe(Topic::Alerts).await {
        Err(SubscribeError::Rejected { code, .. }) => assert_eq!(code.as_str(), "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // Without a token the client says so at once (the welcome names the deadline), instead of
    // waiting to be closed.
    let anonymous = Client::connect(&format!("ws://{}/ws/anon", server.addr), fast()).await;
    assert!(
        matches!(anonymous, Err(modelcast_client::ConnectError::TokenRequired { .. })),
        "{anonymous:?}"
    );
    // A raw connection sees the deadline in its welcome, and every request refused until `auth`.
    let mut raw = server.ws_raw("/ws/raw").await;
    let welcome = raw.next_json().await;
    assert_eq!(welcome["data"]["auth_deadline_seconds"], 1.0, "{welcome}");
    raw.send_json(&serde_json::json!({"action": "subscribe", "topic": "model_status", "id": 1}))
        .await;
    let refused = raw.next_of_type("error").await;
    assert_eq!(refused["data"]["code"], "unauthorized", "{refused}");
    let bad =
        Client::connect(&format!("ws://{}/ws/bad", server.addr), fast().token("not-a-jwt")).await;
    assert!(
        matches!(bad, Err(modelcast_client::ConnectError::Rejected { status: 401, .. })),
        "{bad:?}"
    );
}

#[tokio::test]
async fn dropping_a_subscription_ends_it_on_the_server() {
    let server = TestServer::start(&[]).await;
    let client = Client::connect(&format!("ws://{}/ws/svc", server.addr), fast()).await.unwrap();
    let sub = client.subscribe(Topic::Alerts).await.unwrap();
    assert_eq!(server.hub.stats().topic(Topic::Alerts).subscribers, 1);
    drop(sub);
    let mut gone = false;
    for _ in 0..200 {
        if server.hub.stats().topic(Topic::Alerts).subscribers == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the server still holds the dropped subscription");
    // The topic can be subscribed again.
    assert!(client.subscribe(Topic::Alerts).await.is_ok());
}

/// Part of issue 15: while the server is down `modelcast-watch` said nothing; it now says the
/// connection was lost, and when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modelcast_watch_shows_the_connection_state() {
    let server = TestServer::start(&[]).await;
    let addr = server.addr;
    let notifiers = server.notifiers.clone();
    let mut child = watch_alerts(&server, &[]).await;
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut wait_for = async |needle: &str| loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("a line with `{needle}` in time"))
            .unwrap()
            .expect("a line");
        if line.contains(needle) {
            return line;
        }
    };
    server.stop().await.unwrap();
    wait_for("lost to").await;
    let _restarted = TestServer::restart_on(addr, notifiers).await;
    wait_for("reconnected").await;
    let _ = child.kill().await;
}

/// `Client::publish`: a backend publishes typed messages over its connection and gets each
/// one's `seq`; the server's refusals come back as errors naming the problem.
#[tokio::test]
async fn a_client_publishes_over_its_connection() {
    let key = "0123456789abcdef-publish";
    let server = TestServer::start(&["--publish-key", key]).await;
    let url = format!("ws://{}/ws/reader", server.addr);
    let reader = Client::connect(&url, fast()).await.unwrap();
    let mut alerts = reader.subscribe(Topic::Alerts).await.unwrap();
    let url = format!("ws://{}/ws/backend", server.addr);
    let backend = Client::connect(&url, fast().publish_key(key)).await.unwrap();
    let first = backend.publish(&alert("a1")).await.unwrap();
    assert_eq!((first.status.as_str(), first.seq), ("sent", Some(1)));
    // Many in flight at once, answered in order.
    let answers = futures_util::future::join_all((2..=20).map(|i| {
        let backend = backend.clone();
        async move { backend.publish(&alert(&format!("a{i}"))).await.unwrap().seq }
    }))
    .await;
    let mut seqs: Vec<u64> = answers.into_iter().flatten().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=20).collect::<Vec<_>>());
    expect_consecutive(&mut alerts, 1, 20).await;

    // Refusals: a control message never leaves; a bad field is named; no key, no publishing.
    let pong = ServerMessage::Pong(modelcast_protocol::Pong {
        request_id: None,
        timestamp: modelcast_tests::msg::ts(),
    });
    assert!(matches!(
        backend.publish(&pong).await,
        Err(modelcast_client::PublishError::NotATopicMessage("pong"))
    ));
    let mut bad = alert("bad");
    if let ServerMessage::Alert(a) = &mut bad {
        a.level = modelcast_protocol::AlertLevel::Other("apocalyptic".into());
    }
    let err = backend.publish(&bad).await.unwrap_err().to_string();
    assert!(err.contains("invalid_message") && err.contains("data.level"), "{err}");
    let anonymous = Client::connect(&url.replace("backend", "anon"), fast()).await.unwrap();
    let err = anonymous.publish(&alert("x")).await.unwrap_err().to_string();
    assert!(err.contains("forbidden") && err.contains("publish key"), "{err}");
}

/// `Client::close` while the server is down ends the client: it does not reconnect when the
/// server is back (a close was once a queued command, read only once connected again), and
/// calling it again and again keeps nothing. A publish after it is refused, never left waiting.
#[tokio::test]
async fn close_while_reconnecting_ends_the_client() {
    let server = TestServer::start(&[]).await;
    let addr = server.addr;
    let notifiers = server.notifiers.clone();
    let client = Client::connect(&format!("ws://{addr}/ws/closing"), fast()).await.unwrap();
    server.stop().await.unwrap();
    for _ in 0..200 {
        if !client.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!client.is_connected());
    for _ in 0..10_000 {
        client.close();
    }
    let _restarted = TestServer::restart_on(addr, notifiers).await;
    // Several reconnect delays (20–200 ms): a client still trying would be back by now.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.stats().reconnects, 0, "a closed client does not reconnect");
    assert!(!client.is_connected());
    let refused = tokio::time::timeout(PATIENCE, client.publish(&alert("after"))).await;
    assert!(matches!(refused, Ok(Err(modelcast_client::PublishError::Closed))), "{refused:?}");
}

/// An operator's disconnect (4403) stops the client: its subscriptions say `Revoked` and end,
/// and it never reconnects (the token is still valid: a reconnect would get in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_connection_stops_and_says_so() {
    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";
    const KEY: &str = "a-publish-key-of-32-characters--";
    let server = TestServer::start(&["--jwt-secret", SECRET, "--publish-key", KEY]).await;
    let token = modelcast_tests::server_util::hs256_token(SECRET, "mallory", &[]);
    let client =
        Client::connect(&format!("ws://{}/ws/m", server.addr), fast().token(token)).await.unwrap();
    let mut alerts = client.subscribe(Topic::Alerts).await.unwrap();
    let (status, answer) = modelcast_tests::server_util::http_request(
        server.addr,
        "POST",
        "/api/disconnect",
        &[("authorization", &format!("Bearer {KEY}"))],
        Some(r#"{"user": "mallory"}"#.to_owned()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let said = tokio::time::timeout(PATIENCE, alerts.next()).await.expect("in time");
    assert!(matches!(said, Some(Event::Revoked { .. })), "{said:?}");
    assert_eq!(tokio::time::timeout(PATIENCE, alerts.next()).await.expect("in time"), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!client.is_connected());
    assert_eq!(client.stats().reconnects, 0, "never reconnected");
}
