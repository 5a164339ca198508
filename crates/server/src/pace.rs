//! Write pacing under load: when the server as a whole writes many frames per second, each
//! connection writes at most once per `MODELCAST_WRITE_COALESCE_MS`, so frames that arrive in
//! between share one write (a write costs a system call and, on the peer's side, TCP work;
//! a frame in an existing write costs its bytes). Idle or lightly loaded servers write every
//! frame at once: the pacing only applies while the rate is above
//! `MODELCAST_WRITE_COALESCE_ABOVE`, and the added latency is at most the budget. Off by
//! default (a budget of 0): it trades latency for CPU, measured in BENCHMARKS.md.
//!
//! The rate is of frames, not writes: coalescing lowers the writes, not the frames, so it does
//! not turn itself off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the frame rate is re-read.
const WINDOW_MS: u64 = 100;

/// The server's write pacing (see the module docs).
#[derive(Debug)]
pub(crate) struct Pace {
    budget: Duration,
    /// Frames per second above which connections are paced.
    above: u64,
    started: Instant,
    window_start_ms: AtomicU64,
    frames: AtomicU64,
    busy: AtomicBool,
}

impl Pace {
    /// The pacing `MODELCAST_WRITE_COALESCE_MS` and `MODELCAST_WRITE_COALESCE_ABOVE` ask for.
    pub(crate) fn of(config: &crate::config::Config) -> Self {
        Self::new(
            Duration::from_millis(config.write_coalesce_ms as u64),
            config.write_coalesce_above as u64,
        )
    }

    /// Pacing with `budget` between a connection's writes while more than `above` frames per
    /// second are written; a zero budget turns it off.
    pub(crate) fn new(budget: Duration, above: u64) -> Self {
        Self {
            budget,
            above,
            started: Instant::now(),
            window_start_ms: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }

    /// Counts a write of `frames` frames; every [`WINDOW_MS`] the rate decides whether the
    /// server is busy.
    pub(crate) fn wrote(&self, frames: usize) {
        if self.budget.is_zero() {
            return;
        }
        let counted = self.frames.fetch_add(frames as u64, Ordering::Relaxed) + frames as u64;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let span = now.saturating_sub(start);
        if span >= WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.frames.store(0, Ordering::Relaxed);
            self.busy.store(counted * 1000 / span > self.above, Ordering::Relaxed);
        }
    }

    /// When a connection that last wrote at `last` may write next: `None` for now (the server
    /// is not busy, or the budget has passed).
    pub(crate) fn hold(&self, last: Option<tokio::time::Instant>) -> Option<tokio::time::Instant> {
        if !self.busy.load(Ordering::Relaxed) {
            return None;
        }
        let due = last? + self.budget;
        (due > tokio::time::Instant::now()).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_busy_server_holds_and_never_past_the_budget() {
        let pace = Pace::new(Duration::from_millis(10), 1000);
        assert_eq!(pace.hold(Some(tokio::time::Instant::now())), None, "not busy yet");
        std::thread::sleep(Duration::from_millis(WINDOW_MS + 5));
        pace.wrote(10_000); // well above 1,000 frames per second over the window
        let now = tokio::time::Instant::now();
        let due = pace.hold(Some(now)).expect("busy: held");
        assert!(due <= now + Duration::from_millis(10));
        assert_eq!(pace.hold(None), None, "a first write is never held");
        let long_ago = now.checked_sub(Duration::from_millis(50)).unwrap_or(now);
        if long_ago < now {
            assert_eq!(pace.hold(Some(long_ago)), None, "the budget has passed");
        }
        std::thread::sleep(Duration::from_millis(WINDOW_MS + 5));
        pace.wrote(1); // quiet again
        assert_eq!(pace.hold(Some(tokio::time::Instant::now())), None);
    }

    #[test]
    fn a_zero_budget_is_off() {
        let pace = Pace::new(Duration::ZERO, 0);
        pace.wrote(1_000_000);
        assert_eq!(pace.hold(Some(tokio::time::Instant::now())), None);
    }
}
