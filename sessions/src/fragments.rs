//! Reassembly of fragmented WebSocket messages, bounded by `max_frame_bytes`.
//!
//! actix-web hands continuation frames to the actor one by one; both WebSocket transports
//! (`/ws` and Socket.IO's) rebuild the message here so the size bound is enforced once.

use actix_http::ws::Item;
use bytes::Bytes;

/// A reassembled message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whole {
    Text(String),
    Binary(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FragmentError {
    #[error("a continuation frame without a first frame")]
    Orphan,
    #[error("fragmented text is not UTF-8")]
    BadUtf8,
    #[error("the reassembled message exceeds the frame limit")]
    TooBig,
}

impl FragmentError {
    /// How the session ends on this error.
    pub(crate) fn close_reason(self) -> crate::close::CloseReason {
        match self {
            FragmentError::TooBig => crate::close::CloseReason::MessageTooBig,
            FragmentError::Orphan | FragmentError::BadUtf8 => {
                crate::close::CloseReason::ProtocolError
            }
        }
    }
}

/// The message being reassembled, if any.
#[derive(Default)]
pub(crate) struct Reassembler {
    current: Option<(bool, Vec<u8>)>,
}

impl Reassembler {
    /// Adds a fragment; returns the whole message after the last one.
    pub(crate) fn push(&mut self, item: Item, max: usize) -> Result<Option<Whole>, FragmentError> {
        let (start, data, last) = match item {
            Item::FirstText(b) => (Some(true), b, false),
            Item::FirstBinary(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        if let Some(text) = start {
            self.current = Some((text, Vec::new()));
        }
        let Some((_, buf)) = self.current.as_mut() else {
            return Err(FragmentError::Orphan);
        };
        if buf.len() + data.len() > max {
            self.current = None;
            return Err(FragmentError::TooBig);
        }
        buf.extend_from_slice(&data);
        if !last {
            return Ok(None);
        }
        let Some((text, buf)) = self.current.take() else {
            return Ok(None);
        };
        if !text {
            return Ok(Some(Whole::Binary(Bytes::from(buf))));
        }
        String::from_utf8(buf)
            .map(|s| Some(Whole::Text(s)))
            .map_err(|_| FragmentError::BadUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_within_the_limit() {
        let mut r = Reassembler::default();
        let b = Bytes::from_static;
        assert_eq!(r.push(Item::FirstText(b(b"he")), 10), Ok(None));
        assert_eq!(r.push(Item::Continue(b(b"l")), 10), Ok(None));
        assert_eq!(
            r.push(Item::Last(b(b"lo")), 10),
            Ok(Some(Whole::Text("hello".into())))
        );
        assert_eq!(r.push(Item::Last(b(b"x")), 10), Err(FragmentError::Orphan));
        assert_eq!(r.push(Item::FirstBinary(b(b"123456")), 10), Ok(None));
        assert_eq!(
            r.push(Item::Last(b(b"78901")), 10),
            Err(FragmentError::TooBig)
        );
        assert_eq!(r.push(Item::FirstText(b(&[0xff])), 10), Ok(None));
        assert_eq!(r.push(Item::Last(b(b"")), 10), Err(FragmentError::BadUtf8));
    }
}
