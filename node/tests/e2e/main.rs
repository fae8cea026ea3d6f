//! Whole-server tests: each starts real `parley` processes and talks to them over WebSockets.

mod harness;

mod auth;
mod chat;
mod cql;
mod cql_store;
mod faults;
mod limits;
mod presence;
mod restart;
mod socketio;
mod telemetry;
