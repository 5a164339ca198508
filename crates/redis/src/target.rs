//! [`Target`]: where the engine's Redis is — one address, the primary that Redis Sentinel
//! names now (asked again after a failover), or a Redis Cluster (its seed nodes). A leaf: the
//! engine builds it from its settings, the shared part asks it for connections.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};

use crate::conn::Conn;

/// Where Redis is.
pub(crate) enum Place {
    /// One Redis at a fixed address.
    Single(redis::Client),
    /// The primary the sentinels name for `master`; data connections use `node` (database,
    /// password, TLS of `MODELCAST_REDIS_URL`).
    Sentinel {
        sentinel: tokio::sync::Mutex<Sentinel>,
        master: String,
        node: SentinelNodeConnectionInfo,
        /// The sentinels, for messages.
        sentinels: Vec<String>,
        /// The sentinels' URLs (with their password), for the `+switch-master` watch.
        urls: Vec<String>,
        /// The sentinel asked each check which primary it names (by index into `urls`), and
        /// the connection to it; the next one is asked when it does not answer.
        asked: tokio::sync::Mutex<(usize, Option<redis::aio::MultiplexedConnection>)>,
    },
    /// A Redis Cluster found through `seeds` (`host:port`); `client` for commands (routed by
    /// slot); the follower builds its own (RESP3, sharded subscriptions) with `login`.
    Cluster { client: ClusterClient, seeds: Vec<String>, login: Login },
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Single(client) => {
                write!(f, "Single({:?})", client.get_connection_info().addr())
            }
            Place::Sentinel { master, sentinels, .. } => {
                write!(f, "Sentinel({master} via {})", sentinels.join(","))
            }
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

impl Target {
    /// The target of `url` (one Redis), or, with `sentinels`, of the primary they name for
    /// `master`, connected to as `url` says (database, password, TLS); or, with `cluster`
    /// (seed nodes), a Redis Cluster (the URL's user and password; database 0). A command
    /// may wait `waits` on purpose beyond the usual answer time.
    pub(crate) fn new(
        url: &str,
        sentinels: &[String],
        master: Option<&str>,
        sentinel_password: Option<&str>,
        cluster: &[String],
        waits: Duration,
    ) -> redis::RedisResult<Self> {
        let answer = RESPONSE_TIMEOUT + waits;
        let place = place(url, sentinels, master, sentinel_password, cluster, answer)?;
        Ok(Target { place, answer })
    }

    /// How the command connection to one Redis behaves (see [`manager_config`]).
    pub(crate) fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        manager_config(self.answer)
    }
}

/// The place of [`Target::new`].
fn place(
    url: &str,
    sentinels: &[String],
    master: Option<&str>,
    sentinel_password: Option<&str>,
    cluster: &[String],
    answer: Duration,
) -> redis::RedisResult<Place> {
    let data = redis::Client::open(url)?;
    if !cluster.is_empty() {
        return cluster_target(&data, cluster, answer);
    }
    if sentinels.is_empty() {
        return Ok(Place::Single(data));
    }
    let master = master.ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "Redis Sentinel needs the master's name (MODELCAST_REDIS_MASTER)",
        ))
    })?;
    let urls: Vec<String> = sentinels
        .iter()
        .map(|s| match sentinel_password {
            Some(password) => format!("redis://:{password}@{s}"),
            None => format!("redis://{s}"),
        })
        .collect();
    let sentinel = Sentinel::build(urls.clone())?;
    let node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(data.get_connection_info().redis_settings().clone());
    Ok(Place::Sentinel {
        sentinel: tokio::sync::Mutex::new(sentinel),
        master: master.to_owned(),
        urls,
        node,
        sentinels: sentinels.to_vec(),
        asked: tokio::sync::Mutex::new((0, None)),
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
        matches!(self.place, Place::Sentinel { .. })
    }

    /// A client for the primary now: the fixed one, or the one the sentinels name (checked by
    /// them to call itself a primary). `None` for a cluster (it has a primary per shard).
    pub(crate) async fn primary(&self) -> redis::RedisResult<Option<redis::Client>> {
        match &self.place {
            Place::Single(client) => Ok(Some(client.clone())),
            Place::Sentinel { sentinel, master, node, .. } => {
                sentinel.lock().await.async_master_for(master, Some(node)).await.map(Some)
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
        let Place::Cluster { seeds, login, .. } = &self.place else {
            return Err((redis::ErrorKind::Client, "not a Redis Cluster").into());
        };
        cluster_builder(seeds, login, self.answer)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()
    }

    /// Under Sentinel, a pub/sub connection subscribed to `+switch-master` (a failover done)
    /// on the first sentinel that answers, starting after the one watched before (`after`, an
    /// index), with that sentinel's index and the master's name; `None` otherwise or when no
    /// sentinel answers now (the checks then still ask each second).
    pub(crate) async fn switch_watch(&self, after: Option<usize>) -> Option<Watch> {
        let Place::Sentinel { urls, master, sentinels, .. } = &self.place else { return None };
        let first = after.map_or(0, |i| i + 1);
        for index in (first..first + urls.len()).map(|i| i % urls.len()) {
            let watch = async {
                let client = redis::Client::open(urls[index].as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
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
        let Place::Sentinel { urls, master, asked, .. } = &self.place else { return None };
        let mut asked = asked.lock().await;
        for _ in 0..urls.len() {
            let index = asked.0 % urls.len();
            let ask = async {
                if asked.1.is_none() {
                    let client = redis::Client::open(urls[index].as_str())?;
                    asked.1 = Some(client.get_multiplexed_async_connection().await?);
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
                    asked.0 = (index + 1) % urls.len();
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

/// A cluster's user and password (from `MODELCAST_REDIS_URL`).
#[derive(Clone, Default)]
pub(crate) struct Login {
    username: Option<String>,
    password: Option<String>,
}

/// A client builder for the cluster through `seeds`, failing fast like [`manager_config`].
pub(crate) fn cluster_builder(
    seeds: &[String],
    login: &Login,
    answer: Duration,
) -> ClusterClientBuilder {
    let nodes: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(answer);
    if let Some(user) = &login.username {
        builder = builder.username(user);
    }
    if let Some(password) = &login.password {
        builder = builder.password(password);
    }
    builder
}

/// A Redis Cluster through `seeds`, with the user and password of `data`.
fn cluster_target(
    data: &redis::Client,
    seeds: &[String],
    answer: Duration,
) -> redis::RedisResult<Place> {
    let settings = data.get_connection_info().redis_settings();
    let login = Login {
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
    };
    let client = cluster_builder(seeds, &login, answer).build()?;
    Ok(Place::Cluster { client, seeds: seeds.to_vec(), login })
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
