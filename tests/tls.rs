//! TLS (issue 37), over real TLS made on this machine: each test makes its own CA and
//! certificates (`openssl`, [`Pki`]). Redis over TLS (`redis-server --tls-port`, client
//! certificates required) for one Redis, Sentinel and Cluster, and a refused certificate; the
//! server's own TLS (HTTPS and WSS on one port, the certificate re-read on `SIGHUP`) under the
//! same checks as plain TCP — a matrix of transports, not a copy of each test; the Rust client
//! and `modelcast-watch` over `wss://`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modelcast_client::{Client as RustClient, ConnectError, ConnectOptions};
use modelcast_protocol::Topic;
use modelcast_tests::cluster_util::{Node, free_port};
use modelcast_tests::failover_util::{alerts_subscriber, check_deliveries, publish_retrying};
use modelcast_tests::server_util::{BinaryServer, PATIENCE, RawWs, Sse, binary, built_binary};
use modelcast_tests::tls_util::{Pki, Transport, certificate_der, presented_certificate};
use serde_json::{Value, json};

/// A `redis-server` (or sentinel) on a TLS port only, requiring a client certificate signed
/// by the test's CA.
struct TlsRedis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl TlsRedis {
    /// A Redis on a free port (whose cluster bus port, +10000, is free too) with `extra`.
    fn start(pki: &Pki, extra: &[&str]) -> Self {
        let port = loop {
            let port = free_port();
            if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                break port;
            }
        };
        let dir = pki.dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).expect("a redis dir");
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--tls-auth-clients",
            "yes",
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend(tls_files(pki));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's has TLS)");
        let redis = TlsRedis { port, dir, child };
        redis.wait_for(pki, &["PING"], "PONG");
        redis
    }

    /// A sentinel on TLS watching the primary on `primary` as `mymaster`.
    fn sentinel(pki: &Pki, primary: u16) -> Self {
        let port = free_port();
        let dir = pki.dir.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).expect("a sentinel dir");
        let files = tls_files(pki);
        let conf = format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {}\n{} {}\n{} {}\n{} {}\n\
             tls-replication yes\ntls-auth-clients yes\n\
             sentinel monitor mymaster 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 3000\n",
            dir.display(),
            &files[0][2..],
            files[1],
            &files[2][2..],
            files[3],
            &files[4][2..],
            files[5],
        );
        std::fs::write(dir.join("sentinel.conf"), conf).expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(dir.join("sentinel.conf"))
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        TlsRedis { port, dir, child }
    }

    /// `redis-cli` over TLS with the test's client certificate.
    fn cli(&self, pki: &Pki, args: &[&str]) -> Option<String> {
        cli_tls(pki, self.port, args)
    }

    /// Waits (up to a minute) until `args` answer something containing `expected`.
    fn wait_for(&self, pki: &Pki, args: &[&str], expected: &str) {
        for _ in 0..1200 {
            if self.cli(pki, args).is_some_and(|out| out.contains(expected)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis on {} never answered {args:?} with {expected}", self.port);
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server-side TLS settings of a Redis: its certificate, key and the CA of its clients.
fn tls_files(pki: &Pki) -> Vec<String> {
    vec![
        "--tls-cert-file".into(),
        pki.arg("server.pem"),
        "--tls-key-file".into(),
        pki.arg("server.key"),
        "--tls-ca-cert-file".into(),
        pki.arg("ca.pem"),
    ]
}

/// `redis-cli -p port --tls …`: its output, `None` if it failed.
fn cli_tls(pki: &Pki, port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .args(["--cacert", &pki.arg("ca.pem"), "--cert", &pki.arg("client.pem")])
        .args(["--key", &pki.arg("client.key")])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// A node's flags for TLS to Redis with the test's CA and client certificate.
fn redis_tls_flags(pki: &Pki) -> Vec<String> {
    vec![
        "--redis-ca".into(),
        pki.arg("ca.pem"),
        "--redis-cert".into(),
        pki.arg("client.pem"),
        "--redis-key".into(),
        pki.arg("client.key"),
    ]
}

fn alert(id: &str) -> Value {
    modelcast_tests::cluster_util::alert(id)
}

/// Two nodes on one Redis over TLS (a private CA, a client certificate required): a message
/// published on one reaches a subscriber of the other, and the engine says it is up.
#[tokio::test]
async fn nodes_cluster_on_one_redis_over_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &[]);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let mut args = vec!["--redis-url".to_owned(), url];
    args.extend(redis_tls_flags(&pki));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = [Node::start(&args).await, Node::start(&args).await];
    let mut clients = vec![alerts_subscriber(&nodes[1], "t1").await];
    for i in 0..10 {
        publish_retrying(&nodes[i % 2], &format!("a{i}")).await;
    }
    check_deliveries(&mut clients, 10, 0).await;
    assert!(!clients[0].1.told);
    let stats = nodes[0].stats().await;
    assert_eq!(stats["engine"]["up"], true, "{stats}");
    // Every connection the engine made is TLS: Redis has no plain port to reach.
    assert_eq!(redis.cli(&pki, &["CONFIG", "GET", "port"]).as_deref(), Some("port\n0\n"));
}

/// A Redis whose certificate the given CA did not sign is a clear start-up error — never a
/// fallback to plain text — and `--check-config` names the setting and the file of every
/// TLS problem.
#[tokio::test]
async fn a_refused_redis_certificate_stops_the_start_and_bad_files_name_their_setting() {
    let pki = Pki::new();
    let other = Pki::new();
    let redis = TlsRedis::start(&pki, &[]);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let mut args = vec!["--bind".to_owned(), "127.0.0.1:0".into(), "--redis-url".into(), url];
    args.extend(redis_tls_flags(&other));
    let run = tokio::process::Command::new(binary()).args(&args).output();
    let out = tokio::time::timeout(PATIENCE, run).await.expect("exits in time").expect("runs");
    assert!(!out.status.success(), "must not start");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("MODELCAST_REDIS_URL"), "{said}");
    assert!(said.contains("UnknownIssuer") || said.contains("certificate"), "{said}");

    let check = |extra: &[String]| {
        let out = Command::new(binary()).arg("--check-config").args(extra).output().expect("runs");
        assert!(!out.status.success(), "{extra:?} passed the check");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let rediss = ["--redis-url".to_owned(), "rediss://127.0.0.1:1/0".to_owned()];
    let said = check(&[&rediss[..], &["--redis-ca".into(), "/nonexistent/ca.pem".into()]].concat());
    assert!(said.contains("MODELCAST_REDIS_CA") && said.contains("/nonexistent/ca.pem"), "{said}");
    let mismatch = [
        "--redis-cert".to_owned(),
        pki.arg("client.pem"),
        "--redis-key".into(),
        other.arg("client.key"),
    ];
    let said = check(&[&rediss[..], &mismatch[..]].concat());
    assert!(said.contains("MODELCAST_REDIS_KEY") && said.contains("is not the key"), "{said}");
    let plain = [
        "--redis-url".to_owned(),
        "redis://127.0.0.1:1/0".into(),
        "--redis-ca".into(),
        pki.arg("ca.pem"),
    ];
    let said = check(&plain);
    assert!(said.contains("rediss://"), "{said}");
    let half = ["--tls-cert".to_owned(), pki.arg("server.pem")];
    let said = check(&half);
    assert!(said.contains("MODELCAST_TLS_KEY"), "{said}");
    let not_a_cert =
        ["--tls-cert".to_owned(), pki.arg("server.key"), "--tls-key".into(), pki.arg("server.key")];
    let said = check(&not_a_cert);
    assert!(said.contains("MODELCAST_TLS_CERT") && said.contains("no certificate"), "{said}");
}

/// Sentinel over TLS: the sentinels and the data nodes they name are reached over TLS with
/// the test's CA and client certificate; the primary killed, the nodes follow the promoted
/// replica (over TLS too) and nothing acknowledged is lost silently.
#[tokio::test]
#[allow(clippy::print_stderr)]
async fn sentinel_over_tls_fails_over_and_delivers() {
    let pki = Pki::new();
    let mut primary = TlsRedis::start(&pki, &[]);
    let replica_of = primary.port.to_string();
    let replica = TlsRedis::start(&pki, &["--replicaof", "127.0.0.1", &replica_of]);
    replica.wait_for(&pki, &["INFO", "replication"], "master_link_status:up");
    let sentinels: Vec<TlsRedis> = (0..3).map(|_| TlsRedis::sentinel(&pki, primary.port)).collect();
    for sentinel in &sentinels {
        sentinel.wait_for(&pki, &["SENTINEL", "master", "mymaster"], "num-other-sentinels\n2");
    }
    let list: Vec<String> = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let mut args = vec![
        "--redis-url".to_owned(),
        "rediss://127.0.0.1/0".into(),
        "--redis-sentinels".into(),
        list.join(","),
        "--redis-master".into(),
        "mymaster".into(),
    ];
    args.extend(redis_tls_flags(&pki));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = [Node::start(&args).await, Node::start(&args).await];
    let stats = nodes[0].stats().await;
    assert_eq!(stats["engine"]["primary"], format!("127.0.0.1:{}", primary.port), "{stats}");
    let mut clients = vec![alerts_subscriber(&nodes[1], "s").await];
    for i in 0..30 {
        if i == 10 {
            primary.kill();
        }
        publish_retrying(&nodes[i % 2], &format!("a{i}")).await;
    }
    check_deliveries(&mut clients, 30, 10).await;
    let stats = nodes[0].stats().await;
    assert_eq!(stats["engine"]["primary"], format!("127.0.0.1:{}", replica.port), "{stats}");
}

/// A Redis Cluster over TLS (three primaries, `tls-cluster yes`): every shard is reached over
/// TLS, and messages of topics on different shards cross from one node to the other.
#[tokio::test]
async fn a_redis_cluster_over_tls_spreads_topics_and_delivers() {
    let pki = Pki::new();
    let extra =
        ["--cluster-enabled", "yes", "--tls-cluster", "yes", "--cluster-node-timeout", "2000"];
    let shards: Vec<TlsRedis> = (0..3).map(|_| TlsRedis::start(&pki, &extra)).collect();
    let seeds: Vec<String> = shards.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(seeds.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    assert!(cli_tls(&pki, shards[0].port, &create).is_some(), "redis-cli --cluster create");
    for shard in &shards {
        shard.wait_for(&pki, &["CLUSTER", "INFO"], "cluster_state:ok");
    }
    let mut args = vec!["--redis-url".to_owned(), "rediss://127.0.0.1/0".into()];
    args.extend(["--redis-cluster".to_owned(), seeds.join(",")]);
    args.extend(redis_tls_flags(&pki));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = [Node::start(&args).await, Node::start(&args).await];
    let stats = nodes[0].stats().await;
    let shards_seen = stats["engine"]["shards"].as_array().map_or(0, Vec::len);
    assert!(shards_seen >= 2, "topics on several shards: {stats}");
    let mut client = nodes[1].ws("c").await;
    for topic in ["alerts", "system_stats", "generation_progress"] {
        client.send_json(&json!({"action": "subscribe", "topic": topic})).await;
        client.next_of_type("subscribed").await;
    }
    let stats_msg = json!({"type": "system_stats", "data": {"cpu_percent": 1.0,
        "memory_percent": 2.0, "memory_used_mb": 3.0, "memory_total_mb": 4.0}});
    let progress_msg = json!({"type": "generation_progress", "data": {"task_id": "t",
        "status": "running", "progress_percent": 10.0}});
    for body in [alert("x"), stats_msg, progress_msg] {
        let (status, _, reply) = nodes[0].publish(&body, &[]).await;
        assert_eq!(status, 202, "{reply}");
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let frame = client.next_json().await;
        if frame.get("seq").is_some() {
            seen.insert(frame["type"].as_str().unwrap_or_default().to_owned());
        }
    }
}

/// A server on `transport`: with TLS, the PKI's server certificate on its port.
async fn server_over(pki: &Pki, transport: &Transport) -> BinaryServer {
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let args: Vec<&str> = match transport {
        Transport::Plain => vec![],
        Transport::Tls(_) => vec!["--tls-cert", &cert, "--tls-key", &key],
    };
    BinaryServer::start(&args, &[]).await
}

/// What a client does over plain TCP it does over TLS (a matrix of the two transports): a
/// WebSocket subscription gets an HTTPS publish; a compressing WebSocket (permessage-deflate)
/// gets it compressed; Server-Sent Events get it; the dashboard and the API answer.
#[tokio::test]
async fn websockets_compression_sse_and_the_dashboard_work_over_plain_tcp_and_tls() {
    let pki = Pki::new();
    for transport in [Transport::Plain, Transport::Tls(pki.client_config())] {
        let name = transport.name();
        let server = server_over(&pki, &transport).await;
        let addr = server.addr;
        let mut ws = transport.ws(addr, "/ws/m").await;
        ws.send_json(&json!({"action": "subscribe", "topic": "alerts"})).await;
        ws.next_of_type("subscribed").await;
        let mut deflating =
            RawWs::connect_over(&transport, addr, "/ws/d", Some("permessage-deflate")).await;
        assert!(deflating.extensions.is_some(), "{name}: deflate agreed");
        assert_eq!(deflating.next_json().await.0["type"], "welcome", "{name}");
        deflating.send_text(r#"{"action":"subscribe","topic":"alerts"}"#).await;
        while deflating.next_json().await.0["type"] != "subscribed" {}
        let mut sse = Sse::open_over(&transport, addr, "/sse?topic=alerts", &[]).await;
        assert_eq!(sse.status(), 200, "{name}: {}", sse.head);
        let long = json!({"type": "alert", "data": {"alert_id": "m1", "level": "info",
            "title": "t", "message": "a message long enough to be compressed ".repeat(8)}});
        let published = transport
            .request(addr, "POST", "/api/publish", &[], Some(long.to_string()))
            .await
            .expect("the server answers");
        assert_eq!(published.0, 202, "{name}: {}", published.2);
        assert_eq!(ws.next_of_type("alert").await["data"]["alert_id"], "m1", "{name}");
        let (frame, compressed) = loop {
            let (frame, compressed) = deflating.next_json().await;
            if frame["type"] == "alert" {
                break (frame, compressed);
            }
        };
        assert_eq!(frame["data"]["alert_id"], "m1", "{name}");
        assert!(compressed, "{name}: the alert came compressed");
        let event = loop {
            let event = sse.next().await.expect("an event");
            if event.data["type"] == "alert" {
                break event;
            }
        };
        assert_eq!(event.data["data"]["alert_id"], "m1", "{name}");
        let (status, _, page) =
            transport.request(addr, "GET", "/", &[], None).await.expect("the dashboard");
        assert_eq!(status, 200, "{name}");
        assert!(page.contains("<html") || page.contains("<!doctype"), "{name}: the dashboard");
        let (status, _, ready) =
            transport.request(addr, "GET", "/readyz", &[], None).await.unwrap();
        assert_eq!(status, 200, "{name}: {ready}");
    }
}

/// `SIGHUP` re-reads the server's certificate: a connection opened before keeps working on
/// the old one, a new connection gets the new one; files that do not load leave the current
/// certificate in place.
#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_open_connections() {
    let pki = Pki::new();
    let tls = Transport::Tls(pki.client_config());
    let server = server_over(&pki, &tls).await;
    let addr = server.addr;
    let old = certificate_der(&pki.path("server.pem"));
    assert_eq!(presented_certificate(addr, pki.client_config()).await, old);
    let mut before = tls.ws(addr, "/ws/before").await;
    before.send_json(&json!({"action": "subscribe", "topic": "alerts"})).await;
    before.next_of_type("subscribed").await;

    pki.issue("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1");
    let new = certificate_der(&pki.path("server.pem"));
    assert_ne!(new, old, "a renewed certificate");
    hangup(&server);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while presented_certificate(addr, pki.client_config()).await != new {
        assert!(tokio::time::Instant::now() < deadline, "the new certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = tls
        .request(addr, "POST", "/api/publish", &[], Some(alert("after-reload").to_string()))
        .await
        .unwrap();
    assert_eq!(status, 202);
    assert_eq!(before.next_of_type("alert").await["data"]["alert_id"], "after-reload");

    // A key that is not the certificate's: the reload is refused, the server goes on.
    std::fs::copy(pki.path("client.key"), pki.path("server.key")).unwrap();
    hangup(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presented_certificate(addr, pki.client_config()).await, new);
    let (status, _, _) = tls.request(addr, "GET", "/healthz", &[], None).await.unwrap();
    assert_eq!(status, 200);
}

/// Sends `SIGHUP` to the server.
fn hangup(server: &BinaryServer) {
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().expect("kill runs");
    assert!(status.success());
}

/// The Rust client connects over `wss://` trusting a private CA and receives what is
/// published; without the CA the error names the certificate problem; `modelcast-watch
/// --ca` prints the alert.
#[tokio::test]
async fn the_rust_client_and_the_watch_connect_over_wss_with_a_private_ca() {
    let pki = Pki::new();
    let tls = Transport::Tls(pki.client_config());
    let server = server_over(&pki, &tls).await;
    let url = format!("wss://localhost:{}/ws/rust", server.addr.port());
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    let options = ConnectOptions::default().ca(&ca).expect("a usable CA");
    let client = RustClient::connect(&url, options).await.expect("connects over wss");
    let mut alerts = client.subscribe(Topic::Alerts).await.expect("subscribes");
    let refused = RustClient::connect(&url, ConnectOptions::default()).await.err();
    match &refused {
        Some(ConnectError::Certificate { problem, .. }) => {
            assert!(problem.contains("UnknownIssuer"), "{problem}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    assert!(refused.unwrap().to_string().contains("trust that CA"));
    let bad_ca = ConnectOptions::default().ca(b"not a certificate").err();
    assert!(matches!(bad_ca, Some(ConnectError::InvalidCa { .. })), "{bad_ca:?}");

    let mut watch =
        tokio::process::Command::new(built_binary("modelcast-client", "modelcast-watch"))
            .args(["--url", &url, "--ca", &pki.arg("ca.pem"), "--json", "alerts"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("modelcast-watch runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _) = tls
        .request(server.addr, "POST", "/api/publish", &[], Some(alert("over-wss").to_string()))
        .await
        .unwrap();
    assert_eq!(status, 202);
    use futures_util::StreamExt as _;
    let event = tokio::time::timeout(PATIENCE, alerts.next()).await.expect("in time");
    assert!(format!("{event:?}").contains("over-wss"), "{event:?}");
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("over-wss") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("the watch printed the alert");
    assert!(line.contains("alert"), "{line}");
}
