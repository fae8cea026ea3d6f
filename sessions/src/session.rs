//! The WebSocket session actor: one per connection, on an actix-web worker thread.
//!
//! It turns frames into requests for the [`ChatBackend`] and answers into frames. Requests run
//! as futures spawned on the actor (never `.wait`), so a slow room does not stop the session
//! from reading, pinging or receiving pushes; `max_inflight` bounds them. Pushes arrive on the
//! bounded [`crate::outbox::Outbox`] queue.
//!
//! Ordering of a join: the session subscribes before the room answers, so pushes for a room in
//! the middle of joining are held back and released after the `joinRoom` answer, minus any
//! `newMessage` already contained in the history it returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use bytestring::ByteString;
use cluster_proto::api::JoinReply;
use cluster_proto::rate::TokenBucket;
use cluster_proto::{ApiError, ErrorCode, Member, Push, PushKind, RoomId, SessionId};
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::close::CloseReason;
use crate::conn::KillSwitch;
use crate::endpoint::SessionsContext;
use crate::outbox::OutboxEnds;
use crate::protocol::{self, EventKind, Request};
use crate::stats::stats;

/// A push from the outbox.
struct Outbound(Arc<Push>);

impl Message for Outbound {
    type Result = ();
}

/// The node is shutting down.
struct ShutdownSignal;

impl Message for ShutdownSignal {
    type Result = ();
}

enum RoomPhase {
    /// Join sent, answer pending: pushes wait here.
    Joining(Vec<Arc<Push>>),
    Joined,
}

struct Fragments {
    text: bool,
    buf: Vec<u8>,
}

pub struct WsSession {
    id: SessionId,
    member: Member,
    ctx: Arc<SessionsContext>,
    bucket: Arc<TokenBucket>,
    outbox_rx: Option<mpsc::Receiver<Arc<Push>>>,
    evicted: Arc<Notify>,
    kill: Arc<KillSwitch>,
    rooms: HashMap<RoomId, RoomPhase>,
    last_heard: Instant,
    inflight: usize,
    consecutive_errors: u32,
    fragments: Option<Fragments>,
    closed: Option<CloseReason>,
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
#[serde(rename_all = "camelCase")]
struct HistoryPush<'a> {
    room_id: &'a RoomId,
    last_seq: u64,
    messages: &'a [Arc<cluster_proto::ChatMessage>],
}

#[derive(Serialize)]
struct Empty {}

impl WsSession {
    pub(crate) fn new(
        id: SessionId,
        member: Member,
        ctx: Arc<SessionsContext>,
        bucket: Arc<TokenBucket>,
        outbox: OutboxEnds,
    ) -> Self {
        Self {
            id,
            member,
            ctx,
            bucket,
            outbox_rx: Some(outbox.rx),
            evicted: outbox.evicted,
            kill: outbox.kill,
            rooms: HashMap::new(),
            last_heard: Instant::now(),
            inflight: 0,
            consecutive_errors: 0,
            fragments: None,
            closed: None,
        }
    }

    /// Ends the session with `reason` (the first reason wins).
    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        if reason != CloseReason::ClientGone {
            ctx.close(Some(reason.frame()));
        }
        ctx.stop();
    }

    fn write(&self, ctx: &mut ws::WebsocketContext<Self>, frame: impl Into<ByteString>) {
        ctx.text(frame);
    }

    fn reject(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<u64>,
        event: EventKind,
        err: &ApiError,
    ) {
        if id.is_some() {
            stats().outbound_ack.increment(1);
        }
        self.write(ctx, protocol::answer_error(id, event, err));
        self.consecutive_errors += 1;
        if self.consecutive_errors >= self.ctx.limits.max_consecutive_errors {
            self.close(ctx, CloseReason::Flood);
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let incoming = match protocol::parse(text, &self.ctx.limits) {
            Ok(i) => i,
            Err(r) => {
                stats().inbound(r.event).increment(1);
                self.reject(ctx, r.id, r.event, &r.error);
                return;
            }
        };
        stats().inbound(incoming.event).increment(1);
        if !self.bucket.try_acquire() {
            stats().rate_limited.increment(1);
            let err = ApiError::new(ErrorCode::RateLimited, "too many requests; slow down");
            self.reject(ctx, incoming.id, incoming.event, &err);
            return;
        }
        if self.inflight >= self.ctx.limits.max_inflight {
            let err = ApiError::new(
                ErrorCode::Overloaded,
                "too many requests in flight; wait for answers",
            );
            self.reject(ctx, incoming.id, incoming.event, &err);
            return;
        }
        self.dispatch(incoming.id, incoming.event, incoming.request, ctx);
    }

    /// Runs `fut` on the actor and answers with `on_ok`'s data or the error.
    fn spawn_request<T, D>(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<u64>,
        event: EventKind,
        fut: crate::backend::BackendFuture<T>,
        on_ok: impl FnOnce(&mut Self, &mut ws::WebsocketContext<Self>, T) -> Option<D> + 'static,
    ) where
        T: 'static,
        D: Serialize,
    {
        let started = Instant::now();
        self.inflight += 1;
        fut.into_actor(self)
            .map(move |res, act, ctx| {
                act.inflight -= 1;
                stats()
                    .latency
                    .record(started.elapsed().as_secs_f64() * 1e3);
                match res {
                    Ok(v) => {
                        act.consecutive_errors = 0;
                        let data = on_ok(act, ctx, v);
                        if let (Some(id), Some(data)) = (id, data) {
                            stats().outbound_ack.increment(1);
                            act.write(ctx, protocol::ack_ok(id, &data));
                        }
                    }
                    Err(e) => act.reject(ctx, id, event, &e),
                }
            })
            .spawn(ctx);
    }

    fn ack_now(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<u64>,
        data: &impl Serialize,
    ) {
        self.consecutive_errors = 0;
        if let Some(id) = id {
            stats().outbound_ack.increment(1);
            self.write(ctx, protocol::ack_ok(id, data));
        }
    }

    fn dispatch(
        &mut self,
        id: Option<u64>,
        event: EventKind,
        req: Request,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let backend = self.ctx.backend.clone();
        let not_in_room = || ApiError::new(ErrorCode::NotInRoom, "join the room first");
        match req {
            Request::Join { room } => {
                if !self.rooms.contains_key(&room) {
                    if self.rooms.len() >= self.ctx.limits.max_rooms_per_connection {
                        let err = ApiError::new(
                            ErrorCode::TooManyRooms,
                            format!(
                                "at most {} rooms per connection",
                                self.ctx.limits.max_rooms_per_connection
                            ),
                        );
                        return self.reject(ctx, id, event, &err);
                    }
                    self.rooms
                        .insert(room.clone(), RoomPhase::Joining(Vec::new()));
                }
                let fut = backend.join(self.id, &self.member, room.clone());
                self.inflight += 1;
                let started = Instant::now();
                fut.into_actor(self)
                    .map(move |res, act, ctx| {
                        act.inflight -= 1;
                        stats()
                            .latency
                            .record(started.elapsed().as_secs_f64() * 1e3);
                        act.joined(ctx, id, room, res);
                    })
                    .spawn(ctx);
            }
            Request::Leave { room } => {
                if self.rooms.remove(&room).is_some() {
                    backend.leave(self.id, &room);
                }
                self.ack_now(ctx, id, &RoomAck { room_id: &room });
            }
            Request::Send(req) => {
                if !self.rooms.contains_key(&req.room) {
                    return self.reject(ctx, id, event, &not_in_room());
                }
                let fut = backend.send(self.id, &self.member, req);
                self.spawn_request(ctx, id, event, fut, |_, _, msg| Some(msg));
            }
            Request::Typing { room, is_typing } => {
                if !self.rooms.contains_key(&room) {
                    return self.reject(ctx, id, event, &not_in_room());
                }
                backend.typing(self.id, &self.member, &room, is_typing);
                self.ack_now(ctx, id, &Empty {});
            }
            Request::MarkRead { room, up_to_seq } => {
                if !self.rooms.contains_key(&room) {
                    return self.reject(ctx, id, event, &not_in_room());
                }
                let fut = backend.mark_read(self.id, &self.member, room.clone(), up_to_seq);
                self.spawn_request(ctx, id, event, fut, move |_, _, seq| {
                    Some(ReadAck {
                        room_id: room,
                        up_to_seq: seq,
                    })
                });
            }
            Request::History {
                room,
                before,
                limit,
            } => {
                let fut = backend.history(room, before, limit);
                self.spawn_request(ctx, id, event, fut, |_, _, page| Some(page));
            }
            Request::Resume { room, after_seq } => {
                let fut = backend.resume(room, after_seq);
                self.spawn_request(ctx, id, event, fut, |_, _, page| Some(page));
            }
        }
    }

    /// The room answered a join: send history and ack, then the held-back pushes.
    fn joined(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<u64>,
        room: RoomId,
        res: Result<JoinReply, ApiError>,
    ) {
        let held = match self.rooms.get_mut(&room) {
            Some(RoomPhase::Joining(held)) => std::mem::take(held),
            Some(RoomPhase::Joined) => Vec::new(),
            // Left while joining.
            None => {
                if res.is_ok() {
                    self.ctx.backend.leave(self.id, &room);
                }
                return self.reject(
                    ctx,
                    id,
                    EventKind::JoinRoom,
                    &ApiError::new(ErrorCode::NotInRoom, "left before the join completed"),
                );
            }
        };
        let reply = match res {
            Ok(r) => r,
            Err(e) => {
                self.rooms.remove(&room);
                return self.reject(ctx, id, EventKind::JoinRoom, &e);
            }
        };
        self.rooms.insert(room.clone(), RoomPhase::Joined);
        let history = Push::new(
            PushKind::MessageHistory,
            Some(room),
            None,
            &HistoryPush {
                room_id: &reply.room_id,
                last_seq: reply.last_seq,
                messages: &reply.messages,
            },
        );
        stats().outbound_push.increment(1);
        self.write(ctx, history.native_frame());
        self.ack_now(ctx, id, &reply);
        for p in held {
            if p.kind == PushKind::NewMessage && p.seq.is_some_and(|s| s <= reply.last_seq) {
                continue;
            }
            self.push(ctx, &p);
        }
    }

    fn push(&mut self, ctx: &mut ws::WebsocketContext<Self>, p: &Arc<Push>) {
        stats().outbound_push.increment(1);
        self.write(ctx, p.native_frame());
    }

    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let max = self.ctx.limits.max_frame_bytes;
        let (start, data, last) = match item {
            actix_http::ws::Item::FirstText(b) => (Some(true), b, false),
            actix_http::ws::Item::FirstBinary(b) => (Some(false), b, false),
            actix_http::ws::Item::Continue(b) => (None, b, false),
            actix_http::ws::Item::Last(b) => (None, b, true),
        };
        if let Some(text) = start {
            self.fragments = Some(Fragments {
                text,
                buf: Vec::new(),
            });
        }
        let Some(f) = self.fragments.as_mut() else {
            return self.close(ctx, CloseReason::ProtocolError);
        };
        if f.buf.len() + data.len() > max {
            self.fragments = None;
            return self.close(ctx, CloseReason::MessageTooBig);
        }
        f.buf.extend_from_slice(&data);
        if !last {
            return;
        }
        let Some(f) = self.fragments.take() else {
            return;
        };
        if !f.text {
            return self.binary(ctx);
        }
        match std::str::from_utf8(&f.buf) {
            Ok(text) => self.on_text(text, ctx),
            Err(_) => self.close(ctx, CloseReason::ProtocolError),
        }
    }

    fn binary(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        stats().inbound(EventKind::Unknown).increment(1);
        let err = ApiError::new(ErrorCode::BinaryNotSupported, "send JSON text frames");
        self.reject(ctx, None, EventKind::Unknown, &err);
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        stats().connections.increment(1.0);
        if let Some(rx) = self.outbox_rx.take() {
            ctx.add_stream(ReceiverStream::new(rx).map(Outbound));
        }
        let mut shutdown = self.ctx.shutdown.clone();
        ctx.add_stream(futures::stream::once(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            ShutdownSignal
        }));
        let evicted = self.evicted.clone();
        async move { evicted.notified().await }
            .into_actor(self)
            .map(|_, act, ctx| act.close(ctx, CloseReason::SlowConsumer))
            .spawn(ctx);
        let (interval, timeout) = (
            self.ctx.limits.heartbeat_interval,
            self.ctx.limits.client_timeout,
        );
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                act.close(ctx, CloseReason::HeartbeatTimeout);
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.kill.disarm();
        stats().connections.decrement(1.0);
        let reason = self.closed.unwrap_or(CloseReason::ClientGone);
        stats().close(reason).increment(1);
        tracing::debug!(session = %self.id, user = %self.member.user_id, reason = reason.as_str(), "session closed");
        self.ctx.backend.disconnect(self.id, &self.member);
    }
}

impl StreamHandler<Outbound> for WsSession {
    fn handle(&mut self, Outbound(p): Outbound, ctx: &mut Self::Context) {
        let phase = p.room.as_ref().and_then(|r| self.rooms.get_mut(r));
        match phase {
            Some(RoomPhase::Joining(held)) => {
                if held.len() >= self.ctx.limits.outbound_queue {
                    return self.close(ctx, CloseReason::SlowConsumer);
                }
                held.push(p);
            }
            Some(RoomPhase::Joined) => self.push(ctx, &p),
            // A push for a room this session has left: drop it.
            None if p.room.is_some() => {}
            None => self.push(ctx, &p),
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The outbox sender lives as long as the hub knows us; nothing to do.
    }
}

impl StreamHandler<ShutdownSignal> for WsSession {
    fn handle(&mut self, _: ShutdownSignal, ctx: &mut Self::Context) {
        self.close(ctx, CloseReason::Shutdown);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Binary(_)) => self.binary(ctx),
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Ping(b)) => ctx.pong(&b),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(_)) => self.close(ctx, CloseReason::Normal),
            Err(ws::ProtocolError::Overflow) => self.close(ctx, CloseReason::MessageTooBig),
            Err(ws::ProtocolError::Io(_)) => self.close(ctx, CloseReason::ClientGone),
            Err(e) => {
                tracing::debug!(session = %self.id, error = %e, "websocket protocol error");
                self.close(ctx, CloseReason::ProtocolError);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the stream ended (EOF).
        self.close(ctx, CloseReason::ClientGone);
    }
}
