//! A session's bounded outbound queue, as handed to the room layer.
//!
//! The queue is a tokio mpsc channel read by the session actor (`ctx.add_stream`). Fan-out
//! uses `try_send`: it never waits. When the queue is full the hub calls [`PushSink::evict`],
//! which wakes the session to close with 4008 (`slow_consumer`). A client that stops reading
//! entirely also stops its actor from being polled; for that case the node sets
//! `TCP_USER_TIMEOUT` on every socket and, as a last resort, [`crate::conn::KillSwitch`]
//! shuts the socket down if the actor has not stopped `grace` after the eviction.

use std::sync::Arc;
use std::time::Duration;

use cluster_proto::{Push, PushError, PushSink};
use tokio::sync::{mpsc, Notify};

use crate::conn::KillSwitch;

pub struct Outbox {
    tx: mpsc::Sender<Arc<Push>>,
    evicted: Arc<Notify>,
    kill: Arc<KillSwitch>,
    grace: Duration,
}

/// The session's ends of its outbox.
pub struct OutboxEnds {
    pub rx: mpsc::Receiver<Arc<Push>>,
    pub evicted: Arc<Notify>,
    pub kill: Arc<KillSwitch>,
}

impl Outbox {
    /// A queue of `capacity` pushes; `kill` is fired `grace` after an eviction.
    pub fn new(capacity: usize, kill: KillSwitch, grace: Duration) -> (Arc<Outbox>, OutboxEnds) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let evicted = Arc::new(Notify::new());
        let kill = Arc::new(kill);
        let outbox = Arc::new(Outbox {
            tx,
            evicted: evicted.clone(),
            kill: kill.clone(),
            grace,
        });
        (outbox, OutboxEnds { rx, evicted, kill })
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
        self.kill.clone().fire_after(self.grace);
    }
}
