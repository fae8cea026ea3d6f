//! The chat logic of one client session, independent of the wire protocol and transport.
//!
//! `/ws` ([`crate::session::WsSession`]) and Socket.IO ([`crate::socketio`]) sessions speak
//! different frames but must behave identically towards the room layer: the same admission
//! (the user's shared token bucket, `max_inflight`), the same error counting (close 4029 after
//! `max_consecutive_errors`), the same room bookkeeping (`max_rooms_per_connection`, `not_in_room`)
//! and the same ordering of a join (pushes of a room whose join is pending are held back and
//! released after the answer, minus any `newMessage` already contained in the history). That
//! logic lives here once, as functions generic over the actor that owns a [`ChatCore`] and
//! implements [`ChatTransport`] to put answers on its wire.
//!
//! Requests run as futures spawned on the actor (never `.wait`), so a slow room does not stop
//! the session from reading, pinging or receiving pushes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use cluster_proto::api::JoinReply;
use cluster_proto::rate::TokenBucket;
use cluster_proto::{ApiError, ErrorCode, Member, Push, PushKind, RoomId, SessionId};
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::backend::BackendFuture;
use crate::close::CloseReason;
use crate::endpoint::SessionsContext;
use crate::outbox::{Batch, Delivery};
use crate::protocol::{EventKind, Request};
use crate::stats::stats;

enum RoomPhase {
    /// Join sent, answer pending: pushes wait here.
    Joining(Vec<Arc<Push>>),
    /// Joined; the highest `newMessage` seq this session was given (from the join's history
    /// or a push). A `newMessage` at or below it is a duplicate and is not sent: in a
    /// cluster, the pushes of a room's old and new owner can overlap while it moves.
    Joined(u64),
}

/// The transport-independent state of an authenticated session.
pub(crate) struct ChatCore {
    pub(crate) id: SessionId,
    pub(crate) member: Member,
    pub(crate) ctx: Arc<SessionsContext>,
    bucket: Arc<TokenBucket>,
    /// Looked up for every push: a fast hash (keys are the session's own rooms, a few).
    rooms: HashMap<RoomId, RoomPhase, foldhash::fast::RandomState>,
    inflight: usize,
    consecutive_errors: u32,
}

impl ChatCore {
    pub(crate) fn new(
        id: SessionId,
        member: Member,
        ctx: Arc<SessionsContext>,
        bucket: Arc<TokenBucket>,
    ) -> Self {
        Self {
            id,
            member,
            ctx,
            bucket,
            rooms: HashMap::default(),
            inflight: 0,
            consecutive_errors: 0,
        }
    }

    /// Counts a rejected request; true when the session must close as a flood.
    fn count_error(&mut self) -> bool {
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
        self.consecutive_errors >= self.ctx.limits.max_consecutive_errors
    }

    /// The session ended: leave every room.
    pub(crate) fn disconnect(&self) {
        self.ctx.backend.disconnect(self.id, &self.member);
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomAck<'a> {
    room_id: &'a RoomId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadAck {
    room_id: RoomId,
    up_to_seq: u64,
}

#[derive(Serialize)]
struct Empty {}

/// What a transport provides to run the chat logic on its actor.
pub(crate) trait ChatTransport: Actor + Sized {
    /// The chat state; `None` before the session is authenticated (Socket.IO CONNECT).
    fn core(&mut self) -> Option<&mut ChatCore>;
    /// A successful answer to request `id`.
    fn send_ack<D: Serialize>(&mut self, ctx: &mut Self::Context, id: u64, data: &D);
    /// A failed request: an error answer if it had an id, else an `error` event.
    fn send_error(
        &mut self,
        ctx: &mut Self::Context,
        id: Option<u64>,
        event: EventKind,
        err: &ApiError,
    );
    /// A push from a room.
    fn send_push(&mut self, ctx: &mut Self::Context, p: &Arc<Push>);
    /// The `messageHistory` push that precedes a `joinRoom` answer.
    fn send_history(&mut self, ctx: &mut Self::Context, reply: &JoinReply);
    /// Ends the session with `reason` (the first reason wins).
    fn close(&mut self, ctx: &mut Self::Context, reason: CloseReason);
}

/// What the session's outbox hands it: pushes, oldest first, or its eviction.
pub(crate) struct Outbound(pub Delivery);

impl Message for Outbound {
    type Result = ();
}

/// The node is shutting down.
pub(crate) struct ShutdownSignal;

impl Message for ShutdownSignal {
    type Result = ();
}

/// Delivers [`ShutdownSignal`] to the actor when the node starts shutting down.
pub(crate) fn watch_shutdown<A>(ctx: &mut A::Context, mut shutdown: watch::Receiver<bool>)
where
    A: Actor + StreamHandler<ShutdownSignal>,
    A::Context: AsyncContext<A>,
{
    ctx.add_stream(futures::stream::once(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        ShutdownSignal
    }));
}

/// Delivers the outbox's pushes (and its eviction) to the actor as [`Outbound`]: one stream,
/// so a wake-up of the session polls one source for both (see [`outbound`]).
pub(crate) fn watch_outbox<A>(ctx: &mut A::Context, rx: crate::outbox::OutboxRx)
where
    A: ChatTransport + StreamHandler<Outbound>,
    A::Context: AsyncContext<A>,
{
    ctx.add_stream(rx.map(Outbound));
}

/// Handles what the outbox delivered: the pushes, or a close as a slow consumer when the room
/// layer evicted the session.
pub(crate) fn outbound<A: ChatTransport>(act: &mut A, ctx: &mut A::Context, d: Delivery) {
    match d {
        Delivery::Pushes(batch) => push_all(act, ctx, batch),
        Delivery::Evicted => act.close(ctx, CloseReason::SlowConsumer),
    }
}

/// Answers a rejected or failed request and counts it against the flood limit, unless the
/// server caused the failure (`store_unavailable`, `timeout`...): a client that keeps retrying
/// while the history store is down is not flooding.
pub(crate) fn reject<A: ChatTransport>(
    act: &mut A,
    ctx: &mut A::Context,
    id: Option<u64>,
    event: EventKind,
    err: &ApiError,
) {
    if id.is_some() {
        stats().outbound_ack.increment(1);
    }
    act.send_error(ctx, id, event, err);
    if !err.code.is_server_side() && act.core().is_some_and(|c| c.count_error()) {
        act.close(ctx, CloseReason::Flood);
    }
}

/// A request the protocol layer could not parse.
pub(crate) fn rejected_input<A: ChatTransport>(
    act: &mut A,
    ctx: &mut A::Context,
    id: Option<u64>,
    event: EventKind,
    err: &ApiError,
) {
    stats().inbound(event).increment(1);
    reject(act, ctx, id, event, err);
}

fn ack_now<A: ChatTransport>(
    act: &mut A,
    ctx: &mut A::Context,
    id: Option<u64>,
    data: &impl Serialize,
) {
    if let Some(core) = act.core() {
        core.consecutive_errors = 0;
    }
    if let Some(id) = id {
        stats().outbound_ack.increment(1);
        act.send_ack(ctx, id, data);
    }
}

/// A parsed request: admitted against the user's rate limit and the in-flight cap, then run.
pub(crate) fn request<A>(
    act: &mut A,
    ctx: &mut A::Context,
    id: Option<u64>,
    event: EventKind,
    req: Request,
) where
    A: ChatTransport,
    A::Context: AsyncContext<A>,
{
    stats().inbound(event).increment(1);
    let Some(core) = act.core() else {
        let err = ApiError::new(ErrorCode::InvalidPayload, "not connected");
        return reject(act, ctx, id, event, &err);
    };
    if !core.bucket.try_acquire() {
        stats().rate_limited.increment(1);
        let err = ApiError::new(ErrorCode::RateLimited, "too many requests; slow down");
        return reject(act, ctx, id, event, &err);
    }
    if core.inflight >= core.ctx.limits.max_inflight {
        let err = ApiError::new(
            ErrorCode::Overloaded,
            "too many requests in flight; wait for answers",
        );
        return reject(act, ctx, id, event, &err);
    }
    dispatch(act, ctx, id, event, req);
}

/// Runs `fut` on the actor, counted against `max_inflight` and timed, then `then`.
fn spawn_tracked<A, T>(
    act: &mut A,
    ctx: &mut A::Context,
    fut: BackendFuture<T>,
    then: impl FnOnce(&mut A, &mut A::Context, Result<T, ApiError>) + 'static,
) where
    A: ChatTransport,
    A::Context: AsyncContext<A>,
    T: 'static,
{
    let started = Instant::now();
    if let Some(core) = act.core() {
        core.inflight += 1;
    }
    fut.into_actor(act)
        .map(move |res, act: &mut A, ctx: &mut A::Context| {
            if let Some(core) = act.core() {
                core.inflight = core.inflight.saturating_sub(1);
            }
            stats()
                .latency
                .record(started.elapsed().as_secs_f64() * 1e3);
            then(act, ctx, res);
        })
        .spawn(ctx);
}

/// Runs `fut` on the actor and answers with `on_ok`'s data or the error.
fn spawn_request<A, T, D>(
    act: &mut A,
    ctx: &mut A::Context,
    id: Option<u64>,
    event: EventKind,
    fut: BackendFuture<T>,
    on_ok: impl FnOnce(T) -> D + 'static,
) where
    A: ChatTransport,
    A::Context: AsyncContext<A>,
    T: 'static,
    D: Serialize,
{
    spawn_tracked(act, ctx, fut, move |act, ctx, res| match res {
        Ok(v) => ack_now(act, ctx, id, &on_ok(v)),
        Err(e) => reject(act, ctx, id, event, &e),
    });
}

/// Runs a backend future inside the request's span, so the room actor's handling (ractor
/// propagates the caller's span to the handler) and the store calls become its children.
fn traced<T: 'static>(span: &tracing::Span, fut: BackendFuture<T>) -> BackendFuture<T> {
    Box::pin(tracing::Instrument::instrument(fut, span.clone()))
}

fn dispatch<A>(act: &mut A, ctx: &mut A::Context, id: Option<u64>, event: EventKind, req: Request)
where
    A: ChatTransport,
    A::Context: AsyncContext<A>,
{
    let Some(core) = act.core() else {
        return;
    };
    let backend = core.ctx.backend.clone();
    let (sid, member) = (core.id, core.member.clone());
    let span = tracing::info_span!("request", event = event.as_str(), session = sid.0);
    let in_room = |core: &ChatCore, room: &RoomId| core.rooms.contains_key(room);
    let not_in_room = || ApiError::new(ErrorCode::NotInRoom, "join the room first");
    match req {
        Request::Join { room } => {
            if !core.rooms.contains_key(&room) {
                let max = core.ctx.limits.max_rooms_per_connection;
                if core.rooms.len() >= max {
                    let err = ApiError::new(
                        ErrorCode::TooManyRooms,
                        format!("at most {max} rooms per connection"),
                    );
                    return reject(act, ctx, id, event, &err);
                }
                core.rooms
                    .insert(room.clone(), RoomPhase::Joining(Vec::new()));
            }
            let fut = traced(&span, backend.join(sid, &member, room.clone()));
            spawn_tracked(act, ctx, fut, move |act, ctx, res| {
                joined(act, ctx, id, room, res)
            });
        }
        Request::Leave { room } => {
            if core.rooms.remove(&room).is_some() {
                backend.leave(sid, &room);
            }
            ack_now(act, ctx, id, &RoomAck { room_id: &room });
        }
        Request::Send(req) => {
            if !in_room(core, &req.room) {
                return reject(act, ctx, id, event, &not_in_room());
            }
            let fut = traced(&span, backend.send(sid, &member, req));
            spawn_request(act, ctx, id, event, fut, |msg| msg);
        }
        Request::Typing { room, is_typing } => {
            if !in_room(core, &room) {
                return reject(act, ctx, id, event, &not_in_room());
            }
            span.in_scope(|| backend.typing(sid, &member, &room, is_typing));
            ack_now(act, ctx, id, &Empty {});
        }
        Request::MarkRead { room, up_to_seq } => {
            if !in_room(core, &room) {
                return reject(act, ctx, id, event, &not_in_room());
            }
            let fut = traced(
                &span,
                backend.mark_read(sid, &member, room.clone(), up_to_seq),
            );
            spawn_request(act, ctx, id, event, fut, move |seq| ReadAck {
                room_id: room,
                up_to_seq: seq,
            });
        }
        Request::History {
            room,
            before,
            limit,
        } => {
            let fut = traced(&span, backend.history(room, before, limit));
            spawn_request(act, ctx, id, event, fut, |page| page);
        }
        Request::Resume { room, after_seq } => {
            let fut = traced(&span, backend.resume(room, after_seq));
            spawn_request(act, ctx, id, event, fut, |page| page);
        }
    }
}

/// The room answered a join: send history and ack, then the held-back pushes.
fn joined<A: ChatTransport>(
    act: &mut A,
    ctx: &mut A::Context,
    id: Option<u64>,
    room: RoomId,
    res: Result<JoinReply, ApiError>,
) {
    let Some(core) = act.core() else {
        return;
    };
    let held = match core.rooms.get_mut(&room) {
        Some(RoomPhase::Joining(held)) => std::mem::take(held),
        Some(RoomPhase::Joined(_)) => Vec::new(),
        // Left while joining.
        None => {
            if res.is_ok() {
                core.ctx.backend.leave(core.id, &room);
            }
            let err = ApiError::new(ErrorCode::NotInRoom, "left before the join completed");
            return reject(act, ctx, id, EventKind::JoinRoom, &err);
        }
    };
    let reply = match res {
        Ok(r) => r,
        Err(e) => {
            core.rooms.remove(&room);
            return reject(act, ctx, id, EventKind::JoinRoom, &e);
        }
    };
    let mut top = reply.last_seq.unwrap_or(0);
    act.send_history(ctx, &reply);
    ack_now(act, ctx, id, &reply);
    for p in held {
        // Without history (`last_seq: None`) nothing held is a duplicate: a room assigns
        // no seq before its history is loaded.
        if p.kind == PushKind::NewMessage {
            match p.seq {
                Some(s) if s <= top => continue,
                Some(s) => top = s,
                None => {}
            }
        }
        act.send_push(ctx, &p);
    }
    if let Some(core) = act.core() {
        core.rooms.insert(room, RoomPhase::Joined(top));
    }
}

/// A batch from the outbox, in order (see [`push`]).
fn push_all<A: ChatTransport>(act: &mut A, ctx: &mut A::Context, batch: Batch) {
    for p in batch {
        push(act, ctx, p);
    }
}

/// A push from the outbox: delivered, held back while its room's join is pending, or dropped
/// for a room the session has left.
pub(crate) fn push<A: ChatTransport>(act: &mut A, ctx: &mut A::Context, p: Arc<Push>) {
    let Some(core) = act.core() else {
        return;
    };
    let limit = core.ctx.limits.outbound_queue;
    match p.room.as_ref().and_then(|r| core.rooms.get_mut(r)) {
        Some(RoomPhase::Joining(held)) => {
            if held.len() >= limit {
                return act.close(ctx, CloseReason::SlowConsumer);
            }
            held.push(p);
        }
        Some(RoomPhase::Joined(top)) => {
            if p.kind == PushKind::NewMessage {
                if let Some(s) = p.seq {
                    if s <= *top {
                        return;
                    }
                    *top = s;
                }
            }
            act.send_push(ctx, &p)
        }
        // A push for a room this session has left: drop it.
        None if p.room.is_some() => {}
        None => act.send_push(ctx, &p),
    }
}
