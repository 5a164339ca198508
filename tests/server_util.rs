//! A modelcast server started in-process on `127.0.0.1:0`, real WebSocket and HTTP clients.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use modelcast_server::{Config, Server, ShutdownHandle};
use serde_json::Value;
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
    handle: ShutdownHandle,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with the defaults plus `args` (flags as on the command line).
    pub async fn start(args: &[&str]) -> Self {
        let mut argv = vec!["modelcast", "--bind", "127.0.0.1:0"];
        argv.extend_from_slice(args);
        let config = Config::try_parse_args(argv).expect("valid test config");
        let server = Server::bind(config).await.expect("bind 127.0.0.1:0");
        let addr = server.local_addr();
        let hub = server.hub().clone();
        let handle = server.shutdown_handle();
        let task = Some(tokio::spawn(server.run()));
        Self { addr, hub, handle, task }
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
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
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

/// The `modelcast` binary, built on first use (the test binary's target directory).
pub fn binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
            let bin = dir.join("modelcast");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "modelcast-server", "--bin", "modelcast"])
                .current_dir(crate::root())
                .status()
                .expect("cargo build runs");
            assert!(status.success(), "building the modelcast binary failed");
            assert!(bin.exists(), "{} missing after build", bin.display());
            bin
        })
        .clone()
}
