//! [`Revocations`]: the users whose tokens issued before a time are refused
//! (`POST /api/revoke`), each until every token it refuses has expired. Bounded
//! (`MODELCAST_MAX_REVOCATIONS`: a full set refuses a new revocation, never forgets one early).
//! On a cluster every node holds the same set: loaded from Redis at start, told of each new one
//! through the roster's command stream (`roster.rs`). A leaf: [`crate::security::Security`]
//! asks it on every token it verifies.

use std::collections::HashMap;
use std::sync::Mutex;

/// One user's revocation, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Revoked {
    /// Tokens whose `iat` is before this (or that have no `iat`) are refused.
    pub(crate) issued_before: u64,
    /// The revocation is forgotten after this: every token it refuses has expired.
    pub(crate) until: u64,
}

/// The set is full: nothing was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// The revocations this node holds.
#[derive(Debug)]
pub(crate) struct Revocations {
    entries: Mutex<HashMap<String, Revoked>>,
    max: usize,
}

impl Revocations {
    /// An empty set holding at most `max`.
    pub(crate) fn new(max: usize) -> Self {
        Self { entries: Mutex::default(), max: max.max(1) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Revoked>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a token of `user` issued at `issued_at` (its `iat`) is refused at `now`.
    pub(crate) fn refuses(&self, user: &str, issued_at: Option<u64>, now: u64) -> bool {
        let entries = self.entries();
        let Some(revoked) = entries.get(user) else { return false };
        revoked.until > now && issued_at.is_none_or(|iat| iat < revoked.issued_before)
    }

    /// Revokes `user`'s tokens as `revoked` says (a later `issued_before` or `until` than one
    /// held widens it; a narrower one leaves it). Expired entries are dropped first; returns
    /// the users dropped (for the shared copy), or [`Full`].
    pub(crate) fn insert(
        &self,
        user: &str,
        revoked: Revoked,
        now: u64,
    ) -> Result<Vec<String>, Full> {
        let mut entries = self.entries();
        let expired: Vec<String> =
            entries.iter().filter(|(_, r)| r.until <= now).map(|(u, _)| u.clone()).collect();
        for user in &expired {
            entries.remove(user);
        }
        if !entries.contains_key(user) && entries.len() >= self.max {
            return Err(Full);
        }
        merge(&mut entries, user, revoked);
        Ok(expired)
    }

    /// Takes another node's revocation (or one loaded at start) as it is: the set was bounded
    /// where it was made.
    pub(crate) fn apply(&self, user: &str, revoked: Revoked, now: u64) {
        if revoked.until > now {
            merge(&mut self.entries(), user, revoked);
        }
    }
}

fn merge(entries: &mut HashMap<String, Revoked>, user: &str, revoked: Revoked) {
    let entry = entries.entry(user.to_owned()).or_insert(revoked);
    entry.issued_before = entry.issued_before.max(revoked.issued_before);
    entry.until = entry.until.max(revoked.until);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_older_tokens_until_it_expires_and_stays_bounded() {
        let set = Revocations::new(2);
        let revoked = Revoked { issued_before: 100, until: 200 };
        assert_eq!(set.insert("alice", revoked, 50), Ok(vec![]));
        assert!(set.refuses("alice", Some(99), 150));
        assert!(set.refuses("alice", None, 150), "no iat: cannot be shown newer");
        assert!(!set.refuses("alice", Some(100), 150), "issued at the time: a new token");
        assert!(!set.refuses("alice", Some(99), 200), "expired revocation");
        assert!(!set.refuses("bob", Some(1), 150));
        assert_eq!(set.insert("bob", revoked, 50), Ok(vec![]));
        assert_eq!(set.insert("carol", revoked, 50), Err(Full), "full: refused, none forgotten");
        assert!(set.refuses("alice", Some(1), 60));
        let dropped = set.insert("carol", revoked, 250).map(|mut d| {
            d.sort();
            d
        });
        assert_eq!(dropped, Ok(vec!["alice".to_owned(), "bob".to_owned()]));
        assert_eq!(set.insert("dave", revoked, 250), Ok(vec!["carol".to_owned()]), "room again");
    }

    #[test]
    fn a_second_revocation_widens_never_narrows() {
        let set = Revocations::new(10);
        set.apply("alice", Revoked { issued_before: 100, until: 200 }, 0);
        set.apply("alice", Revoked { issued_before: 50, until: 300 }, 0);
        assert!(set.refuses("alice", Some(99), 250));
        set.apply("dave", Revoked { issued_before: 50, until: 10 }, 20);
        assert!(!set.refuses("dave", Some(1), 5), "an expired one is not taken");
    }
}
