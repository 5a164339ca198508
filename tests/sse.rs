//! Server-Sent Events (`GET /sse`) over real sockets: the WebSocket's frames as events, every
//! event's `id` a position that recovers every topic of the stream (`Last-Event-ID`), the
//! same checks as a WebSocket (tokens, roles), and an end that is always clean.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use modelcast_tests::server_util::{PATIENCE, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One event of a stream.
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    data: Value,
}

/// A raw HTTP/1.1 client reading an event stream.
struct Sse {
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    buffer: Vec<u8>,
    /// Body text de-chunked and not yet parsed into events.
    text: String,
    events: VecDeque<Event>,
    /// The response's status line and headers.
    head: String,
    /// The body's last chunk (`0\r\n\r\n`) arrived.
    ended: bool,
}

impl Sse {
    /// `GET path` with `headers`; reads the response head.
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
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

    fn status(&self) -> u16 {
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
    async fn next(&mut self) -> Option<Event> {
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
    async fn until(&mut self, ty: &str) -> Event {
        loop {
            let event = self.next().await.unwrap_or_else(|| panic!("the stream ended before {ty}"));
            if event.data["type"] == ty {
                return event;
            }
        }
    }

    /// The next `n` topic messages (events with a `seq`, not late).
    async fn messages(&mut self, n: usize) -> Vec<Event> {
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

fn alert(i: usize) -> Value {
    json!({"type": "alert", "data": {"alert_id": format!("a{i}"), "level": "info", "title": "t", "message": "m"}})
}

fn lifecycle(i: usize) -> Value {
    json!({"type": "model_lifecycle", "data": {"model_id": format!("m{i}"), "event": "loaded"}})
}

/// 10 alerts and 10 model lifecycle events, interleaved.
async fn publish_pairs(server: &TestServer, from: usize) {
    let body: Vec<Value> = (from..from + 10).flat_map(|i| [alert(i), lifecycle(i)]).collect();
    let (status, reply) = server.post("/api/publish", &Value::Array(body)).await;
    assert_eq!(status, 202, "{reply}");
}

fn key(event: &Event) -> (String, u64) {
    (event.data["topic"].as_str().unwrap().to_owned(), event.data["seq"].as_u64().unwrap())
}

#[tokio::test]
async fn a_reconnect_with_the_last_event_id_gets_exactly_what_was_missed_on_every_topic() {
    let server = TestServer::start(&[]).await;
    let path = "/sse?topic=alerts&topic=model_status";
    let mut sse = Sse::open(server.addr, path, &[]).await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    let head = sse.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    assert_eq!(sse.until("welcome").await.data["type"], "welcome");
    publish_pairs(&server, 0).await;
    let first = sse.messages(20).await;
    let last_id = first.last().unwrap().id.clone().expect("every event has an id");
    drop(sse); // the connection is cut

    publish_pairs(&server, 10).await;
    let mut back = Sse::open(server.addr, path, &[("Last-Event-ID", &last_id)]).await;
    let (mut recovered, mut missed) = (0, Vec::new());
    while recovered < 2 || missed.len() < 20 {
        let event = back.next().await.expect("the stream goes on");
        if event.data["type"] == "subscribed" {
            assert_eq!(event.data["data"]["recovered"], true, "{:?}", event.data);
            recovered += 1;
        } else if event.data.get("seq").is_some() {
            assert!(event.data.get("late").is_none(), "nothing resent: {:?}", event.data);
            missed.push(event);
        }
    }
    let mut alerts: Vec<u64> = missed.iter().filter(|e| e.data["topic"] == "alerts").map(|e| key(e).1).collect();
    let mut statuses: Vec<u64> =
        missed.iter().filter(|e| e.data["topic"] == "model_status").map(|e| key(e).1).collect();
    assert_eq!(alerts, (11..=20).collect::<Vec<_>>(), "the missed alerts, once, in order");
    assert_eq!(statuses, (11..=20).collect::<Vec<_>>(), "the missed lifecycle events, once, in order");
    alerts.clear();
    statuses.clear();
    // The id moved with every frame: it covers both topics.
    let id = missed.last().unwrap().id.clone().unwrap();
    assert!(id.starts_with("1.") && id.matches('.').count() == 2, "{id}");

    // The same with the id in the URL (what a client that opens a new stream sends).
    drop(back);
    publish_pairs(&server, 20).await;
    let with_query = format!("{path}&last_event_id={id}");
    let mut again = Sse::open(server.addr, &with_query, &[]).await;
    let missed = again.messages(20).await;
    assert_eq!(missed.first().map(key), Some(("alerts".to_owned(), 21)));
}

#[tokio::test]
async fn a_position_past_history_or_from_another_epoch_gets_the_state_and_a_bad_id_an_error() {
    let server = TestServer::start(&["--history-size", "5"]).await;
    let path = "/sse?topic=alerts";
    let mut sse = Sse::open(server.addr, path, &[]).await;
    publish_pairs(&server, 0).await;
    let id = sse.messages(10).await.last().unwrap().id.clone().unwrap();
    drop(sse);
    publish_pairs(&server, 10).await; // 10 more: past the 5 of history
    let mut back = Sse::open(server.addr, path, &[("Last-Event-ID", &id)]).await;
    let subscribed = back.until("subscribed").await;
    assert_eq!(subscribed.data["data"]["recovered"], false, "{:?}", subscribed.data);
    assert_eq!(back.messages(5).await.first().map(key), Some(("alerts".to_owned(), 16)));

    let other_epoch = id.replacen(&server.hub.epoch()[..4], "ffff", 1);
    let mut other = Sse::open(server.addr, path, &[("Last-Event-ID", &other_epoch)]).await;
    assert_eq!(other.until("subscribed").await.data["data"]["recovered"], false);

    let mut bad = Sse::open(server.addr, path, &[("Last-Event-ID", "not-an-id")]).await;
    assert_eq!(bad.status(), 200, "{}", bad.head);
    let error = bad.until("error").await;
    assert_eq!(error.data["data"]["code"], "invalid_message");
    assert!(error.data["data"]["message"].as_str().unwrap().contains("not an event id"));
    assert_eq!(bad.until("subscribed").await.data["data"]["recovered"], false);

    let (status, body) = server.get("/sse").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/sse?topic=weather").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn tokens_and_roles_apply_as_on_a_websocket() {
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let server = TestServer::start(&[
        "--jwt-secret",
        secret,
        "--topic-roles",
        "analytics_updates=admin",
    ])
    .await;
    let token = |roles: &[&str]| {
        let claims = json!({"sub": "u", "roles": roles, "exp": chrono::Utc::now().timestamp() + 600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let path = "/sse?topic=alerts&topic=analytics_updates";
    let anonymous = Sse::open(server.addr, path, &[]).await;
    assert_eq!(anonymous.status(), 401, "{}", anonymous.head);
    let viewer = token(&["viewer"]);
    let mut sse = Sse::open(server.addr, &format!("{path}&token={viewer}"), &[]).await;
    assert_eq!(sse.status(), 200, "{}", sse.head);
    let forbidden = sse.until("error").await;
    assert_eq!(forbidden.data["data"]["code"], "forbidden", "reported as an event");
    let bearer = format!("Bearer {}", token(&["admin"]));
    let mut admin = Sse::open(server.addr, path, &[("Authorization", &bearer)]).await;
    assert_eq!(admin.status(), 200);
    server.post("/api/publish", &alert(1)).await;
    assert_eq!(sse.messages(1).await[0].data["topic"], "alerts", "the rest keeps working");
    assert_eq!(admin.messages(1).await[0].data["topic"], "alerts");
}

#[tokio::test]
async fn streams_are_counted_and_a_shutdown_ends_them_cleanly() {
    let server = TestServer::start(&[]).await;
    let mut sse = Sse::open(server.addr, "/sse?topic=alerts", &[]).await;
    sse.until("subscribed").await;
    let (_, stats) = server.get("/api/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!((stats["sse_connections"].as_i64(), stats["connections"].as_u64()), (Some(1), Some(1)));
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("modelcast_sse_connections_active 1"), "{metrics}");
    server.begin_shutdown();
    // The stream ends cleanly: a comment saying so, then the chunked body's last chunk.
    while sse.next().await.is_some() {}
    assert!(sse.ended, "the body's last chunk arrived: a clean end, not a cut connection");
    tokio::time::timeout(Duration::from_secs(10), server.stop()).await.expect("stops").unwrap();
}
