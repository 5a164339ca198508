//! WebSocket sessions: the per-connection task — a reader and a writer future side by side,
//! heartbeats, authentication deadlines, close codes.
//!
//! Every reply goes through the connection's hub outbox, so there is exactly one writer, which
//! sends a burst with one flush (feed, feed, …, flush). The handshake is in `handshake.rs`,
//! client actions in `actions.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use modelcast_hub::{Connection, Delivery, DropReason};
use modelcast_protocol::{ClientMessage, ErrorCode, PublishRequest, close};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::actions::{handle_frame, publish_frames, reply_error};
use crate::security::Identity;
use crate::state::{Admitted, App, Control, Publisher};

/// Frames taken from the outbox per burst (one flush each).
const BURST: usize = 256;

/// `publish` frames read together that are published in one call at most (bounds how long a
/// topic's lock is held for one run).
const MAX_PUBLISH_BATCH: usize = 64;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

pub(crate) async fn run(
    app: Arc<App>,
    ws: Ws,
    id: String,
    _admitted: Admitted,
    identity: Option<Identity>,
    publisher: Publisher,
) {
    let conn = app.hub.connect();
    let serial = app.next_session.fetch_add(1, Ordering::Relaxed);
    // A backend with a publish key needs no token; anyone else must authenticate in time.
    let deadline =
        (app.security.auth_required() && identity.is_none() && publisher != Publisher::Key)
            .then(|| tokio::time::Instant::now() + app.config.auth_deadline);
    let subject = identity.as_ref().map(|i| i.subject.clone());
    let control =
        Arc::new(Control::new(id.clone(), serial, publisher, identity, deadline, now_ms(&app)));
    // Without authentication, ids are global; with it, they live within the token's subject,
    // and a connection still waiting for its token takes no id (it registers on `auth`).
    match (app.security.auth_required(), subject) {
        (false, _) => app.register((None, id.clone()), &conn, &control),
        (true, Some(subject)) => app.register((Some(subject), id.clone()), &conn, &control),
        (true, None) => {}
    }
    app.metrics.opened();
    tracing::debug!(connection_id = %id, "connected");
    let _ = conn.send(&app.welcome(id.clone()));

    let (sink, stream) = ws.split();
    let (reason, ()) =
        tokio::join!(writer(&app, &conn, sink, &control), reader(&app, &conn, stream, &control));

    app.unregister(&control);
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
    // A socket that takes no bytes for this long is dead or hopelessly slow. Generous next to
    // short heartbeats, so that a busy machine does not look like a dead peer.
    let write_timeout = heartbeat.max(Duration::from_secs(5));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut burst: Vec<Delivery> = Vec::new();
    // Publish times of the frames in flight, for the latency histogram (reused: no allocation
    // per flush).
    let mut stamps: Vec<tokio::time::Instant> = Vec::new();
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
                    if write_burst(app, &mut sink, &mut burst, &mut stamps).await.is_err() {
                        break;
                    }
                }
                let _ = send_close(&mut sink, close::GOING_AWAY, "server shutting down").await;
                break "shutdown";
            }
            received = conn.recv(&mut burst, BURST) => match received {
                Ok(()) => {
                    if write_live(app, conn, &mut sink, &mut burst, &mut stamps, write_timeout).await.is_err() {
                        if control.peer_closed.load(Ordering::Relaxed) {
                            // The peer's close frame arrived while frames were on their way
                            // (tungstenite refuses data after it): complete the handshake.
                            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                            break "client_closed";
                        }
                        // The peer has not taken a burst for a heartbeat interval, or the socket failed.
                        let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, close::SLOW_CONSUMER, "not reading")).await;
                        break "write_failed";
                    }
                }
                Err(_) if control.peer_closed.load(Ordering::Relaxed) => {
                    // The client started the closing handshake: flushing completes it with
                    // the echo tungstenite queued (same code; 1002 for an invalid one).
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                    break "client_closed";
                }
                Err(dropped) => {
                    let (code, text, label) = match (control.take_close(), dropped) {
                        (Some((code, text)), _) => (code, text, close_label(code)),
                        (None, DropReason::SlowConsumer) => (close::SLOW_CONSUMER, "too far behind: reconnect with `since` to recover".to_owned(), "slow_consumer"),
                        (None, DropReason::Replaced) => (close::REPLACED, "replaced by a newer connection with the same id".to_owned(), "replaced"),
                        (None, DropReason::Shutdown) => (close::GOING_AWAY, "server shutting down".to_owned(), "shutdown"),
                        (None, _) if control.peer_gone.load(Ordering::Relaxed) => (close::NORMAL, String::new(), "client_gone"),
                        (None, _) => (close::NORMAL, String::new(), "client_closed"),
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), send_close(&mut sink, code, &text)).await;
                    break label;
                }
            },
            () = sleep_until_opt(auth_check), if auth_check.is_some() => {
                if let Some(label) = check_auth(app, conn, control) {
                    while conn.try_recv(&mut burst, BURST).unwrap_or(0) > 0 {
                        if write_burst(app, &mut sink, &mut burst, &mut stamps).await.is_err() {
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
                        if write_burst(app, &mut sink, &mut burst, &mut stamps).await.is_err() {
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
                if tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
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
        close::PROTOCOL_ERROR => "protocol_error",
        close::INVALID_PAYLOAD => "invalid_utf8",
        close::REPLACED => "replaced",
        close::GOING_AWAY => "shutdown",
        close::UNAUTHORIZED => "unauthorized",
        close::SLOW_CONSUMER => "slow_consumer",
        _ => "closed",
    }
}

/// Writes live frames: before feeding the burst, yields and takes whatever arrived meanwhile,
/// so that when the server is busy (publishes in flight, other writers
/// running) the frames of several publishes leave in one flush — one `write` instead of one
/// per frame — without delaying a lone message by more than one turn of the scheduler.
///
/// Each socket step (feed, flush) must make progress within `write_timeout`, else the peer is
/// dead or hopelessly slow. The timeouts wrap the socket steps only, not the turns: a timeout
/// whose step completes at once never touches the timer wheel, a waiting one would.
async fn write_live(
    app: &App,
    conn: &Connection,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    burst: &mut Vec<Delivery>,
    stamps: &mut Vec<tokio::time::Instant>,
    write_timeout: Duration,
) -> Result<(), WriteFailed> {
    // While publishes keep arriving between turns, keep gathering (bounded): a flush costs a
    // `write` (on loopback also the receiver's TCP processing), a turn costs one poll. Frames
    // wait in `burst`, not in the socket's buffer: nothing is half-written across a turn (a
    // close frame the peer sends meanwhile is echoed after complete frames only).
    // One turn without a new frame does not end the gather: with a request-response publisher
    // (one message per POST) the next request has often arrived but not been read yet in that
    // turn. Tolerating one measured 12% less server CPU per delivery in that mode (5 of 5
    // interleaved runs) and no change with a WebSocket publisher; an idle writer pays one
    // extra, empty turn (microseconds) before it flushes a lone message.
    let mut empty_turns = 0;
    for _ in 0..MAX_GATHER_TURNS {
        if burst.len() >= BURST {
            break;
        }
        tokio::task::yield_now().await;
        match conn.try_recv(burst, BURST - burst.len()) {
            Err(_) => break,
            Ok(0) => {
                empty_turns += 1;
                if empty_turns >= MAX_EMPTY_TURNS {
                    break;
                }
            }
            Ok(_) => empty_turns = 0,
        }
    }
    use tokio::time::timeout as step;
    let frames = step(write_timeout, feed(app, sink, burst, stamps)).await??;
    step(write_timeout, flush(app, sink, frames, stamps)).await??;
    Ok(())
}

/// A write that failed or took longer than the write timeout.
#[derive(Debug)]
struct WriteFailed;

impl From<tungstenite::Error> for WriteFailed {
    fn from(_: tungstenite::Error) -> Self {
        WriteFailed
    }
}

impl From<tokio::time::error::Elapsed> for WriteFailed {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        WriteFailed
    }
}

/// How many scheduler turns a writer waits at most, gathering frames, before it flushes.
const MAX_GATHER_TURNS: usize = 16;

/// How many turns in a row without a new frame end a gather.
const MAX_EMPTY_TURNS: usize = 2;

/// Feeds a burst and flushes once.
async fn write_burst(
    app: &App,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    burst: &mut Vec<Delivery>,
    stamps: &mut Vec<tokio::time::Instant>,
) -> Result<(), tungstenite::Error> {
    let frames = feed(app, sink, burst, stamps).await?;
    flush(app, sink, frames, stamps).await
}

/// Flushes what was fed; records frames per flush and each frame's publish-to-flush latency
/// (`stamps`, emptied).
async fn flush(
    app: &App,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    frames: usize,
    stamps: &mut Vec<tokio::time::Instant>,
) -> Result<(), tungstenite::Error> {
    let flushed = sink.flush().await;
    if flushed.is_ok() && frames > 0 {
        app.metrics.frames_per_flush.observe(frames as f64);
        app.metrics.latency.observe_since(tokio::time::Instant::now(), stamps);
    }
    stamps.clear();
    flushed
}

/// Feeds (without flushing) a burst; notes publish times and delivery counts. Returns how
/// many frames were fed.
async fn feed(
    app: &App,
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    burst: &mut Vec<Delivery>,
    stamps: &mut Vec<tokio::time::Instant>,
) -> Result<usize, tungstenite::Error> {
    let count = burst.len();
    stamps.clear();
    // Delivery counters are shared by every writer: add once per run of one type, not per frame.
    let mut run: Option<(usize, u64)> = None;
    for delivery in burst.drain(..) {
        let type_index = delivery.type_index();
        match &mut run {
            Some((t, n)) if *t == type_index => *n += 1,
            _ => {
                if let Some((t, n)) = run.replace((type_index, 1)) {
                    app.metrics.delivered(t, n);
                }
            }
        }
        if let Some(at) = delivery.published_at() {
            stamps.push(at);
        }
        sink.feed(text_frame(delivery.into_frame().into_bytes())).await?;
    }
    if let Some((t, n)) = run {
        app.metrics.delivered(t, n);
    }
    Ok(count)
}

/// A text message of already-valid UTF-8: hub frames are only ever made from `String`s
/// (`modelcast_hub::Frame`), so the per-delivery UTF-8 check `Message::Text` would need is
/// skipped (4% of a fan-out's CPU) by handing tungstenite the frame itself. The same bytes go
/// out on the wire; the buffer is shared, not copied.
fn text_frame(json: bytes::Bytes) -> Message {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    Message::Frame(Frame::message(json, OpCode::Data(Data::Text), true))
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
    control: &Arc<Control>,
) {
    // Made on the first inbound frame, so idle connections carry no limiter.
    // Boxed: an idle session's future stays small.
    let mut limiter: Option<Box<governor::DefaultDirectRateLimiter>> = None;
    // Refused frames in the current one-second window: each is answered, and a sustained flood
    // (more than MODELCAST_ABUSE_LIMIT refused within a second) closes the connection, however
    // the refusals interleave with served frames.
    let mut window = (tokio::time::Instant::now(), 0usize);
    // `publish` frames already read and not yet published: a backend streaming messages sends
    // many per read, and publishing them in one call fans each topic's run out with one lock
    // per subscriber instead of one per message. Published before any other frame is handled
    // and before waiting for more input, so nothing waits for a later frame.
    let mut publishes: Vec<PublishRequest> = Vec::new();
    loop {
        let next = if publishes.is_empty() {
            tokio::select! {
                () = control.done.cancelled() => break,
                next = stream.next() => next,
            }
        } else {
            match stream.next().now_or_never() {
                Some(next) => next,
                None => {
                    publish_frames(app, conn, control, std::mem::take(&mut publishes));
                    continue;
                }
            }
        };
        let next = match next {
            // Only a connection allowed to publish has its frames parsed here (others' `publish`
            // frames are refused below, rate limited like any frame).
            Some(Ok(Message::Text(text))) if control.publisher != Publisher::No => {
                match ClientMessage::parse_frame(text.as_str()) {
                    Ok(ClientMessage::Publish(request)) => {
                        control.last_seen_ms.store(now_ms(app), Ordering::Relaxed);
                        publishes.push(request);
                        if publishes.len() >= MAX_PUBLISH_BATCH {
                            publish_frames(app, conn, control, std::mem::take(&mut publishes));
                        }
                        continue;
                    }
                    parsed => {
                        publish_frames(app, conn, control, std::mem::take(&mut publishes));
                        Some(Ok((Message::Text(text), Some(parsed))))
                    }
                }
            }
            other => {
                publish_frames(app, conn, control, std::mem::take(&mut publishes));
                other.map(|r| r.map(|m| (m, None)))
            }
        };
        match next {
            None => {
                control.peer_gone.store(true, Ordering::Relaxed);
                break;
            }
            Some(Ok((message, parsed))) => {
                control.last_seen_ms.store(now_ms(app), Ordering::Relaxed);
                // Parsed first: a connection allowed to publish sends `publish` frames at a
                // backend's rate (HTTP publishing has no per-client rate either); every other
                // frame counts against the limit that guards against floods.
                let parsed = match (&message, parsed) {
                    (_, Some(parsed)) => Some(parsed),
                    (Message::Text(text), None) => Some(ClientMessage::parse_frame(text.as_str())),
                    _ => None,
                };
                let publishing = control.publisher != Publisher::No
                    && matches!(parsed, Some(Ok(ClientMessage::Publish(_))));
                if !publishing && matches!(message, Message::Text(_) | Message::Binary(_)) {
                    let limiter = limiter.get_or_insert_with(|| app.security.message_limiter());
                    if limiter.check().is_err() {
                        let now = tokio::time::Instant::now();
                        if now.duration_since(window.0) >= Duration::from_secs(1) {
                            window = (now, 0);
                        }
                        window.1 += 1;
                        if window.1 > app.config.abuse_limit {
                            control.set_close(
                                close::POLICY_VIOLATION,
                                format!(
                                    "more than {} messages over the rate limit within a second",
                                    app.config.abuse_limit
                                ),
                            );
                            break;
                        }
                        let request_id = match &parsed {
                            Some(Ok(message)) => message.request_id().cloned(),
                            Some(Err(err)) => err.request_id.clone(),
                            None => None,
                        };
                        reply_error(
                            app,
                            conn,
                            ErrorCode::RateLimited,
                            format!(
                                "message dropped: more than {} messages per second (bursts of {}); \
                                 {} dropped in this second, more than {} closes the connection",
                                app.config.rate_limit,
                                app.config.rate_burst,
                                window.1,
                                app.config.abuse_limit
                            ),
                            request_id,
                        );
                        continue;
                    }
                }
                match message {
                    Message::Text(_) => {
                        if let Some(parsed) = parsed {
                            handle_frame(app, conn, control, parsed);
                        }
                    }
                    Message::Binary(_) => reply_error(
                        app,
                        conn,
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported: send JSON in text frames".into(),
                        None,
                    ),
                    Message::Close(_) => {
                        control.peer_closed.store(true, Ordering::Relaxed);
                        break;
                    }
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
            // A TCP reset or EOF without a close frame: the peer is gone (a closed tab, a
            // dropped network), not a protocol violation.
            Some(Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))) => {
                control.peer_gone.store(true, Ordering::Relaxed);
                break;
            }
            Some(Err(tungstenite::Error::Protocol(err))) => {
                control.set_close(close::PROTOCOL_ERROR, format!("protocol error: {err}"));
                break;
            }
            Some(Err(tungstenite::Error::Utf8(err))) => {
                control.set_close(
                    close::INVALID_PAYLOAD,
                    format!("invalid UTF-8 in a text frame: {err}"),
                );
                break;
            }
            Some(Err(err)) => {
                tracing::debug!(%err, "websocket read failed");
                control.peer_gone.store(true, Ordering::Relaxed);
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
