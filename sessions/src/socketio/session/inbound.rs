//! What the client sends, as the session reads it: Engine.IO packets (close, pong, messages,
//! binary attachments) and the Socket.IO packets inside them: CONNECT (authentication, then
//! the session joins the room layer), events and their acks, DISCONNECT.

use super::*;

impl EngineSession {
    /// An Engine.IO packet from the active transport.
    pub(super) fn on_packet(&mut self, ctx: &mut Context<Self>, p: ClientPacket<'_>) {
        match p {
            ClientPacket::Close => self.close(ctx, CloseReason::Normal),
            ClientPacket::Pong(_) => {
                if self.awaiting_pong {
                    self.awaiting_pong = false;
                    self.schedule_ping(ctx);
                }
            }
            // Engine.IO v4: the server pings; a client ping outside a probe is invalid.
            ClientPacket::Ping(_) => self.close(ctx, CloseReason::ProtocolError),
            ClientPacket::Message(text) => self.on_socketio(ctx, text),
            ClientPacket::Binary(b) => self.on_binary(ctx, b.len()),
            ClientPacket::Upgrade | ClientPacket::Noop => {}
        }
    }

    pub(super) fn on_socketio(&mut self, ctx: &mut Context<Self>, text: &str) {
        if matches!(self.state, SocketState::Connecting) {
            // A client that does not wait for the CONNECT answer: keep the order.
            let held: usize = self.early.iter().map(String::len).sum();
            if self.early.len() >= self.ctx.limits.max_inflight
                || held + text.len() > self.ctx.limits.max_frame_bytes
            {
                return self.close(ctx, CloseReason::Flood);
            }
            self.early.push(text.to_string());
            return;
        }
        if self.assembly.is_some() {
            // Text while binary attachments are expected.
            return self.close(ctx, CloseReason::ProtocolError);
        }
        let packet = match packet::decode(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(sid = %self.sid, error = %e, "bad socket.io packet");
                return self.close(ctx, CloseReason::ProtocolError);
            }
        };
        match packet {
            Packet::Connect { nsp, .. } if nsp != "/" => {
                let f = packet::connect_error(nsp, "Invalid namespace");
                self.write(ctx, ByteString::from(f));
            }
            Packet::Connect { auth, .. } => self.on_connect(ctx, auth),
            Packet::Disconnect { nsp: "/" } => self.close(ctx, CloseReason::Normal),
            Packet::Disconnect { .. } => {}
            Packet::Event { nsp, .. } | Packet::Ack { nsp, .. } if nsp != "/" => {}
            Packet::Event {
                id,
                args,
                attachments,
                ..
            } => {
                if attachments > 0 {
                    let event = packet::event_name(args)
                        .map(|(n, _)| EventKind::from_name(&n))
                        .unwrap_or(EventKind::Unknown);
                    self.assembly = Some(Assembly {
                        event: Some((id, event)),
                        remaining: attachments,
                        bytes: 0,
                    });
                    return;
                }
                if !matches!(self.state, SocketState::Connected) {
                    return;
                }
                match events::parse_event(args, &self.ctx.limits) {
                    Ok((event, req)) => chat::request(self, ctx, id, event, req),
                    Err((event, err)) => chat::rejected_input(self, ctx, id, event, &err),
                }
            }
            Packet::Ack { attachments, .. } => {
                // The server never asks for acks; a binary one still has to be consumed.
                if attachments > 0 {
                    self.assembly = Some(Assembly {
                        event: None,
                        remaining: attachments,
                        bytes: 0,
                    });
                }
            }
        }
    }

    /// A binary attachment: counted and bounded, then the event is refused (binary policy).
    pub(super) fn on_binary(&mut self, ctx: &mut Context<Self>, len: usize) {
        let max = self.ctx.limits.max_frame_bytes;
        let Some(a) = self.assembly.as_mut() else {
            return self.close(ctx, CloseReason::ProtocolError);
        };
        a.bytes = a.bytes.saturating_add(len);
        if a.bytes > max {
            return self.close(ctx, CloseReason::MessageTooBig);
        }
        a.remaining -= 1;
        if a.remaining > 0 {
            return;
        }
        let done = self.assembly.take();
        if let Some(Assembly {
            event: Some((id, event)),
            ..
        }) = done
        {
            if matches!(self.state, SocketState::Connected) {
                let err = ApiError::new(
                    ErrorCode::BinaryNotSupported,
                    "binary payloads are not supported: send JSON (see docs/socketio.md)",
                );
                chat::rejected_input(self, ctx, id, event, &err);
            }
        }
    }

    fn on_connect(&mut self, ctx: &mut Context<Self>, auth: Option<&str>) {
        if !matches!(self.state, SocketState::AwaitingConnect) {
            return;
        }
        let verified = match packet::auth_token(auth) {
            Some(token) => self.ctx.auth.verify(&token).ok(),
            None => self.handshake_member.clone(),
        };
        let Some(member) = verified else {
            stats().auth_failures.increment(1);
            let f = packet::connect_error("/", "Authentication failed");
            return self.write(ctx, ByteString::from(f));
        };
        self.state = SocketState::Connecting;
        let id = self.ctx.next_session_id();
        // Pushes reach this actor, not a socket: its own eviction handling closes it, so the
        // outbox needs no kill switch of its own.
        let (outbox, ends) = Outbox::new(
            self.ctx.limits.outbound_queue,
            KillSwitch::new(None),
            self.ctx.limits.slow_consumer_grace,
        );
        let fut = self.ctx.backend.connect(id, &member, outbox);
        let (addr, backend) = (ctx.address(), self.ctx.backend.clone());
        // Detached, so that a registration completing after this session stopped is undone.
        actix::spawn(async move {
            let result = fut.await;
            let registered = result.is_ok();
            let msg = Connected {
                id,
                member: member.clone(),
                outbox: ends,
                result,
            };
            if !matches!(addr.send(msg).await, Ok(Ok(()))) && registered {
                backend.disconnect(id, &member);
            }
        });
    }
}
