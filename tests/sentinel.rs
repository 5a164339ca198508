//! Redis Sentinel (issue 26, first part): nodes follow a failover of the primary. Real
//! processes: a private primary, a replica and three sentinels (`redis-server --sentinel`), and
//! `modelcast` binaries; the primary is killed with `kill -9` in the middle of a stream of
//! publishes.

use std::time::{Duration, Instant};

use modelcast_tests::cluster_util::{Node, Redis, Sentinels, cli};
use modelcast_tests::failover_util::{
    alerts_subscriber, check_deliveries, epochs, fences, publish_retrying, reconnect,
};

#[tokio::test]
async fn a_killed_sentinel_primary_fails_over_and_nothing_acknowledged_is_lost_silently() {
    failover(false).await;
}

/// The replica is stopped (`SIGSTOP`) while 20 messages are acknowledged by the primary, so
/// it is promoted without them: the rollback fence (a new epoch) tells every subscriber, and
/// no `(epoch, seq)` is ever handed out twice with different messages.
#[tokio::test]
async fn a_lagging_replica_promoted_is_fenced_and_never_reuses_a_seq() {
    failover(true).await;
}

/// Publishes 80 alerts in turn on three nodes, kills the primary with `kill -9` after 30 (with
/// `lag`: the replica misses 30..50 first), reconnects half of six subscribers to another node
/// with `since` ten publishes after the kill, and checks what they saw. Prints how
/// long publishing stalled and what each subscriber missed (measurements, not assertions).
#[allow(clippy::print_stderr)]
async fn failover(lag: bool) {
    let mut primary = Redis::start(false);
    let replica = Redis::replica_of(&primary);
    let (stop_at, kill_at) = if lag { (30, 50) } else { (usize::MAX, 30) };
    let sentinels = Sentinels::watch(&primary);
    let list = sentinels.list();
    let args = ["--redis-sentinels", list.as_str(), "--redis-master", "mymaster"];
    let nodes = [Node::start(&args).await, Node::start(&args).await, Node::start(&args).await];
    let stats = nodes[0].stats().await;
    assert_eq!(stats["engine"]["topology"], "sentinel", "{stats}");
    assert_eq!(stats["engine"]["primary"], format!("127.0.0.1:{}", primary.port), "{stats}");

    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(alerts_subscriber(&nodes[i % 3], &format!("s{i}")).await);
    }

    let total = 80;
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        if i == stop_at {
            // What it has not replicated now, it never will: stopped, and its link cut (the
            // kernel would still take the stream into the stopped process's socket buffer).
            replica.signal("-STOP");
            primary.cut_replicas();
        }
        if i == kill_at {
            primary.kill(); // kill -9, mid-stream
            if lag {
                replica.signal("-CONT");
            }
        }
        slowest = slowest.max(publish_retrying(&nodes[i % 3], &format!("a{i}")).await);
        if i == kill_at + 10 {
            // Half the subscribers lose their connection and come back on another node.
            for (k, (client, view)) in clients.iter_mut().enumerate().filter(|(k, _)| k % 2 == 1) {
                reconnect(client, view, &nodes[(k + 1) % 3], &format!("back{k}")).await;
            }
        }
    }
    // How long publishing stalled (reported, not asserted: a measurement, not a behaviour).
    eprintln!("sentinel failover: the longest publish took {slowest:?}");
    assert_eq!(sentinels.primary_port(), Some(replica.port), "the replica was promoted");

    check_deliveries(&mut clients, total, kill_at).await;
    let stats = nodes[0].stats().await;
    assert_eq!(stats["engine"]["primary"], format!("127.0.0.1:{}", replica.port), "{stats}");
    assert!(stats["engine"]["failovers"].as_u64().unwrap() >= 1, "{stats}");
    if lag {
        assert!(fences(&nodes).await >= 1, "fenced by some node");
    }
}

/// A failover the operator asks for (`SENTINEL FAILOVER`): the old primary lives on as a
/// replica, so no connection to it drops. The nodes follow the sentinels' `+switch-master`
/// announcement (or, failing that, the `READONLY` answer of the next check), and publishing
/// and delivery go on. Publishes acknowledged in the moment between the promotion and the old
/// primary's demotion were written to the old primary and are lost with it (Sentinel's
/// asynchronous design): a subscriber missing any of them must have been told; everything
/// published once the nodes follow the new primary arrives.
#[tokio::test]
#[allow(clippy::print_stderr)]
async fn a_requested_failover_is_followed_without_a_dropped_connection() {
    let primary = Redis::start(false);
    let replica = Redis::replica_of(&primary);
    let sentinels = Sentinels::watch(&primary);
    let list = sentinels.list();
    let args = ["--redis-sentinels", list.as_str(), "--redis-master", "mymaster"];
    let nodes = [Node::start(&args).await, Node::start(&args).await];
    let mut clients = vec![alerts_subscriber(&nodes[1], "watch").await];
    let (total, switch_at, followed_at) = (40, 20, 30);
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        if i == switch_at {
            let asked = cli(sentinels.ports[0], &["SENTINEL", "FAILOVER", "mymaster"]);
            assert_eq!(asked.as_deref().map(str::trim), Some("OK"));
            let deadline = Instant::now() + Duration::from_secs(20);
            while sentinels.primary_port() != Some(replica.port) {
                assert!(Instant::now() < deadline, "the sentinels never switched");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if i == followed_at {
            let deadline = Instant::now() + Duration::from_secs(10);
            for node in &nodes {
                loop {
                    let stats = node.stats().await;
                    if stats["engine"]["primary"] == format!("127.0.0.1:{}", replica.port) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "never followed: {stats}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        slowest = slowest.max(publish_retrying(&nodes[0], &format!("a{i}")).await);
    }
    eprintln!("requested failover: the longest publish took {slowest:?}");
    check_deliveries(&mut clients, total, followed_at).await;
}

/// The sentinel the nodes watch for `+switch-master` dies, then the operator asks another for
/// a failover (issue 36, 2): each node asks a sentinel which primary it names at every check
/// and watches another sentinel, so every node follows within a few seconds — not only once
/// the old primary is demoted — and publishing and delivery go on.
#[tokio::test]
#[allow(clippy::print_stderr)]
async fn a_dead_watched_sentinel_does_not_keep_the_nodes_on_the_old_primary() {
    let primary = Redis::start(false);
    let replica = Redis::replica_of(&primary);
    let mut sentinels = Sentinels::watch(&primary);
    let list = sentinels.list();
    let args = ["--redis-sentinels", list.as_str(), "--redis-master", "mymaster"];
    let nodes = [Node::start(&args).await, Node::start(&args).await];
    let mut clients = vec![alerts_subscriber(&nodes[1], "watch").await];
    for i in 0..10 {
        publish_retrying(&nodes[0], &format!("a{i}")).await;
    }
    sentinels.kill(0);
    let asked = cli(sentinels.ports[1], &["SENTINEL", "FAILOVER", "mymaster"]);
    assert_eq!(asked.as_deref().map(str::trim), Some("OK"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinels.primary_port() != Some(replica.port) {
        assert!(Instant::now() < deadline, "the sentinels never switched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switched = Instant::now();
    for node in &nodes {
        loop {
            let stats = node.stats().await;
            if stats["engine"]["primary"] == format!("127.0.0.1:{}", replica.port) {
                break;
            }
            let waited = switched.elapsed();
            assert!(waited < Duration::from_secs(5), "still on the old primary: {stats}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("dead sentinel: every node followed {:?} after the switch", switched.elapsed());
    for i in 10..30 {
        publish_retrying(&nodes[i % 2], &format!("a{i}")).await;
    }
    check_deliveries(&mut clients, 30, 10).await;
}

/// With `MODELCAST_REDIS_ACK_REPLICAS=1` a publish is acknowledged only once a replica holds
/// it (issue 36, 7): `kill -9` of the primary (of two replicas: the one left keeps
/// acknowledging) in the middle of a stream loses nothing acknowledged, the promoted replica
/// keeps the epoch, and no subscriber is told of a gap or gets history again.
#[tokio::test]
#[allow(clippy::print_stderr)]
async fn with_ack_replicas_a_killed_primary_loses_nothing_acknowledged() {
    let mut primary = Redis::start(false);
    let replicas = [Redis::replica_of(&primary), Redis::replica_of(&primary)];
    let sentinels = Sentinels::watch_with(&primary, 2);
    let list = sentinels.list();
    let args = [
        "--redis-sentinels",
        list.as_str(),
        "--redis-master",
        "mymaster",
        "--redis-ack-replicas",
        "1",
    ];
    let nodes = [Node::start(&args).await, Node::start(&args).await, Node::start(&args).await];
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(alerts_subscriber(&nodes[i % 3], &format!("s{i}")).await);
    }
    let (total, kill_at) = (60, 30);
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        if i == kill_at {
            primary.kill();
        }
        slowest = slowest.max(publish_retrying(&nodes[i % 3], &format!("a{i}")).await);
        if i == kill_at + 10 {
            for (k, (client, view)) in clients.iter_mut().enumerate().filter(|(k, _)| k % 2 == 1) {
                reconnect(client, view, &nodes[(k + 1) % 3], &format!("back{k}")).await;
            }
        }
    }
    eprintln!("ack replicas: the longest publish took {slowest:?}");
    let promoted = sentinels.primary_port();
    assert!(replicas.iter().any(|r| Some(r.port) == promoted), "a replica was promoted");
    check_deliveries(&mut clients, total, 0).await;
    // Sentinel promotes the replica furthest ahead by the offsets it last saw; on a starved
    // machine that view can be stale, and the replica that acknowledged the last alert not the
    // one promoted. Then the nodes that saw that alert fence the topic (a new epoch, everyone
    // told, nothing lost silently). Otherwise — the rule — the epoch is kept and no one is
    // told. A subscriber told without a fence would be a new epoch for a lossless failover.
    let fenced = fences(&nodes).await;
    let told = clients.iter().filter(|(_, view)| view.told).count();
    eprintln!("ack replicas: epochs {:?}, fences {fenced}, told {told}", epochs(&clients));
    if fenced == 0 {
        assert_eq!(epochs(&clients).len(), 1, "the epoch is kept: {:?}", epochs(&clients));
        assert_eq!(told, 0, "nothing acknowledged was lost: no one is told");
        for (_, view) in &clients {
            assert_eq!(view.alerts.len(), total, "each alert once: no history again");
        }
    } else {
        assert_eq!(told, clients.len(), "a fence tells every subscriber");
    }
}
