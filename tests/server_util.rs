//! A modelcast server started in-process on `127.0.0.1:0`, real WebSocket and HTTP clients.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use modelcast_server::{Config, Server, ShutdownHandle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running server; shut down (gracefully) when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its hub, for in-process assertions.
    pub hub: modelcast_hub::Hub,
    /// Its notifiers (and through them, its policy and hub).
    pub notifiers: modelcast_notifiers::Notifiers,
    handle: ShutdownHandle,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with the defaults plus `args` (flags as on the command line).
    pub async fn start(args: &[&str]) -> Self {
        let mut argv = vec!["modelcast", "--bind", "127.0.0.1:0"];
        argv.extend_from_slice(args);
        let config = Config::try_parse_args(argv).expect("valid test config");
        Self::running(Server::bind(config).await.expect("bind 127.0.0.1:0"))
    }

    /// Starts a new listener at `addr` in front of an existing hub (a listener restart).
    pub async fn restart_on(addr: SocketAddr, notifiers: modelcast_notifiers::Notifiers) -> Self {
        let config =
            Config::try_parse_args(["modelcast", "--bind", &addr.to_string()]).expect("config");
        Self::running(Server::bind_with(config, notifiers).await.expect("rebind the same address"))
    }

    fn running(server: Server) -> Self {
        let addr = server.local_addr();
        let hub = server.hub().clone();
        let notifiers = server.notifiers().clone();
        let handle = server.shutdown_handle();
        let task = Some(tokio::spawn(server.run()));
        Self { addr, hub, notifiers, handle, task }
    }

    /// Begins the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.handle.shutdown();
    }

    /// Shuts down and waits until `run` returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.handle.shutdown();
        let task = self.task.take().expect("running");
        tokio::time::timeout(PATIENCE, task).await.expect("server stops in time").expect("no panic")
    }

    /// Opens a WebSocket to `path` (e.g. `/ws/tab-1`) and reads the `welcome`.
    pub async fn ws(&self, path: &str) -> Client {
        let mut client = self.ws_raw(path).await;
        let welcome = client.next_json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    /// Opens a WebSocket without reading anything.
    pub async fn ws_raw(&self, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr))
            .await
            .expect("websocket handshake");
        Client { ws }
    }

    /// `POST` `body` to `path`; returns the status and the JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, Some(body.to_string())).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `GET` `path`; returns the status and the body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, None).await
    }

    /// One HTTP/1.1 request over a fresh connection, with hyper's client.
    pub async fn request(&self, method: &str, path: &str, body: Option<String>) -> (u16, String) {
        self.request_with(method, path, &[], body).await
    }

    /// As [`TestServer::request`], with extra headers.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (u16, String) {
        http_request(self.addr, method, path, headers, body).await
    }
}

/// One HTTP/1.1 request to `addr` over a fresh connection, with hyper's client; returns the
/// status and the body text.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (u16, String) {
    http_request_full(addr, method, path, headers, body)
        .await
        .map(|(status, _, body)| (status, body))
        .expect("an HTTP response")
}

/// As [`http_request`], with the response headers; `None` if the server could not be reached.
pub async fn http_request_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Option<(u16, hyper::HeaderMap, String)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    let req = headers.iter().fold(req, |req, (name, value)| req.header(*name, *value));
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("request");
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, String::from_utf8_lossy(&bytes).into_owned()))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A real WebSocket client.
#[derive(Debug)]
pub struct Client {
    /// The tokio-tungstenite stream.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Opens a WebSocket to `path` on `addr` without reading anything.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("websocket handshake");
        Client { ws }
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, v: &Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    /// Sends a raw frame.
    pub async fn send(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next text frame as JSON (pings are answered and skipped).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("no error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skips frames until one of `type` `ty` arrives.
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason (`None` if the
    /// connection ended without a close frame), and the text frames seen before it.
    pub async fn until_close(&mut self) -> (Option<(u16, String)>, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Text(t))) => {
                    frames.push(serde_json::from_str(t.as_str()).expect("JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return (frame.map(|f| (u16::from(f.code), f.reason.to_string())), frames);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (None, frames),
            }
        }
    }

    /// Sends a subscribe and returns the `subscribed` reply.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.send_json(&serde_json::json!({"action": "subscribe", "topic": topic})).await;
        self.next_of_type("subscribed").await
    }
}

/// The `modelcast` binary, built on first use.
pub fn binary() -> std::path::PathBuf {
    built_binary("modelcast-server", "modelcast")
}

/// A workspace binary, built on first use (the test binary's target directory).
pub fn built_binary(package: &str, name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = dir.join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .current_dir(crate::root())
        .status()
        .expect("cargo build runs");
    assert!(status.success(), "building {name} failed");
    assert!(bin.exists(), "{} missing after build", bin.display());
    built.push((name.to_owned(), bin.clone()));
    bin
}

/// A TCP proxy in front of a server that can drop or freeze the connections it carries.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<ProxiedConn>>>,
}

#[derive(Debug, Clone)]
struct ProxiedConn {
    killed: std::sync::Arc<tokio::sync::Notify>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Proxies to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let conns: std::sync::Arc<std::sync::Mutex<Vec<ProxiedConn>>> = Default::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(upstream).await else { continue };
                let conn = ProxiedConn { killed: Default::default(), frozen: Default::default() };
                list.lock().unwrap().push(conn.clone());
                tokio::spawn(pump(inbound, outbound, conn));
            }
        });
        Self { addr, conns }
    }

    /// Drops every open connection abruptly (as a broken network would).
    pub fn drop_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.killed.notify_one();
        }
    }

    /// Stops forwarding on every open connection without closing it (a hung peer);
    /// new connections work.
    pub fn freeze_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.frozen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn pump(a: TcpStream, b: TcpStream, conn: ProxiedConn) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let frozen = conn.frozen.clone();
    let copy = |mut r: tokio::net::tcp::OwnedReadHalf,
                mut w: tokio::net::tcp::OwnedWriteHalf,
                frozen: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while frozen.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = copy(ar, bw, frozen.clone()) => {}
        () = copy(br, aw, frozen) => {}
        () = conn.killed.notified() => {}
    }
}

/// The real `modelcast` binary on a free port (its stdout and stderr piped), killed on drop:
/// for what only a process shows — its memory, its signals, its log.
#[derive(Debug)]
pub struct BinaryServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub child: std::process::Child,
    /// Where its stdout and stderr go, when started with [`BinaryServer::start_logged`].
    log: Option<std::path::PathBuf>,
}

impl BinaryServer {
    /// Starts the binary with `args` (after `--bind`) and `env`, its output discarded, and
    /// waits until it serves.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(args, env, std::process::Stdio::null(), std::process::Stdio::null()).await
    }

    /// As [`BinaryServer::start`], with its stdout and stderr in a file of its own (read with
    /// [`BinaryServer::log`], removed on drop).
    pub async fn start_logged(args: &[&str], env: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("modelcast-{}-{n}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("a log file");
        let stderr = file.try_clone().expect("a second handle");
        let mut server = Self::start_with(args, env, file.into(), stderr.into()).await;
        server.log = Some(path);
        server
    }

    /// What the process has logged so far (started with [`BinaryServer::start_logged`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// As [`BinaryServer::start`], with its stdout and stderr going to `stdout` and `stderr`.
    pub async fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = std::process::Command::new(binary())
            .args(["--bind", &addr.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn modelcast");
        let server = Self { addr, child, log: None };
        // A server with TLS on its port answers no plain request: listening is enough.
        let tls = args.contains(&"--tls-cert");
        for _ in 0..200 {
            let up = match tls {
                true => TcpStream::connect(addr).await.is_ok(),
                false => http_request_full(addr, "GET", "/healthz", &[], None).await.is_some(),
            };
            if up {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the binary did not serve on {addr}");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` figure in KiB: `VmRSS` (resident now) or `VmHWM` (the peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// Sends `signal` (e.g. `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let sent = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Waits up to `patience` for the process to exit; its status if it did.
    pub async fn exited_within(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + patience;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = &self.log {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// One event of a stream.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `data:`, one JSON frame.
    pub data: Value,
}

/// A byte stream to the server: TCP, or TLS over it ([`crate::tls_util::Transport::dial`]).
pub trait Duplex:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + std::fmt::Debug
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + std::fmt::Debug> Duplex
    for T
{
}

/// A raw HTTP/1.1 client reading an event stream (`GET /sse`).
#[derive(Debug)]
pub struct Sse {
    stream: Box<dyn Duplex>,
    /// Bytes read and not yet de-chunked.
    buffer: Vec<u8>,
    /// Body text de-chunked and not yet parsed into events.
    text: String,
    events: VecDeque<Event>,
    /// The response's status line and headers.
    pub head: String,
    /// The body's last chunk (`0\r\n\r\n`) arrived.
    pub ended: bool,
}

impl Sse {
    /// `GET path` with `headers` from `addr`; reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Self::open_over(&crate::tls_util::Transport::Plain, addr, path, headers).await
    }

    /// [`Sse::open`] over `transport` (plain or TLS).
    pub async fn open_over(
        transport: &crate::tls_util::Transport,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        let mut stream = transport.dial(addr).await;
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            buffer: Vec::new(),
            text: String::new(),
            events: VecDeque::new(),
            head: String::new(),
            ended: false,
        };
        while !sse.buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(sse.fill().await, "the server answers");
        }
        let end = sse.buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        sse.head = String::from_utf8_lossy(&sse.buffer[..end]).into_owned();
        sse.buffer.drain(..end);
        sse
    }

    /// The response's status.
    pub fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Reads more bytes; `false` at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await.expect("in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Moves whole chunks of the body (chunked encoding) into `text`.
    fn dechunk(&mut self) {
        while let Some(line_end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.buffer[..line_end]).unwrap().trim();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if self.buffer.len() < line_end + 2 + size + 2 {
                break;
            }
            if size == 0 {
                self.ended = true;
            }
            let data = &self.buffer[line_end + 2..line_end + 2 + size];
            self.text.push_str(std::str::from_utf8(data).unwrap());
            self.buffer.drain(..line_end + 2 + size + 2);
        }
    }

    /// Parses the complete events in `text` (comments and `retry:` skipped).
    fn parse(&mut self) {
        while let Some(end) = self.text.find("\n\n") {
            let block: String = self.text.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("data is one JSON frame"));
                } else {
                    assert!(
                        line.starts_with(':') || line.starts_with("retry: ") || line.is_empty(),
                        "an unexpected line: {line:?}"
                    );
                }
            }
            if let Some(data) = data {
                self.events.push_back(Event { id, data });
            }
        }
    }

    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            self.dechunk();
            self.parse();
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.ended || !self.fill().await {
                return None;
            }
        }
    }

    /// Events until one with `type` `ty`.
    pub async fn until(&mut self, ty: &str) -> Event {
        loop {
            let event = self.next().await.unwrap_or_else(|| panic!("the stream ended before {ty}"));
            if event.data["type"] == ty {
                return event;
            }
        }
    }

    /// The next `n` topic messages (events with a `seq`, not late).
    pub async fn messages(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = self.next().await.expect("the stream goes on");
            if event.data.get("seq").is_some() && event.data.get("late").is_none() {
                out.push(event);
            }
        }
        out
    }
}

/// A frame as it was on the wire (from the server: unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    /// FIN.
    pub fin: bool,
    /// RSV1: the first frame of a compressed message.
    pub rsv1: bool,
    /// The opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation).
    pub opcode: u8,
    /// The payload, as sent.
    pub payload: Vec<u8>,
}

/// A message read by [`RawWs`]: its opcode, its payload (inflated when it came compressed),
/// and whether it came compressed.
#[derive(Debug, Clone)]
pub struct WireMessage {
    /// The opcode of its first frame.
    pub opcode: u8,
    /// The payload, inflated.
    pub payload: Vec<u8>,
    /// Whether the first frame had RSV1 set.
    pub compressed: bool,
}

impl WireMessage {
    /// A text message's JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).expect("a JSON text message")
    }
}

/// A WebSocket client written byte by byte, for what tungstenite cannot do: it offers any
/// `Sec-WebSocket-Extensions`, sends frames exactly as a test builds them (RSV1, fragments,
/// control frames between fragments) and reads frames as they are on the wire, inflating
/// compressed messages as RFC 7692 says — with flate2 directly, not with the server's code.
#[derive(Debug)]
pub struct RawWs {
    stream: Box<dyn Duplex>,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` the server answered with.
    pub extensions: Option<String>,
}

impl RawWs {
    /// Opens a WebSocket to `path`, offering `extensions`; panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, path: &str, extensions: Option<&str>) -> Self {
        Self::connect_over(&crate::tls_util::Transport::Plain, addr, path, extensions).await
    }

    /// [`RawWs::connect`] over `transport` (plain or TLS).
    pub async fn connect_over(
        transport: &crate::tls_util::Transport,
        addr: SocketAddr,
        path: &str,
        extensions: Option<&str>,
    ) -> Self {
        let mut stream = transport.dial(addr).await;
        let offer =
            extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("handshake sent");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
                .await
                .expect("handshake answer in time")
                .expect("read");
            assert!(n > 0, "the server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "the RFC's accept key: {head}");
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions").then(|| value.trim().to_owned())
        });
        buf.drain(..end);
        RawWs { stream, buf, extensions }
    }

    /// Sends one frame: `b0` is FIN, RSV and opcode as on the wire; the payload is masked.
    pub async fn send_frame(&mut self, b0: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.expect("frame sent");
    }

    /// Sends a text message uncompressed.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes()).await;
    }

    /// Sends a text message compressed, in `fragments` frames (RSV1 on the first only).
    pub async fn send_compressed(&mut self, text: &str, fragments: usize) {
        let compressed = deflate(text.as_bytes());
        let size = compressed.len().div_ceil(fragments).max(1);
        let pieces: Vec<&[u8]> = compressed.chunks(size).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
            let first = if i == 0 { 0x40 | 0x01 } else { 0 };
            self.send_frame(fin | first, piece).await;
        }
    }

    /// The next frame on the wire, or `None` when the server closed the TCP connection.
    pub async fn next_frame(&mut self) -> Option<WireFrame> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b1 & 0x80, 0, "server frames are not masked");
                let (len, at) = match b1 & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(WireFrame {
                        fin: b0 & 0x80 != 0,
                        rsv1: b0 & 0x40 != 0,
                        opcode: b0 & 0x0F,
                        payload,
                    });
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("no frame within {PATIENCE:?}"),
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message (control frames included), inflated; `None` at the TCP close.
    pub async fn next_message(&mut self) -> Option<WireMessage> {
        let first = self.next_frame().await?;
        let (opcode, compressed, mut payload, mut fin) =
            (first.opcode, first.rsv1, first.payload, first.fin);
        while !fin {
            let next = self.next_frame().await?;
            assert_eq!(next.opcode, 0, "a continuation (the server interleaves nothing)");
            payload.extend_from_slice(&next.payload);
            fin = next.fin;
        }
        if compressed {
            payload = inflate(&payload);
        }
        Some(WireMessage { opcode, payload, compressed })
    }

    /// The next text message as JSON, and whether it came compressed (pings are skipped).
    pub async fn next_json(&mut self) -> (Value, bool) {
        loop {
            let message = self.next_message().await.expect("a message before the close");
            match message.opcode {
                1 => return (message.json(), message.compressed),
                9 | 10 => continue,
                other => panic!("expected a text message, got opcode {other}: {message:?}"),
            }
        }
    }

    /// Reads until the server's close frame and then the TCP close; returns the close code
    /// (`None` for a close without one or no close frame at all).
    pub async fn until_close(&mut self) -> Option<u16> {
        while let Some(message) = self.next_message().await {
            if message.opcode == 8 {
                let code = (message.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([message.payload[0], message.payload[1]]));
                // Answer it, as a client completes the closing handshake.
                self.send_frame(0x88, &message.payload[..message.payload.len().min(2)]).await;
                while self.next_frame().await.is_some() {}
                return code;
            }
        }
        None
    }
}

/// Compresses as a permessage-deflate sender does: raw DEFLATE, sync flush, tail removed.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let consumed = compressor.total_in() as usize;
        let status = compressor
            .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        if compressor.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        assert_ne!(status, flate2::Status::StreamEnd);
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates one permessage-deflate message (no context takeover): the tail added back.
pub fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
    let mut inflater = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    loop {
        let consumed = inflater.total_in() as usize;
        inflater
            .decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync)
            .expect("the server's compressed data inflates");
        if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity().max(1024));
    }
}

/// An HS256 JWT signed with `secret` for user `sub` holding `roles`, valid for an hour.
pub fn hs256_token(secret: &str, sub: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "roles": roles, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token encodes")
}

/// As [`hs256_token`], issued at `iat` (seconds since 1970): what a revocation compares.
pub fn hs256_token_issued(secret: &str, sub: &str, roles: &[&str], iat: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "roles": roles, "exp": iat + 3600, "iat": iat}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token encodes")
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
