//! An in-memory history store for tests and simulations: [`MemoryStore`] is one database,
//! shared by any number of *handles* ([`MemoryStore::handle`]), each standing for one node
//! with its own claims. It keeps the whole contract of [`crate::store`], the ownership fence
//! included, so an in-process cluster can run several room owners against one database.
//!
//! It is cheap and deterministic: no thread, no task, no clock. Every call completes at once
//! under one lock; `submit` returns a ticket that is already decided
//! ([`WriteTicket::ready`]), so a write is committed (or refused) before `submit` returns and
//! the fence check and the commit are one atomic step. Nothing survives the process.
//!
//! Fault switch: [`MemoryStore::set_available`]`(false)` makes every handle's calls fail with
//! [`StoreError::Unavailable`] (nothing is written) until it is switched back on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use cluster_proto::{ChatMessage, RoomId, UserId};

use crate::store::{
    message_room, Claim, HistoryStore, Receipt, RoomMeta, StoreError, WriteOp, WriteTicket,
};

/// One in-memory database. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    next_handle: AtomicU64,
}

struct State {
    available: bool,
    rooms: HashMap<RoomId, Room>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            available: true,
            rooms: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct Room {
    /// `messages[i].seq == i + 1`.
    messages: Vec<ChatMessage>,
    receipts: BTreeMap<UserId, u64>,
    /// The newest claim's epoch (0: never claimed).
    epoch: u64,
    /// The epoch each handle last claimed, by handle id.
    held: HashMap<u64, u64>,
}

impl MemoryStore {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new handle on this database: one simulated node, holding no claim yet.
    pub fn handle(&self) -> Arc<dyn HistoryStore> {
        Arc::new(MemoryHandle {
            shared: self.shared.clone(),
            id: self.shared.next_handle.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
        })
    }

    /// Switches the database on or off: while off, every call of every handle fails with
    /// [`StoreError::Unavailable`] and changes nothing.
    pub fn set_available(&self, available: bool) {
        lock(&self.shared).available = available;
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Every change is validated before anything is modified: a panic cannot leave half a call.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One handle of a [`MemoryStore`] (see the module docs).
struct MemoryHandle {
    shared: Arc<Shared>,
    id: u64,
    closed: AtomicBool,
}

impl MemoryHandle {
    /// The state, if this handle may use it now.
    fn open(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let state = lock(&self.shared);
        if !state.available {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        Ok(state)
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let msg_room = message_room(&ops)?.cloned();
        let mut state = self.open()?;
        // Check everything first, then apply: all of the call or nothing.
        if let Some(room) = &msg_room {
            let (held, current, last) = match state.rooms.get(room) {
                Some(r) => (
                    r.held.get(&self.id).copied().unwrap_or(0),
                    r.epoch,
                    r.messages.len() as u64,
                ),
                None => (0, 0, 0),
            };
            if held == 0 || held != current {
                return Err(StoreError::Fenced {
                    room: room.clone(),
                    epoch: held,
                });
            }
            let mut expected = last + 1;
            for op in &ops {
                if let WriteOp::Message(m) = op {
                    if m.seq != expected {
                        return Err(StoreError::SeqConflict {
                            room: room.clone(),
                            expected,
                            got: m.seq,
                        });
                    }
                    expected += 1;
                }
            }
        }
        for op in ops {
            match op {
                WriteOp::Message(m) => {
                    state
                        .rooms
                        .entry(m.room_id.clone())
                        .or_default()
                        .messages
                        .push(m);
                }
                WriteOp::Receipt { room, user, seq } => {
                    let current = state
                        .rooms
                        .entry(room)
                        .or_default()
                        .receipts
                        .entry(user)
                        .or_insert(0);
                    *current = (*current).max(seq);
                }
            }
        }
        Ok(())
    }

    fn read<T>(&self, room: &RoomId, f: impl FnOnce(&Room) -> T) -> Result<T, StoreError> {
        let state = self.open()?;
        let empty = Room::default();
        Ok(f(state.rooms.get(room).unwrap_or(&empty)))
    }
}

/// Up to `limit` messages of `msgs` (all with seqs in `lo..=hi`, ascending), the newest ones
/// or the oldest ones.
fn page(msgs: &[ChatMessage], lo: u64, hi: u64, limit: usize, newest: bool) -> Vec<ChatMessage> {
    let len = msgs.len() as u64;
    if lo > hi || lo > len || hi == 0 || limit == 0 {
        return Vec::new();
    }
    let (lo, hi) = (lo.max(1), hi.min(len));
    let slice = &msgs[(lo - 1) as usize..hi as usize];
    let n = slice.len().min(limit);
    if newest {
        slice[slice.len() - n..].to_vec()
    } else {
        slice[..n].to_vec()
    }
}

#[async_trait]
impl HistoryStore for MemoryHandle {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn submit(&self, ops: Vec<WriteOp>) -> WriteTicket {
        WriteTicket::ready(self.write(ops))
    }

    async fn claim(&self, room: &RoomId) -> Result<Claim, StoreError> {
        let mut state = match self.open() {
            Ok(s) => s,
            Err(e) => {
                // A failed claim leaves the handle without one (see the trait).
                if let Some(r) = lock(&self.shared).rooms.get_mut(room) {
                    r.held.remove(&self.id);
                }
                return Err(e);
            }
        };
        let r = state.rooms.entry(room.clone()).or_default();
        r.epoch += 1;
        r.held.insert(self.id, r.epoch);
        Ok(Claim {
            epoch: r.epoch,
            last_seq: r.messages.len() as u64,
        })
    }

    async fn room_meta(&self, room: &RoomId) -> Result<RoomMeta, StoreError> {
        self.read(room, |r| RoomMeta {
            last_seq: r.messages.len() as u64,
        })
    }

    async fn latest(&self, room: &RoomId, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        self.read(room, |r| page(&r.messages, 1, u64::MAX, limit, true))
    }

    async fn before(
        &self,
        room: &RoomId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if before_seq <= 1 {
            return Ok(Vec::new());
        }
        self.read(room, |r| page(&r.messages, 1, before_seq - 1, limit, true))
    }

    async fn after(
        &self,
        room: &RoomId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if after_seq == u64::MAX {
            return Ok(Vec::new());
        }
        self.read(room, |r| {
            page(&r.messages, after_seq + 1, u64::MAX, limit, false)
        })
    }

    async fn receipts(&self, room: &RoomId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        self.read(room, |r| {
            r.receipts
                .iter()
                .take(limit)
                .map(|(user, &seq)| Receipt {
                    user: user.clone(),
                    seq,
                })
                .collect()
        })
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.open().map(|_| ())
    }

    async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &RoomId, seq: u64) -> ChatMessage {
        crate::store::test_message(room, seq)
    }

    #[tokio::test]
    async fn the_switch_refuses_everything_and_changes_nothing() {
        let db = MemoryStore::new();
        let h = db.handle();
        let r = RoomId::new("r").unwrap();
        h.claim(&r).await.unwrap();
        h.submit(vec![WriteOp::Message(msg(&r, 1))]).await.unwrap();
        db.set_available(false);
        assert!(matches!(
            h.submit(vec![WriteOp::Message(msg(&r, 2))]).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(h.latest(&r, 10).await.is_err());
        assert!(h.check().await.is_err());
        assert!(h.claim(&r).await.is_err());
        db.set_available(true);
        // The failed claim left no claim behind.
        assert!(matches!(
            h.submit(vec![WriteOp::Message(msg(&r, 2))]).await,
            Err(StoreError::Fenced { epoch: 0, .. })
        ));
        let c = h.claim(&r).await.unwrap();
        assert_eq!((c.epoch, c.last_seq), (2, 1));
        h.submit(vec![WriteOp::Message(msg(&r, 2))]).await.unwrap();
        assert_eq!(h.latest(&r, 10).await.unwrap().len(), 2);
    }
}
