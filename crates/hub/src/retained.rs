//! A topic's retained state: the newest `Retain::Keep` message per state key, bounded by a
//! count, in one order (by the `seq` of each key's newest message, then by key) that is the
//! same on every node — the order new subscribers receive it in, pages are cut in, and the
//! least recently updated key leaves in.
//!
//! What happens at the cap (the decision, written down): keeping a new key when `max_keys`
//! are held evicts the key updated longest ago; the caller tells that key's subscribers with
//! `state_cleared` and counts it. Never silently, never by refusing the publish — a publisher
//! of current state is never blocked by state nobody updates.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::keys::{KeyId, KeyRef, id_of};
use crate::outbox::TopicFrame;
use crate::publish::Key;
use crate::reach::Reach;

/// A sequenced message as history and retained state hold it. Its audience (who it is for,
/// `None`: everyone) travels in its frame; its key is scoped to it.
pub(crate) struct Entry {
    pub(crate) frame: TopicFrame,
    pub(crate) subject: Option<KeyRef>,
    pub(crate) urgent: bool,
    /// When it was published (retained state expires by `retained_ttl`).
    pub(crate) at: Instant,
}

impl Entry {
    pub(crate) fn subject_id(&self) -> KeyId {
        id_of(self.subject.as_ref())
    }

    /// Who it is for (`None`: everyone).
    pub(crate) fn audience(&self) -> Option<&Reach> {
        self.frame.frame.reach()
    }

    /// The bytes it keeps alive, as the history budget counts them: its frame, its state key
    /// and its audience's names (a state key of an audience holds the names once more).
    pub(crate) fn cost(&self) -> usize {
        self.frame.frame.len()
            + self.frame.key.as_ref().map_or(0, |k| k.name().len())
            + self.audience().map_or(0, Reach::bytes)
    }
}

/// The retained state of one topic.
#[derive(Default)]
pub(crate) struct Retained {
    entries: HashMap<KeyId, Entry>,
    /// Every held key by (seq of its newest message, key): oldest first.
    order: BTreeMap<(u64, Key), KeyId>,
}

impl Retained {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps `entry` (which has a key) as its key's state, replacing the older one. Returns
    /// the entry evicted to stay within `max_keys`: the key updated longest ago.
    pub(crate) fn keep(&mut self, entry: Entry, max_keys: usize) -> Option<Entry> {
        let key = entry.frame.key.clone()?;
        let order_key = (entry.frame.seq, key.name().clone());
        if let Some(old) = self.entries.insert(key.id(), entry) {
            self.order.remove(&(old.frame.seq, key.name().clone()));
        }
        self.order.insert(order_key, key.id());
        if self.entries.len() <= max_keys.max(1) {
            return None;
        }
        let (_, oldest) = self.order.pop_first()?;
        self.entries.remove(&oldest)
    }

    /// Forgets `key`'s state; returns it.
    pub(crate) fn remove(&mut self, key: KeyId) -> Option<Entry> {
        let old = self.entries.remove(&key)?;
        if let Some(held) = &old.frame.key {
            self.order.remove(&(old.frame.seq, held.name().clone()));
        }
        Some(old)
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Drops state published longer than `ttl` ago, oldest first. (Publish times follow `seq`
    /// on the node that sequenced them; one out of order is dropped with the next sweep that
    /// reaches it.)
    pub(crate) fn expire(&mut self, ttl: Duration, now: Instant) {
        while let Some(entry) = self.order.first_key_value().and_then(|(_, k)| self.entries.get(k))
        {
            if now.duration_since(entry.at) <= ttl {
                break;
            }
            let (_, key) = self.order.pop_first().expect("just seen");
            self.entries.remove(&key);
        }
    }

    /// Every entry, in the order a new subscriber receives them.
    pub(crate) fn in_order(&self) -> impl Iterator<Item = &Entry> {
        self.order.values().filter_map(|k| self.entries.get(k))
    }

    /// Whether `key` has state.
    pub(crate) fn contains(&self, key: KeyId) -> bool {
        self.entries.contains_key(&key)
    }

    /// Entries `keep` accepts after `after_seq` (the cursor of the previous page), at least
    /// `limit` unless the state ends first, never splitting the keys of one `seq` (a batch's
    /// parts). Returns them and the cursor of the next page (`None`: this is the last).
    pub(crate) fn page(
        &self,
        after_seq: Option<u64>,
        limit: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> (Vec<&Entry>, Option<u64>) {
        let start = after_seq.map_or(0, |s| s.saturating_add(1));
        let mut page: Vec<&Entry> = Vec::new();
        let mut rest = self.order.range((start, Key::from(""))..).peekable();
        while let Some(((seq, _), key)) = rest.next() {
            if let Some(entry) = self.entries.get(key).filter(|e| keep(e)) {
                page.push(entry);
            }
            let group_ends = rest.peek().is_none_or(|((next, _), _)| next != seq);
            if page.len() >= limit.max(1) && group_ends {
                return (page, rest.peek().map(|_| *seq));
            }
        }
        (page, None)
    }
}
