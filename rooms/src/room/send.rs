//! The send pipeline: seq assignment, durable write, in-order release, dedupe.
//!
//! Writes are pipelined; results are released strictly in seq order. A failed write fails
//! every later one still in flight (the store refuses gaps), and once nothing is in flight the
//! seqs are reused: history stays gap-free and a failed message is never pushed.

use super::*;

impl RoomState {
    pub(super) fn remember_client_id(&mut self, user: UserId, id: String, seq: u64) {
        let key = (user, id);
        if self.dedupe.insert(key.clone(), seq).is_none() {
            self.dedupe_order.push_back(key);
        }
        while self.dedupe_order.len() > self.cfg().dedupe_window {
            if let Some(old) = self.dedupe_order.pop_front() {
                self.dedupe.remove(&old);
            }
        }
    }

    pub(super) fn send(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        req: SendRequest,
        reply: Reply<Arc<ChatMessage>>,
    ) {
        if !self.sessions.contains_key(&session) {
            let _ = reply.send(Err(not_in_room()));
            return;
        }
        if let Some(cid) = &req.client_msg_id {
            if let Some(&seq) = self.dedupe.get(&(member.user_id.clone(), cid.clone())) {
                self.answer_duplicate(seq, reply);
                return;
            }
        }
        let seq = self.last_assigned + 1;
        self.last_assigned = seq;
        self.last_timestamp = self.last_timestamp.max(now_ms());
        let msg = Arc::new(ChatMessage {
            id: ChatMessage::make_id(&self.room, seq),
            room_id: self.room.clone(),
            seq,
            user_id: member.user_id.clone(),
            username: member.username,
            text: req.text,
            attachments: req.attachments,
            timestamp: self.last_timestamp,
            client_msg_id: req.client_msg_id,
        });
        if let Some(cid) = &msg.client_msg_id {
            self.remember_client_id(member.user_id, cid.clone(), seq);
        }
        let ticket = self
            .deps
            .store
            .submit(vec![WriteOp::Message((*msg).clone())]);
        self.pending.insert(
            seq,
            PendingSend {
                msg,
                waiters: vec![reply],
                outcome: None,
            },
        );
        let me = myself.clone();
        tokio::spawn(async move {
            let result = ticket.await;
            let _ = me.cast(RoomMsg::Persisted { seq, result });
        });
    }

    /// A resend of a known client message id: answer with the original.
    pub(super) fn answer_duplicate(&mut self, seq: u64, reply: Reply<Arc<ChatMessage>>) {
        metrics::counter!("parley_duplicate_sends_total").increment(1);
        if let Some(p) = self.pending.get_mut(&seq) {
            p.waiters.push(reply);
            return;
        }
        if let Some(m) = self.recent.iter().find(|m| m.seq == seq) {
            let _ = reply.send(Ok(m.clone()));
            return;
        }
        let store = self.deps.store.clone();
        let room = self.room.clone();
        tokio::spawn(async move {
            let r = match store.after(&room, seq - 1, 1).await {
                Ok(mut v) if !v.is_empty() => Ok(Arc::new(v.remove(0))),
                Ok(_) => Err(ApiError::new(
                    ErrorCode::Internal,
                    "original message not found",
                )),
                Err(e) => Err(store_error(&e)),
            };
            let _ = reply.send(r);
        });
    }

    pub(super) fn persisted(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        seq: u64,
        result: Result<(), StoreError>,
    ) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.outcome = Some(result);
        }
        let mut fenced = false;
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().outcome.is_none() {
                break;
            }
            let p = entry.remove();
            match p.outcome {
                Some(Ok(())) => {
                    self.durable = p.msg.seq;
                    self.recent.push_back(p.msg.clone());
                    while self.recent.len() > self.cfg().history_on_join {
                        self.recent.pop_front();
                    }
                    let push = Push::new(
                        PushKind::NewMessage,
                        Some(self.room.clone()),
                        Some(p.msg.seq),
                        &*p.msg,
                    );
                    self.fan_out(&push, None);
                    for w in p.waiters {
                        let _ = w.send(Ok(p.msg.clone()));
                    }
                }
                Some(Err(e)) => {
                    if matches!(e, StoreError::Fenced { .. }) && self.retiring.is_none() {
                        // A newer owner claimed the room: nothing of this write is visible.
                        // Its senders retry at the new owner (same clientMsgId).
                        fenced = true;
                    }
                    self.failed_in_flight = true;
                    let lowest = self.lowest_failed.map_or(p.msg.seq, |l| l.min(p.msg.seq));
                    self.lowest_failed = Some(lowest);
                    if let Some(cid) = &p.msg.client_msg_id {
                        let key = (p.msg.user_id.clone(), cid.clone());
                        if self.dedupe.get(&key) == Some(&p.msg.seq) {
                            self.dedupe.remove(&key);
                        }
                    }
                    let err = match e {
                        StoreError::Fenced { .. } => self.moved(),
                        _ => store_error(&e),
                    };
                    for w in p.waiters {
                        let _ = w.send(Err(err.clone()));
                    }
                }
                None => {}
            }
        }
        if fenced {
            self.retire(myself, Retiring::Fenced);
            return;
        }
        if self.pending.is_empty() && self.retiring.is_some() {
            self.finish_retirement(myself);
            return;
        }
        if self.pending.is_empty() {
            if self.failed_in_flight {
                // Every failed seq is free again, unless a commit landed whose ack was lost:
                // the next send rereads the last seq first (see the module docs).
                self.last_assigned = self.durable;
                self.failed_in_flight = false;
                self.stale = true;
                self.schedule_retry(myself);
            }
            self.schedule_idle_check(myself);
        }
    }
}
