//! One Engine.IO session and the Socket.IO socket on it: an actix actor with a plain
//! `Context`, independent of any HTTP connection.
//!
//! Why an actor of its own: a polling session lives across many short HTTP requests (possibly
//! on different workers), survives an upgrade to WebSocket, and must be freed when its client
//! vanishes even though no request arrives any more. So the session owns the timers (server
//! ping every `heartbeat_interval`, close when no pong within `client_timeout`), the bounded
//! queue of packets waiting for the next poll, and the chat state ([`ChatCore`]); transports
//! only carry packets in and out:
//!
//! ```text
//! polling GET ──Poll{oneshot}──►            ┌──────────────┐ ◄── Outbox (room pushes, bounded)
//! polling POST ─Data{body}─────► EngineSession (this) ─ chat::* ─► ChatBackend
//! WebSocket pipe ─WsIn──────────►            └──────────────┘ ──WsOut (bounded mpsc)──► pipe
//! ```
//!
//! Every queue is bounded: pending polling packets and the pipe's queue hold at most
//! `outbound_queue` packets (overflow: the session ends as a slow consumer), the pipe waits for
//! room in this actor's mailbox before reading more frames.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use cluster_proto::api::JoinReply;
use cluster_proto::push::FrameFormat;
use cluster_proto::rate::TokenBucket;
use cluster_proto::{ApiError, ErrorCode, Member, Push, SessionId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::engine::{self, ClientPacket};
use super::events;
use super::packet::{self, Packet};
use crate::chat::{self, ChatCore, ChatTransport, Outbound, ShutdownSignal};
use crate::close::CloseReason;
use crate::conn::KillSwitch;
use crate::endpoint::SessionsContext;
use crate::outbox::Outbox;
use crate::protocol::EventKind;
use crate::stats::stats;

mod inbound;
mod polling;
mod upgrade;

/// How long a probing WebSocket may take to send the upgrade packet (the Node.js default).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the session sends to its WebSocket pipe.
pub(crate) enum WsOut {
    Text(ByteString),
    /// A push: the pipe writes its Socket.IO frame, encoded once for every recipient.
    Push(Arc<Push>),
    Close(CloseReason),
}

/// A push's Socket.IO event packet (`42["event",data]`), built once.
pub(crate) fn socketio_text(p: &Push) -> ByteString {
    p.frame(FrameFormat::SocketIo, |p| {
        ByteString::from(packet::event(p.kind.event_name(), p.data_str()))
    })
}

/// A frame read by a WebSocket pipe.
pub(crate) enum WsFrame {
    Text(ByteString),
    Binary(Bytes),
}

/// A WebSocket attached to the session (active transport or upgrade probe).
pub(crate) struct WsLink {
    pub gen: u64,
    pub tx: mpsc::Sender<WsOut>,
    pub kill: Arc<KillSwitch>,
}

enum Transport {
    Polling,
    WebSocket(WsLink),
}

struct Probe {
    link: WsLink,
    /// `2probe` answered: polls are answered at once so the client can pause polling.
    probed: bool,
}

enum SocketState {
    AwaitingConnect,
    Connecting,
    Connected,
}

/// A BINARY_EVENT (or BINARY_ACK) waiting for its attachments.
struct Assembly {
    /// `(ack id, event)` for an event; `None` for an ack (dropped when complete).
    event: Option<(Option<u64>, EventKind)>,
    remaining: usize,
    bytes: usize,
}

pub(crate) struct EngineSession {
    sid: Arc<str>,
    ctx: Arc<SessionsContext>,
    transport: Transport,
    probe: Option<Probe>,
    next_gen: u64,
    /// Polling: packets waiting for a GET (at most `outbound_queue`).
    pending: VecDeque<ByteString>,
    parked: Option<oneshot::Sender<String>>,
    flush_scheduled: bool,
    /// The member authenticated by the handshake request's own token, if it carried one.
    handshake_member: Option<Member>,
    state: SocketState,
    /// Packets that arrived while the CONNECT was being authorized, replayed after it.
    early: Vec<String>,
    chat: Option<ChatCore>,
    assembly: Option<Assembly>,
    ping_seq: u64,
    awaiting_pong: bool,
    closed: Option<CloseReason>,
}

// ---- messages ----

/// A polling GET: answered through `tx` with a payload, now or when packets are ready.
pub(crate) struct Poll(pub oneshot::Sender<String>);
impl Message for Poll {
    type Result = Result<(), engine::HttpError>;
}

/// A polling POST body.
pub(crate) struct Data(pub String);
impl Message for Data {
    type Result = Result<(), engine::HttpError>;
}

/// End the session (an HTTP-level violation such as an oversized POST).
pub(crate) struct Kill(pub CloseReason);
impl Message for Kill {
    type Result = ();
}

/// A WebSocket asks to probe for an upgrade: answers its generation.
pub(crate) struct AttachProbe {
    pub tx: mpsc::Sender<WsOut>,
    pub kill: Arc<KillSwitch>,
}
impl Message for AttachProbe {
    type Result = Result<u64, engine::HttpError>;
}

/// A frame from the pipe of generation `gen`.
pub(crate) struct WsIn {
    pub gen: u64,
    pub frame: WsFrame,
}
impl Message for WsIn {
    type Result = ();
}

/// The pipe of generation `gen` stopped.
pub(crate) struct WsGone {
    pub gen: u64,
    pub reason: CloseReason,
}
impl Message for WsGone {
    type Result = ();
}

struct Flush;
impl Message for Flush {
    type Result = ();
}

/// The backend answered the CONNECT.
struct Connected {
    id: SessionId,
    member: Member,
    outbox: crate::outbox::OutboxEnds,
    result: Result<Arc<TokenBucket>, ApiError>,
}
impl Message for Connected {
    type Result = Result<(), ()>;
}

impl EngineSession {
    /// A session on polling (`ws: None`) or directly on a WebSocket (generation 0).
    pub(crate) fn new(
        sid: Arc<str>,
        ctx: Arc<SessionsContext>,
        ws: Option<(mpsc::Sender<WsOut>, Arc<KillSwitch>)>,
        handshake_member: Option<Member>,
    ) -> Self {
        let transport = match ws {
            Some((tx, kill)) => Transport::WebSocket(WsLink { gen: 0, tx, kill }),
            None => Transport::Polling,
        };
        Self {
            sid,
            ctx,
            transport,
            probe: None,
            next_gen: 1,
            pending: VecDeque::new(),
            parked: None,
            flush_scheduled: false,
            handshake_member,
            state: SocketState::AwaitingConnect,
            early: Vec::new(),
            chat: None,
            assembly: None,
            ping_seq: 0,
            awaiting_pong: false,
            closed: None,
        }
    }

    /// Queues one encoded packet on the current transport.
    fn write(&mut self, ctx: &mut Context<Self>, frame: ByteString) {
        if self.closed.is_some() {
            return;
        }
        match &self.transport {
            Transport::WebSocket(_) => self.send_to_pipe(ctx, WsOut::Text(frame)),
            Transport::Polling => {
                if self.pending.len() >= self.ctx.limits.outbound_queue {
                    return self.close(ctx, CloseReason::SlowConsumer);
                }
                self.pending.push_back(frame);
                if self.parked.is_some() && !self.flush_scheduled {
                    // Answer after this turn, so packets written together leave together.
                    self.flush_scheduled = true;
                    ctx.notify(Flush);
                }
            }
        }
    }

    /// Hands `out` to the WebSocket pipe; a full pipe queue closes the session as a slow
    /// consumer.
    fn send_to_pipe(&mut self, ctx: &mut Context<Self>, out: WsOut) {
        let Transport::WebSocket(link) = &self.transport else {
            return;
        };
        match link.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.close(ctx, CloseReason::SlowConsumer),
            Err(mpsc::error::TrySendError::Closed(_)) => self.close(ctx, CloseReason::ClientGone),
        }
    }

    /// Answers the parked GET with every pending packet (or a noop when `noop_if_empty`).
    fn flush(&mut self, noop_if_empty: bool) {
        self.flush_scheduled = false;
        if self.pending.is_empty() && !noop_if_empty {
            return;
        }
        let Some(tx) = self.parked.take() else {
            return;
        };
        if self.pending.is_empty() {
            self.pending
                .push_back(ByteString::from_static(engine::NOOP));
        }
        let packets: Vec<ByteString> = self.pending.drain(..).collect();
        if let Err(payload) = tx.send(engine::encode_payload(&packets)) {
            // The GET went away: keep the packets for the next one (our JSON never contains
            // a raw record separator, so the payload splits back exactly).
            for p in payload.split(engine::SEPARATOR).rev() {
                self.pending.push_front(ByteString::from(p.to_string()));
            }
        }
    }

    fn close(&mut self, ctx: &mut Context<Self>, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        let grace = self.ctx.limits.slow_consumer_grace;
        if let Some(p) = self.probe.take() {
            let _ = p.link.tx.try_send(WsOut::Close(reason));
            p.link.kill.fire_after(grace);
        }
        match &self.transport {
            Transport::WebSocket(link) => {
                let _ = link.tx.try_send(WsOut::Close(reason));
                // A pipe whose client stopped reading is frozen (actix-web #2441); it disarms
                // this when it stops normally.
                link.kill.clone().fire_after(grace);
            }
            Transport::Polling => {
                if reason != CloseReason::ClientGone {
                    self.pending
                        .push_back(ByteString::from_static(engine::CLOSE));
                }
                self.flush(false);
            }
        }
        ctx.stop();
    }

    fn schedule_ping(&mut self, ctx: &mut Context<Self>) {
        let (interval, timeout) = (
            self.ctx.limits.heartbeat_interval,
            self.ctx.limits.client_timeout,
        );
        ctx.run_later(interval, move |act, ctx| {
            act.ping_seq += 1;
            act.awaiting_pong = true;
            let seq = act.ping_seq;
            act.write(ctx, ByteString::from_static(engine::PING));
            ctx.run_later(timeout, move |act, ctx| {
                if act.awaiting_pong && act.ping_seq == seq {
                    act.close(ctx, CloseReason::HeartbeatTimeout);
                }
            });
        });
    }
}

impl ChatTransport for EngineSession {
    fn core(&mut self) -> Option<&mut ChatCore> {
        self.chat.as_mut()
    }

    fn send_ack<D: Serialize>(&mut self, ctx: &mut Context<Self>, id: u64, data: &D) {
        self.write(ctx, ByteString::from(events::ack_ok(id, data)));
    }

    fn send_error(
        &mut self,
        ctx: &mut Context<Self>,
        id: Option<u64>,
        event: EventKind,
        err: &ApiError,
    ) {
        let f = match id {
            Some(id) => events::ack_err(id, err),
            None => events::error_event(event, err),
        };
        self.write(ctx, ByteString::from(f));
    }

    fn send_push(&mut self, ctx: &mut Context<Self>, p: &Arc<Push>) {
        stats().outbound_push.increment(1);
        match self.transport {
            // The pipe frames it once for every recipient (see `crate::egress`).
            Transport::WebSocket(_) if self.closed.is_none() => {
                self.send_to_pipe(ctx, WsOut::Push(p.clone()))
            }
            _ => self.write(ctx, socketio_text(p)),
        }
    }

    /// The seed's shape: `messageHistory` carries the array of messages.
    fn send_history(&mut self, ctx: &mut Context<Self>, reply: &JoinReply) {
        stats().outbound_push.increment(1);
        let messages = serde_json::to_string(&reply.messages).unwrap_or_else(|_| "[]".into());
        let f = packet::event("messageHistory", &messages);
        self.write(ctx, ByteString::from(f));
    }

    fn close(&mut self, ctx: &mut Context<Self>, reason: CloseReason) {
        EngineSession::close(self, ctx, reason);
    }
}

impl Actor for EngineSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Room for a pipe's burst of frames; the pipe waits when it is full.
        ctx.set_mailbox_capacity(256);
        stats().engine_sessions.increment(1.0);
        chat::watch_shutdown::<Self>(ctx, self.ctx.shutdown.clone());
        self.schedule_ping(ctx);
        // A socket that never connects is closed like a silent one.
        let started = Instant::now();
        let timeout = self.ctx.limits.client_timeout;
        ctx.run_later(timeout, move |act, ctx| {
            if !matches!(act.state, SocketState::Connected) {
                tracing::debug!(sid = %act.sid, after = ?started.elapsed(), "no CONNECT in time");
                act.close(ctx, CloseReason::HeartbeatTimeout);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.ctx.engine.remove(&self.sid);
        stats().engine_sessions.decrement(1.0);
        if let Some(chat) = self.chat.take() {
            stats().connections.decrement(1.0);
            let reason = self.closed.unwrap_or(CloseReason::ClientGone);
            stats().close(reason).increment(1);
            tracing::debug!(sid = %self.sid, session = %chat.id, user = %chat.member.user_id, reason = reason.as_str(), "socket.io session closed");
            chat.disconnect();
        }
    }
}

impl Handler<Connected> for EngineSession {
    type Result = Result<(), ()>;

    fn handle(&mut self, msg: Connected, ctx: &mut Self::Context) -> Self::Result {
        if self.closed.is_some() {
            return Err(());
        }
        let bucket = match msg.result {
            Ok(b) => b,
            Err(e) => {
                self.state = SocketState::AwaitingConnect;
                self.early.clear();
                let f = packet::connect_error("/", &e.message);
                self.write(ctx, ByteString::from(f));
                return Err(());
            }
        };
        self.chat = Some(ChatCore::new(msg.id, msg.member, self.ctx.clone(), bucket));
        self.state = SocketState::Connected;
        stats().connections.increment(1.0);
        chat::watch_outbox::<Self>(ctx, msg.outbox.rx);
        let f = packet::connect_ok(&format!("{}", msg.id));
        self.write(ctx, ByteString::from(f));
        for text in std::mem::take(&mut self.early) {
            self.on_socketio(ctx, &text);
        }
        Ok(())
    }
}

impl Handler<Kill> for EngineSession {
    type Result = ();

    fn handle(&mut self, Kill(reason): Kill, ctx: &mut Self::Context) {
        self.close(ctx, reason);
    }
}

impl StreamHandler<Outbound> for EngineSession {
    fn handle(&mut self, Outbound(d): Outbound, ctx: &mut Self::Context) {
        chat::outbound(self, ctx, d);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl StreamHandler<ShutdownSignal> for EngineSession {
    fn handle(&mut self, _: ShutdownSignal, ctx: &mut Self::Context) {
        self.close(ctx, CloseReason::Shutdown);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}
