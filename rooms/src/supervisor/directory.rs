//! [`Directory`]: the handle the rest of the node holds to reach the children of one
//! supervisor, and the maps it shares with the supervisor. Lookups of live children read the
//! live map under a read lock and never touch the supervisor's mailbox; only a miss goes
//! through it. Only the supervisor adds to either map.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef, MessagingErr};

use super::{
    alive, ChildMsg, ChildRef, ChildSpec, RestartPolicy, Supervisor, SupervisorError, SupervisorMsg,
};

/// The supervisor's registered children and dormant states, readable by its [`Directory`].
/// Never lock both maps at once.
pub struct Shared<S: ChildSpec> {
    /// Children started and not yet seen to exit (alive, draining or stopping).
    live: RwLock<HashMap<S::Key, ChildRef<S>>>,
    /// What hibernated children left.
    dormant: RwLock<HashMap<S::Key, S::Dormant>>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn dormant_gauge<S: ChildSpec>(delta: f64) {
    metrics::gauge!("parley_dormant_actors", "kind" => S::KIND).increment(delta);
}

impl<S: ChildSpec> Shared<S> {
    fn new() -> Self {
        Self {
            live: RwLock::new(HashMap::new()),
            dormant: RwLock::new(HashMap::new()),
        }
    }

    /// The registered child of `key`, alive or on its way out.
    pub(super) fn registered(&self, key: &S::Key) -> Option<ChildRef<S>> {
        read(&self.live).get(key).cloned()
    }

    pub(super) fn registered_keys(&self) -> Vec<S::Key> {
        read(&self.live).keys().cloned().collect()
    }

    pub(super) fn publish(&self, key: S::Key, child: ChildRef<S>) {
        write(&self.live).insert(key, child);
    }

    /// Forgets the child `id` of `key` (not a successor registered since).
    pub(super) fn unpublish(&self, key: &S::Key, id: ActorId) {
        let mut live = write(&self.live);
        if live.get(key).is_some_and(|r| r.get_id() == id) {
            live.remove(key);
        }
    }

    pub(super) fn is_dormant(&self, key: &S::Key) -> bool {
        read(&self.dormant).contains_key(key)
    }

    pub(super) fn put_dormant(&self, key: S::Key, d: S::Dormant) {
        if write(&self.dormant).insert(key, d).is_none() {
            dormant_gauge::<S>(1.0);
        }
    }

    pub(super) fn take_dormant(&self, key: &S::Key) -> Option<S::Dormant> {
        let d = write(&self.dormant).remove(key);
        if d.is_some() {
            dormant_gauge::<S>(-1.0);
        }
        d
    }

    /// The message `f` gives each dormant key, if any.
    pub(super) fn dormant_messages<M>(
        &self,
        f: impl Fn(&S::Key, &S::Dormant) -> Option<M>,
    ) -> Vec<(S::Key, M)> {
        read(&self.dormant)
            .iter()
            .filter_map(|(k, d)| f(k, d).map(|m| (k.clone(), m)))
            .collect()
    }
}

/// The handle other code uses to reach the child for a key.
pub struct Directory<S: ChildSpec> {
    shared: Arc<Shared<S>>,
    supervisor: ActorRef<SupervisorMsg<S>>,
}

impl<S: ChildSpec> Clone for Directory<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            supervisor: self.supervisor.clone(),
        }
    }
}

impl<S: ChildSpec> Directory<S> {
    /// Starts the supervisor on the current tokio runtime.
    pub async fn start(spec: S, policy: RestartPolicy) -> Result<Self, SupervisorError> {
        let shared = Arc::new(Shared::new());
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor {
                spec: Arc::new(spec),
                policy,
            },
            shared.clone(),
        )
        .await
        .map_err(|e| SupervisorError::Spawn {
            kind: S::KIND,
            reason: e.to_string(),
        })?;
        Ok(Self { shared, supervisor })
    }

    /// The live child for `key`: started, or woken from its dormant state, if needed. A child
    /// on its way out is waited for, and its successor returned.
    pub async fn get(&self, key: &S::Key) -> Result<ChildRef<S>, SupervisorError> {
        if let Some(r) = self.peek(key) {
            return Ok(r);
        }
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::GetOrSpawn(key.clone(), reply),
                Some(Duration::from_secs(10)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => Err(SupervisorError::Gone),
        }
    }

    /// The live child for `key`, if one is running; never starts or wakes one.
    pub fn peek(&self, key: &S::Key) -> Option<ChildRef<S>> {
        self.shared.registered(key).filter(|r| alive(&r.get_cell()))
    }

    /// Sends `msg` to the child of `key` whether it is live, draining (handed to its successor,
    /// in order) or dormant (woken); dropped if the key has neither child nor dormant state.
    /// Never waits: a live child gets it directly, anything else through the supervisor.
    pub fn cast(&self, key: &S::Key, msg: ChildMsg<S>) -> Result<(), SupervisorError> {
        self.to_child_or(key, msg, SupervisorMsg::Deliver)
    }

    /// Like [`Directory::cast`], except that a key with neither child nor dormant state is not
    /// dropped: [`ChildSpec::apply_absent`] handles it, or a child is started with it.
    pub fn send(&self, key: &S::Key, msg: ChildMsg<S>) -> Result<(), SupervisorError> {
        self.to_child_or(key, msg, SupervisorMsg::Send)
    }

    /// `msg` straight to the live child, or else to the supervisor as `via`.
    fn to_child_or(
        &self,
        key: &S::Key,
        msg: ChildMsg<S>,
        via: fn(S::Key, ChildMsg<S>) -> SupervisorMsg<S>,
    ) -> Result<(), SupervisorError> {
        let msg = match self.peek(key) {
            None => msg,
            Some(child) => match child.cast(msg) {
                Ok(()) => return Ok(()),
                // It began draining since `peek`: the supervisor queues it for the successor.
                Err(MessagingErr::SendErr(msg)) => msg,
                Err(_) => return Err(SupervisorError::Gone),
            },
        };
        self.supervisor
            .cast(via(key.clone(), msg))
            .map_err(|_| SupervisorError::Gone)
    }

    /// Sends each child the message `f` gives it: `f(key, None)` for a registered child (live
    /// or on its way out), `f(key, Some(state))` for a dormant one, which is woken only if `f`
    /// gives it a message. Applied by the supervisor, so no child is missed while it changes
    /// state.
    pub fn broadcast(
        &self,
        f: impl Fn(&S::Key, Option<&S::Dormant>) -> Option<ChildMsg<S>> + Send + 'static,
    ) -> Result<(), SupervisorError> {
        self.supervisor
            .cast(SupervisorMsg::Broadcast(Box::new(f)))
            .map_err(|_| SupervisorError::Gone)
    }

    /// The live children.
    pub fn entries(&self) -> Vec<(S::Key, ChildRef<S>)> {
        read(&self.shared.live)
            .iter()
            .filter(|(_, r)| alive(&r.get_cell()))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// How many children are registered (live, or on their way out).
    pub fn len(&self) -> usize {
        read(&self.shared.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many keys are dormant (hibernated, no actor).
    pub fn dormant_len(&self) -> usize {
        read(&self.shared.dormant).len()
    }

    pub fn is_dormant(&self, key: &S::Key) -> bool {
        self.shared.is_dormant(key)
    }

    /// Drops the dormant states for which `keep` is false (e.g. of keys this node no longer
    /// owns).
    pub fn retain_dormant(&self, mut keep: impl FnMut(&S::Key, &S::Dormant) -> bool) {
        let mut dormant = write(&self.shared.dormant);
        let before = dormant.len();
        dormant.retain(|k, d| keep(k, d));
        let dropped = before - dormant.len();
        drop(dormant);
        if dropped > 0 {
            dormant_gauge::<S>(-(dropped as f64));
        }
    }

    /// Stops the supervisor and, with it, every child. Dormant states are dropped.
    pub fn stop(&self) {
        self.retain_dormant(|_, _| false);
        self.supervisor.stop(Some("shutdown".into()));
    }
}
