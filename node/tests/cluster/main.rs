//! Whole-cluster tests: several real `parley` processes on 127.0.0.x forming one cluster on
//! the CQL store, real WebSocket clients on every node, and faults (kill -9, SIGTERM, a node
//! joining, a network partition through fault-injecting proxies).
//!
//! A cluster needs the CQL history store, so the scenarios follow `tests/e2e/cql.rs`: without
//! `PARLEY_TEST_CQL` they print NOT RUN and return (they fail under `CI`). They run one at a
//! time, each within a bound, each on a keyspace of its own that is dropped at the end; their
//! processes are killed when the test ends, passed or failed. What needs no cluster runs
//! always: the unit tests of the fault [`proxy`] and of the bookkeeping ([`ledger`]), and a
//! [`selftest`] of the readers, senders and checks against one ordinary node.
//!
//! ```sh
//! scripts/cassandra.sh start
//! PARLEY_TEST_CQL=127.0.0.1:9042 cargo test -p parley-node --test cluster
//! # node logs at another level (default warn; shown for failed tests):
//! PARLEY_CLUSTER_TEST_LOG=info,parley_node=debug PARLEY_TEST_CQL=... cargo test ... --test cluster
//! ```
//!
//! | scenario | what it asserts |
//! |---|---|
//! | [`route`] | a room owned by B is served on A and C: acks, fan-out, presence across nodes |
//! | [`kill_owner`] | kill -9 of a room's owner under traffic loses and duplicates nothing |
//! | [`node_joins`] | a 4th node takes over rooms under traffic, nothing lost, order kept |
//! | [`sigterm`] | SIGTERM drains a node: 1001, reconnect elsewhere, exit 0, nothing lost |
//! | [`partition`] | a 30 s partition of one node heals without any seq given twice |
//! | [`membership`] | a wrong cookie is never admitted; `dns:` discovery; presence of one user on two nodes |

/// A line on the test process's stderr, shown even for passing tests (libtest captures
/// `eprintln!`): the figures of a run.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod cluster;
mod conn;
mod ledger;
mod node;
mod proxy;
mod reader;
mod scenario;
mod sender;
#[path = "../e2e/cql_store.rs"]
mod store;

mod kill_owner;
mod membership;
mod node_joins;
mod partition;
mod route;
mod selftest;
mod sigterm;
