//! How the contract suite gets a store: the embedded store in a temporary directory, a fresh
//! in-memory database, or the CQL store on the server named by `PARLEY_TEST_CQL`
//! (`host:port[,host:port...]`), in a keyspace made fresh for this test run
//! (`parley_ct_<unix time>_<pid>`, bucket size 8 so that paging crosses partitions). Keyspaces
//! of runs older than an hour are dropped on the way.
//!
//! The fence cases need a second *handle* on the same data, as a second node has: another
//! `MemoryStore::handle`, another `ScyllaStore::connect` on the same keyspace. The embedded
//! store has none (see [`Backend::other_node`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_proto::{ChatMessage, RoomId, UserId};
use history::scylla::{ScyllaConfig, ScyllaStore};
use history::{EmbeddedStore, HistoryStore, MemoryStore};

/// log2 of the bucket size the CQL store uses in these tests.
pub const TEST_BUCKET_BITS: u8 = 3;

pub enum Backend {
    Embedded { dir: tempfile::TempDir },
    Memory { db: MemoryStore },
    Cql { cfg: Box<ScyllaConfig> },
}

impl Backend {
    pub fn memory() -> Self {
        Backend::Memory {
            db: MemoryStore::new(),
        }
    }

    pub fn embedded() -> Self {
        Backend::Embedded {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The CQL backend, or `None` when `PARLEY_TEST_CQL` is not set. Panics (fails the test)
    /// when it is set but the server cannot be reached or migrated.
    pub async fn cql() -> Option<Self> {
        let target = std::env::var("PARLEY_TEST_CQL").ok()?;
        let cfg = ScyllaConfig {
            contact_points: target.split(',').map(|s| s.trim().to_owned()).collect(),
            keyspace: keyspace().to_owned(),
            bucket_bits: TEST_BUCKET_BITS,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            ..ScyllaConfig::default()
        };
        static MIGRATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        MIGRATED
            .get_or_init(|| async {
                drop_old_keyspaces(&cfg).await;
                let report = history::scylla::migrate(&cfg)
                    .await
                    .unwrap_or_else(|e| panic!("PARLEY_TEST_CQL={target}: migrate failed: {e}"));
                assert_eq!(report.bucket_bits, TEST_BUCKET_BITS);
            })
            .await;
        Some(Backend::Cql { cfg: Box::new(cfg) })
    }

    /// Opens the store (again): a reopen sees what an earlier open wrote.
    pub async fn open(&self) -> Arc<dyn HistoryStore> {
        match self {
            Backend::Embedded { dir } => {
                // The previous instance's writer thread may still be letting go of the files.
                let mut tries = 0;
                loop {
                    match EmbeddedStore::open(dir.path()) {
                        Ok(s) => return s,
                        Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(40)).await;
                        }
                        Err(e) => panic!("open embedded store: {e}"),
                    }
                }
            }
            Backend::Memory { db } => db.handle(),
            Backend::Cql { cfg } => ScyllaStore::connect(cfg)
                .await
                .unwrap_or_else(|e| panic!("connect to {:?}: {e}", cfg.contact_points)),
        }
    }

    /// The module name of the backend's cases.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded { .. } => "embedded",
            Backend::Memory { .. } => "memory",
            Backend::Cql { .. } => "cql",
        }
    }

    /// Another handle on the same data, as another node has one, or why the store has none.
    pub async fn other_node(&self) -> Result<Arc<dyn HistoryStore>, &'static str> {
        match self {
            Backend::Embedded { .. } => Err(
                "one process owns an embedded store's directory (fjall locks it), so there is \
                 never a second handle",
            ),
            Backend::Memory { .. } | Backend::Cql { .. } => Ok(self.open().await),
        }
    }

    /// Messages per partition bucket of the store (0: the store has no buckets).
    pub fn bucket_size(&self) -> u64 {
        match self {
            Backend::Embedded { .. } | Backend::Memory { .. } => 0,
            Backend::Cql { .. } => 1 << TEST_BUCKET_BITS,
        }
    }
}

fn keyspace() -> &'static str {
    static KS: OnceLock<String> = OnceLock::new();
    KS.get_or_init(|| format!("parley_ct_{}_{}", unix_secs(), std::process::id()))
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Drops `parley_ct_<time>_<pid>` keyspaces older than an hour, so a long-lived dev server does
/// not pile up test schemas. Best effort: failures are ignored (the migration reports real ones).
async fn drop_old_keyspaces(cfg: &ScyllaConfig) {
    let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .build()
        .await
    else {
        return;
    };
    let Ok(res) = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
        .await
    else {
        return;
    };
    let Ok(rows) = res.into_rows_result() else {
        return;
    };
    let Ok(names) = rows.rows::<(String,)>() else {
        return;
    };
    let cutoff = unix_secs().saturating_sub(3600);
    for (name,) in names.flatten() {
        let born = name
            .strip_prefix("parley_ct_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|t| t.parse::<u64>().ok());
        if matches!(born, Some(t) if t < cutoff) {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), &[])
                .await;
        }
    }
}

pub fn room(name: &str) -> RoomId {
    RoomId::new(name).expect("room id")
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("user id")
}

/// A message with every field set; even seqs carry a client message id.
pub fn msg(room: &RoomId, seq: u64) -> ChatMessage {
    ChatMessage {
        id: ChatMessage::make_id(room, seq),
        room_id: room.clone(),
        seq,
        user_id: user(&format!("u{}", seq % 3)),
        username: format!("User {}", seq % 3),
        text: format!("message {seq} in {room}: héllo ✓"),
        attachments: if seq.is_multiple_of(5) {
            format!(r#"[{{"url":"https://x.test/{seq}.png","kind":"image"}}]"#)
        } else {
            "[]".into()
        },
        timestamp: 1_700_000_000_000 + seq as i64,
        client_msg_id: seq.is_multiple_of(2).then(|| format!("c-{room}-{seq}")),
    }
}

/// [`msg`] as written by `author` (another text and client id): two owners' versions of one
/// seq differ.
pub fn msg_by(room: &RoomId, seq: u64, author: &str) -> ChatMessage {
    ChatMessage {
        text: format!("message {seq} in {room} by {author}"),
        client_msg_id: Some(format!("c-{room}-{seq}-{author}")),
        ..msg(room, seq)
    }
}

/// Says on stderr that a case did not run for a backend, and why.
pub fn skipped(backend: &str, case: &str, why: &str) {
    // Straight to the process's stderr: libtest would capture `eprintln!` of a passing test.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("{backend}::{case}: SKIPPED: {why}\n").as_bytes(),
    );
}

pub fn seqs(msgs: &[ChatMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}
