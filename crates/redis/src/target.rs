//! [`Target`]: where the engine's Redis is — one address, the primary that Redis Sentinel
//! names now (asked again after a failover), or a Redis Cluster (its seed nodes) — and how to
//! reach it: plain TCP, or TLS (`rediss://`) with a private CA and a client certificate when
//! given ([`RedisTls`]). A leaf: the engine builds it from its settings, the shared part asks
//! it for connections.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::conn::Conn;

/// TLS to Redis beyond what a `rediss://` URL says: a private CA to trust (instead of the
/// system's roots) and a client certificate with its key (mutual TLS), each PEM. Checked by
/// whoever reads them (the server names the setting and the file); used for every connection
/// the engine makes — the data nodes, the sentinels, every shard.
#[derive(Clone, Default)]
pub struct RedisTls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// Trust `ca` (PEM, one or more certificates) instead of the system's roots.
    pub fn ca(mut self, ca: Vec<u8>) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Present `cert` (PEM chain) with its `key` (PEM) to Redis.
    pub fn client_certificate(mut self, cert: Vec<u8>, key: Vec<u8>) -> Self {
        self.client = Some((cert, key));
        self
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

/// How every connection to Redis is made: TLS or not (`rediss://` in `MODELCAST_REDIS_URL`),
/// with which certificates, and the data connections' database, user and password.
#[derive(Clone)]
pub(crate) struct Dial {
    /// The data URL's connection info (address, database, user, password, protocol).
    data: ConnectionInfo,
    tls: bool,
    certificates: Option<TlsCertificates>,
}

impl Dial {
    /// A client for the Redis at `host:port` with the data connections' settings.
    fn data_at(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        let addr = self.addr(host, port);
        self.client(self.data.clone().set_addr(addr))
    }

    /// A client for `info`, with the certificates when it is TLS.
    fn client(&self, info: ConnectionInfo) -> redis::RedisResult<redis::Client> {
        match (&self.certificates, info.addr()) {
            (Some(certificates), ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certificates.clone())
            }
            _ => redis::Client::open(info),
        }
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        match self.tls {
            true => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
            false => ConnectionAddr::Tcp(host.to_owned(), port),
        }
    }
}

/// Where Redis is. One per engine: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Place {
    /// One Redis at a fixed address.
    Single(redis::Client),
    /// The primary the sentinels name for `master`; data connections as `dial` says.
    Sentinel(Box<Sentinels>),
    /// A Redis Cluster found through `seeds` (`host:port`); `client` for commands (routed by
    /// slot); the follower builds its own (RESP3, sharded subscriptions) as `dial` says.
    Cluster { client: ClusterClient, seeds: Vec<String>, dial: Dial },
}

/// The sentinels, and how data connections are made to the primary they name.
pub(crate) struct Sentinels {
    master: String,
    dial: Dial,
    /// The sentinels (`host:port`), and a client for each (TLS as the data connections,
    /// with the sentinels' password).
    sentinels: Vec<String>,
    clients: Vec<redis::Client>,
    /// The sentinel asked each check which primary it names (by index), and the
    /// connection to it; the next one is asked when it does not answer.
    asked: tokio::sync::Mutex<(usize, Option<redis::aio::MultiplexedConnection>)>,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Single(client) => {
                write!(f, "Single({:?})", client.get_connection_info().addr())
            }
            Place::Sentinel(s) => write!(f, "Sentinel({} via {})", s.master, s.sentinels.join(",")),
            Place::Cluster { seeds, .. } => write!(f, "Cluster({})", seeds.join(",")),
        }
    }
}

/// Where Redis is, and how long its commands may take to answer.
#[derive(Debug)]
pub(crate) struct Target {
    place: Place,
    /// [`RESPONSE_TIMEOUT`], plus what a command may wait on purpose (`WAIT` for replicas).
    answer: Duration,
}

/// How long Redis may take to answer a command before it counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is (see [`Target::new`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Where<'a> {
    pub(crate) url: &'a str,
    pub(crate) sentinels: &'a [String],
    pub(crate) master: Option<&'a str>,
    pub(crate) sentinel_password: Option<&'a str>,
    pub(crate) cluster: &'a [String],
    pub(crate) tls: Option<&'a RedisTls>,
}

impl Target {
    /// The target of `url` (one Redis), or, with `sentinels`, of the primary they name for
    /// `master`, connected to as `url` says (database, password, TLS); or, with `cluster`
    /// (seed nodes), a Redis Cluster (the URL's user, password and TLS; database 0). With
    /// `rediss://`, every connection is TLS — to the data nodes, the sentinels and every
    /// shard — with `tls`'s CA and client certificate when given. A command may wait `waits`
    /// on purpose beyond the usual answer time.
    pub(crate) fn new(at: Where<'_>, waits: Duration) -> redis::RedisResult<Self> {
        let answer = RESPONSE_TIMEOUT + waits;
        let data = at.url.into_connection_info()?;
        let tls = matches!(data.addr(), ConnectionAddr::TcpTls { .. });
        if at.tls.is_some() && !tls {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a CA or client certificate for Redis is set, but MODELCAST_REDIS_URL is not \
                 rediss:// (TLS): refusing to connect in plain text",
            )));
        }
        let certificates = at.tls.map(RedisTls::certificates);
        let dial = Dial { data, tls, certificates };
        let place = if !at.cluster.is_empty() {
            cluster_target(dial, at.cluster, answer)?
        } else if at.sentinels.is_empty() {
            Place::Single(dial.client(dial.data.clone())?)
        } else {
            sentinel_target(dial, at)?
        };
        Ok(Target { place, answer })
    }

    /// How the command connection to one Redis behaves (see [`manager_config`]).
    pub(crate) fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        manager_config(self.answer)
    }
}

/// Under Sentinel: a client per sentinel (TLS as the data connections).
fn sentinel_target(dial: Dial, at: Where<'_>) -> redis::RedisResult<Place> {
    let master = at.master.ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "Redis Sentinel needs the master's name (MODELCAST_REDIS_MASTER)",
        ))
    })?;
    let mut clients = Vec::with_capacity(at.sentinels.len());
    for sentinel in at.sentinels {
        let (host, port) = host_port(sentinel)?;
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(password) = at.sentinel_password {
            settings = settings.set_password(password);
        }
        let info = dial.data.clone().set_addr(dial.addr(host, port)).set_redis_settings(settings);
        clients.push(dial.client(info)?);
    }
    Ok(Place::Sentinel(Box::new(Sentinels {
        master: master.to_owned(),
        dial,
        sentinels: at.sentinels.to_vec(),
        clients,
        asked: tokio::sync::Mutex::new((0, None)),
    })))
}

/// `host:port` split (an IPv6 host in brackets), or an error naming it.
fn host_port(address: &str) -> redis::RedisResult<(&str, u16)> {
    let split = address.rsplit_once(':').and_then(|(host, port)| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some((host, port.parse().ok()?))
    });
    split.ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "expected host:port",
            address.to_owned(),
        ))
    })
}

impl Target {
    /// Whether Redis is one server at a fixed address (no Sentinel, no Cluster): it restarts,
    /// it never fails over.
    pub(crate) fn is_fixed(&self) -> bool {
        matches!(self.place, Place::Single(_))
    }

    /// Whether the primary can move (Sentinel): then a connection that fails or a primary
    /// that turned read-only means "ask again".
    pub(crate) fn follows_failovers(&self) -> bool {
        matches!(self.place, Place::Sentinel(_))
    }

    /// A client for the primary now: the fixed one, or the one the sentinels name (checked to
    /// call itself a primary: `ROLE`). `None` for a cluster (it has a primary per shard).
    pub(crate) async fn primary(&self) -> redis::RedisResult<Option<redis::Client>> {
        match &self.place {
            Place::Single(client) => Ok(Some(client.clone())),
            Place::Sentinel(sentinels) => {
                let Sentinels { dial, master, .. } = &**sentinels;
                let named = self.named_primary().await.ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "no sentinel answers with a primary for",
                        master.clone(),
                    ))
                })?;
                let (host, port) = host_port(&named)?;
                let client = dial.data_at(host, port)?;
                if is_primary(&client).await? {
                    Ok(Some(client))
                } else {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the primary the sentinels name is not a primary (yet)",
                        named,
                    )))
                }
            }
            Place::Cluster { .. } => Ok(None),
        }
    }

    /// A command connection and what it is connected to (an address, or the seeds).
    pub(crate) async fn connect(&self) -> redis::RedisResult<(Conn, String)> {
        if let Place::Cluster { client, seeds, .. } = &self.place {
            return Ok((Conn::Cluster(client.get_async_connection().await?), seeds.join(",")));
        }
        let client = self.primary().await?.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no primary to connect to"))
        })?;
        let conn = client.get_connection_manager_with_config(self.manager_config()).await?;
        Ok((Conn::Single(conn), address(&client)))
    }

    /// For a Redis Cluster, the follower's client: RESP3, its pushes (the sharded messages)
    /// sent to `push`.
    pub(crate) fn cluster_pubsub(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> redis::RedisResult<ClusterClient> {
        let Place::Cluster { seeds, dial, .. } = &self.place else {
            return Err((redis::ErrorKind::Client, "not a Redis Cluster").into());
        };
        cluster_builder(seeds, dial, self.answer)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()
    }

    /// Under Sentinel, a pub/sub connection subscribed to `+switch-master` (a failover done)
    /// on the first sentinel that answers, starting after the one watched before (`after`, an
    /// index), with that sentinel's index and the master's name; `None` otherwise or when no
    /// sentinel answers now (the checks then still ask each second).
    pub(crate) async fn switch_watch(&self, after: Option<usize>) -> Option<Watch> {
        let Place::Sentinel(place) = &self.place else { return None };
        let Sentinels { clients, master, sentinels, .. } = &**place;
        let first = after.map_or(0, |i| i + 1);
        for index in (first..first + clients.len()).map(|i| i % clients.len()) {
            let watch = async {
                let mut pubsub = clients[index].get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                redis::RedisResult::Ok(pubsub)
            };
            if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(1), watch).await {
                let sentinel = sentinels[index].clone();
                return Some(Watch { pubsub, master: master.clone(), index, sentinel });
            }
        }
        None
    }

    /// Under Sentinel, the primary's address (`host:port`) a sentinel names now: the one
    /// asked last if it answers, else the next (its connection kept for the next check);
    /// `None` when none answers within a moment, or not under Sentinel.
    pub(crate) async fn named_primary(&self) -> Option<String> {
        let Place::Sentinel(place) = &self.place else { return None };
        let Sentinels { clients, master, asked, .. } = &**place;
        let mut asked = asked.lock().await;
        for _ in 0..clients.len() {
            let index = asked.0 % clients.len();
            let ask = async {
                if asked.1.is_none() {
                    asked.1 = Some(clients[index].get_multiplexed_async_connection().await?);
                }
                let conn = asked.1.as_mut().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no sentinel connection"))
                })?;
                let mut cmd = redis::cmd("SENTINEL");
                cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(master);
                cmd.query_async::<Option<(String, u16)>>(conn).await
            };
            match tokio::time::timeout(Duration::from_millis(500), ask).await {
                Ok(Ok(Some((host, port)))) => return Some(format!("{host}:{port}")),
                _ => {
                    asked.0 = (index + 1) % clients.len();
                    asked.1 = None;
                }
            }
        }
        None
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.place, Place::Cluster { .. })
    }
}

/// A watch of the sentinels' `+switch-master` announcements.
pub(crate) struct Watch {
    pub(crate) pubsub: redis::aio::PubSub,
    /// The master's name (announcements of others are skipped).
    pub(crate) master: String,
    /// Which sentinel (index into the list) is watched, and its address.
    pub(crate) index: usize,
    pub(crate) sentinel: String,
}

/// A client builder for the cluster through `seeds`, failing fast like [`manager_config`],
/// with the user, password and TLS of `dial`.
fn cluster_builder(seeds: &[String], dial: &Dial, answer: Duration) -> ClusterClientBuilder {
    let scheme = if dial.tls { "rediss" } else { "redis" };
    let nodes: Vec<String> = seeds.iter().map(|s| format!("{scheme}://{s}")).collect();
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(answer);
    let settings = dial.data.redis_settings();
    if let Some(user) = settings.username() {
        builder = builder.username(user);
    }
    if let Some(password) = settings.password() {
        builder = builder.password(password);
    }
    if let Some(certificates) = &dial.certificates {
        builder = builder.certs(certificates.clone());
    }
    builder
}

/// A Redis Cluster through `seeds`.
fn cluster_target(dial: Dial, seeds: &[String], answer: Duration) -> redis::RedisResult<Place> {
    let client = cluster_builder(seeds, &dial, answer).build()?;
    Ok(Place::Cluster { client, seeds: seeds.to_vec(), dial })
}

/// Whether the Redis of `client` says it is a primary (`ROLE`), within a second.
async fn is_primary(client: &redis::Client) -> redis::RedisResult<bool> {
    let ask = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await?;
        let redis::Value::Array(parts) = role else { return Ok(false) };
        let first = parts.first().map(redis::from_redis_value_ref::<String>).transpose()?;
        Ok(first.as_deref() == Some("master"))
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "ROLE timed out")))?
}

/// How the command connection to one Redis behaves: fail fast (a second to connect, `answer`
/// to answer, one retry), so a publish meets an unreachable Redis with a 503, not a wait.
fn manager_config(answer: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(answer))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// The address of `client`, for messages and `/api/stats`.
pub(crate) fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}
