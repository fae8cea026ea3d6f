//! The seed's Socket.IO events mapped onto Parley requests, and Parley answers encoded as
//! Socket.IO packets. Pure functions, no I/O.
//!
//! * An EVENT's first argument is the event's data, validated by [`protocol::parse_request`]
//!   exactly as `/ws` validates `data`; further arguments are ignored.
//! * `markRead` also accepts the seed's `{roomId, messageIds}`: message ids are
//!   `"<roomId>:<seq>"`, so the receipt moves up to the highest seq among them.
//! * An ack callback receives one argument: the `/ws` ack `data` on success, or
//!   `{"error":{"code","message"}}` on failure (`docs/socketio.md`).

use cluster_proto::{ApiError, ErrorCode, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::packet;
use crate::limits::Limits;
use crate::protocol::{self, ErrorBody, EventKind, Request};

/// Most ids one seed-style `markRead` may list.
pub const MAX_MESSAGE_IDS: usize = 10_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkReadAny {
    room_id: RoomId,
    #[serde(default)]
    up_to_seq: Option<u64>,
    #[serde(default)]
    message_ids: Option<Vec<String>>,
}

/// `markRead` with either `upToSeq` or the seed's `messageIds`.
fn mark_read(data: Option<&RawValue>) -> Result<Request, ApiError> {
    let d: MarkReadAny = protocol::payload(data)?;
    let up_to_seq = match (d.up_to_seq, d.message_ids) {
        (Some(seq), _) => seq,
        (None, Some(ids)) => highest_seq(&d.room_id, &ids)?,
        (None, None) => return Err(protocol::invalid("markRead needs upToSeq or messageIds")),
    };
    Ok(Request::MarkRead {
        room: d.room_id,
        up_to_seq,
    })
}

/// The highest seq among message ids `"<room>:<seq>"` of `room`.
pub fn highest_seq(room: &RoomId, ids: &[String]) -> Result<u64, ApiError> {
    if ids.is_empty() || ids.len() > MAX_MESSAGE_IDS {
        return Err(protocol::invalid(format!(
            "messageIds must list 1-{MAX_MESSAGE_IDS} ids"
        )));
    }
    let mut max = 0;
    for id in ids {
        let seq = id
            .rsplit_once(':')
            .filter(|(r, _)| *r == room.as_str())
            .and_then(|(_, s)| s.parse::<u64>().ok())
            .ok_or_else(|| {
                let short: String = id.chars().take(140).collect();
                protocol::invalid(format!("{short:?} is not a message id of this room"))
            })?;
        max = max.max(seq);
    }
    Ok(max)
}

/// An EVENT's argument array as a request: `Err` carries what is known for the answer.
pub fn parse_event(
    args: &str,
    limits: &Limits,
) -> Result<(EventKind, Request), (EventKind, ApiError)> {
    let (name, data) = packet::event_name(args).map_err(|e| {
        (
            EventKind::Unknown,
            ApiError::new(ErrorCode::BadFrame, e.to_string()),
        )
    })?;
    let event = EventKind::from_name(&name);
    let req = if event == EventKind::MarkRead {
        mark_read(data)
    } else {
        protocol::parse_request(event, &name, data, limits)
    };
    req.map(|r| (event, r)).map_err(|e| (event, e))
}

#[derive(Serialize)]
struct ErrorAck<'a> {
    error: ErrorBody<'a>,
}

/// `43<id>[<data>]`
pub fn ack_ok(id: u64, data: &impl Serialize) -> String {
    match serde_json::to_string(data) {
        Ok(json) => packet::ack(id, &json),
        Err(_) => ack_err(id, &ApiError::new(ErrorCode::Internal, "encode failed")),
    }
}

/// `43<id>[{"error":{"code":..,"message":..}}]`
pub fn ack_err(id: u64, err: &ApiError) -> String {
    let body = ErrorAck {
        error: ErrorBody::of(err, None),
    };
    packet::ack(id, &serde_json::to_string(&body).unwrap_or_default())
}

/// `42["error",{"code":..,"message":..,"event":..}]`
pub fn error_event(event: EventKind, err: &ApiError) -> String {
    let body = ErrorBody::of(err, Some(event));
    packet::event("error", &serde_json::to_string(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<(EventKind, Request), (EventKind, ApiError)> {
        parse_event(args, &Limits::default())
    }

    #[test]
    fn maps_the_seed_events() {
        let (e, r) = parse(r#"["joinRoom",{"roomId":"lobby"}]"#).unwrap();
        assert_eq!(e, EventKind::JoinRoom);
        assert!(matches!(r, Request::Join { .. }));
        let (e, r) = parse(r#"["sendMessage",{"text":"Hello!","roomId":"123"}]"#).unwrap();
        assert_eq!(e, EventKind::SendMessage);
        assert!(matches!(r, Request::Send(s) if s.text == "Hello!"));
        let (_, r) = parse(r#"["typing",{"roomId":"r","isTyping":true}]"#).unwrap();
        assert!(matches!(
            r,
            Request::Typing {
                is_typing: true,
                ..
            }
        ));
        let (_, r) = parse(r#"["leaveRoom",{"roomId":"r"}]"#).unwrap();
        assert!(matches!(r, Request::Leave { .. }));
        let (_, r) = parse(r#"["markRead",{"roomId":"r","upToSeq":4}]"#).unwrap();
        assert!(matches!(r, Request::MarkRead { up_to_seq: 4, .. }));
        let (_, r) =
            parse(r#"["markRead",{"roomId":"a:b","messageIds":["a:b:3","a:b:12","a:b:7"]}]"#)
                .unwrap();
        assert!(matches!(r, Request::MarkRead { up_to_seq: 12, .. }));
    }

    #[test]
    fn refuses_bad_events() {
        let code = |s: &str| parse(s).unwrap_err();
        assert_eq!(code(r#"["nope",{}]"#).1.code, ErrorCode::UnknownEvent);
        assert_eq!(code(r#"["joinRoom"]"#).1.code, ErrorCode::InvalidPayload);
        assert_eq!(
            code(r#"["markRead",{"roomId":"r","messageIds":["other:3"]}]"#)
                .1
                .code,
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(r#"["markRead",{"roomId":"r","messageIds":[]}]"#)
                .1
                .code,
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(r#"["markRead",{"roomId":"r","messageIds":["r:x"]}]"#)
                .1
                .code,
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(r#"["markRead",{"roomId":"r"}]"#).0,
            EventKind::MarkRead
        );
        assert_eq!(code(r#"[1]"#).1.code, ErrorCode::BadFrame);
    }

    #[test]
    fn encodes_answers() {
        assert_eq!(ack_ok(3, &serde_json::json!({"a":1})), r#"433[{"a":1}]"#);
        let e = ApiError::new(ErrorCode::NotInRoom, "join the room first");
        assert_eq!(
            ack_err(4, &e),
            r#"434[{"error":{"code":"not_in_room","message":"join the room first"}}]"#
        );
        assert_eq!(
            error_event(EventKind::Typing, &e),
            r#"42["error",{"code":"not_in_room","message":"join the room first","event":"typing"}]"#
        );
    }
}
