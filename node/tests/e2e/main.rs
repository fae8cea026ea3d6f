//! Whole-server tests: each starts real `parley` processes and talks to them over WebSockets.

mod harness;

mod auth;
mod chat;
mod faults;
mod limits;
mod presence;
mod restart;
