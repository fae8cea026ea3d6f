//! The circuit breaker in front of the CQL store.
//!
//! Why: when the cluster is down every request would otherwise wait for its time-out and all its
//! retries, so senders would learn `store_unavailable` only after seconds, queues would fill and
//! the node would keep hammering a cluster that is trying to come back. After
//! `failure_threshold` consecutive failed requests the breaker *opens*: calls fail at once with
//! `Unavailable` for `cool_down`. Then it lets exactly one *probe* through (half-open); its
//! success closes the breaker, its failure opens it for another `cool_down`.
//!
//! Only transient failures count (see [`super::error::is_transient`]); a request the server
//! rejects as invalid says nothing about the server's health.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Go,
    /// Half-open and this caller is the probe: go ahead, and report the outcome.
    Probe,
    /// Open (or another probe is running): fail fast.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// A consecutive-failure circuit breaker. Cheap: one uncontended mutex per call.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to run a request. A `Probe` answer must be followed by `success` or `failure`.
    pub fn admit(&self) -> Admit {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Admit::Go,
            State::HalfOpen => Admit::Reject,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                Admit::Probe
            }
            State::Open { .. } => Admit::Reject,
        }
    }

    /// True while calls should fail fast (open and cooling down, or a probe is running).
    pub fn is_open(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } => false,
            State::HalfOpen => true,
            State::Open { until } => Instant::now() < until,
        }
    }

    /// Ends a probe that reported neither outcome (it sent no request): the next caller
    /// becomes the probe.
    pub fn release_probe(&self) {
        let mut s = self.lock();
        if *s == State::HalfOpen {
            *s = State::Open {
                until: Instant::now(),
            };
        }
    }

    pub fn success(&self) {
        let mut s = self.lock();
        if *s != (State::Closed { failures: 0 }) {
            if !matches!(*s, State::Closed { .. }) {
                tracing::info!("scylla circuit breaker closed");
                metrics::gauge!("parley_store_breaker_open").set(0.0);
            }
            *s = State::Closed { failures: 0 };
        }
    }

    pub fn failure(&self) {
        let mut s = self.lock();
        let open = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen => true,
            // Already open: a request admitted before the breaker opened failed late.
            State::Open { .. } => false,
        };
        if open {
            *s = State::Open {
                until: Instant::now() + self.cool_down,
            };
            tracing::warn!(cool_down = ?self.cool_down, "scylla circuit breaker opened");
            metrics::gauge!("parley_store_breaker_open").set(1.0);
            metrics::counter!("parley_store_breaker_opened_total").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert_eq!(b.admit(), Admit::Go);
        b.failure();
        b.failure();
        b.success(); // resets the count
        b.failure();
        b.failure();
        assert!(!b.is_open());
        b.failure();
        assert!(b.is_open());
        assert_eq!(b.admit(), Admit::Reject);
        std::thread::sleep(Duration::from_millis(40));
        assert!(!b.is_open());
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Reject, "only one probe at a time");
        b.failure();
        assert!(b.is_open(), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admit::Probe);
        b.success();
        assert_eq!(b.admit(), Admit::Go);
        assert!(!b.is_open());
    }
}
