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

    /// Registers sessions with the local user actor.
    ///
    /// Two attempts are enough for an actor that starts draining (to hibernate or stop) between
    /// `get` and `call`: the call is refused at once, and the second `get` waits for the actor's
    /// exit and gets its successor, woken with the sessions it kept. (A call already queued when
    /// the drain began is still answered.) If both fail, the periodic `sync_registrations`
    /// retries.
    pub(crate) async fn user_connect(
        &self,
        user: &UserId,
        sessions: Vec<SessionId>,
        node: Option<Arc<str>>,
    ) -> Result<(), ApiError> {
        for _ in 0..2 {
            let actor = self.users.get(user).await.map_err(supervisor_error)?;
            let (s, n) = (sessions.clone(), node.clone());
            match actor
                .call(
                    move |reply| UserMsg::Connect {
                        sessions: s,
                        node: n,
                        reply,
                    },
                    Some(self.cfg.call_timeout),
                )
                .await
            {
                Ok(CallResult::Success(())) => return Ok(()),
                Ok(CallResult::Timeout) => break,
                _ => continue,
            }
        }
        Err(ApiError::new(ErrorCode::Internal, "user actor unavailable"))
    }
}
