//! The native JSON protocol (`docs/protocol.md`): parsing requests and encoding answers.
//!
//! Pure functions, no I/O. Parsing validates everything a client controls (ids, lengths,
//! types, attachment counts) so the layers below receive only well-formed requests.

use std::borrow::Cow;

use cluster_proto::api::SendRequest;
use cluster_proto::{ApiError, ErrorCode, RoomId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::Limits;

/// The events a client may send (plus `Unknown`, for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    JoinRoom,
    LeaveRoom,
    SendMessage,
    Typing,
    MarkRead,
    History,
    Resume,
    Unknown,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::JoinRoom,
        EventKind::LeaveRoom,
        EventKind::SendMessage,
        EventKind::Typing,
        EventKind::MarkRead,
        EventKind::History,
        EventKind::Resume,
        EventKind::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JoinRoom => "joinRoom",
            EventKind::LeaveRoom => "leaveRoom",
            EventKind::SendMessage => "sendMessage",
            EventKind::Typing => "typing",
            EventKind::MarkRead => "markRead",
            EventKind::History => "history",
            EventKind::Resume => "resume",
            EventKind::Unknown => "unknown",
        }
    }

    /// The kind of a client event name (`Unknown` for anything else).
    pub fn from_name(name: &str) -> EventKind {
        EventKind::ALL
            .into_iter()
            .find(|e| *e != EventKind::Unknown && e.as_str() == name)
            .unwrap_or(EventKind::Unknown)
    }
}

/// A validated request.
#[derive(Debug, Clone)]
pub enum Request {
    Join {
        room: RoomId,
    },
    Leave {
        room: RoomId,
    },
    Send(SendRequest),
    Typing {
        room: RoomId,
        is_typing: bool,
    },
    MarkRead {
        room: RoomId,
        up_to_seq: u64,
    },
    History {
        room: RoomId,
        before: Option<u64>,
        limit: Option<usize>,
    },
    Resume {
        room: RoomId,
        after_seq: u64,
    },
}

impl Request {
    /// The room the request is about.
    pub fn room(&self) -> &RoomId {
        match self {
            Request::Join { room }
            | Request::Leave { room }
            | Request::Typing { room, .. }
            | Request::MarkRead { room, .. }
            | Request::History { room, .. }
            | Request::Resume { room, .. } => room,
            Request::Send(s) => &s.room,
        }
    }
}

/// A request that could not be accepted, with what is known of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<u64>,
    pub event: EventKind,
    pub error: ApiError,
}

/// A parsed frame.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub id: Option<u64>,
    pub event: EventKind,
    pub request: Request,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoomOnly {
    room_id: RoomId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendData<'a> {
    room_id: RoomId,
    #[serde(default)]
    text: String,
    #[serde(borrow, default)]
    attachments: Option<&'a RawValue>,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypingData {
    room_id: RoomId,
    is_typing: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkReadData {
    room_id: RoomId,
    up_to_seq: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryData {
    room_id: RoomId,
    #[serde(default)]
    before_seq: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeData {
    room_id: RoomId,
    after_seq: u64,
}

/// Longest `clientMsgId`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 64;

pub(crate) fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidPayload, msg)
}

pub(crate) fn payload<T: DeserializeOwned>(data: Option<&RawValue>) -> Result<T, ApiError> {
    let raw = data.ok_or_else(|| invalid("missing data"))?;
    serde_json::from_str(raw.get()).map_err(|e| invalid(format!("invalid data: {e}")))
}

/// Parses one text frame.
pub fn parse(text: &str, limits: &Limits) -> Result<Incoming, Rejected> {
    let frame: Frame = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::BadFrame
        } else {
            ErrorCode::BadJson
        };
        Rejected {
            id: None,
            event: EventKind::Unknown,
            error: ApiError::new(code, format!("{e}")),
        }
    })?;
    let event = EventKind::from_name(&frame.event);
    let request =
        parse_request(event, &frame.event, frame.data, limits).map_err(|error| Rejected {
            id: frame.id,
            event,
            error,
        })?;
    Ok(Incoming {
        id: frame.id,
        event,
        request,
    })
}

/// Validates the `data` of an event named `name` (of kind `event`). Shared by every client
/// protocol: the Socket.IO transport calls it with the first argument of an EVENT packet.
pub fn parse_request(
    event: EventKind,
    name: &str,
    data: Option<&RawValue>,
    limits: &Limits,
) -> Result<Request, ApiError> {
    match event {
        EventKind::Unknown => {
            let mut short: String = name.chars().take(64).collect();
            if name.len() > short.len() {
                short.push('…');
            }
            Err(ApiError::new(
                ErrorCode::UnknownEvent,
                format!("unknown event {short:?}"),
            ))
        }
        EventKind::JoinRoom => payload::<RoomOnly>(data).map(|d| Request::Join { room: d.room_id }),
        EventKind::LeaveRoom => {
            payload::<RoomOnly>(data).map(|d| Request::Leave { room: d.room_id })
        }
        EventKind::SendMessage => parse_send(data, limits),
        EventKind::Typing => payload::<TypingData>(data).map(|d| Request::Typing {
            room: d.room_id,
            is_typing: d.is_typing,
        }),
        EventKind::MarkRead => payload::<MarkReadData>(data).map(|d| Request::MarkRead {
            room: d.room_id,
            up_to_seq: d.up_to_seq,
        }),
        EventKind::History => payload::<HistoryData>(data).map(|d| Request::History {
            room: d.room_id,
            before: d.before_seq,
            limit: d.limit,
        }),
        EventKind::Resume => payload::<ResumeData>(data).map(|d| Request::Resume {
            room: d.room_id,
            after_seq: d.after_seq,
        }),
    }
}

fn parse_send(data: Option<&RawValue>, limits: &Limits) -> Result<Request, ApiError> {
    let raw = data.ok_or_else(|| invalid("missing data"))?;
    let d: SendData =
        serde_json::from_str(raw.get()).map_err(|e| invalid(format!("invalid data: {e}")))?;
    if d.text.chars().count() > limits.max_text_chars {
        return Err(ApiError::new(
            ErrorCode::TextTooLong,
            format!("text is longer than {} characters", limits.max_text_chars),
        ));
    }
    let attachments = match d.attachments {
        None => "[]".to_string(),
        Some(raw) if raw.get() == "null" => "[]".to_string(),
        Some(raw) => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get())
                .map_err(|_| invalid("attachments must be an array"))?;
            if items.len() > limits.max_attachments {
                return Err(ApiError::new(
                    ErrorCode::TooManyAttachments,
                    format!("at most {} attachments", limits.max_attachments),
                ));
            }
            raw.get().to_string()
        }
    };
    if d.text.is_empty() && attachments == "[]" {
        return Err(invalid("a message needs text or attachments"));
    }
    if let Some(c) = &d.client_msg_id {
        if c.is_empty() || c.len() > MAX_CLIENT_MSG_ID {
            return Err(invalid(format!(
                "clientMsgId must be 1-{MAX_CLIENT_MSG_ID} bytes"
            )));
        }
    }
    Ok(Request::Send(SendRequest {
        room: d.room_id,
        text: d.text,
        attachments,
        client_msg_id: d.client_msg_id,
    }))
}

/// `{"code":..,"message":..,"event":..}`, the error object of every client protocol.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
}

impl<'a> ErrorBody<'a> {
    /// Names `event` unless it is `None` or `Unknown`.
    pub(crate) fn of(err: &'a ApiError, event: Option<EventKind>) -> Self {
        ErrorBody {
            code: err.code.as_str(),
            message: &err.message,
            event: event
                .filter(|e| *e != EventKind::Unknown)
                .map(EventKind::as_str),
        }
    }
}

#[derive(Serialize)]
struct AckOk<'a, T: Serialize> {
    ack: u64,
    data: &'a T,
}

#[derive(Serialize)]
struct AckErr<'a> {
    ack: u64,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct Pushed<'a> {
    event: &'static str,
    data: ErrorBody<'a>,
}

/// `{"ack":id,"data":...}`
pub fn ack_ok(id: u64, data: &impl Serialize) -> String {
    serde_json::to_string(&AckOk { ack: id, data })
        .unwrap_or_else(|_| ack_err(id, &ApiError::new(ErrorCode::Internal, "encode failed")))
}

/// `{"ack":id,"error":{"code":...,"message":...}}`
pub fn ack_err(id: u64, err: &ApiError) -> String {
    let body = AckErr {
        ack: id,
        error: ErrorBody::of(err, None),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// `{"event":"error","data":{"code":...,"message":...,"event":...}}`
pub fn error_push(event: EventKind, err: &ApiError) -> String {
    let body = Pushed {
        event: "error",
        data: ErrorBody::of(err, Some(event)),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// The answer to a rejected or failed request: an ack if it had an id, else an error push.
pub fn answer_error(id: Option<u64>, event: EventKind, err: &ApiError) -> String {
    match id {
        Some(id) => ack_err(id, err),
        None => error_push(event, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Incoming, Rejected> {
        parse(s, &Limits::default())
    }

    fn code(s: &str) -> (Option<u64>, ErrorCode) {
        let r = p(s).unwrap_err();
        (r.id, r.error.code)
    }

    #[test]
    fn parses_every_event() {
        let i = p(r#"{"event":"joinRoom","data":{"roomId":"lobby"},"id":1}"#).unwrap();
        assert_eq!(i.id, Some(1));
        assert!(matches!(i.request, Request::Join { .. }));
        let i = p(r#"{"event":"sendMessage","data":{"roomId":"r","text":"hi","attachments":[{"u":1}],"clientMsgId":"c1"}}"#).unwrap();
        match i.request {
            Request::Send(s) => {
                assert_eq!(s.text, "hi");
                assert_eq!(s.attachments, r#"[{"u":1}]"#);
                assert_eq!(s.client_msg_id.as_deref(), Some("c1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p(r#"{"event":"typing","data":{"roomId":"r","isTyping":true}}"#)
                .unwrap()
                .request,
            Request::Typing {
                is_typing: true,
                ..
            }
        ));
        assert!(matches!(
            p(r#"{"event":"markRead","data":{"roomId":"r","upToSeq":5}}"#)
                .unwrap()
                .request,
            Request::MarkRead { up_to_seq: 5, .. }
        ));
        assert!(matches!(
            p(r#"{"event":"history","data":{"roomId":"r","beforeSeq":9,"limit":3}}"#)
                .unwrap()
                .request,
            Request::History {
                before: Some(9),
                limit: Some(3),
                ..
            }
        ));
        assert!(matches!(
            p(r#"{"event":"resume","data":{"roomId":"r","afterSeq":0}}"#)
                .unwrap()
                .request,
            Request::Resume { after_seq: 0, .. }
        ));
        assert!(matches!(
            p(r#"{"event":"leaveRoom","data":{"roomId":"r"}}"#)
                .unwrap()
                .request,
            Request::Leave { .. }
        ));
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("not json"), (None, ErrorCode::BadJson));
        assert_eq!(code("{\"event\":"), (None, ErrorCode::BadJson));
        assert_eq!(code("[1,2]"), (None, ErrorCode::BadFrame));
        assert_eq!(code(r#"{"data":{}}"#), (None, ErrorCode::BadFrame));
        assert_eq!(
            code(r#"{"event":"x","id":-1}"#),
            (None, ErrorCode::BadFrame)
        );
        assert_eq!(
            code(r#"{"event":"nope","id":3}"#),
            (Some(3), ErrorCode::UnknownEvent)
        );
        assert_eq!(
            code(r#"{"event":"joinRoom","id":4}"#),
            (Some(4), ErrorCode::InvalidPayload)
        );
        assert_eq!(
            code(r#"{"event":"joinRoom","data":{"roomId":7},"id":5}"#),
            (Some(5), ErrorCode::InvalidPayload)
        );
        assert_eq!(
            code(r#"{"event":"joinRoom","data":{"roomId":"has space"}}"#),
            (None, ErrorCode::InvalidPayload)
        );
        assert_eq!(
            code(r#"{"event":"typing","data":{"roomId":"r","isTyping":"yes"}}"#),
            (None, ErrorCode::InvalidPayload)
        );
        assert_eq!(
            code(r#"{"event":"sendMessage","data":{"roomId":"r","text":""}}"#),
            (None, ErrorCode::InvalidPayload)
        );
        assert_eq!(
            code(
                r#"{"event":"sendMessage","data":{"roomId":"r","text":"x","attachments":{"a":1}}}"#
            ),
            (None, ErrorCode::InvalidPayload)
        );
        let long = format!(
            r#"{{"event":"sendMessage","data":{{"roomId":"r","text":"{}"}}}}"#,
            "é".repeat(8001)
        );
        assert_eq!(code(&long), (None, ErrorCode::TextTooLong));
        let many = format!(
            r#"{{"event":"sendMessage","data":{{"roomId":"r","text":"x","attachments":[{}]}}}}"#,
            ["1"; 11].join(",")
        );
        assert_eq!(code(&many), (None, ErrorCode::TooManyAttachments));
        let cid = format!(
            r#"{{"event":"sendMessage","data":{{"roomId":"r","text":"x","clientMsgId":"{}"}}}}"#,
            "c".repeat(65)
        );
        assert_eq!(code(&cid), (None, ErrorCode::InvalidPayload));
    }

    #[test]
    fn unknown_event_names_are_truncated() {
        let r = p(&format!(r#"{{"event":"{}"}}"#, "x".repeat(10_000))).unwrap_err();
        assert!(r.error.message.len() < 100);
    }

    #[test]
    fn encodes_answers() {
        assert_eq!(
            ack_ok(3, &serde_json::json!({"a":1})),
            r#"{"ack":3,"data":{"a":1}}"#
        );
        let e = ApiError::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(
            ack_err(4, &e),
            r#"{"ack":4,"error":{"code":"rate_limited","message":"slow down"}}"#
        );
        assert_eq!(
            answer_error(None, EventKind::Typing, &e),
            r#"{"event":"error","data":{"code":"rate_limited","message":"slow down","event":"typing"}}"#
        );
    }
}
