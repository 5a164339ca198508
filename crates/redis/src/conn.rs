//! [`Conn`]: the command connection — to one Redis (a `ConnectionManager`, which reconnects)
//! or to a Redis Cluster (a `ClusterConnection`, which sends each command to the primary of
//! its key's slot and follows `MOVED`, slot migrations and failovers). Every topic's keys
//! share the topic's hash tag, so every script and command of a topic goes to one primary.
//! A leaf.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// The command connection (cheap to clone: clones share the connection).
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis (or the primary Sentinel names).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs `cmd` (a command without keys, such as `INFO` or `SCRIPT LOAD`) on the primary
    /// that holds `key` (one of a topic's keys: on the primary of the topic).
    pub(crate) async fn on_primary_of(&mut self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                conn.route_command(cmd.clone(), routing).await
            }
        }
    }
}

impl Conn {
    /// Runs `cmd` on the cluster node at `host:port` (one Redis: on it, whatever the address).
    pub(crate) async fn on_address(
        &mut self,
        host: &str,
        port: u16,
        cmd: &Cmd,
    ) -> RedisResult<Value> {
        match self {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let node = SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port };
                conn.route_command(cmd.clone(), RoutingInfo::SingleNode(node)).await
            }
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
