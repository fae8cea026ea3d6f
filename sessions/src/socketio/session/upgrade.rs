//! The WebSocket side of an Engine.IO session: a probing WebSocket attaches (`AttachProbe`),
//! answers `2probe` with `3probe`, and the `5` (upgrade) packet moves the session from polling
//! to it; afterwards its frames arrive as `WsIn` and its end as `WsGone`. A probe that does not
//! complete within [`UPGRADE_TIMEOUT`] is dropped and the session stays on polling.

use super::*;

impl Handler<AttachProbe> for EngineSession {
    type Result = Result<u64, engine::HttpError>;

    fn handle(&mut self, msg: AttachProbe, ctx: &mut Self::Context) -> Self::Result {
        if !matches!(self.transport, Transport::Polling) || self.probe.is_some() {
            return Err(engine::HttpError::BadRequest);
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.probe = Some(Probe {
            link: WsLink {
                gen,
                tx: msg.tx,
                kill: msg.kill,
            },
            probed: false,
        });
        ctx.run_later(UPGRADE_TIMEOUT, move |act, _| {
            if act.probe.as_ref().is_some_and(|p| p.link.gen == gen) {
                act.drop_probe();
            }
        });
        Ok(gen)
    }
}

impl EngineSession {
    fn drop_probe(&mut self) {
        if let Some(p) = self.probe.take() {
            let _ = p.link.tx.try_send(WsOut::Close(CloseReason::ProtocolError));
        }
    }

    /// A frame on the probing WebSocket: `2probe`, then `5` completes the upgrade.
    fn on_probe_frame(&mut self, ctx: &mut Context<Self>, frame: WsFrame) {
        let text = match &frame {
            WsFrame::Text(t) => engine::decode_text(t).ok(),
            WsFrame::Binary(_) => None,
        };
        match text {
            Some(ClientPacket::Ping("probe")) => {
                let Some(p) = self.probe.as_mut() else {
                    return;
                };
                let pong = ByteString::from_static(engine::PONG_PROBE);
                if p.link.tx.try_send(WsOut::Text(pong)).is_err() {
                    return self.drop_probe();
                }
                p.probed = true;
                // Release the pending GET so the client can pause polling.
                self.flush(true);
            }
            Some(ClientPacket::Upgrade) if self.probe.as_ref().is_some_and(|p| p.probed) => {
                let Some(p) = self.probe.take() else {
                    return;
                };
                self.flush(true);
                self.parked = None;
                self.transport = Transport::WebSocket(p.link);
                let pending: Vec<ByteString> = self.pending.drain(..).collect();
                for f in pending {
                    self.write(ctx, f);
                }
            }
            _ => self.drop_probe(),
        }
    }
}

impl Handler<WsIn> for EngineSession {
    type Result = ();

    fn handle(&mut self, WsIn { gen, frame }: WsIn, ctx: &mut Self::Context) {
        if self.probe.as_ref().is_some_and(|p| p.link.gen == gen) {
            return self.on_probe_frame(ctx, frame);
        }
        let active = matches!(&self.transport, Transport::WebSocket(l) if l.gen == gen);
        if !active || self.closed.is_some() {
            return;
        }
        match frame {
            WsFrame::Text(t) => match engine::decode_text(&t) {
                Ok(p) => self.on_packet(ctx, p),
                Err(_) => self.close(ctx, CloseReason::ProtocolError),
            },
            WsFrame::Binary(b) => self.on_binary(ctx, b.len()),
        }
    }
}

impl Handler<WsGone> for EngineSession {
    type Result = ();

    fn handle(&mut self, WsGone { gen, reason }: WsGone, ctx: &mut Self::Context) {
        if self.probe.as_ref().is_some_and(|p| p.link.gen == gen) {
            self.probe = None;
            return;
        }
        if matches!(&self.transport, Transport::WebSocket(l) if l.gen == gen) {
            self.close(ctx, reason);
        }
    }
}
