//! The fan-out's form of audiences and viewers: their names interned to ids (held while
//! used, like every key), so the check per subscriber compares integers — a user against the
//! subscription's own inline id, no string and no pointer to follow — instead of strings.

use std::sync::Arc;

use crate::audience::{Audience, Viewer};
use crate::keys::{Interner, KeyId, KeyRef};

/// A message's audience, interned: who it reaches.
pub(crate) struct Reach {
    /// The audience as published (for inspection).
    pub(crate) audience: Arc<Audience>,
    users: Box<[KeyId]>,
    roles: Box<[KeyId]>,
    _held: Box<[KeyRef]>,
    /// What its names cost: the audience's copy and the interned one.
    bytes: usize,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reach").field(&self.audience).finish()
    }
}

impl Reach {
    pub(crate) fn new(audience: Arc<Audience>, keys: &Interner) -> Self {
        let users: Vec<KeyRef> = audience.user_names().iter().map(|n| keys.intern(n)).collect();
        let roles: Vec<KeyRef> = audience.role_names().iter().map(|n| keys.intern(n)).collect();
        // Per name: its bytes twice (the audience's and the interner's) and about 64 bytes of
        // bookkeeping (two `Arc<str>` headers, a table slot, an id).
        let names = audience.user_names().iter().chain(audience.role_names());
        let bytes = names.map(|n| 2 * n.len() + 64).sum();
        Self {
            users: users.iter().map(KeyRef::id).collect(),
            roles: roles.iter().map(KeyRef::id).collect(),
            _held: users.into_iter().chain(roles).collect(),
            audience,
            bytes,
        }
    }

    /// What the audience's names cost in memory (shared by every entry that holds this
    /// audience, counted for each as if it were its own: a budget never undercounts).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `who` is in it.
    #[inline]
    pub(crate) fn admits(&self, who: &Who) -> bool {
        self.users.contains(&who.user)
            || (!self.roles.is_empty() && who.seen.roles.iter().any(|r| self.roles.contains(r)))
    }
}

/// A connection's viewer, interned: its user's id inline (the check a one-user audience
/// makes), the rest behind one pointer.
#[derive(Clone)]
pub(crate) struct Who {
    /// The user's id, `KeyId::NONE` when anonymous (which no audience holds).
    user: KeyId,
    seen: Arc<Seen>,
}

struct Seen {
    roles: Box<[KeyId]>,
    viewer: Viewer,
    _held: Box<[KeyRef]>,
}

impl Who {
    pub(crate) fn new(viewer: Viewer, keys: &Interner) -> Self {
        let user = viewer.user_key().map(|u| keys.intern(u));
        let roles: Vec<KeyRef> = viewer.roles().iter().map(|r| keys.intern(r)).collect();
        Self {
            user: user.as_ref().map_or(KeyId::NONE, KeyRef::id),
            seen: Arc::new(Seen {
                roles: roles.iter().map(KeyRef::id).collect(),
                viewer,
                _held: user.into_iter().chain(roles).collect(),
            }),
        }
    }

    /// Anonymous: in no audience.
    pub(crate) fn anonymous() -> Self {
        let seen = Seen { roles: Box::new([]), viewer: Viewer::anonymous(), _held: Box::new([]) };
        Self { user: KeyId::NONE, seen: Arc::new(seen) }
    }

    pub(crate) fn viewer(&self) -> &Viewer {
        &self.seen.viewer
    }
}
