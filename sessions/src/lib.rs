//! Client sessions: everything between a WebSocket and the room layer.
//!
//! ```text
//! HTTP upgrade ─ endpoint (auth, origin, limits) ─► WsSession (actix actor, one per socket)
//!                                                     │  requests: protocol::parse → ChatBackend
//!                                                     ◄─ pushes: Outbox (bounded) ← rooms' fan-out
//! ```
//!
//! This crate does not know about rooms or actors beyond its own: it declares the
//! [`ChatBackend`] trait it needs, and the `node` crate implements it with the room layer. The
//! wire protocol (`docs/protocol.md`) is parsed and encoded in [`protocol`], independent of the
//! transport, so it is tested without sockets.
//!
//! `/socket.io/` ([`socketio`]) serves Socket.IO clients over Engine.IO's WebSocket and
//! long-polling transports, with the chat logic `/ws` uses (the private `chat` module).

pub mod auth;
pub mod backend;
mod chat;
pub mod close;
pub mod conn;
pub mod doorbell;
pub mod egress;
pub mod endpoint;
mod fragments;
pub mod limits;
pub mod outbox;
pub mod protocol;
pub mod session;
pub mod socketio;
mod stats;

pub use auth::{AuthConfig, AuthError, Authenticator};
pub use backend::{BackendFuture, ChatBackend};
pub use close::CloseReason;
pub use endpoint::{ws_endpoint, SessionsContext};
pub use limits::Limits;
pub use socketio::socketio_endpoint;
pub use stats::register_metrics;
