//! WebSocket sessions: the upgrade, the welcome, client actions, the writer and heartbeats.
//!
//! One task per connection runs a reader and a writer future side by side. Every reply goes
//! through the connection's hub outbox, so there is exactly one writer, which sends a burst
//! with one flush (feed, feed, …, flush).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use modelcast_hub::{Connection, Delivery, DropReason, SubscribeOptions};
use modelcast_protocol::{
    ClientMessage, ErrorCode, ErrorMessage, PROTOCOL_VERSION, Pong, RequestId, ServerMessage,
    Topic, Welcome, close,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::http::{Resp, error_response, json_response};
use crate::security::Identity;

/// Frames taken from the outbox per burst (one flush each).
const BURST: usize = 256;

/// What the registry keeps of an open session, to replace it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    serial: u64,
    conn: Connection,
    control: Arc<Control>,
}

/// Shared by a session's reader and writer.
#[derive(Debug)]
struct Control {
    /// The close frame to send, when something other than the outbox decided to close.
    close: Mutex<Option<(u16, String)>>,
    /// Milliseconds since the server started when the peer was last heard from.
    last_seen_ms: AtomicU64,
    /// Cancelled when the writer is done: the reader stops.
    done: CancellationToken,
    /// Authentication, when the server requires it.
    auth: Mutex<AuthState>,
    /// Wakes the writer to re-check `auth` and `close` (set by the reader).
    wake: tokio::sync::Notify,
}

/// A connection's authentication.
#[derive(Debug, Default)]
struct AuthState {
    identity: Option<Identity>,
    /// Closed with 4401 unless (re)authenticated by then.
    deadline: Option<tokio::time::Instant>,
    /// The token's expiry was announced.
    expiry_announced: bool,
}

impl AuthState {
    /// When the writer must look at this state next.
    fn next_check(&self) -> Option<tokio::time::Instant> {
        if let Some(deadline) = self.deadline {
            return Some(deadline);
        }
        let exp = self.identity.as_ref()?.expires_at?;
        let now_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        Some(tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now_unix)))
    }
}

impl Control {
    fn auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_close(&self, code: u16, reason: impl Into<String>) {
        let mut close = self.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        close.get_or_insert((code, reason.into()));
    }

    fn take_close(&self) -> Option<(u16, String)> {
        self.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// Counts an admitted WebSocket connection until dropped.
struct Admitted(Arc<App>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers a WebSocket handshake: 101 and a session task, or a JSON error.
pub(crate) fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    id: Option<String>,
    peer: std::net::IpAddr,
) -> Resp {
    let id = match id {
        Some(id) if valid_id(&id) => id,
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_connection_id",
                "a connection id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            );
        }
        None => format!("c-{:016x}", rand_u64()),
    };
    let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade =
        header_has(&req, UPGRADE, "websocket") && header_has(&req, CONNECTION, "upgrade");
    let Some(key) = key.filter(|_| is_upgrade) else {
        let mut resp = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this endpoint speaks WebSocket: connect with a WebSocket client",
        );
        resp.headers_mut().insert(UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    };
    if req.headers().get(SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        let mut resp = error_response(
            StatusCode::BAD_REQUEST,
            "unsupported_websocket_version",
            "only WebSocket version 13 is supported",
        );
        resp.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return resp;
    }
    if app.shutdown.is_cancelled() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
    }
    if !app.security.origin_allowed(req.headers()) {
        return error_response(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this page's origin may not connect",
        );
    }
    if !app.security.admit_ip(peer) {
        return error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many connection attempts from this address; retry with backoff",
        );
    }
    let identity = match (app.security.auth_required(), query_token(req.uri())) {
        (false, _) | (true, None) => None,
        (true, Some(token)) => match app.security.verify(&token) {
            Ok(identity) => Some(identity),
            Err(reason) => {
                app.metrics.error(&ErrorCode::Unauthorized);
                let mut resp = error_response(StatusCode::UNAUTHORIZED, "unauthorized", &reason);
                resp.headers_mut()
                    .insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
        },
    };
    let max = app.config.max_connections;
    if app.active.fetch_add(1, Ordering::Relaxed) >= max {
        app.active.fetch_sub(1, Ordering::Relaxed);
        app.metrics.error(&ErrorCode::Other("too_many_connections".into()));
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": {
                "code": "too_many_connections",
                "message": format!("the server holds its maximum of {max} connections; retry later"),
                "max_connections": max,
            }}),
        );
    }
    let admitted = Admitted(app.clone());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = derive_accept_key(key.as_bytes());
    let app = app.clone();
    app.tracker.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(app.ws_config),
                )
                .await;
                run(app, ws, id, admitted, identity).await;
            }
            Err(err) => tracing::debug!(%err, "websocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Default::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    resp
}

/// The `token` query parameter, percent-decoded.
fn query_token(uri: &hyper::Uri) -> Option<String> {
    let query = uri.query()?;
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn run(app: Arc<App>, ws: Ws, id: String, _admitted: Admitted, identity: Option<Identity>) {
    let conn = app.hub.connect();
    let serial = app.next_session.fetch_add(1, Ordering::Relaxed);
    let deadline = (app.security.auth_required() && identity.is_none())
        .then(|| tokio::time::Instant::now() + app.config.auth_deadline);
    let control = Arc::new(Control {
        close: Mutex::new(None),
        last_seen_ms: AtomicU64::new(now_ms(&app)),
        done: CancellationToken::new(),
        auth: Mutex::new(AuthState { identity, deadline, expiry_announced: false }),
        wake: tokio::sync::Notify::new(),
    });
    let replaced = app
        .sessions()
        .insert(id.clone(), SessionHandle { serial, conn: conn.clone(), control: control.clone() });
    if let Some(old) = replaced {
        tracing::info!(connection_id = %id, "replacing the open connection with the same id");
        old.control.set_close(close::REPLACED, "replaced by a newer connection with the same id");
        old.conn.close(DropReason::Replaced);
    }
    app.metrics.opened();
    tracing::debug!(connection_id = %id, "connected");
    let _ = conn.send(&ServerMessage::Welcome(Welcome {
        connection_id: id.clone(),
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_seconds: app.config.heartbeat_interval.as_secs().max(1),
        topics: Topic::ALL.to_vec(),
        epoch: app.hub.epoch().to_owned(),
        timestamp: chrono::Utc::now(),
    }));

    let (sink, stream) = ws.split();
    let (reason, ()) =
        tokio::join!(writer(&app, &conn, sink, &control), reader(&app, &conn, stream, &control));

    {
        let mut sessions = app.sessions();
        if sessions.get(&id).is_some_and(|s| s.serial == serial) {
            sessions.remove(&id);
        }
    }
    conn.close(DropReason::Closed);
    app.metrics.closed(reason);
    tracing::debug!(connection_id = %id, reason, "disconnected");
}

fn now_ms(app: &App) -> u64 {
    u64::try_from(app.started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Drains the outbox into the socket; pings; closes. Returns the close reason for metrics.
async fn writer(
    app: &App,
    conn: &Connection,
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    control: &Control,
) -> &'static str {
    let heartbeat = app.config.heartbeat_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut burst: Vec<Delivery> = Vec::new();
    let auth_required = app.security.auth_required();
    // One registration with the Notify for the whole session, re-armed only after it fires.
    let wake = control.wake.notified();
    tokio::pin!(wake);
    let reason = loop {
        let auth_check = if auth_required { control.auth().next_check() } else { None };
        tokio::select! {
            biased;
            () = app.shutdown.cancelled() => {
                // Drain what is queued (bounded by the queue size), then say goodbye.
                while conn.try_recv(&mut burst, BURST).unwrap_or(0) > 0 {
                    if write_burst(app, &mut sink, &mut burst).await.is_err() {
                        break;
                    }
                }
                let _ = send_close(&mut sink, close::GOING_AWAY, "server shutting down").await;
                break "shutdown";
            }
            received = conn.recv(&mut burst, BURST) => match received {
                Ok(()) => {
                    if tokio::time::timeout(heartbeat, write_burst(app, &mut sink, &mut burst)).await.map_or(true, |r| r.is_err()) {
                        // The peer has not taken a burst for a heartbeat interval, or the socket failed.
                        let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, close::SLOW_CONSUMER, "not reading")).await;
                        break "write_failed";
                    }
                }
                Err(dropped) => {
                    let (code, text, label) = match (control.take_close(), dropped) {
                        (Some((code, text)), _) => (code, text, close_label(code)),
                        (None, DropReason::SlowConsumer) => (close::SLOW_CONSUMER, "too far behind: reconnect with `since` to recover".to_owned(), "slow_consumer"),
                        (None, DropReason::Replaced) => (close::REPLACED, "replaced by a newer connection with the same id".to_owned(), "replaced"),
                        (None, DropReason::Shutdown) => (close::GOING_AWAY, "server shutting down".to_owned(), "shutdown"),
                        (None, _) => (close::NORMAL, String::new(), "client_closed"),
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, code, &text)).await;
                    break label;
                }
            },
            () = sleep_until_opt(auth_check), if auth_check.is_some() => {
                if let Some(label) = check_auth(app, conn, control) {
                    while conn.try_recv(&mut burst, BURST).unwrap_or(0) > 0 {
                        if write_burst(app, &mut sink, &mut burst).await.is_err() {
                            break;
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, close::UNAUTHORIZED, label)).await;
                    break "unauthorized";
                }
            }
            () = &mut wake => {
                wake.set(control.wake.notified());
                // The reader decided to close (frame too large, abuse): queued replies first.
                if let Some((code, text)) = control.take_close() {
                    while conn.try_recv(&mut burst, BURST).unwrap_or(0) > 0 {
                        if write_burst(app, &mut sink, &mut burst).await.is_err() {
                            break;
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, code, &text)).await;
                    break close_label(code);
                }
            }
            _ = ping.tick() => {
                let silent = now_ms(app).saturating_sub(control.last_seen_ms.load(Ordering::Relaxed));
                if silent > 2 * u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, close::HEARTBEAT_TIMEOUT, "no heartbeat")).await;
                    break "heartbeat_timeout";
                }
                if tokio::time::timeout(heartbeat, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    break "write_failed";
                }
            }
        }
    };
    control.done.cancel();
    reason
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Applies the authentication deadline and token expiry; returns a close reason when the
/// connection must go.
fn check_auth(app: &App, conn: &Connection, control: &Control) -> Option<&'static str> {
    let now = tokio::time::Instant::now();
    let mut auth = control.auth();
    if let Some(deadline) = auth.deadline
        && now >= deadline
    {
        return Some(if auth.expiry_announced {
            "token expired"
        } else {
            "authentication required"
        });
    }
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expired = auth.deadline.is_none()
        && auth.identity.as_ref().and_then(|i| i.expires_at).is_some_and(|exp| exp <= now_unix);
    if expired {
        auth.expiry_announced = true;
        auth.deadline = Some(now + app.config.auth_deadline);
        drop(auth);
        reply_error(
            app,
            conn,
            ErrorCode::Unauthorized,
            format!(
                "your token expired: send {{\"action\":\"auth\",\"token\":...}} with a new one within {} s",
                app.config.auth_deadline.as_secs_f64()
            ),
            None,
        );
    }
    None
}

fn close_label(code: u16) -> &'static str {
    match code {
        close::MESSAGE_TOO_BIG => "frame_too_large",
        close::POLICY_VIOLATION => "policy_violation",
        close::REPLACED => "replaced",
        close::GOING_AWAY => "shutdown",
        _ => "closed",
    }
}

/// Feeds a burst and flushes once; records latency and delivery counts.
async fn write_burst(
    app: &App,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    burst: &mut Vec<Delivery>,
) -> Result<(), tungstenite::Error> {
    let mut published_at = Vec::new();
    for delivery in burst.drain(..) {
        app.metrics.delivered(delivery.type_index(), 1);
        if let Some(at) = delivery.published_at() {
            published_at.push(at);
        }
        // Frames are serialized JSON (UTF-8); the conversion shares the buffer, no copy.
        let Ok(text) = Utf8Bytes::try_from(delivery.into_frame().into_bytes()) else { continue };
        sink.feed(Message::Text(text)).await?;
    }
    sink.flush().await?;
    let now = tokio::time::Instant::now();
    for at in published_at {
        app.metrics.latency.observe(now.duration_since(at).as_secs_f64());
    }
    Ok(())
}

async fn send_close(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    code: u16,
    reason: &str,
) -> Result<(), tungstenite::Error> {
    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) };
    sink.send(Message::Close(Some(frame))).await
}

/// Reads client frames until the peer leaves or the writer is done.
async fn reader(
    app: &App,
    conn: &Connection,
    mut stream: futures_util::stream::SplitStream<Ws>,
    control: &Control,
) {
    // Made on the first inbound frame, so idle connections carry no limiter.
    // Boxed: an idle session's future stays small.
    let mut limiter: Option<Box<governor::DefaultDirectRateLimiter>> = None;
    let mut strikes = 0usize;
    loop {
        let next = tokio::select! {
            () = control.done.cancelled() => break,
            next = stream.next() => next,
        };
        match next {
            None => break,
            Some(Ok(message)) => {
                control.last_seen_ms.store(now_ms(app), Ordering::Relaxed);
                if matches!(message, Message::Text(_) | Message::Binary(_)) {
                    let limiter = limiter.get_or_insert_with(|| app.security.message_limiter());
                    if limiter.check().is_err() {
                        strikes += 1;
                        if strikes == 1 {
                            reply_error(
                                app,
                                conn,
                                ErrorCode::RateLimited,
                                format!(
                                    "more than {} messages per second: messages are dropped until you slow down",
                                    app.config.rate_limit
                                ),
                                None,
                            );
                        }
                        if strikes > app.config.abuse_limit {
                            control.set_close(
                                close::POLICY_VIOLATION,
                                "rate limit exceeded repeatedly",
                            );
                            break;
                        }
                        continue;
                    }
                    strikes = 0;
                }
                match message {
                    Message::Text(text) => handle_text(app, conn, control, text.as_str()),
                    Message::Binary(_) => reply_error(
                        app,
                        conn,
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported: send JSON in text frames".into(),
                        None,
                    ),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            Some(Err(tungstenite::Error::Capacity(err))) => {
                control.set_close(
                    close::MESSAGE_TOO_BIG,
                    format!("frame too large (at most {} bytes): {err}", app.config.max_frame_size),
                );
                break;
            }
            Some(Err(tungstenite::Error::Protocol(err))) => {
                control.set_close(close::POLICY_VIOLATION, format!("protocol error: {err}"));
                break;
            }
            Some(Err(err)) => {
                tracing::debug!(%err, "websocket read failed");
                break;
            }
        }
    }
    if control.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() {
        // The writer flushes what is queued, then sends the close frame.
        control.wake.notify_one();
    } else {
        // The peer left: nothing more to write.
        conn.close(DropReason::Closed);
    }
}

fn reply_error(
    app: &App,
    conn: &Connection,
    code: ErrorCode,
    message: String,
    request_id: Option<RequestId>,
) {
    app.metrics.error(&code);
    let _ = conn.send(&ServerMessage::Error(ErrorMessage { code, message, request_id }));
}

/// A client frame: parsed, validated, authorized, answered. Bad input gets an `error` with
/// the precise code, and the connection stays.
fn handle_text(app: &App, conn: &Connection, control: &Control, text: &str) {
    let message = match ClientMessage::parse_frame(text) {
        Ok(m) => m,
        Err(e) => return reply_error(app, conn, e.code, e.message, e.request_id),
    };
    if let ClientMessage::Auth(a) = &message {
        match app.security.verify(&a.token) {
            Ok(identity) => {
                *control.auth() =
                    AuthState { identity: Some(identity), deadline: None, expiry_announced: false };
                control.wake.notify_one();
            }
            Err(reason) => reply_error(app, conn, ErrorCode::Unauthorized, reason, a.id.clone()),
        }
        return;
    }
    let identity = control.auth().identity.clone();
    if app.security.auth_required() && identity.is_none() {
        return reply_error(
            app,
            conn,
            ErrorCode::Unauthorized,
            "authenticate first: connect with ?token=… or send {\"action\":\"auth\",\"token\":…}"
                .into(),
            message.request_id().cloned(),
        );
    }
    match message {
        ClientMessage::Subscribe(s) => {
            if !app.security.may_subscribe(identity.as_ref(), s.topic) {
                return reply_error(
                    app,
                    conn,
                    ErrorCode::Forbidden,
                    format!(
                        "{} is open to the roles {} only",
                        s.topic,
                        app.security.roles_for(s.topic)
                    ),
                    s.id,
                );
            }
            let current = conn.subscriptions();
            if !current.contains(&s.topic) && current.len() >= app.config.max_subscriptions {
                return reply_error(
                    app,
                    conn,
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "at most {} subscriptions per connection",
                        app.config.max_subscriptions
                    ),
                    s.id,
                );
            }
            let options = SubscribeOptions::default()
                .request_id(s.id.clone())
                .since(s.since)
                .keys(s.filter.and_then(|f| f.model_ids))
                .max_hz(s.max_hz);
            match conn.subscribe(s.topic, options) {
                Ok(_) => {}
                Err(modelcast_hub::Error::InvalidMaxHz(hz)) => reply_error(
                    app,
                    conn,
                    ErrorCode::InvalidMessage,
                    format!("max_hz: must be a positive number of updates per second, got {hz}"),
                    s.id,
                ),
                Err(_) => {} // closed meanwhile
            }
        }
        ClientMessage::Unsubscribe(u) => {
            if conn.unsubscribe(u.topic) {
                let _ = conn.send(&ServerMessage::Unsubscribed(modelcast_protocol::Unsubscribed {
                    topic: u.topic,
                    request_id: u.id,
                }));
            } else {
                reply_error(
                    app,
                    conn,
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to {}", u.topic),
                    u.id,
                );
            }
        }
        ClientMessage::Ping(p) => {
            let _ = conn.send(&ServerMessage::Pong(Pong {
                request_id: p.id,
                timestamp: chrono::Utc::now(),
            }));
        }
        other => reply_error(
            app,
            conn,
            ErrorCode::UnknownAction,
            "unsupported action".into(),
            other.request_id().cloned(),
        ),
    }
}
