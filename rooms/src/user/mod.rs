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
//! Lifecycle (see `crate::supervisor` for the mechanics):
//!
//! ```text
//!        a request that needs it      a message that changes the nodes, node down
//!  (none) ───────────────▶ live ◀──────────────────────────────────────────── dormant
//!    │                      │  quiet for hibernate_after, with sessions            ▲ ▲
//!    │                      ├──────────────── drain ─▶ draining ─▶ stopped ───────┘ │
//!    │                      │  quiet for idle_timeout, without sessions             │
//!    │                      └──────────────── stop ──▶ (none)                       │
//!    └──────────── first sessions, all on one node: no actor at all ────────────────┘
//! ```
//!
//! A user gets a message only when its sessions connect or disconnect or a node goes down, so
//! it is idle almost always, and an idle actor costs about 11 KiB of heap (measured with
//! heaptrack: two channels, its task and its boxed processing loop), more than the rest of an
//! idle connection. So after [`UserConfig::hibernate_after`] without a message it hibernates:
//! it drains itself and leaves a [`UserDormant`] (its sessions by node, about 100 bytes), from
//! which the next message for the user starts it again. A panic loses the in-memory state, as
//! it always did: the actor restarts with no sessions.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_proto::wire::Cast;
use cluster_proto::{SessionId, UserId};
use ractor::actor::messages::BoxedState;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use tokio::time::Instant;

use crate::cluster::ClusterView;
use crate::supervisor::ChildSpec;

mod buckets;
#[cfg(test)]
mod tests;

pub use buckets::Buckets;

#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Requests per second per user, refilled continuously. Default 20.
    pub rate_per_sec: f64,
    /// Bucket size: requests a user may send at once. Default 60.
    pub burst: f64,
    /// Stop the actor (keeping nothing) after this long without a message and without
    /// sessions. Default 60 s.
    pub idle_timeout: Duration,
    /// Hibernate the actor (keeping its sessions, without an actor) after this long without a
    /// message while the user has sessions. Default 5 s.
    pub hibernate_after: Duration,
}

impl Default for UserConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 20.0,
            burst: 60.0,
            idle_timeout: Duration::from_secs(60),
            hibernate_after: Duration::from_secs(5),
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
    /// The actor's own timer: stop or hibernate if it has been quiet long enough.
    IdleCheck,
    /// Unit tests: fail the handler, as a bug would.
    #[cfg(test)]
    Crash,
}

impl ractor::Message for UserMsg {}

pub struct User;

pub struct UserArgs {
    pub user: UserId,
    pub cfg: UserConfig,
    pub cluster: Arc<ClusterView>,
    pub buckets: Arc<Buckets>,
    /// What the user's previous actor left when it hibernated.
    pub dormant: Option<UserDormant>,
}

type Sessions = Vec<(SessionId, Option<Arc<str>>)>;
type Timer = JoinHandle<Result<(), MessagingErr<UserMsg>>>;

/// What a hibernated user keeps: its sessions and their nodes (`None`: this node). The nodes
/// last told their share are exactly these sessions' nodes (the actor tells them after every
/// change), so they are not kept twice.
pub struct UserDormant {
    sessions: Box<[(SessionId, Option<Arc<str>>)]>,
}

impl UserDormant {
    /// Whether the user has sessions on `node` (another node than this one).
    pub fn has_sessions_on(&self, node: &str) -> bool {
        self.sessions
            .iter()
            .any(|(_, n)| n.as_deref() == Some(node))
    }
}

/// Adds `new` sessions on `node` to `list`, each once.
fn add_sessions(list: &mut Sessions, new: &[SessionId], node: &Option<Arc<str>>) {
    for s in new {
        if !list.iter().any(|(k, _)| k == s) {
            list.push((*s, node.clone()));
        }
    }
}

fn nodes_of(sessions: &[(SessionId, Option<Arc<str>>)]) -> BTreeSet<Option<Arc<str>>> {
    sessions.iter().map(|(_, n)| n.clone()).collect()
}

pub struct UserState {
    user: UserId,
    cfg: UserConfig,
    cluster: Arc<ClusterView>,
    buckets: Arc<Buckets>,
    sessions: Sessions,
    /// The nodes last told their share (`None`: this node).
    shared_with: BTreeSet<Option<Arc<str>>>,
    /// When the last message (not counting the actor's timer) was handled.
    last_message: Instant,
    /// The pending timer: when it fires, and its task. The task holds the actor's cell (and
    /// with it the mailbox's channels), so it is aborted when replaced or when the actor stops.
    timer: Option<(Instant, Timer)>,
    /// Draining to hibernate or stop ([`UserState::into_dormant`] decides which).
    draining: bool,
}

impl UserState {
    /// Tells every node with sessions of the user how many such nodes there are, when that set
    /// changed.
    fn share_limit(&mut self) {
        let nodes = nodes_of(&self.sessions);
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

    /// How long the actor waits without a message before it acts: hibernates (with sessions)
    /// or stops (without).
    fn quiet_limit(&self) -> Duration {
        if self.sessions.is_empty() {
            self.cfg.idle_timeout
        } else {
            self.cfg.hibernate_after
        }
    }

    /// A message was handled: the quiet period starts again.
    fn touched(&mut self, myself: &ActorRef<UserMsg>) {
        self.last_message = Instant::now();
        self.arm(myself);
    }

    /// Makes sure a timer fires once the actor has been quiet long enough: one timer at a
    /// time (not one per message), replaced only by an earlier one; a timer that fires early
    /// sets the next. None once draining (it could not be delivered).
    fn arm(&mut self, myself: &ActorRef<UserMsg>) {
        if self.draining {
            return;
        }
        let due = self.last_message + self.quiet_limit();
        if self.timer.as_ref().is_some_and(|(t, _)| *t <= due) {
            return;
        }
        self.cancel_timer();
        let task = myself.send_after(due.saturating_duration_since(Instant::now()), || {
            UserMsg::IdleCheck
        });
        self.timer = Some((due, task));
    }

    fn cancel_timer(&mut self) {
        if let Some((_, task)) = self.timer.take() {
            task.abort();
        }
    }

    fn idle_check(&mut self, myself: &ActorRef<UserMsg>) {
        let now = Instant::now();
        if self.timer.as_ref().is_some_and(|(t, _)| *t <= now) {
            self.timer = None; // this one, done
        }
        if self.draining {
            return;
        }
        if now < self.last_message + self.quiet_limit() {
            return self.arm(myself);
        }
        if self.sessions.is_empty() {
            tracing::debug!(user = %self.user, "idle; stopping");
        } else {
            tracing::debug!(user = %self.user, "quiet; hibernating");
        }
        // Both by draining: sends fail from now on (the supervisor queues them for the next
        // actor), and what is already queued is still handled, so nothing is lost.
        self.draining = true;
        if let Err(e) = myself.drain() {
            tracing::warn!(user = %self.user, error = %e, "could not drain; stays live");
            self.draining = false;
        }
    }

    /// What to keep of the final state: the sessions, if the actor drained itself with some
    /// (including sessions that connected while it drained). Stopped from outside (ownership
    /// moved, shutdown): nothing.
    fn into_dormant(self) -> Option<UserDormant> {
        if !self.draining || self.sessions.is_empty() {
            return None;
        }
        Some(UserDormant {
            sessions: self.sessions.into_boxed_slice(),
        })
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
        let sessions: Sessions = args
            .dormant
            .map(|d| d.sessions.into_vec())
            .unwrap_or_default();
        Ok(UserState {
            user: args.user,
            cfg: args.cfg,
            cluster: args.cluster,
            buckets: args.buckets,
            // Woken: these nodes were told their share before the actor hibernated.
            shared_with: nodes_of(&sessions),
            sessions,
            last_message: Instant::now(),
            timer: None,
            draining: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<UserMsg>,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        state.touched(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<UserMsg>,
        state: &mut UserState,
    ) -> Result<(), ActorProcessingErr> {
        state.cancel_timer();
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
                add_sessions(&mut state.sessions, &sessions, &node);
                let _ = reply.send(());
                state.share_limit();
            }
            UserMsg::Disconnect { session } => {
                state.sessions.retain(|(s, _)| *s != session);
                state.share_limit();
            }
            UserMsg::NodeDown(node) => {
                state.sessions.retain(|(_, n)| n.as_deref() != Some(&*node));
                state.share_limit();
            }
            UserMsg::Sessions(reply) => {
                let _ = reply.send(state.sessions.clone());
            }
            UserMsg::IdleCheck => {
                state.idle_check(&myself);
                return Ok(());
            }
            #[cfg(test)]
            UserMsg::Crash => return Err("injected failure".into()),
        }
        state.touched(&myself);
        Ok(())
    }
}

/// How the user supervisor makes a user actor, and what it keeps when one hibernates.
pub(crate) struct UserSpec {
    cfg: UserConfig,
    cluster: Arc<ClusterView>,
    buckets: Arc<Buckets>,
    /// This node's registrations of its sessions with users' owners (shared with `Rooms`).
    registered: Arc<Mutex<HashMap<UserId, Arc<str>>>>,
}

impl UserSpec {
    pub(crate) fn new(
        cfg: UserConfig,
        cluster: Arc<ClusterView>,
        buckets: Arc<Buckets>,
        registered: Arc<Mutex<HashMap<UserId, Arc<str>>>>,
    ) -> Self {
        Self {
            cfg,
            cluster,
            buckets,
            registered,
        }
    }

    /// A user actor restarted after a panic has lost the user's sessions: every node (this one
    /// included) forgets its registration with it, so its next `sync_registrations` (every
    /// second) registers its sessions of the user again.
    fn ask_for_registrations(&self, user: &UserId) {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        let ring = self.cluster.ring();
        let local = self.cluster.local().clone();
        self.cluster.cast_to(
            ring.nodes().filter(|n| *n != &*local),
            Cast::ReregisterUser { user: user.clone() },
        );
    }
}

impl ChildSpec for UserSpec {
    type Key = UserId;
    type Child = User;
    type Dormant = UserDormant;
    const KIND: &'static str = "user";
    fn child(&self) -> User {
        User
    }
    fn args(&self, key: &UserId, restarted: bool, dormant: Option<UserDormant>) -> UserArgs {
        if restarted {
            self.ask_for_registrations(key);
        }
        UserArgs {
            user: key.clone(),
            cfg: self.cfg.clone(),
            cluster: self.cluster.clone(),
            buckets: self.buckets.clone(),
            dormant,
        }
    }
    /// A connect or disconnect that leaves the user's sessions on the same nodes needs no
    /// actor: nobody's share of the rate limit changes. The last session gone, the user is
    /// forgotten (a reconnect starts it afresh). Anything else wakes the actor.
    fn apply_dormant(
        &self,
        _key: &UserId,
        dormant: &mut UserDormant,
        msg: UserMsg,
    ) -> Result<bool, UserMsg> {
        let session = match msg {
            UserMsg::Disconnect { session } => session,
            UserMsg::Connect {
                sessions,
                node,
                reply,
            } => {
                let mut all = dormant.sessions.to_vec();
                add_sessions(&mut all, &sessions, &node);
                if nodes_of(&all) != nodes_of(&dormant.sessions) {
                    return Err(UserMsg::Connect {
                        sessions,
                        node,
                        reply,
                    });
                }
                dormant.sessions = all.into_boxed_slice();
                let _ = reply.send(());
                return Ok(true);
            }
            other => return Err(other),
        };
        let kept: Sessions = dormant
            .sessions
            .iter()
            .filter(|(s, _)| *s != session)
            .cloned()
            .collect();
        if kept.is_empty() {
            return Ok(false);
        }
        if nodes_of(&kept) != nodes_of(&dormant.sessions) {
            return Err(msg);
        }
        dormant.sessions = kept.into_boxed_slice();
        Ok(true)
    }
    /// A user's first sessions, all on one node (this one, or another whose sessions register
    /// here, the owner): no actor is started. The user starts dormant, that node's bucket at
    /// the whole limit (one node: this node's set directly, another told with `UserShare`), as
    /// the actor would have left it; the next message that needs the actor (sessions on a
    /// second node, a node down) starts it from there. So a connection's first seconds do not
    /// cost an actor (~11 KiB), and a connection storm starts none.
    fn apply_absent(&self, key: &UserId, msg: UserMsg) -> Result<Option<UserDormant>, UserMsg> {
        if !self
            .cluster
            .is_local(&self.cluster.user_owner(key.as_str()))
        {
            return Err(msg);
        }
        let UserMsg::Connect {
            sessions,
            node,
            reply,
        } = msg
        else {
            return Err(msg);
        };
        let mut all: Sessions = Vec::with_capacity(sessions.len());
        add_sessions(&mut all, &sessions, &node);
        if !all.is_empty() {
            match &node {
                None => self.buckets.set_share(key, 1),
                Some(n) => self.cluster.cast(
                    n,
                    Cast::UserShare {
                        user: key.clone(),
                        nodes: 1,
                    },
                ),
            }
        }
        let _ = reply.send(());
        Ok((!all.is_empty()).then(|| UserDormant {
            sessions: all.into_boxed_slice(),
        }))
    }
    fn dormant(&self, key: &UserId, mut state: BoxedState) -> Option<UserDormant> {
        // Kept only while this node owns the user: ownership may have moved while it drained
        // (the new owner gets the sessions registered again).
        if !self
            .cluster
            .is_local(&self.cluster.user_owner(key.as_str()))
        {
            return None;
        }
        state.take::<UserState>().ok()?.into_dormant()
    }
}
