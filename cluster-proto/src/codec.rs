//! The one place that knows the binary encoding (bincode 2, `standard` config).
//!
//! Every encoded value starts with one version byte, [`WIRE_VERSION`]. A decoder accepts the
//! versions it knows and refuses the rest with [`CodecError::UnknownVersion`], so a node or a
//! store never misreads bytes written by a newer format. Decoding is bounded by a byte limit
//! so a hostile or corrupt length prefix cannot allocate without bound.

use bincode::{Decode, Encode};

/// Version of the wire and storage encoding written by this build.
pub const WIRE_VERSION: u8 = 1;

/// The largest value [`decode`] accepts (frames, stored rows): 4 MiB.
pub const MAX_DECODE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty input")]
    Empty,
    #[error("unknown encoding version {0} (this build reads {WIRE_VERSION})")]
    UnknownVersion(u8),
    #[error("decode failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("encode failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes `value` behind the version byte.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![WIRE_VERSION];
    bincode::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes a value written by [`encode`] (this or an older known version).
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        WIRE_VERSION => Ok(bincode::decode_from_slice(body, config())?.0),
        v => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, RoomId, UserId};

    fn sample() -> ChatMessage {
        ChatMessage {
            id: "r:7".into(),
            room_id: RoomId::new("r").unwrap(),
            seq: 7,
            user_id: UserId::new("u").unwrap(),
            username: "U".into(),
            text: "hi".into(),
            attachments: "[]".into(),
            timestamp: 1_700_000_000_000,
            client_msg_id: Some("c".into()),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let b = encode(&m).unwrap();
        assert_eq!(b[0], WIRE_VERSION);
        assert_eq!(decode::<ChatMessage>(&b).unwrap(), m);
    }

    /// Bytes written by version 1. If this test fails, stored history and older nodes can no
    /// longer be read: add a new version instead of changing this one.
    #[test]
    fn golden_bytes_v1() {
        let golden: &[u8] = &[
            1, 3, b'r', b':', b'7', 1, b'r', 7, 1, b'u', 1, b'U', 2, b'h', b'i', 2, b'[', b']',
            // timestamp: zigzag varint, u64 marker 253 + 8 bytes LE
            253, 0, 208, 202, 159, 23, 3, 0, 0, 1, 1, b'c',
        ];
        assert_eq!(encode(&sample()).unwrap(), golden);
        assert_eq!(decode::<ChatMessage>(golden).unwrap(), sample());
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        assert!(matches!(decode::<ChatMessage>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<ChatMessage>(&[9, 1, 2]),
            Err(CodecError::UnknownVersion(9))
        ));
        assert!(decode::<ChatMessage>(&[1, 255, 255, 255, 255, 255]).is_err());
    }
}
