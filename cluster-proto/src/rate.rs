//! A token bucket, shared by all sessions of one user on a node.
//!
//! The user's actor creates it and hands it to every session of the user, so the limit is per
//! user, not per connection, and checking it costs one uncontended lock, not a message hop.

use std::sync::Mutex;
use std::time::Instant;

/// Refills `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate_per_sec.max(0.0),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> bool {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (tokens, last) = *st;
        let refilled = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate)
            .min(self.burst);
        if refilled >= 1.0 {
            *st = (refilled - 1.0, now);
            true
        } else {
            *st = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let b = TokenBucket::new(10.0, 3.0);
        let t0 = Instant::now();
        assert!(b.try_acquire_at(t0));
        assert!(b.try_acquire_at(t0));
        assert!(b.try_acquire_at(t0));
        assert!(!b.try_acquire_at(t0));
        // 10/s: one token after 100 ms, not before.
        assert!(!b.try_acquire_at(t0 + Duration::from_millis(50)));
        assert!(b.try_acquire_at(t0 + Duration::from_millis(101)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.try_acquire_at(later)).count(), 3);
    }
}
