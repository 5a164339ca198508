//! The engine's Lua scripts: loaded once (`SCRIPT LOAD`), called by SHA (`EVALSHA`), each with
//! a typed call that writes its arguments in one place. A `NOSCRIPT` answer means Redis lost
//! its script cache — it restarted, failed over, or was flushed — which is exactly when
//! acknowledged messages may have been lost: the caller runs the restart check
//! ([`restart_call`], by source, before anything is loaded again), then loads the scripts and
//! retries.

use modelcast_hub::StateChange;
use redis::Cmd;

use crate::names::TopicNames;

/// One script: its source and SHA1.
#[derive(Debug)]
pub(crate) struct Script {
    pub(crate) name: &'static str,
    source: String,
    sha: String,
}

impl Script {
    /// `source`, publishing with `publish` (`PUBLISH`, or `SPUBLISH` on a Redis Cluster:
    /// sharded, on the topic's own primary, since the channel carries the topic's hash tag).
    fn new(name: &'static str, source: &str, publish: &str) -> Self {
        let source = source.replace("'PUBLISH'", &format!("'{publish}'"));
        Self { name, sha: redis::Script::new(&source).get_hash().to_owned(), source }
    }

    /// `EVALSHA` of this script with `keys`, arguments to follow.
    fn call(&self, keys: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha).arg(keys.len()).arg(keys);
        cmd
    }

    /// Whether `sha` is this script's SHA1.
    pub(crate) fn has_sha(&self, sha: &str) -> bool {
        self.sha.eq_ignore_ascii_case(sha)
    }

    /// `SCRIPT LOAD` of this script.
    pub(crate) fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(&self.source);
        cmd
    }
}

/// Appends one node's messages of one topic, in order, atomically: the restart check (a Redis
/// that restarted since the node last looked answers `RESTARTED`, and nothing is appended),
/// the idempotency records past their time dropped (a bounded number per call), then per
/// message the idempotency key, `HINCRBY` seq, `XADD`, the retained state and its order
/// (evicting past the cap), `PUBLISH`. Returns `{epoch, answer…}`, an answer per message: its
/// new seq (a number), or for a key already used, `"<epoch>\n<seq>"`, where it was sequenced
/// (a key's record; the epoch a fence may have left since, never the current one for an old
/// seq). Records live in the topic's `:idm` hash (by key) and `:idz` (by expiry), so a
/// topic's slot holds six keys however much is published — a slot migration moves them in
/// one step; `KEYS[6 + m]` is message `m`'s record from before (one key per record), still
/// read until it expires (an upgrade keeps retries safe).
const APPEND: &str = r#"
local run = redis.call('HGET', KEYS[1], 'run')
if run and run ~= ARGV[1] then return redis.error_reply('RESTARTED redis restarted since this node looked') end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', ARGV[4], 'LIMIT', 0, 128)
if #expired > 0 then
  redis.call('HDEL', KEYS[5], unpack(expired))
  redis.call('ZREM', KEYS[6], unpack(expired))
end
local out = {epoch}
local a = 9
for m = 1, tonumber(ARGV[8]) do
  local payload, key, changes = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local prev = false
  if key ~= '' then prev = redis.call('HGET', KEYS[5], key) or redis.call('GET', KEYS[6 + m]) end
  if prev then
    if string.find(prev, '\n', 1, true) then
      out[#out + 1] = prev
    else
      out[#out + 1] = epoch .. '\n' .. prev
    end
  else
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '0-' .. seq, 'p', payload, 't', ARGV[4])
    for i = a + 3, a + 2 + 3 * changes, 3 do
      if ARGV[i] == 'k' then
        redis.call('HSET', KEYS[3], ARGV[i + 1], seq .. '\n' .. ARGV[4] .. '\n' .. ARGV[i + 2])
        redis.call('ZADD', KEYS[4], seq, ARGV[i + 1])
      else
        redis.call('HDEL', KEYS[3], ARGV[i + 1])
        redis.call('ZREM', KEYS[4], ARGV[i + 1])
      end
    end
    while redis.call('ZCARD', KEYS[4]) > tonumber(ARGV[7]) do
      local oldest = redis.call('ZPOPMIN', KEYS[4])
      redis.call('HDEL', KEYS[3], oldest[1])
    end
    redis.call('PUBLISH', ARGV[3], 'm\n' .. epoch .. '\n' .. seq .. '\n' .. ARGV[4] .. '\n' .. payload)
    if key ~= '' then
      redis.call('HSET', KEYS[5], key, epoch .. '\n' .. seq)
      redis.call('ZADD', KEYS[6], tonumber(ARGV[4]) + 1000 * tonumber(ARGV[6]), key)
    end
    out[#out + 1] = seq
  end
  a = a + 3 + 3 * changes
end
return out
"#;

/// Reads a topic: its epoch (set to the candidate if it has none), newest seq, the log from a
/// seq, and (if asked) the retained state — one consistent snapshot.
const SNAPSHOT: &str = r#"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local entries = redis.call('XRANGE', KEYS[2], '0-' .. ARGV[2], '+', 'COUNT', ARGV[4])
local state = {}
if ARGV[3] == '1' then state = redis.call('HGETALL', KEYS[3]) end
return {meta[1], meta[2] or '0', entries, state}
"#;

/// How a script makes an epoch: one generation past `old`'s (the first 8 of its 24 hex digits;
/// 0 for an epoch from before generations) and at least `min`, then 16 random hex digits
/// from the caller. The same rule as `modelcast_hub::next_epoch`.
const NEXT_EPOCH: &str = r#"
local function generation(e)
  if e and #e == 24 then return tonumber(string.sub(e, 1, 8), 16) or 0 end
  return 0
end
local function next_epoch(old, min, random)
  return string.format('%08x', math.max(generation(old) + 1, tonumber(min))) .. random
end
"#;

/// The rollback fence: a new epoch when the topic still has the epoch the node knows and its
/// seq is below `min` (or unconditionally: a node saw a seq handed out twice, or an epoch
/// already left came back), numbering continuing above both. The new epoch is one generation
/// past the old and at least `ARGV[5]` (past every generation the node has seen). The fence
/// stands for the restart check of this Redis too (its `run_id` and address, `ARGV[6]` when
/// known, recorded): the event that rolled the log back makes one epoch, not two.
const FENCE: &str = r#"
local e = redis.call('HGET', KEYS[1], 'epoch')
local s = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local min = tonumber(ARGV[2])
if e == ARGV[1] and (ARGV[4] == '1' or s < min) then
  redis.call('HSET', KEYS[1], 'epoch', next_epoch(e, ARGV[5], ARGV[3]), 'seq', math.max(s, min))
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  redis.call('HSET', KEYS[1], 'run', run)
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'at', ARGV[6]) end
  return 1
end
return 0
"#;

/// Clears a key's retained state and tells every node.
const CLEAR: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', ARGV[1], 'c\n' .. ARGV[2])
  return 1
end
return 0
"#;

/// The restart check, per topic: the topic was last written under another Redis `run_id` —
/// the Redis the script runs on says its own, so every node's check of one event is one step,
/// whichever node runs it first. The event is a restart when the topic was last written at
/// the same address (`ARGV[4]`, kept as `at`), else a failover; a slot migration when the
/// Redis it was written under is still a primary (`ARGV[6..]`: `MIGRATE` moved the keys
/// whole). If the event can have lost acknowledged writes (a restart: `ARGV[1]`, not
/// `appendfsync always`; a failover: `ARGV[5]`, asynchronous replication without replica
/// acknowledgements; a migration: never), the topic gets a new epoch (one generation on, at
/// least `ARGV[3]`) — the tail it may have lost can never be told apart from messages not yet
/// published, so numbers are never handed out twice under one epoch.
/// Returns `{fenced (1/0), run_id, epoch}`.
const RESTART: &str = r#"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local meta = redis.call('HMGET', KEYS[1], 'run', 'at', 'epoch')
local prev, at, e = meta[1], meta[2], meta[3]
local fenced = 0
if prev ~= run then
  redis.call('HSET', KEYS[1], 'run', run, 'at', ARGV[4])
  local lossy = ARGV[5]
  if at == ARGV[4] then lossy = ARGV[1] end
  for i = 6, #ARGV do
    if ARGV[i] == prev then lossy = '0' end
  end
  if prev and lossy == '1' and e then
    redis.call('HSET', KEYS[1], 'epoch', next_epoch(e, ARGV[3], ARGV[2]))
    fenced = 1
  end
elseif at ~= ARGV[4] then
  redis.call('HSET', KEYS[1], 'at', ARGV[4])
end
return {fenced, run, redis.call('HGET', KEYS[1], 'epoch') or ''}
"#;

/// The scripts, with their SHAs.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) append: Script,
    pub(crate) snapshot: Script,
    pub(crate) fence: Script,
    pub(crate) clear: Script,
    restart: Script,
}

impl Scripts {
    /// The scripts, publishing sharded (`SPUBLISH`) if `sharded` (a Redis Cluster).
    pub(crate) fn new(sharded: bool) -> Self {
        let publish = publish_command(sharded);
        Self {
            append: Script::new("append", APPEND, publish),
            snapshot: Script::new("snapshot", SNAPSHOT, publish),
            fence: Script::new("fence", &format!("{NEXT_EPOCH}{FENCE}"), publish),
            clear: Script::new("clear", CLEAR, publish),
            restart: Script::new("restart", &format!("{NEXT_EPOCH}{RESTART}"), publish),
        }
    }

    /// Every script called by SHA.
    pub(crate) fn all(&self) -> [&Script; 4] {
        [&self.append, &self.snapshot, &self.fence, &self.clear]
    }

    /// The restart check of one topic, by source (it runs before the scripts are loaded).
    pub(crate) fn restart_call(&self, names: &TopicNames, check: &RestartCheck<'_>) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&self.restart.source)
            .arg(1)
            .arg(&names.meta)
            .arg(if check.lossy_restart { "1" } else { "0" })
            .arg(random_part())
            .arg(check.min_generation)
            .arg(check.address)
            .arg(if check.lossy_failover { "1" } else { "0" })
            .arg(check.primaries);
        cmd
    }
}

/// The command that publishes on a channel: `SPUBLISH` (sharded) on a Redis Cluster, where
/// a classic `PUBLISH` would be broadcast to every node of the cluster.
pub(crate) fn publish_command(sharded: bool) -> &'static str {
    if sharded { "SPUBLISH" } else { "PUBLISH" }
}

/// What the restart check needs: whether a restart of the Redis can lose acknowledged
/// writes (no `appendfsync always`) and whether a failover to another can (no replica
/// acknowledgements), the Redis's address, the least generation a new epoch of the topic
/// gets (past every one the node has seen), and the `run_id`s of a cluster's primaries now
/// (a topic written under one of them migrated).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestartCheck<'a> {
    pub(crate) lossy_restart: bool,
    pub(crate) lossy_failover: bool,
    pub(crate) address: &'a str,
    pub(crate) min_generation: u32,
    pub(crate) primaries: &'a [String],
}

/// The random part of a new epoch (16 hex digits; the script puts the generation first).
fn random_part() -> String {
    modelcast_hub::epoch_random()
}

/// The fixed arguments of every append call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppendLimits<'a> {
    /// The Redis `run_id` this node last checked.
    pub(crate) run_id: &'a str,
    /// The epoch a topic gets if it has none.
    pub(crate) node_epoch: &'a str,
    pub(crate) history_size: usize,
    pub(crate) idempotency_ttl_secs: u64,
    pub(crate) state_max_keys: usize,
}

/// One `EVALSHA` appending `appends` (all of one topic, in order).
pub(crate) fn append_call(
    scripts: &Scripts,
    names: &TopicNames,
    limits: AppendLimits<'_>,
    now_ms: i64,
    appends: &[crate::queued::Queued],
) -> Cmd {
    let idem: Vec<String> = appends
        .iter()
        .map(|a| format!("{}{}", names.idem, a.idempotency_key.as_deref().unwrap_or("-")))
        .collect();
    let mut keys: Vec<&str> =
        vec![&names.meta, &names.log, &names.ret, &names.order, &names.idm, &names.idz];
    keys.extend(idem.iter().map(String::as_str));
    let mut cmd = scripts.append.call(&keys);
    cmd.arg(limits.run_id)
        .arg(limits.node_epoch)
        .arg(&names.channel)
        .arg(now_ms)
        .arg(limits.history_size.max(1))
        .arg(limits.idempotency_ttl_secs)
        .arg(limits.state_max_keys.max(1))
        .arg(appends.len());
    for append in appends {
        cmd.arg(append.payload.as_ref())
            .arg(append.idempotency_key.as_deref().unwrap_or(""))
            .arg(append.state.len());
        for change in &append.state {
            match change {
                StateChange::Keep { key, payload } => cmd.arg("k").arg(key).arg(payload.as_ref()),
                StateChange::Clear { key } => cmd.arg("c").arg(key).arg(""),
            };
        }
    }
    cmd
}

/// One `EVALSHA` of the snapshot: `candidate` is the epoch a topic without one gets; the log
/// from `from` (at most `count` entries); the retained state if `with_state`.
pub(crate) fn snapshot_call(
    scripts: &Scripts,
    names: &TopicNames,
    candidate: &str,
    from: u64,
    with_state: bool,
    count: usize,
) -> Cmd {
    let mut cmd = scripts.snapshot.call(&[&names.meta, &names.log, &names.ret]);
    cmd.arg(candidate).arg(from).arg(if with_state { "1" } else { "0" }).arg(count.max(1));
    cmd
}

/// Why a topic is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceWhy {
    /// The log's seq is below `min` under the epoch the node (or a client) knows.
    Behind {
        /// A position past the log's head.
        min: u64,
    },
    /// The node holds a different message at a seq the log handed out again.
    Reused {
        /// The node's newest seq (numbering continues above it).
        min: u64,
    },
    /// An epoch already left is current again (a failback to a primary with older data).
    Returned {
        /// The node's newest seq (numbering continues above it).
        min: u64,
    },
}

/// One `EVALSHA` of the fence: `known` is the epoch the node (or client) holds; the new epoch
/// is at least of `min_generation`.
pub(crate) fn fence_call(
    scripts: &Scripts,
    names: &TopicNames,
    known: &str,
    why: FenceWhy,
    min_generation: u32,
    address: &str,
) -> Cmd {
    let (min, forced) = match why {
        FenceWhy::Behind { min } => (min, "0"),
        FenceWhy::Reused { min } | FenceWhy::Returned { min } => (min, "1"),
    };
    let mut cmd = scripts.fence.call(&[&names.meta]);
    cmd.arg(known).arg(min).arg(random_part()).arg(forced).arg(min_generation).arg(address);
    cmd
}

/// One `EVALSHA` clearing `key`'s retained state.
pub(crate) fn clear_call(scripts: &Scripts, names: &TopicNames, key: &str) -> Cmd {
    let mut cmd = scripts.clear.call(&[&names.ret, &names.order]);
    cmd.arg(&names.channel).arg(key);
    cmd
}
