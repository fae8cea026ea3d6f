//! A write *group*: consecutive calls of one room (or one call spanning rooms with receipts)
//! checked against the room's claim and last seq, and written together (see
//! [`super::write_ops`]).
//!
//! Checking is all-or-nothing per call: a call with a wrong seq is answered `SeqConflict` at
//! once, a call with messages while this handle does not own the room is answered `Fenced`
//! at once; neither adds anything to the group. The group then either commits (every
//! remaining call is answered `Ok`) or fails (every remaining call is answered with the
//! error; when the commit finds a newer owner, the calls with messages get `Fenced` and the
//! receipt-only calls, whose rows are written and unfenced, `Ok`).

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

/// This handle's claim of a room, as its writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// This handle raised the room's epoch to `epoch`; `counter` is the low part of the next
    /// write timestamp (see [`super::core::write_timestamp`]).
    Owner { epoch: u64, counter: u64 },
    /// A commit or renewal found a newer epoch: fenced until the next claim.
    Fenced { epoch: u64 },
}

impl Held {
    fn epoch(self) -> u64 {
        match self {
            Held::Owner { epoch, .. } | Held::Fenced { epoch } => epoch,
        }
    }
}

/// How the writer's knowledge of a room changes after a group or a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheUpdate {
    Keep,
    Set(u64),
    /// Unknown or doubtful: reload from `room_state` on next touch.
    Forget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldUpdate {
    Keep,
    Set(Held),
    /// No claim any more (a claim attempt failed).
    Drop,
}

/// What the writer learns from a group or a claim about its room.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub room: Option<RoomId>,
    pub last_seq: CacheUpdate,
    pub held: HeldUpdate,
}

impl Outcome {
    pub fn none() -> Self {
        Self {
            room: None,
            last_seq: CacheUpdate::Keep,
            held: HeldUpdate::Keep,
        }
    }
}

/// The room whose messages a group may carry, with what the writer knows of it.
pub(crate) struct Target {
    pub room: RoomId,
    /// The committed last seq, if cached (else read from `room_state` when needed).
    pub known_last: Option<u64>,
    /// This handle's claim of the room.
    pub held: Option<Held>,
}

/// The writes that succeed or fail together.
#[derive(Default)]
pub(crate) struct Group {
    /// Staged calls, and whether each carries messages.
    pub calls: Vec<(Call, bool)>,
    pub messages: Vec<ChatMessage>,
    /// Receipts of receipt-only calls: written with the rows (phase 1).
    pub receipts: Vec<(RoomId, UserId, u64)>,
    /// Receipts of calls that also carry messages: written only after the commit, so a
    /// fenced call leaves nothing visible.
    pub late_receipts: Vec<(RoomId, UserId, u64)>,
    /// The room's committed last seq once the group is written (None: no messages).
    pub new_last: Option<u64>,
}

fn has_messages(ops: &[WriteOp]) -> bool {
    ops.iter().any(|op| matches!(op, WriteOp::Message(_)))
}

/// Checks one call against the last seq known so far (`last`, updated on success) and adds
/// it to `group`: all of it or nothing. Its messages are all of the group's room (checked by
/// `submit`).
pub(crate) fn stage(
    ops: Vec<WriteOp>,
    last: &mut u64,
    group: &mut Group,
) -> Result<(), StoreError> {
    let mut next = *last;
    let mut messages = Vec::new();
    let mut receipts = Vec::new();
    for op in ops {
        match op {
            WriteOp::Message(m) => {
                if m.seq != next + 1 {
                    return Err(StoreError::SeqConflict {
                        room: m.room_id.clone(),
                        expected: next + 1,
                        got: m.seq,
                    });
                }
                if i64::try_from(m.seq).is_err() {
                    return Err(StoreError::Corrupt(format!("seq {} exceeds i64", m.seq)));
                }
                next = m.seq;
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
    if messages.is_empty() {
        group.receipts.extend(receipts);
    } else {
        *last = next;
        group.new_last = Some(next);
        group.messages.extend(messages);
        group.late_receipts.extend(receipts);
    }
    Ok(())
}

/// Checks and writes `calls` (all of `target`'s room, or one call whose messages are of
/// `target`'s room), answers them, and says how the writer's knowledge of the room changes.
pub(crate) async fn run_group(
    core: Arc<Core>,
    calls: Vec<(Vec<WriteOp>, Call)>,
    target: Option<Target>,
) -> Outcome {
    let mut out = Outcome::none();
    let mut held = None;
    let mut known_last = None;
    let mut room = None;
    if let Some(t) = target {
        held = t.held;
        known_last = t.known_last;
        out.room = Some(t.room.clone());
        room = Some(t.room);
    }
    let calls: Vec<(Vec<WriteOp>, Call, bool)> = calls
        .into_iter()
        .map(|(ops, call)| {
            let m = has_messages(&ops);
            (ops, call, m)
        })
        .collect();
    let any_messages = calls.iter().any(|c| c.2);

    // The fence, before anything is written: a handle that does not own the room writes none
    // of its messages. An owner whose timestamp counter is used up renews its epoch first.
    let mut owner = None;
    if let (true, Some(room)) = (any_messages, &room) {
        if let Some(Held::Owner { epoch, counter }) = held {
            if counter > core.max_counter() {
                match core.renew_epoch(room, epoch).await {
                    Ok(Some(new)) => {
                        held = Some(Held::Owner {
                            epoch: new,
                            counter: 0,
                        });
                        out.held = HeldUpdate::Set(Held::Owner {
                            epoch: new,
                            counter: 0,
                        });
                    }
                    Ok(None) => {
                        held = Some(Held::Fenced { epoch });
                        out.held = HeldUpdate::Set(Held::Fenced { epoch });
                        out.last_seq = CacheUpdate::Forget;
                    }
                    Err(e) => {
                        // Still the owner as far as anyone knows: the next group tries again.
                        for (_, call, _) in calls {
                            call.answer(Err(e.clone()));
                        }
                        return out;
                    }
                }
            }
        }
        if let Some(Held::Owner { epoch, counter }) = held {
            owner = Some((epoch, counter));
        }
    }
    // What a call with messages gets when this handle does not own the room.
    let fenced = match &room {
        Some(room) => StoreError::Fenced {
            room: room.clone(),
            epoch: held.map_or(0, Held::epoch),
        },
        // Not reached: the writer names the room of every call with messages.
        None => StoreError::Invalid("messages without a room".into()),
    };

    // The room's last seq, if some call will be staged with messages.
    let mut last = 0;
    if owner.is_some() {
        if let Some(room) = &room {
            last = match known_last {
                Some(s) => s,
                None => match core.load_last_seq(room).await {
                    Ok(s) => s,
                    Err(e) => {
                        let e = StoreError::from(e);
                        for (_, call, _) in calls {
                            call.answer(Err(e.clone()));
                        }
                        out.last_seq = CacheUpdate::Forget;
                        return out;
                    }
                },
            };
        }
    }

    let mut group = Group::default();
    let mut doubtful = false;
    for (ops, call, m) in calls {
        if m && owner.is_none() {
            call.answer(Err(fenced.clone()));
            continue;
        }
        match stage(ops, &mut last, &mut group) {
            Ok(()) => group.calls.push((call, m)),
            Err(e) => {
                if matches!(e, StoreError::SeqConflict { .. }) {
                    // Maybe our cache is stale: re-read it next time.
                    doubtful = true;
                }
                call.answer(Err(e));
            }
        }
    }
    if group.calls.is_empty() {
        if doubtful {
            out.last_seq = CacheUpdate::Forget;
        }
        return out;
    }

    let result = match (owner, &room, group.new_last) {
        (Some((epoch, counter)), Some(room), Some(new_last)) => {
            // This group's timestamp is used up whatever happens: rows may be written with it.
            out.held = HeldUpdate::Set(Held::Owner {
                epoch,
                counter: counter + 1,
            });
            core.write_fenced(room, epoch, counter, new_last, &group)
                .await
        }
        _ => core.write_unfenced(&group).await,
    };
    match &result {
        Ok(()) => {
            out.last_seq = match group.new_last {
                Some(s) if !doubtful => CacheUpdate::Set(s),
                Some(_) => CacheUpdate::Forget,
                None if doubtful => CacheUpdate::Forget,
                None => CacheUpdate::Keep,
            };
        }
        Err(e) => {
            tracing::warn!(error = %e, room = ?room, "history write failed");
            out.last_seq = CacheUpdate::Forget;
            if let StoreError::Fenced { epoch, .. } = e {
                out.held = HeldUpdate::Set(Held::Fenced { epoch: *epoch });
            }
        }
    }
    let receipts_written = matches!(result, Err(StoreError::Fenced { .. }));
    for (call, m) in group.calls.drain(..) {
        // A fenced commit fails the calls with messages; receipt-only calls were written.
        let r = if !m && receipts_written {
            Ok(())
        } else {
            result.clone()
        };
        call.answer(r);
    }
    out
}
