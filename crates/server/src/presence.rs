//! Who is online, for push's `offline` rule: each user's open connections counted on this node
//! (WebSockets once they have a user, event streams with a token), and on a cluster each node's
//! users written to Redis with a lease (`MODELCAST_PRESENCE_LEASE`, renewed at a third of it),
//! so a dead node's users go offline within it. A leaf: the session state holds an
//! [`OnlineGuard`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use modelcast_redis::{Kv, RedisEngine};

/// Who has a connection open: counted here per user (WebSockets once they have a user,
/// event streams with a token), and on a cluster written to Redis for the other nodes.
#[derive(Default)]
pub(crate) struct Presence {
    local: Mutex<HashMap<String, usize>>,
    kv: Option<Kv>,
    /// How long this node's word lasts in Redis.
    lease: Duration,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("clustered", &self.kv.is_some()).finish_non_exhaustive()
    }
}

impl Presence {
    /// Presence on this node, shared through `engine`'s Redis when there is one, each word
    /// lasting `lease`.
    pub(crate) fn new(engine: Option<&Arc<RedisEngine>>, lease: Duration) -> Arc<Self> {
        let kv = engine.map(|e| e.kv());
        let presence = Arc::new(Self { local: Mutex::default(), kv, lease });
        if presence.kv.is_some() {
            tokio::spawn(renew(Arc::downgrade(&presence)));
        }
        presence
    }

    fn locals(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `user` opened a connection: online until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>, user: &str) -> OnlineGuard {
        let first = {
            let mut locals = self.locals();
            let count = locals.entry(user.to_owned()).or_default();
            *count += 1;
            *count == 1
        };
        if first && let Some(kv) = self.kv.clone() {
            let users = vec![user.to_owned()];
            let until = unix_ms() + self.lease.as_millis() as i64;
            tokio::spawn(async move {
                let _ = kv.present(&users, until).await;
            });
        }
        OnlineGuard { presence: self.clone(), user: user.to_owned() }
    }

    fn leave(&self, user: &str) {
        let last = {
            let mut locals = self.locals();
            match locals.get_mut(user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    locals.remove(user);
                    true
                }
                None => false,
            }
        };
        if last
            && let Some(kv) = self.kv.clone()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let user = user.to_owned();
            runtime.spawn(async move {
                let _ = kv.absent(&user).await;
            });
        }
    }
}

/// Renews this node's presence in Redis while it lives.
async fn renew(presence: std::sync::Weak<Presence>) {
    loop {
        let Some(lease) = presence.upgrade().map(|p| p.lease) else { return };
        tokio::time::sleep(lease / 3).await;
        let Some(presence) = presence.upgrade() else { return };
        let users: Vec<String> = presence.locals().keys().cloned().collect();
        let until = unix_ms() + lease.as_millis() as i64;
        if let Some(kv) = &presence.kv
            && let Err(err) = kv.present(&users, until).await
        {
            tracing::debug!("presence not renewed: {err}");
        }
    }
}

impl modelcast_push::Presence for Presence {
    fn online<'a>(&'a self, users: &'a [&'a str]) -> BoxFuture<'a, Vec<bool>> {
        let mut online: Vec<bool> = {
            let locals = self.locals();
            users.iter().map(|user| locals.contains_key(*user)).collect()
        };
        Box::pin(async move {
            let Some(kv) = &self.kv else { return online };
            // The users not connected here: asked of Redis together. Unreachable Redis: they
            // count as offline (a push too many, rather than one lost).
            let elsewhere: Vec<&str> =
                users.iter().zip(&online).filter(|(_, here)| !**here).map(|(u, _)| *u).collect();
            if elsewhere.is_empty() {
                return online;
            }
            let answers = kv.online(&elsewhere, unix_ms()).await.unwrap_or_default();
            let mut answers = answers.into_iter();
            for here in online.iter_mut().filter(|here| !**here) {
                *here = answers.next().unwrap_or(false);
            }
            online
        })
    }
}

/// A connection's share in its user's presence.
pub(crate) struct OnlineGuard {
    presence: Arc<Presence>,
    user: String,
}

impl std::fmt::Debug for OnlineGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OnlineGuard").field(&self.user).finish()
    }
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        self.presence.leave(&self.user);
    }
}

pub(crate) fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
