//! A cluster of `parley` processes for one test: started one after the other on 127.0.0.x,
//! each given the cluster addresses of those before it as `--peers`, all on one CQL keyspace
//! with one fresh cookie and a fast failure detector (250 ms × 3).
//!
//! A *partitionable* cluster puts a [`Proxy`] on every ordered pair of nodes and runs the
//! nodes with `cluster.learn_peers=false` and `--peers` = their proxies, so that
//! [`Cluster::cut`] isolates a node completely.
//!
//! Views are read from `GET /cluster`; a node has converged when its `ringMembers` is the
//! expected set. Owners are read from `GET /cluster/owner/{room}`.
//!
//! Dropping a cluster kills its processes (SIGKILL), then its proxies, then drops the
//! keyspace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::harness::{http_get, token, Client};
use crate::node::ClusterNode;
use crate::proxy::Proxy;
use crate::store::{cql_target, Keyspace};

/// Heartbeat settings of every test cluster: a node is declared down after ~750 ms of silence.
const HEARTBEAT: &[&str] = &[
    "--set",
    "cluster.heartbeat_interval=\"250ms\"",
    "--set",
    "cluster.heartbeat_misses=3",
];
/// No rate limit gets in the way of the traffic.
const FAST: &[&str] = &[
    "--rate-limit-per-sec",
    "100000",
    "--rate-limit-burst",
    "100000",
];

/// The counters of `GET /cluster`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub handoffs: u64,
    pub cross_node_sent: u64,
    pub cross_node_received: u64,
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "handoffs {}, crossNodeSent {}, crossNodeReceived {}",
            self.handoffs, self.cross_node_sent, self.cross_node_received
        )
    }
}

pub struct Cluster {
    pub test: &'static str,
    /// In start order, dead ones included.
    nodes: Vec<ClusterNode>,
    /// (from, to) → the proxy `from` dials `to` through; empty unless partitionable.
    proxies: BTreeMap<(String, String), Proxy>,
    cookie: String,
    keyspace: Keyspace,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first (kill_on_drop would do it too, but only after the keyspace drop
        // below), then the proxies; the keyspace is dropped by its own destructor.
        self.nodes.clear();
        self.proxies.clear();
    }
}

impl Cluster {
    /// Starts nodes `names` (in order) and waits until every view is `names`. `None` when the
    /// CQL store is not configured (the test then reports NOT RUN).
    pub async fn start(test: &'static str, names: &[&str]) -> Option<Cluster> {
        let mut c = Cluster::empty(test).await?;
        for name in names {
            c.add(name).await;
        }
        c.converge(names, Duration::from_secs(30)).await;
        Some(c)
    }

    /// Like [`Cluster::start`], with a proxy on every ordered pair of nodes, the nodes dialing
    /// only their proxies (`cluster.learn_peers=false`).
    pub async fn start_partitionable(test: &'static str, names: &[&str]) -> Option<Cluster> {
        let mut c = Cluster::empty(test).await?;
        for from in names {
            for to in names {
                if from != to {
                    c.proxies
                        .insert((from.to_string(), to.to_string()), Proxy::start().await);
                }
            }
        }
        for name in names {
            let peers: Vec<String> = names
                .iter()
                .filter(|n| *n != name)
                .map(|to| {
                    c.proxies[&(name.to_string(), to.to_string())]
                        .addr()
                        .to_string()
                })
                .collect();
            let node = c
                .spawn(name, &peers, &["--set", "cluster.learn_peers=false"])
                .await;
            let addr: SocketAddr = node
                .cluster_addr
                .parse()
                .unwrap_or_else(|e| panic!("cluster address {:?}: {e}", node.cluster_addr));
            for ((_, to), p) in &c.proxies {
                if to == name {
                    p.set_upstream(addr);
                }
            }
            c.nodes.push(node);
        }
        c.converge(names, Duration::from_secs(30)).await;
        Some(c)
    }

    async fn empty(test: &'static str) -> Option<Cluster> {
        static N: AtomicU64 = AtomicU64::new(0);
        let target = cql_target(test)?;
        Some(Cluster {
            test,
            nodes: Vec::new(),
            proxies: BTreeMap::new(),
            cookie: format!(
                "cookie-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                test
            ),
            keyspace: Keyspace::new(&target, "parley_cluster_").await,
        })
    }

    /// Starts node `name` with every running node as a seed (the first node has none).
    pub async fn add(&mut self, name: &str) -> &ClusterNode {
        assert!(
            self.proxies.is_empty(),
            "a partitionable cluster has a fixed set of nodes"
        );
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.cluster_addr.clone())
            .collect();
        let node = self.spawn(name, &peers, &[]).await;
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// Starts node `name` on `ip` with the cluster's store but only `args` for the cluster
    /// (no cookie, no peers of its own): for nodes that must find the cluster by other means,
    /// or must be refused by it.
    pub async fn add_custom(
        &mut self,
        name: &str,
        ip: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> &ClusterNode {
        let mut all: Vec<String> = args.to_vec();
        all.extend(HEARTBEAT.iter().map(|s| s.to_string()));
        // The test's own rate limit, if it sets one; none otherwise.
        if !args.iter().any(|a| a.starts_with("--rate-limit")) {
            all.extend(FAST.iter().map(|s| s.to_string()));
        }
        all.extend(self.keyspace.node_args());
        let node = ClusterNode::start_with_env(name, ip, &all, env).await;
        report!(
            "{}: node {name} up: cluster {}",
            self.test,
            node.cluster_addr
        );
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// The cluster's cookie.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    async fn spawn(&self, name: &str, peers: &[String], extra: &[&str]) -> ClusterNode {
        assert!(
            self.nodes.iter().all(|n| n.name != name),
            "node {name} started twice"
        );
        // 127.0.0.11 for the first node, .12 for the second, ...
        let ip = format!("127.0.0.{}", 11 + self.nodes.len());
        let mut args: Vec<String> = vec!["--cluster-cookie".into(), self.cookie.clone()];
        if !peers.is_empty() {
            args.push("--peers".into());
            args.push(peers.join(","));
        }
        args.extend(
            HEARTBEAT
                .iter()
                .chain(FAST)
                .chain(extra)
                .map(|s| s.to_string()),
        );
        args.extend(self.keyspace.node_args());
        let t0 = Instant::now();
        let node = ClusterNode::start(name, &ip, &args).await;
        report!(
            "{}: node {name} up in {:?}: http {} cluster {} peers {peers:?}",
            self.test,
            t0.elapsed(),
            node.addr,
            node.cluster_addr
        );
        node
    }

    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The HTTP addresses of `names`, in that order (what readers and senders dial).
    pub fn addrs(&self, names: &[&str]) -> Vec<String> {
        names.iter().map(|n| self.node(n).addr.clone()).collect()
    }

    /// `GET /cluster` on `name`.
    pub async fn view(&self, name: &str) -> Value {
        get_json(&self.node(name).http("/cluster")).await
    }

    /// Waits until the view of every node of `expected` has `ringMembers` == `expected`;
    /// returns how long it took (also printed).
    pub async fn converge(&self, expected: &[&str], within: Duration) -> Duration {
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        let t0 = Instant::now();
        loop {
            let mut off = Vec::new();
            for n in expected {
                let ring = ring_members(&self.view(n).await);
                if ring != want {
                    off.push(format!("{n} sees {ring:?}"));
                }
            }
            if off.is_empty() {
                report!(
                    "{}: views converged to {want:?} in {:?}",
                    self.test,
                    t0.elapsed()
                );
                return t0.elapsed();
            }
            if t0.elapsed() > within {
                let logs: String = expected
                    .iter()
                    .map(|n| format!("node {n} stderr:\n{}", self.node(n).stderr_tail()))
                    .collect();
                panic!(
                    "{}: views did not converge to {want:?} within {within:?}: {}\n{logs}",
                    self.test,
                    off.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts the shape of `GET /cluster` on every node of `names` in a converged cluster
    /// without proxies: name, protocol, hash, one `self` member at its bound cluster address,
    /// every other member `up` at its bound address, and the `local` and `counters` figures.
    pub async fn check_views(&self, names: &[&str]) {
        for n in names {
            let v = self.view(n).await;
            assert_eq!(v["node"], *n, "/cluster on {n}: {v}");
            assert_eq!(v["protocol"], 1, "/cluster on {n}: {v}");
            assert_eq!(v["hash"], "rendezvous-xxh3-v1", "/cluster on {n}: {v}");
            let members = v["members"]
                .as_array()
                .unwrap_or_else(|| panic!("/cluster on {n}: no members: {v}"));
            let mut seen = BTreeSet::new();
            for m in members {
                let name = m["name"].as_str().unwrap_or_default();
                if !names.contains(&name) {
                    continue; // a member of the past (down) may be listed
                }
                assert!(
                    seen.insert(name),
                    "/cluster on {n}: {name} listed twice: {v}"
                );
                let want_state = if name == *n { "self" } else { "up" };
                assert_eq!(m["state"], want_state, "/cluster on {n}: member {m}");
                assert_eq!(
                    m["addr"].as_str(),
                    Some(self.node(name).cluster_addr.as_str()),
                    "/cluster on {n}: member {name} is not at its bound cluster address \
                     (no --cluster-advertise was given)"
                );
            }
            assert_eq!(seen.len(), names.len(), "/cluster on {n}: members {v}");
            for k in ["rooms", "users", "dormantUsers", "sessions"] {
                assert!(v["local"][k].is_u64(), "/cluster on {n}: local.{k}: {v}");
            }
            counters_of(&v, n);
        }
    }

    /// The counters of node `name`.
    pub async fn counters(&self, name: &str) -> Counters {
        counters_of(&self.view(name).await, name)
    }

    /// `room`'s owner according to node `via`.
    pub async fn owner(&self, via: &str, room: &str) -> String {
        let v = get_json(&self.node(via).http(&format!("/cluster/owner/{room}"))).await;
        assert_eq!(v["room"], room, "/cluster/owner/{room} on {via}: {v}");
        assert!(
            v["ringMembers"].is_array(),
            "/cluster/owner/{room} on {via}: {v}"
        );
        v["owner"]
            .as_str()
            .unwrap_or_else(|| panic!("/cluster/owner/{room} on {via}: no owner: {v}"))
            .to_string()
    }

    /// `room`'s owner, asserting that every node of `nodes` names the same one.
    pub async fn agreed_owner(&self, room: &str, nodes: &[&str]) -> String {
        let mut owners = BTreeMap::new();
        for n in nodes {
            owners.insert(n.to_string(), self.owner(n, room).await);
        }
        let first = owners.values().next().expect("at least one node").clone();
        assert!(
            owners.values().all(|o| *o == first),
            "{}: nodes disagree on the owner of {room}: {owners:?}",
            self.test
        );
        first
    }

    /// A room (`{prefix}-{i}`) that every node of `nodes` says `owner` owns.
    pub async fn room_owned_by(&self, owner: &str, prefix: &str, nodes: &[&str]) -> String {
        for i in 0..200 {
            let room = format!("{prefix}-{i}");
            if self.owner(nodes[0], &room).await == owner {
                assert_eq!(self.agreed_owner(&room, nodes).await, owner);
                return room;
            }
        }
        panic!("{}: no room {prefix}-0..200 is owned by {owner}", self.test);
    }

    /// A scripted e2e client of `user` on node `name`.
    pub async fn client(&self, name: &str, user: &str) -> Client {
        let url = format!(
            "ws://{}/ws?token={}",
            self.node(name).addr,
            token(user, &user.to_uppercase())
        );
        Client::connect_url(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {user} to {name}: {e:?}"))
    }

    pub async fn kill9(&mut self, name: &str) {
        self.node_mut(name).kill9().await;
        report!("{}: node {name} killed (SIGKILL)", self.test);
    }

    pub fn sigterm(&self, name: &str) {
        self.node(name).sigterm();
        report!("{}: node {name} sent SIGTERM", self.test);
    }

    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> ExitStatus {
        self.node_mut(name).wait_exit(within).await
    }

    /// Cuts every link to and from `name` (both directions, established and new).
    pub fn cut(&self, name: &str) {
        self.links_of(name).for_each(Proxy::cut);
        report!("{}: links of {name} cut", self.test);
    }

    /// Heals every link to and from `name`.
    pub fn heal(&self, name: &str) {
        self.links_of(name).for_each(Proxy::heal);
        report!("{}: links of {name} healed", self.test);
    }

    fn links_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Proxy> + 'a {
        assert!(!self.proxies.is_empty(), "not a partitionable cluster");
        self.proxies
            .iter()
            .filter(move |((from, to), _)| from == name || to == name)
            .map(|(_, p)| p)
    }
}

async fn get_json(url: &str) -> Value {
    let (status, body) = http_get(url).await;
    assert_eq!(status, 200, "GET {url}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

fn ring_members(view: &Value) -> BTreeSet<String> {
    view["ringMembers"]
        .as_array()
        .unwrap_or_else(|| panic!("/cluster without ringMembers: {view}"))
        .iter()
        .map(|m| m.as_str().expect("ringMembers are names").to_string())
        .collect()
}

fn counters_of(view: &Value, name: &str) -> Counters {
    let c = &view["counters"];
    let get = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("/cluster on {name}: counters.{k}: {view}"))
    };
    Counters {
        handoffs: get("handoffs"),
        cross_node_sent: get("crossNodeSent"),
        cross_node_received: get("crossNodeReceived"),
    }
}
