//! [`Kv`]: what else a cluster keeps in Redis besides topics — push registrations (a hash per
//! user and the set of users), push claims (one node pushes a message), and presence (which
//! users have a connection open on which node). Every command names one key, so each goes to
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
}
