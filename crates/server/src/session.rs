//! WebSocket sessions: the per-connection task — a reader and a writer future side by side on
//! the two halves of the socket (TCP, or TLS), heartbeats, authentication deadlines, close
//! codes.
//!
//! Every reply goes through the connection's hub outbox, so there is exactly one writer of
//! data frames, which writes a burst as header and payload slices in as few `writev` calls as
//! the socket takes (modelcast-ws): each payload is the frame the hub serialized once, or its
//! compressed form made once, never copied per connection. Control frames the reader asks for
//! (a pong, the close echo) go between bursts. The handshake is in `handshake.rs`, client
//! actions in `actions.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use modelcast_hub::{Connection, Delivery, DropReason};
use modelcast_protocol::{ClientMessage, ErrorCode, FrameError, PublishRequest, close};
use modelcast_ws::{Decoder, Deflate, Header, Message, OpCode, ReadError, Reader, close_payload};
use modelcast_ws::{ReadSocket, Streamed, WriteSocket};

use crate::actions::{handle_frame, publish_frames, reply_error};
use crate::admit::Admitted;
use crate::roster::Transport;
use crate::security::Identity;
use crate::state::{App, Control, Publisher};
use crate::stream::Stream;

/// Frames taken from the outbox per burst (one flush each).
const BURST: usize = 256;

/// `publish` frames read together that are published in one call at most (bounds how long a
/// topic's lock is held for one run).
const MAX_PUBLISH_BATCH: usize = 64;

/// An upgraded connection: the TCP socket, what hyper read past the request, and whether
/// permessage-deflate was agreed.
#[derive(Debug)]
pub(crate) struct Socket {
    pub(crate) stream: Stream,
    pub(crate) already_read: Bytes,
    pub(crate) deflate: Option<Deflate>,
}

/// How long a closed connection waits for the client to close its side after the close
/// frames were exchanged.
const LINGER: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    app: Arc<App>,
    socket: Socket,
    id: String,
    _admitted: Admitted,
    identity: Option<Identity>,
    publisher: Publisher,
) {
    let conn = app.hub.connect();
    if let Some(identity) = &identity {
        conn.set_viewer(identity.viewer());
    }
    let serial = app.next_session.fetch_add(1, Ordering::Relaxed);
    // A backend with a publish key needs no token; anyone else must authenticate in time.
    let deadline =
        (app.security.auth_required() && identity.is_none() && publisher != Publisher::Key)
            .then(|| tokio::time::Instant::now() + app.config.auth_deadline);
    let subject = identity.as_ref().map(|i| i.subject.clone());
    let operator = app.security.is_operator(identity.as_ref(), publisher == Publisher::Key);
    let control =
        Arc::new(Control::new(id.clone(), serial, publisher, identity, deadline, now_ms(&app)));
    // Without authentication, ids are global; with it, they live within the token's subject,
    // and a connection still waiting for its token takes no id (it registers on `auth`).
    match (app.security.auth_required(), subject) {
        (false, _) => app.register((None, id.clone()), &conn, &control),
        (true, Some(subject)) => app.register((Some(subject), id.clone()), &conn, &control),
        (true, None) => {}
    }
    let _on_roster = app.roster.join(Transport::Ws, socket.deflate.is_some(), &conn, &control);
    app.metrics.opened();
    tracing::debug!(connection_id = %id, "connected");
    let _ = conn.send(&app.welcome(id.clone(), operator, deadline.is_some()));

    let Socket { stream, already_read, deflate } = socket;
    if deflate.is_some() {
        app.metrics.compressing.inc();
    }
    let talk = Talk { app: &app, conn: &conn, control: &control, deflate };
    let reason = talk.run(stream, already_read).await;
    if deflate.is_some() {
        app.metrics.compressing.dec();
    }

    app.unregister(&control);
    conn.close(DropReason::Closed);
    app.metrics.closed(reason);
    tracing::debug!(connection_id = %id, reason, "disconnected");
}

/// What the reader and the writer of one session share.
struct Talk<'a> {
    app: &'a App,
    conn: &'a Connection,
    control: &'a Arc<Control>,
    deflate: Option<Deflate>,
}

impl Talk<'_> {
    /// The session's frames on `stream` (`already_read`: what hyper read past the upgrade)
    /// until it ends; then, if a close frame went out, the closing handshake's end. Returns
    /// the close reason.
    async fn run(&self, mut stream: Stream, already_read: Bytes) -> &'static str {
        let decoder = Decoder::new(self.app.config.max_frame_size, self.deflate.is_some())
            .max_fragments(self.app.config.max_fragments);
        let mut frames = Reader::new(decoder, already_read);
        let (reason, close_sent) = match &mut stream {
            // TCP: readiness and `writev` on the socket's two halves.
            Stream::Plain(tcp) => {
                let (read_half, write_half) = tcp.split();
                self.over(&read_half, &write_half, &mut frames).await
            }
            // TLS: the stream's halves, each behind its own lock (one user each).
            Stream::Tls(tls) => {
                let (read_half, write_half) = tokio::io::split(&mut **tls);
                let halves = (Streamed::new(read_half), Streamed::new(write_half));
                self.over(&halves.0, &halves.1, &mut frames).await
            }
        };
        if close_sent {
            // The server closes the TCP connection first (RFC 6455 §7.1.1), without a reset.
            modelcast_ws::finish(&mut stream, LINGER).await;
        }
        reason
    }

    /// The writer and the reader side by side on the socket's halves, until both end; the
    /// writer's close reason, and whether a close frame went out.
    async fn over(
        &self,
        read: &(impl ReadSocket + Sync),
        write: &(impl WriteSocket + Sync),
        frames: &mut Reader,
    ) -> (&'static str, bool) {
        let (ended, ()) = tokio::join!(
            writer(self.app, self.conn, write, self.control, self.deflate),
            reader(self.app, self.conn, read, frames, self.control)
        );
        ended
    }
}

fn now_ms(app: &App) -> u64 {
    u64::try_from(app.started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Drains the outbox into the socket; pings; answers pings; closes. Returns the close reason
/// for metrics, and whether a close frame went out (then the connection lingers for the
/// client's side of the close).
async fn writer(
    app: &App,
    conn: &Connection,
    socket: &(impl WriteSocket + Sync),
    control: &Control,
    deflate: Option<Deflate>,
) -> (&'static str, bool) {
    let heartbeat = app.config.heartbeat_interval;
    // A socket that takes no bytes for this long is dead or hopelessly slow. Generous next to
    // short heartbeats, so that a busy machine does not look like a dead peer.
    let write_timeout = heartbeat.max(Duration::from_secs(5));
    let mut out = Out { app, socket, deflate, write_timeout, stamps: Vec::new(), last_write: None };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut burst: Vec<Delivery> = Vec::new();
    let auth_required = app.security.auth_required();
    // One registration with the Notify for the whole session, re-armed only after it fires.
    let wake = control.wake.notified();
    tokio::pin!(wake);
    let ended = loop {
        let auth_check = if auth_required { control.auth().next_check() } else { None };
        tokio::select! {
            biased;
            // Drain what is queued (bounded by the queue size), then say goodbye.
            () = app.drain.cancelled() => break out.close_after_queued(conn, &mut burst, close::GOING_AWAY, "server shutting down", "shutdown").await,
            received = conn.recv(&mut burst, BURST) => match received {
                // A ping is answered before the next burst, however busy the writer is. A
                // failed write may leave a frame half written: no close frame can follow it.
                Ok(()) => if out.pong(control).await.is_err() || out.live(conn, &mut burst).await.is_err() {
                    break ("write_failed", false);
                },
                Err(dropped) => break out.closed(control, dropped).await,
            },
            () = sleep_until_opt(auth_check), if auth_check.is_some() => if let Some(label) = check_auth(app, conn, control) {
                break out.close_after_queued(conn, &mut burst, close::UNAUTHORIZED, label, "unauthorized").await;
            },
            () = &mut wake => {
                wake.set(control.wake.notified());
                if out.pong(control).await.is_err() {
                    break ("write_failed", false);
                }
                // The reader decided to close (frame too large, abuse): queued replies first.
                if let Some((code, text)) = control.take_close() {
                    break out.close_after_queued(conn, &mut burst, code, &text, close_label(code)).await;
                }
            }
            _ = ping.tick() => if let Some(ended) = out.heartbeat(control, heartbeat).await {
                break ended;
            },
        }
    };
    control.done.cancel();
    ended
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
        close::REVOKED => "revoked",
        _ => "closed",
    }
}

/// The writing side of a session: the socket half and what every write needs.
struct Out<'a, W> {
    app: &'a App,
    socket: &'a W,
    deflate: Option<Deflate>,
    write_timeout: Duration,
    /// Publish times of the frames in flight, for the latency histogram (reused: no
    /// allocation per write).
    stamps: Vec<tokio::time::Instant>,
    /// When this connection last wrote live frames (for the write pacing under load).
    last_write: Option<tokio::time::Instant>,
}

/// A write that failed or took longer than the write timeout.
#[derive(Debug)]
struct WriteFailed;

impl From<std::io::Error> for WriteFailed {
    fn from(_: std::io::Error) -> Self {
        WriteFailed
    }
}

impl From<tokio::time::error::Elapsed> for WriteFailed {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        WriteFailed
    }
}

/// A burst's figures, added to the metrics every writer shares once per burst (a delivery
/// count once per run of one type, not per frame).
#[derive(Debug, Default)]
struct Tally {
    run: Option<(usize, u64)>,
    compressed_frames: u64,
    bytes_before: u64,
    bytes_after: u64,
}

impl Tally {
    /// One frame of type `type_index` delivered.
    #[inline]
    fn delivered(&mut self, app: &App, type_index: usize) {
        match &mut self.run {
            Some((t, n)) if *t == type_index => *n += 1,
            run => {
                if let Some((t, n)) = run.replace((type_index, 1)) {
                    app.metrics.delivered(t, n);
                }
            }
        }
    }

    /// One frame of `before` bytes written compressed in `after`.
    fn compressed(&mut self, before: usize, after: usize) {
        self.compressed_frames += 1;
        self.bytes_before += before as u64;
        self.bytes_after += after as u64;
    }

    fn add_to(self, app: &App) {
        if let Some((t, n)) = self.run {
            app.metrics.delivered(t, n);
        }
        app.metrics.compressed(self.compressed_frames, self.bytes_before, self.bytes_after);
    }
}

/// How many scheduler turns a writer waits at most, gathering frames, before it writes.
const MAX_GATHER_TURNS: usize = 16;

/// How many turns in a row without a new frame end a gather.
const MAX_EMPTY_TURNS: usize = 2;

impl<W: WriteSocket + Sync> Out<'_, W> {
    /// Writes live frames: before writing the burst, yields and takes whatever arrived
    /// meanwhile, so that when the server is busy (publishes in flight, other writers running)
    /// the frames of several publishes leave in one `writev` instead of one each, without
    /// delaying a lone message by more than one turn of the scheduler.
    async fn live(
        &mut self,
        conn: &Connection,
        burst: &mut Vec<Delivery>,
    ) -> Result<(), WriteFailed> {
        // While publishes keep arriving between turns, keep gathering (bounded): a write costs
        // a system call (on loopback also the receiver's TCP processing), a turn costs one
        // poll. Frames wait in `burst`, not half-written in the socket: a close frame or a
        // pong always goes between complete frames.
        // One turn without a new frame does not end the gather: with a request-response
        // publisher (one message per POST) the next request has often arrived but not been
        // read yet in that turn. Tolerating one measured 12% less server CPU per delivery in
        // that mode (5 of 5 interleaved runs) and no change with a WebSocket publisher; an
        // idle writer pays one extra, empty turn (microseconds) before it writes a lone
        // message.
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
        // A busy server: at most one write per budget; what arrives meanwhile joins this one.
        if burst.len() < BURST
            && let Some(due) = self.app.pace.hold(self.last_write)
        {
            tokio::time::sleep_until(due).await;
            let _ = conn.try_recv(burst, BURST - burst.len()); // closed: write what we hold
        }
        self.last_write = Some(tokio::time::Instant::now());
        self.burst(burst).await
    }

    /// Writes a burst of deliveries (emptied) within the write timeout: one header per frame,
    /// each payload from where it lies — the frame the hub shares, or the compressed form the
    /// frame shares once a compressing connection asked for it. Records delivery counts,
    /// frames per write and each frame's publish-to-write latency.
    async fn burst(&mut self, burst: &mut Vec<Delivery>) -> Result<(), WriteFailed> {
        let app = self.app;
        self.stamps.clear();
        let mut frames: Vec<(Header, &[u8])> = Vec::with_capacity(burst.len());
        let mut tally = Tally::default();
        for delivery in burst.iter() {
            tally.delivered(app, delivery.type_index());
            if let Some(at) = delivery.published_at() {
                self.stamps.push(at);
            }
            frames.push(self.payload(delivery.frame(), &mut tally));
        }
        tally.add_to(app);
        let written = tokio::time::timeout(
            self.write_timeout,
            modelcast_ws::write_frames(self.socket, &frames),
        )
        .await;
        let count = frames.len();
        drop(frames);
        burst.clear();
        written??;
        if count > 0 {
            app.pace.wrote(count);
            app.metrics.frames_per_flush.observe(count as f64);
            app.metrics.latency.observe_since(tokio::time::Instant::now(), &self.stamps);
        }
        self.stamps.clear();
        Ok(())
    }

    /// A frame's header and payload: the frame the hub shares, or its compressed form (made
    /// once per frame, whatever the connections) for a compressing connection.
    #[inline]
    fn payload<'f>(
        &self,
        frame: &'f modelcast_hub::Frame,
        tally: &mut Tally,
    ) -> (Header, &'f [u8]) {
        let app = self.app;
        let compressed = match self.deflate {
            Some(deflate)
                if frame.len() >= app.config.compression_min_size && deflate.fits(frame.len()) =>
            {
                frame.compressed_with(|bytes| {
                    app.metrics.compressions.inc();
                    modelcast_ws::deflate(bytes)
                })
            }
            _ => None,
        };
        match compressed {
            Some(payload) => {
                tally.compressed(frame.len(), payload.len());
                (Header::new(OpCode::Text, true, payload.len()), payload)
            }
            None => (Header::new(OpCode::Text, false, frame.len()), frame.as_bytes()),
        }
    }

    /// Answers the ping the reader left in `control`, if there is one.
    async fn pong(&self, control: &Control) -> Result<(), WriteFailed> {
        match control.take_pong() {
            Some(payload) => self.control(OpCode::Pong, &payload).await,
            None => Ok(()),
        }
    }

    /// Writes one control frame (ping, pong, close) within the write timeout.
    async fn control(&self, opcode: OpCode, payload: &[u8]) -> Result<(), WriteFailed> {
        let frame = [(Header::new(opcode, false, payload.len()), payload)];
        tokio::time::timeout(self.write_timeout, modelcast_ws::write_frames(self.socket, &frame))
            .await??;
        Ok(())
    }

    /// Sends a close frame (waiting at most a second); whether it went out.
    async fn close(&self, code: u16, reason: &str) -> bool {
        let payload = close_payload(code, reason);
        let frame = [(Header::new(OpCode::Close, false, payload.len()), &payload[..])];
        let write = modelcast_ws::write_frames(self.socket, &frame);
        matches!(tokio::time::timeout(Duration::from_secs(1), write).await, Ok(Ok(())))
    }

    /// The connection's outbox was closed (`dropped`): the close frame that says why — the
    /// echo of the peer's, the one the reader or the registry asked for, or the drop's own.
    async fn closed(&self, control: &Control, dropped: DropReason) -> (&'static str, bool) {
        if let Some(echo) = control.take_peer_close() {
            // The client started the closing handshake: echo its close frame.
            return ("client_closed", self.control(OpCode::Close, &echo).await.is_ok());
        }
        let (code, text, label) = match (control.take_close(), dropped) {
            (Some((code, text)), _) => (code, text, close_label(code)),
            (None, DropReason::SlowConsumer) => (
                close::SLOW_CONSUMER,
                "too far behind: reconnect with `since` to recover".to_owned(),
                "slow_consumer",
            ),
            (None, DropReason::Replaced) => (
                close::REPLACED,
                "replaced by a newer connection with the same id".to_owned(),
                "replaced",
            ),
            (None, DropReason::Shutdown) => {
                (close::GOING_AWAY, "server shutting down".to_owned(), "shutdown")
            }
            (None, _) if control.peer_gone.load(Ordering::Relaxed) => {
                return ("client_gone", false);
            }
            (None, _) => (close::NORMAL, String::new(), "client_closed"),
        };
        (label, self.close(code, &text).await)
    }

    /// A heartbeat: a peer silent for two intervals is closed (4003), else it is pinged.
    /// `Some` when the connection ends.
    async fn heartbeat(
        &self,
        control: &Control,
        interval: Duration,
    ) -> Option<(&'static str, bool)> {
        let silent = now_ms(self.app).saturating_sub(control.last_seen_ms.load(Ordering::Relaxed));
        if silent > 2 * u64::try_from(interval.as_millis()).unwrap_or(u64::MAX) {
            let closed = self.close(close::HEARTBEAT_TIMEOUT, "no heartbeat").await;
            return Some(("heartbeat_timeout", closed));
        }
        self.control(OpCode::Ping, &[]).await.is_err().then_some(("write_failed", false))
    }

    /// Writes what is queued (bounded by the queue size), then the close frame.
    async fn close_after_queued(
        &mut self,
        conn: &Connection,
        burst: &mut Vec<Delivery>,
        code: u16,
        reason: &str,
        label: &'static str,
    ) -> (&'static str, bool) {
        while conn.try_recv(burst, BURST).unwrap_or(0) > 0 {
            if self.burst(burst).await.is_err() {
                return (label, false);
            }
        }
        (label, self.close(code, reason).await)
    }
}

/// Reads client frames until the peer leaves or the writer is done.
async fn reader(
    app: &App,
    conn: &Connection,
    socket: &(impl ReadSocket + Sync),
    frames: &mut Reader,
    control: &Arc<Control>,
) {
    let mut inbound = Inbound {
        app,
        conn,
        control,
        limiter: None,
        window: (tokio::time::Instant::now(), 0),
        publishes: Vec::new(),
    };
    while let Some(message) = inbound.next(socket, frames).await {
        control.last_seen_ms.store(now_ms(app), Ordering::Relaxed);
        if inbound.handle(message) == Flow::Stop {
            break;
        }
    }
    if control.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() {
        // The writer writes what is queued, then sends the close frame.
        control.wake.notify_one();
    } else {
        // The peer left or closed: nothing more to write but the echo.
        conn.close(DropReason::Closed);
    }
}

/// Whether the reader goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// The reading side of a session and what it keeps between frames.
struct Inbound<'a> {
    app: &'a App,
    conn: &'a Connection,
    control: &'a Arc<Control>,
    /// Made on the first inbound frame, so idle connections carry no limiter. Boxed: an idle
    /// session's future stays small.
    limiter: Option<Box<governor::DefaultDirectRateLimiter>>,
    /// Refused frames in the current one-second window: each is answered, and a sustained
    /// flood (more than MODELCAST_ABUSE_LIMIT refused within a second) closes the connection,
    /// however the refusals interleave with served frames.
    window: (tokio::time::Instant, usize),
    /// `publish` frames already read and not yet published: a backend streaming messages sends
    /// many per read, and publishing them in one call fans each topic's run out with one lock
    /// per subscriber instead of one per message. Published before any other frame is handled
    /// and before waiting for more input, so nothing waits for a later frame.
    publishes: Vec<PublishRequest>,
}

impl Inbound<'_> {
    /// The next message; `None` at the end (the writer is done, the peer left, or its bytes
    /// broke the protocol: then the close frame to send is set).
    async fn next(
        &mut self,
        socket: &(impl ReadSocket + Sync),
        frames: &mut Reader,
    ) -> Option<Message> {
        let next = loop {
            if self.publishes.is_empty() {
                tokio::select! {
                    () = self.control.done.cancelled() => return None,
                    next = frames.next(socket) => break next,
                }
            }
            // What is already read, without waiting (the reader is cancel-safe).
            match frames.next(socket).now_or_never() {
                Some(next) => break next,
                None => self.publish_gathered(),
            }
        };
        match next {
            Ok(Some(message)) => Some(message),
            // EOF or a reset without a close frame: the peer is gone (a closed tab, a dropped
            // network), not a protocol violation.
            Ok(None) | Err(ReadError::Io(_)) => {
                self.publish_gathered();
                self.control.peer_gone.store(true, Ordering::Relaxed);
                None
            }
            Err(ReadError::Failed(failure)) => {
                self.publish_gathered();
                let text = match failure.code {
                    modelcast_ws::code::MESSAGE_TOO_BIG => format!(
                        "frame too large (at most {} bytes): {failure}",
                        self.app.config.max_frame_size
                    ),
                    modelcast_ws::code::INVALID_PAYLOAD => format!("invalid payload: {failure}"),
                    _ => format!("protocol error: {failure}"),
                };
                self.control.set_close(failure.code, text);
                None
            }
        }
    }

    /// Publishes the `publish` frames gathered so far.
    fn publish_gathered(&mut self) {
        let publishes = std::mem::take(&mut self.publishes);
        publish_frames(self.app, self.conn, self.control, publishes);
    }

    /// One message: a `publish` frame of a connection allowed to publish is gathered (its
    /// traffic, not counted by the rate limit, as HTTP publishing has no per-client rate
    /// either); every other frame is rate limited, then answered.
    fn handle(&mut self, message: Message) -> Flow {
        let parsed = match &message {
            Message::Text(text) => Some(ClientMessage::parse_frame(text)),
            _ => None,
        };
        if self.control.publisher != Publisher::No
            && let Some(Ok(ClientMessage::Publish(request))) = parsed
        {
            self.publishes.push(request);
            if self.publishes.len() >= MAX_PUBLISH_BATCH {
                self.publish_gathered();
            }
            return Flow::Go;
        }
        self.publish_gathered();
        if matches!(message, Message::Text(_) | Message::Binary(_)) && !self.allowed(&parsed) {
            return if self.window.1 > self.app.config.abuse_limit { Flow::Stop } else { Flow::Go };
        }
        self.answer(message, parsed)
    }

    /// Whether a frame is within the rate limit; a refused one is answered `rate_limited`,
    /// and past the abuse limit the connection is set to close with 1008.
    fn allowed(&mut self, parsed: &Option<Result<ClientMessage, FrameError>>) -> bool {
        let app = self.app;
        let limiter = self.limiter.get_or_insert_with(|| app.security.message_limiter());
        if limiter.check().is_ok() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        let config = &app.config;
        if self.window.1 > config.abuse_limit {
            let limit = config.abuse_limit;
            let text = format!("more than {limit} messages over the rate limit within a second");
            self.control.set_close(close::POLICY_VIOLATION, text);
            return false;
        }
        let request_id = match parsed {
            Some(Ok(message)) => message.request_id().cloned(),
            Some(Err(err)) => err.request_id.clone(),
            None => None,
        };
        let text = format!(
            "message dropped: more than {} messages per second (bursts of {}); {} dropped in \
             this second, more than {} closes the connection",
            config.rate_limit, config.rate_burst, self.window.1, config.abuse_limit
        );
        reply_error(app, self.conn, ErrorCode::RateLimited, text, request_id);
        false
    }

    /// Answers a message within the limits.
    fn answer(&self, message: Message, parsed: Option<Result<ClientMessage, FrameError>>) -> Flow {
        match message {
            Message::Text(_) => {
                if let Some(parsed) = parsed {
                    handle_frame(self.app, self.conn, self.control, parsed);
                }
            }
            Message::Binary(_) => {
                let text = "binary frames are not supported: send JSON in text frames";
                reply_error(self.app, self.conn, ErrorCode::BinaryNotSupported, text.into(), None);
            }
            Message::Ping(payload) => self.control.set_pong(payload),
            Message::Pong(_) => {}
            Message::Close(frame) => {
                // Echo the code (RFC 6455 §5.5.1); a close without one gets one without.
                let echo = frame.map(|f| close_payload(f.code, "")).unwrap_or_default();
                self.control.set_peer_closed(echo);
                return Flow::Stop;
            }
        }
        Flow::Go
    }
}
