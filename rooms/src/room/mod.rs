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

use crate::cluster::ClusterView;
use crate::hub::Hub;

mod load;
mod presence;
mod receipts;
mod remote;
mod send;

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
    pub cluster: Arc<ClusterView>,
    pub cfg: RoomConfig,
    /// States handed over by old owners in planned moves, taken by the room's first load.
    pub handoffs: std::sync::Mutex<HashMap<RoomId, cluster_proto::wire::RoomHandoff>>,
}

pub type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

/// Messages a room handles (local only: rooms are never addressed across nodes).
pub enum RoomMsg {
    Join {
        session: SessionId,
        member: Member,
        /// The session's node when it is not this one.
        node: Option<Arc<str>>,
        reply: Reply<JoinReply>,
    },
    /// After an owner change: sessions that were members under the previous owner (of
    /// `node`, or of this node when `None`). Added silently and pushed `resync`.
    Rejoin {
        node: Option<Arc<str>>,
        members: Vec<(SessionId, Member)>,
    },
    /// A node left the cluster: its sessions are gone.
    NodeDown(Arc<str>),
    /// This node no longer owns the room: finish the writes in flight, refuse the rest with
    /// `room_moved`, hand the state to the new owner, then stop.
    Handoff,
    /// A handed-over state arrived for a room that is already running: forget it.
    DropHandoff,
    Leave {
        session: SessionId,
    },
    /// `node`: the session's node when it is not this one. The caller has checked that the
    /// session is subscribed to the room on its node: a session the room does not know (its
    /// registration after an owner change is still on its way) is added, as by `Rejoin`.
    Send {
        session: SessionId,
        member: Member,
        node: Option<Arc<str>>,
        req: SendRequest,
        reply: Reply<Arc<ChatMessage>>,
    },
    Typing {
        session: SessionId,
        member: Member,
        is_typing: bool,
    },
    /// `node`: as for `Send`.
    MarkRead {
        session: SessionId,
        member: Member,
        node: Option<Arc<str>>,
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

impl ractor::Message for RoomMsg {}

/// The room actor (stateless; its state is [`RoomState`]).
pub struct Room;

pub struct RoomArgs {
    pub room: RoomId,
    pub deps: Arc<RoomDeps>,
    pub restarted: bool,
}

/// The room's history state as read from the store by a load.
pub struct Snapshot {
    /// This load claimed the room.
    claimed: bool,
    last_seq: u64,
    /// Dedupe entries beyond those of `latest` (from a handed-over state).
    dedupe: Vec<(UserId, String, u64)>,
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

/// Why a room stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retiring {
    /// Ownership moved (membership change): drain, then stop.
    Moved,
    /// The store fenced this incarnation: a newer owner claimed the room.
    Fenced,
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
    /// This incarnation claimed the room in the store (its writes are fenced by that claim).
    claimed: bool,
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
    /// Sessions of other nodes, with their node.
    remote: HashMap<SessionId, Arc<str>>,
    /// Members per other node: where a push goes, one frame per node.
    remote_nodes: HashMap<Arc<str>, usize>,
    /// Set when the room stops serving (see [`Retiring`]).
    retiring: Option<Retiring>,
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
            claimed: false,
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
            remote: HashMap::new(),
            remote_nodes: HashMap::new(),
            retiring: None,
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
        // Started (or restarted by the supervisor) on a node that no longer owns the room.
        let owner = state.deps.cluster.room_owner(state.room.as_str());
        if !state.deps.cluster.is_local(&owner) {
            myself.stop(Some("not the owner".into()));
            return Ok(());
        }
        // Members first (after a restart they are the hub's sessions): presence and typing
        // work before, and without, the history. The load runs in the background.
        state.rebuild_members();
        if state.restarted {
            // Members of other nodes are not in this node's hub: ask them to register again.
            let ring = state.deps.cluster.ring();
            let local = state.deps.cluster.local().clone();
            state.deps.cluster.cast_to(
                ring.nodes().filter(|n| *n != &*local),
                cluster_proto::wire::Cast::Reregister {
                    room: state.room.clone(),
                },
            );
        }
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
                node,
                reply,
            } => match state.retiring {
                Some(_) => {
                    let _ = reply.send(Err(state.moved()));
                }
                None => state.join(&myself, session, member, node, reply),
            },
            RoomMsg::Rejoin { node, members } => state.rejoin(&myself, node, members),
            RoomMsg::NodeDown(node) => state.node_down(&myself, &node),
            RoomMsg::Handoff => state.retire(&myself, Retiring::Moved),
            RoomMsg::DropHandoff => {
                if state.claimed || state.loading {
                    state
                        .deps
                        .handoffs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&state.room);
                }
            }
            RoomMsg::Leave { session } => state.leave(&myself, session),
            RoomMsg::Send { reply, .. } if state.retiring.is_some() => {
                let _ = reply.send(Err(state.moved()));
            }
            RoomMsg::MarkRead { reply, .. } if state.retiring.is_some() => {
                let _ = reply.send(Err(state.moved()));
            }
            RoomMsg::Send {
                session,
                member,
                node,
                req,
                reply,
            } => {
                if !state.sessions.contains_key(&session) {
                    state.rejoin(&myself, node, vec![(session, member.clone())]);
                }
                if state.seq_known() {
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
                node,
                up_to_seq,
                reply,
            } => {
                if !state.sessions.contains_key(&session) {
                    state.rejoin(&myself, node, vec![(session, member.clone())]);
                }
                if state.loaded {
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
