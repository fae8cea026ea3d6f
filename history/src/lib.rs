//! Message history: the [`HistoryStore`] trait and its implementations.
//!
//! A room's owner assigns sequence numbers and hands writes to the store; the sender's ack
//! waits for the store to say the write is durable. The trait is small on purpose: every
//! implementation (the embedded fjall store here, the ScyllaDB store) must pass one contract
//! suite, and the room actor must not care which one it talks to.
//!
//! * [`store`]: the trait, the write ops and the error type.
//! * [`embedded`]: the default on-disk store (fjall), one group-committing writer thread.
//! * [`scylla`]: the ScyllaDB / Cassandra store, for history that outlives a node.
//! * [`memory`]: an in-memory database with one handle per simulated node, for tests and
//!   in-process cluster simulations.

pub mod embedded;
pub mod memory;
pub mod scylla;
pub mod store;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;
pub use store::{Claim, HistoryStore, Receipt, RoomMeta, StoreError, WriteOp, WriteTicket};
