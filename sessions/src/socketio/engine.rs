//! Engine.IO v4 packets and HTTP long-polling payloads: pure encode/decode, no I/O.
//!
//! A packet is one type digit followed by its data: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. Over WebSocket a text frame is one packet and a binary
//! frame is one binary message. Over polling a payload is packets joined by the record
//! separator `\x1e`, binary messages as `b<base64>`.

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

/// The record separator between packets of a polling payload.
pub const SEPARATOR: char = '\u{1e}';

/// A packet sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket<'a> {
    Close,
    /// `2` or `2probe` (the upgrade probe).
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Binary(Bytes),
    Upgrade,
    Noop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("invalid base64 in a binary packet")]
    BadBase64,
}

/// Decodes one text packet (a WebSocket text frame, or one record of a polling payload).
pub fn decode_text(s: &str) -> Result<ClientPacket<'_>, EngineError> {
    let mut chars = s.chars();
    let t = chars.next().ok_or(EngineError::Empty)?;
    let rest = chars.as_str();
    Ok(match t {
        '1' => ClientPacket::Close,
        '2' => ClientPacket::Ping(rest),
        '3' => ClientPacket::Pong(rest),
        '4' => ClientPacket::Message(rest),
        '5' => ClientPacket::Upgrade,
        '6' => ClientPacket::Noop,
        'b' => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| EngineError::BadBase64)?;
            ClientPacket::Binary(Bytes::from(data))
        }
        other => return Err(EngineError::UnknownType(other)),
    })
}

/// Splits a polling payload into packets.
pub fn decode_payload(body: &str) -> impl Iterator<Item = Result<ClientPacket<'_>, EngineError>> {
    body.split(SEPARATOR).map(decode_text)
}

/// Joins encoded packets into one polling payload.
pub fn encode_payload<S: AsRef<str>>(packets: &[S]) -> String {
    let len = packets.iter().map(|p| p.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(len);
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.push_str(p.as_ref());
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Open<'a> {
    sid: &'a str,
    upgrades: &'a [&'a str],
    ping_interval: u64,
    ping_timeout: u64,
    max_payload: usize,
}

/// The handshake parameters a server announces.
#[derive(Debug, Clone, Copy)]
pub struct OpenParams {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_payload: usize,
}

/// `0{"sid":..,"upgrades":[..],"pingInterval":..,"pingTimeout":..,"maxPayload":..}`
pub fn open_packet(sid: &str, upgrades: &[&str], p: OpenParams) -> String {
    let body = serde_json::to_string(&Open {
        sid,
        upgrades,
        ping_interval: p.ping_interval_ms,
        ping_timeout: p.ping_timeout_ms,
        max_payload: p.max_payload,
    })
    .unwrap_or_default();
    format!("0{body}")
}

pub const CLOSE: &str = "1";
pub const PING: &str = "2";
pub const PONG_PROBE: &str = "3probe";
pub const NOOP: &str = "6";

/// The HTTP errors of the Engine.IO protocol, with the codes its clients know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    Forbidden,
    UnsupportedProtocolVersion,
}

impl HttpError {
    pub fn code(self) -> u8 {
        match self {
            HttpError::UnknownTransport => 0,
            HttpError::UnknownSid => 1,
            HttpError::BadHandshakeMethod => 2,
            HttpError::BadRequest => 3,
            HttpError::Forbidden => 4,
            HttpError::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HttpError::UnknownTransport => "Transport unknown",
            HttpError::UnknownSid => "Session ID unknown",
            HttpError::BadHandshakeMethod => "Bad handshake method",
            HttpError::BadRequest => "Bad request",
            HttpError::Forbidden => "Forbidden",
            HttpError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// `{"code":N,"message":".."}`
    pub fn body(self) -> String {
        serde_json::json!({"code": self.code(), "message": self.message()}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_client_packets() {
        assert_eq!(decode_text("2probe"), Ok(ClientPacket::Ping("probe")));
        assert_eq!(decode_text("3"), Ok(ClientPacket::Pong("")));
        assert_eq!(
            decode_text("42[\"a\"]"),
            Ok(ClientPacket::Message("2[\"a\"]"))
        );
        assert_eq!(decode_text("5"), Ok(ClientPacket::Upgrade));
        assert_eq!(decode_text("6"), Ok(ClientPacket::Noop));
        assert_eq!(decode_text("1"), Ok(ClientPacket::Close));
        assert_eq!(
            decode_text("bAQID"),
            Ok(ClientPacket::Binary(Bytes::from_static(&[1, 2, 3])))
        );
        assert_eq!(decode_text(""), Err(EngineError::Empty));
        assert_eq!(decode_text("0{}"), Err(EngineError::UnknownType('0')));
        assert_eq!(decode_text("9"), Err(EngineError::UnknownType('9')));
        assert_eq!(decode_text("é"), Err(EngineError::UnknownType('é')));
        assert_eq!(decode_text("b!!"), Err(EngineError::BadBase64));
    }

    #[test]
    fn payloads_round_trip() {
        let body = encode_payload(&["40{\"token\":\"t\"}", "3", "bAQID"]);
        assert_eq!(body, "40{\"token\":\"t\"}\u{1e}3\u{1e}bAQID");
        let packets: Vec<_> = decode_payload(&body).collect();
        assert_eq!(
            packets,
            vec![
                Ok(ClientPacket::Message("0{\"token\":\"t\"}")),
                Ok(ClientPacket::Pong("")),
                Ok(ClientPacket::Binary(Bytes::from_static(&[1, 2, 3]))),
            ]
        );
        assert_eq!(encode_payload::<&str>(&[]), "");
        assert_eq!(
            decode_payload("").collect::<Vec<_>>(),
            vec![Err(EngineError::Empty)]
        );
    }

    #[test]
    fn encodes_open_and_errors() {
        let p = OpenParams {
            ping_interval_ms: 25000,
            ping_timeout_ms: 60000,
            max_payload: 1_000_000,
        };
        assert_eq!(
            open_packet("abc", &["websocket"], p),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":60000,"maxPayload":1000000}"#
        );
        assert_eq!(
            HttpError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
    }
}
