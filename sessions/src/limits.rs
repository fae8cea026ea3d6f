//! Per-connection limits. Every number a client can push against has a bound here.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame, and largest reassembled fragmented message, in bytes. Default 1 MiB
    /// (the Socket.IO server's `maxHttpBufferSize`). Larger: close 1009.
    pub max_frame_bytes: usize,
    /// Longest message `text`, in characters. Default 8000.
    pub max_text_chars: usize,
    /// Most entries in `attachments`. Default 10.
    pub max_attachments: usize,
    /// Most rooms one connection may be in. Default 100.
    pub max_rooms_per_connection: usize,
    /// Requests of one connection waiting for an answer. Default 256.
    pub max_inflight: usize,
    /// Pushes queued for one connection before it is closed as a slow consumer. Default 1024.
    pub outbound_queue: usize,
    /// Rejected requests in a row before the connection is closed (4029). Default 100.
    pub max_consecutive_errors: u32,
    /// After a slow-consumer eviction, how long the session may take to close before its
    /// socket is shut down under it. Default 2 s.
    pub slow_consumer_grace: Duration,
    /// Server ping period. Default 25 s.
    pub heartbeat_interval: Duration,
    /// Close a connection silent for this long. Default 60 s.
    pub client_timeout: Duration,
    /// Socket.IO (Engine.IO) sessions at once; one more handshake is answered `503`
    /// `server_full`. A long-polling session holds no socket, so the node's connection limit
    /// alone would not bound them. Default 100,000 (`parley-node` sets its `max_connections`).
    pub max_engine_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_text_chars: 8000,
            max_attachments: 10,
            max_rooms_per_connection: 100,
            max_inflight: 256,
            outbound_queue: 1024,
            max_consecutive_errors: 100,
            slow_consumer_grace: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(25),
            client_timeout: Duration::from_secs(60),
            max_engine_sessions: 100_000,
        }
    }
}
