//! The CQL schema and its migrations.
//!
//! Every statement is idempotent (`IF NOT EXISTS`), and every applied migration is recorded in
//! `schema_migrations` (version, description, time). So [`migrate`] may run at every start, from
//! several nodes, and from `parley migrate`; it only executes what is missing and refuses a
//! keyspace whose recorded version is newer than this build knows.
//!
//! Tables (all in the configured keyspace):
//!
//! * `messages`, partition `(room_id, bucket)`, clustered by `seq DESC`, with
//!   `bucket = seq >> bucket_bits`. Seqs are gap-free from 1, so the partition of any seq is
//!   computed, never searched: "latest N" starts at `bucket(last_seq)`, "before X" at
//!   `bucket(X-1)`, and every bucket below the last one is full. The bucket bounds a partition
//!   to `2^bucket_bits` rows (4096 by default, ~1–4 MiB with chat-sized rows: far below the sizes
//!   at which Cassandra and ScyllaDB warn, large enough that a page of history is one partition
//!   read nearly always). A time bucket would need walks over empty hours for quiet rooms.
//!   `seq DESC` makes "the newest N" a forward slice of one partition.
//! * `room_state`: `last_seq` per room, the commit point of the writer (messages above it are
//!   invisible to reads and overwritten by the next write of that seq), and `epoch`, the
//!   room's ownership fence token. Since schema 2 both are written only by lightweight
//!   transactions (see `fence.rs`), and the rows of `messages` and `client_msg_ids` carry
//!   timestamps derived from the writer's epoch.
//! * `receipts`: partition `room_id`, clustered by `user_id`. Written `USING TIMESTAMP seq`, so
//!   the highest seq wins without a read or a lightweight transaction.
//! * `client_msg_ids`: `(room_id, user_id, client_msg_id) -> seq`, partitioned like `messages`
//!   by `(room_id, bucket of seq)`, so a message and its dedupe row share a partition key and go
//!   in the same UNLOGGED batch: one mutation, one round trip (a separate partition per dedupe
//!   row cost two thirds of the write throughput, see `docs/storage.md`). A look-up reads the
//!   room's newest two buckets: the dedupe window is at least `2^bucket_bits` messages, and at
//!   most `dedupe_ttl` (the rows' TTL).
//! * `settings`: `bucket_bits`, fixed when the keyspace is created.
//! * `schema_migrations`: applied versions.
//!
//! Compaction is left at each server's default (UCS on Cassandra 5, ICS/STCS on ScyllaDB): the
//! two do not share a strategy name that suits both.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::Statement;
use scylla::value::CqlTimestamp;

use super::config::ScyllaConfig;
use super::error::ScyllaError;
use super::session::open_session;

/// The schema version this build writes and reads.
///
/// Version 2 changes no table but the write protocol (the ownership fence): builds of
/// version 1 write `room_state` without LWTs and rows with clock timestamps, which would
/// defeat the fence, so they must refuse a keyspace at version 2 (they do: a newer recorded
/// version is an error for them).
pub const SCHEMA_VERSION: i32 = 2;

/// DDL can take much longer than a data request (the schema is pushed to every node).
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

struct Migration {
    version: i32,
    description: &'static str,
    /// Statements with `{ks}` for the keyspace.
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "messages, room_state, receipts, client_msg_ids",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.messages (
            room_id text,
            bucket bigint,
            seq bigint,
            msg_id text,
            user_id text,
            username text,
            body text,
            attachments text,
            sent_at timestamp,
            client_msg_id text,
            PRIMARY KEY ((room_id, bucket), seq)
        ) WITH CLUSTERING ORDER BY (seq DESC)",
            "CREATE TABLE IF NOT EXISTS {ks}.room_state (
            room_id text PRIMARY KEY,
            last_seq bigint,
            epoch bigint
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.receipts (
            room_id text,
            user_id text,
            seq bigint,
            PRIMARY KEY (room_id, user_id)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.client_msg_ids (
            room_id text,
            bucket bigint,
            user_id text,
            client_msg_id text,
            seq bigint,
            PRIMARY KEY ((room_id, bucket), user_id, client_msg_id)
        )",
        ],
    },
    Migration {
        version: 2,
        description: "ownership fence: room_state by LWT only, epoch-derived row timestamps",
        // No table changes: the version shuts out builds that do not fence. The comment
        // tells whoever looks at the table.
        statements: &["ALTER TABLE {ks}.room_state WITH comment = \
            'last_seq: commit point; epoch: ownership fence. Written only by lightweight \
            transactions (schema 2)'"],
    },
];

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub keyspace: String,
    /// The schema version now recorded.
    pub version: i32,
    /// Versions applied by this call (empty when the schema was up to date).
    pub applied: Vec<i32>,
    /// The keyspace's `bucket_bits` (the recorded one when it existed already).
    pub bucket_bits: u8,
}

/// Creates or migrates the keyspace and tables of `cfg` (what `parley migrate` runs). Opens and
/// closes its own session; safe to run while nodes are serving.
pub async fn migrate(cfg: &ScyllaConfig) -> Result<MigrationReport, ScyllaError> {
    let session = open_session(cfg).await?;
    migrate_with(&session, cfg).await
}

async fn run(session: &Session, cql: &str) -> Result<(), ScyllaError> {
    let mut st = Statement::new(cql);
    st.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(st, &[])
        .await
        .map_err(|e| ScyllaError::query(cql, e))?;
    Ok(())
}

/// [`migrate`] on an open session.
pub async fn migrate_with(
    session: &Session,
    cfg: &ScyllaConfig,
) -> Result<MigrationReport, ScyllaError> {
    cfg.validate()?;
    let ks = &cfg.keyspace;
    run(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {} AND durable_writes = true",
            cfg.replication.to_cql()
        ),
    )
    .await?;
    run(
        session,
        &format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
                version int PRIMARY KEY, description text, applied_at timestamp)"
        ),
    )
    .await?;
    run(
        session,
        &format!("CREATE TABLE IF NOT EXISTS {ks}.settings (name text PRIMARY KEY, value text)"),
    )
    .await?;

    let applied_q = format!("SELECT version FROM {ks}.schema_migrations");
    let applied: Vec<i32> = session
        .query_unpaged(applied_q.as_str(), &[])
        .await
        .map_err(|e| ScyllaError::query(&applied_q, e))?
        .into_rows_result()
        .map_err(|e| ScyllaError::Row(e.to_string()))?
        .rows::<(i32,)>()
        .map_err(|e| ScyllaError::Row(e.to_string()))?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| ScyllaError::Row(e.to_string()))?;
    if let Some(&newest) = applied.iter().max() {
        if newest > SCHEMA_VERSION {
            return Err(ScyllaError::Incompatible(format!(
                "keyspace {ks} has schema version {newest}; this build knows up to {SCHEMA_VERSION}"
            )));
        }
    }

    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(keyspace = %ks, version = m.version, "applying CQL migration: {}", m.description);
        for st in m.statements {
            run(session, &st.replace("{ks}", ks)).await?;
        }
        let record = format!(
            "INSERT INTO {ks}.schema_migrations (version, description, applied_at) VALUES (?, ?, ?)"
        );
        let now = CqlTimestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        );
        session
            .query_unpaged(record.as_str(), (m.version, m.description, now))
            .await
            .map_err(|e| ScyllaError::query(&record, e))?;
        done.push(m.version);
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| ScyllaError::SchemaAgreement(e.to_string()))?;

    let bucket_bits = bucket_bits_setting(session, cfg).await?;
    Ok(MigrationReport {
        keyspace: ks.clone(),
        version: SCHEMA_VERSION,
        applied: done,
        bucket_bits,
    })
}

/// Records `cfg.bucket_bits` unless a value is recorded already, and returns the recorded one:
/// the layout of stored messages never changes under a running keyspace.
async fn bucket_bits_setting(session: &Session, cfg: &ScyllaConfig) -> Result<u8, ScyllaError> {
    let ks = &cfg.keyspace;
    let insert =
        format!("INSERT INTO {ks}.settings (name, value) VALUES ('bucket_bits', ?) IF NOT EXISTS");
    session
        .query_unpaged(insert.as_str(), (cfg.bucket_bits.to_string(),))
        .await
        .map_err(|e| ScyllaError::query(&insert, e))?;
    read_bucket_bits(session, ks).await
}

/// The keyspace's recorded `bucket_bits`.
pub(crate) async fn read_bucket_bits(session: &Session, ks: &str) -> Result<u8, ScyllaError> {
    let select = format!("SELECT value FROM {ks}.settings WHERE name = 'bucket_bits'");
    let row = session
        .query_unpaged(select.as_str(), &[])
        .await
        .map_err(|e| ScyllaError::query(&select, e))?
        .into_rows_result()
        .map_err(|e| ScyllaError::Row(e.to_string()))?
        .maybe_first_row::<(Option<String>,)>()
        .map_err(|e| ScyllaError::Row(e.to_string()))?;
    let Some((Some(value),)) = row else {
        return Err(ScyllaError::Incompatible(format!(
            "keyspace {ks} has no bucket_bits setting: run `parley migrate`"
        )));
    };
    match value.parse::<u8>() {
        Ok(b) if (1..=30).contains(&b) => Ok(b),
        _ => Err(ScyllaError::Incompatible(format!(
            "keyspace {ks} has bucket_bits {value:?}, expected 1..=30"
        ))),
    }
}

/// The schema version recorded in the keyspace (0 when none).
pub(crate) async fn recorded_version(session: &Session, ks: &str) -> Result<i32, ScyllaError> {
    let q = format!("SELECT version FROM {ks}.schema_migrations");
    let rows = session
        .query_unpaged(q.as_str(), &[])
        .await
        .map_err(|e| ScyllaError::query(&q, e))?
        .into_rows_result()
        .map_err(|e| ScyllaError::Row(e.to_string()))?;
    let mut max = 0;
    for r in rows
        .rows::<(i32,)>()
        .map_err(|e| ScyllaError::Row(e.to_string()))?
    {
        let (v,) = r.map_err(|e| ScyllaError::Row(e.to_string()))?;
        max = max.max(v);
    }
    Ok(max)
}
