//! The cluster wiring of a node: ractor_cluster membership, the failure detector, the dialer
//! and the transport the room layer uses to reach other nodes. See `docs/cluster.md` for the
//! operator's view and `docs/consistency.md` for what clients can rely on.
//!
//! ```text
//! NodeServer (ractor_cluster)   cookie-authenticated links, one per peer; sockets from net.rs
//!  ├─ Host "parley-host@<node>"  the one remotable actor: frames in (host.rs)
//!  ├─ Membership                 handshake, heartbeats, dialer, ring updates (membership.rs)
//!  └─ ClusterTransport           frames out, to peers that are up (transport.rs)
//! ```

mod host;
mod membership;
mod net;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cluster_proto::wire::{Hello, PROTOCOL_VERSION};
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use rooms::{ClusterView, Rooms};

pub use membership::MembershipStatus;
use membership::{Membership, MembershipArgs, MembershipMsg};

use crate::config::ClusterSettings;

/// The process group of the nodes' host actors.
pub const HOSTS_GROUP: &str = "parley.hosts";
/// Host actors are named `parley-host@<node name>`.
pub const HOST_PREFIX: &str = "parley-host@";
/// The "hostname" half of ractor_cluster node names (`<node>@parley`): nodes are identified
/// by their Parley name, addresses live in the handshake.
pub const NODE_HOSTNAME: &str = "parley";

/// A running cluster membership.
pub struct Cluster {
    membership: ActorRef<MembershipMsg>,
    node_server: ActorRef<NodeServerMessage>,
    host: ActorRef<host::HostMsg>,
    pub listen: SocketAddr,
    pub advertise: String,
}

/// Builds the room layer's cluster view: with a transport when clustering is configured.
pub fn view(
    node_name: &str,
    settings: &ClusterSettings,
) -> (Arc<ClusterView>, Option<Arc<transport::ClusterTransport>>) {
    if settings.listen.is_none() {
        return (ClusterView::solo(node_name), None);
    }
    let t = Arc::new(transport::ClusterTransport::new(settings.max_frame_bytes));
    (ClusterView::new(node_name, t.clone()), Some(t))
}

struct Events(ActorRef<MembershipMsg>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::SessionOpened {
            node_id: ses.node_id,
            actor: ses.actor,
            peer_addr: ses.peer_addr,
        });
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(MembershipMsg::SessionClosed {
            node_id: ses.node_id,
        });
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if let Some(n) = ses.peer_name {
            let _ = self.0.cast(MembershipMsg::SessionNamed {
                node_id: ses.node_id,
                name: n.name,
            });
        }
    }
    fn node_session_ready(&self, _ses: NodeServerSessionInformation) {}
}

impl Cluster {
    /// Starts the cluster side of a node (on the core runtime).
    pub async fn start(
        node_name: &str,
        settings: &ClusterSettings,
        transport: Arc<transport::ClusterTransport>,
        rooms: Arc<Rooms>,
        test_hooks: bool,
    ) -> anyhow::Result<Cluster> {
        let listen_at = settings.listen.context("cluster.listen is not set")?;
        let cookie = settings
            .effective_cookie()?
            .context("a cluster needs a cookie")?;
        let listener = tokio::net::TcpListener::bind(listen_at)
            .await
            .with_context(|| format!("binding the cluster address {listen_at}"))?;
        let listen = listener.local_addr()?;
        let advertise = settings
            .advertise
            .clone()
            .unwrap_or_else(|| listen.to_string());
        // ractor_cluster's own listener is not used (ours sets socket options and supports
        // port 0); it is kept on an ephemeral loopback port, still behind the cookie.
        let server = NodeServer::new(
            0,
            cookie,
            node_name.to_string(),
            NODE_HOSTNAME.to_string(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::IpAddr::from([127, 0, 0, 1]))
        .with_max_inbound_frame_size(settings.max_frame_bytes as u64 + 64 * 1024);
        let (node_server, _) =
            Actor::spawn(Some(format!("parley-nodeserver@{node_name}")), server, ())
                .await
                .context("starting the cluster node server")?;
        // Test hook: pretend to speak another protocol version (to test the refusal).
        let protocol = test_hooks
            .then(|| std::env::var("PARLEY_TEST_HELLO_PROTOCOL").ok())
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PROTOCOL_VERSION);
        let hello = Hello {
            protocol,
            ring_hash: rooms::ring::RING_HASH.to_string(),
            virtual_nodes: rooms::ring::VIRTUAL_NODES,
            node: node_name.to_string(),
            advertise: advertise.clone(),
            peers: Vec::new(),
            leaving: false,
        };
        let (membership, _) = Actor::spawn(
            Some(format!("parley-membership@{node_name}")),
            Membership,
            MembershipArgs {
                hello,
                seeds: settings.peers.clone(),
                learn_peers: settings.learn_peers,
                heartbeat_interval: settings.heartbeat_interval,
                heartbeat_misses: settings.heartbeat_misses,
                connect_timeout: settings.connect_timeout,
                node_server: node_server.clone(),
                transport,
                rooms: rooms.clone(),
            },
        )
        .await
        .context("starting the membership actor")?;
        node_server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "parley-membership".into(),
                subscription: Box::new(Events(membership.clone())),
            })
            .map_err(|e| anyhow::anyhow!("subscribing to cluster events: {e}"))?;
        let (host, _) = Actor::spawn(
            Some(format!("{HOST_PREFIX}{node_name}")),
            host::Host,
            host::HostArgs {
                rooms: rooms.clone(),
                membership: membership.clone(),
            },
        )
        .await
        .context("starting the cluster host actor")?;
        tokio::spawn(net::accept_loop(
            listener,
            node_server.clone(),
            settings.connect_timeout * 3,
        ));
        if let Some((name, port)) = settings.dns_discovery().map_err(|e| anyhow::anyhow!(e))? {
            tokio::spawn(dns_loop(
                name,
                port,
                settings.discovery_interval,
                membership.clone(),
            ));
        }
        // Registrations are re-checked every second (see rooms::remote).
        let r = rooms.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                r.sync_registrations().await;
            }
        });
        Ok(Cluster {
            membership,
            node_server,
            host,
            listen,
            advertise,
        })
    }

    pub async fn status(&self) -> Option<MembershipStatus> {
        ractor::call_t!(self.membership, MembershipMsg::Status, 2000).ok()
    }

    /// Drains: leaves the ring (rooms move to their next owners) and tells every peer.
    pub async fn leave(&self) {
        let _ = ractor::call_t!(self.membership, MembershipMsg::Leave, 2000);
    }

    pub fn stop(&self) {
        self.host.stop(None);
        self.membership.stop(None);
        self.node_server.stop(None);
    }
}

async fn dns_loop(name: String, port: u16, every: Duration, membership: ActorRef<MembershipMsg>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match tokio::net::lookup_host((name.as_str(), port)).await {
            Ok(addrs) => {
                let found: Vec<String> = addrs.map(|a| a.to_string()).collect();
                tracing::debug!(%name, ?found, "discovery resolved");
                if membership.cast(MembershipMsg::DnsResolved(found)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(%name, error = %e, "discovery lookup failed"),
        }
    }
}
