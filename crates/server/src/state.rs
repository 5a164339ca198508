//! State shared by the server's modules: [`App`] (one per server), the session registry's
//! entries and the state a session's reader and writer share. A leaf: it imports no other
//! module of this crate except configuration, metrics and security, so every handler may
//! import it and nothing here imports a handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use modelcast_hub::{Connection, DropReason, Hub};
use modelcast_notifiers::{Notifiers, Policy};
use modelcast_protocol::close;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::security::Security;

pub(crate) use crate::control::{AuthState, Control, Publisher, SessionKey};

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
    pub(crate) sessions: Mutex<HashMap<SessionKey, SessionHandle>>,
    /// WebSocket connections admitted and not yet closed (the `max_connections` gauge).
    pub(crate) active: AtomicUsize,
    pub(crate) next_session: AtomicU64,
    /// Cancelled when the shutdown begins: no new connections, no new publishes.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once the shutdown has begun and every publish acknowledged before it has
    /// reached the subscribers' queues: the sessions drain what is queued and close.
    pub(crate) drain: CancellationToken,
    /// Publishes in progress (see [`App::publish_permit`]).
    pub(crate) publishing: Publishing,
    /// Open connections per address (see [`Addresses`]): HTTP connections by peer, WebSocket
    /// and event streams by client.
    pub(crate) http_per_ip: Arc<Addresses>,
    pub(crate) streams_per_ip: Arc<Addresses>,
    pub(crate) tracker: TaskTracker,
    pub(crate) started: Instant,
    /// Write pacing under load (`MODELCAST_WRITE_COALESCE_MS`).
    pub(crate) pace: crate::pace::Pace,
    /// One permit per TCP connection that is not a WebSocket (yet).
    pub(crate) http_permits: Arc<tokio::sync::Semaphore>,
    /// This node's id (`MODELCAST_NODE_ID` or random).
    pub(crate) node_id: String,
    /// The Redis engine, when this node is one of a cluster.
    pub(crate) engine: Option<Arc<modelcast_redis::RedisEngine>>,
    /// TLS on this port (`MODELCAST_TLS_CERT`), when on.
    pub(crate) tls: Option<crate::tls::ServerTls>,
    /// Push to users who are not connected, when configured.
    pub(crate) push: Option<modelcast_push::Pusher>,
    /// Which users have a connection open (push's "offline").
    pub(crate) presence: Arc<crate::presence::Presence>,
    /// Every open session, WebSocket or event stream (`/api/connections`, disconnects).
    pub(crate) roster: Arc<crate::roster::Roster>,
    /// Who wants each model (`/api/demand`, the demand webhook).
    pub(crate) demand: Arc<crate::demand::Demand>,
}

impl App {
    /// Registers the session of `conn` under `key`, moving it from where it was registered,
    /// and replaces (closes with 4002) an older session with the same key.
    pub(crate) fn register(&self, key: SessionKey, conn: &Connection, control: &Arc<Control>) {
        if let Some(user) = &key.0 {
            // Online while the session lives (its control holds the guard).
            let _ = control.online.get_or_init(|| self.presence.enter(user));
        }
        let mut registered =
            control.registered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let handle =
            SessionHandle { serial: control.serial, conn: conn.clone(), control: control.clone() };
        let replaced = {
            let mut sessions = self.sessions();
            if let Some(old) = registered.take()
                && sessions.get(&old).is_some_and(|s| s.serial == control.serial)
            {
                sessions.remove(&old);
            }
            sessions.insert(key.clone(), handle)
        };
        *registered = Some(key);
        if let Some(old) = replaced.filter(|old| old.serial != control.serial) {
            tracing::info!(connection_id = %control.id, "replacing the open connection with the same id");
            old.control
                .set_close(close::REPLACED, "replaced by a newer connection with the same id");
            old.conn.close(DropReason::Replaced);
        }
    }

    /// Removes the session from the registry (unless a newer one took its place).
    pub(crate) fn unregister(&self, control: &Control) {
        let registered =
            control.registered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(key) = registered {
            let mut sessions = self.sessions();
            if sessions.get(&key).is_some_and(|s| s.serial == control.serial) {
                sessions.remove(&key);
            }
        }
    }

    /// A publish may go ahead: `None` once the shutdown has begun (answer 503). The drain
    /// waits for every permit given before, so a publish acknowledged to its publisher has
    /// reached every subscriber's queue before the subscribers are closed.
    pub(crate) fn publish_permit(&self) -> Option<PublishPermit<'_>> {
        self.publishing.in_flight.fetch_add(1, Ordering::SeqCst);
        let permit = PublishPermit(&self.publishing);
        (!self.shutdown.is_cancelled()).then_some(permit)
    }

    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `welcome` a connection (a WebSocket or an event stream) gets first; `operator`
    /// when its credential opens the operator endpoints, `awaiting_auth` when it has no
    /// credential and must send one within the auth deadline.
    pub(crate) fn welcome(
        &self,
        connection_id: String,
        operator: bool,
        awaiting_auth: bool,
    ) -> modelcast_protocol::ServerMessage {
        modelcast_protocol::ServerMessage::Welcome(modelcast_protocol::Welcome {
            connection_id,
            protocol_version: modelcast_protocol::PROTOCOL_VERSION,
            heartbeat_interval_seconds: self.config.heartbeat_interval.as_secs().max(1),
            topics: modelcast_protocol::Topic::ALL.to_vec(),
            epoch: self.hub.epoch().to_owned(),
            node_id: Some(self.node_id.clone()),
            operator,
            auth_deadline_seconds: awaiting_auth.then_some(self.config.auth_deadline.as_secs_f64()),
            timestamp: chrono::Utc::now(),
        })
    }
}

/// A TCP connection's place among those that are not WebSockets
/// (`MODELCAST_MAX_HTTP_CONNECTIONS`, and its address's share,
/// `MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP`): held while it serves requests, given back when it
/// turns into a long-lived stream (a WebSocket upgrade, or Server-Sent Events, which count
/// against `WEBSOCKET_MAX_CONNECTIONS` and `MODELCAST_MAX_CONNECTIONS_PER_IP` instead).
#[derive(Debug, Clone)]
pub(crate) struct HttpPermit(Arc<Mutex<HttpPlace>>);

type HttpPlace = Option<(tokio::sync::OwnedSemaphorePermit, Option<AddressSlot>)>;

impl HttpPermit {
    pub(crate) fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        address: Option<AddressSlot>,
    ) -> Self {
        Self(Arc::new(Mutex::new(Some((permit, address)))))
    }

    /// Gives the place back (the connection became a stream).
    pub(crate) fn release(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// Publishes in progress: counted by [`PublishPermit`]s, waited for by the drain.
#[derive(Debug, Default)]
pub(crate) struct Publishing {
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Publishing {
    /// Waits until no publish is in progress.
    pub(crate) async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One publish in progress (see [`App::publish_permit`]).
#[derive(Debug)]
pub(crate) struct PublishPermit<'a>(&'a Publishing);

impl Drop for PublishPermit<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Connections per address, capped: one address can never hold every place of a shared limit
/// (`MODELCAST_MAX_HTTP_CONNECTIONS`, `WEBSOCKET_MAX_CONNECTIONS`). IPv6 addresses count per
/// /64, the block one host is usually given. An entry lives while its address has a
/// connection open.
#[derive(Debug)]
pub(crate) struct Addresses {
    open: Mutex<HashMap<std::net::IpAddr, usize>>,
    max: usize,
}

impl Addresses {
    pub(crate) fn new(max: usize) -> Self {
        Self { open: Mutex::default(), max: max.max(1) }
    }

    /// The most connections per address.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection from `ip`, held until dropped; `None` at the cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let block = block_of(ip);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(block).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { addresses: self.clone(), block })
    }
}

/// What an address is counted as: an IPv4 address itself (IPv4-mapped IPv6 too); an IPv6
/// address by its /64.
fn block_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// One connection's place in [`Addresses`].
#[derive(Debug)]
pub(crate) struct AddressSlot {
    addresses: Arc<Addresses>,
    block: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open =
            self.addresses.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.block) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.block);
            }
        }
    }
}

/// What the registry keeps of an open session, to replace it.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) serial: u64,
    pub(crate) conn: Connection,
    pub(crate) control: Arc<Control>,
}
