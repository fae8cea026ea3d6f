//! Where pushes go: the seam between rooms (which fan out) and sessions (which own sockets).
//!
//! Rooms never hold a socket or an actor address. They hold a [`PushSink`], implemented by the
//! session layer as a bounded queue. `try_push` never waits: a full queue is reported, and the
//! fan-out evicts that session instead of slowing the room down.

use std::sync::Arc;

use crate::push::Push;

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The session's outbound queue is full: it is a slow consumer.
    Full,
    /// The session is gone.
    Closed,
}

/// A session's outbound queue as seen by fan-out code.
pub trait PushSink: Send + Sync + 'static {
    /// Queues `push` without waiting.
    fn try_push(&self, push: &Arc<Push>) -> Result<(), PushError>;
    /// Tells the session it was dropped as a slow consumer; it closes with code 4008.
    fn evict(&self);
}
