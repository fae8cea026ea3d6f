//! The polling side of an Engine.IO session: a long-poll GET parks until packets are queued
//! (`Poll`), a POST carries the client's packets in (`Data`), and `Flush` releases a parked
//! GET with whatever is pending.

use super::*;

impl Handler<Poll> for EngineSession {
    type Result = Result<(), engine::HttpError>;

    fn handle(&mut self, Poll(tx): Poll, ctx: &mut Self::Context) -> Self::Result {
        if !matches!(self.transport, Transport::Polling) {
            return Err(engine::HttpError::BadRequest);
        }
        if self.parked.as_ref().is_some_and(|p| !p.is_closed()) {
            // Two GETs at once: the client is broken.
            self.close(ctx, CloseReason::ProtocolError);
            return Err(engine::HttpError::BadRequest);
        }
        self.parked = Some(tx);
        let probing = self.probe.as_ref().is_some_and(|p| p.probed);
        self.flush(probing);
        Ok(())
    }
}

impl Handler<Data> for EngineSession {
    type Result = Result<(), engine::HttpError>;

    fn handle(&mut self, Data(body): Data, ctx: &mut Self::Context) -> Self::Result {
        if !matches!(self.transport, Transport::Polling) {
            return Err(engine::HttpError::BadRequest);
        }
        for p in engine::decode_payload(&body) {
            if self.closed.is_some() {
                break;
            }
            match p {
                Ok(p) => self.on_packet(ctx, p),
                Err(e) => {
                    tracing::debug!(sid = %self.sid, error = %e, "bad polling payload");
                    self.close(ctx, CloseReason::ProtocolError);
                    return Err(engine::HttpError::BadRequest);
                }
            }
        }
        Ok(())
    }
}

impl Handler<Flush> for EngineSession {
    type Result = ();

    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) {
        self.flush(false);
    }
}
