//! The user actor: one per connected user, on the user's owner node.
//!
//! It knows the user's sessions (presence across tabs and devices) and owns the user's rate
//! limit: every session of the user gets the same [`TokenBucket`] from it, so opening more
//! connections does not buy more throughput. Checking the bucket is a local lock, not a
//! message to this actor, so the limit costs nothing on the hot path.
//!
//! Started by the user supervisor on the user's first connection; stops after
//! [`UserConfig::idle_timeout`] without sessions (the bucket goes with it, which is harmless:
//! a user with no sessions sends nothing).

use std::sync::Arc;
use std::time::Duration;

use cluster_proto::rate::TokenBucket;
use cluster_proto::{SessionId, UserId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

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
    /// A session of this user opened; answers with the user's shared rate limit.
    Connect {
        session: SessionId,
        reply: RpcReplyPort<Arc<TokenBucket>>,
    },
    Disconnect {
        session: SessionId,
    },
    /// The user's live sessions on this node.
    Sessions(RpcReplyPort<Vec<SessionId>>),
    IdleCheck(u64),
}

pub struct User;

pub struct UserArgs {
    pub user: UserId,
    pub cfg: UserConfig,
}

pub struct UserState {
    user: UserId,
    cfg: UserConfig,
    sessions: Vec<SessionId>,
    bucket: Arc<TokenBucket>,
    idle_gen: u64,
}

impl UserState {
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
            bucket: Arc::new(TokenBucket::new(args.cfg.rate_per_sec, args.cfg.burst)),
            user: args.user,
            cfg: args.cfg,
            sessions: Vec::new(),
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
            UserMsg::Connect { session, reply } => {
                if !state.sessions.contains(&session) {
                    state.sessions.push(session);
                }
                state.idle_gen += 1;
                let _ = reply.send(state.bucket.clone());
            }
            UserMsg::Disconnect { session } => {
                state.sessions.retain(|s| *s != session);
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
