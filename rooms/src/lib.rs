//! Rooms and users as supervised `ractor` actors, and the node-local machinery around them.
//!
//! ```text
//! Rooms (facade, used by the node's session backend)
//!  ├─ Ring            who owns a room/user (rendezvous hash; a ring of one on a single node)
//!  ├─ Hub             this node's sessions per room; delivers pushes, evicts slow consumers
//!  ├─ Supervisor<Room>  one Room actor per active room   (restart: one-for-one, 5 per 10 s)
//!  └─ Supervisor<User>  one User actor per connected user; quiet ones hibernate (a few
//!                       bytes of dormant state, no actor) until a message wakes them
//! ```
//!
//! Call rules (so bounded queues can never form a cycle): sessions → rooms and users; rooms →
//! hub and store; users → nothing. Rooms never call sessions (they push into bounded queues
//! through the hub) and never call users.

pub mod cluster;
pub mod facade;
pub mod hub;
mod remote;
pub mod ring;
pub mod room;
pub mod supervisor;
pub mod user;

pub use cluster::{ClusterView, Transport, TransportError};
pub use facade::{Rooms, RoomsConfig};
pub use hub::Hub;
pub use ring::Ring;
pub use room::{RoomConfig, RoomDeps};
pub use supervisor::RestartPolicy;
pub use user::UserConfig;
