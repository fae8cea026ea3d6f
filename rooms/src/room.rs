//! The room actor: the single writer of one room's order.
//!
//! A room assigns each message the next `seq`, hands it to the history store and, once the
//! store says it is durable, pushes `newMessage` to the members and acks the sender. Writes are
//! pipelined: the room keeps handling messages while earlier ones are being stored, and
//! releases them strictly in `seq` order. If a write fails, that message and every later one
//! still in flight fail (the store refuses a seq with a gap, see `history::store`), and once
//! nothing is in flight the room reuses the seqs: history stays gap-free and a failed message
//! is never seen by anyone.
//!
//! Presence (who is in the room, with two tabs of one user counting once), typing indicators
//! (relayed, never stored, expired after [`RoomConfig::typing_ttl`]) and read receipts also live
//! here. The room never holds sockets: it pushes through the node's [`Hub`].
//!
//! Lifecycle: started on first use by the room supervisor, state loaded from the store in
//! `post_start` (without blocking the supervisor), stopped after [`RoomConfig::idle_timeout`]
//! with no members and nothing in flight. After a crash the supervisor starts it again with
//! `restarted = true`: it reloads, rebuilds its members from the hub and pushes `resync`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_proto::api::{JoinReply, SendRequest};
use cluster_proto::{
    ApiError, ChatMessage, ErrorCode, Member, Push, PushKind, RoomId, SessionId, UserId,
};
use history::{HistoryStore, StoreError, WriteOp};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::hub::Hub;

/// Tuning shared by all rooms of a node.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Messages returned by `joinRoom` (and kept in memory per active room). Default 50.
    pub history_on_join: usize,
    /// Stop an empty room after this long. Default 60 s.
    pub idle_timeout: Duration,
    /// A typing indicator expires this long after its last update. Default 5 s.
    pub typing_ttl: Duration,
    /// Client message ids remembered per room for idempotent resends. Default 1000.
    pub dedupe_window: usize,
    /// Most members listed in a `joinRoom` reply. Default 1000.
    pub max_listed_members: usize,
    /// Most read receipts loaded per room. Default 10 000.
    pub max_receipts: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            history_on_join: 50,
            idle_timeout: Duration::from_secs(60),
            typing_ttl: Duration::from_secs(5),
            dedupe_window: 1000,
            max_listed_members: 1000,
            max_receipts: 10_000,
        }
    }
}

/// What every room of a node shares.
pub struct RoomDeps {
    pub store: Arc<dyn HistoryStore>,
    pub hub: Arc<Hub>,
    pub cfg: RoomConfig,
}

pub type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

/// Messages a room handles.
pub enum RoomMsg {
    Join {
        session: SessionId,
        member: Member,
        reply: Reply<JoinReply>,
    },
    Leave {
        session: SessionId,
    },
    Send {
        session: SessionId,
        member: Member,
        req: SendRequest,
        reply: Reply<Arc<ChatMessage>>,
    },
    Typing {
        session: SessionId,
        member: Member,
        is_typing: bool,
    },
    MarkRead {
        session: SessionId,
        member: Member,
        up_to_seq: u64,
        reply: Reply<u64>,
    },
    /// Internal: the store finished the write of `seq`.
    Persisted {
        seq: u64,
        result: Result<(), StoreError>,
    },
    /// Internal: the store finished a receipt write.
    ReceiptPersisted {
        session: SessionId,
        member: Member,
        seq: u64,
        result: Result<(), StoreError>,
        reply: Reply<u64>,
    },
    /// Internal: expire typing indicators.
    TypingExpiry,
    /// Internal: stop if still idle (the number guards against stale timers).
    IdleCheck(u64),
    /// Test hook: panic inside the handler.
    InjectPanic,
}

/// The room actor (stateless; its state is [`RoomState`]).
pub struct Room;

pub struct RoomArgs {
    pub room: RoomId,
    pub deps: Arc<RoomDeps>,
    pub restarted: bool,
}

struct PendingSend {
    msg: Arc<ChatMessage>,
    waiters: Vec<Reply<Arc<ChatMessage>>>,
    outcome: Option<Result<(), StoreError>>,
}

struct MemberEntry {
    username: String,
    sessions: Vec<SessionId>,
}

struct TypingEntry {
    /// The session whose update is current (it is not told about its own typing).
    session: SessionId,
    last_update: Instant,
    last_broadcast: Instant,
}

pub struct RoomState {
    room: RoomId,
    deps: Arc<RoomDeps>,
    restarted: bool,
    loaded: bool,
    last_assigned: u64,
    durable: u64,
    last_timestamp: i64,
    pending: BTreeMap<u64, PendingSend>,
    failed_in_flight: bool,
    members: HashMap<UserId, MemberEntry>,
    sessions: HashMap<SessionId, UserId>,
    typing: HashMap<UserId, TypingEntry>,
    typing_timer: bool,
    recent: VecDeque<Arc<ChatMessage>>,
    dedupe: HashMap<(UserId, String), u64>,
    dedupe_order: VecDeque<(UserId, String)>,
    receipts: HashMap<UserId, u64>,
    idle_gen: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PresenceEvent<'a> {
    room_id: &'a RoomId,
    user_id: &'a UserId,
    username: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TypingEvent<'a> {
    room_id: &'a RoomId,
    user_id: &'a UserId,
    username: &'a str,
    is_typing: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadEvent<'a> {
    room_id: &'a RoomId,
    user_id: &'a UserId,
    username: &'a str,
    up_to_seq: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResyncEvent<'a> {
    room_id: &'a RoomId,
    last_seq: u64,
}

fn store_error(e: &StoreError) -> ApiError {
    ApiError::new(
        ErrorCode::StoreUnavailable,
        format!("message history unavailable: {e}"),
    )
}

fn not_in_room() -> ApiError {
    ApiError::new(ErrorCode::NotInRoom, "join the room first")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RoomState {
    fn cfg(&self) -> &RoomConfig {
        &self.deps.cfg
    }

    /// Loads seq, recent messages, dedupe ids and receipts; rebuilds members from the hub.
    async fn load(&mut self) -> Result<(), StoreError> {
        let store = self.deps.store.clone();
        let meta = store.room_meta(&self.room).await?;
        let want = self.cfg().history_on_join.max(self.cfg().dedupe_window);
        let latest = store.latest(&self.room, want).await?;
        let receipts = store.receipts(&self.room, self.cfg().max_receipts).await?;
        self.last_assigned = meta.last_seq;
        self.durable = meta.last_seq;
        self.last_timestamp = latest.last().map(|m| m.timestamp).unwrap_or(0);
        self.recent.clear();
        self.dedupe.clear();
        self.dedupe_order.clear();
        let keep_from = latest.len().saturating_sub(self.cfg().history_on_join);
        for (i, m) in latest.into_iter().enumerate() {
            if let Some(c) = &m.client_msg_id {
                self.remember_client_id(m.user_id.clone(), c.clone(), m.seq);
            }
            if i >= keep_from {
                self.recent.push_back(Arc::new(m));
            }
        }
        self.receipts = receipts.into_iter().map(|r| (r.user, r.seq)).collect();
        for lm in self.deps.hub.members_of(&self.room) {
            self.add_session(lm.session, &lm.member);
        }
        self.loaded = true;
        if self.restarted {
            // Pushes may have been lost with the crashed incarnation.
            let push = Push::new(
                PushKind::Resync,
                Some(self.room.clone()),
                None,
                &ResyncEvent {
                    room_id: &self.room,
                    last_seq: self.durable,
                },
            );
            self.deps.hub.deliver(&self.room, &push, None);
        }
        Ok(())
    }

    async fn ensure_loaded(&mut self) -> Result<(), ApiError> {
        if self.loaded {
            return Ok(());
        }
        self.load().await.map_err(|e| store_error(&e))
    }

    fn fan_out(&self, push: &Arc<Push>, except: Option<SessionId>) {
        self.deps.hub.deliver(&self.room, push, except);
    }

    fn remember_client_id(&mut self, user: UserId, id: String, seq: u64) {
        let key = (user, id);
        if self.dedupe.insert(key.clone(), seq).is_none() {
            self.dedupe_order.push_back(key);
        }
        while self.dedupe_order.len() > self.cfg().dedupe_window {
            if let Some(old) = self.dedupe_order.pop_front() {
                self.dedupe.remove(&old);
            }
        }
    }

    /// Adds a session; true if it is its user's first session here.
    fn add_session(&mut self, session: SessionId, member: &Member) -> bool {
        if self
            .sessions
            .insert(session, member.user_id.clone())
            .is_some()
        {
            return false;
        }
        let entry = self
            .members
            .entry(member.user_id.clone())
            .or_insert_with(|| MemberEntry {
                username: member.username.clone(),
                sessions: Vec::new(),
            });
        entry.sessions.push(session);
        entry.sessions.len() == 1
    }

    fn presence_push(&self, kind: PushKind, user: &UserId, username: &str) -> Arc<Push> {
        Push::new(
            kind,
            Some(self.room.clone()),
            None,
            &PresenceEvent {
                room_id: &self.room,
                user_id: user,
                username,
            },
        )
    }

    fn join(&mut self, session: SessionId, member: Member) -> JoinReply {
        if self.add_session(session, &member) {
            let p = self.presence_push(PushKind::UserJoined, &member.user_id, &member.username);
            self.fan_out(&p, Some(session));
        }
        self.idle_gen += 1;
        let members = self
            .members
            .iter()
            .take(self.cfg().max_listed_members)
            .map(|(u, e)| Member {
                user_id: u.clone(),
                username: e.username.clone(),
            })
            .collect();
        JoinReply {
            room_id: self.room.clone(),
            last_seq: self.durable,
            member_count: self.members.len(),
            members,
            messages: self.recent.iter().cloned().collect(),
            read_up_to: self.receipts.get(&member.user_id).copied().unwrap_or(0),
        }
    }

    fn leave(&mut self, myself: &ActorRef<RoomMsg>, session: SessionId) {
        let Some(user) = self.sessions.remove(&session) else {
            return;
        };
        let last = match self.members.get_mut(&user) {
            Some(e) => {
                e.sessions.retain(|s| *s != session);
                e.sessions.is_empty()
            }
            None => false,
        };
        if last {
            if let Some(e) = self.members.remove(&user) {
                self.typing.remove(&user);
                let p = self.presence_push(PushKind::UserLeft, &user, &e.username);
                self.fan_out(&p, None);
            }
        }
        self.schedule_idle_check(myself);
    }

    fn schedule_idle_check(&mut self, myself: &ActorRef<RoomMsg>) {
        if !self.members.is_empty() || !self.pending.is_empty() {
            return;
        }
        self.idle_gen += 1;
        let gen = self.idle_gen;
        myself.send_after(self.cfg().idle_timeout, move || RoomMsg::IdleCheck(gen));
    }

    fn send(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        req: SendRequest,
        reply: Reply<Arc<ChatMessage>>,
    ) {
        if !self.sessions.contains_key(&session) {
            let _ = reply.send(Err(not_in_room()));
            return;
        }
        if let Some(cid) = &req.client_msg_id {
            if let Some(&seq) = self.dedupe.get(&(member.user_id.clone(), cid.clone())) {
                self.answer_duplicate(seq, reply);
                return;
            }
        }
        let seq = self.last_assigned + 1;
        self.last_assigned = seq;
        self.last_timestamp = self.last_timestamp.max(now_ms());
        let msg = Arc::new(ChatMessage {
            id: ChatMessage::make_id(&self.room, seq),
            room_id: self.room.clone(),
            seq,
            user_id: member.user_id.clone(),
            username: member.username,
            text: req.text,
            attachments: req.attachments,
            timestamp: self.last_timestamp,
            client_msg_id: req.client_msg_id,
        });
        if let Some(cid) = &msg.client_msg_id {
            self.remember_client_id(member.user_id, cid.clone(), seq);
        }
        let ticket = self
            .deps
            .store
            .submit(vec![WriteOp::Message((*msg).clone())]);
        self.pending.insert(
            seq,
            PendingSend {
                msg,
                waiters: vec![reply],
                outcome: None,
            },
        );
        let me = myself.clone();
        tokio::spawn(async move {
            let result = ticket.await;
            let _ = me.cast(RoomMsg::Persisted { seq, result });
        });
    }

    /// A resend of a known client message id: answer with the original.
    fn answer_duplicate(&mut self, seq: u64, reply: Reply<Arc<ChatMessage>>) {
        metrics::counter!("parley_duplicate_sends_total").increment(1);
        if let Some(p) = self.pending.get_mut(&seq) {
            p.waiters.push(reply);
            return;
        }
        if let Some(m) = self.recent.iter().find(|m| m.seq == seq) {
            let _ = reply.send(Ok(m.clone()));
            return;
        }
        let store = self.deps.store.clone();
        let room = self.room.clone();
        tokio::spawn(async move {
            let r = match store.after(&room, seq - 1, 1).await {
                Ok(mut v) if !v.is_empty() => Ok(Arc::new(v.remove(0))),
                Ok(_) => Err(ApiError::new(
                    ErrorCode::Internal,
                    "original message not found",
                )),
                Err(e) => Err(store_error(&e)),
            };
            let _ = reply.send(r);
        });
    }

    fn persisted(&mut self, myself: &ActorRef<RoomMsg>, seq: u64, result: Result<(), StoreError>) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.outcome = Some(result);
        }
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().outcome.is_none() {
                break;
            }
            let p = entry.remove();
            match p.outcome {
                Some(Ok(())) => {
                    self.durable = p.msg.seq;
                    self.recent.push_back(p.msg.clone());
                    while self.recent.len() > self.cfg().history_on_join {
                        self.recent.pop_front();
                    }
                    let push = Push::new(
                        PushKind::NewMessage,
                        Some(self.room.clone()),
                        Some(p.msg.seq),
                        &*p.msg,
                    );
                    self.fan_out(&push, None);
                    for w in p.waiters {
                        let _ = w.send(Ok(p.msg.clone()));
                    }
                }
                Some(Err(e)) => {
                    self.failed_in_flight = true;
                    if let Some(cid) = &p.msg.client_msg_id {
                        let key = (p.msg.user_id.clone(), cid.clone());
                        if self.dedupe.get(&key) == Some(&p.msg.seq) {
                            self.dedupe.remove(&key);
                        }
                    }
                    let err = store_error(&e);
                    for w in p.waiters {
                        let _ = w.send(Err(err.clone()));
                    }
                }
                None => {}
            }
        }
        if self.pending.is_empty() {
            if self.failed_in_flight {
                // Every failed seq is free again: the store holds nothing above `durable`.
                self.last_assigned = self.durable;
                self.failed_in_flight = false;
            }
            self.schedule_idle_check(myself);
        }
    }

    fn typing(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        is_typing: bool,
    ) {
        if !self.sessions.contains_key(&session) {
            return;
        }
        let now = Instant::now();
        let broadcast = if is_typing {
            let entry = self.typing.entry(member.user_id.clone());
            let fresh = matches!(entry, std::collections::hash_map::Entry::Vacant(_));
            let e = entry.or_insert(TypingEntry {
                session,
                last_update: now,
                last_broadcast: now,
            });
            e.last_update = now;
            e.session = session;
            // Refreshes within a second are not re-broadcast: clients send one per keystroke.
            let again = fresh || now.duration_since(e.last_broadcast) >= Duration::from_secs(1);
            if again {
                e.last_broadcast = now;
            }
            again
        } else {
            self.typing.remove(&member.user_id).is_some()
        };
        if broadcast {
            self.typing_push(&member.user_id, &member.username, is_typing, Some(session));
        }
        if is_typing && !self.typing_timer {
            self.typing_timer = true;
            myself.send_after(self.cfg().typing_ttl, || RoomMsg::TypingExpiry);
        }
    }

    fn typing_push(
        &self,
        user: &UserId,
        username: &str,
        is_typing: bool,
        except: Option<SessionId>,
    ) {
        let p = Push::new(
            PushKind::UserTyping,
            Some(self.room.clone()),
            None,
            &TypingEvent {
                room_id: &self.room,
                user_id: user,
                username,
                is_typing,
            },
        );
        self.fan_out(&p, except);
    }

    fn expire_typing(&mut self, myself: &ActorRef<RoomMsg>) {
        self.typing_timer = false;
        let ttl = self.cfg().typing_ttl;
        let expired: Vec<(UserId, SessionId)> = self
            .typing
            .iter()
            .filter(|(_, e)| e.last_update.elapsed() >= ttl)
            .map(|(u, e)| (u.clone(), e.session))
            .collect();
        for (user, session) in expired {
            self.typing.remove(&user);
            if let Some(name) = self.members.get(&user).map(|e| e.username.clone()) {
                self.typing_push(&user, &name, false, Some(session));
            }
        }
        if let Some(next) = self
            .typing
            .values()
            .map(|e| ttl.saturating_sub(e.last_update.elapsed()))
            .min()
        {
            self.typing_timer = true;
            myself.send_after(next.max(Duration::from_millis(50)), || {
                RoomMsg::TypingExpiry
            });
        }
    }

    fn mark_read(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        up_to_seq: u64,
        reply: Reply<u64>,
    ) {
        if !self.sessions.contains_key(&session) {
            let _ = reply.send(Err(not_in_room()));
            return;
        }
        let seq = up_to_seq.min(self.durable);
        let current = self.receipts.get(&member.user_id).copied().unwrap_or(0);
        if seq <= current {
            let _ = reply.send(Ok(current));
            return;
        }
        let ticket = self.deps.store.submit(vec![WriteOp::Receipt {
            room: self.room.clone(),
            user: member.user_id.clone(),
            seq,
        }]);
        let me = myself.clone();
        tokio::spawn(async move {
            let result = ticket.await;
            let _ = me.cast(RoomMsg::ReceiptPersisted {
                session,
                member,
                seq,
                result,
                reply,
            });
        });
    }

    fn receipt_persisted(
        &mut self,
        session: SessionId,
        member: Member,
        seq: u64,
        result: Result<(), StoreError>,
        reply: Reply<u64>,
    ) {
        if let Err(e) = result {
            let _ = reply.send(Err(store_error(&e)));
            return;
        }
        let current = self.receipts.entry(member.user_id.clone()).or_insert(0);
        let advanced = seq > *current;
        *current = (*current).max(seq);
        let now = *current;
        if advanced {
            let p = Push::new(
                PushKind::MessagesRead,
                Some(self.room.clone()),
                None,
                &ReadEvent {
                    room_id: &self.room,
                    user_id: &member.user_id,
                    username: &member.username,
                    up_to_seq: now,
                },
            );
            self.fan_out(&p, Some(session));
        }
        let _ = reply.send(Ok(now));
    }
}

impl Actor for Room {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        Ok(RoomState {
            room: args.room,
            deps: args.deps,
            restarted: args.restarted,
            loaded: false,
            last_assigned: 0,
            durable: 0,
            last_timestamp: 0,
            pending: BTreeMap::new(),
            failed_in_flight: false,
            members: HashMap::new(),
            sessions: HashMap::new(),
            typing: HashMap::new(),
            typing_timer: false,
            recent: VecDeque::new(),
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            receipts: HashMap::new(),
            idle_gen: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<RoomMsg>,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        // Loading here keeps the supervisor's mailbox free; a failure is retried on first use.
        if let Err(e) = state.load().await {
            tracing::warn!(room = %state.room, error = %e, "room load failed; will retry on use");
        }
        state.schedule_idle_check(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomMsg::Join {
                session,
                member,
                reply,
            } => {
                let r = match state.ensure_loaded().await {
                    Ok(()) => Ok(state.join(session, member)),
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            RoomMsg::Leave { session } => state.leave(&myself, session),
            RoomMsg::Send {
                session,
                member,
                req,
                reply,
            } => match state.ensure_loaded().await {
                Ok(()) => state.send(&myself, session, member, req, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RoomMsg::Typing {
                session,
                member,
                is_typing,
            } => state.typing(&myself, session, member, is_typing),
            RoomMsg::MarkRead {
                session,
                member,
                up_to_seq,
                reply,
            } => match state.ensure_loaded().await {
                Ok(()) => state.mark_read(&myself, session, member, up_to_seq, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            RoomMsg::Persisted { seq, result } => state.persisted(&myself, seq, result),
            RoomMsg::ReceiptPersisted {
                session,
                member,
                seq,
                result,
                reply,
            } => state.receipt_persisted(session, member, seq, result, reply),
            RoomMsg::TypingExpiry => state.expire_typing(&myself),
            RoomMsg::IdleCheck(gen) => {
                if gen == state.idle_gen && state.members.is_empty() && state.pending.is_empty() {
                    tracing::debug!(room = %state.room, "idle; stopping");
                    myself.stop(Some("idle".into()));
                }
            }
            RoomMsg::InjectPanic => panic!("injected panic in room {} (test hook)", state.room),
        }
        Ok(())
    }
}
