//! [`Rooms`]: what the rest of the node calls. It finds the owner of a room or user (this
//! node or another), reaches its actor (locally, or through the cluster with a deadline),
//! keeps the hub in step and maps every failure to a stable [`ApiError`].
//!
//! Routing: a request for a room goes to the room's owner in this node's current view. An
//! owner that disagrees (its view moved on, or the room is handing off) answers `room_moved`
//! before doing anything, so the request is retried, a few times with a short backoff, at the
//! owner of the then-current view; sends are only retried on answers that prove nothing was
//! written. Requests that arrive from other nodes enter through [`Rooms::handle_call`] and
//! [`Rooms::handle_cast`] (module `remote`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_proto::api::{JoinReply, MessagePage, SendRequest};
use cluster_proto::rate::TokenBucket;
use cluster_proto::wire::{Cast, Request, Response};
use cluster_proto::{
    ApiError, ChatMessage, ErrorCode, Member, PushSink, RoomId, SessionId, UserId,
};
use history::HistoryStore;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::cluster::ClusterView;
use crate::hub::Hub;
use crate::room::{Room, RoomArgs, RoomConfig, RoomDeps, RoomMsg};
use crate::supervisor::{ChildSpec, Directory, RestartPolicy, SupervisorError};
use crate::user::{Buckets, UserConfig, UserMsg, UserSpec};

mod users;

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

pub(crate) struct RoomSpec(Arc<RoomDeps>);

impl ChildSpec for RoomSpec {
    type Key = RoomId;
    type Child = Room;
    type Dormant = ();
    const KIND: &'static str = "room";
    fn child(&self) -> Room {
        Room
    }
    fn args(&self, key: &RoomId, restarted: bool, _dormant: Option<()>) -> RoomArgs {
        RoomArgs {
            room: key.clone(),
            deps: self.0.clone(),
            restarted,
        }
    }
}

/// The room and user layer of one node.
pub struct Rooms {
    pub(crate) cfg: RoomsConfig,
    pub(crate) cluster: Arc<ClusterView>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) rooms: Directory<RoomSpec>,
    pub(crate) users: Directory<UserSpec>,
    pub(crate) room_deps: Arc<RoomDeps>,
    /// Per-user token buckets of this node's sessions.
    pub(crate) buckets: Arc<Buckets>,
    /// Per room with sessions here: the owner they were last registered with (see
    /// `remote::sync_registrations`).
    pub(crate) registered: Mutex<HashMap<RoomId, Arc<str>>>,
    /// Per user with sessions here: the owner they were last registered with.
    pub(crate) users_registered: Arc<Mutex<HashMap<UserId, Arc<str>>>>,
}

pub(crate) fn supervisor_error(e: SupervisorError) -> ApiError {
    match e {
        SupervisorError::CrashLoop { .. } => {
            ApiError::new(ErrorCode::RoomUnavailable, e.to_string())
        }
        _ => ApiError::new(ErrorCode::Internal, e.to_string()),
    }
}

fn not_in_room() -> ApiError {
    ApiError::new(ErrorCode::NotInRoom, "join the room first")
}

fn unavailable() -> ApiError {
    ApiError::new(ErrorCode::RoomUnavailable, "the room restarted; retry")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Attempts of a request whose owner answers `room_moved` (views converge in milliseconds;
/// a handoff drains in about one store write).
const ROUTE_ATTEMPTS: u32 = 5;

fn bad_answer(node: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected answer from node {node}"),
    )
}

impl Rooms {
    /// Starts the supervisors on the current tokio runtime (the node's core runtime).
    pub async fn start(
        cfg: RoomsConfig,
        store: Arc<dyn HistoryStore>,
        hub: Arc<Hub>,
        cluster: Arc<ClusterView>,
    ) -> Result<Arc<Self>, SupervisorError> {
        let deps = Arc::new(RoomDeps {
            store: store.clone(),
            hub: hub.clone(),
            cluster: cluster.clone(),
            cfg: cfg.room.clone(),
            handoffs: Mutex::new(HashMap::new()),
        });
        let rooms = Directory::start(RoomSpec(deps.clone()), cfg.restart).await?;
        let buckets = Arc::new(Buckets::new(cfg.user.rate_per_sec, cfg.user.burst));
        let users_registered = Arc::new(Mutex::new(HashMap::new()));
        let users = Directory::start(
            UserSpec::new(
                cfg.user.clone(),
                cluster.clone(),
                buckets.clone(),
                users_registered.clone(),
            ),
            cfg.restart,
        )
        .await?;
        Ok(Arc::new(Rooms {
            cfg,
            cluster,
            hub,
            store,
            rooms,
            users,
            room_deps: deps,
            buckets,
            registered: Mutex::new(HashMap::new()),
            users_registered,
        }))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn store(&self) -> &Arc<dyn HistoryStore> {
        &self.store
    }

    pub fn cluster(&self) -> &Arc<ClusterView> {
        &self.cluster
    }

    /// Live room actors on this node (the rooms it owns and serves).
    pub fn live_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Live user actors on this node.
    pub fn live_users(&self) -> usize {
        self.users.len()
    }

    /// Users owned by this node whose actor hibernated (sessions kept, no actor).
    pub fn dormant_users(&self) -> usize {
        self.users.dormant_len()
    }

    /// The local room actor, if this node owns the room in its current view.
    pub(crate) async fn owned_room(&self, room: &RoomId) -> Result<ActorRef<RoomMsg>, ApiError> {
        let owner = self.cluster.room_owner(room.as_str());
        if !self.cluster.is_local(&owner) {
            return Err(self.cluster.not_owner("the room", &owner));
        }
        self.rooms.get(room).await.map_err(supervisor_error)
    }

    /// Calls the local room. `retry_lost` also retries when the room took the message but
    /// died before answering: only for requests that are safe to repeat.
    pub(crate) async fn ask_room<T: Send + 'static>(
        &self,
        room: &RoomId,
        retry_lost: bool,
        build: impl Fn(RpcReplyPort<Result<T, ApiError>>) -> RoomMsg,
    ) -> Result<T, ApiError> {
        for _ in 0..2 {
            let actor = self.owned_room(room).await?;
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

    /// Runs a room request at the room's owner: `local` when that is this node, otherwise
    /// `remote` through the cluster. Retried while the answer is `room_moved`.
    async fn routed<T, L, F>(
        &self,
        room: &RoomId,
        local: L,
        remote: impl Fn() -> Request,
        unwrap: impl Fn(Response) -> Option<Result<T, ApiError>>,
    ) -> Result<T, ApiError>
    where
        L: Fn() -> F,
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut last = None;
        for attempt in 0..ROUTE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            let owner = self.cluster.room_owner(room.as_str());
            let r = if self.cluster.is_local(&owner) {
                local().await
            } else {
                match self
                    .cluster
                    .call(&owner, remote(), self.cfg.call_timeout)
                    .await
                {
                    Ok(answer) => unwrap(answer).unwrap_or_else(|| Err(bad_answer(&owner))),
                    Err(e) => Err(e),
                }
            };
            match r {
                Err(e) if e.code == ErrorCode::RoomMoved => last = Some(e),
                r => {
                    if r.is_ok() {
                        lock(&self.registered).insert(room.clone(), owner);
                    }
                    return r;
                }
            }
        }
        Err(last.unwrap_or_else(unavailable))
    }

    /// Forgets a session: leaves its rooms (firing `userLeft` where it was the user's last).
    pub fn disconnect(&self, session: SessionId, user: &UserId) {
        for room in self.hub.unregister(session) {
            self.tell_owner_left(session, &room);
        }
        if self.buckets.release(user) {
            lock(&self.users_registered).remove(user);
        }
        let owner = self.cluster.user_owner(user.as_str());
        if self.cluster.is_local(&owner) {
            // Reaches the user's actor even if it hibernated (woken) or is draining.
            let _ = self.users.cast(user, UserMsg::Disconnect { session });
        } else {
            self.cluster.cast(
                &owner,
                Cast::UserDisconnect {
                    session,
                    user: user.clone(),
                },
            );
        }
    }

    fn tell_owner_left(&self, session: SessionId, room: &RoomId) {
        let owner = self.cluster.room_owner(room.as_str());
        if self.cluster.is_local(&owner) {
            if let Some(r) = self.rooms.peek(room) {
                let _ = r.cast(RoomMsg::Leave { session });
            }
        } else {
            self.cluster.cast(
                &owner,
                Cast::Leave {
                    session,
                    room: room.clone(),
                },
            );
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
            .routed(
                room,
                || {
                    self.ask_room(room, true, |reply| RoomMsg::Join {
                        session,
                        member: member.clone(),
                        node: None,
                        reply,
                    })
                },
                || Request::Join {
                    session,
                    member: member.clone(),
                    room: room.clone(),
                },
                |a| match a {
                    Response::Join(r) => Some(r),
                    _ => None,
                },
            )
            .await;
        // Also tell the owner when the join failed (it may have taken the session as a
        // member before failing to answer in time) or when the session left or closed while
        // the join was in flight (its leave may have reached the owner first).
        if r.is_err() || !self.hub.is_subscribed(room, session) {
            self.leave(session, room);
        }
        r
    }

    pub fn leave(&self, session: SessionId, room: &RoomId) {
        self.hub.unsubscribe(room, session);
        self.tell_owner_left(session, room);
    }

    pub async fn send(
        &self,
        session: SessionId,
        member: &Member,
        req: SendRequest,
    ) -> Result<Arc<ChatMessage>, ApiError> {
        let room = req.room.clone();
        if !self.hub.is_subscribed(&room, session) {
            return Err(not_in_room());
        }
        self.routed(
            &room,
            || {
                self.ask_room(&room, false, |reply| RoomMsg::Send {
                    session,
                    member: member.clone(),
                    node: None,
                    req: req.clone(),
                    reply,
                })
            },
            || Request::Send {
                session,
                member: member.clone(),
                req: req.clone(),
            },
            |a| match a {
                Response::Send(r) => Some(r.map(Arc::new)),
                _ => None,
            },
        )
        .await
    }

    pub fn typing(&self, session: SessionId, member: &Member, room: &RoomId, is_typing: bool) {
        let owner = self.cluster.room_owner(room.as_str());
        if self.cluster.is_local(&owner) {
            if let Some(r) = self.rooms.peek(room) {
                let _ = r.cast(RoomMsg::Typing {
                    session,
                    member: member.clone(),
                    is_typing,
                });
            }
        } else {
            self.cluster.cast(
                &owner,
                Cast::Typing {
                    session,
                    member: member.clone(),
                    room: room.clone(),
                    is_typing,
                },
            );
        }
    }

    pub async fn mark_read(
        &self,
        session: SessionId,
        member: &Member,
        room: &RoomId,
        up_to_seq: u64,
    ) -> Result<u64, ApiError> {
        if !self.hub.is_subscribed(room, session) {
            return Err(not_in_room());
        }
        self.routed(
            room,
            || {
                self.ask_room(room, true, |reply| RoomMsg::MarkRead {
                    session,
                    member: member.clone(),
                    node: None,
                    up_to_seq,
                    reply,
                })
            },
            || Request::MarkRead {
                session,
                member: member.clone(),
                room: room.clone(),
                up_to_seq,
            },
            |a| match a {
                Response::MarkRead(r) => Some(r),
                _ => None,
            },
        )
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
