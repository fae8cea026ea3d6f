//! What `/cluster` shows of the membership: each peer's state as this node sees it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Linked; handshake not done.
    Joining,
    Up,
    /// Missed heartbeats, not yet declared down (still in the ring).
    Suspect,
    Down,
    /// Incompatible (protocol, ring) or a duplicate name.
    Refused,
    /// Draining: out of the ring, link kept until it closes.
    Leaving,
}

/// One member as `/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub addr: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MembershipStatus {
    pub members: Vec<MemberStatus>,
    pub ring_members: Vec<String>,
}
