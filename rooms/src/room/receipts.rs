//! Read receipts: clamped to the last durable seq, monotonic, stored before they are acked
//! and broadcast as `messagesRead`.

use super::*;

impl RoomState {
    pub(super) fn mark_read(
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

    pub(super) fn receipt_persisted(
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
