//! The WebSocket session actor: one per connection, on an actix-web worker thread.
//!
//! It turns frames into requests and answers into frames; the chat logic shared with the
//! Socket.IO transport (admission, join ordering, error counting) is in [`crate::chat`]. Pushes
//! arrive on the bounded [`crate::outbox::Outbox`] queue.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use bytestring::ByteString;
use cluster_proto::api::JoinReply;
use cluster_proto::push::FrameFormat;
use cluster_proto::rate::TokenBucket;
use cluster_proto::{ApiError, ErrorCode, Member, Push, PushKind, RoomId, SessionId};
use serde::Serialize;

use crate::chat::{self, ChatCore, ChatTransport, Outbound, ShutdownSignal};
use crate::close::CloseReason;
use crate::conn::KillSwitch;
use crate::egress::{Egress, Output};
use crate::endpoint::SessionsContext;
use crate::fragments::{Reassembler, Whole};
use crate::outbox::OutboxEnds;
use crate::protocol::{self, EventKind};
use crate::stats::stats;

pub struct WsSession {
    chat: ChatCore,
    outbox_rx: Option<crate::outbox::OutboxRx>,
    kill: Arc<KillSwitch>,
    last_heard: Instant,
    fragments: Reassembler,
    closed: Option<CloseReason>,
    out: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryPush<'a> {
    room_id: &'a RoomId,
    /// `null` when the room's history is unavailable (see [`JoinReply::history_unavailable`]).
    last_seq: Option<u64>,
    messages: &'a [Arc<cluster_proto::ChatMessage>],
    history_unavailable: bool,
}

impl WsSession {
    pub(crate) fn new(
        id: SessionId,
        member: Member,
        ctx: Arc<SessionsContext>,
        bucket: Arc<TokenBucket>,
        outbox: OutboxEnds,
        egress: Option<Egress>,
    ) -> Self {
        Self {
            chat: ChatCore::new(id, member, ctx, bucket),
            outbox_rx: Some(outbox.rx),
            kill: outbox.kill,
            last_heard: Instant::now(),
            fragments: Reassembler::default(),
            closed: None,
            out: Output::new(egress),
        }
    }

    fn write(&self, ctx: &mut ws::WebsocketContext<Self>, frame: impl Into<ByteString>) {
        self.out.text(ctx, frame.into());
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match protocol::parse(text, &self.chat.ctx.limits) {
            Ok(i) => chat::request(self, ctx, i.id, i.event, i.request),
            Err(r) => chat::rejected_input(self, ctx, r.id, r.event, &r.error),
        }
    }

    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        match self
            .fragments
            .push(item, self.chat.ctx.limits.max_frame_bytes)
        {
            Ok(None) => {}
            Ok(Some(Whole::Text(text))) => self.on_text(&text, ctx),
            Ok(Some(Whole::Binary(_))) => self.binary(ctx),
            Err(e) => self.close(ctx, e.close_reason()),
        }
    }

    fn binary(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let err = ApiError::new(ErrorCode::BinaryNotSupported, "send JSON text frames");
        chat::rejected_input(self, ctx, None, EventKind::Unknown, &err);
    }
}

impl ChatTransport for WsSession {
    fn core(&mut self) -> Option<&mut ChatCore> {
        Some(&mut self.chat)
    }

    fn send_ack<D: Serialize>(&mut self, ctx: &mut Self::Context, id: u64, data: &D) {
        self.write(ctx, protocol::ack_ok(id, data));
    }

    fn send_error(
        &mut self,
        ctx: &mut Self::Context,
        id: Option<u64>,
        event: EventKind,
        err: &ApiError,
    ) {
        self.write(ctx, protocol::answer_error(id, event, err));
    }

    fn send_push(&mut self, ctx: &mut Self::Context, p: &Arc<Push>) {
        stats().outbound_push.increment(1);
        self.out
            .push(ctx, p, FrameFormat::Native, Push::native_frame);
    }

    fn send_history(&mut self, ctx: &mut Self::Context, reply: &JoinReply) {
        let history = Push::new(
            PushKind::MessageHistory,
            Some(reply.room_id.clone()),
            None,
            &HistoryPush {
                room_id: &reply.room_id,
                last_seq: reply.last_seq,
                messages: &reply.messages,
                history_unavailable: reply.history_unavailable,
            },
        );
        self.send_push(ctx, &history);
    }

    /// Ends the session with `reason` (the first reason wins).
    fn close(&mut self, ctx: &mut Self::Context, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        if reason == CloseReason::ClientGone {
            ctx.stop();
        } else {
            self.out.close(ctx, Some(reason.frame()));
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        stats().connections.increment(1.0);
        if let Some(rx) = self.outbox_rx.take() {
            chat::watch_outbox::<Self>(ctx, rx);
        }
        chat::watch_shutdown::<Self>(ctx, self.chat.ctx.shutdown.clone());
        let (interval, timeout) = (
            self.chat.ctx.limits.heartbeat_interval,
            self.chat.ctx.limits.client_timeout,
        );
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                act.close(ctx, CloseReason::HeartbeatTimeout);
            } else {
                act.out.ping(ctx, b"");
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.kill.disarm();
        stats().connections.decrement(1.0);
        let reason = self.closed.unwrap_or(CloseReason::ClientGone);
        stats().close(reason).increment(1);
        tracing::debug!(session = %self.chat.id, user = %self.chat.member.user_id, reason = reason.as_str(), "session closed");
        self.chat.disconnect();
    }
}

impl StreamHandler<Outbound> for WsSession {
    fn handle(&mut self, Outbound(d): Outbound, ctx: &mut Self::Context) {
        chat::outbound(self, ctx, d);
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
            Ok(ws::Message::Ping(b)) => self.out.pong(ctx, &b),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(_)) => self.close(ctx, CloseReason::Normal),
            Err(ws::ProtocolError::Overflow) => self.close(ctx, CloseReason::MessageTooBig),
            Err(ws::ProtocolError::Io(_)) => self.close(ctx, CloseReason::ClientGone),
            Err(e) => {
                tracing::debug!(session = %self.chat.id, error = %e, "websocket protocol error");
                self.close(ctx, CloseReason::ProtocolError);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the stream ended (EOF).
        self.close(ctx, CloseReason::ClientGone);
    }
}
