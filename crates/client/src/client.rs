//! [`Client`]: a handle to a background connection task that reconnects and recovers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use modelcast_protocol::{
    AuthRequest, ClientMessage, Lagging, PingRequest, PublishRequest, Published, RequestId,
    ServerFrame, ServerMessage, Since, SubscribeRequest, SubscriptionFilter, Topic,
    UnsubscribeRequest, close,
};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{ConnectError, PublishError, SubscribeError};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How the client connects, reconnects and detects a dead server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// First reconnect delay (default 100 ms); doubles per failed attempt.
    pub reconnect_delay: Duration,
    /// Longest reconnect delay (default 10 s). Each delay is jittered (half fixed, half random).
    pub max_reconnect_delay: Duration,
    /// A server silent for this long (no frame, not even a ping) is treated as gone. Default:
    /// twice the server's heartbeat interval plus 5 s, learned from its `welcome`.
    pub dead_after: Option<Duration>,
    /// Room per subscription for events the application has not taken yet (default 1024).
    /// When full, the connection waits: the server's own slow-consumer policy applies.
    pub buffer: usize,
    /// An auth token (a JWT), sent as `token_mode` says.
    pub token: Option<String>,
    /// How the token travels (default: the `token` URL parameter).
    pub token_mode: TokenMode,
    /// How long to wait for the server's `welcome` (default 10 s).
    pub welcome_timeout: Duration,
    /// A publish key, sent as `Authorization: Bearer <key>` when connecting: needed by
    /// [`Client::publish`] on a server with `MODELCAST_PUBLISH_KEYS`.
    pub publish_key: Option<String>,
    /// TLS for `wss://`: the public roots (webpki-roots) and the CAs of [`ConnectOptions::ca`].
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            reconnect_delay: Duration::from_millis(100),
            max_reconnect_delay: Duration::from_secs(10),
            dead_after: None,
            buffer: 1024,
            token: None,
            token_mode: TokenMode::Query,
            welcome_timeout: Duration::from_secs(10),
            publish_key: None,
            tls: None,
        }
    }
}

impl ConnectOptions {
    /// Sets [`ConnectOptions::dead_after`].
    pub fn dead_after(mut self, d: Duration) -> Self {
        self.dead_after = Some(d);
        self
    }

    /// Sets the auth token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the publish key (see [`ConnectOptions::publish_key`]).
    pub fn publish_key(mut self, key: impl Into<String>) -> Self {
        self.publish_key = Some(key.into());
        self
    }

    /// Sets how the token travels.
    pub fn token_mode(mut self, mode: TokenMode) -> Self {
        self.token_mode = mode;
        self
    }

    /// Trusts the CA certificates in `pem` (a private CA) for `wss://`, besides the public
    /// roots. An error when `pem` holds no certificate.
    pub fn ca(mut self, pem: &[u8]) -> Result<Self, ConnectError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let invalid = |reason: String| ConnectError::InvalidCa { reason };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("no certificate in it (PEM)".into()));
        }
        let mut roots = public_roots();
        for cert in certs {
            roots.add(cert).map_err(|e| invalid(format!("an unusable certificate: {e}")))?;
        }
        self.tls = Some(tls_config(roots));
        Ok(self)
    }

    /// Sets the first and the longest reconnect delay.
    pub fn reconnect_delays(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect_delay = first;
        self.max_reconnect_delay = max;
        self
    }
}

/// How the auth token reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TokenMode {
    /// As the `token` URL parameter (it may appear in proxy logs).
    #[default]
    Query,
    /// As a first frame, `{"action":"auth","token":…}`, on every (re)connection.
    FirstMessage,
}

/// Optional parts of a subscription.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Only messages about these models.
    pub model_ids: Option<Vec<String>>,
    /// At most this many updates per second per model.
    pub max_hz: Option<f64>,
}

impl SubscribeOptions {
    /// Only messages about `models`.
    pub fn models(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.model_ids = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// At most `hz` updates per second per model.
    pub fn max_hz(mut self, hz: f64) -> Self {
        self.max_hz = Some(hz);
        self
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A topic message. Messages with `late: false` arrive in `seq` order, each exactly once.
    Message {
        /// Its position in the topic.
        seq: u64,
        /// `true` for a message outside `seq` order that carries its key's current value: the
        /// state sent on (re)subscribing, or a `max_hz` update released after newer messages
        /// of other keys (the server marks both `"late":true`). Apply it as state; it may
        /// repeat a value already seen after a reconnect, never an event.
        late: bool,
        /// The message.
        message: ServerMessage,
    },
    /// Messages after `last_seq` could not be recovered (history too short, or the server
    /// restarted, or a failover gave the topic a new epoch): what the server still holds
    /// follows, then the current state, then live messages. Of what follows, a message equal
    /// (`type` and `data`) to one of the last [`REMEMBERED_MESSAGES`] delivered before the gap
    /// is not delivered again, so a replay under a new epoch shows nothing twice.
    Gap {
        /// The last message received before the gap.
        last_seq: u64,
    },
    /// The server says this connection falls behind (progress was collapsed).
    Lagging(Lagging),
    /// An operator disconnected this user or connection, or revoked its token (close code
    /// 4403): the client stops (it never reconnects with that token) and every subscription
    /// ends after this event. Connect again with a new token, if the application may.
    Revoked {
        /// What the server said.
        reason: String,
    },
}

/// Counters of a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// Connections made after the first.
    pub reconnects: u64,
    /// Duplicate messages discarded during recovery (by `seq`, or by content across an epoch
    /// change).
    pub duplicates_discarded: u64,
}

#[derive(Debug, Default)]
struct Shared {
    reconnects: AtomicU64,
    duplicates: AtomicU64,
    next_token: AtomicU64,
    /// A WebSocket is open now (false while reconnecting).
    connected: std::sync::atomic::AtomicBool,
    /// [`Client::close`] was called: a flag and a wake-up, not a queued command, so calling it
    /// any number of times keeps nothing.
    closing: std::sync::atomic::AtomicBool,
    close: tokio::sync::Notify,
}

/// Commands (subscribe, publish) waiting for the connection's task: past this many,
/// [`Client::subscribe`] and [`Client::publish`] wait (during a reconnect, say) rather than
/// queue without end.
const COMMANDS: usize = 256;

/// A subscription that was dropped: its topic and token, for the task to end it on the server.
/// Its channel needs no bound of its own: each [`Subscription`] sends at most one, on drop.
type Dropped = (Topic, u64);

#[derive(Debug)]
enum Command {
    Subscribe {
        topic: Topic,
        options: SubscribeOptions,
        token: u64,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    Publish {
        request: PublishRequest,
        reply: oneshot::Sender<Result<Published, PublishError>>,
    },
}

/// A cheap, cloneable handle to one modelcast connection. Made only by [`Client::connect`].
/// The connection ends when every clone and every subscription is dropped, or on
/// [`Client::close`].
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    drops: mpsc::UnboundedSender<Dropped>,
    shared: Arc<Shared>,
    buffer: usize,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8000/ws/my-service`), waits for the server's
    /// `welcome`, and from then on keeps the connection alive: reconnecting with backoff and
    /// renewing every subscription with `since`.
    pub async fn connect(url: &str, options: ConnectOptions) -> Result<Client, ConnectError> {
        let query_token = match options.token_mode {
            TokenMode::Query => options.token.as_deref(),
            TokenMode::FirstMessage => None,
        };
        let url = build_url(url, query_token)?;
        let ws = open(&url, &options).await?;
        let (commands, rx) = mpsc::channel(COMMANDS);
        let (drops, dropped) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let buffer = options.buffer.max(1);
        let task = Task {
            url,
            options,
            shared: shared.clone(),
            subs: HashMap::new(),
            next_id: 1,
            publishes: HashMap::new(),
        };
        tokio::spawn(task.run(ws, rx, dropped));
        Ok(Client { commands, drops, shared, buffer })
    }

    /// Subscribes to `topic`: the stream yields the current state, then live messages.
    pub async fn subscribe(&self, topic: Topic) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(topic, SubscribeOptions::default()).await
    }

    /// Subscribes to `topic` with a model filter and/or a rate.
    pub async fn subscribe_with(
        &self,
        topic: Topic,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let (events, rx) = mpsc::channel(self.buffer);
        let (reply, confirmed) = oneshot::channel();
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        self.commands
            .send(Command::Subscribe { topic, options, token, events, reply })
            .await
            .map_err(|_| SubscribeError::Closed)?;
        confirmed.await.map_err(|_| SubscribeError::Closed)??;
        Ok(Subscription {
            topic,
            token,
            events: rx,
            _keep: self.commands.clone(),
            drops: self.drops.clone(),
        })
    }

    /// Publishes `message` over this connection (the server's WebSocket publish channel, with
    /// the same checks and policy as `POST /api/publish`) and waits for the server's answer:
    /// its `status` (`sent` with its `seq`, `held`, `filtered`). On a server with publish keys
    /// the client needs [`ConnectOptions::publish_key`]. Publishes are sent in call order;
    /// many may be in flight at once.
    pub async fn publish(&self, message: &ServerMessage) -> Result<Published, PublishError> {
        self.publish_addressed(message, None).await
    }

    /// [`Client::publish`] to `audience` only: the message reaches the connections whose
    /// token's user or roles are in it (subscribers never see the audience).
    pub async fn publish_to(
        &self,
        message: &ServerMessage,
        audience: &modelcast_protocol::Audience,
    ) -> Result<Published, PublishError> {
        self.publish_addressed(message, Some(audience)).await
    }

    async fn publish_addressed(
        &self,
        message: &ServerMessage,
        audience: Option<&modelcast_protocol::Audience>,
    ) -> Result<Published, PublishError> {
        let type_name = message.type_name();
        if message.is_control() {
            return Err(PublishError::NotATopicMessage(type_name));
        }
        let data = match serde_json::to_value(message) {
            Ok(serde_json::Value::Object(mut frame)) => match frame.remove("data") {
                Some(serde_json::Value::Object(data)) => data,
                _ => serde_json::Map::new(),
            },
            _ => serde_json::Map::new(),
        };
        let audience = audience.map(|a| serde_json::to_value(a).expect("an audience serializes"));
        let request = PublishRequest {
            type_name: type_name.to_owned(),
            data,
            topic: None,
            audience,
            id: None,
        };
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Publish { request, reply })
            .await
            .map_err(|_| PublishError::Closed)?;
        answer.await.map_err(|_| PublishError::Closed)?
    }

    /// Whether a WebSocket is open now: `false` while the client reconnects (its
    /// subscriptions resume, with recovery, once it is back).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The connection's counters.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            duplicates_discarded: self.shared.duplicates.load(Ordering::Relaxed),
        }
    }

    /// Closes the connection; every subscription's stream ends.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.close.notify_one();
    }
}

/// A subscription: a `Stream` of [`Event`]s. Dropping it unsubscribes on the server.
#[derive(Debug)]
pub struct Subscription {
    topic: Topic,
    token: u64,
    events: mpsc::Receiver<Event>,
    /// Keeps the connection open while the subscription lives (the task ends when every
    /// sender is gone).
    _keep: mpsc::Sender<Command>,
    drops: mpsc::UnboundedSender<Dropped>,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> Topic {
        self.topic
    }

    /// Ends the subscription on the server (as dropping it does).
    pub fn unsubscribe(self) {}
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.drops.send((self.topic, self.token));
    }
}

fn build_url(url: &str, token: Option<&str>) -> Result<String, ConnectError> {
    let invalid =
        |reason: &str| ConnectError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| invalid("it must start with ws:// or wss://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("it has no host"));
    }
    let mut url = url.to_owned();
    if !rest.contains('/') {
        url.push_str("/ws");
    }
    if let Some(token) = token {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("token=");
        for b in token.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    url.push(char::from(b))
                }
                _ => url.push_str(&format!("%{b:02X}")),
            }
        }
    }
    Ok(url)
}

/// The public roots (webpki-roots: Mozilla's, built in, so no system store is needed).
fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

/// A TLS client config trusting `roots` (ring: no C build beyond ring's own).
#[allow(deprecated)] // ring lacks post-quantum key exchange, which is all rustls warns of
fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"));
    Arc::new(config)
}

/// The TLS config for `wss://`: the options' CA, or the public roots alone.
fn tls_of(options: &ConnectOptions) -> Arc<rustls::ClientConfig> {
    static PUBLIC: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    match &options.tls {
        Some(config) => config.clone(),
        None => PUBLIC.get_or_init(|| tls_config(public_roots())).clone(),
    }
}

/// A connection failure, with a TLS certificate problem named as one.
fn unreachable_error(url: &str, error: tungstenite::Error) -> ConnectError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(err) = source {
        let rustls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>()
        });
        if let Some(rustls::Error::InvalidCertificate(problem)) = rustls {
            return ConnectError::Certificate {
                url: url.to_owned(),
                problem: format!("{problem:?}"),
            };
        }
        source = err.source();
    }
    ConnectError::Unreachable { url: url.to_owned(), reason: error.to_string() }
}

/// Opens a WebSocket and reads the `welcome`.
async fn open(url: &str, options: &ConnectOptions) -> Result<(Ws, u64), ConnectError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let invalid = |reason: String| ConnectError::InvalidUrl { url: url.to_owned(), reason };
    let mut request = url.into_client_request().map_err(|e| invalid(e.to_string()))?;
    if let Some(key) = &options.publish_key {
        let value = format!("Bearer {key}")
            .parse()
            .map_err(|_| invalid("the publish key is not a valid header value".to_owned()))?;
        request.headers_mut().insert("authorization", value);
    }
    let connector = tokio_tungstenite::Connector::Rustls(tls_of(options));
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
    let (mut ws, _) = match connecting.await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err(ConnectError::Rejected { status: resp.status().as_u16(), body });
        }
        Err(e) => return Err(unreachable_error(url, e)),
    };
    let welcome = tokio::time::timeout(options.welcome_timeout, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m
                && let Ok(frame) = serde_json::from_str::<ServerFrame>(t.as_str())
                && let ServerMessage::Welcome(w) = frame.message
            {
                return Some((w.heartbeat_interval_seconds, w.auth_deadline_seconds.is_some()));
            }
        }
        None
    })
    .await;
    let heartbeat = match welcome {
        Ok(Some((_, true))) if options.token.is_none() => {
            // It would be closed (4401) at the deadline: say what is missing now.
            return Err(ConnectError::TokenRequired { url: url.to_owned() });
        }
        Ok(Some((heartbeat, _))) => heartbeat,
        _ => return Err(ConnectError::NoWelcome { url: url.to_owned() }),
    };
    if let (TokenMode::FirstMessage, Some(token)) = (options.token_mode, &options.token) {
        let auth = ClientMessage::Auth(AuthRequest { token: token.clone(), id: None });
        let text = serde_json::to_string(&auth).unwrap_or_default();
        ws.send(Message::Text(text.into())).await.map_err(|e| ConnectError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok((ws, heartbeat))
}

/// How many delivered messages a subscription remembers by content (`type` and `data`), so
/// that a replay under a new epoch does not hand them to the application again.
pub const REMEMBERED_MESSAGES: usize = 1024;

/// One subscription's position and state in the connection task.
#[derive(Debug)]
struct Sub {
    token: u64,
    options: SubscribeOptions,
    events: mpsc::Sender<Event>,
    epoch: Option<String>,
    /// The newest seq delivered in order (or the position a non-recovered `subscribed` gave).
    last_seq: Option<u64>,
    /// The pending subscribe's request id and reply.
    pending: Option<(i64, oneshot::Sender<Result<(), SubscribeError>>)>,
    /// Fingerprints of the last [`REMEMBERED_MESSAGES`] messages delivered.
    recent: VecDeque<u64>,
    /// `recent` as it was at the last unrecovered `subscribed`: a frame after it with one of
    /// these fingerprints repeats a message already delivered (numbered anew under a new
    /// epoch, or resent as state) and is not delivered again.
    delivered_before: HashSet<u64>,
}

impl Sub {
    fn new(token: u64, options: SubscribeOptions, events: mpsc::Sender<Event>) -> Self {
        Self {
            token,
            options,
            events,
            epoch: None,
            last_seq: None,
            pending: None,
            recent: VecDeque::new(),
            delivered_before: HashSet::new(),
        }
    }

    fn remember(&mut self, fingerprint: u64) {
        if self.recent.len() == REMEMBERED_MESSAGES {
            self.recent.pop_front();
        }
        self.recent.push_back(fingerprint);
    }
}

/// A message's identity across epochs: a hash of its `type` and `data` as JSON (messages carry
/// their `timestamp`, so equal content is the same message).
fn fingerprint(message: &ServerMessage) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    if let Ok(bytes) = serde_json::to_vec(message) {
        std::hash::Hash::hash(&bytes, &mut hasher);
    }
    std::hash::Hasher::finish(&hasher)
}

struct Task {
    url: String,
    options: ConnectOptions,
    shared: Arc<Shared>,
    subs: HashMap<Topic, Sub>,
    next_id: i64,
    /// Publishes sent on this connection and not yet answered, by request id.
    publishes: HashMap<i64, oneshot::Sender<Result<Published, PublishError>>>,
}

/// Why a session ended.
enum End {
    /// Reconnect.
    Lost,
    /// The client is closed.
    Closed,
    /// The server closed with 4403: stop, and say so.
    Revoked(String),
}

impl Task {
    async fn run(
        mut self,
        first: (Ws, u64),
        mut commands: mpsc::Receiver<Command>,
        mut dropped: mpsc::UnboundedReceiver<Dropped>,
    ) {
        let mut session = Some(first);
        let mut delay = self.options.reconnect_delay;
        loop {
            if self.shared.closing.load(Ordering::Relaxed) {
                return;
            }
            let (ws, heartbeat) = match session.take() {
                Some(s) => s,
                None => match open(&self.url, &self.options).await {
                    Ok(s) => {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        delay = self.options.reconnect_delay;
                        s
                    }
                    Err(err) => {
                        tracing::debug!(%err, "reconnect failed");
                        let jittered = delay / 2 + delay.mul_f64(rand::rng().random::<f64>() / 2.0);
                        tokio::select! {
                            () = tokio::time::sleep(jittered) => {}
                            () = self.shared.close.notified() => return,
                        }
                        delay = (delay * 2).min(self.options.max_reconnect_delay);
                        continue;
                    }
                },
            };
            self.shared.connected.store(true, Ordering::Relaxed);
            let end = self.session(ws, heartbeat, &mut commands, &mut dropped).await;
            self.shared.connected.store(false, Ordering::Relaxed);
            // Unanswered publishes: the server may or may not have taken them.
            for (_, reply) in self.publishes.drain() {
                let _ = reply.send(Err(PublishError::ConnectionLost));
            }
            match end {
                End::Closed => return,
                End::Lost => tracing::debug!("connection lost; reconnecting"),
                End::Revoked(reason) => {
                    tracing::warn!(%reason, "revoked by the server; not reconnecting");
                    self.shared.closing.store(true, Ordering::Relaxed);
                    for sub in self.subs.values() {
                        let _ = sub.events.try_send(Event::Revoked { reason: reason.clone() });
                    }
                    return;
                }
            }
        }
    }

    fn request_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn subscribe_frame(&mut self, topic: Topic) -> Option<String> {
        let id = self.request_id();
        let sub = self.subs.get_mut(&topic)?;
        if let Some((pending, _)) = &mut sub.pending {
            *pending = id;
        }
        let since = match (&sub.epoch, sub.last_seq) {
            (Some(epoch), Some(seq)) => Some(Since { epoch: epoch.clone(), seq }),
            _ => None,
        };
        let mut request = SubscribeRequest::new(topic);
        request.id = Some(RequestId::Number(id));
        request.since = since;
        request.filter =
            sub.options.model_ids.clone().map(|ids| SubscriptionFilter { model_ids: Some(ids) });
        request.max_hz = sub.options.max_hz;
        serde_json::to_string(&ClientMessage::Subscribe(request)).ok()
    }

    async fn session(
        &mut self,
        mut ws: Ws,
        heartbeat: u64,
        commands: &mut mpsc::Receiver<Command>,
        dropped: &mut mpsc::UnboundedReceiver<Dropped>,
    ) -> End {
        let dead_after = self.options.dead_after.unwrap_or(Duration::from_secs(heartbeat * 2 + 5));
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval((dead_after / 3).max(Duration::from_millis(10)));
        ping.tick().await;
        // Renew every subscription, from where it left off.
        let topics: Vec<Topic> = self.subs.keys().copied().collect();
        for topic in topics {
            if let Some(frame) = self.subscribe_frame(topic)
                && ws.send(Message::Text(frame.into())).await.is_err()
            {
                return End::Lost;
            }
        }
        loop {
            tokio::select! {
                () = self.shared.close.notified() => {
                    let _ = ws.close(None).await;
                    return End::Closed;
                }
                Some((topic, token)) = dropped.recv() => {
                    if self.subs.get(&topic).is_some_and(|s| s.token == token) {
                        self.subs.remove(&topic);
                        let frame = ClientMessage::Unsubscribe(UnsubscribeRequest { topic, id: None });
                        if let Ok(text) = serde_json::to_string(&frame)
                            && ws.send(Message::Text(text.into())).await.is_err()
                        {
                            return End::Lost;
                        }
                    }
                }
                command = commands.recv() => match command {
                    None => {
                        let _ = ws.close(None).await;
                        return End::Closed;
                    }
                    Some(Command::Subscribe { topic, options, token, events, reply }) => {
                        if self.subs.contains_key(&topic) {
                            let _ = reply.send(Err(SubscribeError::AlreadySubscribed(topic)));
                            continue;
                        }
                        let mut sub = Sub::new(token, options, events);
                        sub.pending = Some((0, reply));
                        self.subs.insert(topic, sub);
                        if let Some(frame) = self.subscribe_frame(topic)
                            && ws.send(Message::Text(frame.into())).await.is_err()
                        {
                            return End::Lost;
                        }
                    }
                    Some(Command::Publish { mut request, reply }) => {
                        let id = self.request_id();
                        request.id = Some(RequestId::Number(id));
                        let Ok(text) = serde_json::to_string(&ClientMessage::Publish(request)) else {
                            continue;
                        };
                        self.publishes.insert(id, reply);
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            return End::Lost;
                        }
                    }
                },
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        last_heard = Instant::now();
                        self.on_frame(text.as_str(), &mut ws).await;
                    }
                    Some(Ok(Message::Close(Some(frame)))) if u16::from(frame.code) == close::REVOKED => {
                        return End::Revoked(frame.reason.to_string());
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Lost,
                    Some(Ok(_)) => last_heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > dead_after {
                        tracing::debug!(?dead_after, "server silent; reconnecting");
                        return End::Lost;
                    }
                    let ping = serde_json::to_string(&ClientMessage::Ping(PingRequest::default())).unwrap_or_default();
                    if ws.send(Message::Text(ping.into())).await.is_err() {
                        return End::Lost;
                    }
                }
            }
        }
    }

    async fn on_frame(&mut self, text: &str, ws: &mut Ws) {
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            tracing::debug!("ignoring a frame this client does not understand");
            return;
        };
        match frame.message {
            ServerMessage::Subscribed(s) => {
                let Some(sub) = self.subs.get_mut(&s.topic) else { return };
                if !s.recovered {
                    if let (Some(_), Some(last)) = (&sub.epoch, sub.last_seq) {
                        let _ = sub.events.send(Event::Gap { last_seq: last }).await;
                        // What follows may repeat what was delivered, numbered anew.
                        sub.delivered_before = sub.recent.iter().copied().collect();
                    }
                    sub.last_seq = Some(s.seq);
                }
                sub.epoch = Some(s.epoch);
                if let Some((_, reply)) = sub.pending.take() {
                    let _ = reply.send(Ok(()));
                }
            }
            ServerMessage::Published(p) => {
                if let Some(RequestId::Number(id)) = p.request_id
                    && let Some(reply) = self.publishes.remove(&id)
                {
                    let _ = reply.send(Ok(p));
                }
            }
            ServerMessage::Error(e) => {
                let Some(RequestId::Number(id)) = e.request_id else {
                    tracing::debug!(code = %e.code, message = %e.message, "server error");
                    return;
                };
                if let Some(reply) = self.publishes.remove(&id) {
                    let _ = reply
                        .send(Err(PublishError::Rejected { code: e.code, message: e.message }));
                    return;
                }
                let refused = self
                    .subs
                    .iter()
                    .find(|(_, s)| s.pending.as_ref().is_some_and(|p| p.0 == id))
                    .map(|(t, _)| *t);
                if let Some(topic) = refused
                    && let Some(mut sub) = self.subs.remove(&topic)
                    && let Some((_, reply)) = sub.pending.take()
                {
                    let _ = reply
                        .send(Err(SubscribeError::Rejected { code: e.code, message: e.message }));
                }
            }
            ServerMessage::Lagging(l) => {
                for sub in self.subs.values() {
                    let _ = sub.events.send(Event::Lagging(l.clone())).await;
                }
            }
            message => {
                let (Some(topic), Some(seq)) = (frame.topic, frame.seq) else { return };
                let Some(sub) = self.subs.get_mut(&topic) else { return };
                // The ordering contract: a late frame is state below our position; any other
                // frame at or below it is a duplicate.
                let late = frame.late;
                if !late {
                    if sub.last_seq.is_some_and(|last| seq <= last) {
                        self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    sub.last_seq = Some(seq);
                }
                // Across an epoch change: a replay of a message already delivered moves the
                // position but is not delivered again.
                let print = fingerprint(&message);
                if sub.delivered_before.contains(&print) {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                sub.remember(print);
                if sub.events.send(Event::Message { seq, late, message }).await.is_err() {
                    // The application dropped the stream before its Drop reached us.
                    self.subs.remove(&topic);
                    let frame = ClientMessage::Unsubscribe(UnsubscribeRequest { topic, id: None });
                    if let Ok(text) = serde_json::to_string(&frame) {
                        let _ = ws.send(Message::Text(text.into())).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_path_and_an_encoded_token() {
        assert_eq!(build_url("ws://h:1", None).unwrap(), "ws://h:1/ws");
        assert_eq!(
            build_url("ws://h:1/ws/svc", Some("a b&c")).unwrap(),
            "ws://h:1/ws/svc?token=a%20b%26c"
        );
        assert!(matches!(build_url("http://h", None), Err(ConnectError::InvalidUrl { .. })));
        assert!(matches!(build_url("ws://", None), Err(ConnectError::InvalidUrl { .. })));
    }
}
