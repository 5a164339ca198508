//! `cargo xtask loadtest`: the server in release, N subscribers, publishing over HTTP.
//!
//! Pins the server to core 0 and this load generator to core 1 (`taskset`), raises the
//! open-file limit, and prints one table:
//! deliveries per second, server CPU per delivery, p50/p99/max publish-to-receive latency,
//! messages lost, server RSS per connection.
//!
//! Phases: connect N subscribers (RSS per connection); publish at `--rate` messages per second
//! for `--seconds` (latency, backlog, loss); publish flat out for `--seconds` (throughput, CPU
//! per delivery). Publishing is one message per HTTP request by default, as backends publish
//! (`--per-request N` batches, `--publishers P` runs P connections concurrently,
//! `--ws-publish` uses WebSocket publish channels instead of HTTP). `--idle N` only opens N idle subscribed connections and reports RSS.
//! `--compress`: subscribers offer permessage-deflate (read by a small frame reader here:
//! tungstenite cannot read compressed frames); every run reports bytes on the wire per delivery.
//!
//! `--nodes N` (N > 1) runs a cluster instead: a private `redis-server` (or `--redis-url`) and
//! N nodes; publishes go to node 0 and subscribers connect to the other nodes, so every
//! delivery crosses Redis; CPU and RSS are the nodes' sums; nothing is pinned. `--sources K`
//! spreads client connections over 127.0.0.1…127.0.0.K (each source address has its own
//! ephemeral ports toward each node).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket over TCP, or TLS (`--tls`).
pub(crate) type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The client TLS config of a `--tls` run (trusting the run's own CA); unset otherwise.
static TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// The token every connection of a `--push` run carries (a server with push requires
/// tokens); unset otherwise.
pub(crate) static AUTH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A WebSocket handshake on `stream` to `path`: `ws://`, or `wss://` in a `--tls` run.
async fn ws_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
) -> Result<WsStream> {
    let path = match AUTH.get() {
        Some(token) => format!("{path}?token={token}"),
        None => path.to_owned(),
    };
    let (url, connector) = match TLS.get() {
        Some(tls) => (
            format!("wss://localhost:{}{path}", addr.port()),
            Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        ),
        None => (format!("ws://{addr}{path}"), None),
    };
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, config, connector).await?;
    Ok(ws)
}

/// A certificate for `localhost`/`127.0.0.1` signed by a CA made for this run (openssl, in
/// a temporary directory); sets [`TLS`] and returns the server's `--tls-cert`/`--tls-key`.
#[allow(deprecated)] // ring: no post-quantum key exchange, which is all rustls warns of
fn make_tls() -> Result<[String; 4]> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let dir = std::env::temp_dir().join(format!("modelcast-loadtest-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ssl = |args: &[&str]| -> Result<()> {
        let ok = Command::new("openssl").args(args).current_dir(&dir).output()?.status.success();
        if !ok {
            bail!("openssl {args:?} failed");
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    ssl(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=loadtest CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    ]
    .concat())?;
    ssl(&[
        &["req"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
    ]
    .concat())?;
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1")?;
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ])?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(Arc::new(config));
    let path = |name: &str| dir.join(name).display().to_string();
    Ok(["--tls-cert".into(), path("server.pem"), "--tls-key".into(), path("server.key")])
}

/// Load test options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    subscribers: usize,
    rate: u64,
    seconds: u64,
    idle: Option<usize>,
    pin: bool,
    redis_url: Option<String>,
    /// The nodes' Redis topology instead of one Redis: `--redis-cluster …` or
    /// `--redis-sentinels … --redis-master …`, passed to every node as they are.
    topology: Vec<String>,
    nodes: usize,
    sources: u8,
    /// Messages per publish request (1: as backends publish).
    per_request: u64,
    /// Concurrent publisher connections.
    publishers: usize,
    /// Publish over WebSocket channels (`{"action":"publish"}`) instead of HTTP.
    ws_publish: bool,
    /// How subscribers read: WebSockets, compressing WebSockets, or Server-Sent Events.
    kind: Kind,
    /// Internal (a helper process of `--idle`): hold this many connections to `targets`.
    hold: Option<(usize, usize, Vec<SocketAddr>)>,
    /// TLS on the server's port (a certificate made with openssl for the run): subscribers
    /// over `wss://`, publishers over `https://`.
    tls: bool,
    /// `--push N`: push on (Web Push; tokens required, so every connection carries one) with N
    /// devices of N users registered to a local sink; the alerts are of a pushed level.
    push: Option<usize>,
}

impl Options {
    /// Whether the server under test is the peer (NATS) rather than modelcast.
    fn nats(&self) -> bool {
        self.kind == Kind::Nats
    }

    pub(crate) fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Options {
            subscribers: 1000,
            rate: 200,
            seconds: 10,
            idle: None,
            pin: true,
            redis_url: None,
            topology: Vec::new(),
            nodes: 1,
            sources: 1,
            per_request: 1,
            publishers: 1,
            ws_publish: false,
            kind: Kind::Ws,
            hold: None,
            tls: false,
            push: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                it.next()
                    .with_context(|| format!("{name} needs a value"))?
                    .parse()
                    .with_context(|| format!("{name} takes a positive whole number"))
            };
            match *arg {
                "--subscribers" => o.subscribers = value("--subscribers")? as usize,
                "--rate" => o.rate = value("--rate")?,
                "--seconds" => o.seconds = value("--seconds")?,
                "--idle" => o.idle = Some(value("--idle")? as usize),
                "--no-pin" => o.pin = false,
                "--per-request" => o.per_request = value("--per-request")?.max(1),
                "--publishers" => o.publishers = (value("--publishers")? as usize).max(1),
                "--ws-publish" => o.ws_publish = true,
                "--tls" => o.tls = true,
                "--push" => o.push = Some(value("--push")? as usize),
                "--sse" | "--compress" | "--peer" if o.kind != Kind::Ws => {
                    bail!("--sse, --compress and --peer nats are kinds of subscriber: choose one")
                }
                "--peer" => match it.next().copied() {
                    Some("nats") => {
                        o.kind = Kind::Nats;
                        o.ws_publish = true; // NATS publishes over its connections only
                    }
                    Some("modelcast") => {}
                    other => bail!("--peer takes nats or modelcast, not {other:?}"),
                },
                "--sse" => o.kind = Kind::Sse,
                "--compress" => o.kind = Kind::Deflate,
                "--nodes" => o.nodes = (value("--nodes")? as usize).max(1),
                "--sources" => o.sources = value("--sources")?.clamp(1, 254) as u8,
                "--hold" => {
                    let n = value("--hold")? as usize;
                    let first = value("--hold")? as usize;
                    let targets = it.next().context("--hold N FIRST TARGETS")?;
                    let targets = targets
                        .split(',')
                        .map(|t| t.parse().context("--hold: targets are addr:port,…"))
                        .collect::<Result<Vec<SocketAddr>>>()?;
                    o.hold = Some((n, first, targets));
                }
                flag @ ("--redis-cluster" | "--redis-sentinels" | "--redis-master") => {
                    let arg = it.next().with_context(|| format!("{flag} needs a value"))?;
                    o.topology.extend([flag.to_string(), arg.to_string()]);
                }
                "--redis-url" => {
                    o.redis_url = Some(it.next().context("--redis-url needs a URL")?.to_string());
                }
                other => bail!("unknown loadtest option `{other}`\n{}", crate::USAGE),
            }
        }
        Ok(o)
    }
}

/// A server under test (a modelcast node, or the peer).
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (user + system CPU seconds, RSS bytes) from /proc.
    fn usage(&self) -> Result<(f64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // After the command name: field 14 (utime) and 15 (stime) are at index 11 and 12.
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        let hz = clock_ticks();
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((ticks / hz, rss_kb * 1024))
    }
}

/// This process's user + system CPU seconds.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The servers under test: one node, or a cluster's nodes (with its private Redis).
struct Servers {
    nodes: Vec<ServerProcess>,
    redis: Option<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.nodes.clear();
        if let Some(redis) = &mut self.redis {
            let _ = redis.kill();
            let _ = redis.wait();
        }
    }
}

impl Servers {
    /// Where publishes go.
    fn publish_to(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    /// Where subscriber `i` connects: node 0 alone, else the nodes after it in turn (every
    /// delivery crosses the engine).
    fn subscriber_node(&self, i: usize) -> SocketAddr {
        match self.nodes.len() {
            1 => self.nodes[0].addr,
            n => self.nodes[1 + i % (n - 1)].addr,
        }
    }

    /// CPU seconds and RSS bytes of every node together.
    fn usage(&self) -> Result<(f64, u64)> {
        self.nodes.iter().try_fold((0.0, 0), |(cpu, rss), node| {
            let (c, r) = node.usage()?;
            Ok((cpu + c, rss + r))
        })
    }
}

fn start_servers(o: &Options, connections: usize) -> Result<Servers> {
    if o.nats() {
        return Ok(Servers { nodes: vec![crate::loadtest_nats::start(o.pin)?], redis: None });
    }
    say("building the server (release)…");
    crate::cargo(
        &["build", "--release", "--quiet", "-p", "modelcast-server", "--bin", "modelcast"],
        "building modelcast",
    )?;
    let mut servers = Servers { nodes: Vec::new(), redis: None };
    let mut redis_url = o.redis_url.clone();
    if o.nodes > 1 && redis_url.is_none() && o.topology.is_empty() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let redis = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        servers.redis = Some(redis);
        wait_listening(format!("127.0.0.1:{port}").parse()?)?;
        redis_url = Some(format!("redis://127.0.0.1:{port}/0"));
        say(&format!("a private redis on port {port}; {} nodes, not pinned", o.nodes));
    }
    let prefix = format!("loadtest{}", std::process::id());
    for _ in 0..o.nodes {
        servers.nodes.push(start_node(o, connections, redis_url.as_deref(), &prefix)?);
    }
    Ok(servers)
}

pub(crate) fn wait_listening(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing started listening on {addr}")
}

fn start_node(
    o: &Options,
    connections: usize,
    redis_url: Option<&str>,
    prefix: &str,
) -> Result<ServerProcess> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = format!("0.0.0.0:{port}").parse()?;
    let bin = crate::root().join("target/release/modelcast");
    let mut cmd = if o.pin && o.nodes == 1 {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    // Bound to every local address, so clients may come from 127.0.0.x (`--sources`).
    cmd.args(["--bind", &addr.to_string()])
        .args(["--max-connections", &(connections + 100).to_string()])
        // Every client comes from a few addresses: the per-address share must hold them all
        // (subscribers and the publishers' WebSockets).
        .args(["--max-connections-per-ip", &(connections + 100).to_string()])
        .args(["--queue-size", "10000"])
        // One generator opens every connection from a few addresses.
        .args(["--connect-rate", "1000000"])
        .env("MODELCAST_LOG", "warn")
        .env("MODELCAST_INSECURE_PUBLISH", "1")
        .stdin(Stdio::null());
    if o.tls {
        cmd.args(make_tls()?);
    }
    if o.push.is_some() {
        cmd.args(crate::loadtest_push::server_args(&bin)?);
    }
    if let Some(url) = redis_url {
        // A node of a cluster: every publish goes through Redis and back.
        cmd.args(["--redis-url", url, "--redis-prefix", prefix]);
    } else if !o.topology.is_empty() {
        cmd.args(&o.topology).args(["--redis-prefix", prefix]);
    }
    let child = cmd.spawn().context("starting modelcast (is `taskset` installed? use --no-pin)")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let server = ServerProcess { child, addr };
    wait_listening(addr)?;
    Ok(server)
}

pub(crate) fn run(o: Options, args: &[&str]) -> Result<()> {
    // The generator must not be the bottleneck: run it optimized.
    if crate::rerun_optimized("loadtest", args)? {
        return Ok(());
    }
    // Root may raise the hard limit too (the nodes inherit it); otherwise up to the hard one.
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, 1 << 20, 1 << 20);
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if let Some((n, first, targets)) = o.hold.clone() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(hold(n, first, &targets, o.sources, o.kind));
    }
    let connections = o.idle.unwrap_or(o.subscribers);
    // `--idle` spreads its connections over helper processes; each process (node or helper)
    // must hold its share.
    let per_process = match o.idle {
        Some(n) => n.div_ceil(o.nodes.saturating_sub(1).max(1)).min(HOLD_PER_PROCESS),
        None => connections,
    };
    if limit < per_process as u64 + 64 {
        bail!("the open-file limit is {limit}, too low for {connections} connections");
    }
    if o.nats() && (o.nodes > 1 || o.idle.is_some() || o.tls || o.push.is_some()) {
        bail!("--peer nats measures one NATS server: no --nodes, --idle, --tls or --push");
    }
    if o.tls && (o.kind != Kind::Ws || o.nodes > 1 || o.idle.is_some()) {
        bail!(
            "--tls measures WebSocket subscribers of one node: no --sse, --compress, --nodes or --idle"
        );
    }
    let server = start_servers(&o, connections)?;
    if o.pin && o.nodes == 1 {
        // Move this process (and the threads it will start) to core 1.
        let _ = Command::new("taskset")
            .args(["-a", "-cp", "1", &std::process::id().to_string()])
            .output();
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async move {
        match o.idle {
            Some(n) => idle(&server, n, o.sources, o.kind).await,
            None => load(&server, &o).await,
        }
    })
}

/// How subscribers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// tungstenite, offering no extension.
    Ws,
    /// [`DeflateReader`]: offers permessage-deflate.
    Deflate,
    /// `GET /sse`.
    Sse,
    /// NATS's protocol over its WebSocket listener (`--peer nats`).
    Nats,
}

impl Kind {
    /// The option that selects this kind (for helper processes).
    fn flag(self) -> Option<&'static str> {
        match self {
            Kind::Ws => None,
            Kind::Deflate => Some("--compress"),
            Kind::Sse => Some("--sse"),
            Kind::Nats => None, // never holds idle connections
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Ws => "WebSocket connections",
            Kind::Deflate => "compressing WebSocket connections",
            Kind::Sse => "Server-Sent Events streams",
            Kind::Nats => "NATS WebSocket connections",
        }
    }
}

/// A subscriber's tally.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    /// Bytes the connection read from its socket (frame headers included).
    wire: AtomicU64,
    lost: AtomicU64,
    closed: AtomicBool,
}

/// A subscriber's connection: a WebSocket, a compressing WebSocket, or a Server-Sent Events
/// stream.
enum Subscriber {
    Ws(Box<WsStream>),
    Deflate(DeflateReader),
    Sse(SseReader),
    Nats(Box<crate::loadtest_nats::Reader>),
}

impl Subscriber {
    /// The next text frame (an event's `data:` for a stream) and the bytes read from the
    /// socket for it; `None` when it closed.
    async fn next_text(&mut self) -> Option<(String, usize)> {
        match self {
            Subscriber::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(t)) => {
                        // Server frames are unmasked: a 2-byte header, 4 from 126 bytes on.
                        let header = if t.len() < 126 { 2 } else { 4 };
                        return Some((t.as_str().to_owned(), t.len() + header));
                    }
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            },
            Subscriber::Deflate(ws) => ws.next_text().await,
            Subscriber::Sse(sse) => sse.next_data().await,
            Subscriber::Nats(nats) => nats.next_text().await,
        }
    }
}

/// A WebSocket client that offers permessage-deflate and reads the server's frames itself:
/// unmasked, unfragmented (modelcast writes every message as one frame), RSV1 set on the
/// compressed ones, which it inflates (no context takeover: a fresh stream per message).
pub(crate) struct DeflateReader {
    stream: TcpStream,
    /// Bytes read; those before `pos` are consumed (dropped at the next read).
    buf: Vec<u8>,
    pos: usize,
    inflate: Box<miniz_oxide::inflate::core::DecompressorOxide>,
}

impl DeflateReader {
    async fn open(stream: TcpStream, addr: SocketAddr, id: usize) -> Result<Self> {
        let mut reader = Self::handshake(stream, addr, &format!("/ws/load-{id}")).await?;
        reader.send(0x1, br#"{"action":"subscribe","topic":"alerts"}"#).await?;
        // welcome, subscribed
        for _ in 0..2 {
            reader.next_text().await.context("the connection's first frames")?;
        }
        Ok(reader)
    }

    /// Opens a WebSocket to `path` of `addr`, offering permessage-deflate; fails unless the
    /// server agrees.
    pub(crate) async fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Self> {
        use tokio::io::AsyncWriteExt;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = Self { stream, buf: Vec::new(), pos: 0, inflate: Box::default() };
        let end = loop {
            if let Some(at) = reader.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !reader.fill().await {
                bail!("the server closed the connection before answering");
            }
        };
        let head = String::from_utf8_lossy(&reader.buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") || !head.contains("permessage-deflate") {
            bail!("the server did not agree on permessage-deflate: {head}");
        }
        reader.buf.drain(..end);
        Ok(reader)
    }

    /// Sends one masked frame (FIN set).
    pub(crate) async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..126 => frame.push(0x80 | n as u8),
            n @ 126..65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => bail!("a frame under 64 KiB"),
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        Ok(self.stream.write_all(&frame).await?)
    }

    async fn fill(&mut self) -> bool {
        self.buf.drain(..std::mem::take(&mut self.pos));
        read_more(&mut self.stream, &mut self.buf).await > 0
    }

    async fn next_text(&mut self) -> Option<(String, usize)> {
        self.next_frame().await.map(|(text, wire, _)| (text, wire))
    }

    /// The next text frame: its text, its bytes on the wire, whether it came compressed.
    pub(crate) async fn next_frame(&mut self) -> Option<(String, usize, bool)> {
        loop {
            if let Some((b0, start, end)) = self.frame() {
                let payload = self.buf[self.pos + start..self.pos + end].to_vec();
                self.pos += end;
                match b0 & 0x0f {
                    0x1 if b0 & 0x40 != 0 => return Some((self.inflated(payload)?, end, true)),
                    0x1 => return Some((String::from_utf8(payload).ok()?, end, false)),
                    0x8 => return None,
                    0x9 => self.send(0xA, &payload).await.ok()?,
                    _ => {}
                }
            } else if !self.fill().await {
                return None;
            }
        }
    }

    /// The first byte, payload start and end of the frame at the front of the buffer, once
    /// it is all there.
    fn frame(&self) -> Option<(u8, usize, usize)> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return None;
        }
        let (len, start) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        (b.len() >= start + len).then_some((b[0], start, start + len))
    }

    /// A compressed message's text (miniz_oxide's core decompressor into one flat buffer).
    /// About 5 µs per message here, most of it building the Huffman tables of the message's
    /// dynamic block: with compressing subscribers this generator, not the server, is the
    /// bottleneck (see BENCHMARKS.md).
    fn inflated(&mut self, mut input: Vec<u8>) -> Option<String> {
        use miniz_oxide::inflate::TINFLStatus;
        use miniz_oxide::inflate::core::{decompress, inflate_flags};
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        self.inflate.init();
        let flags = inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
            | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let mut out = vec![0; input.len() * 4];
        let (mut at_in, mut at_out) = (0, 0);
        loop {
            let (status, read, written) =
                decompress(&mut self.inflate, &input[at_in..], &mut out, at_out, flags);
            at_in += read;
            at_out += written;
            match status {
                TINFLStatus::HasMoreOutput => out.resize(out.len() * 2, 0),
                TINFLStatus::NeedsMoreInput | TINFLStatus::Done if at_in == input.len() => break,
                _ => return None,
            }
        }
        out.truncate(at_out);
        String::from_utf8(out).ok()
    }
}

/// Appends what one read of `stream` brings to `buf` (room for at least 16 KiB); the bytes
/// read, 0 at the end of the stream or on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    buf.reserve(16384);
    tokio::io::AsyncReadExt::read_buf(stream, buf).await.unwrap_or(0)
}

/// A minimal reader of `GET /sse` (chunked `text/event-stream`): yields each event's `data:`.
struct SseReader {
    stream: TcpStream,
    /// Bytes read; those before `raw_at` are de-chunked (dropped at the next read).
    raw: Vec<u8>,
    raw_at: usize,
    /// De-chunked text; events before `text_at` are consumed.
    text: String,
    text_at: usize,
    /// Bytes read from the socket and not yet counted toward an event.
    read: usize,
}

impl SseReader {
    async fn open(mut stream: TcpStream, addr: SocketAddr) -> Result<Self> {
        let request = format!("GET /sse?topic=alerts HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
        let mut reader =
            Self { stream, raw: Vec::new(), raw_at: 0, text: String::new(), text_at: 0, read: 0 };
        while !reader.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            if !reader.fill().await {
                bail!("the server closed the stream before answering");
            }
        }
        let end = reader.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        if !reader.raw.starts_with(b"HTTP/1.1 200") {
            bail!("GET /sse: {}", String::from_utf8_lossy(&reader.raw[..end]));
        }
        reader.raw.drain(..end);
        // welcome, subscribed
        for _ in 0..2 {
            reader.next_data().await.context("the stream's first events")?;
        }
        Ok(reader)
    }

    async fn fill(&mut self) -> bool {
        self.raw.drain(..std::mem::take(&mut self.raw_at));
        let n = read_more(&mut self.stream, &mut self.raw).await;
        self.read += n;
        n > 0
    }

    /// The next event's `data:`, and the bytes read from the socket since the last one.
    async fn next_data(&mut self) -> Option<(String, usize)> {
        loop {
            while let Some(end) = self.text[self.text_at..].find("\n\n") {
                let block = &self.text[self.text_at..self.text_at + end];
                self.text_at += end + 2;
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Some((data.to_owned(), std::mem::take(&mut self.read)));
                }
            }
            // What is left is at most a partial event: drop what was consumed.
            self.text.drain(..std::mem::take(&mut self.text_at));
            // De-chunk whole chunks into text.
            while let Some(line) = self.raw[self.raw_at..].windows(2).position(|w| w == b"\r\n") {
                let chunk = &self.raw[self.raw_at..];
                let size =
                    usize::from_str_radix(std::str::from_utf8(&chunk[..line]).ok()?.trim(), 16)
                        .ok()?;
                if size == 0 {
                    return None;
                }
                if chunk.len() < line + 2 + size + 2 {
                    break;
                }
                self.text.push_str(std::str::from_utf8(&chunk[line + 2..line + 2 + size]).ok()?);
                self.raw_at += line + 2 + size + 2;
            }
            if !self.text.contains("\n\n") && !self.fill().await {
                return None;
            }
        }
    }
}

/// A subscribed client of `addr` (of the given kind), from
/// source address 127.0.0.(1 + id % sources), with small buffers (the generator holds every
/// connection of a scale run).
async fn connect(addr: SocketAddr, id: usize, sources: u8, kind: Kind) -> Result<Subscriber> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (id % sources as usize) as u8);
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    match kind {
        Kind::Sse => return Ok(Subscriber::Sse(SseReader::open(stream, addr).await?)),
        Kind::Deflate => {
            return Ok(Subscriber::Deflate(DeflateReader::open(stream, addr, id).await?));
        }
        Kind::Nats => {
            let reader = crate::loadtest_nats::Reader::open(stream, addr).await?;
            return Ok(Subscriber::Nats(Box::new(reader)));
        }
        Kind::Ws => {}
    }
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut ws = ws_handshake(stream, addr, &format!("/ws/load-{id}"), Some(config)).await?;
    ws.send(Message::Text(r#"{"action":"subscribe","topic":"alerts"}"#.into())).await?;
    // welcome, subscribed
    let mut seen = 0;
    while seen < 2 {
        if let Some(Ok(Message::Text(_))) = ws.next().await {
            seen += 1;
        }
    }
    Ok(Subscriber::Ws(Box::new(ws)))
}

/// Connections one helper process of `--idle` holds (below a 20,000 open-file limit).
const HOLD_PER_PROCESS: usize = 15_000;

/// A helper of `--idle`: opens `n` subscribed connections (ids from `first`) to `targets` in
/// turn, says `ready`, and holds them until its stdin closes.
async fn hold(
    n: usize,
    first: usize,
    targets: &[SocketAddr],
    sources: u8,
    kind: Kind,
) -> Result<()> {
    let mut conns = Vec::with_capacity(n);
    for id in first..first + n {
        let target = targets[id % targets.len()];
        conns.push(
            connect(target, id, sources, kind).await.with_context(|| format!("connection {id}"))?,
        );
    }
    say("ready");
    let mut line = String::new();
    let _ = tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(tokio::io::stdin()),
        &mut line,
    )
    .await;
    drop(conns);
    Ok(())
}

async fn idle(server: &Servers, n: usize, sources: u8, kind: Kind) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, before) = server.usage()?;
    let targets: Vec<String> =
        (0..server.nodes.len().max(2) - 1).map(|i| server.subscriber_node(i).to_string()).collect();
    let targets = targets.join(",");
    let started = Instant::now();
    let mut helpers = Vec::new();
    for first in (0..n).step_by(HOLD_PER_PROCESS) {
        let count = HOLD_PER_PROCESS.min(n - first);
        let mut helper = tokio::process::Command::new(std::env::current_exe()?)
            .args(["loadtest", "--sources", &sources.to_string()])
            .args(kind.flag())
            .arg("--hold")
            .args([count.to_string(), first.to_string(), targets.clone()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = helper.stdout.take().context("helper stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        match lines.next_line().await? {
            Some(line) if line == "ready" => helpers.push(helper),
            _ => bail!("a connection helper failed (connections {first}..{})", first + count),
        }
    }
    let conns = helpers;
    say(&format!(
        "{n} connections opened in {:.1} s by {} helper processes from {sources} source address(es)",
        started.elapsed().as_secs_f64(),
        conns.len()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, after) = server.usage()?;
    say(&format!(
        "\n| idle subscribed {} | server RSS before | after | per connection |\n| --- | --- | --- | --- |\n| {n} | {:.1} MiB | {:.1} MiB | {:.2} KiB |",
        kind.describe(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / n as f64 / 1024.0
    ));
    drop(conns);
    Ok(())
}

pub(crate) fn alert(i: u64, base: Instant) -> String {
    // ~150 bytes on the wire once the server adds seq and topic. In a `--push` run, of a level
    // that is pushed (error).
    let level = if AUTH.get().is_some() { "error" } else { "info" };
    format!(
        r#"{{"type":"alert","data":{{"alert_id":"a{i}","level":"{level}","title":"load","message":"{}","timestamp":"2025-08-27T10:30:00Z"}}}}"#,
        base.elapsed().as_nanos()
    )
}

/// Posts `[alerts…]` over a kept-alive HTTP/1.1 connection.
struct Publisher {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Publisher {
    async fn new(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let Some(tls) = TLS.get() else {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            return Ok(Self { sender, addr });
        };
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, stream).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender, addr })
    }

    /// `GET path` → body text.
    async fn get(&mut self, path: &str) -> Result<String> {
        self.sender.ready().await?;
        let mut req = hyper::Request::get(path).header("host", self.addr.to_string());
        if let Some(token) = AUTH.get() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let resp = self.sender.send_request(req).await?;
        Ok(String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned())
    }

    /// The server's frames-per-write histogram's sum and count (frames written, writes).
    async fn frames_per_write(&mut self) -> Result<(f64, f64)> {
        let text = self.get("/metrics").await?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((value("modelcast_frames_per_flush_sum "), value("modelcast_frames_per_flush_count ")))
    }

    /// The server's publish-to-write histogram: (upper bound in seconds, cumulative count).
    async fn latency_buckets(&mut self) -> Result<Vec<(f64, f64)>> {
        let text = self.get("/metrics").await?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("modelcast_publish_to_write_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect())
    }

    async fn post(&mut self, body: String) -> Result<()> {
        self.sender.ready().await?;
        let req = hyper::Request::post("/api/publish")
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status.as_u16() != 202 {
            bail!("publish failed: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

/// A publisher: an HTTP connection (one request per `per_request` messages) or a WebSocket
/// publish channel (`{"action":"publish",…}` frames, fed together, one flush).
enum Channel {
    Http(Publisher),
    Ws(Box<WsStream>),
    Nats(Box<crate::loadtest_nats::Publisher>),
}

impl Channel {
    async fn open(addr: SocketAddr, ws: bool, id: usize, nats: bool) -> Result<Self> {
        if nats {
            return Ok(Channel::Nats(Box::new(crate::loadtest_nats::Publisher::open(addr).await?)));
        }
        if !ws {
            return Ok(Channel::Http(Publisher::new(addr).await?));
        }
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut ws = ws_handshake(stream, addr, &format!("/ws/publisher-{id}"), None).await?;
        ws.next().await; // welcome
        Ok(Channel::Ws(Box::new(ws)))
    }

    /// Publishes alerts `from..from + n` in one request (HTTP) or one flush (WebSocket).
    async fn publish(&mut self, from: u64, n: u64, base: Instant) -> Result<()> {
        match self {
            Channel::Http(http) => {
                let mut items: Vec<String> = (from..from + n).map(|i| alert(i, base)).collect();
                let body = if n == 1 { items.remove(0) } else { format!("[{}]", items.join(",")) };
                http.post(body).await
            }
            Channel::Ws(ws) => {
                for i in from..from + n {
                    let frame = format!("{{\"action\":\"publish\",{}", &alert(i, base)[1..]);
                    ws.feed(Message::Text(frame.into())).await?;
                }
                Ok(ws.flush().await?)
            }
            Channel::Nats(nats) => nats.publish(from, n, base).await,
        }
    }
}

/// How far (messages per subscriber) flat-out publishing may run ahead of the subscribers, so
/// that "zero lost" is measured for subscribers that keep up.
const FLAT_OUT_AHEAD: u64 = 2000;

/// Runs `o.publishers` channels for `seconds`: each takes the next `per_request` messages from
/// `next`; `pace` (per channel) spaces its requests, `None` is flat out (held back while the
/// subscribers are more than [`FLAT_OUT_AHEAD`] messages behind). Returns the messages
/// published.
async fn publish_phase(
    channels: &mut [Channel],
    o: &Options,
    next: &Arc<AtomicU64>,
    base: Instant,
    seconds: u64,
    pace: Option<Duration>,
    tallies: &[Arc<Tally>],
) -> Result<u64> {
    let start = Instant::now();
    let first = next.load(Ordering::Relaxed);
    let subscribers = tallies.len() as u64;
    let received = || tallies.iter().map(|t| t.received.load(Ordering::Relaxed)).sum::<u64>();
    let runs = channels.iter_mut().map(|channel| {
        let next = next.clone();
        async move {
            let mut tick = pace.map(|p| {
                let mut t = tokio::time::interval(p);
                // Open loop: a late request is sent at once, so the target rate is kept if
                // the server can keep it.
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while start.elapsed() < Duration::from_secs(seconds) {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                } else {
                    while (next.load(Ordering::Relaxed) - 1) * subscribers
                        > received() + FLAT_OUT_AHEAD * subscribers
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let from = next.fetch_add(o.per_request, Ordering::Relaxed);
                channel.publish(from, o.per_request, base).await?;
            }
            anyhow::Ok(())
        }
    });
    for result in futures_util::future::join_all(runs).await {
        result?;
    }
    Ok(next.load(Ordering::Relaxed) - first)
}

/// Extracts `"seq":N` (the frame starts with it) and the send time in the alert's message.
fn parse(frame: &str) -> Option<(u64, Option<u128>)> {
    let seq = frame.strip_prefix("{\"seq\":")?;
    let seq: u64 = seq[..seq.find(',')?].parse().ok()?;
    let sent = frame.find("\"message\":\"").and_then(|i| {
        let rest = &frame[i + 11..];
        rest[..rest.find('"')?].parse().ok()
    });
    Some((seq, sent))
}

async fn load(server: &Servers, o: &Options) -> Result<()> {
    let base = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss_before) = server.usage()?;
    let sink = match o.push {
        Some(devices) => Some(crate::loadtest_push::register(server.publish_to(), devices).await?),
        None => None,
    };
    say(&format!("connecting {} subscribers…", o.subscribers));
    let mut streams = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        streams.push(connect(server.subscriber_node(i), i, o.sources, o.kind).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_after) = server.usage()?;

    let latencies: Arc<std::sync::Mutex<Vec<u32>>> = Arc::default();
    let tallies: Vec<Arc<Tally>> = (0..o.subscribers).map(|_| Arc::new(Tally::default())).collect();
    let recording = Arc::new(AtomicBool::new(true));
    for (ws, tally) in streams.into_iter().zip(&tallies) {
        let tally = tally.clone();
        let latencies = latencies.clone();
        let recording = recording.clone();
        tokio::spawn(async move {
            let mut ws = ws;
            let mut last = 0u64;
            let mut own: Vec<u32> = Vec::new();
            while let Some((t, wire)) = ws.next_text().await {
                tally.wire.fetch_add(wire as u64, Ordering::Relaxed);
                let Some((seq, sent)) = parse(&t) else { continue };
                if seq != last + 1 {
                    tally.lost.fetch_add(seq.saturating_sub(last + 1), Ordering::Relaxed);
                }
                last = seq;
                tally.received.fetch_add(1, Ordering::Relaxed);
                match (sent, recording.load(Ordering::Relaxed)) {
                    (Some(sent), true) => {
                        let micros = (base.elapsed().as_nanos().saturating_sub(sent) / 1000) as u32;
                        own.push(micros);
                    }
                    // Recording ended: hand the samples over once.
                    (_, false) if !own.is_empty() => {
                        latencies.lock().unwrap_or_else(|e| e.into_inner()).append(&mut own);
                    }
                    _ => {}
                }
            }
            latencies.lock().unwrap_or_else(|e| e.into_inner()).append(&mut own);
            tally.closed.store(true, Ordering::Relaxed);
        });
    }
    let received =
        |t: &[Arc<Tally>]| t.iter().map(|t| t.received.load(Ordering::Relaxed)).sum::<u64>();
    let mut channels = Vec::new();
    for i in 0..o.publishers {
        channels.push(Channel::open(server.publish_to(), o.ws_publish, i, o.nats()).await?);
    }
    let next = Arc::new(AtomicU64::new(1));
    // The publish-to-flush histogram of a node with subscribers (in a cluster: from the
    // message's arrival from Redis on that node).
    // A connection each time: the server closes an HTTP connection idle for longer than a
    // phase (its idle timeout), so a kept one would be gone after `--seconds 10`.
    let watched = server.subscriber_node(0);
    let buckets = || async {
        match o.nats() {
            true => Ok(Vec::new()), // NATS has no such histogram
            false => Publisher::new(watched).await?.latency_buckets().await,
        }
    };
    let buckets_before = buckets().await?;
    let writes = || async {
        match o.nats() {
            true => Ok((0.0, 0.0)),
            false => Publisher::new(watched).await?.frames_per_write().await,
        }
    };
    let writes_before = writes().await?;
    // Phase 1: a steady rate.
    say(&format!(
        "phase 1: {} messages/s for {} s, {} per {}, {} publisher(s)…",
        o.rate,
        o.seconds,
        o.per_request,
        if o.ws_publish { "flush of a WebSocket publish channel" } else { "HTTP request" },
        o.publishers
    ));
    let (generator_cpu0, steady_received0) = (own_cpu(), received(&tallies));
    let (server_cpu0, _) = server.usage()?;
    let phase_start = Instant::now();
    // Each channel sends a request every `pace`: together `rate` messages per second.
    let pace =
        Duration::from_secs_f64(o.per_request as f64 * o.publishers as f64 / o.rate.max(1) as f64);
    // Backlog per subscriber during the steady phase, sampled every 10 ms.
    let monitoring = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (tallies, next, monitoring) = (tallies.clone(), next.clone(), monitoring.clone());
        let subscribers = o.subscribers as u64;
        tokio::spawn(async move {
            let mut max_backlog = 0u64;
            while monitoring.load(Ordering::Relaxed) {
                let published = next.load(Ordering::Relaxed) - 1;
                let got: u64 = tallies.iter().map(|t| t.received.load(Ordering::Relaxed)).sum();
                let behind = (published * subscribers).saturating_sub(got) / subscribers;
                max_backlog = max_backlog.max(behind);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max_backlog
        })
    };
    let steady_sent =
        publish_phase(&mut channels, o, &next, base, o.seconds, Some(pace), &tallies).await?;
    let steady_wall = phase_start.elapsed().as_secs_f64();
    monitoring.store(false, Ordering::Relaxed);
    let max_backlog = monitor.await.unwrap_or(0);

    wait_for(&tallies, steady_sent * o.subscribers as u64, &received).await;
    recording.store(false, Ordering::Relaxed);
    let generator_cpu = own_cpu() - generator_cpu0;
    let generator_frames = received(&tallies) - steady_received0;
    let generator_wall = phase_start.elapsed().as_secs_f64();
    // The server's CPU over the steady phase (until its last delivery arrived): per delivery,
    // and as a share of its core.
    let (server_cpu1, _) = server.usage()?;
    let steady_cpu = server_cpu1 - server_cpu0;
    let buckets_after = buckets().await?;
    let writes_after = writes().await?;
    let per_write = match (writes_after.1 - writes_before.1, o.nats()) {
        (_, true) => "not known (NATS)".to_owned(),
        (w, false) if w > 0.0 => format!("{:.2}", (writes_after.0 - writes_before.0) / w),
        _ => "no writes".to_owned(),
    };
    let server_view = match o.nats() {
        true => "none (NATS has no such histogram)".to_owned(),
        false => histogram_quantiles(&buckets_before, &buckets_after),
    };

    // Phase 2: flat out.
    say(&format!("phase 2: flat out for {} s…", o.seconds));
    let (cpu0, _) = server.usage()?;
    let delivered0 = received(&tallies);
    let wire = |t: &[Arc<Tally>]| t.iter().map(|t| t.wire.load(Ordering::Relaxed)).sum::<u64>();
    let stats = || async {
        match o.nats() {
            true => Ok(None),
            false => compression(server.subscriber_node(0)).await,
        }
    };
    let (wire0, stats0) = (wire(&tallies), stats().await?);
    let phase_start = Instant::now();
    let flat = publish_phase(&mut channels, o, &next, base, o.seconds, None, &tallies).await?;
    let flat_wall = phase_start.elapsed().as_secs_f64();
    let total = next.load(Ordering::Relaxed) - 1;
    wait_for(&tallies, total * o.subscribers as u64, &received).await;
    let elapsed = phase_start.elapsed().as_secs_f64();
    let (cpu1, _) = server.usage()?;
    let delivered = received(&tallies) - delivered0;
    let wire_per_delivery = (wire(&tallies) - wire0) as f64 / delivered.max(1) as f64;
    let stats1 = stats().await?;
    let lost: u64 = tallies.iter().map(|t| t.lost.load(Ordering::Relaxed)).sum();
    let dropped = tallies.iter().filter(|t| t.closed.load(Ordering::Relaxed)).count();

    let mut steady: Vec<u32> =
        std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    steady.sort_unstable();
    let pct = |p: f64| {
        steady
            .get(((steady.len() as f64 * p) as usize).min(steady.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let how = format!(
        "{}{} msg per {}, {} publisher(s)",
        if o.nats() { "NATS: " } else { "" },
        o.per_request,
        if o.ws_publish { "WebSocket flush" } else { "HTTP request" },
        o.publishers
    );
    say(&format!(
        "\n| subscribers | publishing | phase | published (msg/s achieved) | deliveries/s | server CPU per delivery | p50 | p99 | max | max backlog (msgs/subscriber) | lost | dropped subscribers |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | {n} | {how} | {rate}/s for {s} s | {steady_sent} ({:.0}/s) | {:.0} | {steady_us:.3} µs ({steady_pct:.0}% of a core) | {:.2} ms | {:.2} ms | {:.2} ms | {max_backlog} | {lost} | {dropped} |\n\
         | {n} | {how} | flat out for {s} s | {flat} ({:.0}/s) | {:.0} | {:.3} µs | — | — | — | — | {lost} | {dropped} |\n\
         \nload generator in the steady phase: {gen_us:.2} µs of its CPU per received frame, {gen_pct:.0}% of its core\n\
         server's own publish-to-flush latency in the steady phase (from /metrics, bucket upper bounds): {server_view}; frames per write: {per_write}\n\
         server RSS: {:.1} MiB before connecting, {:.1} MiB with {n} subscribers: {:.2} KiB per connection\n\
         subscribers: {kind}; flat-out phase: {wire_per_delivery:.1} bytes on the wire per delivery (frame headers included); {compressions}",
        steady_sent as f64 / steady_wall,
        steady_sent as f64 * o.subscribers as f64 / steady_wall,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        steady.last().copied().unwrap_or(0) as f64 / 1000.0,
        flat as f64 / flat_wall,
        delivered as f64 / elapsed,
        (cpu1 - cpu0) / delivered.max(1) as f64 * 1e6,
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        rss_after.saturating_sub(rss_before) as f64 / o.subscribers as f64 / 1024.0,
        gen_us = generator_cpu / generator_frames.max(1) as f64 * 1e6,
        steady_us = steady_cpu / generator_frames.max(1) as f64 * 1e6,
        steady_pct = steady_cpu / generator_wall * 100.0,
        gen_pct = generator_cpu / generator_wall * 100.0,
        n = o.subscribers,
        kind = o.kind.describe(),
        compressions = match (stats0, stats1) {
            (Some((c0, b0, a0)), Some((c1, b1, a1))) if o.kind == Kind::Deflate => format!(
                "{} deflate calls for {flat} messages, payload bytes written compressed per delivery: {:.1} before compression, {:.1} after",
                c1 - c0,
                (b1 - b0) as f64 / delivered.max(1) as f64,
                (a1 - a0) as f64 / delivered.max(1) as f64,
            ),
            _ => "nothing compressed".to_owned(),
        },
        rate = o.rate,
        s = o.seconds,
    ));
    if let Some(sink) = sink {
        say(&sink.report(server.publish_to()).await?);
    }
    Ok(())
}

/// `/api/stats`' compression counters of the node at `addr`: deflate calls, bytes of frames
/// written compressed before and after compression (`None` on a node without them). A new
/// connection each time: a kept one may have timed out while subscribers caught up.
async fn compression(addr: SocketAddr) -> Result<Option<(u64, u64, u64)>> {
    let stats = Publisher::new(addr).await?.get("/api/stats").await?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    let c = &stats["compression"];
    Ok(c["compressions"]
        .as_u64()
        .zip(c["bytes_before"].as_u64())
        .zip(c["bytes_after"].as_u64())
        .map(|((calls, before), after)| (calls, before, after)))
}

/// p50/p99 upper bounds from two cumulative histogram snapshots.
fn histogram_quantiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> String {
    let delta: Vec<(f64, f64)> =
        after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    if total == 0.0 {
        return "no samples".into();
    }
    let q = |p: f64| {
        delta.iter().find(|(_, c)| *c >= total * p).map_or(f64::INFINITY, |(le, _)| *le) * 1000.0
    };
    format!("p50 ≤ {:.2} ms, p99 ≤ {:.2} ms ({total} frames)", q(0.5), q(0.99))
}

async fn wait_for(tallies: &[Arc<Tally>], target: u64, received: &impl Fn(&[Arc<Tally>]) -> u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(tallies) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn say(line: &str) {
    println!("{line}");
}
