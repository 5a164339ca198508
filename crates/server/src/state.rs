//! State shared by the server's modules: [`App`] (one per server), the session registry's
//! entries and the state a session's reader and writer share. A leaf: it imports no other
//! module of this crate except configuration, metrics and security, so every handler may
//! import it and nothing here imports a handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modelcast_hub::{Connection, Hub};
use modelcast_notifiers::{Notifiers, Policy};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::security::{Identity, Security};

/// State shared by every request and session.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) hub: Hub,
    pub(crate) policy: Policy,
    pub(crate) notifiers: Notifiers,
    pub(crate) metrics: Metrics,
    pub(crate) security: Security,
    /// Open sessions by connection id (for replacement).
    pub(crate) sessions: Mutex<HashMap<String, SessionHandle>>,
    /// WebSocket connections admitted and not yet closed (the `max_connections` gauge).
    pub(crate) active: AtomicUsize,
    pub(crate) next_session: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) started: Instant,
    pub(crate) ws_config: WebSocketConfig,
}

impl App {
    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts an admitted WebSocket connection until dropped.
pub(crate) struct Admitted(pub(crate) Arc<App>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the registry keeps of an open session, to replace it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) serial: u64,
    pub(crate) conn: Connection,
    pub(crate) control: Arc<Control>,
}

/// Shared by a session's reader and writer.
#[derive(Debug)]
pub(crate) struct Control {
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
}

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
}
