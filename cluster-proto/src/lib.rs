//! Types shared by every Parley crate and, later, by every node of a cluster.
//!
//! This crate is plain data plus one codec: no runtime, no actors, no I/O. Anything that
//! crosses a node boundary or is written to a history store is defined here, so that the
//! wire and storage formats have exactly one home and one version number.
//!
//! * [`ids`]: validated room and user ids, session ids.
//! * [`message`]: the chat message as stored and as clients see it.
//! * [`push`]: a server → client event, serialized once and shared by every recipient.
//! * [`error`]: the stable error codes clients branch on.
//! * [`api`]: requests and replies between sessions and rooms.
//! * [`sink`]: the seam through which rooms push to sessions.
//! * [`rate`]: the per-user token bucket.
//! * [`codec`]: versioned bincode 2 encoding (the only place that names bincode).
//! * [`wire`]: the node-to-node protocol (frames, handshake, protocol version).

pub mod api;
pub mod codec;
pub mod error;
pub mod ids;
pub mod message;
pub mod push;
pub mod rate;
pub mod sink;
pub mod wire;

pub use error::{ApiError, ErrorCode};
pub use ids::{InvalidId, RoomId, SessionId, UserId};
pub use message::{ChatMessage, Member};
pub use push::{Push, PushKind};
pub use sink::{PushError, PushSink};
