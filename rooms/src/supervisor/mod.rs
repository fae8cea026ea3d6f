//! A keyed, one-for-one supervisor: one child actor per key (a room, a user), started on first
//! use and restarted when it panics.
//!
//! ```text
//! Supervisor<RoomSpec> ──┬── Room "lobby"
//!                        ├── Room "team-7"      (each linked: its failure is reported here)
//!                        └── ...
//! ```
//!
//! Restart policy (one-for-one): a child that fails (panics or returns an error from a handler)
//! is restarted at once with `restarted = true`, so it reloads its state from the store and
//! tells its members to `resume`. A key may be restarted at most [`RestartPolicy::max_restarts`]
//! times within [`RestartPolicy::period`]; past that it stays down and requests for it fail with
//! `room_unavailable` until the period has passed, so a poison message cannot spin a core. A
//! child that stops by itself (idle) is simply forgotten. Other children never notice.
//!
//! Lookups take a read lock on a shared map ([`Directory::get`]); only a miss (or a dead child)
//! goes through the supervisor's mailbox, which serializes spawning so one key never has two
//! live children on this node.

use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort,
    SupervisionEvent,
};

mod directory;
pub use directory::Directory;

/// How a kind of child is made.
pub trait ChildSpec: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Display + Send + Sync + 'static;
    type Child: Actor;
    /// For logs and metrics: "room", "user".
    const KIND: &'static str;
    fn child(&self) -> Self::Child;
    fn args(&self, key: &Self::Key, restarted: bool) -> <Self::Child as Actor>::Arguments;
}

/// Restart limits, per key.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub period: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            period: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("{kind} {key} crashed too often; retry later")]
    CrashLoop { kind: &'static str, key: String },
    #[error("could not start {kind}: {reason}")]
    Spawn { kind: &'static str, reason: String },
    #[error("supervisor is gone")]
    Gone,
}

type ChildRef<S> = ActorRef<<<S as ChildSpec>::Child as Actor>::Msg>;
type Shared<S> = Arc<RwLock<HashMap<<S as ChildSpec>::Key, ChildRef<S>>>>;

pub enum SupervisorMsg<S: ChildSpec> {
    GetOrSpawn(S::Key, RpcReplyPort<Result<ChildRef<S>, SupervisorError>>),
}

// Local only: with ractor's `cluster` feature, message types opt in explicitly.
impl<S: ChildSpec> ractor::Message for SupervisorMsg<S> {}

pub struct Supervisor<S: ChildSpec> {
    spec: Arc<S>,
    policy: RestartPolicy,
}

pub struct SupervisorState<S: ChildSpec> {
    shared: Shared<S>,
    ids: HashMap<ActorId, S::Key>,
    restarts: HashMap<S::Key, VecDeque<Instant>>,
}

fn alive(cell: &ActorCell) -> bool {
    matches!(
        cell.get_status(),
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
}

impl<S: ChildSpec> Supervisor<S> {
    async fn spawn_child(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        key: &S::Key,
        restarted: bool,
    ) -> Result<ChildRef<S>, SupervisorError> {
        let args = self.spec.args(key, restarted);
        let (child, _) = Actor::spawn_linked(None, self.spec.child(), args, myself.get_cell())
            .await
            .map_err(|e| SupervisorError::Spawn {
                kind: S::KIND,
                reason: e.to_string(),
            })?;
        state.ids.insert(child.get_id(), key.clone());
        state
            .shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), child.clone());
        metrics::gauge!("parley_live_actors", "kind" => S::KIND).increment(1.0);
        Ok(child)
    }

    fn in_crash_loop(&self, state: &mut SupervisorState<S>, key: &S::Key) -> bool {
        let Some(log) = state.restarts.get_mut(key) else {
            return false;
        };
        while log
            .front()
            .is_some_and(|t| t.elapsed() > self.policy.period)
        {
            log.pop_front();
        }
        if log.is_empty() {
            state.restarts.remove(key);
            return false;
        }
        log.len() >= self.policy.max_restarts
    }

    fn forget(&self, state: &mut SupervisorState<S>, cell: &ActorCell) -> Option<S::Key> {
        let key = state.ids.remove(&cell.get_id())?;
        metrics::gauge!("parley_live_actors", "kind" => S::KIND).decrement(1.0);
        let mut shared = state.shared.write().unwrap_or_else(|p| p.into_inner());
        if shared
            .get(&key)
            .is_some_and(|r| r.get_id() == cell.get_id())
        {
            shared.remove(&key);
        }
        Some(key)
    }
}

impl<S: ChildSpec> Actor for Supervisor<S> {
    type Msg = SupervisorMsg<S>;
    type State = SupervisorState<S>;
    type Arguments = Shared<S>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Shared<S>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            shared,
            ids: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::GetOrSpawn(key, reply) => {
                let existing = state
                    .shared
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .filter(|r| alive(&r.get_cell()))
                    .cloned();
                let result = match existing {
                    Some(r) => Ok(r),
                    None if self.in_crash_loop(state, &key) => Err(SupervisorError::CrashLoop {
                        kind: S::KIND,
                        key: key.to_string(),
                    }),
                    None => self.spawn_child(&myself, state, &key, false).await,
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                self.forget(state, &cell);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(key) = self.forget(state, &cell) else {
                    return Ok(());
                };
                metrics::counter!("parley_actor_restarts_total", "kind" => S::KIND).increment(1);
                if self.in_crash_loop(state, &key) {
                    tracing::error!(kind = S::KIND, %key, error = %err, "crashed too often; left stopped");
                    return Ok(());
                }
                tracing::warn!(kind = S::KIND, %key, error = %err, "crashed; restarting");
                state
                    .restarts
                    .entry(key.clone())
                    .or_default()
                    .push_back(Instant::now());
                if let Err(e) = self.spawn_child(&myself, state, &key, true).await {
                    tracing::error!(kind = S::KIND, %key, error = %e, "restart failed");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
