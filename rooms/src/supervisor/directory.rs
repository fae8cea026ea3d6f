//! [`Directory`]: the handle the rest of the node holds to reach the children of one
//! supervisor. Lookups of live children read a shared map under a read lock and never touch the
//! supervisor's mailbox; only a miss goes through it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use super::{
    alive, ChildRef, ChildSpec, RestartPolicy, Shared, Supervisor, SupervisorError, SupervisorMsg,
};

/// The handle other code uses to reach the child for a key.
pub struct Directory<S: ChildSpec> {
    shared: Shared<S>,
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
        let shared: Shared<S> = Arc::default();
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

    /// The live child for `key`, started if needed.
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

    /// The live child for `key`, if one is running; never starts one.
    pub fn peek(&self, key: &S::Key) -> Option<ChildRef<S>> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|r| alive(&r.get_cell()))
            .cloned()
    }

    /// The live children.
    pub fn entries(&self) -> Vec<(S::Key, ChildRef<S>)> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, r)| alive(&r.get_cell()))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// How many children are registered.
    pub fn len(&self) -> usize {
        self.shared.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the supervisor and, with it, every child.
    pub fn stop(&self) {
        self.supervisor.stop(Some("shutdown".into()));
    }
}
