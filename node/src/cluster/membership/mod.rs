//! Who is in the cluster, as this node sees it: the failure detector and the dialer.
//!
//! A peer enters the ring after three steps: its link is up (a ractor_cluster NodeSession,
//! cookie-authenticated), its host actor's proxy appears in the `parley.hosts` process group,
//! and it answered our [`Hello`] with a compatible one (same protocol version, same ring hash
//! and virtual-node count, another name). An incompatible node is refused with an error log
//! line and its link is closed.
//!
//! ractor_cluster has no failure detector (a hung or partitioned peer stays "connected" until
//! TCP gives up), so this actor pings every up peer each `heartbeat_interval` with a deadline
//! of one interval. A peer that misses `heartbeat_misses` pings in a row is declared down: it
//! leaves the ring (its rooms and users move to their next owners) and its link is killed,
//! which makes both sides start over with a fresh handshake once it answers again. Detection
//! takes at most `heartbeat_interval × (heartbeat_misses + 1)`: 4 s by default. A peer that
//! closes its socket (crash, kill -9) is noticed at once.
//!
//! The dialer keeps connecting to every known address that has no link: the seeds
//! (`--peers`), the addresses peers report (`learn_peers`), and `dns:` discovery. Attempts back
//! off per address (a second link to an already connected node is closed by ractor_cluster's
//! election, so it is not redialed every tick); the backoffs reset when a peer goes down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_proto::wire::{self, Cast, Hello, Request, Response};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::{NodeServerMessage, NodeSessionMessage};
use rooms::Rooms;

use super::host::{reply_with, Frame, HostMsg};
use super::transport::ClusterTransport;
use super::{net, HOSTS_GROUP, HOST_PREFIX, NODE_HOSTNAME};

mod dialer;
mod status;

use dialer::{Target, DIAL_MIN};
pub use status::{MemberStatus, MembershipStatus, PeerState};

pub enum MembershipMsg {
    /// A peer's hello (it is the caller); answered with ours or a refusal.
    HelloFrom {
        hello: Hello,
        reply: RpcReplyPort<Frame>,
    },
    PingFrom {
        from: String,
        reply: RpcReplyPort<Frame>,
    },
    PeerLeaving(String),
    HelloDone {
        node: String,
        result: Result<Hello, String>,
    },
    PingDone {
        node: String,
        result: Result<bool, String>,
    },
    Heartbeat,
    DialTick,
    DialDone {
        target: String,
        result: Result<SocketAddr, String>,
    },
    DnsResolved(Vec<String>),
    SessionOpened {
        node_id: u64,
        actor: ActorRef<NodeSessionMessage>,
        peer_addr: String,
    },
    SessionNamed {
        node_id: u64,
        name: String,
    },
    SessionClosed {
        node_id: u64,
    },
    /// This node drains: leave every ring, tell the peers.
    Leave(RpcReplyPort<()>),
    Status(RpcReplyPort<MembershipStatus>),
}

impl ractor::Message for MembershipMsg {}

pub struct MembershipArgs {
    pub hello: Hello,
    pub seeds: Vec<String>,
    pub learn_peers: bool,
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    pub connect_timeout: Duration,
    pub node_server: ActorRef<NodeServerMessage>,
    pub transport: Arc<ClusterTransport>,
    pub rooms: Arc<Rooms>,
}

struct Peer {
    host: ActorRef<HostMsg>,
    state: PeerState,
    hello: Option<Hello>,
    misses: u32,
    in_flight: bool,
    hello_failures: u32,
}

struct SessionRec {
    actor: ActorRef<NodeSessionMessage>,
    peer_addr: String,
    opened: Instant,
    name: Option<String>,
}

pub struct MembershipState {
    args: MembershipArgs,
    peers: HashMap<String, Peer>,
    targets: BTreeMap<String, Target>,
    learned: BTreeSet<String>,
    dns: BTreeSet<String>,
    sessions: HashMap<u64, SessionRec>,
    ring: Vec<String>,
    leaving: bool,
}

pub struct Membership;

fn call_frame(me: &str, request: Request) -> Option<Vec<u8>> {
    wire::encode_call(me, request, None).ok()
}

/// Calls a peer's host and decodes the answer.
async fn ask(
    host: ActorRef<HostMsg>,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<Response, String> {
    match host
        .call(|reply| HostMsg::Call(Frame(frame), reply), Some(timeout))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(Frame(bytes))) => {
            wire::decode_response(&bytes).map_err(|e| e.to_string())
        }
        Ok(ractor::rpc::CallResult::Timeout) => Err("timed out".into()),
        Ok(ractor::rpc::CallResult::SenderError) => Err("no answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl MembershipState {
    fn me(&self) -> &str {
        &self.args.hello.node
    }

    fn hello(&self) -> Hello {
        let mut h = self.args.hello.clone();
        h.peers = self
            .peers
            .values()
            .filter(|p| matches!(p.state, PeerState::Up | PeerState::Suspect))
            .filter_map(|p| p.hello.as_ref().map(|h| h.advertise.clone()))
            .collect();
        h.leaving = self.leaving;
        h
    }

    /// Recomputes the ring from the peers' states; tells the room layer if it changed.
    fn update_ring(&mut self) {
        let mut ring: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(p.state, PeerState::Up | PeerState::Suspect))
            .map(|(n, _)| n.clone())
            .collect();
        ring.sort();
        metrics::gauge!("parley_cluster_members").set((ring.len() + 1) as f64);
        if ring == self.ring {
            return;
        }
        tracing::info!(members = ?ring, leaving = self.leaving, "cluster membership changed");
        self.ring = ring.clone();
        let cluster = self.args.rooms.cluster().clone();
        let old = if self.leaving {
            cluster.set_members_without_self(ring)
        } else {
            cluster.set_members(ring)
        };
        self.args.rooms.membership_changed(&old);
        let rooms = self.args.rooms.clone();
        tokio::spawn(async move {
            rooms.sync_registrations().await;
        });
    }

    fn kill_link(&mut self, node: &str) {
        let full = format!("{node}@{NODE_HOSTNAME}");
        for rec in self.sessions.values() {
            if rec.name.as_deref() == Some(full.as_str()) {
                rec.actor.kill();
            }
        }
    }

    fn peer_down(&mut self, node: &str, why: &str) {
        if let Some(p) = self.peers.get_mut(node) {
            if p.state == PeerState::Down {
                return;
            }
            tracing::warn!(peer = %node, reason = %why, "peer declared down");
            p.state = PeerState::Down;
        }
        metrics::counter!("parley_cluster_peer_failures_total").increment(1);
        self.args.transport.set_peer(node, None);
        self.update_ring();
        self.kill_link(node);
        for t in self.targets.values_mut() {
            t.backoff = DIAL_MIN;
            t.next = Instant::now();
        }
    }

    /// Rescans the hosts process group for peers that appeared or vanished.
    fn rescan(&mut self, myself: &ActorRef<MembershipMsg>) {
        let mut seen: HashMap<String, ActorRef<HostMsg>> = HashMap::new();
        for cell in ractor::pg::get_members(&HOSTS_GROUP.to_string()) {
            if cell.get_id().is_local() {
                continue;
            }
            let Some(name) = cell.get_name() else {
                continue;
            };
            let Some(node) = name.strip_prefix(HOST_PREFIX) else {
                continue;
            };
            seen.insert(node.to_string(), ActorRef::<HostMsg>::from(cell));
        }
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(n, p)| seen.get(*n).is_none_or(|h| h.get_id() != p.host.get_id()))
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = false;
        for n in gone {
            if let Some(p) = self.peers.remove(&n) {
                changed |= matches!(p.state, PeerState::Up | PeerState::Suspect);
                tracing::info!(peer = %n, "peer link closed");
                self.args.transport.set_peer(&n, None);
            }
        }
        if changed {
            for t in self.targets.values_mut() {
                t.backoff = DIAL_MIN;
                t.next = Instant::now();
            }
            self.update_ring();
        }
        for (node, host) in seen {
            if self.peers.contains_key(&node) {
                continue;
            }
            if node == self.me() {
                continue;
            }
            self.peers.insert(
                node.clone(),
                Peer {
                    host,
                    state: PeerState::Joining,
                    hello: None,
                    misses: 0,
                    in_flight: false,
                    hello_failures: 0,
                },
            );
            self.send_hello(myself, &node);
        }
    }

    fn send_hello(&mut self, myself: &ActorRef<MembershipMsg>, node: &str) {
        let hello = self.hello();
        let me = self.me().to_string();
        let timeout = self.args.connect_timeout;
        let Some(p) = self.peers.get_mut(node) else {
            return;
        };
        if p.in_flight {
            return;
        }
        let Some(frame) = call_frame(&me, Request::Hello(hello)) else {
            return;
        };
        p.in_flight = true;
        let host = p.host.clone();
        let (myself, node) = (myself.clone(), node.to_string());
        tokio::spawn(async move {
            let result = match ask(host, frame, timeout).await {
                Ok(Response::Hello(h)) => Ok(h),
                Ok(Response::Refused(why)) => Err(format!("refused us: {why}")),
                Ok(_) => Err("unexpected answer to hello".into()),
                Err(e) => Err(e),
            };
            let _ = myself.cast(MembershipMsg::HelloDone { node, result });
        });
    }

    fn learn(&mut self, hello: &Hello) {
        if hello.advertise != self.args.hello.advertise {
            self.learned.insert(hello.advertise.clone());
        }
        if self.args.learn_peers {
            for a in &hello.peers {
                if *a != self.args.hello.advertise {
                    self.learned.insert(a.clone());
                }
            }
        }
    }

    fn heartbeat(&mut self, myself: &ActorRef<MembershipMsg>) {
        let me = self.me().to_string();
        let timeout = self.args.heartbeat_interval;
        let joining: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Joining && !p.in_flight)
            .map(|(n, _)| n.clone())
            .collect();
        for n in joining {
            self.send_hello(myself, &n);
        }
        let Some(frame) = call_frame(&me, Request::Ping) else {
            return;
        };
        for (node, p) in self.peers.iter_mut() {
            if !matches!(
                p.state,
                PeerState::Up | PeerState::Suspect | PeerState::Leaving
            ) || p.in_flight
            {
                continue;
            }
            p.in_flight = true;
            let (host, frame) = (p.host.clone(), frame.clone());
            let (myself, node) = (myself.clone(), node.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = match ask(host, frame, timeout).await {
                    Ok(Response::Pong { leaving }) => Ok(leaving),
                    Ok(_) => Err("unexpected answer to ping".into()),
                    Err(e) => Err(e),
                };
                metrics::histogram!("parley_cluster_heartbeat_seconds")
                    .record(started.elapsed().as_secs_f64());
                let _ = myself.cast(MembershipMsg::PingDone { node, result });
            });
        }
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        ractor::pg::monitor(HOSTS_GROUP.to_string(), myself.get_cell());
        myself.send_interval(args.heartbeat_interval, || MembershipMsg::Heartbeat);
        myself.send_interval(Duration::from_millis(500), || MembershipMsg::DialTick);
        let _ = myself.cast(MembershipMsg::DialTick);
        Ok(MembershipState {
            args,
            peers: HashMap::new(),
            targets: BTreeMap::new(),
            learned: BTreeSet::new(),
            dns: BTreeSet::new(),
            sessions: HashMap::new(),
            ring: Vec::new(),
            leaving: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::HelloFrom { hello, reply } => {
                match state.args.hello.incompatibility(&hello) {
                    Some(why) => {
                        tracing::error!(peer = %hello.node, reason = %why, "refusing an incompatible node");
                        reply_with(reply, &Response::Refused(why));
                        state.kill_link(&hello.node);
                    }
                    None => {
                        state.learn(&hello);
                        reply_with(reply, &Response::Hello(state.hello()));
                    }
                }
            }
            MembershipMsg::PingFrom { from, reply } => {
                reply_with(
                    reply,
                    &Response::Pong {
                        leaving: state.leaving,
                    },
                );
                // A ping from a peer we hold down: it is back (same link); start over.
                if state
                    .peers
                    .get(&from)
                    .is_some_and(|p| p.state == PeerState::Down)
                {
                    state.kill_link(&from);
                }
            }
            MembershipMsg::PeerLeaving(node) => {
                if let Some(p) = state.peers.get_mut(&node) {
                    tracing::info!(peer = %node, "peer is draining");
                    p.state = PeerState::Leaving;
                    state.args.transport.set_peer(&node, None);
                    state.update_ring();
                }
            }
            MembershipMsg::HelloDone { node, result } => {
                let me = state.args.hello.clone();
                let Some(p) = state.peers.get_mut(&node) else {
                    return Ok(());
                };
                p.in_flight = false;
                match result {
                    Ok(h) => {
                        if let Some(why) = me.incompatibility(&h).or_else(|| {
                            (h.node != node)
                                .then(|| format!("its host is named {node} but it says {}", h.node))
                        }) {
                            tracing::error!(peer = %node, reason = %why, "refusing an incompatible node");
                            p.state = PeerState::Refused;
                            state.kill_link(&node);
                            return Ok(());
                        }
                        p.state = if h.leaving {
                            PeerState::Leaving
                        } else {
                            PeerState::Up
                        };
                        p.misses = 0;
                        let host = p.host.clone();
                        let up = p.state == PeerState::Up;
                        p.hello = Some(h.clone());
                        tracing::info!(peer = %node, addr = %h.advertise, "peer joined");
                        state.learn(&h);
                        if up {
                            state.args.transport.set_peer(&node, Some(host));
                        }
                        state.update_ring();
                    }
                    Err(e) => {
                        p.hello_failures += 1;
                        tracing::warn!(peer = %node, error = %e, attempt = p.hello_failures, "handshake failed");
                        if p.hello_failures >= 3 {
                            p.state = PeerState::Refused;
                            state.kill_link(&node);
                        }
                    }
                }
            }
            MembershipMsg::PingDone { node, result } => {
                let misses_allowed = state.args.heartbeat_misses;
                let Some(p) = state.peers.get_mut(&node) else {
                    return Ok(());
                };
                p.in_flight = false;
                match result {
                    Ok(leaving) => {
                        p.misses = 0;
                        if leaving && p.state != PeerState::Leaving {
                            p.state = PeerState::Leaving;
                            state.args.transport.set_peer(&node, None);
                            state.update_ring();
                        } else if p.state == PeerState::Suspect {
                            p.state = PeerState::Up;
                        }
                    }
                    Err(e) => {
                        p.misses += 1;
                        if p.misses >= misses_allowed {
                            let why = format!("{} heartbeats missed ({e})", p.misses);
                            state.peer_down(&node, &why);
                        } else if p.state == PeerState::Up {
                            tracing::info!(peer = %node, error = %e, "heartbeat missed");
                            p.state = PeerState::Suspect;
                        }
                    }
                }
            }
            MembershipMsg::Heartbeat => state.heartbeat(&myself),
            MembershipMsg::DialTick => state.dial_tick(&myself),
            MembershipMsg::DialDone { target, result } => {
                if let Some(t) = state.targets.get_mut(&target) {
                    t.dialing = false;
                    match result {
                        Ok(remote) => t.remote = Some(remote.to_string()),
                        Err(e) => tracing::debug!(%target, error = %e, "dial failed"),
                    }
                }
            }
            MembershipMsg::DnsResolved(addrs) => {
                state.dns = addrs.into_iter().collect();
            }
            MembershipMsg::SessionOpened {
                node_id,
                actor,
                peer_addr,
            } => {
                state.sessions.insert(
                    node_id,
                    SessionRec {
                        actor,
                        peer_addr,
                        opened: Instant::now(),
                        name: None,
                    },
                );
            }
            MembershipMsg::SessionNamed { node_id, name } => {
                if let Some(r) = state.sessions.get_mut(&node_id) {
                    r.name = Some(name);
                }
            }
            MembershipMsg::SessionClosed { node_id } => {
                state.sessions.remove(&node_id);
                state.rescan(&myself);
            }
            MembershipMsg::Leave(reply) => {
                state.leaving = true;
                let frame = wire::encode_cast(state.me(), Cast::Leaving).ok();
                for p in state.peers.values() {
                    if let Some(f) = &frame {
                        let _ = p.host.cast(HostMsg::Cast(Frame(f.clone())));
                    }
                }
                state.ring.clear();
                state.ring.push("\u{0}".into()); // force the recompute below
                state.update_ring();
                let _ = reply.send(());
            }
            MembershipMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<MembershipMsg>,
        evt: SupervisionEvent,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(_) = evt {
            state.rescan(&myself);
        }
        Ok(())
    }
}
