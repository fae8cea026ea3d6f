//! The `parley` node: configuration, HTTP endpoints and the wiring of sessions to rooms.
//!
//! * [`cli`] / [`config`]: flags, environment, TOML file → one typed [`config::Config`].
//! * [`server`]: runtime layout, boot and graceful shutdown.
//! * [`backend`]: the session layer's `ChatBackend` implemented by the room layer.
//! * [`http`]: `/healthz`, `/readyz`, `/metrics`, `/debug`.
//! * [`telemetry`]: logs and the Prometheus recorder.

pub mod backend;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod memory;
pub mod server;
pub mod telemetry;
pub mod upgrade;
