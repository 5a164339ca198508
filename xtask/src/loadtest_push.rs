//! `cargo xtask loadtest --push N`: the server with Web Push on (its key made by
//! `modelcast push-keys`; tokens required, so every connection of the run carries one), N users
//! with one browser each registered to a local sink that answers every push 201, and alerts of
//! a pushed level — the fan-out's cost with push doing its work beside it. `--push 0`: push on
//! and no device (the tap's cost alone).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The run's HS256 secret (loopback only, for this run).
const SECRET: &str = "loadtest-push-secret-0123456789-0123456789-0123456789";

/// The browsers' public key (a P-256 point; every device shares it: the server encrypts to
/// each all the same).
static BROWSER_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A token for `sub` with the operator role (it reads /metrics too).
fn token(sub: &str) -> Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = serde_json::json!({"sub": sub, "roles": ["admin"], "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// A key pair from `modelcast push-keys`: the PEM's path (in a new temporary directory) and the
/// public key.
fn push_keys(bin: &std::path::Path, dir: &std::path::Path, name: &str) -> Result<(String, String)> {
    let out =
        std::process::Command::new(bin).arg("push-keys").output().context("modelcast push-keys")?;
    if !out.status.success() {
        bail!("modelcast push-keys failed");
    }
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let public = stderr
        .split("serves it): ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("push-keys printed no public key")?;
    Ok((path.display().to_string(), public.to_owned()))
}

/// The server's flags for a push run; sets the run's token for every connection.
pub(crate) fn server_args(bin: &std::path::Path) -> Result<Vec<String>> {
    let dir = std::env::temp_dir().join(format!("modelcast-loadtest-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (vapid, _) = push_keys(bin, &dir, "vapid.pem")?;
    let (_, browser) = push_keys(bin, &dir, "browser.pem")?;
    let _ = BROWSER_KEY.set(browser);
    let _ = crate::loadtest::AUTH.set(token("load")?);
    Ok([
        "--jwt-secret",
        SECRET,
        "--vapid-private-key",
        &vapid,
        "--vapid-subject",
        "mailto:load@example.com",
        "--push-insecure-endpoints",
        "--data-dir",
        &dir.join("data").display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect())
}

/// The sink the devices point at, and what it received.
pub(crate) struct Sink {
    received: Arc<AtomicU64>,
    devices: usize,
}

/// Starts the sink and registers `devices` users' browsers on the server at `addr`.
pub(crate) async fn register(addr: SocketAddr, devices: usize) -> Result<Sink> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, count.clone()));
        }
    });
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let key = BROWSER_KEY.get().context("server_args first")?;
    for i in 0..devices {
        let body = serde_json::json!({
            "endpoint": format!("http://{sink_addr}/push/{i}"),
            "keys": {"p256dh": key, "auth": "MDEyMzQ1Njc4OWFiY2RlZg"},
        });
        sender.ready().await?;
        let req = hyper::Request::post("/api/push/subscriptions")
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {}", token(&format!("user-{i}"))?))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        if status != 201 {
            bail!("registering device {i}: {status} {}", String::from_utf8_lossy(&text));
        }
    }
    crate::loadtest::say(&format!("push: {devices} devices registered, sink at {sink_addr}"));
    Ok(Sink { received, devices })
}

/// Answers every request on `stream` 201 (HTTP/1.1 keep-alive), counting them.
async fn answer(mut stream: TcpStream, count: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // One request: headers, then content-length bytes.
        let (head_end, length) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        count.fetch_add(1, Ordering::Relaxed);
        let reply = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

impl Sink {
    /// What push did in the run: pushes the sink received, and the server's push counters.
    pub(crate) async fn report(&self, addr: SocketAddr) -> Result<String> {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/api/stats")
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {}", token("load")?))
            .body(Full::new(Bytes::new()))?;
        let stats = sender.send_request(req).await?.into_body().collect().await?.to_bytes();
        let stats: serde_json::Value = serde_json::from_slice(&stats)?;
        Ok(format!(
            "push: {} devices; the sink received {} pushes; server: {}",
            self.devices,
            self.received.load(Ordering::Relaxed),
            stats["push"]
        ))
    }
}
