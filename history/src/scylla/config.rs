//! [`ScyllaConfig`]: everything the CQL store needs to know, deserializable from the node's config
//! file and serializable back (`parley default-config` prints it; durations in humantime form:
//! `"2s"`, `"250ms"`). Every field has a default, so an empty `[scylla]` table means "a local
//! single node, keyspace `parley`".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ScyllaError;

/// Configuration of [`super::ScyllaStore`] and [`super::migrate`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Nodes to contact first, `host:port`. The driver discovers the rest of the cluster from them.
    /// Default `["127.0.0.1:9042"]`.
    pub contact_points: Vec<String>,
    /// Keyspace holding Parley's tables: 1–48 characters of `A-Z a-z 0-9 _`. Default `"parley"`.
    pub keyspace: String,
    /// Replication of the keyspace, applied when the keyspace is created (changing it later is
    /// an `ALTER KEYSPACE` plus a repair, done by an operator). Default SimpleStrategy, RF 1.
    pub replication: Replication,
    /// Consistency of every read and write; a write is acknowledged to the sender only once it is
    /// acknowledged at this level. Default `LOCAL_QUORUM` (with one node and RF 1 that is one
    /// replica, so a single test node satisfies it).
    pub consistency: ConsistencyLevel,
    /// Consistency of the lightweight transactions of the ownership fence (claims and the
    /// commit of each write group): `LOCAL_SERIAL` (default; linearizable within the local
    /// data centre, which matches `LOCAL_QUORUM`) or `SERIAL` (across data centres, for rooms
    /// whose owners may be in different data centres).
    pub serial_consistency: SerialConsistencyLevel,
    /// The data centre whose nodes are preferred as coordinators (set it with
    /// NetworkTopologyStrategy). Default none: all nodes alike.
    pub local_datacenter: Option<String>,
    /// Username for password authentication. Default none (no authentication).
    pub username: Option<String>,
    /// Password for `username`. Default none.
    pub password: Option<String>,
    /// TLS to the nodes. Default none (plain TCP).
    pub tls: Option<TlsOptions>,
    /// Time to open a connection to a node. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Client-side time limit of one CQL request (one attempt). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Write calls that may wait in the store's queue (`scylla-history-writer`) before
    /// `submit` fails fast with `Unavailable`; the writer holds up to as many again sorted into
    /// rooms. Default 65 536 calls.
    pub queue_capacity: usize,
    /// Most CQL write requests in flight at once from the writer. Default 64 requests
    /// (measured: 64 gave ~30% more throughput than 32 on a 2-core test node, 8 much less).
    pub write_concurrency: usize,
    /// Most calls of one room committed as one group. Default 2048 calls.
    pub max_round_calls: usize,
    /// How the rows of one partition are sent: one UNLOGGED batch per partition, or one
    /// pipelined INSERT per row. Default: the faster one measured by `examples/cql_bench.rs`
    /// (see `docs/storage.md`).
    pub write_mode: WriteMode,
    /// Largest UNLOGGED batch, in bytes of bound values; bigger partitions are split. Cassandra
    /// rejects batches over `batch_size_fail_threshold` (50 KiB by default) and warns over 5 KiB.
    /// Default 30 KiB.
    pub batch_max_bytes: usize,
    /// log2 of the messages per partition: `bucket = seq >> bucket_bits`. Used when the keyspace
    /// is created and recorded there; an existing keyspace keeps its recorded value.
    /// Default 12 (4096 messages per partition). Range 1–30.
    pub bucket_bits: u8,
    /// Longest time a client message id is remembered for dedupe (TTL of the dedupe rows); it
    /// is also forgotten once its message is older than the room's newest two buckets.
    /// Default 24 h.
    #[serde(with = "humantime_serde")]
    pub dedupe_ttl: Duration,
    /// Retries of a failed request that may succeed when repeated (time-outs, unavailable or
    /// overloaded replicas, broken connections).
    pub retry: RetryOptions,
    /// The circuit breaker in front of the store.
    pub breaker: BreakerOptions,
    /// Create or migrate the schema when the store starts (as `parley migrate` does). Default true.
    pub migrate_on_start: bool,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "parley".into(),
            replication: Replication::default(),
            consistency: ConsistencyLevel::LocalQuorum,
            serial_consistency: SerialConsistencyLevel::LocalSerial,
            local_datacenter: None,
            username: None,
            password: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            queue_capacity: 65_536,
            write_concurrency: 64,
            max_round_calls: 2048,
            write_mode: WriteMode::default(),
            batch_max_bytes: 30 * 1024,
            bucket_bits: 12,
            dedupe_ttl: Duration::from_secs(24 * 3600),
            retry: RetryOptions::default(),
            breaker: BreakerOptions::default(),
            migrate_on_start: true,
        }
    }
}

impl ScyllaConfig {
    /// Checks what the server would otherwise reject late or what would be spliced into CQL.
    pub fn validate(&self) -> Result<(), ScyllaError> {
        let bad = |m: String| Err(ScyllaError::Config(m));
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad(format!(
                "keyspace {ks:?} must be 1-48 characters of A-Z a-z 0-9 _"
            ));
        }
        if self.contact_points.is_empty() {
            return bad("contact_points is empty".into());
        }
        if !(1..=30).contains(&self.bucket_bits) {
            return bad(format!(
                "bucket_bits {} is outside 1..=30",
                self.bucket_bits
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return bad("username and password must be given together".into());
        }
        if let Replication::NetworkTopologyStrategy { datacenters } = &self.replication {
            if datacenters.is_empty() {
                return bad("NetworkTopologyStrategy needs at least one data centre".into());
            }
            if let Some(dc) = datacenters.keys().find(|dc| {
                dc.is_empty()
                    || !dc
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            }) {
                return bad(format!("data centre name {dc:?} has unexpected characters"));
            }
        }
        Ok(())
    }
}

/// Keyspace replication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "class", deny_unknown_fields)]
pub enum Replication {
    /// One replica set for the whole cluster: development and single-DC tests.
    SimpleStrategy { replication_factor: u32 },
    /// Replicas per data centre (production, e.g. `{ dc1 = 3 }`).
    NetworkTopologyStrategy { datacenters: BTreeMap<String, u32> },
}

impl Default for Replication {
    fn default() -> Self {
        Replication::SimpleStrategy {
            replication_factor: 1,
        }
    }
}

impl Replication {
    /// The CQL map literal for `CREATE KEYSPACE ... WITH replication = ...`.
    pub(crate) fn to_cql(&self) -> String {
        match self {
            Replication::SimpleStrategy { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopologyStrategy { datacenters } => {
                let dcs: Vec<String> = datacenters
                    .iter()
                    .map(|(dc, rf)| format!("'{dc}': {rf}"))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
            }
        }
    }
}

/// CQL consistency levels that make sense for this store, written as in CQL (`LOCAL_QUORUM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsistencyLevel {
    One,
    Two,
    Three,
    Quorum,
    All,
    #[default]
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

impl From<ConsistencyLevel> for scylla::statement::Consistency {
    fn from(c: ConsistencyLevel) -> Self {
        use scylla::statement::Consistency as C;
        match c {
            ConsistencyLevel::One => C::One,
            ConsistencyLevel::Two => C::Two,
            ConsistencyLevel::Three => C::Three,
            ConsistencyLevel::Quorum => C::Quorum,
            ConsistencyLevel::All => C::All,
            ConsistencyLevel::LocalQuorum => C::LocalQuorum,
            ConsistencyLevel::EachQuorum => C::EachQuorum,
            ConsistencyLevel::LocalOne => C::LocalOne,
        }
    }
}

/// Serial consistency levels (of lightweight transactions), written as in CQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SerialConsistencyLevel {
    Serial,
    #[default]
    LocalSerial,
}

impl From<SerialConsistencyLevel> for scylla::statement::SerialConsistency {
    fn from(c: SerialConsistencyLevel) -> Self {
        use scylla::statement::SerialConsistency as S;
        match c {
            SerialConsistencyLevel::Serial => S::Serial,
            SerialConsistencyLevel::LocalSerial => S::LocalSerial,
        }
    }
}

/// TLS to the nodes (scylla's `rustls-023` backend). The server certificate is checked against
/// `ca_file` only (not the system roots), with the contact point's host as the expected name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) that signed the nodes' certificates. Required.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for nodes that require client authentication. Optional.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Required with `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// How the rows of one partition are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// One UNLOGGED batch per partition (atomic and isolated within that partition).
    #[default]
    Batch,
    /// One INSERT per row, all in flight at once.
    Individual,
}

/// Retry of transient request failures: full-jitter exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryOptions {
    /// Attempts per request, the first included. Default 4.
    pub max_attempts: u32,
    /// Backoff before the first retry (doubles each time, then a random part of it is slept).
    /// Default 25 ms.
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    /// Cap of the backoff. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// The circuit breaker: after `failure_threshold` consecutive failed requests (retries
/// exhausted) the store fails fast with `Unavailable` for `cool_down`, then lets one probe through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerOptions {
    /// Consecutive failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// Time the breaker stays open before a probe. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(5),
        }
    }
}
