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
//! Lifecycle: started on first use by the room supervisor, stopped after
//! [`RoomConfig::idle_timeout`] with no members and nothing in flight. After a crash the
//! supervisor starts it again with `restarted = true`: it reloads, rebuilds its members from
//! the hub and pushes `resync`.
//!
//! ## Loading, and a store that is down
//!
//! Members come from the hub and from joins, never from the store, so presence and typing work
//! whatever the store does. What needs the store is the room's *history state*: the last
//! stored seq, recent messages, dedupe ids and receipts. It is read by a background task
//! ([`RoomMsg::Loaded`]) so that the room's mailbox never waits on the store:
//!
//! * **Joins** to a room whose history is loaded are answered from memory. Before the first
//!   successful load, a join waits for the running load at most
//!   [`RoomConfig::join_history_wait`]; if the load fails or takes longer, the session joins
//!   anyway without history (`history_unavailable`, see `cluster_proto::api::JoinReply`) and
//!   is pushed `resync` once the history loads, so that it fetches what it missed.
//! * **Sends** need to know the last stored seq: a room never assigns a seq before it has read
//!   it (the gap-free rule). Sends to a room that is not loaded, or whose seq is in doubt, wait
//!   for a load that they start themselves, at most `join_history_wait`, and otherwise fail
//!   with `store_unavailable` (nothing was stored). The seq is in doubt ("stale") after any
//!   failed write: the CQL store may have committed a write whose acknowledgement was lost, so
//!   the room rereads the last seq before its next send, and pushes `resync` to everyone if
//!   it moved.
//! * **markRead** needs a loaded room (it clamps to the last durable seq), like a join.
//! * While the room has members and is not loaded (or stale), it retries the load in the
//!   background with a capped exponential backoff, so it recovers when the store returns even
//!   if nobody sends.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_proto::api::{JoinReply, SendRequest};
use cluster_proto::{
    ApiError, ChatMessage, ErrorCode, Member, Push, PushKind, RoomId, SessionId, UserId,
};
use history::{HistoryStore, Receipt, StoreError, WriteOp};
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
    /// How long a join, send or markRead waits for the room's history to load before it is
    /// answered without history (join) or with `store_unavailable` (send, markRead). Keep it
    /// below the callers' deadline (`call_timeout`). Default 2 s.
    pub join_history_wait: Duration,
    /// First delay of the background load retries of a room that has members but could not
    /// load; doubles up to [`RoomConfig::load_retry_max`]. Default 500 ms.
    pub load_retry_min: Duration,
    /// Longest delay between background load retries. Default 10 s.
    pub load_retry_max: Duration,
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
            join_history_wait: Duration::from_secs(2),
            load_retry_min: Duration::from_millis(500),
            load_retry_max: Duration::from_secs(10),
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
    /// Internal: the background load of the room's history finished.
    Loaded(Box<Result<Snapshot, StoreError>>),
    /// Internal: requests waiting for a load have waited long enough (the number guards
    /// against stale timers).
    LoadWaitExpired(u64),
    /// Internal: retry loading in the background.
    RetryLoad,
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

/// The room's history state as read from the store by a load.
pub struct Snapshot {
    last_seq: u64,
    latest: Vec<ChatMessage>,
    receipts: Vec<Receipt>,
}

/// A request that needs the room's history and arrived before it was loaded (or while its
/// seq was in doubt). Answered, in arrival order, when the load ends or the wait expires.
enum Waiting {
    Join {
        session: SessionId,
        member: Member,
        reply: Reply<JoinReply>,
    },
    Send {
        session: SessionId,
        member: Member,
        req: SendRequest,
        reply: Reply<Arc<ChatMessage>>,
    },
    MarkRead {
        session: SessionId,
        member: Member,
        up_to_seq: u64,
        reply: Reply<u64>,
    },
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
    /// The history state (seq, recent messages, dedupe ids, receipts) was loaded at least once.
    loaded: bool,
    /// A write failed since the last load: the store's last seq may be above `durable` (a
    /// commit whose ack was lost). Sends wait for a reload.
    stale: bool,
    /// A load task is running.
    loading: bool,
    /// Requests waiting for the running load, in arrival order.
    waiting: VecDeque<Waiting>,
    /// Guards `LoadWaitExpired` timers.
    wait_gen: u64,
    /// A `RetryLoad` is scheduled.
    retry_scheduled: bool,
    /// Delay of the next background retry.
    retry_delay: Duration,
    /// Sessions answered without history; pushed `resync` once the history loads.
    degraded: HashSet<SessionId>,
    /// Loads failed in a row (for the logs).
    load_failures: u32,
    /// The lowest seq whose write was reported failed since the last load: if the store has
    /// it after all, its message was never pushed.
    lowest_failed: Option<u64>,
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

    /// Adds the hub's sessions of this room: members never depend on the store.
    fn rebuild_members(&mut self) {
        for lm in self.deps.hub.members_of(&self.room) {
            self.add_session(lm.session, &lm.member);
        }
    }

    /// True when a send may be given a seq now.
    fn seq_known(&self) -> bool {
        self.loaded && !self.stale && !self.loading
    }

    /// Starts reading the room's history state in the background, unless a load is running.
    fn start_load(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let store = self.deps.store.clone();
        let room = self.room.clone();
        let want = self.cfg().history_on_join.max(self.cfg().dedupe_window);
        let max_receipts = self.cfg().max_receipts;
        let me = myself.clone();
        tokio::spawn(async move {
            let result = async {
                let meta = store.room_meta(&room).await?;
                let latest = store.latest(&room, want).await?;
                let receipts = store.receipts(&room, max_receipts).await?;
                Ok(Snapshot {
                    last_seq: meta.last_seq,
                    latest,
                    receipts,
                })
            }
            .await;
            // The room may have stopped meanwhile; then nobody needs the result.
            let _ = me.cast(RoomMsg::Loaded(Box::new(result)));
        });
    }

    /// Queues a request until the load ends (starting one if needed), at most
    /// `join_history_wait`.
    fn wait_for_load(&mut self, myself: &ActorRef<RoomMsg>, w: Waiting) {
        if self.waiting.is_empty() {
            self.wait_gen += 1;
            let gen = self.wait_gen;
            myself.send_after(self.cfg().join_history_wait, move || {
                RoomMsg::LoadWaitExpired(gen)
            });
        }
        self.waiting.push_back(w);
        self.start_load(myself);
    }

    fn on_loaded(&mut self, myself: &ActorRef<RoomMsg>, result: Result<Snapshot, StoreError>) {
        self.loading = false;
        match result {
            Ok(snap) => {
                metrics::counter!("parley_room_loads_total", "result" => "ok").increment(1);
                if self.load_failures > 0 {
                    tracing::info!(room = %self.room, failures = self.load_failures, "room history loaded");
                    self.load_failures = 0;
                }
                self.apply_snapshot(snap);
                // Answer the waiting requests in arrival order, now against loaded state.
                for w in std::mem::take(&mut self.waiting) {
                    match w {
                        Waiting::Join { member, reply, .. } => {
                            let _ = reply.send(Ok(self.join_reply(&member, false)));
                        }
                        Waiting::Send {
                            session,
                            member,
                            req,
                            reply,
                        } => self.send(myself, session, member, req, reply),
                        Waiting::MarkRead {
                            session,
                            member,
                            up_to_seq,
                            reply,
                        } => self.mark_read(myself, session, member, up_to_seq, reply),
                    }
                }
            }
            Err(e) => {
                metrics::counter!("parley_room_loads_total", "result" => "error").increment(1);
                // Once per outage at warn level: a down store fails every load of every room.
                if self.load_failures == 0 {
                    tracing::warn!(room = %self.room, error = %e, "room history load failed; will retry");
                } else {
                    tracing::debug!(room = %self.room, error = %e, failures = self.load_failures, "room history load failed again");
                }
                self.load_failures += 1;
                self.fail_waiting(&store_error(&e));
                self.schedule_retry(myself);
            }
        }
        self.schedule_idle_check(myself);
    }

    /// Takes the store's view of the room. Only called with nothing in flight (sends wait
    /// while a load runs), so `durable` and `last_assigned` can simply be replaced.
    fn apply_snapshot(&mut self, snap: Snapshot) {
        let was_loaded = self.loaded;
        let previous = self.durable;
        if was_loaded && snap.last_seq < previous {
            tracing::error!(
                room = %self.room,
                store = snap.last_seq,
                acknowledged = previous,
                "the store's last seq is below an acknowledged one; following the store"
            );
        }
        let snap_last_seq = snap.last_seq;
        self.last_assigned = snap.last_seq;
        self.durable = snap.last_seq;
        self.last_timestamp = self
            .last_timestamp
            .max(snap.latest.last().map(|m| m.timestamp).unwrap_or(0));
        self.recent.clear();
        self.dedupe.clear();
        self.dedupe_order.clear();
        let keep_from = snap.latest.len().saturating_sub(self.cfg().history_on_join);
        for (i, m) in snap.latest.into_iter().enumerate() {
            if let Some(c) = &m.client_msg_id {
                self.remember_client_id(m.user_id.clone(), c.clone(), m.seq);
            }
            if i >= keep_from {
                self.recent.push_back(Arc::new(m));
            }
        }
        // A receipt acknowledged while the load was reading must not go back.
        for r in snap.receipts {
            let e = self.receipts.entry(r.user).or_insert(0);
            *e = (*e).max(r.seq);
        }
        self.loaded = true;
        self.stale = false;
        self.retry_delay = self.cfg().load_retry_min;
        let degraded = std::mem::take(&mut self.degraded);
        // Messages may have been stored without being pushed: by a crashed incarnation, or a
        // commit whose ack was lost (a seq reported failed is in the store after all; a later
        // write may even have succeeded on top of it). Everyone resumes.
        let lost_ack = self
            .lowest_failed
            .take()
            .is_some_and(|l| l <= snap_last_seq);
        if self.restarted || lost_ack || (was_loaded && self.durable != previous) {
            self.restarted = false;
            let push = self.resync_push();
            self.deps.hub.deliver(&self.room, &push, None);
        } else if !degraded.is_empty() {
            // Sessions that joined without history fetch it now.
            let push = self.resync_push();
            for s in degraded {
                if self.sessions.contains_key(&s) {
                    self.deps.hub.deliver_to(s, &push);
                }
            }
        }
    }

    fn resync_push(&self) -> Arc<Push> {
        Push::new(
            PushKind::Resync,
            Some(self.room.clone()),
            None,
            &ResyncEvent {
                room_id: &self.room,
                last_seq: self.durable,
            },
        )
    }

    /// Answers every waiting request without history: joins succeed degraded, sends and
    /// receipts fail with `err` (nothing was written).
    fn fail_waiting(&mut self, err: &ApiError) {
        for w in std::mem::take(&mut self.waiting) {
            match w {
                Waiting::Join {
                    session,
                    member,
                    reply,
                } => {
                    // A join that waited for a reload of a loaded room is not degraded.
                    let degraded = !self.loaded;
                    if degraded && self.sessions.contains_key(&session) {
                        self.degraded.insert(session);
                        metrics::counter!("parley_degraded_joins_total").increment(1);
                    }
                    let _ = reply.send(Ok(self.join_reply(&member, degraded)));
                }
                Waiting::Send { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Waiting::MarkRead { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn load_wait_expired(&mut self, gen: u64) {
        if gen != self.wait_gen || self.waiting.is_empty() {
            return;
        }
        let err = ApiError::new(
            ErrorCode::StoreUnavailable,
            format!(
                "message history unavailable: the store did not answer within {:?}",
                self.cfg().join_history_wait
            ),
        );
        // The load goes on; whoever comes next gets its result.
        self.fail_waiting(&err);
    }

    /// Schedules a background load while members are waiting for history or a known seq.
    fn schedule_retry(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.retry_scheduled || self.members.is_empty() || (self.loaded && !self.stale) {
            return;
        }
        self.retry_scheduled = true;
        let delay = self.retry_delay;
        self.retry_delay = (delay * 2).min(self.cfg().load_retry_max);
        myself.send_after(delay, || RoomMsg::RetryLoad);
    }

    fn retry_load(&mut self, myself: &ActorRef<RoomMsg>) {
        self.retry_scheduled = false;
        if (!self.loaded || self.stale) && !self.members.is_empty() {
            self.start_load(myself);
        }
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

    /// A join: the session is a member at once (presence and typing need no store); the
    /// reply carries the history, waiting for the first load if there is none yet.
    fn join(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        reply: Reply<JoinReply>,
    ) {
        if self.add_session(session, &member) {
            let p = self.presence_push(PushKind::UserJoined, &member.user_id, &member.username);
            self.fan_out(&p, Some(session));
        }
        self.idle_gen += 1;
        if self.loaded {
            let _ = reply.send(Ok(self.join_reply(&member, false)));
        } else {
            self.wait_for_load(
                myself,
                Waiting::Join {
                    session,
                    member,
                    reply,
                },
            );
        }
    }

    fn join_reply(&self, member: &Member, degraded: bool) -> JoinReply {
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
            last_seq: (!degraded).then_some(self.durable),
            member_count: self.members.len(),
            members,
            messages: if degraded {
                Vec::new()
            } else {
                self.recent.iter().cloned().collect()
            },
            read_up_to: (!degraded)
                .then(|| self.receipts.get(&member.user_id).copied().unwrap_or(0)),
            history_unavailable: degraded,
        }
    }

    fn leave(&mut self, myself: &ActorRef<RoomMsg>, session: SessionId) {
        let Some(user) = self.sessions.remove(&session) else {
            return;
        };
        self.degraded.remove(&session);
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

    /// Nothing keeps the room alive: no members, no write in flight, no load or waiting request.
    fn idle(&self) -> bool {
        self.members.is_empty()
            && self.pending.is_empty()
            && !self.loading
            && self.waiting.is_empty()
    }

    fn schedule_idle_check(&mut self, myself: &ActorRef<RoomMsg>) {
        if !self.idle() {
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
                    let lowest = self.lowest_failed.map_or(p.msg.seq, |l| l.min(p.msg.seq));
                    self.lowest_failed = Some(lowest);
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
                // Every failed seq is free again, unless a commit landed whose ack was lost:
                // the next send rereads the last seq first (see the module docs).
                self.last_assigned = self.durable;
                self.failed_in_flight = false;
                self.stale = true;
                self.schedule_retry(myself);
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
        let retry_delay = args.deps.cfg.load_retry_min;
        Ok(RoomState {
            room: args.room,
            deps: args.deps,
            restarted: args.restarted,
            loaded: false,
            stale: false,
            loading: false,
            waiting: VecDeque::new(),
            wait_gen: 0,
            retry_scheduled: false,
            retry_delay,
            degraded: HashSet::new(),
            load_failures: 0,
            lowest_failed: None,
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
        // Members first (after a restart they are the hub's sessions): presence and typing
        // work before, and without, the history. The load runs in the background.
        state.rebuild_members();
        state.start_load(&myself);
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
            } => state.join(&myself, session, member, reply),
            RoomMsg::Leave { session } => state.leave(&myself, session),
            RoomMsg::Send {
                session,
                member,
                req,
                reply,
            } => {
                if !state.sessions.contains_key(&session) {
                    let _ = reply.send(Err(not_in_room()));
                } else if state.seq_known() {
                    state.send(&myself, session, member, req, reply);
                } else {
                    state.wait_for_load(
                        &myself,
                        Waiting::Send {
                            session,
                            member,
                            req,
                            reply,
                        },
                    );
                }
            }
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
            } => {
                if !state.sessions.contains_key(&session) {
                    let _ = reply.send(Err(not_in_room()));
                } else if state.loaded {
                    state.mark_read(&myself, session, member, up_to_seq, reply);
                } else {
                    state.wait_for_load(
                        &myself,
                        Waiting::MarkRead {
                            session,
                            member,
                            up_to_seq,
                            reply,
                        },
                    );
                }
            }
            RoomMsg::Loaded(result) => state.on_loaded(&myself, *result),
            RoomMsg::LoadWaitExpired(gen) => state.load_wait_expired(gen),
            RoomMsg::RetryLoad => state.retry_load(&myself),
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
                if gen == state.idle_gen && state.idle() {
                    tracing::debug!(room = %state.room, "idle; stopping");
                    myself.stop(Some("idle".into()));
                }
            }
            RoomMsg::InjectPanic => panic!("injected panic in room {} (test hook)", state.room),
        }
        Ok(())
    }
}
