//! The ScyllaDB / Apache Cassandra history store ([`ScyllaStore`]), on the `scylla` 1.x driver.
//!
//! Why a second store: the embedded store keeps a room's history on the node that owns the
//! room; in a cluster that history must survive the node and follow the room to its next owner.
//! A CQL cluster gives replicated, tunable-consistency storage whose data model (a partition per
//! room and bucket, clustered by seq) matches "the newest page of a room" exactly.
//!
//! * [`config`]: [`ScyllaConfig`] (contact points, keyspace, replication, consistency, TLS...).
//! * [`schema`]: tables, bucket size and why, [`migrate`] (`parley migrate`).
//! * `writer`, `group` and `write_ops`: the bounded queue, a lane per room, group commit,
//!   the two-phase commit of `last_seq`, the gap-free seq rule.
//! * `fence`: room claims, the fenced commit and the epoch-derived row timestamps (the
//!   ownership fence: only the latest owner's writes become visible).
//! * `reads`: history pages across buckets, receipts, dedupe look-up.
//! * [`retry`] and [`breaker`]: jittered retries of transient errors, the circuit breaker.
//!
//! Every request is a prepared statement at the configured consistency (default LOCAL_QUORUM);
//! a write's ticket resolves `Ok` only after the cluster acknowledged it at that level. When the
//! cluster is unreachable calls fail with [`StoreError::Unavailable`] (the node reports
//! `store_unavailable`), quickly once the breaker is open, and the store recovers by itself
//! when the cluster is back. See `docs/storage.md`.

pub mod breaker;
pub mod config;
mod core;
pub mod error;
mod fence;
mod group;
mod reads;
pub mod retry;
pub mod schema;
mod session;
mod write_ops;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use cluster_proto::{ChatMessage, RoomId, UserId};
use tokio::sync::{mpsc, oneshot};

pub use self::config::{
    BreakerOptions, ConsistencyLevel, Replication, RetryOptions, ScyllaConfig,
    SerialConsistencyLevel, TlsOptions, WriteMode,
};
pub use self::error::ScyllaError;
pub use self::schema::{migrate, MigrationReport, SCHEMA_VERSION};

use self::breaker::{Admit, Breaker};
use self::core::{Core, Statements};
use self::retry::Retrier;
use self::writer::{Job, Writer, QUEUE_NAME};
use crate::store::{
    message_room, Claim, HistoryStore, Receipt, RoomMeta, StoreError, WriteOp, WriteTicket,
};

/// The CQL history store. Create it with [`ScyllaStore::connect`] on the node's multi-thread
/// tokio runtime; share the returned `Arc`.
pub struct ScyllaStore {
    core: Arc<Core>,
    queue: mpsc::Sender<Job>,
    closed: AtomicBool,
}

fn breaker_open() -> StoreError {
    StoreError::Unavailable("scylla circuit breaker open".into())
}

impl ScyllaStore {
    /// Connects, creates or migrates the schema (unless `migrate_on_start` is false, in which
    /// case the keyspace must be at [`SCHEMA_VERSION`]), prepares every statement and starts the
    /// writer task. Fails when the cluster cannot be reached: the caller decides whether to
    /// retry or to start without history.
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Arc<Self>, ScyllaError> {
        let session = session::open_session(cfg).await?;
        let bucket_bits = if cfg.migrate_on_start {
            schema::migrate_with(&session, cfg).await?.bucket_bits
        } else {
            let v = schema::recorded_version(&session, &cfg.keyspace).await?;
            if v != SCHEMA_VERSION {
                return Err(ScyllaError::Incompatible(format!(
                    "keyspace {} is at schema version {v}, this build needs {SCHEMA_VERSION}: run `parley migrate`",
                    cfg.keyspace
                )));
            }
            schema::read_bucket_bits(&session, &cfg.keyspace).await?
        };
        if bucket_bits != cfg.bucket_bits {
            tracing::warn!(
                keyspace = %cfg.keyspace,
                recorded = bucket_bits,
                configured = cfg.bucket_bits,
                "the keyspace keeps the bucket_bits it was created with"
            );
        }
        let st =
            Statements::prepare(&session, &cfg.keyspace, cfg.serial_consistency.into()).await?;
        let breaker = Arc::new(Breaker::new(
            cfg.breaker.failure_threshold,
            cfg.breaker.cool_down,
        ));
        let retrier = Retrier::new(cfg.retry.clone(), breaker);
        let core = Core::new(session, st, retrier, bucket_bits, cfg);
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        tokio::spawn(Writer::new(core.clone(), cfg.max_round_calls, cfg.queue_capacity).run(rx));
        tracing::info!(keyspace = %cfg.keyspace, bucket_bits, "scylla history store ready");
        Ok(Arc::new(Self {
            core,
            queue: tx,
            closed: AtomicBool::new(false),
        }))
    }

    /// The keyspace's `bucket = seq >> bucket_bits`.
    pub fn bucket_bits(&self) -> u8 {
        self.core.bucket_bits
    }

    /// The configuration the store was started with.
    pub fn config(&self) -> &ScyllaConfig {
        &self.core.cfg
    }

    /// The committed seq of the message `user` sent to `room` with `client_msg_id`, while the
    /// dedupe window (`dedupe_ttl`) remembers it: a resend can be answered with the original
    /// seq instead of being stored twice.
    pub async fn find_client_msg(
        &self,
        room: &RoomId,
        user: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.guarded(self.core.find_client_msg(room, user, client_msg_id))
            .await
    }

    /// Test hook: the claim renews its epoch after `groups` groups instead of 2^24, so that
    /// the renewal path can be exercised. Not for production use.
    #[doc(hidden)]
    pub fn set_groups_per_epoch_for_tests(&self, groups: u64) {
        self.core.set_max_counter(groups.saturating_sub(1));
    }

    /// Runs a read unless the breaker is open; a probe's outcome is recorded by the retrier.
    async fn guarded<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let breaker = self.core.retrier.breaker();
        match breaker.admit() {
            Admit::Reject => Err(breaker_open()),
            Admit::Go => read.await,
            Admit::Probe => {
                let r = read.await;
                // A read that sent no request leaves the probe slot free again.
                breaker.release_probe();
                r
            }
        }
    }
}

#[async_trait]
impl HistoryStore for ScyllaStore {
    fn name(&self) -> &'static str {
        "scylla"
    }

    fn submit(&self, ops: Vec<WriteOp>) -> WriteTicket {
        if self.closed.load(Ordering::Acquire) {
            return WriteTicket::ready(Err(StoreError::Closed));
        }
        if let Err(e) = message_room(&ops) {
            return WriteTicket::ready(Err(e));
        }
        if self.core.retrier.breaker().is_open() {
            metrics::counter!("parley_store_rejected_total", "reason" => "breaker").increment(1);
            return WriteTicket::ready(Err(breaker_open()));
        }
        let (reply, rx) = oneshot::channel();
        let job = Job::Write {
            ops,
            reply,
            queued: Instant::now(),
        };
        match self.queue.try_send(job) {
            Ok(()) => WriteTicket::pending(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("parley_store_queue_full_total").increment(1);
                WriteTicket::ready(Err(StoreError::Unavailable(format!(
                    "{QUEUE_NAME} queue is full"
                ))))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                WriteTicket::ready(Err(StoreError::Closed))
            }
        }
    }

    async fn claim(&self, room: &RoomId) -> Result<Claim, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        crate::store::ask(&self.queue, |reply| Job::Claim {
            room: room.clone(),
            reply,
        })
        .await
    }

    async fn room_meta(&self, room: &RoomId) -> Result<RoomMeta, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        crate::store::ask(&self.queue, |reply| Job::Meta {
            room: room.clone(),
            reply,
        })
        .await
    }

    async fn latest(&self, room: &RoomId, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        self.guarded(self.core.read_newest(room, u64::MAX, limit))
            .await
    }

    async fn before(
        &self,
        room: &RoomId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if before_seq <= 1 {
            return Ok(Vec::new());
        }
        self.guarded(self.core.read_newest(room, before_seq - 1, limit))
            .await
    }

    async fn after(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if after_seq == u64::MAX {
            return Ok(Vec::new());
        }
        self.guarded(self.core.read_oldest(room, after_seq + 1, limit))
            .await
    }

    async fn receipts(&self, room: &RoomId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        self.guarded(self.core.read_receipts(room, limit)).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) || self.queue.is_closed() {
            return Err(StoreError::Closed);
        }
        self.guarded(async { self.core.probe().await.map_err(StoreError::from) })
            .await
    }

    async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Job::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
