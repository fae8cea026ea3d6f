//! A write *group*: consecutive calls of one room (or one call spanning rooms) checked against
//! the room's last seq and written together by [`Core::write_group`].
//!
//! Checking is all-or-nothing per call: a call with a wrong seq is answered `SeqConflict` at
//! once and adds nothing to the group. The group then either commits (every remaining call is
//! answered `Ok`) or fails (every remaining call is answered with the error).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cluster_proto::{ChatMessage, RoomId, UserId};
use tokio::sync::oneshot;

use super::core::Core;
use crate::store::{StoreError, WriteOp};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write call waiting for its answer.
pub(crate) struct Call {
    pub reply: Reply<()>,
    pub queued: Instant,
}

impl Call {
    pub fn answer(self, result: Result<(), StoreError>) {
        metrics::histogram!("parley_store_write_latency_ms")
            .record(self.queued.elapsed().as_secs_f64() * 1e3);
        let _ = self.reply.send(result);
    }
}

/// The writes that succeed or fail together.
#[derive(Default)]
pub(crate) struct Group {
    pub calls: Vec<Call>,
    pub messages: Vec<ChatMessage>,
    pub receipts: Vec<(RoomId, UserId, u64)>,
    /// The committed last seq of each room once the group is written.
    pub new_last: HashMap<RoomId, u64>,
}

/// How the writer's cache of a room's last seq changes after a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheUpdate {
    Set(u64),
    /// Unknown or doubtful: reload from `room_state` on next touch.
    Forget,
}

/// Checks one call against the last seqs known so far (`last`, updated on success) and adds it
/// to `group`: all of it or nothing.
pub(crate) fn stage(
    ops: Vec<WriteOp>,
    last: &mut HashMap<RoomId, u64>,
    group: &mut Group,
) -> Result<(), StoreError> {
    let mut seqs: Vec<(RoomId, u64)> = Vec::new();
    let mut messages = Vec::new();
    let mut receipts = Vec::new();
    for op in ops {
        match op {
            WriteOp::Message(m) => {
                let prev = match seqs.iter().rev().find(|(r, _)| r == &m.room_id) {
                    Some((_, s)) => *s,
                    None => match last.get(&m.room_id) {
                        Some(s) => *s,
                        None => {
                            return Err(StoreError::Unavailable(format!(
                                "last seq of room {} not loaded",
                                m.room_id
                            )))
                        }
                    },
                };
                if m.seq != prev + 1 {
                    return Err(StoreError::SeqConflict {
                        room: m.room_id.clone(),
                        expected: prev + 1,
                        got: m.seq,
                    });
                }
                if i64::try_from(m.seq).is_err() {
                    return Err(StoreError::Corrupt(format!("seq {} exceeds i64", m.seq)));
                }
                seqs.push((m.room_id.clone(), m.seq));
                messages.push(m);
            }
            WriteOp::Receipt { room, user, seq } => {
                if i64::try_from(seq).is_err() {
                    return Err(StoreError::Corrupt(format!(
                        "receipt seq {seq} exceeds i64"
                    )));
                }
                // Receipts start at 0 and never go down: 0 changes nothing.
                if seq > 0 {
                    receipts.push((room, user, seq));
                }
            }
        }
    }
    for (room, seq) in seqs {
        last.insert(room.clone(), seq);
        group.new_last.insert(room, seq);
    }
    group.messages.extend(messages);
    group.receipts.extend(receipts);
    Ok(())
}

/// Checks and writes `calls` (all for the rooms in `known`/`load`), answers them, and says how
/// the writer's cache of each room changes. `known` holds the cached last seqs; the rooms in
/// `load` are read from `room_state` first.
pub(crate) async fn run_group(
    core: Arc<Core>,
    calls: Vec<(Vec<WriteOp>, Call)>,
    mut known: HashMap<RoomId, u64>,
    load: Vec<RoomId>,
) -> Vec<(RoomId, CacheUpdate)> {
    for room in load {
        match core.load_last_seq(&room).await {
            Ok(s) => {
                known.insert(room, s);
            }
            Err(e) => {
                let e = StoreError::from(e);
                for (_, call) in calls {
                    call.answer(Err(e.clone()));
                }
                let mut rooms: Vec<_> = known
                    .into_keys()
                    .map(|r| (r, CacheUpdate::Forget))
                    .collect();
                rooms.push((room, CacheUpdate::Forget));
                return rooms;
            }
        }
    }
    let mut last = known.clone();
    let mut group = Group::default();
    let mut doubtful = Vec::new();
    for (ops, call) in calls {
        match stage(ops, &mut last, &mut group) {
            Ok(()) => group.calls.push(call),
            Err(e) => {
                if let StoreError::SeqConflict { room, .. } = &e {
                    // Maybe our cache is stale (another writer): re-read it next time.
                    doubtful.push(room.clone());
                }
                call.answer(Err(e));
            }
        }
    }
    let result = if group.calls.is_empty() {
        Ok(())
    } else {
        core.write_group(&group).await
    };
    if let Err(e) = &result {
        tracing::warn!(error = %e, rooms = group.new_last.len(), "history write failed");
    }
    for call in group.calls.drain(..) {
        call.answer(result.clone());
    }
    last.into_iter()
        .map(|(room, seq)| {
            let update = if result.is_err() || doubtful.contains(&room) {
                CacheUpdate::Forget
            } else {
                CacheUpdate::Set(seq)
            };
            (room, update)
        })
        .collect()
}
