//! The room layer's view of the cluster: who is a member (the [`Ring`]), who owns what, and
//! how to reach another node ([`Transport`]).
//!
//! The room layer never names ractor_cluster: the node implements [`Transport`] over it, the
//! in-process simulation over channels, and a single node uses [`Solo`] (a ring of one, no
//! peers). Frames are encoded here, once: a push fanned out to five nodes is serialized once
//! and its bytes copied per node.
//!
//! Calls across nodes always carry a deadline (ractor_cluster has none of its own, and a
//! silent peer would otherwise hold a caller forever); casts are best effort, and what a lost
//! cast can break (a push, a leave) is repaired by the membership change that follows a lost
//! peer: owners drop the peer's sessions and the peer's sessions are told to `resync`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cluster_proto::wire::{self, Cast, Request, Response};
use cluster_proto::{ApiError, ErrorCode};
use futures::future::BoxFuture;

use crate::ring::{room_key, user_key, Ring};

/// Why a frame did not reach a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is not connected")]
    NotConnected(String),
    #[error("node {0} did not answer in time")]
    Timeout(String),
    #[error("frame of {size} bytes is above the cluster frame limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("cluster link failed: {0}")]
    Link(String),
}

/// Moves opaque frames between nodes.
pub trait Transport: Send + Sync + 'static {
    /// Sends a cast frame to `node` (in order with earlier frames to that node).
    fn cast(&self, node: &str, frame: Vec<u8>) -> Result<(), TransportError>;
    /// Sends a call frame to `node` and waits at most `timeout` for its answer.
    fn call(
        &self,
        node: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;
}

/// The transport of a node without peers: every node but this one is unreachable.
pub struct Solo;

impl Transport for Solo {
    fn cast(&self, node: &str, _frame: Vec<u8>) -> Result<(), TransportError> {
        Err(TransportError::NotConnected(node.to_string()))
    }
    fn call(
        &self,
        node: &str,
        _frame: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let node = node.to_string();
        Box::pin(async move { Err(TransportError::NotConnected(node)) })
    }
}

/// Counters shown by `/cluster` (and mirrored as Prometheus metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub cross_node_sent: AtomicU64,
    pub cross_node_received: AtomicU64,
    pub handoffs: AtomicU64,
    pub ring_changes: AtomicU64,
}

/// This node's view of the cluster.
pub struct ClusterView {
    local: Arc<str>,
    ring: RwLock<Arc<Ring>>,
    transport: Arc<dyn Transport>,
    pub counters: Counters,
    /// Interned peer names (rooms keep `Arc<str>` per remote session).
    names: RwLock<HashMap<String, Arc<str>>>,
    /// Gives the current span's W3C `traceparent` (set by the node when it traces).
    traceparent: RwLock<Option<TraceparentFn>>,
}

/// See [`ClusterView::set_traceparent`].
pub type TraceparentFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;

fn moved(what: &str, owner: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RoomMoved,
        format!("{what} is moving to node {owner}; retry"),
    )
}

impl ClusterView {
    pub fn new(local: &str, transport: Arc<dyn Transport>) -> Arc<Self> {
        Arc::new(ClusterView {
            local: Arc::from(local),
            ring: RwLock::new(Arc::new(Ring::new([local]))),
            transport,
            counters: Counters::default(),
            names: RwLock::new(HashMap::new()),
            traceparent: RwLock::new(None),
        })
    }

    /// Installs the function that names the current trace context for calls to other nodes.
    pub fn set_traceparent(&self, f: TraceparentFn) {
        *self.traceparent.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// A node alone.
    pub fn solo(local: &str) -> Arc<Self> {
        Self::new(local, Arc::new(Solo))
    }

    pub fn local(&self) -> &Arc<str> {
        &self.local
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the membership; returns the previous ring. This node is always a member of
    /// its own view.
    pub fn set_members(&self, mut members: Vec<String>) -> Arc<Ring> {
        members.push(self.local.to_string());
        let ring = Arc::new(Ring::new(members));
        self.counters.ring_changes.fetch_add(1, Ordering::Relaxed);
        std::mem::replace(
            &mut *self.ring.write().unwrap_or_else(|p| p.into_inner()),
            ring,
        )
    }

    /// Replaces the membership with `members` only: this node is draining and owns nothing
    /// (with nobody else left it still owns everything, see [`ClusterView::room_owner`]).
    pub fn set_members_without_self(&self, members: Vec<String>) -> Arc<Ring> {
        let ring = Arc::new(Ring::new(members));
        self.counters.ring_changes.fetch_add(1, Ordering::Relaxed);
        std::mem::replace(
            &mut *self.ring.write().unwrap_or_else(|p| p.into_inner()),
            ring,
        )
    }

    /// The interned name of `node`.
    pub fn intern(&self, node: &str) -> Arc<str> {
        if let Some(n) = self
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
        {
            return n.clone();
        }
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node.to_string())
            .or_insert_with(|| Arc::from(node))
            .clone()
    }

    pub fn room_owner(&self, room: &str) -> Arc<str> {
        self.owner_of(&room_key(room))
    }

    pub fn user_owner(&self, user: &str) -> Arc<str> {
        self.owner_of(&user_key(user))
    }

    fn owner_of(&self, key: &str) -> Arc<str> {
        let ring = self.ring();
        match ring.owner(key) {
            Some(o) if o == &*self.local => self.local.clone(),
            Some(o) => self.intern(o),
            None => self.local.clone(),
        }
    }

    pub fn is_local(&self, node: &str) -> bool {
        node == &*self.local
    }

    /// Sends `cast` to each of `nodes`, encoding it once. Unreachable nodes are skipped (and
    /// counted): a lost peer is repaired by the membership change, see the module doc.
    pub fn cast_to<'a>(&self, nodes: impl IntoIterator<Item = &'a str>, cast: Cast) {
        let mut nodes = nodes.into_iter().peekable();
        if nodes.peek().is_none() {
            return;
        }
        let frame = match wire::encode_cast(&self.local, cast) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a cluster cast");
                return;
            }
        };
        for node in nodes {
            match self.transport.cast(node, frame.clone()) {
                Ok(()) => {
                    self.counters
                        .cross_node_sent
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("parley_cluster_messages_sent_total", "kind" => "cast")
                        .increment(1);
                }
                Err(e) => {
                    tracing::debug!(%node, error = %e, "cast not sent");
                    metrics::counter!("parley_cluster_send_failures_total").increment(1);
                }
            }
        }
    }

    pub fn cast(&self, node: &str, cast: Cast) {
        self.cast_to([node], cast)
    }

    /// Calls `node`; every failure of the link is an [`ApiError`] the client may retry.
    pub async fn call(
        &self,
        node: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ApiError> {
        let traceparent = self
            .traceparent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|f| f());
        let frame = wire::encode_call(&self.local, request, traceparent)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let started = Instant::now();
        self.counters
            .cross_node_sent
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("parley_cluster_messages_sent_total", "kind" => "call").increment(1);
        let answer = self.transport.call(node, frame, timeout).await;
        metrics::histogram!("parley_cluster_call_seconds").record(started.elapsed().as_secs_f64());
        match answer {
            Ok(bytes) => wire::decode_response(&bytes).map_err(|e| {
                metrics::counter!("parley_cluster_decode_errors_total").increment(1);
                ApiError::new(
                    ErrorCode::Internal,
                    format!("bad answer from node {node}: {e}"),
                )
            }),
            Err(TransportError::Timeout(n)) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!("node {n} did not answer in time"),
            )),
            Err(TransportError::NotConnected(n)) => Err(moved("the room", &n)),
            Err(e) => Err(ApiError::new(ErrorCode::RoomUnavailable, e.to_string())),
        }
    }

    /// The error for a request that reached a node that does not own its room.
    pub fn not_owner(&self, what: &str, owner: &str) -> ApiError {
        moved(what, owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solo_owns_everything_and_reaches_nobody() {
        let v = ClusterView::solo("a");
        assert_eq!(&*v.room_owner("lobby"), "a");
        assert_eq!(&*v.user_owner("alice"), "a");
        v.set_members(vec!["b".into()]);
        assert_eq!(v.ring().len(), 2);
        let owners: std::collections::HashSet<String> = (0..50)
            .map(|i| v.room_owner(&format!("r{i}")).to_string())
            .collect();
        assert_eq!(owners.len(), 2, "both nodes own rooms");
        v.set_members(vec![]);
        assert_eq!(v.ring().len(), 1, "a node is always in its own view");
    }
}
