//! [`Target`]: where the engine's Redis is — one address, or the primary that Redis Sentinel
//! names now (asked again after a failover). A leaf: the engine builds it from its settings,
//! the shared part asks it for the primary.

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};

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
    },
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
        }
    }
}

impl Target {
    /// The target of `url` (one Redis), or, with `sentinels`, of the primary they name for
    /// `master`, connected to as `url` says (database, password, TLS).
    pub(crate) fn new(
        url: &str,
        sentinels: &[String],
        master: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> redis::RedisResult<Self> {
        let data = redis::Client::open(url)?;
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
        let sentinel = Sentinel::build(urls)?;
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(data.get_connection_info().redis_settings().clone());
        Ok(Target::Sentinel {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: master.to_owned(),
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
    /// them to call itself a primary).
    pub(crate) async fn primary(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Target::Single(client) => Ok(client.clone()),
            Target::Sentinel { sentinel, master, node, .. } => {
                sentinel.lock().await.async_master_for(master, Some(node)).await
            }
        }
    }
}

/// The address of `client`, for messages and `/api/stats`.
pub(crate) fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}
