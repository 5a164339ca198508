//! A session's own state — [`Control`], shared by its reader and writer, the registry and the
//! roster — and what it holds: who it is ([`AuthState`]), whether it may publish
//! ([`Publisher`]), what each subscription asked for ([`Listening`]). A leaf under `state.rs`
//! and `roster.rs`: it imports neither.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::security::Identity;
/// Whether a WebSocket connection may send `publish` frames, decided at its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publisher {
    /// It may not (a browser page from an origin not allowed to publish, or no publish key on
    /// a server that has keys).
    No,
    /// The server has no publish keys and the client is not a disallowed browser page.
    Open,
    /// It presented a valid publish key (`Authorization: Bearer <key>`): a trusted backend,
    /// which needs no token even when the server requires them.
    Key,
}

/// A session's shared state: between its reader and writer, and with the registry.
#[derive(Debug)]
pub(crate) struct Control {
    /// Whether it may publish.
    pub(crate) publisher: Publisher,
    /// The close frame to send, when something other than the outbox decided to close.
    pub(crate) close: Mutex<Option<(u16, String)>>,
    /// Milliseconds since the server started when the peer was last heard from.
    pub(crate) last_seen_ms: AtomicU64,
    /// Cancelled when the writer is done: the reader stops.
    pub(crate) done: CancellationToken,
    /// Authentication, when the server requires it.
    pub(crate) auth: Mutex<AuthState>,
    /// Wakes the writer to re-check `auth` and `close` (set by the reader).
    pub(crate) wake: tokio::sync::Notify,
    /// Set when the peer sent a close frame: the payload of the close frame that answers it.
    /// The writer completes the closing handshake with it instead of sending a close of its
    /// own.
    pub(crate) peer_close: Mutex<Option<Vec<u8>>>,
    /// The payload of the latest ping not answered yet (the writer sends the pong between
    /// bursts; RFC 6455 §5.5.3 lets an endpoint answer only the most recent ping).
    pub(crate) pong: Mutex<Option<bytes::Bytes>>,
    /// Whether `pong` holds a payload (checked once per burst without a lock).
    pub(crate) pong_pending: std::sync::atomic::AtomicBool,
    /// The peer went away without a closing handshake (reset, EOF, read error): counted as
    /// `client_gone`, never as a policy or protocol violation.
    pub(crate) peer_gone: std::sync::atomic::AtomicBool,
    /// The connection id the client chose (or was given).
    pub(crate) id: String,
    /// Unique per session, to tell a session from its replacement in the registry.
    pub(crate) serial: u64,
    /// Where the session is registered now (none while a token is awaited).
    pub(crate) registered: Mutex<Option<SessionKey>>,
    /// The session's share in its user's presence, once it has a user.
    pub(crate) online: std::sync::OnceLock<crate::presence::OnlineGuard>,
    /// What each subscription asked for, by topic index (the hub's subscriptions say which
    /// are live): shown by `GET /api/connections` and counted by `/api/presence`.
    pub(crate) listening: Mutex<[Option<Listening>; modelcast_protocol::Topic::ALL.len()]>,
}

/// What a subscription asked for: its filter's model ids and its `max_hz`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Listening {
    /// The filter's model ids as a JSON array, in one allocation (read back only to list or
    /// count them; a subscribe, which is frequent, copies them once).
    pub(crate) model_ids: Option<Box<str>>,
    pub(crate) max_hz: Option<f64>,
}

/// A session's place in the registry: its connection id, within its token's subject when
/// authentication is on. Ids are namespaced per subject, so one user's connection can never
/// replace (close) another user's by opening the same id.
pub(crate) type SessionKey = (Option<String>, String);

/// A connection's authentication.
#[derive(Debug, Default)]
pub(crate) struct AuthState {
    pub(crate) identity: Option<Identity>,
    /// Closed with 4401 unless (re)authenticated by then.
    pub(crate) deadline: Option<tokio::time::Instant>,
    /// The token's expiry was announced.
    pub(crate) expiry_announced: bool,
}

impl AuthState {
    /// When the writer must look at this state next.
    pub(crate) fn next_check(&self) -> Option<tokio::time::Instant> {
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
    /// A new session's state: `id` its connection id, `serial` unique per session, heard from
    /// at `last_seen_ms`; `deadline` when a token must have arrived by.
    pub(crate) fn new(
        id: String,
        serial: u64,
        publisher: Publisher,
        identity: Option<Identity>,
        deadline: Option<tokio::time::Instant>,
        last_seen_ms: u64,
    ) -> Self {
        Self {
            publisher,
            close: Mutex::new(None),
            last_seen_ms: AtomicU64::new(last_seen_ms),
            done: CancellationToken::new(),
            auth: Mutex::new(AuthState { identity, deadline, expiry_announced: false }),
            wake: tokio::sync::Notify::new(),
            peer_close: Mutex::new(None),
            pong: Mutex::new(None),
            pong_pending: std::sync::atomic::AtomicBool::new(false),
            peer_gone: std::sync::atomic::AtomicBool::new(false),
            id,
            serial,
            registered: Mutex::new(None),
            online: std::sync::OnceLock::new(),
            listening: Mutex::default(),
        }
    }

    /// Notes what the subscription to `topic` asked for.
    pub(crate) fn listen(&self, topic: modelcast_protocol::Topic, listening: Listening) {
        self.listening.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[topic.index()] =
            Some(listening);
    }

    /// What the subscription to `topic` asked for, if it was noted.
    pub(crate) fn listening(&self, topic: modelcast_protocol::Topic) -> Option<Listening> {
        self.listening.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[topic.index()]
            .clone()
    }

    pub(crate) fn auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_close(&self, code: u16, reason: impl Into<String>) {
        let mut close = self.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        close.get_or_insert((code, reason.into()));
    }

    pub(crate) fn take_close(&self) -> Option<(u16, String)> {
        self.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Asks the writer to answer a ping (a newer ping replaces an unanswered one).
    pub(crate) fn set_pong(&self, payload: bytes::Bytes) {
        *self.pong.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(payload);
        self.pong_pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The payload of a ping to answer, if any.
    pub(crate) fn take_pong(&self) -> Option<bytes::Bytes> {
        if !self.pong_pending.swap(false, Ordering::Acquire) {
            return None;
        }
        self.pong.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Notes the peer's close frame; the writer echoes `echo` (RFC 6455 §5.5.1).
    pub(crate) fn set_peer_closed(&self, echo: Vec<u8>) {
        *self.peer_close.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(echo);
    }

    /// The close frame's payload to echo, once the peer sent one.
    pub(crate) fn take_peer_close(&self) -> Option<Vec<u8>> {
        self.peer_close.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}
