//! A token bucket, shared by all sessions of one user on a node.
//!
//! The node hands the same bucket to every session of the user, so the limit is per user, not
//! per connection, and checking it costs one uncontended lock, not a message hop. In a cluster
//! the user's actor tells each node how many nodes hold sessions of the user, and each node's
//! bucket runs at that share of the rate and burst ([`TokenBucket::set_share`]), so the user's
//! total stays at the configured limit.

use std::sync::Mutex;
use std::time::Instant;

/// Refills `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// (tokens, last refill, share divisor).
    state: Mutex<(f64, Instant, f64)>,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate_per_sec.max(0.0),
            burst,
            state: Mutex::new((burst, Instant::now(), 1.0)),
        }
    }

    /// Runs the bucket at `1 / nodes` of its rate and burst (`nodes` ≥ 1): the user has
    /// sessions on that many nodes, each with a bucket of its own.
    pub fn set_share(&self, nodes: u32) {
        let div = f64::from(nodes.max(1));
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.2 = div;
        st.0 = st.0.min((self.burst / div).max(1.0));
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
        let (tokens, last, div) = *st;
        let burst = (self.burst / div).max(1.0);
        let refilled = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.rate / div)
            .min(burst);
        if refilled >= 1.0 {
            *st = (refilled - 1.0, now, div);
            true
        } else {
            *st = (refilled, now, div);
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

    #[test]
    fn a_share_divides_rate_and_burst() {
        let b = TokenBucket::new(10.0, 6.0);
        b.set_share(2);
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| b.try_acquire_at(t0)).count(), 3);
        // 5/s now: one token after 200 ms, not after 150.
        assert!(!b.try_acquire_at(t0 + Duration::from_millis(150)));
        assert!(b.try_acquire_at(t0 + Duration::from_millis(201)));
        b.set_share(1);
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.try_acquire_at(later)).count(), 6);
    }
}
