//! [`Buckets`]: this node's rate limit of each user with sessions here. A token bucket per
//! user, behind a local lock, so checking the limit costs no message on the hot path; the
//! user's actor (on its owner node) sets each node's share of the rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cluster_proto::rate::TokenBucket;
use cluster_proto::UserId;

/// This node's token buckets, one per user with sessions here, with their session count.
pub struct Buckets {
    rate_per_sec: f64,
    burst: f64,
    map: Mutex<HashMap<UserId, (Arc<TokenBucket>, usize)>>,
}

impl Buckets {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate_per_sec,
            burst,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Arc<TokenBucket>, usize)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user's bucket for one more session here.
    pub fn acquire(&self, user: &UserId) -> Arc<TokenBucket> {
        let mut map = self.map();
        let e = map
            .entry(user.clone())
            .or_insert_with(|| (Arc::new(TokenBucket::new(self.rate_per_sec, self.burst)), 0));
        e.1 += 1;
        e.0.clone()
    }

    /// One session of the user here ended; true if it was the last.
    pub fn release(&self, user: &UserId) -> bool {
        let mut map = self.map();
        let Some(e) = map.get_mut(user) else {
            return true;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            map.remove(user);
            return true;
        }
        false
    }

    /// The user has sessions on `nodes` nodes: run its bucket here at that share.
    pub fn set_share(&self, user: &UserId, nodes: u32) {
        if let Some((b, _)) = self.map().get(user) {
            b.set_share(nodes);
        }
    }
}
