//! Retries with full-jitter exponential backoff, tied to the circuit breaker.
//!
//! Every statement this store sends is idempotent (upserts of fixed values, receipts written
//! with `USING TIMESTAMP seq`), so repeating a request whose outcome is unknown is safe. The
//! jitter spreads the retries of many writers so a recovering node is not hit in lock-step.
//! A request whose retries are exhausted counts as one breaker failure (a request the server
//! rejected counts as a success: the server is up); while the breaker is
//! open no further retries are made, so a round of writes fails quickly when the cluster is down.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use scylla::errors::ExecutionError;

use super::breaker::Breaker;
use super::config::RetryOptions;
use super::error::{is_transient, ScyllaError};

/// Runs requests with retries and reports their outcome to the breaker.
#[derive(Debug, Clone)]
pub struct Retrier {
    opts: RetryOptions,
    breaker: Arc<Breaker>,
}

impl Retrier {
    pub fn new(opts: RetryOptions, breaker: Arc<Breaker>) -> Self {
        Self { opts, breaker }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Runs `f` until it succeeds, fails for good, or its attempts are used up.
    pub async fn run<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T, ScyllaError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ExecutionError>>,
    {
        let max = self.opts.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => {
                    self.breaker.success();
                    return Ok(v);
                }
                Err(e) if !is_transient(&e) => {
                    // The server answered: it is up, whatever it thought of the request.
                    self.breaker.success();
                    metrics::counter!("parley_store_errors_total", "kind" => "permanent")
                        .increment(1);
                    return Err(ScyllaError::query(what, e));
                }
                Err(e) => {
                    if attempt >= max || self.breaker.is_open() {
                        metrics::counter!("parley_store_errors_total", "kind" => "transient")
                            .increment(1);
                        self.breaker.failure();
                        return Err(ScyllaError::query(what, e));
                    }
                    metrics::counter!("parley_store_retries_total").increment(1);
                    tracing::debug!(what, attempt, error = %e, "retrying CQL request");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Full jitter: a uniform delay in `0..=min(max_delay, base_delay * 2^(attempt-1))`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .opts
            .base_delay
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.opts.max_delay);
        let nanos = exp.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(random_u64() % (nanos + 1))
    }
}

/// A random number from the std hasher's per-instance random keys: enough for jitter, and no
/// extra dependency.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let r = Retrier::new(
            RetryOptions {
                max_attempts: 10,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
            },
            Arc::new(Breaker::new(5, Duration::from_secs(1))),
        );
        let mut distinct = std::collections::HashSet::new();
        for attempt in 1..=20 {
            let d = r.backoff(attempt);
            let cap = Duration::from_millis(10 * (1u64 << (attempt - 1).min(16)))
                .min(Duration::from_millis(50));
            assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 5, "delays should vary");
    }
}
