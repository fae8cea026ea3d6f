//! The chat message: what a room's owner assigns, the store keeps and clients receive.

use bincode::{Decode, Encode};
use serde::{Serialize, Serializer};

use crate::ids::{RoomId, UserId};

/// One stored chat message. `seq` is per room, starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Globally unique id: `<roomId>:<seq>`, stable across resends.
    pub id: String,
    pub room_id: RoomId,
    pub seq: u64,
    pub user_id: UserId,
    pub username: String,
    pub text: String,
    /// The client's attachments as a JSON array, kept verbatim (validated at the edge).
    #[serde(serialize_with = "raw_json")]
    pub attachments: String,
    /// Milliseconds since the Unix epoch, assigned by the room's owner.
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

impl ChatMessage {
    /// The message id for `seq` in `room`: unique across rooms (the seq is after the last
    /// `:`), readable in logs.
    pub fn make_id(room: &RoomId, seq: u64) -> String {
        format!("{room}:{seq}")
    }
}

fn raw_json<S: Serializer>(s: &str, ser: S) -> Result<S::Ok, S::Error> {
    match serde_json::value::RawValue::from_string(s.to_owned()) {
        Ok(raw) => raw.serialize(ser),
        // Stored attachments are validated on the way in; a corrupt row still renders.
        Err(_) => [(); 0].serialize(ser),
    }
}

/// A room member as shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: UserId,
    pub username: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_camel_case_with_raw_attachments() {
        let m = ChatMessage {
            id: "x-1".into(),
            room_id: RoomId::new("r").unwrap(),
            seq: 1,
            user_id: UserId::new("u").unwrap(),
            username: "U".into(),
            text: "hi".into(),
            attachments: r#"[{"url":"a"}]"#.into(),
            timestamp: 5,
            client_msg_id: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"x-1","roomId":"r","seq":1,"userId":"u","username":"U","text":"hi","attachments":[{"url":"a"}],"timestamp":5}"#
        );
    }
}
