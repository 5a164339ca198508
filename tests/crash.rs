//! The Redis engine under the failures that used to lose acknowledged messages silently or
//! grow a node's memory (issue 24): the whole cluster and Redis dying at once with Redis's AOF
//! tail lost, a client holding a position the log lost, and Redis stopped under a flood of
//! publishes. Real processes: a private `redis-server` and `modelcast` binaries.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use modelcast_tests::cluster_util::{Node, Redis, alert};
use modelcast_tests::server_util::Client;
use serde_json::{Value, json};

/// Subscribes to `alerts` (with `since`, if given); the `subscribed` reply's data.
async fn subscribe(client: &mut Client, since: Option<(&str, u64)>) -> Value {
    let mut request = json!({"action": "subscribe", "topic": "alerts"});
    if let Some((epoch, seq)) = since {
        request["since"] = json!({"epoch": epoch, "seq": seq});
    }
    client.send_json(&request).await;
    client.next_of_type("subscribed").await["data"].clone()
}

/// The alerts a client receives until it has been quiet for a while. A second `subscribed`
/// fails the test: the first answer was not the log's (a node answered from a copy it had not
/// loaded yet, with a made-up epoch).
async fn until_quiet(client: &mut Client) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut frames = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(800), client.ws.next()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            assert_ne!(frame["type"], "subscribed", "told again: {frame}");
            if frame["type"] == "alert" {
                frames.push(frame);
            }
        }
    }
    frames
}

/// Publishes `n` alerts named `<name>-<i>` on `node`, one per request (so one Redis
/// transaction each); the 202s' elements.
async fn publish(node: &Node, name: &str, n: usize) -> Vec<Value> {
    let mut accepted = Vec::new();
    for i in 0..n {
        let (status, _, reply) = node.publish(&alert(&format!("{name}-{i}")), &[]).await;
        assert_eq!(status, 202, "{reply}");
        accepted.extend(reply["accepted"].as_array().unwrap().iter().cloned());
    }
    accepted
}

/// Every `(epoch, seq)` seen, with the alert it carried: one content each, or the test fails.
#[derive(Default)]
struct Seen(HashMap<(String, u64), String>);

impl Seen {
    fn record(&mut self, epoch: &str, frames: &[Value]) {
        for frame in frames {
            let at = (epoch.to_owned(), frame["seq"].as_u64().unwrap());
            let id = frame["data"]["alert_id"].as_str().unwrap().to_owned();
            if let Some(before) = self.0.insert(at.clone(), id.clone()) {
                assert_eq!(before, id, "{at:?} carried two different messages");
            }
        }
    }
}

/// A power cut: both nodes and Redis (AOF `everysec`) die at once; Redis comes back without the
/// last 100 transactions it had not written; the nodes come back with no memory; publishing
/// goes on before the subscribers return. Before, Redis's old epoch continued: the lost numbers
/// were handed out again, and the subscribers resumed past them as if recovered.
#[tokio::test]
async fn a_whole_cluster_crash_that_loses_the_aof_tail_loses_nothing_silently() {
    let mut redis = Redis::with_aof(Some("everysec"));
    let mut nodes = vec![Node::on(&redis, "n0", &[]).await, Node::on(&redis, "n1", &[]).await];
    let mut clients = Vec::new();
    let mut epoch = String::new();
    for i in 0..4 {
        let mut client = nodes[i % 2].ws(&format!("c{i}")).await;
        epoch = subscribe(&mut client, None).await["epoch"].as_str().unwrap().to_owned();
        clients.push(client);
    }
    let acked = publish(&nodes[0], "before", 300).await;
    assert!(acked.iter().all(|a| a["epoch"] == epoch.as_str()), "the 202 names the epoch");
    let mut seen = Seen::default();
    let mut last = Vec::new();
    for client in &mut clients {
        let frames = until_quiet(client).await;
        assert_eq!(frames.len(), 300);
        seen.record(&epoch, &frames);
        last.push(frames.last().unwrap()["seq"].as_u64().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // everysec wrote it all: now lose some

    for node in &mut nodes {
        node.kill();
    }
    let transactions = redis.lose_aof_tail(100);
    assert!(transactions >= 300, "one transaction per append: {transactions}");
    redis.restart();
    for node in &mut nodes {
        node.restart().await;
    }
    let after = publish(&nodes[1], "after", 150).await;
    let new_epoch = after[0]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch, "a publisher sees the rotation in its 202");

    for (i, last) in last.into_iter().enumerate() {
        let mut client = nodes[i % 2].ws(&format!("back{i}")).await;
        let reply = subscribe(&mut client, Some((&epoch, last))).await;
        assert_eq!(reply["recovered"], false, "told, not resumed past lost numbers: {reply}");
        assert_eq!(reply["epoch"], new_epoch.as_str(), "{reply}");
        let frames = until_quiet(&mut client).await;
        seen.record(&new_epoch, &frames);
        let ids: Vec<&str> =
            frames.iter().map(|f| f["data"]["alert_id"].as_str().unwrap()).collect();
        assert!(ids.contains(&"after-0") && ids.contains(&"after-149"), "{ids:?}");
    }
}

/// With `appendfsync always` Redis loses nothing on a crash, so its restart keeps the epoch —
/// but if its data went back anyway (a restored backup, a lost disk), a client holding a
/// position past the log's head is proof: the topic is fenced, whatever the nodes remember.
#[tokio::test]
async fn a_client_past_the_logs_head_is_proof_of_a_rollback() {
    let mut redis = Redis::with_aof(Some("always"));
    let mut node = Node::on(&redis, "n0", &[]).await;
    let mut client = node.ws("c").await;
    let epoch = subscribe(&mut client, None).await["epoch"].as_str().unwrap().to_owned();
    publish(&node, "before", 50).await;
    let frames = until_quiet(&mut client).await;
    let last = frames.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(last, 50);
    node.kill();
    redis.lose_aof_tail(20);
    redis.restart();
    node.restart().await;

    let mut back = node.ws("back").await;
    let reply = subscribe(&mut back, Some((&epoch, last))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], epoch.as_str(), "fenced: a new epoch");
    let after = publish(&node, "after", 10).await;
    assert_eq!(after[0]["epoch"], reply["epoch"]);
    assert!(after[0]["seq"].as_u64().unwrap() > last, "numbering goes on above the client's");
    let (_, stats) = node.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["engine"]["topic_fences"].as_u64().unwrap() >= 1, "{stats}");
}

/// The node's `VmRSS` in KiB.
fn rss_kib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Redis stopped (`SIGSTOP`: connections stay open, nothing answers) while 20,000 publishes
/// arrive: each is answered, accepted or refused with 503, and the node's memory stays within
/// its bounded queue of appends — before, appends queued without limit.
#[tokio::test]
async fn a_stopped_redis_under_a_flood_gets_every_publish_answered_in_bounded_memory() {
    let redis = Redis::start(false);
    let node = Node::on(&redis, "n0", &["--redis-append-queue", "1000"]).await;
    publish(&node, "warm", 100).await;
    let before = rss_kib(&node);
    redis.signal("-STOP");
    let publisher = |p: usize| {
        let node = &node;
        async move {
            let mut answered = (0usize, 0usize);
            for r in 0..10 {
                let body: Vec<Value> = (0..100).map(|i| alert(&format!("p{p}-{r}-{i}"))).collect();
                let (status, _, reply) = node.publish(&json!(body), &[]).await;
                match status {
                    202 => answered.0 += 100,
                    503 => answered.1 += 100,
                    other => panic!("{other}: {reply}"),
                }
            }
            answered
        }
    };
    let answers = tokio::time::timeout(Duration::from_secs(60), join_all((0..20).map(publisher)))
        .await
        .expect("every publish answered while redis is stopped");
    let refused: usize = answers.iter().map(|a| a.1).sum();
    assert_eq!(answers.iter().map(|a| a.0 + a.1).sum::<usize>(), 20_000);
    assert!(refused > 0, "redis is stopped: refused, not accepted");
    let grown = rss_kib(&node).saturating_sub(before);
    redis.signal("-CONT");
    assert!(grown < 48 * 1024, "the node grew by {grown} KiB with redis stopped");
    let (_, stats) = node.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let engine = &stats["engine"];
    // 2,000 appends in flight at once met a queue of 1,000: the bound is what refused them.
    assert!(engine["appends_refused_queue_full"].as_u64().unwrap() > 0, "{engine}");
}

/// The engine's tasks end with the server: after the drain, its pub/sub connection is closed
/// (before, they ran on a token nothing cancelled and outlived the server).
#[tokio::test]
async fn the_engines_tasks_stop_with_the_server() {
    let redis = Redis::start(false);
    let pubsub_clients = || {
        let list = redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).unwrap_or_default();
        list.lines().filter(|l| !l.trim().is_empty()).count()
    };
    let server =
        modelcast_tests::server_util::TestServer::start(&["--redis-url", &redis.url()]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pubsub_clients() == 0 {
        assert!(std::time::Instant::now() < deadline, "the node never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
    assert_eq!(pubsub_clients(), 0, "the follower stopped with the server");
}
