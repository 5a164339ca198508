//! [`Target`]: where the engine's Redis is — one address, the primary that Redis Sentinel
//! names now (asked again after a failover), or a Redis Cluster (its seed nodes). A leaf: the
//! engine builds it from its settings, the shared part asks it for connections.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};

use crate::conn::Conn;

/// Where Redis is.
pub(crate) enum Target {
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
    },
    /// A Redis Cluster found through `seeds` (`host:port`); `client` for commands (routed by
    /// slot); the follower builds its own (RESP3, sharded subscriptions) with `login`.
    Cluster { client: ClusterClient, seeds: Vec<String>, login: Login },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(client) => {
                write!(f, "Single({:?})", client.get_connection_info().addr())
            }
            Target::Sentinel { master, sentinels, .. } => {
                write!(f, "Sentinel({master} via {})", sentinels.join(","))
            }
            Target::Cluster { seeds, .. } => write!(f, "Cluster({})", seeds.join(",")),
        }
    }
}

impl Target {
    /// The target of `url` (one Redis), or, with `sentinels`, of the primary they name for
    /// `master`, connected to as `url` says (database, password, TLS); or, with `cluster`
    /// (seed nodes), a Redis Cluster (the URL's user and password; database 0).
    pub(crate) fn new(
        url: &str,
        sentinels: &[String],
        master: Option<&str>,
        sentinel_password: Option<&str>,
        cluster: &[String],
    ) -> redis::RedisResult<Self> {
        let data = redis::Client::open(url)?;
        if !cluster.is_empty() {
            return cluster_target(&data, cluster);
        }
        if sentinels.is_empty() {
            return Ok(Target::Single(data));
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
        Ok(Target::Sentinel {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: master.to_owned(),
            urls,
            node,
            sentinels: sentinels.to_vec(),
        })
    }

    /// Whether the primary can move (Sentinel): then a connection that fails or a primary
    /// that turned read-only means "ask again".
    pub(crate) fn follows_failovers(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }

    /// A client for the primary now: the fixed one, or the one the sentinels name (checked by
    /// them to call itself a primary). `None` for a cluster (it has a primary per shard).
    pub(crate) async fn primary(&self) -> redis::RedisResult<Option<redis::Client>> {
        match self {
            Target::Single(client) => Ok(Some(client.clone())),
            Target::Sentinel { sentinel, master, node, .. } => {
                sentinel.lock().await.async_master_for(master, Some(node)).await.map(Some)
            }
            Target::Cluster { .. } => Ok(None),
        }
    }

    /// A command connection and what it is connected to (an address, or the seeds).
    pub(crate) async fn connect(&self) -> redis::RedisResult<(Conn, String)> {
        if let Target::Cluster { client, seeds, .. } = self {
            return Ok((Conn::Cluster(client.get_async_connection().await?), seeds.join(",")));
        }
        let client = self.primary().await?.ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no primary to connect to"))
        })?;
        let conn = client.get_connection_manager_with_config(manager_config()).await?;
        Ok((Conn::Single(conn), address(&client)))
    }

    /// For a Redis Cluster, the follower's client: RESP3, its pushes (the sharded messages)
    /// sent to `push`.
    pub(crate) fn cluster_pubsub(
        &self,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> redis::RedisResult<ClusterClient> {
        let Target::Cluster { seeds, login, .. } = self else {
            return Err((redis::ErrorKind::Client, "not a Redis Cluster").into());
        };
        cluster_builder(seeds, login)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()
    }

    /// Under Sentinel, a pub/sub connection to the first sentinel that answers, subscribed to
    /// `+switch-master` (a failover done), and the master's name; `None` otherwise or when
    /// no sentinel answers now (a failed check then still says "ask again").
    pub(crate) async fn switch_watch(&self) -> Option<(redis::aio::PubSub, String)> {
        let Target::Sentinel { urls, master, .. } = self else { return None };
        for url in urls {
            let watch = async {
                let mut pubsub = redis::Client::open(url.as_str())?.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                redis::RedisResult::Ok(pubsub)
            };
            if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(1), watch).await {
                return Some((pubsub, master.clone()));
            }
        }
        None
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }
}

/// A cluster's user and password (from `MODELCAST_REDIS_URL`).
#[derive(Clone, Default)]
pub(crate) struct Login {
    username: Option<String>,
    password: Option<String>,
}

/// A client builder for the cluster through `seeds`, failing fast like [`manager_config`].
pub(crate) fn cluster_builder(seeds: &[String], login: &Login) -> ClusterClientBuilder {
    let nodes: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(2));
    if let Some(user) = &login.username {
        builder = builder.username(user);
    }
    if let Some(password) = &login.password {
        builder = builder.password(password);
    }
    builder
}

/// A Redis Cluster through `seeds`, with the user and password of `data`.
fn cluster_target(data: &redis::Client, seeds: &[String]) -> redis::RedisResult<Target> {
    let settings = data.get_connection_info().redis_settings();
    let login = Login {
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
    };
    let client = cluster_builder(seeds, &login).build()?;
    Ok(Target::Cluster { client, seeds: seeds.to_vec(), login })
}

/// How the command connection to one Redis behaves: fail fast (a second to connect, two to
/// answer, one retry), so a publish meets an unreachable Redis with a 503, not a wait.
pub(crate) fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// The address of `client`, for messages and `/api/stats`.
pub(crate) fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}
