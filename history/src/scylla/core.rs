//! The state shared by the store's readers and its writer task: the session, every prepared
//! statement, the retrier (with the breaker) and the keyspace's bucket size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::SerialConsistency;
use tokio::sync::Semaphore;

use super::config::{ScyllaConfig, WriteMode};
use super::error::ScyllaError;
use super::retry::Retrier;

/// Columns of `messages`, in the order of [`super::reads::MessageRow`].
pub(crate) const MESSAGE_COLUMNS: &str =
    "room_id, bucket, seq, msg_id, user_id, username, body, attachments, sent_at, client_msg_id";

/// Most groups a claim writes before its epoch is renewed: the low 24 bits of a write
/// timestamp (see [`super::fence`]).
pub(crate) const MAX_COUNTER: u64 = (1 << super::fence::COUNTER_BITS) - 1;

/// Every statement the store runs, prepared once at start.
pub(crate) struct Statements {
    /// `USING TIMESTAMP ?`: the epoch-derived timestamp of the writing claim.
    pub insert_message: PreparedStatement,
    /// `USING TTL ? AND TIMESTAMP ?`, like `insert_message`.
    pub insert_client_msg: PreparedStatement,
    /// LWT: `SET last_seq = ? ... IF epoch = ?`, the fenced commit.
    pub commit_last_seq: PreparedStatement,
    /// LWT: `SET epoch = ? ... IF epoch = ? AND last_seq = ?`, a claim.
    pub claim_epoch: PreparedStatement,
    /// `epoch, last_seq, WRITETIME(last_seq)`: a claim's first guess and its clock check.
    pub get_claim_state: PreparedStatement,
    /// LWT: `SET epoch = ? ... IF epoch = ?`, an owner renewing its epoch.
    pub renew_epoch: PreparedStatement,
    pub get_last_seq: PreparedStatement,
    pub set_receipt: PreparedStatement,
    pub get_receipts: PreparedStatement,
    /// Newest first: `seq <= ?` in one bucket.
    pub select_desc: PreparedStatement,
    /// Oldest first: `? <= seq <= ?` in one bucket.
    pub select_asc: PreparedStatement,
    pub get_message: PreparedStatement,
    pub get_client_msg: PreparedStatement,
    /// A cheap request for health checks and breaker probes.
    pub probe: PreparedStatement,
}

impl Statements {
    pub async fn prepare(
        session: &Session,
        ks: &str,
        serial: SerialConsistency,
    ) -> Result<Self, ScyllaError> {
        let p = |cql: String, idempotent: bool| async move {
            let mut st =
                session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|source| ScyllaError::Prepare {
                        statement: cql.clone(),
                        source: Box::new(source),
                    })?;
            // Every write here is an upsert of fixed values: safe for the driver to retry too.
            st.set_is_idempotent(idempotent);
            // Used by the lightweight transactions (the reads and plain writes ignore it).
            st.set_serial_consistency(Some(serial));
            Ok::<_, ScyllaError>(st)
        };
        Ok(Self {
            insert_message: p(
                format!(
                    "INSERT INTO {ks}.messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     USING TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            insert_client_msg: p(
                format!(
                    "INSERT INTO {ks}.client_msg_ids (room_id, bucket, user_id, client_msg_id, seq) \
                     VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            // Repeating it is safe: the condition is on the epoch, the value fixed (see fence.rs
            // for what a "not applied" after a timed-out attempt means).
            commit_last_seq: p(
                format!("UPDATE {ks}.room_state SET last_seq = ? WHERE room_id = ? IF epoch = ?"),
                true,
            )
            .await?,
            // Not idempotent: a repeat may find its own first attempt and claim again.
            claim_epoch: p(
                format!(
                    "UPDATE {ks}.room_state SET epoch = ? WHERE room_id = ? \
                     IF epoch = ? AND last_seq = ?"
                ),
                false,
            )
            .await?,
            get_claim_state: p(
                format!(
                    "SELECT epoch, last_seq, WRITETIME(last_seq) FROM {ks}.room_state \
                     WHERE room_id = ?"
                ),
                true,
            )
            .await?,
            renew_epoch: p(
                format!("UPDATE {ks}.room_state SET epoch = ? WHERE room_id = ? IF epoch = ?"),
                false,
            )
            .await?,
            get_last_seq: p(
                format!("SELECT last_seq FROM {ks}.room_state WHERE room_id = ?"),
                true,
            )
            .await?,
            set_receipt: p(
                format!(
                    "UPDATE {ks}.receipts USING TIMESTAMP ? SET seq = ? \
                     WHERE room_id = ? AND user_id = ?"
                ),
                true,
            )
            .await?,
            get_receipts: p(
                format!("SELECT user_id, seq FROM {ks}.receipts WHERE room_id = ? LIMIT ?"),
                true,
            )
            .await?,
            select_desc: p(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE room_id = ? AND bucket = ? AND seq <= ? LIMIT ?"
                ),
                true,
            )
            .await?,
            select_asc: p(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE room_id = ? AND bucket = ? AND seq >= ? AND seq <= ? \
                     ORDER BY seq ASC LIMIT ?"
                ),
                true,
            )
            .await?,
            get_message: p(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE room_id = ? AND bucket = ? AND seq = ?"
                ),
                true,
            )
            .await?,
            get_client_msg: p(
                format!(
                    "SELECT seq FROM {ks}.client_msg_ids \
                     WHERE room_id = ? AND bucket = ? AND user_id = ? AND client_msg_id = ?"
                ),
                true,
            )
            .await?,
            probe: p(
                "SELECT release_version FROM system.local WHERE key = 'local'".into(),
                true,
            )
            .await?,
        })
    }
}

/// Shared by [`super::ScyllaStore`] and its writer task.
pub(crate) struct Core {
    pub session: Session,
    pub st: Statements,
    pub retrier: Retrier,
    /// `bucket = seq >> bucket_bits`, as recorded in the keyspace.
    pub bucket_bits: u8,
    /// Bounds the CQL write requests in flight (`write_concurrency`).
    pub inflight: Semaphore,
    pub write_mode: WriteMode,
    pub batch_max_bytes: usize,
    /// TTL of dedupe rows, seconds.
    pub dedupe_ttl_secs: i32,
    /// Groups written per epoch before it is renewed ([`MAX_COUNTER`]; lower in tests).
    max_counter: AtomicU64,
    pub cfg: ScyllaConfig,
}

impl Core {
    pub fn new(
        session: Session,
        st: Statements,
        retrier: Retrier,
        bucket_bits: u8,
        cfg: &ScyllaConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            session,
            st,
            retrier,
            bucket_bits,
            inflight: Semaphore::new(cfg.write_concurrency.max(1)),
            write_mode: cfg.write_mode,
            batch_max_bytes: cfg.batch_max_bytes.max(1),
            dedupe_ttl_secs: i32::try_from(cfg.dedupe_ttl.as_secs())
                .unwrap_or(i32::MAX)
                .max(1),
            max_counter: AtomicU64::new(MAX_COUNTER),
            cfg: cfg.clone(),
        })
    }

    /// The highest timestamp counter a claim may use before it renews its epoch.
    pub fn max_counter(&self) -> u64 {
        self.max_counter.load(Ordering::Relaxed)
    }

    pub fn set_max_counter(&self, n: u64) {
        self.max_counter
            .store(n.min(MAX_COUNTER), Ordering::Relaxed);
    }

    pub fn bucket(&self, seq: u64) -> i64 {
        // seq <= i64::MAX is checked where seqs enter the store.
        (seq >> self.bucket_bits) as i64
    }

    /// A cheap round trip to the cluster.
    pub async fn probe(&self) -> Result<(), ScyllaError> {
        self.retrier
            .run("probe", || {
                self.session.execute_unpaged(&self.st.probe, &[])
            })
            .await
            .map(|_| ())
    }
}
