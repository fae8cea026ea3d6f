//! Wire protocols the tool speaks: Parley's native `/ws` JSON protocol, and Socket.IO v4
//! (`42<id>[...]` events, `43<id>[...]` acks, `2`/`3` ping/pong; framing in `sio.rs`)
//! behind the same methods.
//!
//! The receive path never parses a whole frame: it looks at the frame's first bytes to
//! tell acks from `newMessage` pushes, and finds the send timestamp by searching the raw
//! text for [`MARK`]. Only frames in an unexpected shape go through `serde_json`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Marker written into message texts, followed by the send time (CLOCK_MONOTONIC µs)
/// and `~`. Room and user ids never contain `~`, so the marker is only found in texts.
pub const MARK: &[u8] = b"~lt";

static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(MARK));

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Parley's native JSON protocol at `GET /ws`.
    Native,
    /// Socket.IO v4 (Engine.IO v4, websocket transport), JWT in the CONNECT auth payload.
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

/// What the receive path needs to know about one incoming text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// An ack for request `id`; `error` holds the error code when it failed.
    Ack {
        id: u64,
        error: Option<Cow<'a, str>>,
    },
    /// A `newMessage` push; its text (and timestamp) is somewhere in the frame.
    NewMessage,
    /// Any other push, by event name (`error`, `userJoined`, `messageHistory`, ...).
    Event(Cow<'a, str>),
    /// Not a frame of this protocol.
    Unknown,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::SocketIo => "socketio",
        }
    }

    /// `{"event":"joinRoom","data":{"roomId":ROOM},"id":ID}` into `out` (cleared first).
    pub fn encode_join(self, room: &str, id: u64, out: &mut String) {
        if self == Protocol::SocketIo {
            return crate::sio::encode("joinRoom", room, None, id, out);
        }
        out.clear();
        let _ = write!(
            out,
            r#"{{"event":"joinRoom","data":{{"roomId":"{room}"}},"id":{id}}}"#
        );
    }

    pub fn encode_leave(self, room: &str, id: u64, out: &mut String) {
        if self == Protocol::SocketIo {
            return crate::sio::encode("leaveRoom", room, None, id, out);
        }
        out.clear();
        let _ = write!(
            out,
            r#"{{"event":"leaveRoom","data":{{"roomId":"{room}"}},"id":{id}}}"#
        );
    }

    /// A `sendMessage` whose text is `text` (already JSON-safe: see [`write_text`]).
    pub fn encode_send(self, room: &str, text: &str, id: u64, out: &mut String) {
        if self == Protocol::SocketIo {
            return crate::sio::encode("sendMessage", room, Some(text), id, out);
        }
        out.clear();
        let _ = write!(
            out,
            r#"{{"event":"sendMessage","data":{{"roomId":"{room}","text":"{text}"}},"id":{id}}}"#
        );
    }

    /// Classifies a frame by its first bytes; falls back to [`classify_slow`] (which
    /// allocates) only when the frame does not start the way the server writes it.
    pub fn classify(self, frame: &[u8]) -> (Incoming<'_>, bool) {
        if self == Protocol::SocketIo {
            return (crate::sio::classify(frame), false);
        }
        match classify_fast(frame) {
            Some(i) => (i, false),
            None => (classify_slow(frame), true),
        }
    }
}

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn classify_fast(frame: &[u8]) -> Option<Incoming<'_>> {
    if let Some(rest) = frame.strip_prefix(br#"{"ack":"#) {
        let (id, rest) = leading_u64(rest)?;
        if rest.starts_with(br#","data""#) {
            return Some(Incoming::Ack { id, error: None });
        }
        if rest.starts_with(br#","error""#) {
            let code = error_code(rest).unwrap_or("unknown");
            return Some(Incoming::Ack {
                id,
                error: Some(Cow::Borrowed(code)),
            });
        }
        return None;
    }
    let rest = frame.strip_prefix(br#"{"event":""#)?;
    let end = memchr::memchr(b'"', rest)?;
    let name = &rest[..end];
    if name == b"newMessage" {
        Some(Incoming::NewMessage)
    } else {
        Some(Incoming::Event(Cow::Borrowed(utf8(name)?)))
    }
}

/// `"code":"..."` value inside an error object (or an `error` push).
pub fn error_code(s: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""code":""#;
    let at = memchr::memmem::find(s, KEY)? + KEY.len();
    let len = memchr::memchr(b'"', &s[at..])?;
    utf8(&s[at..at + len])
}

/// Full JSON parse, for frames whose keys come in an unexpected order.
pub fn classify_slow(frame: &[u8]) -> Incoming<'static> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
        return Incoming::Unknown;
    };
    if let Some(id) = v.get("ack").and_then(|a| a.as_u64()) {
        let error = v.get("error").map(|e| {
            Cow::Owned(
                e.get("code")
                    .and_then(|c| c.as_str())
                    .unwrap_or("unknown")
                    .to_string(),
            )
        });
        return Incoming::Ack { id, error };
    }
    match v.get("event").and_then(|e| e.as_str()) {
        Some("newMessage") => Incoming::NewMessage,
        Some(name) => Incoming::Event(Cow::Owned(name.to_string())),
        None => Incoming::Unknown,
    }
}

/// Parses leading ASCII digits; returns the value and the bytes after them.
pub fn leading_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take(20).take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in &b[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((v, &b[n..]))
}

/// The send timestamp (µs) of the first marked text in `frame`, without parsing JSON.
pub fn find_timestamp(frame: &[u8]) -> Option<u64> {
    let at = FINDER.find(frame)? + MARK.len();
    leading_u64(&frame[at..]).map(|(v, _)| v)
}

/// How many marked texts a frame holds (messages in a history answer).
pub fn count_marks(frame: &[u8]) -> usize {
    FINDER.find_iter(frame).count()
}

/// Writes a message text carrying `ts_us`, padded with `x` to `size` bytes.
/// Output is plain ASCII, safe inside a JSON string without escaping.
pub fn write_text(out: &mut String, ts_us: u64, size: usize) {
    out.clear();
    out.push_str("~lt");
    let _ = write!(out, "{ts_us}~");
    while out.len() < size {
        out.push('x');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const P: Protocol = Protocol::Native;

    #[test]
    fn timestamp_round_trips_through_a_push() {
        let mut text = String::new();
        write_text(&mut text, 1_234_567_890_123, 64);
        assert_eq!(text.len(), 64);
        let frame = format!(
            r#"{{"event":"newMessage","data":{{"id":"01J","roomId":"r-1","seq":3,"userId":"u","username":"U","text":"{text}","attachments":[],"timestamp":1764421200123}}}}"#
        );
        assert_eq!(find_timestamp(frame.as_bytes()), Some(1_234_567_890_123));
        assert_eq!(P.classify(frame.as_bytes()), (Incoming::NewMessage, false));
    }

    #[test]
    fn short_size_keeps_the_whole_marker() {
        let mut text = String::new();
        write_text(&mut text, 42, 1);
        assert_eq!(text, "~lt42~");
        assert_eq!(find_timestamp(b"no marker here"), None);
        assert_eq!(find_timestamp(b"\"~lt\""), None);
        assert_eq!(find_timestamp(b"~lt99999999999999999999999~"), None);
    }

    #[test]
    fn marks_are_counted_in_history() {
        let f = r#"{"ack":1,"data":{"messages":[{"text":"~lt1~"},{"text":"~lt2~x"}]}}"#;
        assert_eq!(count_marks(f.as_bytes()), 2);
        assert_eq!(find_timestamp(f.as_bytes()), Some(1));
    }

    #[test]
    fn acks_and_errors_are_told_apart() {
        assert_eq!(
            P.classify(br#"{"ack":17,"data":{"seq":1}}"#),
            (
                Incoming::Ack {
                    id: 17,
                    error: None
                },
                false
            )
        );
        let (i, slow) =
            P.classify(br#"{"ack":9,"error":{"code":"rate_limited","message":"too many"}}"#);
        assert!(!slow);
        assert_eq!(
            i,
            Incoming::Ack {
                id: 9,
                error: Some(Cow::Borrowed("rate_limited"))
            }
        );
        assert_eq!(
            P.classify(br#"{"event":"userJoined","data":{}}"#).0,
            Incoming::Event(Cow::Borrowed("userJoined"))
        );
    }

    #[test]
    fn unexpected_key_order_takes_the_slow_path() {
        let (i, slow) = P.classify(br#"{"data":{"x":1},"ack":5}"#);
        assert!(slow);
        assert_eq!(i, Incoming::Ack { id: 5, error: None });
        let (i, slow) = P.classify(br#"{"data":{},"event":"newMessage"}"#);
        assert!(slow);
        assert_eq!(i, Incoming::NewMessage);
        assert_eq!(P.classify(b"not json").0, Incoming::Unknown);
    }

    #[test]
    fn requests_are_valid_json() {
        let mut out = String::new();
        P.encode_send("room-1", "~lt5~xx", 3, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["event"], "sendMessage");
        assert_eq!(v["data"]["roomId"], "room-1");
        assert_eq!(v["data"]["text"], "~lt5~xx");
        assert_eq!(v["id"], 3);
        P.encode_join("room-1", 4, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["id"].as_u64()),
            (Some("joinRoom"), Some(4))
        );
        P.encode_leave("room-1", 5, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["event"], "leaveRoom");
    }
}
