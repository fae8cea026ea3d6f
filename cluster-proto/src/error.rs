//! Stable error codes. Clients branch on [`ErrorCode::as_str`]; the text is for humans.
//! Adding a code is compatible; renaming one is a breaking protocol change.

use std::fmt;

use bincode::{Decode, Encode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ErrorCode {
    BadJson,
    BadFrame,
    UnknownEvent,
    InvalidPayload,
    BinaryNotSupported,
    TextTooLong,
    TooManyAttachments,
    TooManyRooms,
    NotInRoom,
    RateLimited,
    Overloaded,
    StoreUnavailable,
    RoomUnavailable,
    Timeout,
    Internal,
    /// The room (or user) is changing owner node; retry shortly. Added in protocol 1; new
    /// codes go at the end (the wire encodes the variant index).
    RoomMoved,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadJson,
        ErrorCode::BadFrame,
        ErrorCode::UnknownEvent,
        ErrorCode::InvalidPayload,
        ErrorCode::BinaryNotSupported,
        ErrorCode::TextTooLong,
        ErrorCode::TooManyAttachments,
        ErrorCode::TooManyRooms,
        ErrorCode::NotInRoom,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::StoreUnavailable,
        ErrorCode::RoomUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::RoomMoved,
    ];

    /// True for failures of the server or its dependencies (a store that is down, a room
    /// that restarted, a deadline, a bug), as opposed to a request the client should not have
    /// sent. A client retrying through an outage must not be treated as a flood.
    pub fn is_server_side(self) -> bool {
        matches!(
            self,
            ErrorCode::StoreUnavailable
                | ErrorCode::RoomUnavailable
                | ErrorCode::Timeout
                | ErrorCode::Internal
                | ErrorCode::RoomMoved
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::TooManyAttachments => "too_many_attachments",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::RoomUnavailable => "room_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::RoomMoved => "room_moved",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to a client request.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_the_server_are_server_side() {
        let server: Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| c.is_server_side())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            server,
            [
                "store_unavailable",
                "room_unavailable",
                "timeout",
                "internal",
                "room_moved"
            ]
        );
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
