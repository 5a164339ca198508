//! Every Redis name the engine uses, made once at start-up (no formatting per message).
//!
//! Per topic `T` (in braces: a Redis Cluster hash tag, so one topic's keys share a slot and its
//! scripts stay single-slot): `{prefix}:{T}:meta` (hash: `epoch` — see the hub's epoch
//! rule —, `seq`, `run` and `at` — the Redis `run_id` and address the topic was last written
//! under), `:log` (stream, entry id `0-<seq>`, fields `p`
//! payload and `t` publish time in ms, capped at the history size), `:ret` (hash: state key →
//! `seq\nms\npayload`), `:reto` (sorted set: state key by the seq of its newest message, to
//! evict the least recently updated past the cap), `:idm` (hash: a message's idempotency key
//! → `<epoch>\n<seq>`, where it was sequenced) with `:idz` (sorted set: those keys by when
//! they expire), and the channel `:ch`; `:idem:<key>`, one key per record, is where records
//! were kept before (still read). A publisher's key names one request:
//! `{prefix}:claim:{<key>}` holds the request's digest (the key is its own hash tag, so
//! claims spread over a cluster's slots).

use modelcast_protocol::Topic;

/// One topic's names.
#[derive(Debug)]
pub(crate) struct TopicNames {
    pub(crate) meta: String,
    pub(crate) log: String,
    pub(crate) ret: String,
    pub(crate) order: String,
    pub(crate) channel: String,
    /// Idempotency records by key, and the same keys by expiry (ms).
    pub(crate) idm: String,
    pub(crate) idz: String,
    /// `<idem><key>` is an idempotency key's record as kept before `idm`; `<idem>-` stands for
    /// "no key" (a script's key list has a fixed shape).
    pub(crate) idem: String,
}

/// Every name, for one prefix and node.
#[derive(Debug)]
pub(crate) struct Names {
    pub(crate) prefix: String,
    /// This node's id.
    pub(crate) node: String,
    topics: Vec<TopicNames>,
    /// The cluster's epoch for topics Redis has none for.
    pub(crate) epoch: String,
    /// This node's probe channel (its pub/sub connection must hear it).
    pub(crate) probe: String,
    /// This node's write probe (a key that expires): Redis takes writes.
    pub(crate) alive: String,
}

impl Names {
    /// Where a publisher's idempotency key records the request it names.
    pub(crate) fn claim(&self, key: &str) -> String {
        format!("{}:claim:{{{key}}}", self.prefix)
    }
}

impl Names {
    pub(crate) fn new(prefix: &str, node: &str) -> Self {
        let topics = Topic::ALL
            .iter()
            .map(|t| {
                let base = format!("{prefix}:{{{}}}:", t.as_str());
                TopicNames {
                    meta: format!("{base}meta"),
                    log: format!("{base}log"),
                    ret: format!("{base}ret"),
                    order: format!("{base}reto"),
                    channel: format!("{base}ch"),
                    idm: format!("{base}idm"),
                    idz: format!("{base}idz"),
                    idem: format!("{base}idem:"),
                }
            })
            .collect();
        Names {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            topics,
            epoch: format!("{prefix}:epoch"),
            probe: format!("{prefix}:probe:{node}"),
            alive: format!("{prefix}:alive:{node}"),
        }
    }

    pub(crate) fn of(&self, topic: Topic) -> &TopicNames {
        &self.topics[topic.index()]
    }

    pub(crate) fn topic_of_channel(&self, channel: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| self.of(*t).channel == channel)
    }

    /// Every topic's channel.
    pub(crate) fn channels(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|t| t.channel.as_str())
    }
}
