//! Keys interned to small integers, so the per-subscriber hot path compares `u64`s.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::Key;

/// An interned [`Key`]. `KeyId::NONE` stands for "no key".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct KeyId(pub(crate) u64);

impl KeyId {
    pub(crate) const NONE: KeyId = KeyId(0);
}

/// Interns keys for the hub's lifetime. Keys are model ids and the like: a small, slowly
/// growing set, so the table is never pruned.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: RwLock<HashMap<Key, KeyId>>,
}

impl Interner {
    pub(crate) fn intern(&self, key: Option<&Key>) -> KeyId {
        let Some(key) = key else { return KeyId::NONE };
        if let Some(id) = self.ids.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return *id;
        }
        let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
        let next = KeyId(ids.len() as u64 + 1);
        *ids.entry(key.clone()).or_insert(next)
    }

    /// The id of `key` if it was ever seen, without interning it.
    pub(crate) fn lookup(&self, key: &str) -> Option<KeyId> {
        self.ids.read().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }
}
