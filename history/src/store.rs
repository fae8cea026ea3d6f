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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use cluster_proto::{ChatMessage, RoomId, UserId};
use tokio::sync::oneshot;

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

/// A message-history store. Reads return messages in ascending `seq` order.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// A short name for logs and `/readyz` ("embedded", "scylla").
    fn name(&self) -> &'static str;

    /// Queues `ops` (see the module docs for the guarantees) and returns a ticket for their
    /// durability. Never blocks: a full queue yields a ticket that is already
    /// [`StoreError::Unavailable`].
    fn submit(&self, ops: Vec<WriteOp>) -> WriteTicket;

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
