//! A server → client push, serialized once.
//!
//! A room fans one event out to many sessions. The event's JSON `data` is serialized once when
//! the [`Push`] is made; each client protocol's whole frame (`{"event":..,"data":..}` for `/ws`,
//! `42["event",..]` for Socket.IO) is built at most once, on first use, and then shared by
//! reference count. Fan-out therefore clones an `Arc`, never bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use bytestring::ByteString;
use serde::Serialize;

use crate::ids::RoomId;

/// The events a server pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushKind {
    MessageHistory,
    NewMessage,
    UserJoined,
    UserLeft,
    UserTyping,
    MessagesRead,
    Resync,
    Error,
}

impl PushKind {
    pub fn event_name(self) -> &'static str {
        match self {
            PushKind::MessageHistory => "messageHistory",
            PushKind::NewMessage => "newMessage",
            PushKind::UserJoined => "userJoined",
            PushKind::UserLeft => "userLeft",
            PushKind::UserTyping => "userTyping",
            PushKind::MessagesRead => "messagesRead",
            PushKind::Resync => "resync",
            PushKind::Error => "error",
        }
    }
}

/// Which client protocol a cached frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    Native = 0,
    SocketIo = 1,
}

/// One pushed event with its data already serialized to JSON.
#[derive(Debug)]
pub struct Push {
    pub kind: PushKind,
    /// The room it belongs to, if any (used to order pushes against a join's history).
    pub room: Option<RoomId>,
    /// The message seq for `newMessage`.
    pub seq: Option<u64>,
    data: Bytes,
    frames: [OnceLock<ByteString>; 2],
    /// The frames above framed for a transport (a WebSocket text frame), built once.
    wire: [OnceLock<Bytes>; 2],
}

impl Push {
    /// Serializes `data` once. Serialization of our own plain structs cannot fail; if it ever
    /// did the push carries `null` rather than taking a room down.
    pub fn new(
        kind: PushKind,
        room: Option<RoomId>,
        seq: Option<u64>,
        data: &impl Serialize,
    ) -> Arc<Push> {
        let data = serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec());
        Arc::new(Push {
            kind,
            room,
            seq,
            data: Bytes::from(data),
            frames: [OnceLock::new(), OnceLock::new()],
            wire: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// Rebuilds a push from data serialized elsewhere (another node). `data` must be JSON.
    pub fn from_json(
        kind: PushKind,
        room: Option<RoomId>,
        seq: Option<u64>,
        data: Bytes,
    ) -> Arc<Push> {
        Arc::new(Push {
            kind,
            room,
            seq,
            data,
            frames: [OnceLock::new(), OnceLock::new()],
            wire: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The JSON of `data`.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The JSON of `data` as text.
    pub fn data_str(&self) -> &str {
        // Built from serde_json output or checked JSON, hence UTF-8.
        std::str::from_utf8(&self.data).unwrap_or("null")
    }

    /// The `/ws` frame: `{"event":"<name>","data":<data>}`, built once.
    pub fn native_frame(&self) -> ByteString {
        self.frame(FrameFormat::Native, |p| {
            let name = p.kind.event_name();
            let mut s = String::with_capacity(p.data.len() + name.len() + 20);
            s.push_str("{\"event\":\"");
            s.push_str(name);
            s.push_str("\",\"data\":");
            s.push_str(p.data_str());
            s.push('}');
            ByteString::from(s)
        })
    }

    /// The frame for `format`, built by `build` on first use and shared afterwards.
    pub fn frame(
        &self,
        format: FrameFormat,
        build: impl FnOnce(&Push) -> ByteString,
    ) -> ByteString {
        self.frames[format as usize]
            .get_or_init(|| build(self))
            .clone()
    }

    /// The frame for `format` as the bytes a transport writes (e.g. with a WebSocket header),
    /// built by `build` on first use; every recipient shares them.
    pub fn wire_frame(&self, format: FrameFormat, build: impl FnOnce(&Push) -> Bytes) -> Bytes {
        self.wire[format as usize]
            .get_or_init(|| build(self))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_frame_is_built_once_and_shared() {
        #[derive(Serialize)]
        struct D {
            a: u32,
        }
        let p = Push::new(PushKind::UserJoined, None, None, &D { a: 1 });
        let f1 = p.native_frame();
        let f2 = p.native_frame();
        assert_eq!(&*f1, r#"{"event":"userJoined","data":{"a":1}}"#);
        // Same backing buffer: a clone, not a rebuild.
        assert_eq!(f1.as_bytes().as_ptr(), f2.as_bytes().as_ptr());
        let v: serde_json::Value = serde_json::from_str(&f1).unwrap();
        assert_eq!(v["data"]["a"], 1);
    }
}
