//! Keys interned to small integers, so the per-subscriber hot path compares `u64`s — and
//! freed with their last holder, so that no string a publisher or a client sends is kept after
//! whatever uses it is gone.
//!
//! Ownership: a [`KeyRef`] is held by what needs the key to keep meaning the same string —
//! retained state, history entries, a subscription's filter, a `max_hz` hold-back. When the
//! last one is dropped the string is freed; the table's dead entries are swept once they
//! outnumber the live ones (amortized O(1) per new key), so the table is bounded by the live
//! keys, not by every key ever seen. Ids are never reused: a bare [`KeyId`] copied into a queued
//! delivery can only ever mean its own string, or (after that was freed and the string
//! interned again under a new id) compare unequal to it — which never merges two keys.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};

use crate::Key;

/// An interned key's number. `KeyId::NONE` stands for "no key". Never reused within a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KeyId(pub(crate) u64);

impl KeyId {
    pub(crate) const NONE: KeyId = KeyId(0);
}

/// A held interned key: while a clone lives, its string maps to the same [`KeyId`].
#[derive(Clone)]
pub(crate) struct KeyRef(Arc<Interned>);

struct Interned {
    id: KeyId,
    name: Key,
    live: Arc<AtomicUsize>,
}

impl Drop for Interned {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl KeyRef {
    pub(crate) fn id(&self) -> KeyId {
        self.0.id
    }

    pub(crate) fn name(&self) -> &Key {
        &self.0.name
    }
}

/// The id of an optional key (`KeyId::NONE` without one).
pub(crate) fn id_of(key: Option<&KeyRef>) -> KeyId {
    key.map_or(KeyId::NONE, KeyRef::id)
}

impl PartialEq for KeyRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for KeyRef {}

impl Hash for KeyRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}#{}", self.0.name, self.0.id.0)
    }
}

/// The table of live keys.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    table: RwLock<HashMap<Key, Weak<Interned>>>,
    next: AtomicU64,
    /// Keys with a live holder (maintained by `Interned`'s drop).
    live: Arc<AtomicUsize>,
}

impl fmt::Debug for Interned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}#{}", self.name, self.id.0)
    }
}

impl Interner {
    /// The held key for `key`: the live one if any holder has it, else a new id.
    pub(crate) fn intern(&self, key: &Key) -> KeyRef {
        if let Some(held) = self.lookup(key) {
            return held;
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = table.get(key).and_then(Weak::upgrade) {
            return KeyRef(held);
        }
        let live = self.live.load(Ordering::Relaxed);
        if table.len() >= 2 * live + 1024 {
            // More dead entries than live ones: sweep (each sweep pays for the entries that
            // died since the last, so the cost per new key stays constant).
            table.retain(|_, weak| weak.strong_count() > 0);
            let len = table.len();
            if table.capacity() > 4 * len + 1024 {
                table.shrink_to(2 * len);
            }
        }
        let id = KeyId(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.live.fetch_add(1, Ordering::Relaxed);
        let interned = Arc::new(Interned { id, name: key.clone(), live: self.live.clone() });
        table.insert(key.clone(), Arc::downgrade(&interned));
        KeyRef(interned)
    }

    /// The live key for `key`, without interning it.
    pub(crate) fn lookup(&self, key: &str) -> Option<KeyRef> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.get(key).and_then(Weak::upgrade).map(KeyRef)
    }

    /// How many keys something holds now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_lives_while_held_and_its_id_is_never_reused() {
        let interner = Interner::default();
        let a: Key = "a".into();
        let first = interner.intern(&a);
        assert_eq!(interner.intern(&a), first, "the same string while held");
        assert_eq!(interner.live(), 1);
        let id = first.id();
        drop(first);
        assert_eq!(interner.live(), 0, "freed with its last holder");
        assert!(interner.lookup("a").is_none());
        let again = interner.intern(&a);
        assert_ne!(again.id(), id, "a new id: a queued old id never matches the new one");
    }

    #[test]
    fn the_table_is_bounded_by_the_live_keys() {
        let interner = Interner::default();
        let kept: Vec<KeyRef> =
            (0..100).map(|i| interner.intern(&Key::from(format!("k{i}")))).collect();
        for i in 0..100_000 {
            drop(interner.intern(&Key::from(format!("fresh{i}"))));
        }
        let table = interner.table.read().unwrap().len();
        assert!(table <= 2 * kept.len() + 1024 + 1, "{table} entries for 100 live keys");
        assert_eq!(interner.live(), kept.len());
    }
}
