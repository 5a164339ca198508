//! [`Roster`]: every open session of this node, WebSocket or event stream — what
//! `GET /api/connections` lists, `GET /api/presence` counts, and `POST /api/disconnect` and
//! `/api/revoke` close. A session is on it from its start to its end ([`OnRoster`] drops it).
//!
//! On a cluster each node's share lives in Redis under a lease (`MODELCAST_PRESENCE_LEASE`,
//! renewed at a third of it): entries written as they change (at most every [`TICK`]), so a
//! dead node's entries are gone within the lease. [`Command`]s for every node (disconnect,
//! revoke, subscribe) go through a Redis stream ([`Roster::broadcast`]) that `manage.rs`
//! follows; revocations are also stored, for nodes that start later.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use modelcast_hub::Connection;
use modelcast_protocol::{Topic, close};
use modelcast_redis::Kv;
use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::presence::unix_ms;
use crate::revoke::Revoked;

/// How often a clustered node writes what changed (and reads the commands of other nodes:
/// `manage.rs`).
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// Entries read from another node's share at a time.
const CHUNK: usize = 256;

/// How a session is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// A WebSocket.
    Ws,
    /// Server-Sent Events.
    Sse,
}

/// One session as listed: what `GET /api/connections` answers per connection (and what a
/// node writes to Redis for the others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) connection_id: String,
    pub(crate) user: Option<String>,
    pub(crate) roles: Vec<String>,
    pub(crate) node: String,
    pub(crate) transport: Transport,
    pub(crate) topics: Vec<Subscription>,
    pub(crate) connected_at: DateTime<Utc>,
    /// Frames waiting in its queue (on another node: when that node last wrote the entry).
    pub(crate) queued: usize,
    pub(crate) compression: bool,
}

/// A subscription as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Subscription {
    pub(crate) topic: Topic,
    /// `{"model_ids": [...]}`, or none (every model).
    pub(crate) filter: Option<Filter>,
    pub(crate) max_hz: Option<f64>,
}

/// A subscription's filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Filter {
    pub(crate) model_ids: Vec<String>,
}

/// Which sessions a command names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// Every session of this user.
    User(String),
    /// The sessions with this connection id.
    ConnectionId(String),
    /// The sessions of this user whose token was issued before this (Unix seconds), or that
    /// have no `iat`.
    IssuedBefore(String, u64),
}

/// What one node asks of every node (applied by `manage.rs`, which reads the stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Close the sessions `target` names with [`close::REVOKED`].
    Disconnect { target: Target },
    /// Refuse `user`'s tokens as `revoked` says (and close the sessions it names).
    Revoke { user: String, revoked: Revoked },
    /// Subscribe the sessions `target` names, as if each had sent `request`.
    Subscribe { target: Target, request: modelcast_protocol::SubscribeRequest },
    /// Unsubscribe the sessions `target` names from `topic` (those subscribed to it).
    Unsubscribe { target: Target, topic: Topic },
}

/// A session on the roster.
struct Listed {
    transport: Transport,
    connected_at: DateTime<Utc>,
    compression: bool,
    conn: Connection,
    control: Arc<Control>,
}

/// Every open session of this node.
pub(crate) struct Roster {
    node: String,
    sessions: Mutex<BTreeMap<u64, Listed>>,
    share: Option<Share>,
}

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roster").field("clustered", &self.share.is_some()).finish_non_exhaustive()
    }
}

/// A clustered node's share in Redis.
struct Share {
    kv: Kv,
    lease: Duration,
    /// Sessions whose entry must be written (or removed) at the next tick.
    changed: Mutex<BTreeSet<u64>>,
}

/// A session's place on the roster, held while it lives.
#[derive(Debug)]
pub(crate) struct OnRoster {
    roster: Arc<Roster>,
    serial: u64,
}

impl Drop for OnRoster {
    fn drop(&mut self) {
        self.roster.listed().remove(&self.serial);
        self.roster.touch(self.serial);
    }
}

impl Roster {
    /// The roster of node `node`; on a cluster (`kv`) its share is kept in Redis with `lease`.
    pub(crate) fn new(node: String, kv: Option<Kv>, lease: Duration) -> Arc<Self> {
        let share = kv.map(|kv| Share { kv, lease, changed: Mutex::default() });
        let roster = Arc::new(Self { node, sessions: Mutex::default(), share });
        if roster.share.is_some() {
            tokio::spawn(keep_share(Arc::downgrade(&roster)));
        }
        roster
    }

    fn listed(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Listed>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts a session on the roster until the returned guard drops.
    pub(crate) fn join(
        self: &Arc<Self>,
        transport: Transport,
        compression: bool,
        conn: &Connection,
        control: &Arc<Control>,
    ) -> OnRoster {
        let listed = Listed {
            transport,
            connected_at: Utc::now(),
            compression,
            conn: conn.clone(),
            control: control.clone(),
        };
        self.listed().insert(control.serial, listed);
        self.touch(control.serial);
        OnRoster { roster: self.clone(), serial: control.serial }
    }

    /// The session `serial` changed (subscribed, authenticated, left): its entry is written
    /// at the next tick, on a cluster.
    pub(crate) fn touch(&self, serial: u64) {
        if let Some(share) = &self.share {
            share.changed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(serial);
        }
    }

    /// Whether other nodes share the roster (through Redis).
    pub(crate) fn clustered(&self) -> Option<&Kv> {
        self.share.as_ref().map(|s| &s.kv)
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Up to `limit` of this node's entries after `after` that `keep` accepts, in order, and
    /// the serial of the last one looked at when more may follow.
    pub(crate) fn page(
        &self,
        after: u64,
        limit: usize,
        keep: &impl Fn(&Entry) -> bool,
    ) -> (Vec<Entry>, Option<u64>) {
        let listed = self.listed();
        let mut out = Vec::new();
        for (serial, session) in listed.range(after.saturating_add(1)..) {
            if out.len() == limit {
                return (out, Some(*serial - 1));
            }
            let entry = session.entry(&self.node);
            if keep(&entry) {
                out.push(entry);
            }
        }
        (out, None)
    }

    /// Every node with sessions to list, sorted: this one, and on a cluster those whose share
    /// is live.
    pub(crate) async fn nodes(&self) -> Result<Vec<String>, String> {
        let mut nodes = vec![self.node.clone()];
        if let Some(kv) = self.clustered() {
            let now = unix_ms();
            nodes.extend(kv.roster_nodes(now).await.map_err(|e| e.to_string())?);
            nodes.sort();
            nodes.dedup();
        }
        Ok(nodes)
    }

    /// Up to `limit` of `node`'s entries after serial `after` that `keep` accepts, and the
    /// serial to go on from when the page filled before the node's entries ended.
    pub(crate) async fn node_page(
        &self,
        node: &str,
        mut after: u64,
        limit: usize,
        keep: &impl Fn(&Entry) -> bool,
    ) -> Result<(Vec<Entry>, Option<u64>), String> {
        if node == self.node {
            return Ok(self.page(after, limit, keep));
        }
        let Some(kv) = self.clustered() else { return Ok((Vec::new(), None)) };
        let mut out = Vec::new();
        loop {
            let chunk = kv.roster_page(node, after, CHUNK).await.map_err(|e| e.to_string())?;
            let ended = chunk.len() < CHUNK;
            for (serial, json) in chunk {
                if out.len() == limit {
                    return Ok((out, Some(after)));
                }
                after = serial;
                if let Ok(entry) = serde_json::from_str::<Entry>(&json)
                    && keep(&entry)
                {
                    out.push(entry);
                }
            }
            if ended {
                return Ok((out, None));
            }
        }
    }

    /// Calls `each` with every entry `keep` accepts, of every node; how many nodes there are.
    pub(crate) async fn each_entry(
        &self,
        keep: &impl Fn(&Entry) -> bool,
        each: &mut impl FnMut(&Entry),
    ) -> Result<usize, String> {
        let nodes = self.nodes().await?;
        for node in &nodes {
            let mut after = 0;
            loop {
                let (entries, more) = self.node_page(node, after, CHUNK, keep).await?;
                entries.iter().for_each(&mut *each);
                match more {
                    Some(serial) => after = serial,
                    None => break,
                }
            }
        }
        Ok(nodes.len())
    }

    /// Closes this node's sessions that `target` names with [`close::REVOKED`]; how many.
    pub(crate) fn close(&self, target: &Target, reason: &str) -> usize {
        let listed = self.listed();
        let mut closed = 0;
        for session in listed.values() {
            if session.named(target) {
                session.control.set_close(close::REVOKED, reason);
                session.control.wake.notify_one();
                closed += 1;
            }
        }
        closed
    }

    /// Tells the other nodes of `user`'s revocation, and stores it for nodes that start later
    /// (forgetting the `expired` ones).
    pub(crate) async fn revoke_everywhere(
        &self,
        user: &str,
        revoked: Revoked,
        expired: &[String],
    ) -> Result<(), String> {
        let Some(kv) = self.clustered() else { return Ok(()) };
        let json = serde_json::to_string(&revoked).unwrap_or_default();
        kv.put_revocation(user, &json, expired).await.map_err(|e| e.to_string())?;
        self.broadcast(&Command::Revoke { user: user.to_owned(), revoked }).await
    }

    /// Tells the other nodes to apply `command` (nothing on a single node).
    pub(crate) async fn broadcast(&self, command: &Command) -> Result<(), String> {
        let Some(kv) = self.clustered() else { return Ok(()) };
        let json = serde_json::to_string(command).unwrap_or_default();
        kv.send_command(&json).await.map(drop).map_err(|e| e.to_string())
    }

    /// The sessions `target` names: their hub connection and state.
    pub(crate) fn sessions(&self, target: &Target) -> Vec<(Connection, Arc<Control>)> {
        let listed = self.listed();
        let named = listed.values().filter(|session| session.named(target));
        named.map(|session| (session.conn.clone(), session.control.clone())).collect()
    }

    /// The entries of sessions `serials` that are still listed, and those that are gone.
    fn changes(&self, serials: BTreeSet<u64>) -> (Vec<(u64, String)>, Vec<u64>) {
        let listed = self.listed();
        let mut put = Vec::new();
        let mut gone = Vec::new();
        for serial in serials {
            match listed.get(&serial) {
                Some(session) => {
                    let json = serde_json::to_string(&session.entry(&self.node));
                    put.push((serial, json.unwrap_or_default()));
                }
                None => gone.push(serial),
            }
        }
        (put, gone)
    }
}

/// The close reason of a session whose token was revoked.
pub(crate) const REVOKED_REASON: &str =
    "the token was revoked by an operator: do not reconnect with it; a new token may connect";

/// The close reason of a session an operator disconnected.
pub(crate) const DISCONNECTED_REASON: &str =
    "disconnected by an operator: do not reconnect with this token";

impl Listed {
    fn entry(&self, node: &str) -> Entry {
        let (user, roles) = match &self.control.auth().identity {
            Some(identity) => (Some(identity.subject.clone()), identity.roles.clone()),
            None => (None, Vec::new()),
        };
        let topics = self
            .conn
            .subscriptions()
            .into_iter()
            .map(|topic| {
                let listening = self.control.listening(topic).unwrap_or_default();
                Subscription {
                    topic,
                    filter: listening
                        .model_ids
                        .and_then(|ids| serde_json::from_str(&ids).ok())
                        .map(|model_ids| Filter { model_ids }),
                    max_hz: listening.max_hz,
                }
            })
            .collect();
        Entry {
            connection_id: self.control.id.clone(),
            user,
            roles,
            node: node.to_owned(),
            transport: self.transport,
            topics,
            connected_at: self.connected_at,
            queued: self.conn.queued(),
            compression: self.compression,
        }
    }

    fn named(&self, target: &Target) -> bool {
        let auth = self.control.auth();
        let user = auth.identity.as_ref().map(|i| i.subject.as_str());
        match target {
            Target::ConnectionId(id) => self.control.id == *id,
            Target::User(wanted) => user == Some(wanted.as_str()),
            Target::IssuedBefore(wanted, before) => {
                user == Some(wanted.as_str())
                    && auth
                        .identity
                        .as_ref()
                        .and_then(|i| i.issued_at)
                        .is_none_or(|at| at < *before)
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_seconds() -> u64 {
    Utc::now().timestamp().max(0) as u64
}

/// A clustered node's share: what changed written each tick, the lease renewed at a third of
/// it (the whole share written again when Redis lost it). Ends with the roster.
async fn keep_share(roster: Weak<Roster>) {
    let mut renewed_at = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::time::sleep(TICK).await;
        let Some(roster) = roster.upgrade() else { return };
        let Some(share) = &roster.share else { return };
        let renew = renewed_at.elapsed() >= share.lease / 3;
        if write_share(&roster, share, renew).await && renew {
            renewed_at = tokio::time::Instant::now();
        }
    }
}

/// Writes what changed (everything, when `renew` finds the share lost); whether it was
/// written. What could not be written is written at the next tick.
async fn write_share(roster: &Roster, share: &Share, renew: bool) -> bool {
    let take = || std::mem::take(&mut *share.changed.lock().unwrap_or_else(|e| e.into_inner()));
    let mut serials = take();
    if serials.is_empty() && !renew {
        return true;
    }
    if renew && !share.kv.roster_held().await.unwrap_or(true) {
        serials.extend(roster.listed().keys().copied());
    }
    let (put, gone) = roster.changes(serials.clone());
    let now = unix_ms();
    let until = now + i64::try_from(share.lease.as_millis()).unwrap_or(i64::MAX / 2);
    match share.kv.roster_write(&put, &gone, [now, until]).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!("roster: share not written: {err}");
            share.changed.lock().unwrap_or_else(|e| e.into_inner()).extend(serials);
            false
        }
    }
}

/// The presence of one topic: connections subscribed, their distinct users, and per model the
/// connections whose filter names it (`unfiltered`: those with no filter).
#[derive(Debug, Default, Serialize)]
pub(crate) struct TopicPresence {
    pub(crate) topic: Option<Topic>,
    pub(crate) connections: usize,
    pub(crate) users: usize,
    pub(crate) unfiltered: usize,
    pub(crate) models: BTreeMap<String, usize>,
    #[serde(skip)]
    seen_users: HashSet<String>,
}

impl TopicPresence {
    /// No connection counted yet, for `topic` (every topic, without one).
    pub(crate) fn of(topic: Option<Topic>) -> Self {
        Self { topic, ..Self::default() }
    }

    /// Counts `entry`'s subscriptions to the topic (or to any topic, without one).
    pub(crate) fn count(&mut self, entry: &Entry) {
        let mut subscribed = false;
        for subscription in &entry.topics {
            if self.topic.is_some_and(|t| t != subscription.topic) {
                continue;
            }
            subscribed = true;
            match &subscription.filter {
                None => self.unfiltered += 1,
                Some(filter) => {
                    for model in &filter.model_ids {
                        *self.models.entry(model.clone()).or_default() += 1;
                    }
                }
            }
        }
        if !subscribed && self.topic.is_some() {
            return;
        }
        self.connections += 1;
        if let Some(user) = &entry.user
            && self.seen_users.insert(user.clone())
        {
            self.users += 1;
        }
    }
}
