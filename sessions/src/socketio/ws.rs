//! The WebSocket transport of an Engine.IO session: a thin actix WebSocket actor (a "pipe")
//! that forwards frames to its [`EngineSession`] and writes what the session queues for it.
//!
//! The pipe holds no protocol state, so one session can outlive a pipe (an upgrade probe that
//! fails) or start on polling and move to a pipe (the upgrade). Inbound, the pipe waits for
//! room in the session's mailbox before handling the next frame, which pushes back on the
//! client through TCP; outbound, the session's queue to the pipe is bounded.

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::session::{socketio_text, EngineSession, WsFrame, WsGone, WsIn, WsOut};
use crate::close::CloseReason;
use crate::conn::KillSwitch;
use crate::egress::{Egress, Output};
use crate::fragments::{Reassembler, Whole};
use cluster_proto::push::FrameFormat;

pub(crate) struct EioWs {
    session: Addr<EngineSession>,
    gen: u64,
    rx: Option<mpsc::Receiver<WsOut>>,
    kill: Arc<KillSwitch>,
    max_frame: usize,
    fragments: Reassembler,
    reason: CloseReason,
    out: Output,
}

impl EioWs {
    pub(crate) fn new(
        session: Addr<EngineSession>,
        gen: u64,
        rx: mpsc::Receiver<WsOut>,
        kill: Arc<KillSwitch>,
        max_frame: usize,
        egress: Option<Egress>,
    ) -> Self {
        Self {
            session,
            gen,
            rx: Some(rx),
            kill,
            max_frame,
            fragments: Reassembler::default(),
            reason: CloseReason::ClientGone,
            out: Output::new(egress),
        }
    }

    fn forward(&mut self, frame: WsFrame, ctx: &mut ws::WebsocketContext<Self>) {
        let msg = WsIn {
            gen: self.gen,
            frame,
        };
        match self.session.try_send(msg) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                // Backpressure: handle nothing else until the session has room.
                self.session
                    .send(msg)
                    .into_actor(self)
                    .map(|res, _, ctx: &mut ws::WebsocketContext<Self>| {
                        if res.is_err() {
                            ctx.stop();
                        }
                    })
                    .wait(ctx);
            }
            Err(SendError::Closed(_)) => ctx.stop(),
        }
    }

    fn end(&mut self, ctx: &mut ws::WebsocketContext<Self>, reason: CloseReason) {
        self.reason = reason;
        if reason == CloseReason::ClientGone {
            ctx.stop();
        } else {
            self.out.close(ctx, Some(reason.frame()));
        }
    }
}

impl Actor for EioWs {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(rx) = self.rx.take() {
            ctx.add_stream(ReceiverStream::new(rx));
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.kill.disarm();
        self.session.do_send(WsGone {
            gen: self.gen,
            reason: self.reason,
        });
    }
}

impl StreamHandler<WsOut> for EioWs {
    fn handle(&mut self, out: WsOut, ctx: &mut Self::Context) {
        match out {
            WsOut::Text(t) => self.out.text(ctx, t),
            WsOut::Push(p) => self.out.push(ctx, &p, FrameFormat::SocketIo, socketio_text),
            WsOut::Close(reason) => self.out.close(ctx, Some(reason.frame())),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The session dropped its end: it is gone.
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for EioWs {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(t)) => self.forward(WsFrame::Text(t), ctx),
            Ok(ws::Message::Binary(b)) => self.forward(WsFrame::Binary(b), ctx),
            Ok(ws::Message::Continuation(item)) => {
                match self.fragments.push(item, self.max_frame) {
                    Ok(None) => {}
                    Ok(Some(Whole::Text(t))) => self.forward(WsFrame::Text(t.into()), ctx),
                    Ok(Some(Whole::Binary(b))) => self.forward(WsFrame::Binary(b), ctx),
                    Err(e) => self.end(ctx, e.close_reason()),
                }
            }
            Ok(ws::Message::Ping(b)) => self.out.pong(ctx, &b),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(_)) => {
                self.reason = CloseReason::Normal;
                self.out.close(ctx, None);
            }
            Err(ws::ProtocolError::Overflow) => self.end(ctx, CloseReason::MessageTooBig),
            Err(ws::ProtocolError::Io(_)) => self.end(ctx, CloseReason::ClientGone),
            Err(_) => self.end(ctx, CloseReason::ProtocolError),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
