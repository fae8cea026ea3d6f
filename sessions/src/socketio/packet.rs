//! Socket.IO v5 packets (carried in Engine.IO `message` packets): pure encode/decode, no I/O.
//!
//! Format: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, types `0` CONNECT,
//! `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK.
//! A binary packet announces how many binary messages follow it; its JSON holds
//! `{"_placeholder":true,"num":i}` where the attachments go. Every server packet is encoded
//! here with the Engine.IO `4` prefix, ready to write.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Most binary attachments one packet may announce.
pub const MAX_ATTACHMENTS: usize = 64;

/// A packet sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `auth` is the JSON of the CONNECT payload, if any.
    Connect {
        nsp: &'a str,
        auth: Option<&'a str>,
    },
    Disconnect {
        nsp: &'a str,
    },
    /// `args` is the JSON array `["name", arg, ...]`; `attachments` > 0 for BINARY_EVENT.
    Event {
        nsp: &'a str,
        id: Option<u64>,
        args: &'a str,
        attachments: usize,
    },
    /// An ack from the client (the server never asks for one: ignored).
    Ack {
        nsp: &'a str,
        id: u64,
        attachments: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("a client may not send packet type {0}")]
    NotFromClient(u8),
    #[error("invalid attachment count")]
    BadAttachments,
    #[error("invalid ack id")]
    BadId,
    #[error("invalid JSON payload")]
    BadJson,
    #[error("an event needs a payload array starting with its name")]
    BadEvent,
    #[error("an ack needs an id")]
    MissingId,
}

fn digits(s: &str) -> (&str, &str) {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Decodes the data of an Engine.IO message packet.
pub fn decode(s: &str) -> Result<Packet<'_>, PacketError> {
    let t = *s.as_bytes().first().ok_or(PacketError::Empty)?;
    if !t.is_ascii_digit() {
        let c = s.chars().next().unwrap_or('?');
        return Err(PacketError::UnknownType(c));
    }
    let t = t - b'0';
    let mut rest = &s[1..];
    let mut attachments = 0;
    if t == 5 || t == 6 {
        let (n, r) = digits(rest);
        let r = r.strip_prefix('-').ok_or(PacketError::BadAttachments)?;
        attachments = n.parse().map_err(|_| PacketError::BadAttachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(PacketError::BadAttachments);
        }
        rest = r;
    }
    let mut nsp = "/";
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(i) => {
                nsp = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                nsp = rest;
                rest = "";
            }
        }
    }
    let (id, rest) = digits(rest);
    let id = if id.is_empty() {
        None
    } else {
        Some(id.parse::<u64>().map_err(|_| PacketError::BadId)?)
    };
    let json = if rest.is_empty() {
        None
    } else {
        // Validate without building a tree.
        serde_json::from_str::<&RawValue>(rest).map_err(|_| PacketError::BadJson)?;
        Some(rest)
    };
    match t {
        0 => Ok(Packet::Connect { nsp, auth: json }),
        1 => Ok(Packet::Disconnect { nsp }),
        2 | 5 => {
            let args = json.ok_or(PacketError::BadEvent)?;
            event_name(args)?;
            Ok(Packet::Event {
                nsp,
                id,
                args,
                attachments,
            })
        }
        3 | 6 => Ok(Packet::Ack {
            nsp,
            id: id.ok_or(PacketError::MissingId)?,
            attachments,
        }),
        4 => Err(PacketError::NotFromClient(4)),
        other => Err(PacketError::UnknownType(char::from(b'0' + other))),
    }
}

/// Splits an event's argument array into its name and its first argument.
pub fn event_name(args: &str) -> Result<(Cow<'_, str>, Option<&RawValue>), PacketError> {
    let items: Vec<&RawValue> = serde_json::from_str(args).map_err(|_| PacketError::BadEvent)?;
    let first = items.first().ok_or(PacketError::BadEvent)?;
    let name: Cow<str> = serde_json::from_str(first.get()).map_err(|_| PacketError::BadEvent)?;
    Ok((name, items.get(1).copied()))
}

#[derive(Deserialize)]
struct Auth<'a> {
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

/// The `token` of a CONNECT payload (`{"token":"..."}`), if any.
pub fn auth_token(auth: Option<&str>) -> Option<String> {
    let a: Auth = serde_json::from_str(auth?).ok()?;
    a.token.map(Cow::into_owned)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `40{"sid":".."}`: the namespace `/` is connected.
pub fn connect_ok(sid: &str) -> String {
    format!("40{{\"sid\":{}}}", json_str(sid))
}

/// `44[/nsp,]{"message":".."}`
pub fn connect_error(nsp: &str, message: &str) -> String {
    let body = format!("{{\"message\":{}}}", json_str(message));
    if nsp == "/" {
        format!("44{body}")
    } else {
        format!("44{nsp},{body}")
    }
}

/// `41`: the server disconnects the socket.
pub const DISCONNECT: &str = "41";

/// `42["name",<data>]`; `data` is JSON.
pub fn event(name: &str, data: &str) -> String {
    let name = json_str(name);
    let mut s = String::with_capacity(data.len() + name.len() + 6);
    s.push_str("42[");
    s.push_str(&name);
    s.push(',');
    s.push_str(data);
    s.push(']');
    s
}

/// `43<id>[<data>]`; `data` is JSON.
pub fn ack(id: u64, data: &str) -> String {
    format!("43{id}[{data}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_client_packets() {
        assert_eq!(
            decode(r#"0{"token":"abc"}"#),
            Ok(Packet::Connect {
                nsp: "/",
                auth: Some(r#"{"token":"abc"}"#)
            })
        );
        assert_eq!(
            decode("0"),
            Ok(Packet::Connect {
                nsp: "/",
                auth: None
            })
        );
        assert_eq!(
            decode("0/admin,"),
            Ok(Packet::Connect {
                nsp: "/admin",
                auth: None
            })
        );
        assert_eq!(decode("1"), Ok(Packet::Disconnect { nsp: "/" }));
        assert_eq!(
            decode(r#"212["joinRoom",{"roomId":"r"}]"#),
            Ok(Packet::Event {
                nsp: "/",
                id: Some(12),
                args: r#"["joinRoom",{"roomId":"r"}]"#,
                attachments: 0
            })
        );
        assert_eq!(
            decode(r#"2/chat,7["x"]"#),
            Ok(Packet::Event {
                nsp: "/chat",
                id: Some(7),
                args: r#"["x"]"#,
                attachments: 0
            })
        );
        assert_eq!(
            decode(r#"51-3["up",{"_placeholder":true,"num":0}]"#),
            Ok(Packet::Event {
                nsp: "/",
                id: Some(3),
                args: r#"["up",{"_placeholder":true,"num":0}]"#,
                attachments: 1
            })
        );
        assert_eq!(
            decode("35[]"),
            Ok(Packet::Ack {
                nsp: "/",
                id: 5,
                attachments: 0
            })
        );
    }

    #[test]
    fn refuses_bad_packets() {
        assert_eq!(decode(""), Err(PacketError::Empty));
        assert_eq!(decode("x"), Err(PacketError::UnknownType('x')));
        assert_eq!(decode("9"), Err(PacketError::UnknownType('9')));
        assert_eq!(decode("4{}"), Err(PacketError::NotFromClient(4)));
        assert_eq!(decode("2"), Err(PacketError::BadEvent));
        assert_eq!(decode("2{}"), Err(PacketError::BadEvent));
        assert_eq!(decode("2[]"), Err(PacketError::BadEvent));
        assert_eq!(decode("2[1]"), Err(PacketError::BadEvent));
        assert_eq!(decode("2[\"a\""), Err(PacketError::BadJson));
        assert_eq!(
            decode("299999999999999999999999[\"a\"]"),
            Err(PacketError::BadId)
        );
        assert_eq!(decode("5[\"a\"]"), Err(PacketError::BadAttachments));
        assert_eq!(decode("5x-[\"a\"]"), Err(PacketError::BadAttachments));
        assert_eq!(decode("5999-[\"a\"]"), Err(PacketError::BadAttachments));
        assert_eq!(decode("3[]"), Err(PacketError::MissingId));
        assert_eq!(decode("0é"), Err(PacketError::BadJson));
    }

    #[test]
    fn reads_event_names_and_tokens() {
        let (name, arg) = event_name(r#"["sendMessage",{"a":1},2]"#).unwrap();
        assert_eq!(name, "sendMessage");
        assert_eq!(arg.map(|a| a.get()), Some(r#"{"a":1}"#));
        let (name, arg) = event_name(r#"["typ\u0069ng"]"#).unwrap();
        assert_eq!(name, "typing");
        assert!(arg.is_none());
        assert_eq!(auth_token(Some(r#"{"token":"t"}"#)).as_deref(), Some("t"));
        assert_eq!(auth_token(Some(r#"{"token":5}"#)), None);
        assert_eq!(auth_token(Some("[]")), None);
        assert_eq!(auth_token(None), None);
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(connect_ok("s1"), r#"40{"sid":"s1"}"#);
        assert_eq!(
            connect_error("/", "Authentication failed"),
            r#"44{"message":"Authentication failed"}"#
        );
        assert_eq!(
            connect_error("/x", "Invalid namespace"),
            r#"44/x,{"message":"Invalid namespace"}"#
        );
        assert_eq!(event("newMessage", "{}"), r#"42["newMessage",{}]"#);
        assert_eq!(ack(9, r#"{"a":1}"#), r#"439[{"a":1}]"#);
    }
}
