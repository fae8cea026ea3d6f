//! Requests and replies between the session layer and the room layer.
//!
//! Today they pass in-process; in a cluster they cross nodes, which is why they live here.

use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::Serialize;

use crate::ids::RoomId;
use crate::message::{ChatMessage, Member};

/// A validated `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SendRequest {
    pub room: RoomId,
    pub text: String,
    /// A JSON array, already validated.
    pub attachments: String,
    pub client_msg_id: Option<String>,
}

/// The answer to `joinRoom`.
///
/// A join never waits for the history store to come back: when the room could not load its
/// history (the store is down), the session still joins (presence, typing and pushes work) and
/// the reply says so with `history_unavailable: true`, `last_seq: None` and `read_up_to: None`
/// (serialized as `null`) and no messages. The room pushes `resync` to that session once its
/// history is readable again; the client then fetches it with `resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Encode, Decode)]
#[serde(rename_all = "camelCase")]
pub struct JoinReply {
    pub room_id: RoomId,
    /// The highest seq included in, or before, `messages`; pushes continue above it. `None`
    /// when the history is unavailable.
    pub last_seq: Option<u64>,
    /// Up to `max_listed_members` of the room's members.
    pub members: Vec<Member>,
    /// How many distinct users are in the room.
    pub member_count: usize,
    pub messages: Vec<Arc<ChatMessage>>,
    /// The joining user's read receipt in this room. `None` when the history is unavailable.
    pub read_up_to: Option<u64>,
    /// True when the room's history could not be loaded: `messages` is empty and `last_seq`
    /// and `read_up_to` are unknown. Sends to the room fail with `store_unavailable` meanwhile.
    pub history_unavailable: bool,
}

/// The answer to `history` and `resume`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub room_id: RoomId,
    pub messages: Vec<ChatMessage>,
    /// The room's last durable seq when the page was read (`resume` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// `resume` only: false when more messages follow; call again from the last seq received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
}
