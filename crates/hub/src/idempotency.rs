//! Idempotency keys, one rule for every engine in this crate: a key is honoured for
//! [`IDEMPOTENCY_TTL`] after its first publish; while `capacity` unexpired keys are held, a
//! publish with a new key is refused ([`Error::IdempotencyFull`], saying when to retry) — a
//! key is never forgotten early, so a retry is never published twice. Memory: one entry per
//! unexpired key (the key's bytes plus about 100 bytes), at most `capacity` of them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::publish::Sequenced;

/// How long an idempotency key is honoured after its first publish.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

/// The keys an engine has sequenced, with where, oldest first.
#[derive(Debug)]
pub(crate) struct Remembered {
    seqs: HashMap<Arc<str>, Sequenced>,
    order: VecDeque<(Instant, Arc<str>)>,
    capacity: usize,
}

impl Remembered {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { seqs: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// What a publish with `key` does now: `Some(at)` when the key was published (answer that
    /// position, publish nothing), `None` when it may be published (then
    /// [`Remembered::record`] it), or the refusal when no more keys fit.
    pub(crate) fn check(&mut self, key: &str, now: Instant) -> Result<Option<Sequenced>> {
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) <= IDEMPOTENCY_TTL {
                break;
            }
            self.seqs.remove(old);
            self.order.pop_front();
        }
        if let Some(at) = self.seqs.get(key) {
            return Ok(Some(at.clone()));
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

    /// Remembers that `key` was published at `at`.
    pub(crate) fn record(&mut self, key: &str, at: Sequenced, now: Instant) {
        let key: Arc<str> = Arc::from(key);
        if self.seqs.insert(key.clone(), at).is_none() {
            self.order.push_back((now, key));
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
        let mut keys = Remembered::new(2);
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
}
