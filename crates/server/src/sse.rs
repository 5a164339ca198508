//! Server-Sent Events: `GET /sse?topic=…` — the same topics, frames, contract and recovery as
//! the WebSocket, over plain HTTP, for networks that refuse upgrades and for consumers that
//! only listen.
//!
//! Each frame the WebSocket would send is one event whose `data:` is exactly that JSON frame
//! (no `event:` field: `onmessage` sees them all). Every event carries an `id:`, the stream's
//! position in every topic it carries ([`Position`]); a reconnect that sends it back
//! (`Last-Event-ID`, which `EventSource` does by itself, or `?last_event_id=`) recovers every
//! topic as `since` does. The connection goes through the same checks as a WebSocket
//! handshake (shutdown, origin, per-address rate, token, connection limit) and its
//! subscriptions through the same action handler (roles, filters, `max_hz`, recovery), so
//! nothing is decided twice. A slow reader is bounded like a WebSocket one: the stream's
//! channel is short, the hub's outbox is bounded, and a reader that cannot keep up is ended
//! (it reconnects and recovers).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use modelcast_hub::{Connection, Delivery, DropReason};
use modelcast_protocol::{
    ApiErrorCode, ClientMessage, ErrorCode, ServerMessage, Since, SubscribeRequest,
    SubscriptionFilter, Topic,
};
use tokio::sync::mpsc;

use crate::actions::{handle_frame, reply_error};
use crate::admit::{admit, refuse_token};
use crate::error::{ApiError, ApiResult};
use crate::response::{Body, Resp};
use crate::roster::Transport;
use crate::security::Identity;
use crate::state::{App, Control, HttpPermit, Publisher};

/// Frames taken from the outbox per write.
const BURST: usize = 256;

/// Writes that may wait between the stream's task and the socket: the backpressure.
const IN_FLIGHT: usize = 4;

/// How long a browser waits before reconnecting on its own (the stream's `retry:`).
const RETRY_MS: u64 = 2000;

/// A stream's position in each of its topics: the `id:` of every event, given back as
/// `Last-Event-ID` to recover. Format (documented in the README): `1` then, per topic,
/// `.<topic index>:<epoch>:<seq>` — e.g. `1.1:6f7dfa8007d12674:10.8:6f7dfa8007d12674:52` —
/// only characters that need no escaping in a header or a URL.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Position(Vec<(Topic, Since)>);

impl Position {
    fn set(&mut self, topic: Topic, epoch: &str, seq: u64) {
        match self.0.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, since)) => {
                if since.epoch != epoch {
                    since.epoch = epoch.to_owned();
                }
                since.seq = seq;
            }
            None => {
                self.0.push((topic, Since { epoch: epoch.to_owned(), seq }));
                self.0.sort_by_key(|(t, _)| t.index());
            }
        }
    }

    fn advance(&mut self, topic: Topic, seq: u64) {
        if let Some((_, since)) = self.0.iter_mut().find(|(t, _)| *t == topic) {
            since.seq = since.seq.max(seq);
        }
    }

    fn since(&self, topic: Topic) -> Option<Since> {
        self.0.iter().find(|(t, _)| *t == topic).map(|(_, s)| s.clone())
    }

    fn encode(&self, out: &mut String) {
        out.push('1');
        for (topic, since) in &self.0 {
            let _ = write!(out, ".{}:{}:{}", topic.index(), since.epoch, since.seq);
        }
    }

    /// Reads an id this server wrote; what is wrong with it otherwise.
    pub(crate) fn parse(id: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{id}` is not an event id of this server's streams (1.<topic>:<epoch>:<seq>…); subscribing without recovery"
            )
        };
        let mut parts = id.split('.');
        if parts.next() != Some("1") {
            return Err(bad());
        }
        let mut position = Position::default();
        for part in parts {
            let mut fields = part.split(':');
            let (Some(index), Some(epoch), Some(seq), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            let topic = index.parse::<usize>().ok().and_then(|i| Topic::ALL.get(i).copied());
            let seq = seq.parse::<u64>().ok();
            let epoch_ok =
                (1..=64).contains(&epoch.len()) && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
            match (topic, seq) {
                (Some(topic), Some(seq)) if epoch_ok => position.set(topic, epoch, seq),
                _ => return Err(bad()),
            }
        }
        Ok(position)
    }
}

/// What `GET /sse` asks for.
struct StreamRequest {
    topics: Vec<Topic>,
    filter: Option<SubscriptionFilter>,
    max_hz: Option<f64>,
    token: Option<String>,
    last_event_id: Option<String>,
}

/// Reads the query (and the `Last-Event-ID` and `Authorization` headers); a 400 naming the
/// parameter otherwise.
fn read_request(req: &Request<Incoming>) -> ApiResult<StreamRequest> {
    let bad = |code: ApiErrorCode, message: String| ApiError::new(code, message);
    let query = req.uri().query().unwrap_or_default();
    let mut topics = Vec::new();
    let (mut filter, mut max_hz, mut token, mut last_event_id) = (None, None, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topic" => {
                let topic = value
                    .parse::<Topic>()
                    .map_err(|e| bad(ApiErrorCode::UnknownTopic, e.to_string()))?;
                if !topics.contains(&topic) {
                    topics.push(topic);
                }
            }
            "model_ids" => {
                let ids: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                filter = Some(SubscriptionFilter { model_ids: Some(ids) });
            }
            "max_hz" => {
                let hz = value.parse::<f64>().map_err(|_| {
                    bad(
                        ApiErrorCode::InvalidMessage,
                        format!("max_hz: expected a number of updates per second, got `{value}`"),
                    )
                })?;
                max_hz = Some(hz);
            }
            "token" => token = Some(value.into_owned()),
            "last_event_id" => last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(bad(
            ApiErrorCode::MissingTopic,
            "name the topics: GET /sse?topic=model_status&topic=download_progress".into(),
        ));
    }
    // The browser's own reconnect sends the header: newer than a `last_event_id` in the URL.
    if let Some(header) = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()) {
        last_event_id = Some(header.to_owned());
    }
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    Ok(StreamRequest { topics, filter, max_hz, token: bearer.or(token), last_event_id })
}

/// Answers `GET /sse`: the event stream, or the reason it cannot be opened.
pub(crate) fn open(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: std::net::IpAddr,
    permit: &HttpPermit,
) -> Resp {
    let request = match read_request(&req) {
        Ok(request) => request,
        Err(refused) => return with_cors(app, req.headers(), refused.into_response()),
    };
    // No first frame can carry the token here: it comes with the request.
    let authenticate = || {
        if !app.security.auth_required() {
            return Ok(None);
        }
        let verified = match &request.token {
            Some(token) => app.security.verify(token),
            None => {
                Err("this server requires a token: ?token=<JWT> or Authorization: Bearer <JWT>"
                    .into())
            }
        };
        verified.map(Some).map_err(|reason| refuse_token(app, reason))
    };
    let (admitted, identity) = match admit(app, req.headers(), peer, authenticate) {
        Ok(admitted) => admitted,
        Err(refused) => return with_cors(app, req.headers(), refused.into_response()),
    };
    // A stream now: it counts against the connections, not the HTTP requests in progress.
    permit.release();
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let task_app = app.clone();
    app.tracker.spawn(async move {
        let _admitted = admitted;
        run(task_app, tx, request, identity).await;
    });
    let mut resp = Response::new(Body::stream(rx));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream (deploy/nginx/modelcast.conf turns it off too).
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(app, req.headers(), resp)
}

/// Lets a page from an allowed origin (`MODELCAST_ALLOWED_ORIGINS`; any, when none are
/// listed) read the answer: a browser's `EventSource` from another origin needs
/// `Access-Control-Allow-Origin` (the WebSocket from the same page does not). Never for
/// other origins. `Vary: Origin`, since the answer depends on it.
fn with_cors(app: &App, headers: &hyper::HeaderMap, mut resp: Resp) -> Resp {
    let origin = headers.get(hyper::header::ORIGIN).cloned();
    if let Some(origin) = origin.filter(|_| app.security.origin_allowed(headers)) {
        let out = resp.headers_mut();
        out.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// A browser's CORS preflight for `GET /sse` (a reconnecting `EventSource` sends
/// `Last-Event-ID`, which is not a simple header): allowed origins may send it and a token.
pub(crate) fn preflight(app: &App, headers: &hyper::HeaderMap) -> Resp {
    use hyper::header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_MAX_AGE,
    };
    if headers.get(hyper::header::ORIGIN).is_none() || !app.security.origin_allowed(headers) {
        let message = "this page's origin may not connect (MODELCAST_ALLOWED_ORIGINS)";
        return ApiError::new(ApiErrorCode::OriginNotAllowed, message).into_response();
    }
    let mut resp = Resp::new(Default::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET"));
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("last-event-id, authorization"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    with_cors(app, headers, resp)
}

/// The stream's task: the hub connection, its subscriptions, and the events written from its
/// outbox until the reader goes away, the server stops, or the token expires.
async fn run(
    app: Arc<App>,
    tx: mpsc::Sender<Bytes>,
    request: StreamRequest,
    identity: Option<Identity>,
) {
    let conn = app.hub.connect();
    if let Some(identity) = &identity {
        conn.set_viewer(identity.viewer());
    }
    let serial = app.next_session.fetch_add(1, Ordering::Relaxed);
    let id = format!("sse-{serial:x}-{:08x}", rand::random::<u32>());
    let expires_at = identity.as_ref().and_then(|i| i.expires_at);
    let operator = app.security.is_operator(identity.as_ref(), false);
    // The stream's user is online while it is open (push's "offline").
    let _online = identity.as_ref().map(|i| app.presence.enter(&i.subject));
    let control = Arc::new(Control::new(id.clone(), serial, Publisher::No, identity, None, 0));
    let _on_roster = app.roster.join(Transport::Sse, false, &conn, &control);
    app.metrics.sse_opened();
    let _ = conn.send(&app.welcome(id, operator, false));
    let recovered = match request.last_event_id.as_deref().map(Position::parse) {
        None => Position::default(),
        Some(Ok(position)) => position,
        Some(Err(problem)) => {
            reply_error(&app, &conn, ErrorCode::InvalidMessage, problem, None);
            Position::default()
        }
    };
    for topic in &request.topics {
        let mut subscribe = SubscribeRequest::new(*topic);
        subscribe.since = recovered.since(*topic);
        subscribe.filter.clone_from(&request.filter);
        subscribe.max_hz = request.max_hz;
        handle_frame(&app, &conn, &control, Ok(ClientMessage::Subscribe(subscribe)));
    }
    let reason = write(&app, &conn, &control, &tx, (recovered, expires_at)).await;
    conn.close(DropReason::Closed);
    app.metrics.sse_closed(reason);
}

/// Sends `bytes`, waiting for the reader at most `patience`. `false` when it is gone or stuck.
async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes, patience: Duration) -> bool {
    matches!(tokio::time::timeout(patience, tx.send(bytes)).await, Ok(Ok(())))
}

/// Writes the outbox as events until the end; the reason for metrics.
async fn write(
    app: &App,
    conn: &Connection,
    control: &Control,
    tx: &mpsc::Sender<Bytes>,
    (position, expires_at): (Position, Option<u64>),
) -> &'static str {
    let heartbeat = app.config.heartbeat_interval;
    // A reader that takes nothing for this long is dead or hopelessly slow.
    let patience = heartbeat.max(Duration::from_secs(5));
    let mut stream = Stream { app, conn, tx, position, patience, burst: Vec::new() };
    if !stream.send(Bytes::from(format!("retry: {RETRY_MS}\n\n"))).await {
        return "client_gone";
    }
    let expiry = sleep_until_unix(expires_at);
    tokio::pin!(expiry);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            biased;
            () = app.drain.cancelled() => {
                stream.flush().await;
                stream.send(Bytes::from_static(b": server shutting down\n\n")).await;
                return "shutdown";
            }
            () = &mut expiry => {
                let message = "the token expired: reconnect with a new one";
                return stream.end(ErrorCode::Unauthorized, message, "unauthorized").await;
            }
            // An operator ended the stream (`/api/disconnect`, `/api/revoke`).
            () = control.wake.notified() => if let Some((_, reason)) = control.take_close() {
                return stream.end(ErrorCode::Revoked, &reason, "revoked").await;
            },
            received = conn.recv(&mut stream.burst, BURST) => {
                if let Err(reason) = received {
                    let line = format!(": closed: {reason}; reconnect with Last-Event-ID\n\n");
                    stream.send(Bytes::from(line)).await;
                    return reason.as_str();
                }
                if !stream.write_burst().await {
                    return "client_gone";
                }
            }
            // A comment line: proxies keep the connection open, a dead reader is noticed.
            _ = ping.tick() => if !stream.send(Bytes::from_static(b": ping\n\n")).await {
                return "client_gone";
            }
        }
    }
}

/// Sleeps until `at` (seconds since the Unix epoch); forever without one.
async fn sleep_until_unix(at: Option<u64>) {
    match at {
        Some(at) => {
            let now = chrono::Utc::now().timestamp().max(0) as u64;
            tokio::time::sleep(Duration::from_secs(at.saturating_sub(now))).await;
        }
        None => std::future::pending().await,
    }
}

/// An open stream's writing side: what it writes to and where it stands.
struct Stream<'a> {
    app: &'a App,
    conn: &'a Connection,
    tx: &'a mpsc::Sender<Bytes>,
    position: Position,
    patience: Duration,
    burst: Vec<Delivery>,
}

impl Stream<'_> {
    /// Sends `bytes`, waiting for the reader at most the patience. `false` when it is gone or
    /// stuck.
    async fn send(&self, bytes: Bytes) -> bool {
        send(self.tx, bytes, self.patience).await
    }

    /// Writes the burst taken from the outbox as events.
    async fn write_burst(&mut self) -> bool {
        let events = events(self.app, &mut self.burst, &mut self.position);
        self.send(events).await
    }

    /// Ends the stream with an `error` of `code` saying `message`, after what is queued;
    /// `label` for metrics.
    async fn end(&mut self, code: ErrorCode, message: &str, label: &'static str) -> &'static str {
        let error =
            modelcast_protocol::ErrorMessage { code, message: message.into(), request_id: None };
        let _ = self.conn.send(&ServerMessage::Error(error));
        self.flush().await;
        label
    }

    /// Writes what is queued (bounded by the queue size).
    async fn flush(&mut self) {
        while self.conn.try_recv(&mut self.burst, BURST).unwrap_or(0) > 0 {
            if !self.write_burst().await {
                break;
            }
        }
    }
}

/// The burst as events (`id:` the position after each frame, `data:` the frame), in one
/// buffer: one write, one chunk.
fn events(app: &App, burst: &mut Vec<Delivery>, position: &mut Position) -> Bytes {
    let mut out = BytesMut::with_capacity(burst.iter().map(|d| d.frame().len() + 96).sum());
    let mut id = String::new();
    for delivery in burst.drain(..) {
        let frame = delivery.frame();
        match delivery.topic() {
            Some(topic) if !frame.is_late() => {
                if let Some(seq) = frame.seq() {
                    position.advance(topic, seq);
                }
            }
            Some(_) => {}
            None if ServerMessage::TYPES.get(delivery.type_index()) == Some(&"subscribed") => {
                if let Ok(ServerMessage::Subscribed(s)) =
                    serde_json::from_slice::<modelcast_protocol::ServerFrame>(frame.as_bytes())
                        .map(|f| f.message)
                {
                    position.set(s.topic, &s.epoch, s.seq);
                }
            }
            None => {}
        }
        app.metrics.delivered(delivery.type_index(), 1);
        id.clear();
        position.encode(&mut id);
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(frame.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_what_it_wrote_and_names_a_bad_one() {
        let mut position = Position::default();
        position.set(Topic::Alerts, "6f7dfa8007d12674", 52);
        position.set(Topic::ModelStatus, "0000000000000001", 10);
        position.advance(Topic::Alerts, 53);
        let mut id = String::new();
        position.encode(&mut id);
        assert_eq!(Position::parse(&id), Ok(position));
        for bad in ["", "2.1:e:1", "1.99:e:1", "1.1:e", "1.1:e:x", "1.1:e f:1", "1.1::1"] {
            assert!(Position::parse(bad).unwrap_err().contains("not an event id"), "{bad:?}");
        }
    }
}
