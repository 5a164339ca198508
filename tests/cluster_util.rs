//! Real processes for cluster tests: a private `redis-server` on a free port with its own
//! directory, and `modelcast` nodes started as the binary (so they can be killed with -9).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::server_util::{Client, PATIENCE, http_request, http_request_full};

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it next).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// A private Redis: its own port and directory, removed when dropped.
#[derive(Debug)]
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    aof: Option<&'static str>,
    /// More arguments (e.g. `--replicaof`).
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` (AOF with fsync always when `aof`, otherwise nothing on disk).
    pub fn start(aof: bool) -> Self {
        Self::with_aof(aof.then_some("always"))
    }

    /// Starts `redis-server` with an AOF fsynced `fsync` (`always`, `everysec`, `no`), or none.
    pub fn with_aof(fsync: Option<&'static str>) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("modelcast-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis { port, dir, aof: fsync, extra: Vec::new(), child: None };
        redis.spawn();
        redis
    }

    /// A replica of `primary` (no AOF), once its link to the primary is up.
    pub fn replica_of(primary: &Redis) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("modelcast-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let extra = vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()];
        let mut redis = Redis { port, dir, aof: None, extra, child: None };
        redis.spawn();
        for _ in 0..400 {
            if redis
                .cli(&["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
            {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the replica on port {port} never linked to its primary");
    }

    /// A node for a Redis Cluster (AOF fsynced always), not yet part of one: a free port whose
    /// cluster bus port (+10000) is free too.
    fn cluster_node() -> Self {
        let port = loop {
            let port = free_port();
            if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                break port;
            }
        };
        let dir =
            std::env::temp_dir().join(format!("modelcast-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut redis = Redis { port, dir, aof: Some("always"), extra, child: None };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let aof = if self.aof.is_some() { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                aof,
                "--appendfsync",
                self.aof.unwrap_or("always"),
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (the Debian package redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` with `args`; its output, `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Closes its replicas' links (`CLIENT KILL TYPE replica`): a stopped replica cannot
    /// reconnect, so nothing written from now on reaches it.
    pub fn cut_replicas(&self) {
        let killed = self.cli(&["CLIENT", "KILL", "TYPE", "replica"]).unwrap_or_default();
        assert!(killed.trim().parse::<u32>().is_ok_and(|n| n >= 1), "no replica link: {killed}");
    }

    /// Kills the server at once (`kill -9`): what was not written to its AOF is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Drops the last `n` transactions from its AOF (stopped first): what a crash loses with
    /// `appendfsync everysec`. Returns how many there were.
    pub fn lose_aof_tail(&mut self, n: usize) -> usize {
        self.kill();
        let aof_dir = self.dir.join("appendonlydir");
        let incr = std::fs::read_dir(&aof_dir)
            .expect("an AOF directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
            .expect("an incremental AOF file");
        let bytes = std::fs::read(&incr).unwrap();
        let marker = b"*1\r\n$5\r\nMULTI\r\n";
        let starts: Vec<usize> = bytes
            .windows(marker.len())
            .enumerate()
            .filter(|(_, w)| *w == marker)
            .map(|(i, _)| i)
            .collect();
        assert!(starts.len() > n, "only {} transactions in the AOF", starts.len());
        std::fs::write(&incr, &bytes[..starts[starts.len() - n]]).unwrap();
        starts.len()
    }

    /// Starts it again on the same port and directory (with its AOF, if any).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of private `redis-server`s: `primaries` shards, each with one replica
/// (`cluster-node-timeout` 2000, AOF fsynced always), created with `redis-cli --cluster
/// create`; ready once every node says `cluster_state:ok` and every replica is linked.
#[derive(Debug)]
pub struct RedisCluster {
    /// Its nodes, primaries first (as created; a failover may swap roles).
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts `primaries` primaries and as many replicas, and creates the cluster.
    pub fn start(primaries: usize) -> Self {
        let nodes: Vec<Redis> = (0..primaries * 2).map(|_| Redis::cluster_node()).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        for _ in 0..1200 {
            let ok = cluster.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            });
            let linked = cluster.nodes.iter().all(|n| {
                n.cli(&["INFO", "replication"]).is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            });
            if ok && linked {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not become ok within a minute");
    }

    /// `host:port,...` of every node, as `MODELCAST_REDIS_CLUSTER` takes them.
    pub fn seeds(&self) -> String {
        let addrs: Vec<String> =
            self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        addrs.join(",")
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        self.any(&["CLUSTER", "KEYSLOT", key]).trim().parse().expect("a slot")
    }

    /// The port of the primary that serves `slot` now, as a live node sees it.
    pub fn primary_of(&self, slot: u16) -> Option<u16> {
        let nodes = self.any(&["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = *fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            });
            let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
            serves.then_some(port)
        })
    }

    /// Moves `slot` and its keys to the primary on `to`, as `redis-cli --cluster reshard` does
    /// one slot at a time: `IMPORTING`/`MIGRATING`, `MIGRATE` of its keys, then `NODE` on every
    /// primary. Clients meet `ASK`/`TRYAGAIN` meanwhile, and `MOVED` after.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of(slot).expect("a primary serves the slot");
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).expect("an id").trim().to_owned();
        let (from_id, to_id, slot) = (id(from), id(to), slot.to_string());
        let ok = |port: u16, args: &[&str]| {
            let out = cli(port, args).unwrap_or_default();
            assert_eq!(out.trim(), "OK", "{args:?} on {port}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).unwrap_or_default();
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
        for port in [to, from] {
            ok(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
    }

    /// The ports of the primaries now.
    pub fn primaries(&self) -> Vec<u16> {
        let nodes = self.any(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = *fields.get(2)?;
                (flags.contains("master") && !flags.contains("fail"))
                    .then(|| fields[1].split(['@', ':']).nth(1)?.parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// The port of the replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        let nodes = self.any(&["CLUSTER", "NODES"]);
        let port_of = |field: &str| field.split(['@', ':']).nth(1)?.parse::<u16>().ok();
        let id = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (port_of(fields.get(1)?)? == primary).then(|| fields[0].to_owned())
        })?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (*fields.get(3)? == id).then(|| port_of(fields[1])).flatten()
        })
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Redis {
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node of the cluster")
    }

    /// `redis-cli args` on the first node that answers.
    fn any(&self, args: &[&str]) -> String {
        self.nodes.iter().find_map(|n| n.cli(args)).expect("a node of the cluster answers")
    }
}

/// Three Redis Sentinels watching `primary` as master `mymaster` (quorum 2,
/// `down-after-milliseconds` 1000, `failover-timeout` 3000), each with its own port and
/// directory; ready once each knows the replica and the other two.
#[derive(Debug)]
pub struct Sentinels {
    /// Their ports on 127.0.0.1.
    pub ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Sentinels {
    /// Starts them and waits until they see one replica and each other.
    pub fn watch(primary: &Redis) -> Self {
        Self::watch_with(primary, 1)
    }

    /// Starts them and waits until they see `replicas` replicas and each other.
    pub fn watch_with(primary: &Redis, replicas: usize) -> Self {
        let mut sentinels = Sentinels { ports: Vec::new(), dirs: Vec::new(), children: Vec::new() };
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("modelcast-sentinel-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("sentinel dir");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 3000\n",
                    dir.display(),
                    primary.port
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel runs");
            sentinels.ports.push(port);
            sentinels.dirs.push(dir);
            sentinels.children.push(child);
        }
        for _ in 0..1200 {
            let ready = sentinels.ports.iter().all(|port| {
                let master = cli(*port, &["SENTINEL", "master", "mymaster"]).unwrap_or_default();
                let field = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines.iter().position(|l| *l == name).and_then(|i| lines.get(i + 1).copied())
                };
                field("num-slaves") == Some(replicas.to_string().as_str())
                    && field("num-other-sentinels") == Some("2")
            });
            if ready {
                return sentinels;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the sentinels did not find the replica and each other within a minute");
    }

    /// `host:port,host:port,host:port`, as `MODELCAST_REDIS_SENTINELS` takes them.
    pub fn list(&self) -> String {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// `kill -9` of sentinel `i` (the nodes watch the first that answers: 0).
    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// The port of the primary the first sentinel that answers names now.
    pub fn primary_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|port| {
            let out = cli(*port, &["SENTINEL", "get-master-addr-by-name", "mymaster"])?;
            out.lines().nth(1)?.trim().parse().ok()
        })
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `redis-cli -p port args…`: its output, `None` if it failed.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// A `modelcast` process.
#[derive(Debug)]
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts the binary on a free port with `args`; waits until it serves `/healthz`.
    pub async fn start(args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut node =
            Node { addr, args: args.iter().map(|s| (*s).to_owned()).collect(), child: None };
        node.spawn().await;
        node
    }

    /// Starts a node of the cluster on `redis`, named `id`.
    pub async fn on(redis: &Redis, id: &str, args: &[&str]) -> Self {
        let url = redis.url();
        let mut all = vec!["--redis-url", &url, "--node-id", id];
        all.extend_from_slice(args);
        Self::start(&all).await
    }

    async fn spawn(&mut self) {
        // `MODELCAST_TEST_NODE_LOGS=1` shows the nodes' warnings (to see what a test did).
        let logs = std::env::var_os("MODELCAST_TEST_NODE_LOGS").is_some();
        let child = Command::new(crate::server_util::binary())
            .args(["--bind", &self.addr.to_string()])
            .args(&self.args)
            .env("MODELCAST_LOG", "warn")
            .stdout(if logs { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn modelcast");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if http_request_full(self.addr, "GET", "/readyz", &[], None)
                .await
                .is_some_and(|(status, _, _)| status == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("modelcast on {} did not become ready", self.addr);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no shutdown, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address with the same arguments.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A WebSocket client on `/ws/<id>`, past its `welcome`.
    pub async fn ws(&self, id: &str) -> Client {
        let url = format!("ws://{}/ws/{id}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");
        let mut client = Client { ws };
        assert_eq!(client.next_json().await["type"], "welcome");
        client
    }

    /// Publishes `body` (one message or an array); the status, headers and JSON reply.
    pub async fn publish(
        &self,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, Value) {
        let (status, headers, text) =
            http_request_full(self.addr, "POST", "/api/publish", headers, Some(body.to_string()))
                .await
                .expect("the node answers");
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `GET /api/stats`, parsed.
    pub async fn stats(&self) -> Value {
        let (_, body) = self.get("/api/stats").await;
        serde_json::from_str(&body).expect("/api/stats is JSON")
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_request(self.addr, "GET", path, &[], None).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An alert with id `id`, as published over HTTP.
pub fn alert(id: &str) -> Value {
    serde_json::json!({"type": "alert", "data": {
        "alert_id": id, "level": "info", "title": "t", "message": "m"}})
}

/// A download progress update of `model` at `percent` (retained state of the model).
pub fn progress(model: &str, percent: f64) -> Value {
    serde_json::json!({"type": "download_progress_update", "data": {
        "model_id": model, "progress_percent": percent, "downloaded_mb": percent,
        "total_mb": 100.0, "speed_mbps": 1.0, "eta_seconds": 1.0, "status": "downloading",
        "can_pause": true, "can_resume": false, "can_cancel": true}})
}
