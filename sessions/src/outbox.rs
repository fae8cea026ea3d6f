//! A session's bounded outbound queue, as handed to the room layer.
//!
//! The queue is a tokio mpsc channel read by the session actor (`ctx.add_stream`). Fan-out
//! uses `try_send`: it never waits. When the queue is full the hub calls [`PushSink::evict`],
//! which wakes the session to close with 4008 (`slow_consumer`). A client that stops reading
//! entirely also stops its actor from being polled; for that case the node sets
//! `TCP_USER_TIMEOUT` on every socket so the kernel gives up on it (see `docs/runtime.md`).

use std::sync::Arc;

use cluster_proto::{Push, PushError, PushSink};
use tokio::sync::{mpsc, Notify};

pub struct Outbox {
    tx: mpsc::Sender<Arc<Push>>,
    evicted: Arc<Notify>,
}

impl Outbox {
    /// A queue of `capacity` pushes, the receiving end, and the eviction signal.
    pub fn new(capacity: usize) -> (Arc<Outbox>, mpsc::Receiver<Arc<Push>>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let evicted = Arc::new(Notify::new());
        (
            Arc::new(Outbox {
                tx,
                evicted: evicted.clone(),
            }),
            rx,
            evicted,
        )
    }
}

impl PushSink for Outbox {
    fn try_push(&self, push: &Arc<Push>) -> Result<(), PushError> {
        self.tx.try_send(push.clone()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PushError::Full,
            mpsc::error::TrySendError::Closed(_) => PushError::Closed,
        })
    }

    fn evict(&self) {
        self.evicted.notify_one();
    }
}
