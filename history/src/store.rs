//! The history-store contract.
//!
//! Guarantees every implementation gives (and the contract suite checks):
//!
//! 1. **Durable ack.** The [`WriteTicket`] from [`HistoryStore::submit`] resolves `Ok` only once
//!    every op of that call is durable at the store's configured level (fsync for the embedded
//!    store, the configured consistency for CQL).
//! 2. **Order.** Ops are queued before `submit` returns, so calls made one after another by one
//!    caller (a room) are applied in that order.
//! 3. **Gap-free sequences.** A message is accepted only if its `seq` is exactly one more than
//!    the room's last stored seq (the first is 1); otherwise the whole call fails with
//!    [`StoreError::SeqConflict`] and nothing of it is written. A room whose write failed can
//!    therefore reuse the seq without ever leaving a hole or a duplicate.
//! 4. **Monotonic receipts.** A receipt only ever moves forward.
//! 5. **Reads see acknowledged writes.** [`HistoryStore::room_meta`] is ordered after every write
//!    submitted before it.
//! 6. **Fenced ownership.** A *handle* is one `Arc<dyn HistoryStore>` instance (one node). A
//!    room has one owner at a time, but two nodes may briefly both believe they own it, so
//!    the store fences:
//!    * [`HistoryStore::claim`] atomically (a linearizable compare-and-set) raises the room's
//!      epoch above every earlier claim by any handle, and returns the new epoch with the
//!      room's last committed seq as read after the raise: it includes everything an earlier
//!      owner committed, and nothing an earlier owner commits afterwards can succeed. A claim is
//!      ordered after every write this handle submitted before it.
//!    * After a claim, a message write for the room through this handle is committed only if
//!      the room's epoch is still this handle's; otherwise the whole call fails with
//!      [`StoreError::Fenced`] and nothing of it becomes visible or overwrites anything the
//!      newer owner committed. A fenced handle stays fenced for that room until it claims
//!      again.
//!    * There is no implicit claim: a message write for a room this handle never claimed (or
//!      whose last claim attempt failed) fails with `Fenced { epoch: 0 }`. Taking ownership
//!      silently on the first write would let a stale node steal a room back.
//!    * Receipts are not fenced: they only ever move forward (4), so a stale owner's receipt
//!      cannot hide a newer one. [`HistoryStore::room_meta`] and the reads need no claim.
//!
//! A call may carry messages of one room only (and receipts of any rooms): the fence and the
//! commit of a room are one atomic step, and no store can make steps in several rooms atomic
//! under a fence. A call with messages of several rooms fails with [`StoreError::Invalid`]
//! and writes nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use cluster_proto::{ChatMessage, RoomId, UserId};
use tokio::sync::oneshot;

/// The room of the messages in `ops`: `Ok(None)` without messages, [`StoreError::Invalid`]
/// when they belong to several rooms (see the module docs).
pub(crate) fn message_room(ops: &[WriteOp]) -> Result<Option<&RoomId>, StoreError> {
    let mut room: Option<&RoomId> = None;
    for op in ops {
        if let WriteOp::Message(m) = op {
            match room {
                None => room = Some(&m.room_id),
                Some(r) if r == &m.room_id => {}
                Some(r) => {
                    return Err(StoreError::Invalid(format!(
                        "one call carries messages of rooms {r} and {}",
                        m.room_id
                    )))
                }
            }
        }
    }
    Ok(room)
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Append a message (its `seq` must be the room's last seq + 1).
    Message(ChatMessage),
    /// Raise `user`'s read receipt in `room` to `seq` (never lowers it).
    Receipt {
        room: RoomId,
        user: UserId,
        seq: u64,
    },
}

/// What a store knows about a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomMeta {
    /// The highest stored seq (0 when the room has no messages).
    pub last_seq: u64,
}

/// The fence token of one ownership of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The room's new epoch, higher than every earlier claim's (never 0).
    pub epoch: u64,
    /// The room's last committed seq as read after the epoch was raised.
    pub last_seq: u64,
}

/// A user's read position in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub user: UserId,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (I/O error, queue full, server down). Retry later.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// A message's seq is not the room's next one; nothing of the call was written.
    #[error("seq conflict in room {room}: expected {expected}, got {got}")]
    SeqConflict {
        room: RoomId,
        expected: u64,
        got: u64,
    },
    /// The room is owned by a newer claim than this handle's (`epoch` 0: this handle holds no
    /// claim for the room). Nothing of the call was written; the handle stays fenced for the
    /// room until it calls [`HistoryStore::claim`] again.
    #[error("room {room} is owned by a newer claim (this handle's epoch {epoch})")]
    Fenced { room: RoomId, epoch: u64 },
    /// The call is malformed (messages of several rooms); nothing of it was written.
    #[error("invalid history write: {0}")]
    Invalid(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt history record: {0}")]
    Corrupt(String),
    /// The store was shut down.
    #[error("history store is closed")]
    Closed,
}

/// Resolves when the ops of one [`HistoryStore::submit`] call are durable (or failed).
pub struct WriteTicket(TicketInner);

enum TicketInner {
    Pending(oneshot::Receiver<Result<(), StoreError>>),
    Ready(Option<Result<(), StoreError>>),
}

impl WriteTicket {
    /// A ticket waiting for `rx`. A dropped sender reads as [`StoreError::Closed`].
    pub fn pending(rx: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        WriteTicket(TicketInner::Pending(rx))
    }

    /// A ticket that is already decided (e.g. the write queue was full).
    pub fn ready(result: Result<(), StoreError>) -> Self {
        WriteTicket(TicketInner::Ready(Some(result)))
    }
}

impl Future for WriteTicket {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            TicketInner::Pending(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(StoreError::Closed))),
            TicketInner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(StoreError::Closed))),
        }
    }
}

/// Sends a job built around a reply channel into a store's queue and waits for its answer;
/// a closed queue or a dropped reply reads as [`StoreError::Closed`].
pub(crate) async fn ask<J, T>(
    queue: &tokio::sync::mpsc::Sender<J>,
    job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> J,
) -> Result<T, StoreError> {
    let (reply, rx) = oneshot::channel();
    queue
        .send(job(reply))
        .await
        .map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// A message-history store. Reads return messages in ascending `seq` order.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// A short name for logs and `/readyz` ("embedded", "scylla").
    fn name(&self) -> &'static str;

    /// Queues `ops` (see the module docs for the guarantees) and returns a ticket for their
    /// durability. Never blocks: a full queue yields a ticket that is already
    /// [`StoreError::Unavailable`].
    fn submit(&self, ops: Vec<WriteOp>) -> WriteTicket;

    /// Makes this store handle the room's only writer: raises the room's epoch above every
    /// earlier claim (of any handle) with a compare-and-set, and returns the new epoch and the
    /// room's last committed seq read after the raise. Ordered after every write this handle
    /// submitted before the call. From now on message writes of this handle for the room
    /// commit only while the epoch is still this one, and writes of every earlier claim fail
    /// with [`StoreError::Fenced`]. See guarantee 6 in the module docs.
    ///
    /// A failed claim (e.g. [`StoreError::Unavailable`]) leaves the handle without a claim for
    /// the room: its message writes fail with `Fenced { epoch: 0 }` until a claim succeeds.
    async fn claim(&self, room: &RoomId) -> Result<Claim, StoreError>;

    /// The room's last stored seq, ordered after every write submitted before this call.
    async fn room_meta(&self, room: &RoomId) -> Result<RoomMeta, StoreError>;

    /// The last `limit` messages of `room`.
    async fn latest(&self, room: &RoomId, limit: usize) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` messages with `seq < before_seq`, the newest of those.
    async fn before(
        &self,
        room: &RoomId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` messages with `seq > after_seq`, the oldest of those.
    async fn after(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;

    /// Up to `limit` read receipts of `room`.
    async fn receipts(&self, room: &RoomId, limit: usize) -> Result<Vec<Receipt>, StoreError>;

    /// `Ok` while the store can serve reads and writes (for `/readyz`).
    async fn check(&self) -> Result<(), StoreError>;

    /// Waits for queued writes to finish and stops accepting new ones.
    async fn shutdown(&self);
}

/// A plain message of user `u` for the stores' unit tests.
#[cfg(test)]
pub(crate) fn test_message(room: &RoomId, seq: u64) -> ChatMessage {
    ChatMessage {
        id: ChatMessage::make_id(room, seq),
        room_id: room.clone(),
        seq,
        user_id: UserId::new("u").unwrap_or_else(|_| unreachable!()),
        username: "U".into(),
        text: format!("m{seq}"),
        attachments: "[]".into(),
        timestamp: seq as i64,
        client_msg_id: None,
    }
}
