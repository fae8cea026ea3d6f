//! The history-store contract suite: the same cases (`contract/cases.rs`) run against the
//! embedded store and the in-memory store, always, and against the CQL store when `PARLEY_TEST_CQL=host:port` names a
//! running server (e.g. `scripts/cassandra.sh start`). With the variable set, an unreachable
//! server fails the tests. Without it the `cql::` tests say that they did not run and return,
//! except under CI (`CI` set), where they fail: a CI run must never report untested CQL cases
//! as passed.
//!
//! ```sh
//! scripts/cassandra.sh start
//! PARLEY_TEST_CQL=127.0.0.1:9042 cargo test -p history --test contract
//! # the fault test stops and restarts that server, so it runs alone:
//! PARLEY_TEST_CQL=127.0.0.1:9042 cargo test -p history --test contract -- --ignored fault
//! ```

#[path = "contract/cases.rs"]
mod cases;
#[path = "contract/harness.rs"]
mod harness;

use harness::Backend;

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&super::Backend::embedded()).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(&super::Backend::memory()).await;
                }
            )*
        }
        mod cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    match super::Backend::cql().await {
                        Some(b) => super::cases::$case(&b).await,
                        None => super::not_run(stringify!($case)),
                    }
                }
            )*
        }
    };
}

/// A CQL case found no `PARLEY_TEST_CQL`: says so, and fails under CI.
fn not_run(case: &str) {
    let ci = std::env::var("CI").unwrap_or_default();
    if !ci.is_empty() && ci != "0" && !ci.eq_ignore_ascii_case("false") {
        panic!(
            "cql::{case}: CI is set but PARLEY_TEST_CQL is not, so this CQL case would test \
             nothing (scripts/test-all starts Cassandra and sets it)"
        );
    }
    // Straight to the process's stderr: libtest would capture `eprintln!` of a passing test.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("cql::{case}: PARLEY_TEST_CQL not set: CQL case NOT RUN (nothing was tested)\n")
            .as_bytes(),
    );
}

contract!(
    ordering_and_fields,
    paging_across_buckets,
    seq_conflicts_write_nothing,
    receipts_are_monotonic,
    room_meta_after_submit,
    concurrent_writers,
    reopen_keeps_data,
    trivia,
    fence_claims_of_one_handle,
    fence_new_owner_fences_the_old,
    fence_stale_writes_never_replace,
    fence_claim_races_writes_in_flight,
);

/// CQL-only: what the trait does not cover (dedupe look-up, migrations, errors).
mod cql_only {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use history::scylla::{migrate, ScyllaConfig, ScyllaStore, SCHEMA_VERSION};
    use history::{HistoryStore, StoreError, WriteOp};

    use super::harness::{msg, room, seqs, Backend};

    async fn cfg() -> Option<ScyllaConfig> {
        match Backend::cql().await {
            Some(Backend::Cql { cfg }) => Some(*cfg),
            _ => {
                super::not_run("cql_only");
                None
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_is_idempotent_and_recorded() {
        let Some(cfg) = cfg().await else { return };
        let again = migrate(&cfg).await.expect("second migrate");
        assert!(again.applied.is_empty(), "nothing left to apply: {again:?}");
        assert_eq!(again.version, SCHEMA_VERSION);
        // A store started without migrating accepts the migrated keyspace and keeps its buckets.
        let s = ScyllaStore::connect(&ScyllaConfig {
            migrate_on_start: false,
            bucket_bits: 12,
            ..cfg.clone()
        })
        .await
        .expect("connect without migrating");
        assert_eq!(s.bucket_bits(), harness_bits());
        s.shutdown().await;
    }

    fn harness_bits() -> u8 {
        super::harness::TEST_BUCKET_BITS
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dedupe_finds_committed_client_ids_only() {
        let Some(cfg) = cfg().await else { return };
        let s = ScyllaStore::connect(&cfg).await.expect("connect");
        let r = room("dedupe");
        s.claim(&r).await.expect("claim");
        // Bucket size 8: seqs 16..=20 are in the newest bucket, 8..=15 in the one before.
        let ops = (1..=20).map(|q| WriteOp::Message(msg(&r, q))).collect();
        s.submit(ops).await.unwrap();
        let find = |q: u64| {
            let m = msg(&r, q);
            let s = s.clone();
            async move {
                let cmid = m.client_msg_id.clone().expect("even seqs have client ids");
                s.find_client_msg(&m.room_id, &m.user_id, &cmid)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(find(18).await, Some(18));
        assert_eq!(find(10).await, Some(10));
        assert_eq!(find(4).await, None, "older than the newest two buckets");
        // Another user, or an unknown id: nothing.
        let m = msg(&r, 18);
        let cmid = m.client_msg_id.clone().unwrap();
        let other = super::harness::user("mallory");
        assert_eq!(s.find_client_msg(&r, &other, &cmid).await.unwrap(), None);
        assert_eq!(
            s.find_client_msg(&r, &m.user_id, "nope").await.unwrap(),
            None
        );
        assert_eq!(
            s.find_client_msg(&room("dedupe-empty"), &m.user_id, &cmid)
                .await
                .unwrap(),
            None
        );
        s.shutdown().await;
        assert!(s.check().await.is_err(), "check after shutdown");
    }

    /// An owner renews its own epoch when its write timestamps are used up, and a renewal
    /// that finds a newer owner fences the handle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fence_epoch_renewal() {
        let Some(cfg) = cfg().await else { return };
        let node1 = ScyllaStore::connect(&cfg).await.expect("connect");
        let node2 = ScyllaStore::connect(&cfg).await.expect("connect");
        node1.set_groups_per_epoch_for_tests(2);
        let r = room("fence-renew");
        let c1 = node1.claim(&r).await.expect("claim");
        // Five groups of one message: two renewals (after groups 2 and 4).
        for seq in 1..=5 {
            node1
                .submit(vec![WriteOp::Message(msg(&r, seq))])
                .await
                .unwrap();
        }
        let c2 = node1.claim(&r).await.expect("claim");
        assert!(
            c2.epoch >= c1.epoch + 3,
            "{c2:?} after {c1:?}: renewed twice"
        );
        assert_eq!(c2.last_seq, 5);
        // Two groups use up the new claim's timestamps. Another node claims; the next group's
        // renewal finds the newer epoch and the handle is fenced.
        node1
            .submit(vec![WriteOp::Message(msg(&r, 6))])
            .await
            .unwrap();
        node1
            .submit(vec![WriteOp::Message(msg(&r, 7))])
            .await
            .unwrap();
        let c3 = node2.claim(&r).await.expect("claim");
        assert_eq!(c3.last_seq, 7);
        match node1.submit(vec![WriteOp::Message(msg(&r, 8))]).await {
            Err(StoreError::Fenced { .. }) => {}
            other => panic!("expected Fenced, got {other:?}"),
        }
        assert_eq!(node2.room_meta(&r).await.unwrap().last_seq, 7);
        node2
            .submit(vec![WriteOp::Message(msg(&r, 8))])
            .await
            .unwrap();
        node1.shutdown().await;
        node2.shutdown().await;
    }

    /// A room written under schema 1 (plain writes with ordinary microsecond timestamps;
    /// `room_state` without an epoch; a row above `last_seq` left by a failed write of a node
    /// whose clock was 10 s ahead) is claimed from its last seq, and the owner's rows beat the
    /// old ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fence_takes_over_rooms_of_schema_1() {
        let Some(cfg) = cfg().await else { return };
        let r = room("fence-legacy");
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(&cfg.contact_points)
            .build()
            .await
            .expect("session");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as i64;
        let ks = &cfg.keyspace;
        let insert = format!(
            "INSERT INTO {ks}.messages (room_id, bucket, seq, msg_id, user_id, username, body, \
             attachments, sent_at, client_msg_id) VALUES (?, 0, ?, 'legacy', 'u0', 'Legacy', \
             'written under schema 1', '[]', 0, null) USING TIMESTAMP ?"
        );
        for (seq, ts) in [(1i64, now), (2, now + 10_000_000)] {
            session
                .query_unpaged(insert.as_str(), (r.as_str(), seq, ts))
                .await
                .expect("insert a schema-1 row");
        }
        let commit =
            format!("UPDATE {ks}.room_state USING TIMESTAMP ? SET last_seq = 1 WHERE room_id = ?");
        session
            .query_unpaged(commit.as_str(), (now, r.as_str()))
            .await
            .expect("commit under schema 1");

        let s = ScyllaStore::connect(&cfg).await.expect("connect");
        let c = s.claim(&r).await.expect("claim");
        assert_eq!(c.last_seq, 1);
        assert!(c.epoch > 0);
        let got = s.latest(&r, 10).await.unwrap();
        assert_eq!(
            seqs(&got),
            vec![1],
            "the row above last_seq stays invisible"
        );
        s.submit(vec![WriteOp::Message(msg(&r, 2))]).await.unwrap();
        let got = s.latest(&r, 10).await.unwrap();
        assert_eq!(got[1], msg(&r, 2), "the owner's row replaced the old one");
        assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 2);

        // A last_seq cell written from a clock far ahead would shadow the fenced commits (LWT
        // cells carry the coordinator's clock): the room cannot be claimed until that time.
        let ahead = room("fence-legacy-ahead");
        session
            .query_unpaged(commit.as_str(), (now + 3_600_000_000, ahead.as_str()))
            .await
            .expect("commit under schema 1");
        match s.claim(&ahead).await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("future"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            s.submit(vec![WriteOp::Message(msg(&ahead, 2))]).await,
            Err(StoreError::Fenced { epoch: 0, .. })
        ));
        s.shutdown().await;
    }

    /// A fenced owner's dedupe rows never answer a look-up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fence_stale_dedupe_rows_are_ignored() {
        let Some(cfg) = cfg().await else { return };
        let node1 = ScyllaStore::connect(&cfg).await.expect("connect");
        let node2 = ScyllaStore::connect(&cfg).await.expect("connect");
        let r = room("fence-dedupe");
        node1.claim(&r).await.expect("claim");
        node2.claim(&r).await.expect("claim");
        let stale = super::harness::msg_by(&r, 1, "stale");
        let new = super::harness::msg_by(&r, 1, "new");
        assert!(matches!(
            node1.submit(vec![WriteOp::Message(stale.clone())]).await,
            Err(StoreError::Fenced { .. })
        ));
        node2
            .submit(vec![WriteOp::Message(new.clone())])
            .await
            .unwrap();
        let find = |m: &cluster_proto::ChatMessage| {
            let (s, m) = (node2.clone(), m.clone());
            async move {
                let cmid = m.client_msg_id.clone().expect("client id");
                s.find_client_msg(&m.room_id, &m.user_id, &cmid)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(find(&new).await, Some(1));
        assert_eq!(find(&stale).await, None);
        node1.shutdown().await;
        node2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_is_an_error() {
        if cfg().await.is_none() {
            return;
        }
        // Port 9 (discard) on loopback: nothing listens there on a test machine.
        let bad = ScyllaConfig {
            contact_points: vec!["127.0.0.1:9".into()],
            connect_timeout: Duration::from_secs(2),
            ..ScyllaConfig::default()
        };
        assert!(ScyllaStore::connect(&bad).await.is_err());
        assert!(migrate(&bad).await.is_err());
    }

    /// Stops the Cassandra node of `scripts/cassandra.sh` in the middle of traffic and starts it
    /// again: every acknowledged message is there afterwards, the rest were refused with
    /// `Unavailable`, and the store recovers by itself. Stops the shared server, so it is
    /// `#[ignore]`d: run it alone with `-- --ignored fault`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "stops and restarts the CQL server of scripts/cassandra.sh"]
    async fn fault_stop_and_restart_loses_no_ack() {
        let Some(cfg) = cfg().await else { return };
        let cfg = ScyllaConfig {
            request_timeout: Duration::from_secs(1),
            breaker: history::scylla::BreakerOptions {
                failure_threshold: 3,
                cool_down: Duration::from_millis(500),
            },
            ..cfg
        };
        let s = ScyllaStore::connect(&cfg).await.expect("connect");
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for i in 0..4 {
            let (s, stop) = (s.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let r = room(&format!("fault-{i}"));
                s.claim(&r).await.expect("claim");
                let (mut next, mut acked, mut refused) = (1u64, Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match s.submit(vec![WriteOp::Message(msg(&r, next))]).await {
                        Ok(()) => {
                            acked.push(next);
                            next += 1;
                        }
                        Err(StoreError::Unavailable(_)) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        // The commit landed but its ack was lost: resync, as a room owner does.
                        Err(StoreError::SeqConflict { .. }) => match s.room_meta(&r).await {
                            Ok(meta) => next = meta.last_seq + 1,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        },
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                (r, acked, refused)
            }));
        }
        let script = format!("{}/../scripts/cassandra.sh", super::manifest_dir());
        let script = script.as_str();
        let run = |cmd: &'static str| async move {
            let out = tokio::process::Command::new("bash")
                .args([script, cmd])
                .output()
                .await
                .expect("run scripts/cassandra.sh");
            assert!(
                out.status.success(),
                "cassandra.sh {cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        run("stop").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(s.check().await.is_err(), "check while the server is down");
        run("start").await;
        // Recovers by itself: writes get through again within a while.
        let t0 = std::time::Instant::now();
        while s.check().await.is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "store did not recover"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let mut total_refused = 0;
        for w in writers {
            let (r, acked, refused) = w.await.expect("writer");
            total_refused += refused;
            let stored = s.latest(&r, 100_000).await.expect("read back");
            let last = s.room_meta(&r).await.expect("meta").last_seq;
            assert_eq!(
                stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=last).collect::<Vec<_>>(),
                "gap-free history in {r}"
            );
            for seq in &acked {
                assert_eq!(
                    stored[(*seq - 1) as usize],
                    msg(&r, *seq),
                    "acked {seq} in {r}"
                );
            }
            eprintln!(
                "{r}: {} acked, {refused} refused, last_seq {last}",
                acked.len()
            );
        }
        assert!(total_refused > 0, "the outage was seen");
        s.shutdown().await;
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let cfg: ScyllaConfig = serde_json::from_str(
            r#"{"contact_points":["10.0.0.1:9042"],"consistency":"QUORUM",
                "replication":{"class":"NetworkTopologyStrategy","datacenters":{"dc1":3}},
                "request_timeout":"750ms","tls":{"ca_file":"/etc/ca.pem"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.keyspace, "parley");
        assert_eq!(cfg.request_timeout, Duration::from_millis(750));
        assert!(cfg.validate().is_ok());
        assert!(ScyllaConfig {
            keyspace: "bad-name".into(),
            ..cfg.clone()
        }
        .validate()
        .is_err());
        assert!(serde_json::from_str::<ScyllaConfig>(r#"{"contact_pionts":[]}"#).is_err());
        // It serializes back to the same settings (`parley default-config` prints it).
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains(r#""request_timeout":"750ms""#), "{text}");
        assert!(
            text.contains(r#""class":"NetworkTopologyStrategy""#),
            "{text}"
        );
        let back: ScyllaConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[allow(dead_code)]
    fn store_is_a_history_store(
        s: std::sync::Arc<ScyllaStore>,
    ) -> std::sync::Arc<dyn HistoryStore> {
        s
    }
}

/// The crate's directory at run time (cargo sets it for tests): a build shared between clones
/// (one `CARGO_TARGET_DIR`) may have been compiled in another clone's path.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}
