//! [`Kv`]: what else a cluster keeps in Redis besides topics — push registrations (a hash per
//! user and the set of users), push claims (one node pushes a message), presence (which
//! users have a connection open on which node), each node's share of the roster (its open
//! connections, under a lease), the command stream every node reads (disconnect, revoke) and
//! the revocations. Every command names one key, so each goes to
//! that key's shard on a cluster. A leaf over the engine's command connection.

use std::sync::Arc;

use crate::shared::Shared;

/// A handle on the engine's connection for these keys (cheap to clone).
#[derive(Debug, Clone)]
pub struct Kv {
    shared: Arc<Shared>,
}

/// Adds a device unless the user has `max` others: `{prefix}:push:dev:{<user>}`.
const PUT_DEVICE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Takes a free lease or renews this node's: `KEYS[1]` the lease, `ARGV` the node and ms.
const LEAD: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

impl Kv {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{{{name}}}", self.shared.names.prefix)
    }

    fn users(&self) -> String {
        format!("{}:push:users", self.shared.names.prefix)
    }

    /// Stores `json` as device `id` of `user`, unless the user has `max` devices already.
    pub async fn put_device(
        &self,
        user: &str,
        id: &str,
        json: &str,
        max: usize,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.shared.conn();
        let mut eval = redis::cmd("EVAL");
        eval.arg(PUT_DEVICE).arg(1).arg(self.key("push:dev", user)).arg(id).arg(json).arg(max);
        let stored: i64 = eval.query_async(&mut conn).await?;
        if stored == 1 {
            redis::cmd("SADD").arg(self.users()).arg(user).query_async::<()>(&mut conn).await?;
        }
        Ok(stored == 1)
    }

    /// Removes device `id` of `user`; whether it was there.
    pub async fn remove_device(&self, user: &str, id: &str) -> redis::RedisResult<bool> {
        let mut conn = self.shared.conn();
        let key = self.key("push:dev", user);
        let removed: i64 = redis::cmd("HDEL").arg(&key).arg(id).query_async(&mut conn).await?;
        let left: i64 = redis::cmd("HLEN").arg(&key).query_async(&mut conn).await?;
        if left == 0 {
            redis::cmd("SREM").arg(self.users()).arg(user).query_async::<()>(&mut conn).await?;
        }
        Ok(removed == 1)
    }

    /// Every user's devices, as stored (`(user, [(id, json)])`).
    pub async fn devices(&self) -> redis::RedisResult<Vec<(String, Vec<(String, String)>)>> {
        let mut conn = self.shared.conn();
        let users: Vec<String> =
            redis::cmd("SMEMBERS").arg(self.users()).query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let devices: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.key("push:dev", &user))
                .query_async(&mut conn)
                .await?;
            if !devices.is_empty() {
                out.push((user, devices));
            }
        }
        Ok(out)
    }

    /// Claims the push of message `id` for this node for a day: `true` for the first node.
    pub async fn claim(&self, id: &str) -> redis::RedisResult<bool> {
        let mut conn = self.shared.conn();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("push:claim", id))
            .arg(&self.shared.names.node)
            .arg("NX")
            .arg("EX")
            .arg(86_400)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// This node holds connections of `users` until `until_ms` (Unix ms): each user's
    /// presence hash gets this node's field, and expires with the latest. The users' commands
    /// go out together (one multiplexed connection pipelines them), not one round trip each.
    pub async fn present(&self, users: &[String], until_ms: i64) -> redis::RedisResult<()> {
        let one = |user: &String| {
            let mut conn = self.shared.conn();
            let key = self.key("presence", user);
            async move {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&self.shared.names.node)
                    .arg(until_ms)
                    .query_async::<()>(&mut conn)
                    .await?;
                for flag in ["GT", "NX"] {
                    redis::cmd("PEXPIREAT")
                        .arg(&key)
                        .arg(until_ms)
                        .arg(flag)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
                Ok::<(), redis::RedisError>(())
            }
        };
        for result in futures_util::future::join_all(users.iter().map(one)).await {
            result?;
        }
        Ok(())
    }

    /// This node holds no connection of `user` any more.
    pub async fn absent(&self, user: &str) -> redis::RedisResult<()> {
        let mut conn = self.shared.conn();
        redis::cmd("HDEL")
            .arg(self.key("presence", user))
            .arg(&self.shared.names.node)
            .query_async(&mut conn)
            .await
    }

    /// For each of `users`, whether some node holds a connection of theirs now (`now_ms`,
    /// Unix ms). The lookups go out together, not one round trip each.
    pub async fn online(&self, users: &[&str], now_ms: i64) -> redis::RedisResult<Vec<bool>> {
        let one = |user: &&str| {
            let mut conn = self.shared.conn();
            let key = self.key("presence", user);
            async move {
                let fields: Vec<(String, i64)> =
                    redis::cmd("HGETALL").arg(key).query_async(&mut conn).await?;
                Ok::<bool, redis::RedisError>(fields.iter().any(|(_, until)| *until > now_ms))
            }
        };
        futures_util::future::join_all(users.iter().map(one)).await.into_iter().collect()
    }

    /// The node's own roster keys: its entries (id → JSON) and their ids in order.
    fn roster_keys(&self, node: &str) -> (String, String) {
        (self.key("roster", node), self.key("roster-ids", node))
    }

    fn roster_nodes_key(&self) -> String {
        format!("{}:roster:nodes", self.shared.names.prefix)
    }

    /// Writes this node's share of the roster at `now_ms` (Unix ms): `put` entries (id, JSON)
    /// stored, `gone` ids removed, the whole share expiring at `until_ms` unless renewed, and
    /// this node listed among the nodes with a share until then (nodes whose lease ended are
    /// dropped from the list). The commands go out together.
    pub async fn roster_write(
        &self,
        put: &[(u64, String)],
        gone: &[u64],
        [now_ms, until_ms]: [i64; 2],
    ) -> redis::RedisResult<()> {
        let node = &self.shared.names.node;
        let (entries, ids) = self.roster_keys(node);
        let mut commands = Vec::with_capacity(2 * (put.len() + gone.len()) + 4);
        for (id, json) in put {
            commands.push(redis::cmd("HSET").arg(&entries).arg(id).arg(json).clone());
            commands.push(redis::cmd("ZADD").arg(&ids).arg(*id as f64).arg(id).clone());
        }
        for id in gone {
            commands.push(redis::cmd("HDEL").arg(&entries).arg(id).clone());
            commands.push(redis::cmd("ZREM").arg(&ids).arg(id).clone());
        }
        for key in [&entries, &ids] {
            commands.push(redis::cmd("PEXPIREAT").arg(key).arg(until_ms).clone());
        }
        let nodes = self.roster_nodes_key();
        commands.push(redis::cmd("ZADD").arg(&nodes).arg(until_ms).arg(node).clone());
        commands.push(redis::cmd("ZREMRANGEBYSCORE").arg(&nodes).arg("-inf").arg(now_ms).clone());
        let run = |command: redis::Cmd| {
            let mut conn = self.shared.conn();
            async move { command.query_async::<()>(&mut conn).await }
        };
        for result in futures_util::future::join_all(commands.into_iter().map(run)).await {
            result?;
        }
        Ok(())
    }

    /// Whether this node's share is in Redis (it expires when Redis was away for a lease).
    pub async fn roster_held(&self) -> redis::RedisResult<bool> {
        let mut conn = self.shared.conn();
        let (entries, _) = self.roster_keys(&self.shared.names.node);
        let held: i64 = redis::cmd("EXISTS").arg(entries).query_async(&mut conn).await?;
        Ok(held == 1)
    }

    /// Every node whose share is live at `now_ms` (Unix ms), this one included, sorted.
    pub async fn roster_nodes(&self, now_ms: i64) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.shared.conn();
        let mut nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.roster_nodes_key())
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        nodes.sort();
        Ok(nodes)
    }

    /// Up to `count` of `node`'s entries with an id after `after`, in id order: `(id, JSON)`.
    pub async fn roster_page(
        &self,
        node: &str,
        after: u64,
        count: usize,
    ) -> redis::RedisResult<Vec<(u64, String)>> {
        let mut conn = self.shared.conn();
        let (entries, ids) = self.roster_keys(node);
        let page: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(&ids)
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut conn)
            .await?;
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&entries).arg(&page).query_async(&mut conn).await?;
        Ok(page.into_iter().zip(values).filter_map(|(id, v)| Some((id, v?))).collect())
    }

    fn commands_key(&self) -> String {
        format!("{}:commands", self.shared.names.prefix)
    }

    /// Appends `json` to the stream of commands every node reads (the newest 10,000 kept).
    pub async fn send_command(&self, json: &str) -> redis::RedisResult<String> {
        let mut conn = self.shared.conn();
        redis::cmd("XADD")
            .arg(self.commands_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("origin")
            .arg(&self.shared.names.node)
            .arg("command")
            .arg(json)
            .query_async(&mut conn)
            .await
    }

    /// The id of the newest command (`0-0` when there is none): where a starting node reads
    /// from.
    pub async fn last_command(&self) -> redis::RedisResult<String> {
        let mut conn = self.shared.conn();
        let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(self.commands_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(newest.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id))
    }

    /// Up to 256 commands after stream id `after`: `(id, origin node, JSON)`.
    pub async fn commands_after(
        &self,
        after: &str,
    ) -> redis::RedisResult<Vec<(String, String, String)>> {
        let mut conn = self.shared.conn();
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.commands_key())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(256)
            .query_async(&mut conn)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (id.clone(), field("origin"), field("command"))
            })
            .collect())
    }

    fn revoked_key(&self) -> String {
        format!("{}:revoked", self.shared.names.prefix)
    }

    /// Stores `user`'s revocation (`json`) and forgets the `expired` users' ones.
    pub async fn put_revocation(
        &self,
        user: &str,
        json: &str,
        expired: &[String],
    ) -> redis::RedisResult<()> {
        let mut conn = self.shared.conn();
        let key = self.revoked_key();
        if !expired.is_empty() {
            redis::cmd("HDEL").arg(&key).arg(expired).query_async::<()>(&mut conn).await?;
        }
        redis::cmd("HSET").arg(&key).arg(user).arg(json).query_async(&mut conn).await
    }

    /// Every stored revocation: `(user, JSON)`.
    pub async fn revocations(&self) -> redis::RedisResult<Vec<(String, String)>> {
        let mut conn = self.shared.conn();
        redis::cmd("HGETALL").arg(self.revoked_key()).query_async(&mut conn).await
    }

    /// Holds (or renews) the lease `name` for this node for `lease_ms`; whether this node
    /// holds it (another node does until its lease ends).
    pub async fn lead(&self, name: &str, lease_ms: u64) -> redis::RedisResult<bool> {
        let mut conn = self.shared.conn();
        let mut eval = redis::cmd("EVAL");
        eval.arg(LEAD)
            .arg(1)
            .arg(format!("{}:lead:{name}", self.shared.names.prefix))
            .arg(&self.shared.names.node)
            .arg(lease_ms);
        let held: i64 = eval.query_async(&mut conn).await?;
        Ok(held == 1)
    }
}
