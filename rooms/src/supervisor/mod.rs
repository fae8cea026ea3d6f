//! A keyed, one-for-one supervisor: one child actor per key (a room, a user), started on first
//! use, restarted when it panics, and (for kinds that want it) woken from a dormant state after
//! it hibernated.
//!
//! ```text
//! Supervisor<UserSpec> ──┬── User "alice"        live: an actor (≈ 11 KiB of heap)
//!                        ├── User "bob"          draining: finishing its queue, then stops
//!                        ├── (dormant) "carol"   no actor: the state it left (≈ 100 bytes)
//!                        └── ...                 (each live child linked: its exit is reported here)
//! ```
//!
//! Restart policy (one-for-one): a child that fails (panics or returns an error from a handler)
//! is restarted at once with `restarted = true`, so it reloads its state from the store and
//! tells its members to `resume`; what it held only in memory is lost. A key may be restarted
//! at most [`RestartPolicy::max_restarts`] times within [`RestartPolicy::period`]; past that it
//! stays down and requests for it fail with `room_unavailable` until the period has passed, so
//! a poison message cannot spin a core. Other children never notice.
//!
//! Hibernation (virtual actors): an actor costs about 11 KiB of heap even when idle (two
//! channels, its task and boxed processing loop), which dominates the cost of an idle
//! connection. So a child may decide to hibernate: it calls `drain()` on itself (from then on
//! sends to it fail at once, what is already queued is still handled, then it stops). When it
//! stops normally, the supervisor asks [`ChildSpec::dormant`] what of its final state is worth
//! keeping and keeps that in a dormant map. The next request for the key starts a child from it:
//!
//! * [`Directory::get`] (`GetOrSpawn`): a live child is returned; a child that is registered
//!   but no longer alive (draining or stopping, its exit not yet seen here) makes the request
//!   wait; when its exit arrives, one child is started from the state it left and every waiting
//!   request gets it. Otherwise a dormant key is woken, and an unknown key started fresh.
//! * [`Directory::cast`] (`Deliver`): tries the live child directly; otherwise the supervisor
//!   forwards the message, queues it behind a draining child (in arrival order, handed to the
//!   next child before anything else can reach it), wakes a dormant child with it, or drops it
//!   when the key is unknown (as a cast to a stopped actor would be).
//! * [`Directory::broadcast`]: one message per child, live or dormant, chosen by a function that
//!   sees the dormant state, so only the dormant children concerned are woken.
//!
//! A child that stops normally and leaves nothing worth keeping (idle) is simply forgotten. A
//! child that fails leaves nothing: it is restarted fresh, as above. A failed spawn loses the
//! dormant state it was given.
//!
//! Invariants: one key never has two live children on this node (spawning is serialized in the
//! supervisor's mailbox, and a key is only started once its previous child's exit was seen); a
//! key is live, waiting for its child's exit, dormant, or unknown, never two of these.
//!
//! Lookups take a read lock on shared maps ([`Directory::get`], [`Directory::peek`]); only a
//! miss (or a dead child) goes through the supervisor's mailbox. Lock order: the live map and
//! the dormant map are never held at the same time.

use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::actor::messages::BoxedState;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, MessagingErr,
    RpcReplyPort, SupervisionEvent,
};

mod directory;
#[cfg(test)]
mod tests;

pub use directory::Directory;
use directory::Shared;

/// How a kind of child is made, and what it leaves when it hibernates.
pub trait ChildSpec: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Display + Send + Sync + 'static;
    type Child: Actor;
    /// What a hibernated child keeps, until a request wakes it (`()` for kinds that never
    /// hibernate).
    type Dormant: Send + Sync + 'static;
    /// For logs and metrics: "room", "user".
    const KIND: &'static str;
    fn child(&self) -> Self::Child;
    /// The arguments of a new child: `restarted` after a failure; `dormant` when it is woken
    /// from the state its previous child left.
    fn args(
        &self,
        key: &Self::Key,
        restarted: bool,
        dormant: Option<Self::Dormant>,
    ) -> <Self::Child as Actor>::Arguments;
    /// What to keep of a child of `key` that stopped normally, from its final state (`None`:
    /// nothing, the key is forgotten). Called for every normal stop, so the child's state must
    /// say whether it hibernated or stopped for good.
    fn dormant(&self, key: &Self::Key, state: BoxedState) -> Option<Self::Dormant> {
        let _ = (key, state);
        None
    }
    /// Handles a message for a dormant child without waking it, when the kind can: `Ok(true)`
    /// keeps the (changed) dormant state, `Ok(false)` forgets the key (nothing left to keep),
    /// `Err(msg)` hands the message back to wake the child with it (the state untouched).
    fn apply_dormant(
        &self,
        key: &Self::Key,
        dormant: &mut Self::Dormant,
        msg: <Self::Child as Actor>::Msg,
    ) -> Result<bool, <Self::Child as Actor>::Msg> {
        let _ = (key, dormant);
        Err(msg)
    }
    /// Handles a message sent with [`Directory::send`] to a key that has neither a child nor
    /// dormant state, without starting a child, when the kind can: `Ok(Some(d))` keeps `d` as
    /// the key's dormant state, `Ok(None)` keeps nothing, `Err(msg)` hands the message back to
    /// start a child with it.
    fn apply_absent(
        &self,
        key: &Self::Key,
        msg: <Self::Child as Actor>::Msg,
    ) -> Result<Option<Self::Dormant>, <Self::Child as Actor>::Msg> {
        let _ = key;
        Err(msg)
    }
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

type ChildMsg<S> = <<S as ChildSpec>::Child as Actor>::Msg;
type ChildRef<S> = ActorRef<ChildMsg<S>>;
type Reply<S> = RpcReplyPort<Result<ChildRef<S>, SupervisorError>>;
/// See [`Directory::broadcast`].
type BroadcastFn<S> = Box<
    dyn Fn(&<S as ChildSpec>::Key, Option<&<S as ChildSpec>::Dormant>) -> Option<ChildMsg<S>>
        + Send,
>;

pub enum SupervisorMsg<S: ChildSpec> {
    /// The child of the key, woken or started if needed.
    GetOrSpawn(S::Key, Reply<S>),
    /// A message for the child of the key, whatever its state (see [`Directory::cast`]).
    Deliver(S::Key, ChildMsg<S>),
    /// A message for the key, which has a child or dormant state made for it if it has
    /// neither (see [`Directory::send`]).
    Send(S::Key, ChildMsg<S>),
    /// A message for each child, live or dormant, for which the function gives one.
    Broadcast(BroadcastFn<S>),
}

// Local only: with ractor's `cluster` feature, message types opt in explicitly.
impl<S: ChildSpec> ractor::Message for SupervisorMsg<S> {}

/// A request for a key whose child is on its way out, served by its next child.
enum Waiting<S: ChildSpec> {
    Get(Reply<S>),
    Deliver(ChildMsg<S>),
}

pub struct Supervisor<S: ChildSpec> {
    spec: Arc<S>,
    policy: RestartPolicy,
}

pub struct SupervisorState<S: ChildSpec> {
    shared: Arc<Shared<S>>,
    ids: HashMap<ActorId, S::Key>,
    restarts: HashMap<S::Key, VecDeque<Instant>>,
    /// Per key whose registered child is draining or stopping: the requests that arrived since,
    /// in order. Emptied when that child's exit arrives.
    waiting: HashMap<S::Key, Vec<Waiting<S>>>,
}

impl<S: ChildSpec> SupervisorState<S> {
    /// Whether requests for `key` wait for its child's exit.
    fn is_waiting(&self, key: &S::Key) -> bool {
        self.waiting.contains_key(key)
    }

    /// Queues `w` behind the exit of the key's draining child (after what already waits).
    fn park(&mut self, key: S::Key, w: Waiting<S>) {
        self.waiting.entry(key).or_default().push(w);
    }
}

fn alive(cell: &ActorCell) -> bool {
    matches!(
        cell.get_status(),
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
}

/// Answers `waiting` requests that no child will serve.
fn refuse<S: ChildSpec>(key: &S::Key, waiting: Vec<Waiting<S>>, e: SupervisorError) {
    for w in waiting {
        match w {
            Waiting::Get(reply) => {
                let _ = reply.send(Err(e.clone()));
            }
            Waiting::Deliver(_) => {
                tracing::debug!(kind = S::KIND, %key, error = %e, "message dropped");
            }
        }
    }
}

impl<S: ChildSpec> Supervisor<S> {
    /// Starts the child of `key` (from its dormant state, unless `restarted`) and serves
    /// `waiting` with it, in order, before publishing it: nothing sent through the shared map
    /// can overtake them.
    async fn start(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        key: S::Key,
        restarted: bool,
        waiting: Vec<Waiting<S>>,
    ) {
        // Taken even on a restart: a key is never both live and dormant.
        let dormant = state.shared.take_dormant(&key);
        let args = self
            .spec
            .args(&key, restarted, dormant.filter(|_| !restarted));
        let child =
            match Actor::spawn_linked(None, self.spec.child(), args, myself.get_cell()).await {
                Ok((child, _)) => child,
                Err(e) => {
                    let e = SupervisorError::Spawn {
                        kind: S::KIND,
                        reason: e.to_string(),
                    };
                    tracing::error!(kind = S::KIND, %key, error = %e, "start failed");
                    return refuse::<S>(&key, waiting, e);
                }
            };
        state.ids.insert(child.get_id(), key.clone());
        metrics::gauge!("parley_live_actors", "kind" => S::KIND).increment(1.0);
        let mut rest = waiting.into_iter();
        while let Some(w) = rest.next() {
            match w {
                Waiting::Get(reply) => {
                    let _ = reply.send(Ok(child.clone()));
                }
                Waiting::Deliver(msg) => {
                    if let Err(MessagingErr::SendErr(msg)) = child.cast(msg) {
                        // Already draining: the rest waits for its exit too, in order.
                        let q = state.waiting.entry(key.clone()).or_default();
                        q.push(Waiting::Deliver(msg));
                        q.extend(rest);
                        break;
                    }
                }
            }
        }
        state.shared.publish(key, child);
    }

    async fn get_or_spawn(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        key: S::Key,
        reply: Reply<S>,
    ) {
        if state.is_waiting(&key) {
            return state.park(key, Waiting::Get(reply));
        }
        match state.shared.registered(&key) {
            Some(child) if alive(&child.get_cell()) => {
                let _ = reply.send(Ok(child));
            }
            Some(_) => state.park(key, Waiting::Get(reply)),
            None if self.in_crash_loop(state, &key) => {
                let _ = reply.send(Err(SupervisorError::CrashLoop {
                    kind: S::KIND,
                    key: key.to_string(),
                }));
            }
            None => {
                self.start(myself, state, key, false, vec![Waiting::Get(reply)])
                    .await
            }
        }
    }

    async fn deliver(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        key: S::Key,
        msg: ChildMsg<S>,
    ) {
        if state.is_waiting(&key) {
            return state.park(key, Waiting::Deliver(msg));
        }
        match state.shared.registered(&key) {
            Some(child) => {
                if let Err(MessagingErr::SendErr(msg)) = child.cast(msg) {
                    // Draining or stopping: its exit will come, and the next child gets this.
                    state.park(key, Waiting::Deliver(msg));
                }
            }
            None if !state.shared.is_dormant(&key) => {}
            None => {
                let Some(mut d) = state.shared.take_dormant(&key) else {
                    return;
                };
                match self.spec.apply_dormant(&key, &mut d, msg) {
                    Ok(true) => state.shared.put_dormant(key, d),
                    Ok(false) => {}
                    Err(msg) => {
                        state.shared.put_dormant(key.clone(), d);
                        self.wake(myself, state, key, msg).await;
                    }
                }
            }
        }
    }

    /// Delivers `msg` to the key's child or dormant state; a key with neither gets what
    /// [`ChildSpec::apply_absent`] makes of it: dormant state, or a child started with `msg`.
    async fn send(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        key: S::Key,
        msg: ChildMsg<S>,
    ) {
        if state.is_waiting(&key)
            || state.shared.registered(&key).is_some()
            || state.shared.is_dormant(&key)
        {
            return self.deliver(myself, state, key, msg).await;
        }
        if self.in_crash_loop(state, &key) {
            tracing::debug!(kind = S::KIND, %key, "crash loop; message dropped");
            return;
        }
        match self.spec.apply_absent(&key, msg) {
            Ok(Some(d)) => state.shared.put_dormant(key, d),
            Ok(None) => {}
            Err(msg) => {
                self.start(myself, state, key, false, vec![Waiting::Deliver(msg)])
                    .await
            }
        }
    }

    /// Starts the dormant child of `key` with `msg` as its first message.
    async fn wake(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        key: S::Key,
        msg: ChildMsg<S>,
    ) {
        if self.in_crash_loop(state, &key) {
            tracing::debug!(kind = S::KIND, %key, "crash loop; message dropped");
            return;
        }
        self.start(myself, state, key, false, vec![Waiting::Deliver(msg)])
            .await
    }

    async fn broadcast(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        f: BroadcastFn<S>,
    ) {
        let live: Vec<(S::Key, ChildMsg<S>)> = state
            .shared
            .registered_keys()
            .into_iter()
            .filter_map(|k| f(&k, None).map(|m| (k, m)))
            .collect();
        let dormant = state.shared.dormant_messages(|k, d| f(k, Some(d)));
        for (key, msg) in live.into_iter().chain(dormant) {
            self.deliver(myself, state, key, msg).await;
        }
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
        state.shared.unpublish(&key, cell.get_id());
        Some(key)
    }

    /// A child stopped normally: keep what it left, and start its successor if requests wait.
    async fn stopped(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        cell: &ActorCell,
        last: Option<BoxedState>,
    ) {
        let Some(key) = self.forget(state, cell) else {
            return;
        };
        if let Some(d) = last.and_then(|s| self.spec.dormant(&key, s)) {
            state.shared.put_dormant(key.clone(), d);
        }
        let Some(waiting) = state.waiting.remove(&key) else {
            return;
        };
        if self.in_crash_loop(state, &key) {
            let e = SupervisorError::CrashLoop {
                kind: S::KIND,
                key: key.to_string(),
            };
            return refuse::<S>(&key, waiting, e);
        }
        self.start(myself, state, key, false, waiting).await;
    }

    /// A child failed: restart it fresh, unless it fails too often.
    async fn failed(
        &self,
        myself: &ActorRef<SupervisorMsg<S>>,
        state: &mut SupervisorState<S>,
        cell: &ActorCell,
        err: &ActorProcessingErr,
    ) {
        let Some(key) = self.forget(state, cell) else {
            return;
        };
        metrics::counter!("parley_actor_restarts_total", "kind" => S::KIND).increment(1);
        let waiting = state.waiting.remove(&key).unwrap_or_default();
        if self.in_crash_loop(state, &key) {
            tracing::error!(kind = S::KIND, %key, error = %err, "crashed too often; left stopped");
            let e = SupervisorError::CrashLoop {
                kind: S::KIND,
                key: key.to_string(),
            };
            return refuse::<S>(&key, waiting, e);
        }
        tracing::warn!(kind = S::KIND, %key, error = %err, "crashed; restarting");
        state
            .restarts
            .entry(key.clone())
            .or_default()
            .push_back(Instant::now());
        self.start(myself, state, key, true, waiting).await;
    }
}

impl<S: ChildSpec> Actor for Supervisor<S> {
    type Msg = SupervisorMsg<S>;
    type State = SupervisorState<S>;
    type Arguments = Arc<Shared<S>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Arc<Shared<S>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            shared,
            ids: HashMap::new(),
            restarts: HashMap::new(),
            waiting: HashMap::new(),
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
                self.get_or_spawn(&myself, state, key, reply).await
            }
            SupervisorMsg::Deliver(key, msg) => self.deliver(&myself, state, key, msg).await,
            SupervisorMsg::Send(key, msg) => self.send(&myself, state, key, msg).await,
            SupervisorMsg::Broadcast(f) => self.broadcast(&myself, state, f).await,
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
            SupervisionEvent::ActorTerminated(cell, last, _) => {
                self.stopped(&myself, state, &cell, last).await
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                self.failed(&myself, state, &cell, &err).await
            }
            _ => {}
        }
        Ok(())
    }
}
