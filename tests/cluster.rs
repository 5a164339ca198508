//! Several nodes on Redis behave, to every client, as one server — and a single node (the
//! memory engine) passes the same conformance tests. Real processes: a private `redis-server`
//! per test and `modelcast` binaries, real sockets, real WebSocket clients.

use std::time::Duration;

use modelcast_tests::cluster_util::{Node, Redis, alert, free_port, progress};
use modelcast_tests::server_util::{BinaryServer, Client, PATIENCE, binary, http_request_full};
use serde_json::{Value, json};

/// One node without Redis, or `n` nodes on a private Redis.
struct Cluster {
    redis: Option<Redis>,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn memory(args: &[&str]) -> Self {
        Cluster { redis: None, nodes: vec![Node::start(args).await] }
    }

    async fn redis(n: usize, aof: bool, args: &[&str]) -> Self {
        let redis = Redis::start(aof);
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Node::on(&redis, &format!("n{i}"), args).await);
        }
        Cluster { redis: Some(redis), nodes }
    }

    /// Node `i` (on a single node, always that one).
    fn node(&self, i: usize) -> &Node {
        &self.nodes[i % self.nodes.len()]
    }
}

/// Subscribes to `topic` (with `since`, if given); returns the `subscribed` reply's data.
async fn subscribe(client: &mut Client, topic: &str, since: Option<(&str, u64)>) -> Value {
    let mut request = json!({"action": "subscribe", "topic": topic});
    if let Some((epoch, seq)) = since {
        request["since"] = json!({"epoch": epoch, "seq": seq});
    }
    client.send_json(&request).await;
    client.next_of_type("subscribed").await["data"].clone()
}

/// The next `n` frames carrying a `seq` (messages), in arrival order.
async fn messages(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = client.next_json().await;
        if frame.get("seq").is_some() {
            out.push(frame);
        }
    }
    out
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

fn alert_ids(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["data"]["alert_id"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Publishes `body` on `node`, expecting success; the `seq`s it got.
async fn publish_ok(node: &Node, body: &Value, headers: &[(&str, &str)]) -> Vec<u64> {
    let (status, _, reply) = node.publish(body, headers).await;
    assert_eq!(status, 202, "{reply}");
    reply["accepted"].as_array().unwrap().iter().filter_map(|a| a["seq"].as_u64()).collect()
}

/// Publishes `body` as a careful backend does: with an `Idempotency-Key`, retrying on 503
/// (e.g. the first request after Redis restarted meets the old, broken connection).
async fn publish_retrying(node: &Node, body: &Value, key: &str) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, headers, reply) = node.publish(body, &[("idempotency-key", key)]).await;
        if status == 503 && tokio::time::Instant::now() < deadline {
            assert!(headers.contains_key("retry-after"), "{reply}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 202, "{reply}");
        return reply["accepted"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["seq"].as_u64())
            .collect();
    }
}

/// Nothing more arrives within a short while.
async fn quiet(client: &mut Client) {
    use futures_util::StreamExt;
    let next = tokio::time::timeout(Duration::from_millis(300), client.ws.next()).await;
    assert!(next.is_err(), "unexpected frame: {next:?}");
}

// ---- the conformance suite: memory and Redis alike ------------------------------------

/// Concurrent publishers on every node make one contiguous sequence, and every subscriber on
/// every node sees the same messages at the same `seq` under the same epoch.
async fn one_sequence(cluster: Cluster) {
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for i in 0..3 {
        let mut client = cluster.node(i).ws(&format!("c{i}")).await;
        epochs.push(subscribe(&mut client, "alerts", None).await["epoch"].clone());
        clients.push(client);
    }
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");
    let per_node = 30;
    let publishers = (0..3).map(|i| {
        let node = cluster.node(i);
        async move {
            for k in 0..per_node {
                publish_ok(node, &alert(&format!("n{i}-{k}")), &[]).await;
            }
        }
    });
    futures_util::future::join_all(publishers).await;
    let total = 3 * per_node;
    let mut orders = Vec::new();
    for client in &mut clients {
        let frames = messages(client, total).await;
        assert_eq!(seqs(&frames), (1..=total as u64).collect::<Vec<_>>());
        orders.push(alert_ids(&frames));
    }
    assert!(orders.iter().all(|o| *o == orders[0]), "every node delivers the same order");
}

/// A client that loses node 0 recovers on node 1 with `since`: exactly what it missed.
async fn recovery_on_another_node(cluster: Cluster) {
    let mut a = cluster.node(0).ws("a").await;
    let epoch = subscribe(&mut a, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    for k in 0..5 {
        publish_ok(cluster.node(1), &alert(&format!("x{k}")), &[]).await;
    }
    assert_eq!(seqs(&messages(&mut a, 5).await), [1, 2, 3, 4, 5]);
    drop(a);
    for k in 5..8 {
        publish_ok(cluster.node(2), &alert(&format!("x{k}")), &[]).await;
    }
    let mut b = cluster.node(1).ws("b").await;
    let reply = subscribe(&mut b, "alerts", Some((&epoch, 5))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let missed = messages(&mut b, 3).await;
    assert_eq!(seqs(&missed), [6, 7, 8]);
    assert_eq!(alert_ids(&missed), ["x5", "x6", "x7"]);
    quiet(&mut b).await;
}

/// Recovery from before what history holds: not recovered, the history that is left.
async fn gap_over_history(cluster: Cluster) {
    let mut sub = cluster.node(2).ws("g").await;
    let epoch = subscribe(&mut sub, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    for k in 0..12 {
        publish_ok(cluster.node(0), &alert(&format!("g{k}")), &[]).await;
    }
    messages(&mut sub, 12).await; // this node has them all (its history holds 5)
    let mut late = cluster.node(1).ws("late").await;
    let reply = subscribe(&mut late, "alerts", Some((&epoch, 1))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["seq"], 7, "continues after the oldest message kept: {reply}");
    assert_eq!(seqs(&messages(&mut late, 5).await), [8, 9, 10, 11, 12]);
}

/// Current state published on one node reaches a new subscriber on another; a retried publish
/// with the same `Idempotency-Key` (on any node) gets the same `seq` and is delivered once.
async fn state_and_idempotency(cluster: Cluster) {
    publish_ok(cluster.node(0), &progress("m1", 40.0), &[]).await;
    let mut sub = cluster.node(2).ws("s").await;
    let reply = subscribe(&mut sub, "download_progress", None).await;
    assert_eq!(reply["seq"], 1);
    let state = messages(&mut sub, 1).await;
    assert_eq!(state[0]["late"], true);
    assert_eq!(state[0]["data"]["progress_percent"], 40.0);

    let mut alerts = cluster.node(2).ws("i").await;
    subscribe(&mut alerts, "alerts", None).await;
    let key = [("idempotency-key", "retry-7")];
    let first = publish_ok(cluster.node(0), &alert("once"), &key).await;
    let again = publish_ok(cluster.node(1), &alert("once"), &key).await;
    assert_eq!(first, again, "a retry gets the first publish's seq");
    let next = publish_ok(cluster.node(1), &alert("after"), &[]).await;
    assert_eq!(next[0], first[0] + 1, "the retry used no seq");
    let frames = messages(&mut alerts, 2).await;
    assert_eq!(alert_ids(&frames), ["once", "after"]);
    quiet(&mut alerts).await;
}

macro_rules! conformance {
    ($($name:ident($setup:expr, $args:expr);)*) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn memory() {
                $setup(Cluster::memory($args).await).await;
            }
            #[tokio::test]
            async fn redis() {
                $setup(Cluster::redis(3, false, $args).await).await;
            }
        }
    )*};
}

conformance! {
    one_seq(one_sequence, &[]);
    recover_elsewhere(recovery_on_another_node, &[]);
    gap(gap_over_history, &["--history-size", "5"]);
    state_idempotency(state_and_idempotency, &[]);
}

// ---- what only a cluster can do --------------------------------------------------------

/// Waits until `node`'s `/readyz` answers `status`.
async fn ready_is(node: &Node, status: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if node.get("/readyz").await.0 == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never said {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` of a node loses nothing: after its restart the sequence continues under the same
/// epoch and a client recovers on it.
#[tokio::test]
async fn a_killed_node_restarts_into_the_same_sequence() {
    let mut cluster = Cluster::redis(2, false, &[]).await;
    let mut sub = cluster.node(1).ws("k").await;
    let epoch = subscribe(&mut sub, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    for k in 0..3 {
        publish_ok(cluster.node(0), &alert(&format!("k{k}")), &[]).await;
    }
    messages(&mut sub, 3).await;
    drop(sub);
    cluster.nodes[1].kill();
    for k in 3..5 {
        publish_ok(cluster.node(0), &alert(&format!("k{k}")), &[]).await;
    }
    cluster.nodes[1].restart().await;
    let mut again = cluster.node(1).ws("k").await;
    let reply = subscribe(&mut again, "alerts", Some((&epoch, 3))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(alert_ids(&messages(&mut again, 2).await), ["k3", "k4"]);
    assert_eq!(publish_ok(cluster.node(1), &alert("k5"), &[]).await, [6]);
    assert_eq!(seqs(&messages(&mut again, 1).await), [6]);
}

/// Redis restarting with its AOF keeps the epoch: open subscriptions simply continue. Without
/// persistence the epoch changes and every subscriber is told: a new `subscribed`, not
/// recovered, from 0 — never a reused `seq`.
#[tokio::test]
async fn a_redis_restart_keeps_the_epoch_with_aof_and_tells_clients_without() {
    for aof in [true, false] {
        let mut cluster = Cluster::redis(2, aof, &[]).await;
        let mut sub = cluster.node(1).ws("r").await;
        let epoch = subscribe(&mut sub, "alerts", None).await["epoch"].clone();
        for k in 0..3 {
            publish_ok(cluster.node(0), &alert(&format!("r{k}")), &[]).await;
        }
        messages(&mut sub, 3).await;
        cluster.redis.as_mut().unwrap().restart();
        ready_is(cluster.node(0), 200).await;
        ready_is(cluster.node(1), 200).await;
        if !aof {
            let told = sub.next_of_type("subscribed").await["data"].clone();
            assert_ne!(told["epoch"], epoch, "aof={aof}: {told}");
            assert_eq!(told["recovered"], false);
            assert_eq!(told["seq"], 0);
        }
        let seq = publish_retrying(cluster.node(0), &alert("after"), "after-restart").await;
        let expected = if aof { 4 } else { 1 };
        assert_eq!(seq, [expected], "aof={aof}");
        let frame = messages(&mut sub, 1).await;
        assert_eq!(seqs(&frame), [expected], "aof={aof}");
    }
}

/// Redis down: publishes fail fast with 503 and `Retry-After` (no locally made `seq`),
/// recovery gets a retryable error, `/readyz` says why, open sockets stay open. Back up:
/// publishing continues the sequence.
#[tokio::test]
async fn redis_down_fails_fast_and_the_cluster_catches_up_after() {
    let mut cluster = Cluster::redis(2, true, &[]).await;
    let mut sub = cluster.node(1).ws("d").await;
    let epoch = subscribe(&mut sub, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    publish_ok(cluster.node(0), &alert("before"), &[]).await;
    messages(&mut sub, 1).await;
    cluster.redis.as_mut().unwrap().kill();
    ready_is(cluster.node(0), 503).await;
    let (_, body) = cluster.node(0).get("/readyz").await;
    assert!(body.contains("engine_unavailable"), "{body}");
    let started = std::time::Instant::now();
    let (status, headers, reply) = cluster.node(0).publish(&alert("lost?"), &[]).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    let mut other = cluster.node(1).ws("d2").await;
    other
        .send_json(&json!({"action": "subscribe", "topic": "alerts", "id": "r1",
        "since": {"epoch": epoch, "seq": 1}}))
        .await;
    let error = other.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "unavailable", "{error}");
    assert_eq!(error["data"]["request_id"], "r1");

    cluster.redis.as_mut().unwrap().restart();
    ready_is(cluster.node(0), 200).await;
    assert_eq!(publish_retrying(cluster.node(0), &alert("after"), "back").await, [2]);
    let frame = messages(&mut sub, 1).await;
    assert_eq!(alert_ids(&frame), ["after"], "the open socket stayed and continues");
}

/// The pub/sub connections killed mid-burst (`CLIENT KILL TYPE pubsub`): the nodes reconnect
/// and fill the hole from the log — every message arrives once, in order.
#[tokio::test]
async fn a_killed_pubsub_connection_loses_nothing() {
    let cluster = Cluster::redis(2, false, &[]).await;
    let mut sub = cluster.node(1).ws("p").await;
    subscribe(&mut sub, "alerts", None).await;
    let total = 200;
    let publisher = async {
        for k in 0..total {
            if k == total / 2 {
                let killed =
                    cluster.redis.as_ref().unwrap().cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                assert!(killed.is_some_and(|n| n.trim().parse::<u32>().unwrap_or(0) >= 2));
            }
            publish_ok(cluster.node(0), &alert(&format!("p{k}")), &[]).await;
        }
    };
    let (frames, ()) = tokio::join!(messages(&mut sub, total), publisher);
    assert_eq!(seqs(&frames), (1..=total as u64).collect::<Vec<_>>());
    quiet(&mut sub).await;
}

/// Subscribing — fresh and with `since` — during a publish flood on another node: no
/// duplicate, no hole at the boundary between what was sent first and live messages.
#[tokio::test]
async fn subscribing_during_a_flood_has_no_hole_or_duplicate() {
    let cluster = Cluster::redis(3, false, &[]).await;
    let mut early = cluster.node(1).ws("e").await;
    let epoch = subscribe(&mut early, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    let total = 300u64;
    let publisher = async {
        let bodies: Vec<Value> = (0..total).map(|k| alert(&format!("f{k}"))).collect();
        for chunk in bodies.chunks(3) {
            publish_ok(cluster.node(0), &json!(chunk), &[]).await;
        }
    };
    let joiners = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fresh = cluster.node(2).ws("fresh").await;
        let from = subscribe(&mut fresh, "alerts", None).await["seq"].as_u64().unwrap();
        // A position a client can hold: seq 10 exists (node 0 has it). Node 1 may not yet.
        while published(cluster.node(0), "alerts").await < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut recovering = cluster.node(1).ws("since").await;
        let reply = subscribe(&mut recovering, "alerts", Some((&epoch, 10))).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        let a = messages(&mut fresh, (total - from) as usize).await;
        let b = messages(&mut recovering, (total - 10) as usize).await;
        assert_eq!(seqs(&a), (from + 1..=total).collect::<Vec<_>>());
        assert_eq!(seqs(&b), (11..=total).collect::<Vec<_>>());
    };
    tokio::join!(publisher, joiners);
    assert_eq!(seqs(&messages(&mut early, total as usize).await), (1..=total).collect::<Vec<_>>());
}

/// How many messages of `topic` `node` has applied (`/api/stats`).
async fn published(node: &Node, topic: &str) -> u64 {
    let (_, stats) = node.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    stats["topics"][topic]["published"].as_u64().unwrap_or(0)
}

/// `/api/stats` and `welcome` name the node; `/metrics` shows the engine's state.
#[tokio::test]
async fn a_node_says_who_it_is_and_how_its_engine_is() {
    let cluster = Cluster::redis(1, false, &[]).await;
    let (_, stats) = cluster.node(0).get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["node_id"], "n0");
    assert_eq!(stats["engine"]["kind"], "redis");
    assert_eq!(stats["engine"]["up"], true);
    let (_, metrics) = cluster.node(0).get("/metrics").await;
    assert!(metrics.contains("modelcast_engine_up 1"), "{metrics}");
    let url = format!("ws://{}/ws/w", cluster.node(0).addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = Client { ws }.next_json().await;
    assert_eq!(welcome["data"]["node_id"], "n0");
}

/// Redis comes back with a lower `seq` under the same epoch (a replica failover, a lost AOF
/// tail — simulated by rewinding the topic's counter): the nodes fence it with a new epoch and
/// tell their subscribers, so no `seq` they delivered is ever handed out again.
#[tokio::test]
async fn a_rolled_back_log_gets_a_new_epoch_not_reused_numbers() {
    let cluster = Cluster::redis(2, false, &[]).await;
    let mut sub = cluster.node(1).ws("f").await;
    let epoch = subscribe(&mut sub, "alerts", None).await["epoch"].clone();
    for k in 0..5 {
        publish_ok(cluster.node(0), &alert(&format!("f{k}")), &[]).await;
    }
    messages(&mut sub, 5).await;
    let redis = cluster.redis.as_ref().unwrap();
    assert_eq!(
        redis.cli(&["HSET", "mc:{alerts}:meta", "seq", "2"]).map(|s| s.trim().to_owned()),
        Some("0".into())
    );
    // The periodic check (every second) finds the rewind and fences it.
    let told = sub.next_of_type("subscribed").await["data"].clone();
    assert_ne!(told["epoch"], epoch, "{told}");
    assert_eq!(told["recovered"], false);
    assert_eq!(told["seq"], 0, "what the log still holds follows, under the new epoch");
    let next = publish_ok(cluster.node(0), &alert("after"), &[]).await;
    assert_eq!(next, [6], "numbering continues above everything delivered");
    let frames = messages(&mut sub, 6).await;
    assert_eq!(seqs(&frames), [1, 2, 3, 4, 5, 6]);
    assert_eq!(alert_ids(&frames[5..]), ["after"]);
}

/// Redis loses its tail (the stream and the counter go back to 2 of 5) and takes three
/// publishes before any periodic check runs, so its `seq` is back at the node's: the nodes
/// find a different message at a `seq` they hold and fence the topic anyway. Nothing is
/// lost and no number is reused under the old epoch.
#[tokio::test]
async fn a_reused_seq_is_fenced_even_when_the_counter_caught_up() {
    let cluster = Cluster::redis(2, false, &[]).await;
    let mut sub = cluster.node(1).ws("t").await;
    let epoch = subscribe(&mut sub, "alerts", None).await["epoch"].clone();
    for k in 0..5 {
        publish_ok(cluster.node(0), &alert(&format!("t{k}")), &[]).await;
    }
    messages(&mut sub, 5).await;
    let lose_tail = "local kept = redis.call('XRANGE', KEYS[1], '-', '0-2') \
        redis.call('DEL', KEYS[1]) \
        for _, e in ipairs(kept) do redis.call('XADD', KEYS[1], e[1], unpack(e[2])) end \
        redis.call('HSET', KEYS[2], 'seq', 2) return #kept";
    let redis = cluster.redis.as_ref().unwrap();
    let kept = redis.cli(&["EVAL", lose_tail, "2", "mc:{alerts}:log", "mc:{alerts}:meta"]);
    assert_eq!(kept.map(|k| k.trim().to_owned()), Some("2".into()));
    let body = json!([alert("new0"), alert("new1"), alert("new2")]);
    publish_ok(cluster.node(0), &body, &[]).await;
    let told = sub.next_of_type("subscribed").await["data"].clone();
    assert_ne!(told["epoch"], epoch, "{told}");
    assert_eq!(told["recovered"], false);
    // What the log holds under the new epoch follows: t0, t1 and the three new messages.
    let frames = messages(&mut sub, 5).await;
    assert_eq!(alert_ids(&frames), ["t0", "t1", "new0", "new1", "new2"]);
    assert_eq!(seqs(&frames), [1, 2, 3, 4, 5]);
    let next = publish_ok(cluster.node(0), &alert("after"), &[]).await;
    assert_eq!(next, [6], "numbering continues above what the nodes delivered");
}

/// In-process publishers (the demo's notifiers on node 0) go through the engine too: node 1
/// serves their current state, at the same position.
#[tokio::test]
async fn in_process_publishes_reach_every_node() {
    let redis = Redis::start(false);
    let demo = Node::on(&redis, "demo", &["--demo"]).await;
    let other = Node::on(&redis, "other", &[]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, on_demo) = demo.get("/api/state?topic=model_status").await;
        let (_, on_other) = other.get("/api/state?topic=model_status").await;
        let (a, b): (Value, Value) =
            (serde_json::from_str(&on_demo).unwrap(), serde_json::from_str(&on_other).unwrap());
        let models = b["state"].as_array().map_or(0, Vec::len);
        if models > 0 && a["seq"] == b["seq"] {
            assert_eq!(a["epoch"], b["epoch"]);
            assert_eq!(a["state"], b["state"], "the same current state on both nodes");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 1 never got the demo's state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /readyz` of `addr`, once it answers `status` with a reason `reason` accepts: its JSON.
async fn readyz_becomes(
    addr: std::net::SocketAddr,
    status: u16,
    reason: impl Fn(&str) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (got, _, body) =
            http_request_full(addr, "GET", "/readyz", &[], None).await.expect("answers");
        let json: Value = serde_json::from_str(&body).unwrap();
        if got == status && reason(json["reason"].as_str().unwrap_or_default()) {
            return json;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz stayed {got}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Probe finding 13: an evicting Redis started without a word, a Redis refusing writes left
/// only `/readyz` saying so (the log was silent), and an unreachable one was reported as
/// "cannot listen on …".
#[tokio::test]
async fn redis_trouble_is_said_in_the_log_and_readyz() {
    let redis = Redis::start(false);
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]).unwrap();
    let warn = [("MODELCAST_LOG", "warn")];
    let server = BinaryServer::start_logged(&["--redis-url", &redis.url()], &warn).await;
    let ready = readyz_becomes(server.addr, 200, |_| true).await;
    let warning = ready["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("allkeys-lru") && warning.contains("noeviction"), "{ready}");

    // A Redis that turned into a replica refuses writes: 503 at once, and said once at warn.
    redis.cli(&["REPLICAOF", "127.0.0.1", &free_port().to_string()]).unwrap();
    let read_only = |s: &str| s.to_ascii_lowercase().contains("read only");
    readyz_becomes(server.addr, 503, read_only).await;
    let (status, _, _) = http_request_full(
        server.addr,
        "POST",
        "/api/publish",
        &[],
        Some(alert("refused").to_string()),
    )
    .await
    .unwrap();
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_secs(2)).await; // more checks, the same reason
    redis.cli(&["REPLICAOF", "NO", "ONE"]).unwrap();
    readyz_becomes(server.addr, 200, |_| true).await;
    let text = server.log();
    drop(server);
    assert!(text.contains("maxmemory-policy"), "{text}");
    let down_lines = text.lines().filter(|l| l.contains("redis engine is down")).count();
    assert_eq!(down_lines, 1, "once per change of reason: {text}");
    assert!(text.lines().any(|l| l.contains("WARN") && read_only(l)), "{text}");

    // A Redis that wants a password the URL lacks: the node starts, not ready, and says why.
    redis.cli(&["CONFIG", "SET", "requirepass", "a-password-the-node-lacks"]).unwrap();
    let server = BinaryServer::start_logged(&["--redis-url", &redis.url()], &warn).await;
    let no_auth = |s: &str| s.to_ascii_lowercase().contains("auth");
    readyz_becomes(server.addr, 503, no_auth).await; // the reason is stored after it is logged
    let text = server.log();
    assert!(text.lines().any(|l| l.contains("WARN") && no_auth(l)), "{text}");

    // Nothing listens: the error names Redis, not the listener.
    let out = std::process::Command::new(binary())
        .args(["--bind", "127.0.0.1:0", "--redis-url"])
        .arg(format!("redis://127.0.0.1:{}/0", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("MODELCAST_REDIS_URL: cannot reach Redis at"), "{said}");
    assert!(!said.contains("cannot listen"), "{said}");
}

/// The epoch a new subscriber of `alerts` on `node` is given once it is not one of `not`
/// (the nodes notice a change of Redis at their next check, each second).
async fn alerts_epoch_other_than(node: &Node, not: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut client = node.ws(&format!("e{}", rand::random::<u32>())).await;
        let epoch =
            subscribe(&mut client, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
        if !not.contains(&epoch.as_str()) {
            return epoch;
        }
        assert!(tokio::time::Instant::now() < deadline, "alerts kept its epoch {epoch}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An epoch's generation: its first 8 hex digits.
fn generation(epoch: &str) -> u32 {
    u32::from_str_radix(&epoch[..8], 16).unwrap()
}

/// Redis as a failback leaves it (issue 36, 1): the topic's epoch and log as they were before
/// a failover (`epoch`, newest seq `top`: the messages above it gone), as when the old
/// primary, never restarted, is promoted again before it caught up.
fn fail_back(redis: &Redis, epoch: &str, top: u64, lost: &[u64]) {
    let top = top.to_string();
    let set = redis.cli(&["HSET", "mc:{alerts}:meta", "epoch", epoch, "seq", &top]);
    assert!(set.is_some());
    for seq in lost {
        assert!(redis.cli(&["XDEL", "mc:{alerts}:log", &format!("0-{seq}")]).is_some());
    }
}

/// An epoch, once left, is never current again (issue 36, 1): a failover gives `alerts` a
/// second epoch and a message under it; then Redis goes back to the first epoch's data (a
/// failback to a primary that missed the second). The nodes, which saw the second epoch's
/// generation, fence the first: a client holding a position under it is told
/// (`recovered: false`), never `recovered: true` over the message it cannot get.
#[tokio::test]
async fn an_epoch_that_comes_back_is_fenced_and_a_client_holding_it_is_told() {
    let cluster = Cluster::redis(2, false, &[]).await;
    let redis = cluster.redis.as_ref().unwrap();
    let mut early = cluster.node(1).ws("early").await;
    let first = subscribe(&mut early, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    for k in 0..3 {
        publish_ok(cluster.node(0), &alert(&format!("r{k}")), &[]).await;
    }
    messages(&mut early, 3).await;
    drop(early); // it holds (first, 3)
    // A failover to a replica that missed the third message: the nodes fence it.
    assert!(redis.cli(&["HSET", "mc:{alerts}:meta", "seq", "2"]).is_some());
    let second = alerts_epoch_other_than(cluster.node(0), &[&first]).await;
    alerts_epoch_other_than(cluster.node(1), &[&first]).await;
    assert_eq!(publish_ok(cluster.node(0), &alert("under-second"), &[]).await, [4]);
    fail_back(redis, &first, 3, &[4]);
    let third = alerts_epoch_other_than(cluster.node(1), &[&second]).await;
    assert_ne!(third, first, "an epoch once left is never current again");
    assert!(generation(&third) > generation(&second), "{third} after {second}");
    let mut back = cluster.node(1).ws("back").await;
    let told = subscribe(&mut back, "alerts", Some((&first, 3))).await;
    assert_eq!(told["recovered"], false, "{told}");
    assert_eq!(told["epoch"], third.as_str());
}

/// The same failback after every node restarted (their memory of the second epoch gone): a
/// client holding a position under the second epoch is the evidence — its generation is
/// later than the topic's — so the node fences the first epoch before answering; the client
/// is told, and so is one holding a position under the first.
#[tokio::test]
async fn a_client_from_a_later_epoch_fences_one_that_came_back_after_the_nodes_restarted() {
    let mut cluster = Cluster::redis(1, false, &[]).await;
    let mut early = cluster.node(0).ws("early").await;
    let first = subscribe(&mut early, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    for k in 0..3 {
        publish_ok(cluster.node(0), &alert(&format!("c{k}")), &[]).await;
    }
    messages(&mut early, 3).await;
    drop(early);
    let redis = cluster.redis.as_ref().unwrap();
    assert!(redis.cli(&["HSET", "mc:{alerts}:meta", "seq", "2"]).is_some());
    let second = alerts_epoch_other_than(cluster.node(0), &[&first]).await;
    let mut late = cluster.node(0).ws("late").await;
    subscribe(&mut late, "alerts", None).await;
    assert_eq!(publish_ok(cluster.node(0), &alert("under-second"), &[]).await, [4]);
    messages(&mut late, 1).await;
    drop(late); // it holds (second, 4)
    cluster.nodes[0].kill();
    fail_back(cluster.redis.as_ref().unwrap(), &first, 3, &[4]);
    cluster.nodes[0].restart().await;
    let mut late = cluster.node(0).ws("late").await;
    let told = subscribe(&mut late, "alerts", Some((&second, 4))).await;
    assert_eq!(told["recovered"], false, "{told}");
    let now = told["epoch"].as_str().unwrap();
    assert!(now != first && now != second, "a new epoch: {told}");
    let mut early = cluster.node(0).ws("early").await;
    let told = subscribe(&mut early, "alerts", Some((&first, 3))).await;
    assert_eq!(told["recovered"], false, "{told}");
}

/// A client resuming with a position from before an epoch change gets everything the log
/// still holds (issue 36, 4) — also the new epoch's messages when the node's history no
/// longer reaches back to the first — as after a gap within one epoch, and is told.
#[tokio::test]
async fn a_resume_across_an_epoch_change_replays_everything_the_log_holds() {
    let cluster = Cluster::redis(2, false, &["--history-size", "5"]).await;
    let mut early = cluster.node(1).ws("early").await;
    let first = subscribe(&mut early, "alerts", None).await["epoch"].as_str().unwrap().to_owned();
    for k in 0..8 {
        publish_ok(cluster.node(0), &alert(&format!("h{k}")), &[]).await;
    }
    messages(&mut early, 6).await;
    drop(early); // it holds (first, 6)
    let redis = cluster.redis.as_ref().unwrap();
    assert!(redis.cli(&["HSET", "mc:{alerts}:meta", "seq", "7"]).is_some());
    alerts_epoch_other_than(cluster.node(0), &[&first]).await;
    alerts_epoch_other_than(cluster.node(1), &[&first]).await;
    assert_eq!(publish_ok(cluster.node(0), &alert("n0"), &[]).await, [9]);
    assert_eq!(publish_ok(cluster.node(0), &alert("n1"), &[]).await, [10]);
    let mut back = cluster.node(1).ws("back").await;
    let told = subscribe(&mut back, "alerts", Some((&first, 6))).await;
    assert_eq!(told["recovered"], false, "{told}");
    let frames = messages(&mut back, 5).await;
    assert_eq!(seqs(&frames), [6, 7, 8, 9, 10], "all five the log holds");
    assert_eq!(alert_ids(&frames[3..]), ["n0", "n1"]);
}
