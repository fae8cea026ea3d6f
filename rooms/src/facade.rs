//! [`Rooms`]: what the rest of the node calls. It finds (or starts) the right actor, applies
//! timeouts, keeps the hub in step and maps every failure to a stable [`ApiError`].

use std::sync::Arc;
use std::time::Duration;

use cluster_proto::api::{JoinReply, MessagePage, SendRequest};
use cluster_proto::rate::TokenBucket;
use cluster_proto::{
    ApiError, ChatMessage, ErrorCode, Member, PushSink, RoomId, SessionId, UserId,
};
use history::HistoryStore;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::hub::Hub;
use crate::ring::Ring;
use crate::room::{Room, RoomArgs, RoomConfig, RoomDeps, RoomMsg};
use crate::supervisor::{ChildSpec, Directory, RestartPolicy, SupervisorError};
use crate::user::{User, UserArgs, UserConfig, UserMsg};

/// Configuration of the room and user layer.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// This node's name (its place on the ring).
    pub node_name: String,
    pub room: RoomConfig,
    pub user: UserConfig,
    pub restart: RestartPolicy,
    /// Deadline for a call to a room or user actor. Default 5 s.
    pub call_timeout: Duration,
    /// Largest `history` page. Default 200.
    pub max_history_page: usize,
    /// Largest `resume` answer. Default 1000.
    pub max_resume: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            node_name: "parley-1".into(),
            room: RoomConfig::default(),
            user: UserConfig::default(),
            restart: RestartPolicy::default(),
            call_timeout: Duration::from_secs(5),
            max_history_page: 200,
            max_resume: 1000,
        }
    }
}

struct RoomSpec(Arc<RoomDeps>);

impl ChildSpec for RoomSpec {
    type Key = RoomId;
    type Child = Room;
    const KIND: &'static str = "room";
    fn child(&self) -> Room {
        Room
    }
    fn args(&self, key: &RoomId, restarted: bool) -> RoomArgs {
        RoomArgs {
            room: key.clone(),
            deps: self.0.clone(),
            restarted,
        }
    }
}

struct UserSpec(UserConfig);

impl ChildSpec for UserSpec {
    type Key = UserId;
    type Child = User;
    const KIND: &'static str = "user";
    fn child(&self) -> User {
        User
    }
    fn args(&self, key: &UserId, _restarted: bool) -> UserArgs {
        UserArgs {
            user: key.clone(),
            cfg: self.0.clone(),
        }
    }
}

/// The room and user layer of one node.
pub struct Rooms {
    cfg: RoomsConfig,
    ring: Ring,
    hub: Arc<Hub>,
    store: Arc<dyn HistoryStore>,
    rooms: Directory<RoomSpec>,
    users: Directory<UserSpec>,
}

fn supervisor_error(e: SupervisorError) -> ApiError {
    match e {
        SupervisorError::CrashLoop { .. } => {
            ApiError::new(ErrorCode::RoomUnavailable, e.to_string())
        }
        _ => ApiError::new(ErrorCode::Internal, e.to_string()),
    }
}

fn unavailable() -> ApiError {
    ApiError::new(ErrorCode::RoomUnavailable, "the room restarted; retry")
}

impl Rooms {
    /// Starts the supervisors on the current tokio runtime (the node's core runtime).
    pub async fn start(
        cfg: RoomsConfig,
        store: Arc<dyn HistoryStore>,
        hub: Arc<Hub>,
    ) -> Result<Arc<Self>, SupervisorError> {
        let deps = Arc::new(RoomDeps {
            store: store.clone(),
            hub: hub.clone(),
            cfg: cfg.room.clone(),
        });
        let rooms = Directory::start(RoomSpec(deps), cfg.restart).await?;
        let users = Directory::start(UserSpec(cfg.user.clone()), cfg.restart).await?;
        Ok(Arc::new(Rooms {
            ring: Ring::new([cfg.node_name.clone()]),
            cfg,
            hub,
            store,
            rooms,
            users,
        }))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn store(&self) -> &Arc<dyn HistoryStore> {
        &self.store
    }

    /// Live room actors on this node.
    pub fn live_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Live user actors on this node.
    pub fn live_users(&self) -> usize {
        self.users.len()
    }

    /// The room's actor, checking that this node owns it.
    async fn room(&self, room: &RoomId) -> Result<ActorRef<RoomMsg>, ApiError> {
        if self.ring.owner(room.as_str()) != Some(self.cfg.node_name.as_str()) {
            // Unreachable on a single node; the cluster forwards instead.
            return Err(ApiError::new(
                ErrorCode::RoomUnavailable,
                "room is owned elsewhere",
            ));
        }
        self.rooms.get(room).await.map_err(supervisor_error)
    }

    /// Calls the room. `retry_lost` also retries when the room took the message but died
    /// before answering: only for requests that are safe to repeat.
    async fn ask_room<T: Send + 'static>(
        &self,
        room: &RoomId,
        retry_lost: bool,
        build: impl Fn(RpcReplyPort<Result<T, ApiError>>) -> RoomMsg,
    ) -> Result<T, ApiError> {
        for _ in 0..2 {
            let actor = self.room(room).await?;
            match actor.call(&build, Some(self.cfg.call_timeout)).await {
                Ok(CallResult::Success(r)) => return r,
                Ok(CallResult::Timeout) => {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        "the room did not answer in time",
                    ))
                }
                Ok(CallResult::SenderError) if retry_lost => continue,
                Ok(CallResult::SenderError) => return Err(unavailable()),
                // Never enqueued (the actor had stopped): always safe to retry.
                Err(_) => continue,
            }
        }
        Err(unavailable())
    }

    /// Registers a new session; returns the user's shared rate limit.
    pub async fn connect(
        &self,
        session: SessionId,
        member: &Member,
        sink: Arc<dyn PushSink>,
    ) -> Result<Arc<TokenBucket>, ApiError> {
        self.hub
            .register(session, member.user_id.clone(), &member.username, sink);
        for _ in 0..2 {
            let user = self
                .users
                .get(&member.user_id)
                .await
                .map_err(supervisor_error)?;
            match user
                .call(
                    |reply| UserMsg::Connect { session, reply },
                    Some(self.cfg.call_timeout),
                )
                .await
            {
                Ok(CallResult::Success(bucket)) => return Ok(bucket),
                Ok(CallResult::Timeout) => break,
                _ => continue,
            }
        }
        self.hub.unregister(session);
        Err(ApiError::new(ErrorCode::Internal, "user actor unavailable"))
    }

    /// Forgets a session: leaves its rooms (firing `userLeft` where it was the user's last).
    pub fn disconnect(&self, session: SessionId, user: &UserId) {
        for room in self.hub.unregister(session) {
            if let Some(r) = self.rooms.peek(&room) {
                let _ = r.cast(RoomMsg::Leave { session });
            }
        }
        if let Some(u) = self.users.peek(user) {
            let _ = u.cast(UserMsg::Disconnect { session });
        }
    }

    pub async fn join(
        &self,
        session: SessionId,
        member: &Member,
        room: &RoomId,
    ) -> Result<JoinReply, ApiError> {
        if !self.hub.subscribe(room, session) {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "session is not registered",
            ));
        }
        let r = self
            .ask_room(room, true, |reply| RoomMsg::Join {
                session,
                member: member.clone(),
                reply,
            })
            .await;
        if r.is_err() {
            // Also tell the room: it may have taken the session as a member before failing
            // to answer in time.
            self.leave(session, room);
        }
        r
    }

    pub fn leave(&self, session: SessionId, room: &RoomId) {
        self.hub.unsubscribe(room, session);
        if let Some(r) = self.rooms.peek(room) {
            let _ = r.cast(RoomMsg::Leave { session });
        }
    }

    pub async fn send(
        &self,
        session: SessionId,
        member: &Member,
        req: SendRequest,
    ) -> Result<Arc<ChatMessage>, ApiError> {
        let room = req.room.clone();
        self.ask_room(&room, false, |reply| RoomMsg::Send {
            session,
            member: member.clone(),
            req: req.clone(),
            reply,
        })
        .await
    }

    pub fn typing(&self, session: SessionId, member: &Member, room: &RoomId, is_typing: bool) {
        if let Some(r) = self.rooms.peek(room) {
            let _ = r.cast(RoomMsg::Typing {
                session,
                member: member.clone(),
                is_typing,
            });
        }
    }

    pub async fn mark_read(
        &self,
        session: SessionId,
        member: &Member,
        room: &RoomId,
        up_to_seq: u64,
    ) -> Result<u64, ApiError> {
        self.ask_room(room, true, |reply| RoomMsg::MarkRead {
            session,
            member: member.clone(),
            up_to_seq,
            reply,
        })
        .await
    }

    /// Up to `limit` messages before `before` (latest when `None`), from the store.
    pub async fn history(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<MessagePage, ApiError> {
        let limit = limit.unwrap_or(50).clamp(1, self.cfg.max_history_page);
        let r = match before {
            Some(b) => self.store.before(room, b, limit).await,
            None => self.store.latest(room, limit).await,
        };
        let messages = r.map_err(|e| ApiError::new(ErrorCode::StoreUnavailable, e.to_string()))?;
        Ok(MessagePage {
            room_id: room.clone(),
            messages,
            last_seq: None,
            complete: None,
        })
    }

    /// Every message after `after_seq`, at most `max_resume` at a time.
    pub async fn resume(&self, room: &RoomId, after_seq: u64) -> Result<MessagePage, ApiError> {
        let store_err =
            |e: history::StoreError| ApiError::new(ErrorCode::StoreUnavailable, e.to_string());
        let meta = self.store.room_meta(room).await.map_err(store_err)?;
        let mut messages = self
            .store
            .after(room, after_seq, self.cfg.max_resume + 1)
            .await
            .map_err(store_err)?;
        let complete = messages.len() <= self.cfg.max_resume;
        messages.truncate(self.cfg.max_resume);
        Ok(MessagePage {
            room_id: room.clone(),
            messages,
            last_seq: Some(meta.last_seq),
            complete: Some(complete),
        })
    }

    /// Test hook: makes the room's actor panic. False if the room is not running.
    pub fn inject_panic(&self, room: &RoomId) -> bool {
        match self.rooms.peek(room) {
            Some(r) => r.cast(RoomMsg::InjectPanic).is_ok(),
            None => false,
        }
    }

    /// Stops every room and user actor.
    pub fn stop(&self) {
        self.rooms.stop();
        self.users.stop();
    }
}
