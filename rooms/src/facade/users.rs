//! Sessions and users: a session's registration with the hub and its user's owner, and the
//! node-local rate limit of each user.

use super::*;

impl Rooms {
    /// Registers a new session; returns the user's rate limit on this node.
    pub async fn connect(
        &self,
        session: SessionId,
        member: &Member,
        sink: Arc<dyn PushSink>,
    ) -> Result<Arc<TokenBucket>, ApiError> {
        self.hub
            .register(session, member.user_id.clone(), &member.username, sink);
        let bucket = self.buckets.acquire(&member.user_id);
        // Presence bookkeeping at the user's owner: a failure does not refuse the connection
        // (the session works without it); the periodic `sync_registrations` retries it.
        let mut attempt = 0;
        loop {
            match self.register_user(&member.user_id, vec![session]).await {
                Ok(()) => break,
                Err(e) if e.code == ErrorCode::RoomMoved && attempt + 1 < ROUTE_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                Err(e) => {
                    metrics::counter!("parley_user_registration_failures_total").increment(1);
                    tracing::debug!(user = %member.user_id, error = %e, "user registration deferred");
                    break;
                }
            }
        }
        Ok(bucket)
    }

    /// Tells the user's owner about `sessions` of this node.
    pub(crate) async fn register_user(
        &self,
        user: &UserId,
        sessions: Vec<SessionId>,
    ) -> Result<(), ApiError> {
        let owner = self.cluster.user_owner(user.as_str());
        if self.cluster.is_local(&owner) {
            self.user_connect(user, sessions, None).await?;
        } else {
            let req = Request::UserConnect {
                user: user.clone(),
                sessions,
            };
            match self
                .cluster
                .call(&owner, req, self.cfg.call_timeout)
                .await?
            {
                Response::UserConnect(r) => r?,
                _ => return Err(bad_answer(&owner)),
            }
        }
        lock(&self.users_registered).insert(user.clone(), owner);
        Ok(())
    }

    /// Registers sessions with the local user: its actor, its dormant state, or (a first
    /// connect, all on this node) a dormant state made for it without starting an actor
    /// (`UserSpec::apply_absent`).
    ///
    /// Sent through the supervisor when the actor is not live, so a connect that meets an actor
    /// starting to drain (to hibernate or stop) is handed to its successor in order. Two
    /// attempts cover an actor that dies between the send and its answer; if both fail, the
    /// periodic `sync_registrations` retries.
    pub(crate) async fn user_connect(
        &self,
        user: &UserId,
        sessions: Vec<SessionId>,
        node: Option<Arc<str>>,
    ) -> Result<(), ApiError> {
        for _ in 0..2 {
            let (tx, rx) = ractor::concurrency::oneshot();
            let msg = UserMsg::Connect {
                sessions: sessions.clone(),
                node: node.clone(),
                reply: tx.into(),
            };
            self.users.send(user, msg).map_err(supervisor_error)?;
            match tokio::time::timeout(self.cfg.call_timeout, rx).await {
                Ok(Ok(())) => return Ok(()),
                Err(_) => break,
                Ok(Err(_)) => continue,
            }
        }
        Err(ApiError::new(ErrorCode::Internal, "user actor unavailable"))
    }
}
