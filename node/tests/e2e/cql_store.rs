//! The CQL history store of the tests that need one (`tests/e2e/cql.rs`, and every test of
//! `tests/cluster/`, which includes this file): the server named by `PARLEY_TEST_CQL`, one
//! keyspace per test, dropped when the test ends, failed or not.
//!
//! Without `PARLEY_TEST_CQL` a test prints NOT RUN and returns, except under CI (`CI` set),
//! where it fails. Keyspaces are named `<prefix><unix time>_<pid>_<n>`; those of the same
//! prefix older than an hour (left by a run that was killed) are dropped by the first test of a
//! run.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The CQL server to test against, or `None` (after saying so) when `PARLEY_TEST_CQL` is not
/// set. Panics under CI: there the cluster tests must run.
pub fn cql_target(test: &str) -> Option<String> {
    if let Ok(t) = std::env::var("PARLEY_TEST_CQL") {
        if !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    let ci = std::env::var("CI").unwrap_or_default();
    if !ci.is_empty() && ci != "0" && !ci.eq_ignore_ascii_case("false") {
        panic!(
            "{test}: CI is set but PARLEY_TEST_CQL is not, so this test would test nothing \
             (it needs the CQL store; scripts/test-all starts Cassandra and sets it)"
        );
    }
    // Straight to the process's stderr: libtest would capture `eprintln!` of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: PARLEY_TEST_CQL is not set; NOT RUN (nothing was tested)"
    );
    None
}

/// The prefixes of test keyspaces: nothing else is ever dropped.
const TEST_PREFIXES: [&str; 2] = ["parley_e2e_", "parley_cluster_"];

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A test's keyspace (created by the first node, `scylla.migrate_on_start`); dropped on drop.
pub struct Keyspace {
    pub name: String,
    target: String,
}

impl Keyspace {
    /// A fresh keyspace named `<prefix><unix time>_<pid>_<n>` (`prefix` like `parley_e2e_`).
    pub async fn new(target: &str, prefix: &'static str) -> Keyspace {
        assert!(
            TEST_PREFIXES.contains(&prefix),
            "not a test prefix: {prefix}"
        );
        static N: AtomicU64 = AtomicU64::new(0);
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        SWEPT
            .get_or_init(|| async {
                let cutoff = unix_secs().saturating_sub(3600);
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    drop_where(target, |n| {
                        n.strip_prefix(prefix)
                            .and_then(|rest| rest.split('_').next())
                            .and_then(|t| t.parse::<u64>().ok())
                            .is_some_and(|t| t < cutoff)
                    }),
                )
                .await;
            })
            .await;
        Keyspace {
            name: format!(
                "{prefix}{}_{}_{}",
                unix_secs(),
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            target: target.to_string(),
        }
    }

    /// The node flags for this keyspace on this server (as `tests/e2e/cql.rs`: 8 messages per
    /// partition, so that histories cross partitions).
    pub fn node_args(&self) -> Vec<String> {
        self.node_args_with(&[])
    }

    /// [`Keyspace::node_args`] followed by `extra`.
    pub fn node_args_with(&self, extra: &[&str]) -> Vec<String> {
        let points: Vec<String> = self
            .target
            .split(',')
            .map(|p| format!("\"{}\"", p.trim()))
            .collect();
        let mut args: Vec<String> = vec![
            "--history".into(),
            "scylla".into(),
            "--set".into(),
            format!("scylla.contact_points=[{}]", points.join(",")),
            "--set".into(),
            format!("scylla.keyspace=\"{}\"", self.name),
            "--set".into(),
            "scylla.bucket_bits=3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}

impl Drop for Keyspace {
    /// Drops the keyspace on a thread of its own (a destructor cannot await, and this one may
    /// run on a runtime thread while a test unwinds).
    fn drop(&mut self) {
        let (target, name) = (self.target.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), drop_where(&target, |n| n == name))
                    .await
                    .unwrap_or(false)
            })
        })
        .join()
        .unwrap_or(false);
        if !dropped {
            let _ = writeln!(
                std::io::stderr(),
                "note: keyspace {} was not dropped (the next run drops it after an hour)",
                self.name
            );
        }
    }
}

/// Drops every keyspace whose name satisfies `pick`; true if the server answered.
async fn drop_where(target: &str, pick: impl Fn(&str) -> bool) -> bool {
    let nodes: Vec<&str> = target.split(',').map(str::trim).collect();
    let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&nodes)
        .build()
        .await
    else {
        return false;
    };
    let Ok(res) = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
        .await
    else {
        return false;
    };
    let Ok(rows) = res.into_rows_result() else {
        return false;
    };
    let Ok(names) = rows.rows::<(String,)>() else {
        return false;
    };
    let mut ok = true;
    for (name,) in names.flatten() {
        if TEST_PREFIXES.iter().any(|p| name.starts_with(p)) && pick(&name) {
            ok &= session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), &[])
                .await
                .is_ok();
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Client, Node};

    async fn keyspaces(target: &str) -> Vec<String> {
        let nodes: Vec<&str> = target.split(',').map(str::trim).collect();
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(&nodes)
            .build()
            .await
            .expect("connect to the CQL server");
        let rows = session
            .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
            .await
            .expect("list keyspaces")
            .into_rows_result()
            .expect("rows");
        rows.rows::<(String,)>()
            .expect("names")
            .flatten()
            .map(|(n,)| n)
            .collect()
    }

    /// A node (not clustered) on a test keyspace stores messages there, and dropping the
    /// [`Keyspace`] removes it from the server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_test_keyspace_is_used_by_the_node_and_dropped_afterwards() {
        let Some(target) = cql_target("a_test_keyspace_is_used_by_the_node_and_dropped_afterwards")
        else {
            return;
        };
        let ks = Keyspace::new(&target, "parley_e2e_").await;
        let name = ks.name.clone();
        assert!(name.len() <= 48, "{name}");
        {
            let args = ks.node_args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let node = Node::start(&args).await;
            let mut a = Client::connect(&node, "a").await;
            a.join("r").await;
            assert_eq!(a.say("r", "hello").await["seq"], 1);
        }
        assert!(
            keyspaces(&target).await.contains(&name),
            "{name} not created"
        );
        drop(ks);
        assert!(
            !keyspaces(&target).await.contains(&name),
            "{name} not dropped"
        );
    }
}
