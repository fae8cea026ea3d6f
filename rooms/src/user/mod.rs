//! The user actor: one per connected user, on the user's owner node (chosen by the same
//! consistent hash as rooms, over the key `u/<userId>`).
//!
//! It knows the user's sessions on every node (presence across tabs, devices and nodes):
//! each node registers its sessions of the user here when they open, again when the user's
//! owner changes, and the owner drops a node's sessions when that node leaves the cluster.
//!
//! The rate limit is checked where the sessions are: a token bucket per user per node
//! ([`Buckets`]), behind a local lock, so the limit costs no message on the hot path. This actor
//! keeps the user's total at the configured limit: whenever the set of nodes holding the user's
//! sessions changes, it tells each of them the number of nodes (`UserShare`), and each node's
//! bucket runs at that share of the rate and burst.
//!
//! Started by the user supervisor on the user's first connection; stops after
//! [`UserConfig::idle_timeout`] without sessions.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use cluster_proto::wire::Cast;
use cluster_proto::{SessionId, UserId};

use crate::cluster::ClusterView;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

mod buckets;
pub use buckets::Buckets;

#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Requests per second per user, refilled continuously. Default 20.
    pub rate_per_sec: f64,
    /// Bucket size: requests a user may send at once. Default 60.
    pub burst: f64,
    /// Stop the actor this long after the user's last session left. Default 60 s.
    pub idle_timeout: Duration,
}

impl Default for UserConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 20.0,
            burst: 60.0,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

pub enum UserMsg {
    /// Sessions of this user opened (on `node`, or this node when `None`).
    Connect {
        sessions: Vec<SessionId>,
        node: Option<Arc<str>>,
        reply: RpcReplyPort<()>,
    },
    Disconnect {
        session: SessionId,
    },
    /// A node left the cluster: its sessions are gone.
    NodeDown(Arc<str>),
    /// The user's live sessions, with their node (`None`: this node).
    Sessions(RpcReplyPort<Vec<(SessionId, Option<Arc<str>>)>>),
    IdleCheck(u64),
}

impl ractor::Message for UserMsg {}

pub struct User;

pub struct UserArgs {
    pub user: UserId,
    pub cfg: UserConfig,
    pub cluster: Arc<ClusterView>,
    pub buckets: Arc<Buckets>,
}

pub struct UserState {
    user: UserId,
    cfg: UserConfig,
    cluster: Arc<ClusterView>,
    buckets: Arc<Buckets>,
    sessions: Vec<(SessionId, Option<Arc<str>>)>,
    /// The nodes last told their share (`None`: this node).
    shared_with: BTreeSet<Option<Arc<str>>>,
    idle_gen: u64,
}

impl UserState {
    /// Tells every node with sessions of the user how many such nodes there are, when that set
    /// changed.
    fn share_limit(&mut self) {
        let nodes: BTreeSet<Option<Arc<str>>> =
            self.sessions.iter().map(|(_, n)| n.clone()).collect();
        if nodes == self.shared_with {
            return;
        }
        let k = nodes.len().max(1) as u32;
        for n in &nodes {
            match n {
                None => self.buckets.set_share(&self.user, k),
                Some(node) => self.cluster.cast(
                    node,
                    Cast::UserShare {
                        user: self.user.clone(),
                        nodes: k,
                    },
                ),
            }
        }
        self.shared_with = nodes;
    }

    fn schedule_idle_check(&mut self, myself: &ActorRef<UserMsg>) {
        if !self.sessions.is_empty() {
            return;
        }
        self.idle_gen += 1;
        let gen = self.idle_gen;
        myself.send_after(self.cfg.idle_timeout, move || UserMsg::IdleCheck(gen));
    }
}

impl Actor for User {
    type Msg = UserMsg;
    type State = UserState;
    type Arguments = UserArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<UserMsg>,
        args: UserArgs,
    ) -> Result<UserState, ActorProcessingErr> {
        Ok(UserState {
            user: args.user,
            cfg: args.cfg,
            cluster: args.cluster,
            buckets: args.buckets,
            sessions: Vec::new(),
            shared_with: BTreeSet::new(),
            idle_gen: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<UserMsg>,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        state.schedule_idle_check(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<UserMsg>,
        msg: UserMsg,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UserMsg::Connect {
                sessions,
                node,
                reply,
            } => {
                for session in sessions {
                    if !state.sessions.iter().any(|(s, _)| *s == session) {
                        state.sessions.push((session, node.clone()));
                    }
                }
                state.idle_gen += 1;
                let _ = reply.send(());
                state.share_limit();
            }
            UserMsg::Disconnect { session } => {
                state.sessions.retain(|(s, _)| *s != session);
                state.share_limit();
                state.schedule_idle_check(&myself);
            }
            UserMsg::NodeDown(node) => {
                state.sessions.retain(|(_, n)| n.as_deref() != Some(&*node));
                state.share_limit();
                state.schedule_idle_check(&myself);
            }
            UserMsg::Sessions(reply) => {
                let _ = reply.send(state.sessions.clone());
            }
            UserMsg::IdleCheck(gen) => {
                if gen == state.idle_gen && state.sessions.is_empty() {
                    tracing::debug!(user = %state.user, "idle; stopping");
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}
