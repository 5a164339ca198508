//! Idempotency keys, one rule for every engine in this crate: a key is honoured for
//! [`IDEMPOTENCY_TTL`] after its first publish; while `capacity` unexpired keys are held, a
//! publish with a new key is refused ([`Error::IdempotencyFull`], saying when to retry) — a
//! key is never forgotten early, so a retry is never published twice. A publisher's key names
//! one request: it is claimed with the request's digest before any of its messages
//! ([`Claims`]); another request under it is refused ([`Error::IdempotencyConflict`]). Memory:
//! one entry per unexpired key (the key's bytes plus about 100 bytes), at most `capacity` of
//! them, in each table.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::publish::Sequenced;

/// How long an idempotency key is honoured after its first publish.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

/// Keys with a value each, remembered for [`IDEMPOTENCY_TTL`], oldest first, at most
/// `capacity` at once.
#[derive(Debug)]
pub(crate) struct Remembered<V = Sequenced> {
    values: HashMap<Arc<str>, V>,
    order: VecDeque<(Instant, Arc<str>)>,
    capacity: usize,
}

impl<V: Clone> Remembered<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { values: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// What a publish with `key` does now: `Some(value)` when the key was recorded (for the
    /// keys of messages: answer that position, publish nothing), `None` when it may be (then
    /// [`Remembered::record`] it), or the refusal when no more keys fit.
    pub(crate) fn check(&mut self, key: &str, now: Instant) -> Result<Option<V>> {
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) <= IDEMPOTENCY_TTL {
                break;
            }
            self.values.remove(old);
            self.order.pop_front();
        }
        if let Some(value) = self.values.get(key) {
            return Ok(Some(value.clone()));
        }
        match self.order.front() {
            Some((oldest, _)) if self.order.len() >= self.capacity => {
                let frees = (*oldest + IDEMPOTENCY_TTL).saturating_duration_since(now);
                Err(Error::IdempotencyFull {
                    capacity: self.capacity,
                    retry_after: frees.as_secs() + 1,
                })
            }
            _ => Ok(None),
        }
    }

    /// Remembers `key` with `value`.
    pub(crate) fn record(&mut self, key: &str, value: V, now: Instant) {
        let key: Arc<str> = Arc::from(key);
        if self.values.insert(key.clone(), value).is_none() {
            self.order.push_back((now, key));
        }
    }
}

/// What a publisher's idempotency key names (`Engine::claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is new: its request is published for the first time.
    New,
    /// The key already names this very request (a retry): each of its messages answers the
    /// position it got the first time, and nothing is published twice.
    Retry,
}

/// The requests publishers' keys name: each key with its request's digest.
pub(crate) type Claims = Remembered<Arc<str>>;

impl Claims {
    /// Claims `key` for the request whose digest is `request` (see `Hub::claim`).
    pub(crate) fn claim(&mut self, key: &str, request: &str, now: Instant) -> Result<Claim> {
        match self.check(key, now)? {
            None => {
                self.record(key, Arc::from(request), now);
                Ok(Claim::New)
            }
            Some(known) if *known == *request => Ok(Claim::Retry),
            Some(_) => Err(Error::IdempotencyConflict { key: key.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Sequenced {
        Sequenced { epoch: Arc::from("e"), seq }
    }

    #[test]
    fn a_key_is_honoured_for_its_window_and_a_full_table_refuses_new_keys() {
        let start = Instant::now();
        let mut keys: Remembered = Remembered::new(2);
        assert_eq!(keys.check("a", start), Ok(None));
        keys.record("a", at(1), start);
        keys.record("b", at(2), start + Duration::from_secs(60));
        let err = keys.check("c", start + Duration::from_secs(100)).unwrap_err();
        assert_eq!(err, Error::IdempotencyFull { capacity: 2, retry_after: 501 });
        assert_eq!(keys.check("a", start + IDEMPOTENCY_TTL), Ok(Some(at(1))), "still honoured");
        let later = start + IDEMPOTENCY_TTL + Duration::from_secs(1);
        assert_eq!(keys.check("c", later), Ok(None), "a expired: room again");
        assert_eq!(keys.check("a", later), Ok(None), "forgotten only after its window");
    }

    #[test]
    fn a_key_names_one_request() {
        let start = Instant::now();
        let mut claims = Claims::new(8);
        assert_eq!(claims.claim("k", "body-1", start), Ok(Claim::New));
        assert_eq!(claims.claim("k", "body-1", start), Ok(Claim::Retry));
        let other = claims.claim("k", "body-2", start);
        assert_eq!(other, Err(Error::IdempotencyConflict { key: "k".into() }));
        let later = start + IDEMPOTENCY_TTL + Duration::from_secs(1);
        assert_eq!(claims.claim("k", "body-2", later), Ok(Claim::New), "after its window");
    }
}
