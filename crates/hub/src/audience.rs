//! [`Audience`] and [`Viewer`]: who a message is for, and who a connection is. A leaf module.
//!
//! A message without an audience goes to every subscriber its filter passes. A message with one
//! goes only to the connections whose viewer is one of its users or has one of its roles; an
//! anonymous viewer (no token) is in no audience. The audience is part of the message's state
//! identity: the same state key under two audiences is two keys (alice's and bob's download of
//! one model never overwrite each other), which [`Audience::scope`] makes by construction.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A name (as [`crate::Key`], which `publish.rs` defines for keys; spelled out here so this
/// leaf imports nothing of the crate).
type Key = Arc<str>;

/// Who a message is for: the connections whose viewer's user is in `users` or who hold one of
/// `roles`. Sorted and without duplicates, so two audiences with the same members are equal
/// (and scope a key the same way on every node).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Audience {
    #[serde(rename = "u", default, skip_serializing_if = "Vec::is_empty")]
    users: Vec<Key>,
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<Key>,
}

fn canonical<S: Into<Key>>(names: impl IntoIterator<Item = S>) -> Vec<Key> {
    let mut names: Vec<Key> = names.into_iter().map(Into::into).collect();
    names.sort();
    names.dedup();
    names
}

impl Audience {
    /// The audience of `users` and `roles` (order and repeats do not matter). With both
    /// empty it admits nobody; the server refuses such a publish before it gets here.
    pub fn new<U: Into<Key>, R: Into<Key>>(
        users: impl IntoIterator<Item = U>,
        roles: impl IntoIterator<Item = R>,
    ) -> Self {
        Self { users: canonical(users), roles: canonical(roles) }
    }

    /// The audience of these users.
    pub fn users<U: Into<Key>>(users: impl IntoIterator<Item = U>) -> Self {
        Self::new(users, std::iter::empty::<Key>())
    }

    /// The audience of whoever holds one of these roles.
    pub fn roles<R: Into<Key>>(roles: impl IntoIterator<Item = R>) -> Self {
        Self::new(std::iter::empty::<Key>(), roles)
    }

    /// Its users, sorted.
    pub fn user_names(&self) -> &[Key] {
        &self.users
    }

    /// Its roles, sorted.
    pub fn role_names(&self) -> &[Key] {
        &self.roles
    }

    /// Whether `viewer` is in it. Per subscriber on the fan-out path: a comparison of short
    /// strings per member, no allocation.
    pub fn admits(&self, viewer: &Viewer) -> bool {
        viewer.user.as_ref().is_some_and(|user| self.users.contains(user))
            || viewer.roles.iter().any(|role| self.roles.contains(role))
    }

    /// `key` as a state key of this audience: `key`, a NUL, then the audience as compact JSON
    /// (which never holds a raw NUL, so [`unscoped`] finds the split). Equal audiences scope
    /// equally on every node and in the engine's store.
    fn scope(&self, key: &str) -> Key {
        let members = serde_json::to_string(self).expect("an audience always serializes");
        Key::from(format!("{key}\0{members}"))
    }
}

/// The state key the hub keeps for a publisher's `key` and `audience`: one key per (key,
/// audience), and no two pairs share one, whatever a publisher puts in a key.
/// - With an audience: `key\0{json}` (it ends with `}`).
/// - Without, a key holding no NUL is itself; one that holds a NUL gets a NUL appended (it
///   ends with NUL), so `"m\0{\"u\":[\"alice\"]}"` published to everyone can never be alice's
///   `m`.
pub(crate) fn state_key(key: &Key, audience: Option<&Audience>) -> Key {
    match audience {
        Some(audience) => audience.scope(key),
        None if key.contains('\0') => Key::from(format!("{key}\0")),
        None => key.clone(),
    }
}
impl From<modelcast_protocol::Audience> for Audience {
    fn from(audience: modelcast_protocol::Audience) -> Self {
        Self::new(audience.users, audience.roles)
    }
}

/// The key as the publisher named it, from the hub's [`state_key`] (of an audience if
/// `scoped`): for `state_cleared` and inspection (subscribers never see an audience's members).
pub(crate) fn unscoped(key: &str, scoped: bool) -> &str {
    match scoped {
        true => key.rsplit_once('\0').map_or(key, |(plain, _)| plain),
        false if key.contains('\0') => key.strip_suffix('\0').unwrap_or(key),
        false => key,
    }
}

/// Who a connection is, for audiences: its token's user and roles. The default is anonymous
/// (no token), which receives only messages without an audience.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    user: Option<Key>,
    roles: Vec<Key>,
}

impl Viewer {
    /// The viewer `user` holding `roles`.
    pub fn new<R: Into<Key>>(user: impl Into<Key>, roles: impl IntoIterator<Item = R>) -> Self {
        Self { user: Some(user.into()), roles: canonical(roles) }
    }

    /// A connection without a token.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// The user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub(crate) fn user_key(&self) -> Option<&Key> {
        self.user.as_ref()
    }

    /// The roles, sorted.
    pub fn roles(&self) -> &[Key] {
        &self.roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_canonical_and_admission_is_by_user_or_role() {
        let a = Audience::new(["bob", "alice", "bob"], ["ops"]);
        assert_eq!(a, Audience::new(["alice", "bob"], ["ops"]));
        assert!(a.admits(&Viewer::new("alice", Vec::<Key>::new())));
        assert!(a.admits(&Viewer::new("carol", ["user", "ops"])));
        assert!(!a.admits(&Viewer::new("carol", ["user"])));
        assert!(!a.admits(&Viewer::anonymous()));
        assert!(
            !Audience::new(Vec::<Key>::new(), Vec::<Key>::new()).admits(&Viewer::new("x", ["y"]))
        );
    }

    #[test]
    fn state_keys_are_one_per_key_and_audience_and_unscope_exactly() {
        let alice = Audience::users(["alice"]);
        let bob = Audience::users(["bob"]);
        let audiences = [None, Some(&alice), Some(&bob)];
        // Keys a publisher could craft to meet another pair's state key.
        let keys: Vec<Key> = ["m", "", "m\0", "m\0\0", "m\0{\"u\":[\"alice\"]}", "\0{}"]
            .into_iter()
            .map(Key::from)
            .collect();
        let mut seen = std::collections::HashMap::new();
        for key in &keys {
            for audience in audiences {
                let stored = state_key(key, audience);
                assert_eq!(unscoped(&stored, audience.is_some()), &**key);
                if let Some(other) = seen.insert(stored.clone(), (key.clone(), audience)) {
                    panic!("{stored:?} is both {other:?} and {:?}", (key, audience));
                }
            }
        }
    }
}
