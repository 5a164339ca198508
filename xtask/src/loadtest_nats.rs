//! `cargo xtask loadtest --peer nats`: the same load against NATS (Debian's `nats-server`,
//! its WebSocket listener), so modelcast is compared with its peer in one run on one machine.
//!
//! NATS is started pinned to core 0 as modelcast is, with compression off; subscribers speak
//! its text protocol over WebSocket (`CONNECT`, `SUB alerts 1`, then `MSG` frames, several
//! per WebSocket message when NATS coalesces) and publishers send one `PUB` per message over a
//! WebSocket, as `--ws-publish` does for modelcast. The payload is the frame modelcast would
//! deliver (`{"seq":N,"topic":"alerts","type":"alert","data":{…}}`, its send time inside),
//! so subscribers parse, count and time both servers alike. NATS has no HTTP publish and no
//! publish-to-flush histogram: those parts of the report say so.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::loadtest::{ServerProcess, WsStream};

/// Starts `nats-server` with a plaintext WebSocket listener on a free port (pinned to core 0
/// when `pin`); returns it with the WebSocket address.
pub(crate) fn start(pin: bool) -> Result<ServerProcess> {
    let free =
        || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (client, ws) = (free()?, free()?);
    let dir = std::env::temp_dir().join(format!("modelcast-loadtest-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{client}\nmax_payload: 1MB\n\
             websocket {{\n  listen: \"127.0.0.1:{ws}\"\n  no_tls: true\n  compression: false\n}}\n"
        ),
    )?;
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "nats-server"]);
        c
    } else {
        Command::new("nats-server")
    };
    let child = cmd
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (Debian package nats-server)")?;
    let addr: SocketAddr = format!("127.0.0.1:{ws}").parse()?;
    let server = ServerProcess { child, addr };
    crate::loadtest::wait_listening(addr)?;
    let version = Command::new("nats-server").arg("--version").output()?;
    crate::loadtest::say(&format!(
        "peer: {} (WebSocket on {addr}, compression off)",
        String::from_utf8_lossy(&version.stdout).trim()
    ));
    Ok(server)
}

/// A NATS WebSocket connection that has sent `CONNECT` (and, for a subscriber, `SUB
/// alerts 1`) and seen the server's `PONG` to its `PING`.
async fn open(stream: TcpStream, addr: SocketAddr, subscribe: bool) -> Result<WsStream> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{addr}/");
    let (mut ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, Some(config), None).await?;
    let sub = if subscribe { "SUB alerts 1\r\n" } else { "" };
    let hello = format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n{sub}PING\r\n");
    ws.send(Message::Text(hello.into())).await?;
    loop {
        match ws.next().await.context("nats closed during CONNECT")?? {
            Message::Text(t) if t.contains("PONG") => return Ok(ws),
            Message::Binary(b) if b.windows(4).any(|w| w == b"PONG") => return Ok(ws),
            Message::Text(t) if t.starts_with("-ERR") => bail!("nats refused: {t}"),
            _ => {}
        }
    }
}

/// A subscriber: NATS sends `MSG` lines with their payloads, several per WebSocket message
/// when it coalesces; they are handed out one at a time.
pub(crate) struct Reader {
    ws: WsStream,
    buf: Vec<u8>,
    ready: VecDeque<(String, usize)>,
}

impl Reader {
    /// A subscriber of `alerts` on the NATS at `addr` (over `stream`).
    pub(crate) async fn open(stream: TcpStream, addr: SocketAddr) -> Result<Self> {
        Ok(Self { ws: open(stream, addr, true).await?, buf: Vec::new(), ready: VecDeque::new() })
    }

    /// The next message's payload and the bytes read from the socket for it (a WebSocket
    /// message's bytes are counted with its first `MSG`); `None` when the connection closed.
    pub(crate) async fn next_text(&mut self) -> Option<(String, usize)> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return Some(next);
            }
            let data = match self.ws.next().await? {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                Ok(_) => continue,
                Err(_) => return None,
            };
            // Server frames are unmasked: a 2-byte header, 4 from 126 bytes, 10 from 64 KiB.
            let mut wire = data.len()
                + if data.len() < 126 {
                    2
                } else if data.len() < 65536 {
                    4
                } else {
                    10
                };
            self.buf.extend_from_slice(&data);
            let mut pong = false;
            let mut at = 0;
            while let Some(end) = find(&self.buf[at..], b"\r\n").map(|e| at + e) {
                let line = &self.buf[at..end];
                if line.starts_with(b"MSG ") {
                    let len: usize = std::str::from_utf8(line)
                        .ok()
                        .and_then(|l| l.rsplit(' ').next())
                        .and_then(|n| n.parse().ok())?;
                    let (start, stop) = (end + 2, end + 2 + len);
                    if self.buf.len() < stop + 2 {
                        break; // the payload continues in the next WebSocket message
                    }
                    let text = String::from_utf8_lossy(&self.buf[start..stop]).into_owned();
                    self.ready.push_back((text, std::mem::take(&mut wire)));
                    at = stop + 2;
                } else {
                    pong |= line == b"PING";
                    at = end + 2;
                }
            }
            self.buf.drain(..at);
            if pong && self.ws.send(Message::Text("PONG\r\n".into())).await.is_err() {
                return None;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A publisher: one `PUB alerts` per message over a NATS WebSocket connection.
pub(crate) struct Publisher(WsStream);

impl Publisher {
    /// A publisher connection to the NATS at `addr`.
    pub(crate) async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self(open(stream, addr, false).await?))
    }

    /// Publishes alerts `from..from + n`, fed together and flushed once, as the frames
    /// modelcast would deliver (with `seq` set to the message's number).
    pub(crate) async fn publish(&mut self, from: u64, n: u64, base: Instant) -> Result<()> {
        for i in from..from + n {
            let alert = crate::loadtest::alert(i, base);
            let payload = format!("{{\"seq\":{i},\"topic\":\"alerts\",{}", &alert[1..]);
            let frame = format!("PUB alerts {}\r\n{payload}\r\n", payload.len());
            self.0.feed(Message::Text(frame.into())).await?;
        }
        Ok(self.0.flush().await?)
    }
}
