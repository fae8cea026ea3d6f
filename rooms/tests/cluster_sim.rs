//! An in-process cluster: several `Rooms` (each a node with its own hub, room and user
//! actors) over an in-memory transport and one shared [`MemoryStore`] (one handle per node, so
//! the ownership fence is real). A seeded schedule sends messages from sessions on every node
//! while nodes crash, restart, join, and get partitioned, with views updated node by node (so
//! they disagree for a moment), then heals everything and checks the history:
//!
//! * every room's seqs are exactly 1..=N (no seq used twice, no gap);
//! * every acknowledged message is in the history exactly once, at its acknowledged seq;
//! * no seq was acknowledged for two different messages.
//!
//! Cheap (no sockets, no disk): about 0.5–2 s per seed; 8 seeds by default,
//! `PARLEY_SIM_SEEDS=200` for a long soak. User actors hibernate after 20 ms without a message
//! (`PARLEY_SIM_HIBERNATE_MS` to change it), so they hibernate and wake throughout the schedule. The multi-process tests in
//! `node/tests/cluster/` cover the real transport (ractor_cluster) and failure detector.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use cluster_proto::api::SendRequest;
use cluster_proto::wire::{self, Cast};
use cluster_proto::{Member, Push, PushError, PushSink, RoomId, SessionId, UserId};
use futures::future::BoxFuture;
use history::MemoryStore;
use rooms::{ClusterView, Hub, Rooms, RoomsConfig, Transport, TransportError, UserConfig};
use tokio::sync::mpsc;

/// The ordered cast queue of each (from, to) link.
type Links = HashMap<(String, String), mpsc::UnboundedSender<Vec<u8>>>;

/// The network: which node is alive, which links are cut, one ordered queue per link.
#[derive(Default)]
struct Net {
    nodes: RwLock<HashMap<String, Weak<Rooms>>>,
    cut: RwLock<HashSet<(String, String)>>,
    links: Mutex<Links>,
}

impl Net {
    fn reachable(&self, from: &str, to: &str) -> Option<Arc<Rooms>> {
        if self.cut.read().unwrap().contains(&(from.into(), to.into())) {
            return None;
        }
        self.nodes.read().unwrap().get(to).and_then(Weak::upgrade)
    }

    /// The in-order queue of casts from `from` to `to` (applied by one task per link, as a
    /// ractor_cluster link applies frames in order).
    fn link(self: &Arc<Self>, from: &str, to: &str) -> mpsc::UnboundedSender<Vec<u8>> {
        let mut links = self.links.lock().unwrap();
        links
            .entry((from.to_string(), to.to_string()))
            .or_insert_with(|| {
                let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
                let (net, from, to) = (self.clone(), from.to_string(), to.to_string());
                tokio::spawn(async move {
                    while let Some(frame) = rx.recv().await {
                        let Some(rooms) = net.reachable(&from, &to) else {
                            continue; // lost, as on a cut link
                        };
                        let f = wire::decode_cast(&frame).expect("cast frame decodes");
                        if !matches!(f.cast, Cast::Leaving) {
                            rooms.handle_cast(&f.from, f.cast);
                        }
                    }
                });
                tx
            })
            .clone()
    }
}

struct SimTransport {
    me: String,
    net: Arc<Net>,
}

impl Transport for SimTransport {
    fn cast(&self, node: &str, frame: Vec<u8>) -> Result<(), TransportError> {
        if self.net.reachable(&self.me, node).is_none() {
            return Err(TransportError::NotConnected(node.into()));
        }
        let _ = self.net.link(&self.me, node).send(frame);
        Ok(())
    }

    fn call(
        &self,
        node: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let target = self.net.reachable(&self.me, node);
        let node = node.to_string();
        Box::pin(async move {
            let rooms = target.ok_or_else(|| TransportError::NotConnected(node.clone()))?;
            let f = wire::decode_call(&frame).expect("call frame decodes");
            let answer = tokio::time::timeout(timeout, rooms.handle_call(&f.from, f.request))
                .await
                .map_err(|_| TransportError::Timeout(node))?;
            Ok(wire::encode_response(&answer).expect("encodes"))
        })
    }
}

/// A session's outbound queue: counts pushes (the history check is against the store).
#[derive(Default)]
struct Sink(Mutex<usize>);

impl PushSink for Sink {
    fn try_push(&self, _p: &Arc<Push>) -> Result<(), PushError> {
        *self.0.lock().unwrap() += 1;
        Ok(())
    }
    fn evict(&self) {}
}

/// xorshift64*: the schedule is a function of the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `UserConfig::hibernate_after` of every node.
fn hibernate_after() -> Duration {
    let ms = std::env::var("PARLEY_SIM_HIBERNATE_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_millis(ms)
}

struct Sim {
    net: Arc<Net>,
    store: MemoryStore,
    nodes: BTreeMap<String, Arc<Rooms>>,
    /// The session of each node (one user per node, joined to every room).
    sessions: BTreeMap<String, (SessionId, Member)>,
    rooms: Vec<RoomId>,
    next_session: u64,
    /// (room, client id) → (seq, text) of every acknowledged send.
    acked: HashMap<(RoomId, String), (u64, String)>,
    sent: u64,
}

impl Sim {
    fn config(name: &str) -> RoomsConfig {
        RoomsConfig {
            node_name: name.to_string(),
            user: UserConfig {
                rate_per_sec: 1e9,
                burst: 1e9,
                hibernate_after: hibernate_after(),
                ..UserConfig::default()
            },
            call_timeout: Duration::from_secs(2),
            ..RoomsConfig::default()
        }
    }

    async fn start_node(&mut self, name: &str) {
        let transport = Arc::new(SimTransport {
            me: name.to_string(),
            net: self.net.clone(),
        });
        let view = ClusterView::new(name, transport);
        let rooms = Rooms::start(
            Self::config(name),
            self.store.handle(),
            Arc::new(Hub::default()),
            view,
        )
        .await
        .expect("start a node");
        self.net
            .nodes
            .write()
            .unwrap()
            .insert(name.to_string(), Arc::downgrade(&rooms));
        self.nodes.insert(name.to_string(), rooms);
    }

    /// Gives every node the view "the nodes it can reach", one node at a time.
    async fn update_views(&mut self, rng: &mut Rng) {
        let mut names: Vec<String> = self.nodes.keys().cloned().collect();
        // Random order: views disagree for a moment, as in a real cluster.
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for n in names {
            let members: Vec<String> = self
                .nodes
                .keys()
                .filter(|m| **m != n && self.net.reachable(&n, m).is_some())
                .cloned()
                .collect();
            let rooms = self.nodes[&n].clone();
            let old = rooms.cluster().set_members(members);
            if *old != *rooms.cluster().ring() {
                rooms.membership_changed(&old);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn sync_all(&self) {
        for rooms in self.nodes.values() {
            rooms.sync_registrations().await;
        }
    }

    /// One user per node, connected and joined to every room (retrying while views settle).
    async fn connect_session(&mut self, node: &str) {
        self.next_session += 1;
        let session = SessionId(self.next_session);
        let member = Member {
            user_id: UserId::new(&format!("user-{node}")).unwrap(),
            username: node.to_string(),
        };
        let rooms = self.nodes[node].clone();
        for _ in 0..20 {
            if rooms
                .connect(session, &member, Arc::new(Sink::default()))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for room in &self.rooms {
            for _ in 0..20 {
                if rooms.join(session, &member, room).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.sessions.insert(node.to_string(), (session, member));
    }

    /// A burst of concurrent sends from random nodes into random rooms.
    async fn send_burst(&mut self, rng: &mut Rng, n: usize) {
        let mut jobs = Vec::new();
        for _ in 0..n {
            let names: Vec<&String> = self.sessions.keys().collect();
            let node = names[rng.below(names.len() as u64) as usize].clone();
            let Some(rooms) = self.nodes.get(&node).cloned() else {
                continue;
            };
            let (session, member) = self.sessions[&node].clone();
            let room = self.rooms[rng.below(self.rooms.len() as u64) as usize].clone();
            self.sent += 1;
            let cid = format!("{node}-{}", self.sent);
            let text = format!("m{} from {node}", self.sent);
            jobs.push(async move {
                let req = SendRequest {
                    room: room.clone(),
                    text: text.clone(),
                    attachments: "[]".into(),
                    client_msg_id: Some(cid.clone()),
                };
                let r = rooms.send(session, &member, req).await;
                (room, cid, text, r)
            });
        }
        for (room, cid, text, r) in futures::future::join_all(jobs).await {
            if let Ok(m) = r {
                assert_eq!(m.text, text, "the ack is for the message sent");
                let prev = self.acked.insert((room, cid), (m.seq, text));
                assert!(prev.is_none(), "one ack per client id");
            }
        }
    }

    async fn check(&self) {
        let reader = self.store.handle();
        let mut by_seq: HashMap<(RoomId, u64), String> = HashMap::new();
        for ((room, _), (seq, text)) in &self.acked {
            if let Some(other) = by_seq.insert((room.clone(), *seq), text.clone()) {
                assert_eq!(
                    &other, text,
                    "{room}: seq {seq} acknowledged for two messages"
                );
            }
        }
        for room in &self.rooms {
            let all = reader
                .after(room, 0, 1_000_000)
                .await
                .expect("read history");
            let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
            let want: Vec<u64> = (1..=all.len() as u64).collect();
            assert_eq!(seqs, want, "{room}: history seqs are exactly 1..=N");
            let mut ids = HashSet::new();
            for m in &all {
                let cid = m
                    .client_msg_id
                    .clone()
                    .expect("every message has a client id");
                assert!(ids.insert(cid.clone()), "{room}: {cid} stored twice");
                if let Some((seq, text)) = self.acked.get(&(room.clone(), cid.clone())) {
                    assert_eq!((m.seq, &m.text), (*seq, text), "{room}: {cid} where acked");
                }
            }
            for ((r, cid), _) in self.acked.iter().filter(|((r, _), _)| r == room) {
                assert!(ids.contains(cid), "{r}: acknowledged {cid} is missing");
            }
        }
    }
}

/// Acknowledged sends, sends, handoffs, and users dormant at the end.
async fn run(seed: u64) -> (usize, u64, u64, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut sim = Sim {
        net: Arc::new(Net::default()),
        store: MemoryStore::new(),
        nodes: BTreeMap::new(),
        sessions: BTreeMap::new(),
        rooms: (0..4)
            .map(|i| RoomId::new(&format!("room-{i}")).unwrap())
            .collect(),
        next_session: seed << 20,
        acked: HashMap::new(),
        sent: 0,
    };
    for n in ["a", "b", "c"] {
        sim.start_node(n).await;
    }
    sim.update_views(&mut rng).await;
    for n in ["a", "b", "c"] {
        sim.connect_session(n).await;
    }
    let mut partitioned: Option<String> = None;
    for _step in 0..12 {
        let burst = 4 + rng.below(8) as usize;
        match rng.below(6) {
            // A node crashes (its actors stop, its links vanish) and comes back empty.
            0 => {
                let victim = ["a", "b", "c"][rng.below(3) as usize].to_string();
                if let Some(r) = sim.nodes.remove(&victim) {
                    r.stop();
                    sim.net.nodes.write().unwrap().remove(&victim);
                    sim.sessions.remove(&victim);
                    sim.update_views(&mut rng).await;
                    sim.send_burst(&mut rng, burst).await;
                    sim.start_node(&victim).await;
                    sim.update_views(&mut rng).await;
                    sim.connect_session(&victim).await;
                }
            }
            // A partition: one node cut off, both sides keep serving (and claiming).
            1 if partitioned.is_none() => {
                let victim = ["a", "b", "c"][rng.below(3) as usize].to_string();
                {
                    let mut cut = sim.net.cut.write().unwrap();
                    for other in sim.nodes.keys().filter(|n| **n != victim) {
                        cut.insert((victim.clone(), other.clone()));
                        cut.insert((other.clone(), victim.clone()));
                    }
                }
                sim.update_views(&mut rng).await;
                partitioned = Some(victim);
            }
            // Heal.
            2 if partitioned.is_some() => {
                sim.net.cut.write().unwrap().clear();
                partitioned = None;
                sim.update_views(&mut rng).await;
            }
            // A fourth node joins (or leaves again).
            3 => {
                if sim.nodes.contains_key("d") {
                    if let Some(r) = sim.nodes.remove("d") {
                        r.stop();
                        sim.net.nodes.write().unwrap().remove("d");
                        sim.sessions.remove("d");
                    }
                } else {
                    sim.start_node("d").await;
                    sim.update_views(&mut rng).await;
                    sim.connect_session("d").await;
                }
                sim.update_views(&mut rng).await;
            }
            _ => {}
        }
        // Traffic while views may still disagree, then again after the registrations sync.
        sim.send_burst(&mut rng, burst).await;
        sim.sync_all().await;
        sim.send_burst(&mut rng, burst).await;
    }
    sim.net.cut.write().unwrap().clear();
    sim.update_views(&mut rng).await;
    sim.sync_all().await;
    sim.send_burst(&mut rng, 8).await;
    sim.check().await;
    let handoffs = sim
        .nodes
        .values()
        .map(|r| {
            r.cluster()
                .counters
                .handoffs
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let dormant = sim.nodes.values().map(|r| r.dormant_users()).sum();
    for r in sim.nodes.values() {
        r.stop();
    }
    (sim.acked.len(), sim.sent, handoffs, dormant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_membership_changes_never_reuse_a_seq_or_lose_an_ack() {
    let seeds: u64 = std::env::var("PARLEY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let (mut acked, mut sent, mut handoffs, mut dormant) = (0, 0, 0, 0);
    for seed in 1..=seeds {
        let (a, s, h, d) = run(seed).await;
        acked += a;
        sent += s;
        handoffs += h;
        dormant += d;
    }
    eprintln!(
        "{seeds} seeds: {acked} of {sent} sends acknowledged, all in history exactly once; \
         {handoffs} room handoffs (moved or fenced); {dormant} users dormant at the ends"
    );
    assert!(
        acked > 0,
        "the schedule acknowledged nothing: it tested nothing"
    );
    assert!(
        handoffs > 0,
        "no room ever changed owner: the schedule tested no handoff"
    );
}
