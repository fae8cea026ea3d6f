//! Why a session ended. Every session ends with exactly one reason, which is logged, counted
//! (`parley_connection_closes_total{reason}`) and, where the socket still works, sent as the
//! WebSocket close code. The codes and the advice to clients are in `docs/protocol.md`.

use actix_web_actors::ws;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the socket.
    Normal,
    /// The client vanished without a close frame (reset, TCP user timeout).
    ClientGone,
    /// The node is shutting down.
    Shutdown,
    /// Invalid WebSocket framing.
    ProtocolError,
    /// A frame or fragmented message exceeded `max_frame_bytes`.
    MessageTooBig,
    /// Nothing heard from the client for `client_timeout`.
    HeartbeatTimeout,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// Too many rejected requests in a row.
    Flood,
    /// A server bug.
    Internal,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Normal,
        CloseReason::ClientGone,
        CloseReason::Shutdown,
        CloseReason::ProtocolError,
        CloseReason::MessageTooBig,
        CloseReason::HeartbeatTimeout,
        CloseReason::SlowConsumer,
        CloseReason::Flood,
        CloseReason::Internal,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ClientGone => "client_gone",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Flood => "flood",
            CloseReason::Internal => "internal",
        }
    }

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal | CloseReason::ClientGone => 1000,
            CloseReason::Shutdown => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::MessageTooBig => 1009,
            CloseReason::Internal => 1011,
            CloseReason::HeartbeatTimeout => 4000,
            CloseReason::SlowConsumer => 4008,
            CloseReason::Flood => 4029,
        }
    }

    /// The close frame to send.
    pub fn frame(self) -> ws::CloseReason {
        let code = match self.code() {
            1000 => ws::CloseCode::Normal,
            1001 => ws::CloseCode::Away,
            1002 => ws::CloseCode::Protocol,
            1009 => ws::CloseCode::Size,
            1011 => ws::CloseCode::Error,
            other => ws::CloseCode::Other(other),
        };
        ws::CloseReason {
            code,
            description: Some(self.as_str().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_documented_values() {
        let codes: Vec<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [1000, 1000, 1001, 1002, 1009, 4000, 4008, 4029, 1011]
        );
        assert_eq!(u16::from(CloseReason::SlowConsumer.frame().code), 4008);
        assert_eq!(u16::from(CloseReason::MessageTooBig.frame().code), 1009);
    }
}
