//! Socket.IO v4 over Engine.IO v4, websocket transport only: the upgrade path, the
//! open/CONNECT exchange with the JWT in the auth payload, request encoding
//! (`42<id>["event",{...}]`) and the cheap classification of incoming packets
//! (`43<id>[...]` acks, `42["newMessage",...]` pushes) from their first bytes.
//!
//! Engine.IO pings (`2`, sent by the server every `pingInterval`) are answered with `3`
//! by the connection itself (see `WsConn::eio`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use crate::proto::{error_code, leading_u64, Incoming};
use crate::ws::WsConn;

/// Query of the Engine.IO websocket transport.
const EIO_QUERY: &str = "EIO=4&transport=websocket";

/// The upgrade path for a URL path: `/socket.io/...` kept (with the Engine.IO query
/// added when it has none), anything else replaced by socket.io-client's default.
pub fn ws_path(path: &str) -> String {
    if path.starts_with("/socket.io") {
        if path.contains('?') {
            path.to_string()
        } else {
            format!("{path}?{EIO_QUERY}")
        }
    } else {
        format!("/socket.io/?{EIO_QUERY}")
    }
}

/// `42<id>["event",{"roomId":"ROOM"}]`, or with `"text":TEXT` when given, into `out`
/// (cleared first). `text` must be JSON-safe (see `proto::write_text`).
pub fn encode(event: &str, room: &str, text: Option<&str>, id: u64, out: &mut String) {
    out.clear();
    let _ = write!(out, r#"42{id}["{event}",{{"roomId":"{room}""#);
    if let Some(t) = text {
        let _ = write!(out, r#","text":"{t}""#);
    }
    out.push_str("}]");
}

/// Classifies one Engine.IO/Socket.IO packet of the default namespace.
pub fn classify(frame: &[u8]) -> Incoming<'_> {
    match frame {
        [b'4', b'3', rest @ ..] => {
            let Some((id, rest)) = leading_u64(rest) else {
                return Incoming::Unknown;
            };
            if rest.starts_with(br#"[{"error""#) {
                let code = error_code(rest).unwrap_or("unknown");
                return Incoming::Ack {
                    id,
                    error: Some(Cow::Borrowed(code)),
                };
            }
            if rest.first() == Some(&b'[') {
                Incoming::Ack { id, error: None }
            } else {
                Incoming::Unknown
            }
        }
        [b'4', b'2', rest @ ..] => {
            // Server-side requests may carry an ack id before the array.
            let at = rest.iter().position(|c| !c.is_ascii_digit()).unwrap_or(0);
            let Some(name) = rest[at..].strip_prefix(b"[\"") else {
                return Incoming::Unknown;
            };
            let Some(end) = memchr::memchr(b'"', name) else {
                return Incoming::Unknown;
            };
            match &name[..end] {
                b"newMessage" => Incoming::NewMessage,
                n => std::str::from_utf8(n)
                    .map_or(Incoming::Unknown, |n| Incoming::Event(Cow::Borrowed(n))),
            }
        }
        [b'4', b'0', ..] => Incoming::Event(Cow::Borrowed("connect")),
        [b'4', b'1', ..] => Incoming::Event(Cow::Borrowed("disconnect")),
        [b'4', b'4', ..] => Incoming::Event(Cow::Borrowed("connect_error")),
        [b'0', ..] => Incoming::Event(Cow::Borrowed("open")),
        [b'1'] => Incoming::Event(Cow::Borrowed("close")),
        [b'2', ..] => Incoming::Event(Cow::Borrowed("ping")),
        [b'3', ..] => Incoming::Event(Cow::Borrowed("pong")),
        [b'6'] => Incoming::Event(Cow::Borrowed("noop")),
        _ => Incoming::Unknown,
    }
}

/// After the WebSocket upgrade: waits for the Engine.IO open packet, sends the
/// Socket.IO CONNECT with `{"token":...}` and waits for its answer. Errors are
/// (kind, detail): `sio_open`, `sio_auth` (CONNECT_ERROR, e.g. "Authentication failed").
pub async fn connect(ws: &mut WsConn, token: &str, wait: Duration) -> Result<(), (String, String)> {
    let err = |k: &str, d: String| (k.to_string(), d);
    let open = ws.read_until(|t| (t.first() == Some(&b'0')).then_some(()));
    match tokio::time::timeout(wait, open).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(err("sio_open", e.to_string())),
        Err(_) => return Err(err("sio_open", "no Engine.IO open packet".into())),
    }
    let mut connect = String::with_capacity(token.len() + 16);
    let _ = write!(connect, r#"40{{"token":"{token}"}}"#);
    ws.send_text(connect.as_bytes())
        .await
        .map_err(|e| err("sio_connect", e.to_string()))?;
    let answer = ws.read_until(|t| match t {
        [b'4', b'0', ..] => Some(Ok(())),
        [b'4', b'4', rest @ ..] => Some(Err(String::from_utf8_lossy(rest).into_owned())),
        _ => None,
    });
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(detail))) => Err(err("sio_auth", detail)),
        Ok(Err(e)) => Err(err("sio_connect", e.to_string())),
        Err(_) => Err(err("sio_connect", "no CONNECT answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_default_to_the_engine_io_websocket_transport() {
        assert_eq!(ws_path("/"), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(ws_path("/ws"), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(
            ws_path("/socket.io/"),
            "/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ws_path("/socket.io/?EIO=4&transport=websocket&x=1"),
            "/socket.io/?EIO=4&transport=websocket&x=1"
        );
    }

    #[test]
    fn requests_are_event_packets_with_ack_ids() {
        let mut out = String::new();
        encode("sendMessage", "r-1", Some("~lt5~x"), 12, &mut out);
        assert_eq!(
            out,
            r#"4212["sendMessage",{"roomId":"r-1","text":"~lt5~x"}]"#
        );
        let v: serde_json::Value = serde_json::from_str(&out[4..]).unwrap();
        assert_eq!(v[1]["text"], "~lt5~x");
        encode("joinRoom", "r-1", None, 1, &mut out);
        assert_eq!(out, r#"421["joinRoom",{"roomId":"r-1"}]"#);
    }

    #[test]
    fn packets_are_classified_from_their_first_bytes() {
        let ack = br#"4317[{"id":"a","roomId":"r","text":"~lt1~","readBy":["u"]}]"#;
        assert_eq!(
            classify(ack),
            Incoming::Ack {
                id: 17,
                error: None
            }
        );
        let err = br#"439[{"error":{"code":"rate_limited","message":"slow down"}}]"#;
        assert_eq!(
            classify(err),
            Incoming::Ack {
                id: 9,
                error: Some(Cow::Borrowed("rate_limited"))
            }
        );
        assert_eq!(
            classify(br#"42["newMessage",{"text":"~lt1~"}]"#),
            Incoming::NewMessage
        );
        assert_eq!(
            classify(br#"42["messageHistory",[]]"#),
            Incoming::Event(Cow::Borrowed("messageHistory"))
        );
        assert_eq!(
            classify(br#"425["ask",{}]"#),
            Incoming::Event(Cow::Borrowed("ask"))
        );
        assert_eq!(classify(b"2"), Incoming::Event(Cow::Borrowed("ping")));
        assert_eq!(
            classify(br#"0{"sid":"x"}"#),
            Incoming::Event(Cow::Borrowed("open"))
        );
        assert_eq!(
            classify(br#"44{"message":"Authentication failed"}"#),
            Incoming::Event(Cow::Borrowed("connect_error"))
        );
        for bad in [&b"43x[]"[..], b"43", b"42{}", b"{\"ack\":1}", b""] {
            assert_eq!(classify(bad), Incoming::Unknown, "{bad:?}");
        }
    }
}
