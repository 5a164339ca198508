//! [`Server`]: the listener, the shared state, the accept loop and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use modelcast_hub::{Hub, HubConfig};
use modelcast_notifiers::{Notifiers, NotifiersConfig, Policy, PolicyConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http;
use crate::metrics::Metrics;
use crate::security::Security;
use crate::state::{AddressSlot, Addresses, App, HttpPermit, Publishing};
use crate::stream::Stream;
use crate::tls::ServerTls;
use modelcast_redis::{RedisEngine, RedisSettings};

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    listener: TcpListener,
}

/// Stops a running server gracefully: no new connections, every client closed with 1001
/// after its queue drains (up to the shutdown timeout).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
    app: std::sync::Weak<App>,
}

impl ShutdownHandle {
    /// Begins the graceful shutdown.
    pub fn shutdown(&self) {
        // Counted before the token fires: sessions start closing the moment it does.
        if !self.token.is_cancelled()
            && let Some(app) = self.app.upgrade()
        {
            tracing::info!(
                connections = app.active.load(Ordering::Relaxed),
                "shutting down: draining clients"
            );
        }
        self.token.cancel();
    }
}

impl Server {
    /// Binds the listener and builds the hub, policy and notifiers from `config`.
    pub async fn bind(config: Config) -> std::io::Result<Self> {
        let node_id = node_id(&config);
        let engine = redis_engine(&config, &node_id).await?;
        let hub = match &engine {
            None => Hub::new(hub_config(&config)),
            Some(engine) => Hub::with_engine(hub_config(&config), engine.clone()),
        };
        let policy = Policy::new(
            &hub,
            PolicyConfig::default()
                .download_progress_throttle(config.download_progress_throttle)
                .health_level(config.health_level.into())
                .batch_window(config.batch_window),
        );
        let notifiers =
            Notifiers::new(policy, NotifiersConfig::default().stale_after(config.stale_after));
        Self::bind_inner(config, notifiers, node_id, engine).await
    }

    /// Binds the listener in front of existing `notifiers` (and through them their policy and
    /// hub), used as they are: e.g. a new listener after the old one was shut down, with
    /// history, retained state, download state and the stale watchdog intact. The hub,
    /// policy and stale settings of `config` are not used.
    pub async fn bind_with(config: Config, notifiers: Notifiers) -> std::io::Result<Self> {
        let node_id = node_id(&config);
        Self::bind_inner(config, notifiers, node_id, None).await
    }

    async fn bind_inner(
        config: Config,
        notifiers: Notifiers,
        node_id: String,
        engine: Option<Arc<RedisEngine>>,
    ) -> std::io::Result<Self> {
        let security = Security::from_config(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = ServerTls::from_config(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.bind).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} (MODELCAST_BIND / --bind): {e}", config.bind),
            )
        })?;
        warn_if_open(&config, &security);
        let policy = notifiers.policy().clone();
        let hub = policy.hub().clone();
        let presence = crate::presence::Presence::new(engine.as_ref(), config.presence_lease);
        let push = crate::push::start(&config, &hub, engine.as_ref(), presence.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let http_permits = Arc::new(tokio::sync::Semaphore::new(http_connection_cap(&config)));
        let http_per_ip = Arc::new(Addresses::new(config.max_http_connections_per_ip));
        let streams_per_ip = Arc::new(Addresses::new(config.max_connections_per_ip));
        let pace = crate::pace::Pace::of(&config);
        let kv = engine.as_ref().map(|e| e.kv());
        let roster = crate::roster::Roster::new(node_id.clone(), kv, config.presence_lease);
        let demand = demand(&config)?;
        let app = Arc::new(App {
            config,
            hub,
            policy,
            notifiers,
            metrics: Metrics::new(),
            security,
            sessions: Mutex::default(),
            active: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            drain: CancellationToken::new(),
            publishing: Publishing::default(),
            http_per_ip,
            streams_per_ip,
            tracker: TaskTracker::new(),
            started: Instant::now(),
            pace,
            http_permits,
            node_id,
            engine,
            roster,
            demand,
            tls,
            push,
            presence,
        });
        crate::manage::follow(&app);
        crate::watchers::follow(&app);
        Ok(Self { app, listener })
    }

    /// The address it listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.app.config.bind)
    }

    /// The hub, for in-process publishers and subscribers.
    pub fn hub(&self) -> &Hub {
        &self.app.hub
    }

    /// The policy every publish goes through.
    pub fn policy(&self) -> &Policy {
        &self.app.policy
    }

    /// The typed notifiers, for in-process publishers.
    pub fn notifiers(&self) -> &Notifiers {
        &self.app.notifiers
    }

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { token: self.app.shutdown.clone(), app: Arc::downgrade(&self.app) }
    }

    /// Serves until shut down, then drains: stops accepting, closes every client with 1001
    /// after its queue is written (up to `shutdown_timeout`), and returns.
    pub async fn run(self) -> std::io::Result<()> {
        let Server { app, listener } = self;
        announce(&app, listener.local_addr()?);
        let reloads = app.tls.is_some().then(|| tokio::spawn(reload_on_hangup(app.clone())));
        let demo = app.config.demo.then(|| {
            tracing::info!("demo running: a simulated catalog publishes on every topic");
            modelcast_notifiers::demo::spawn(
                &app.notifiers,
                modelcast_notifiers::demo::DemoConfig::default()
                    .model_status_interval(app.config.model_status_interval)
                    .stale_after(app.config.stale_after),
            )
        });
        // While draining, the listener stays open: `/readyz` answers 503 and new WebSockets
        // are refused, instead of connections being refused at the TCP level.
        let mut drain = None;
        loop {
            tokio::select! {
                () = app.shutdown.cancelled(), if drain.is_none() => {
                    for task in demo.iter().flatten() {
                        task.abort();
                    }
                    drain = Some(Box::pin(drain_within_deadline(app.clone())));
                }
                drained = async { drain.as_mut().expect("draining").await }, if drain.is_some() => {
                    if !drained {
                        tracing::warn!("shutdown timeout reached; closing the remaining connections");
                    }
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => accept(&app, stream, peer, drain.is_some()),
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        if let Some(reloads) = reloads {
            reloads.abort();
        }
        // The engine last: drained sessions may still have been waiting for its answers.
        if let Some(engine) = &app.engine {
            engine.stop().await;
        }
        Ok(())
    }
}

/// The demand tracker, with its webhook when one is configured.
fn demand(config: &Config) -> std::io::Result<Arc<crate::demand::Demand>> {
    let webhook = crate::demand::Webhook::from_config(
        config.demand_webhook.as_deref(),
        config.demand_webhook_secret.as_deref(),
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    Ok(crate::demand::Demand::start(config.demand_debounce, webhook))
}

/// Warns when the operator endpoints are open on an address others can reach.
fn warn_if_open(config: &Config, security: &Security) {
    if !config.bind.ip().is_loopback() && !security.operator_guarded() {
        tracing::warn!(
            bind = %config.bind,
            "/api/stats, /metrics, /api/connections, /api/disconnect and every key of \
             /api/state are open to anyone who can reach this address: set \
             MODELCAST_METRICS_TOKEN (or require tokens with MODELCAST_JWT_SECRET / \
             MODELCAST_JWT_PUBLIC_KEY)"
        );
    }
}

/// Says where the server listens, and where its dashboard is.
fn announce(app: &App, addr: SocketAddr) {
    tracing::info!(
        %addr,
        node_id = %app.node_id,
        engine = if app.engine.is_some() { "redis" } else { "memory" },
        "modelcast listening"
    );
    let host =
        if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    let page = if addr.is_ipv6() && !addr.ip().is_unspecified() {
        format!("http://[{host}]:{}/", addr.port())
    } else {
        format!("http://{host}:{}/", addr.port())
    };
    tracing::info!(
        "open {page} to watch every topic live; WebSocket: {}ws",
        page.replacen("http", "ws", 1)
    );
}

/// The drain: publishes are refused from now on; the ones acknowledged before reach the
/// subscribers' queues first, then the sessions drain and close themselves. Whether it ended
/// within the shutdown timeout.
async fn drain_within_deadline(app: Arc<App>) -> bool {
    app.tracker.close();
    let deadline = app.config.shutdown_timeout;
    let drained = async {
        app.publishing.idle().await;
        app.drain.cancel();
        app.tracker.wait().await;
    };
    tokio::time::timeout(deadline, drained).await.is_ok()
}

/// A new TCP connection: served, or over a cap answered 503 and closed.
fn accept(app: &Arc<App>, stream: tokio::net::TcpStream, peer: SocketAddr, draining: bool) {
    let _ = stream.set_nodelay(true);
    let Some(place) = http_place(app, peer) else {
        tokio::spawn(refuse_busy(stream, BUSY_ADDRESS));
        return;
    };
    match app.http_permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let serve = serve_connection(app.clone(), stream, peer, (permit, place));
            if draining {
                // Answered outside the tracker, so they never hold up the drain.
                tokio::spawn(serve);
            } else {
                app.tracker.spawn(serve);
            }
        }
        Err(_) => {
            tokio::spawn(refuse_busy(stream, BUSY));
        }
    }
}

/// The hub's limits from `config`.
fn hub_config(config: &Config) -> HubConfig {
    HubConfig::default()
        .history_size(config.history_size)
        .history_age(config.history_age)
        .history_bytes(config.history_bytes)
        .retained_ttl(config.state_ttl)
        .state_max_keys(config.state_max_keys)
        .filter_max_subjects(config.max_filter_ids)
        .idempotency_keys(config.idempotency_keys)
        .outbox_capacity(config.queue_size)
}

/// The Redis engine, when `config` names a Redis (one, Sentinel or Cluster); started, or the
/// error naming the setting.
async fn redis_engine(config: &Config, node_id: &str) -> std::io::Result<Option<Arc<RedisEngine>>> {
    let sentinel = !config.redis_sentinels.is_empty();
    let cluster = !config.redis_cluster.is_empty();
    // With Sentinel or Cluster alone, the URL only says how to log in: the defaults.
    let url = config
        .redis_url
        .clone()
        .or_else(|| (sentinel || cluster).then(|| "redis://localhost/0".into()));
    let Some(url) = url else { return Ok(None) };
    let mut settings = RedisSettings::new(&url, &config.redis_prefix, node_id)
        .history_size(config.history_size)
        .state_max_keys(config.state_max_keys)
        .append_queue(config.redis_append_queue)
        .ack_replicas(config.redis_ack_replicas, config.redis_ack_timeout);
    if let Some(tls) = crate::tls::redis_tls(config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
    {
        settings = settings.tls(tls);
    }
    let setting = if let (true, Some(master)) = (sentinel, &config.redis_master) {
        let password = config.redis_sentinel_password.clone();
        settings = settings.sentinel(config.redis_sentinels.clone(), master, password);
        "MODELCAST_REDIS_SENTINELS"
    } else if cluster {
        settings = settings.cluster(config.redis_cluster.clone());
        "MODELCAST_REDIS_CLUSTER"
    } else {
        "MODELCAST_REDIS_URL"
    };
    let engine = RedisEngine::start(settings).await.map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, format!("{setting}: {e}"))
    })?;
    Ok(Some(engine))
}

/// `MODELCAST_NODE_ID`, or a random id for this process.
fn node_id(config: &Config) -> String {
    config.node_id.clone().unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()))
}

/// `MODELCAST_MAX_HTTP_CONNECTIONS`, lowered if the open-file limit cannot hold it next to
/// `WEBSOCKET_MAX_CONNECTIONS` (and a reserve for the listener, logs and Redis).
fn http_connection_cap(config: &Config) -> usize {
    let wanted = config.max_http_connections;
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else { return wanted };
    let (cap, ws_room) = split_open_files(soft, config.max_connections as u64, wanted as u64);
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    if ws_room < config.max_connections as u64 {
        tracing::warn!(
            open_file_limit = soft,
            max_connections = config.max_connections,
            "the open-file limit holds about {ws_room} WebSocket connections, fewer than WEBSOCKET_MAX_CONNECTIONS; raise it (ulimit -n, LimitNOFILE)"
        );
    }
    if cap < wanted {
        tracing::warn!(
            open_file_limit = soft,
            max_http_connections = cap,
            "the open-file limit leaves room for {cap} HTTP connections only (MODELCAST_MAX_HTTP_CONNECTIONS={wanted}); raise it (ulimit -n)"
        );
    }
    cap
}

/// Splits `soft` open files between HTTP connections (handshakes and publishers: at most
/// `wanted`) and WebSockets (`max_ws`), keeping a reserve for the listener, logs and Redis.
/// WebSockets get their room first, but HTTP always keeps a quarter of the limit: a
/// `WEBSOCKET_MAX_CONNECTIONS` above the open-file limit must not starve the handshakes every
/// WebSocket starts with. Returns (HTTP cap, room left for WebSockets).
fn split_open_files(soft: u64, max_ws: u64, wanted: u64) -> (u64, u64) {
    const RESERVE: u64 = 64;
    let usable = soft.saturating_sub(RESERVE);
    let floor = (usable / 4).max(16);
    let http = usable.saturating_sub(max_ws).clamp(floor.min(wanted), wanted.max(16)).min(wanted);
    (http, usable.saturating_sub(http))
}

/// A place among `peer`'s HTTP connections (`MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP`); the
/// trusted proxies, which carry every client's connections, are not counted.
fn http_place(app: &Arc<App>, peer: SocketAddr) -> Option<Option<AddressSlot>> {
    if app.security.is_trusted_proxy(peer.ip()) {
        return Some(None);
    }
    app.http_per_ip.admit(peer.ip()).map(Some)
}

/// The answer over `MODELCAST_MAX_HTTP_CONNECTIONS`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
    Content-Type: application/json\r\nConnection: close\r\nContent-Length: 97\r\n\r\n\
    {\"error\":{\"code\":\"server_busy\",\"message\":\"too many HTTP connections at once; retry in a second\"}}";

/// The answer over `MODELCAST_MAX_HTTP_CONNECTIONS_PER_IP`.
const BUSY_ADDRESS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
    Content-Type: application/json\r\nConnection: close\r\nContent-Length: 142\r\n\r\n\
    {\"error\":{\"code\":\"too_many_connections_from_address\",\"message\":\"too many HTTP connections from this address at once; retry in a second\"}}";

/// Over a cap: a fixed 503 with `Retry-After` (`answer`), then the socket is closed — after
/// what the client sent is read (for at most a second, 64 KiB): closing a socket with unread
/// bytes resets the connection, and the client would see a reset instead of the answer.
async fn refuse_busy(mut stream: tokio::net::TcpStream, answer: &'static [u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

async fn serve_connection(
    app: Arc<App>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    (permit, place): (tokio::sync::OwnedSemaphorePermit, Option<AddressSlot>),
) {
    // A connection that sends nothing holds a place for the first-byte timeout, not the whole
    // handshake timeout: silent connections cannot keep the places filled.
    let first_byte = tokio::time::timeout(app.config.first_byte_timeout, stream.readable()).await;
    if first_byte.is_err() {
        tracing::debug!(%peer, "closed: no request within MODELCAST_FIRST_BYTE_TIMEOUT");
        return;
    }
    let permit = HttpPermit::new(permit, place);
    let Some(tls) = &app.tls else {
        return serve_http(app.clone(), Stream::Plain(stream), peer, permit).await;
    };
    // The TLS handshake within the handshake timeout, like the HTTP request after it.
    let handshake = tls.acceptor().accept(stream);
    match tokio::time::timeout(app.config.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => serve_http(app.clone(), Stream::Tls(Box::new(tls)), peer, permit).await,
        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "closed: no TLS handshake within the handshake timeout"),
    }
}

/// Re-reads the TLS certificate on each `SIGHUP`: new connections get it, open ones keep
/// theirs.
async fn reload_on_hangup(app: Arc<App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return tracing::warn!("cannot watch SIGHUP: the TLS certificate is not reloadable");
        };
        while hangups.recv().await.is_some() {
            if let Some(tls) = &app.tls {
                tls.reload();
            }
        }
    }
    #[cfg(not(unix))]
    let _ = app;
}

/// HTTP/1.1 on `stream` (plain or TLS), with upgrades, until it ends or the server drains.
async fn serve_http(app: Arc<App>, stream: Stream, peer: SocketAddr, permit: HttpPermit) {
    let service = {
        let app = app.clone();
        service_fn(move |req| http::handle(app.clone(), req, peer, permit.clone()))
    };
    let draining = app.shutdown.is_cancelled();
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Also bounds a client that connects and never (or only byte by byte) sends a request.
        .header_read_timeout(app.config.handshake_timeout)
        .max_buf_size(16 * 1024)
        // Accepted while draining: one request (e.g. `/readyz`), then close.
        .keep_alive(!draining)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    if draining {
        let _ = tokio::time::timeout(app.config.shutdown_timeout, conn).await;
        return;
    }
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "http connection ended with an error");
            }
        }
        () = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(app.config.shutdown_timeout, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_open_files;

    #[test]
    fn websockets_above_the_open_file_limit_leave_handshakes_a_quarter() {
        // Room for both: HTTP gets what it wants.
        assert_eq!(split_open_files(100_000, 10_000, 4096), (4096, 95_840));
        // Tight: HTTP gets what WebSockets leave, but never under a quarter.
        assert_eq!(split_open_files(20_000, 14_000, 8192), (5936, 14_000));
        assert_eq!(split_open_files(20_000, 18_000, 8192), (4984, 14_952));
        assert_eq!(split_open_files(20_000, 100_000, 4096), (4096, 15_840));
        assert_eq!(split_open_files(8_000, 100_000, 4096), (1984, 5952));
        // A small wanted cap is respected.
        assert_eq!(split_open_files(20_000, 100_000, 20), (20, 19_916));
    }
}
