//! A WebSocket connection's write queue, shared by its session and the task that writes it.
//!
//! Why: a push goes to every member of a room, and through actix's `WebsocketContext` every
//! recipient's copy was framed again: a header and a copy of the payload appended to that
//! connection's own buffer, which grew by reallocation. A server's frames are not masked, so
//! the bytes of a push's frame are the same for every recipient: the push frames itself once
//! ([`Push::wire_frame`]) and each recipient's queue takes a reference to those bytes; the
//! connection writes its queued references with one vectored write (`parley-node`'s
//! `upgrade::Pump`). Measured with callgrind in BENCHMARKS.md ("Frames encoded once").
//!
//! A session that has a queue writes *everything* through it (answers, pushes, pings, pongs,
//! its close frame), so the client receives frames in the order the session wrote them.
//! Sessions started without one (by a plain actix-web server, as in this crate's tests) write
//! through their context as before: [`Output`] picks the path.
//!
//! The queue is a `RefCell`: the session and its connection's task run on the same thread,
//! and neither holds a borrow across a call into the other.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;

use actix::{Actor, ActorContext};
use actix_http::ws::{CloseReason as WsCloseReason, OpCode, Parser};
use actix_web_actors::ws::WebsocketContext;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cluster_proto::push::FrameFormat;
use cluster_proto::Push;

/// Capacity kept by an emptied queue; a larger one is given back (idle connections hold
/// nothing).
const KEEP_SLOTS: usize = 8;
/// Most frames handed to one vectored write.
pub const MAX_SLICES: usize = 64;

/// The frames waiting for one connection's socket.
#[derive(Clone, Debug, Default)]
pub struct Egress(Rc<RefCell<Frames>>);

#[derive(Debug, Default)]
struct Frames {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

impl Egress {
    /// Queues an encoded frame (or any bytes for the socket).
    pub fn push(&self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let mut f = self.0.borrow_mut();
        f.bytes += frame.len();
        f.queue.push_back(frame);
    }

    /// Bytes waiting.
    pub fn queued(&self) -> usize {
        self.0.borrow().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().queue.is_empty()
    }

    /// Hands up to `max` (at most [`MAX_SLICES`]) queued frames to `write` as slices and
    /// drops the `Ok(n)` bytes it wrote. `Ok(0)` when nothing is queued.
    pub fn write_with(
        &self,
        max: usize,
        write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut f = self.0.borrow_mut();
        if f.queue.is_empty() {
            return Ok(0);
        }
        let n = f.queue.len().min(max).min(MAX_SLICES);
        // Mostly one or two frames: a small array, not 1 KiB of slices to initialise.
        let written = if n <= 4 {
            write_slices::<4>(&f.queue, n, write)?
        } else {
            write_slices::<MAX_SLICES>(&f.queue, n, write)?
        };
        f.consume(written);
        Ok(written)
    }
}

fn write_slices<const N: usize>(
    queue: &VecDeque<Bytes>,
    n: usize,
    write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    for (s, b) in slices.iter_mut().zip(queue.iter()) {
        *s = IoSlice::new(b);
    }
    write(&slices[..n.min(N)])
}

impl Frames {
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n.min(self.bytes);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                let _ = front.split_to(n);
                n = 0;
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > KEEP_SLOTS {
            self.queue = VecDeque::new();
        }
    }
}

/// An unmasked WebSocket frame: `payload` with `op`'s header.
pub fn frame(op: OpCode, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    Parser::write_message(&mut b, payload, op, true, false);
    b.freeze()
}

/// `p`'s text frame in `format`, framed once and shared by every recipient.
pub fn push_frame(p: &Push, format: FrameFormat, text: impl FnOnce(&Push) -> ByteString) -> Bytes {
    p.wire_frame(format, |p| frame(OpCode::Text, text(p).as_bytes()))
}

/// Where a session's frames go: its connection's [`Egress`] when it has one, else its actix
/// context.
pub(crate) struct Output(Option<Egress>);

impl Output {
    pub(crate) fn new(egress: Option<Egress>) -> Self {
        Output(egress)
    }

    pub(crate) fn text<A>(&self, ctx: &mut WebsocketContext<A>, text: ByteString)
    where
        A: Actor<Context = WebsocketContext<A>>,
    {
        match &self.0 {
            Some(e) => e.push(frame(OpCode::Text, text.as_bytes())),
            None => ctx.text(text),
        }
    }

    /// A push as `format`'s text frame (`text` builds, or returns the cached, text): shared
    /// bytes on the queue, or a copy through the context.
    pub(crate) fn push<A>(
        &self,
        ctx: &mut WebsocketContext<A>,
        p: &Push,
        format: FrameFormat,
        text: fn(&Push) -> ByteString,
    ) where
        A: Actor<Context = WebsocketContext<A>>,
    {
        match &self.0 {
            Some(e) => e.push(push_frame(p, format, text)),
            None => ctx.text(text(p)),
        }
    }

    pub(crate) fn ping<A>(&self, ctx: &mut WebsocketContext<A>, payload: &[u8])
    where
        A: Actor<Context = WebsocketContext<A>>,
    {
        match &self.0 {
            Some(e) => e.push(frame(OpCode::Ping, payload)),
            None => ctx.ping(payload),
        }
    }

    pub(crate) fn pong<A>(&self, ctx: &mut WebsocketContext<A>, payload: &[u8])
    where
        A: Actor<Context = WebsocketContext<A>>,
    {
        match &self.0 {
            Some(e) => e.push(frame(OpCode::Pong, payload)),
            None => ctx.pong(payload),
        }
    }

    /// Writes a close frame (`None`: no reason) and stops the session.
    pub(crate) fn close<A>(&self, ctx: &mut WebsocketContext<A>, reason: Option<WsCloseReason>)
    where
        A: Actor<Context = WebsocketContext<A>>,
    {
        match &self.0 {
            Some(e) => {
                let mut b = BytesMut::new();
                Parser::write_close(&mut b, reason, false);
                e.push(b.freeze());
            }
            None => ctx.close(reason),
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{CloseCode, Frame};
    use cluster_proto::PushKind;

    fn decode(mut bytes: BytesMut) -> Vec<Frame> {
        let mut codec = actix_http::ws::Codec::new().client_mode();
        let mut out = Vec::new();
        while let Some(f) = actix_codec::Decoder::decode(&mut codec, &mut bytes).unwrap() {
            out.push(f);
        }
        assert!(bytes.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn a_push_is_framed_once_and_shared() {
        let p = Push::new(
            PushKind::UserJoined,
            None,
            None,
            &serde_json::json!({"a": 1}),
        );
        let f1 = push_frame(&p, FrameFormat::Native, Push::native_frame);
        let f2 = push_frame(&p, FrameFormat::Native, Push::native_frame);
        assert_eq!(f1.as_ptr(), f2.as_ptr());
        let frames = decode(BytesMut::from(&f1[..]));
        assert_eq!(
            frames,
            vec![Frame::Text(Bytes::from_static(
                br#"{"event":"userJoined","data":{"a":1}}"#
            ))]
        );
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let e = Egress::default();
        e.push(frame(OpCode::Text, b"one"));
        e.push(Bytes::new());
        e.push(frame(OpCode::Text, &[b'x'; 300]));
        let mut close = BytesMut::new();
        Parser::write_close(&mut close, Some(CloseCode::Normal.into()), false);
        e.push(close.freeze());
        let total = e.queued();
        let mut wire = BytesMut::new();
        // A socket that takes 7 bytes at a time, from at most 2 slices.
        while !e.is_empty() {
            let n = e
                .write_with(2, |s| {
                    assert!(s.len() <= 2);
                    let mut left = 7;
                    for sl in s {
                        let k = sl.len().min(left);
                        wire.extend_from_slice(&sl[..k]);
                        left -= k;
                    }
                    Ok(7 - left)
                })
                .unwrap();
            assert!(n > 0);
        }
        assert_eq!(wire.len(), total);
        assert_eq!(e.queued(), 0);
        let frames = decode(wire);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Frame::Text(Bytes::from_static(b"one")));
        assert_eq!(frames[1], Frame::Text(Bytes::from(vec![b'x'; 300])));
        assert_eq!(frames[2], Frame::Close(Some(CloseCode::Normal.into())));
    }

    #[test]
    fn many_frames_go_in_one_write_up_to_the_slice_limit() {
        let e = Egress::default();
        for i in 0..(MAX_SLICES + 6) {
            e.push(frame(OpCode::Text, format!("{i}").as_bytes()));
        }
        let mut wire = BytesMut::new();
        let mut calls = Vec::new();
        while !e.is_empty() {
            e.write_with(MAX_SLICES, |s| {
                calls.push(s.len());
                let n = s.iter().map(|sl| sl.len()).sum();
                s.iter().for_each(|sl| wire.extend_from_slice(sl));
                Ok(n)
            })
            .unwrap();
        }
        assert_eq!(calls, vec![MAX_SLICES, 6]);
        let texts: Vec<_> = decode(wire)
            .into_iter()
            .map(|f| match f {
                Frame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        let want: Vec<_> = (0..(MAX_SLICES + 6)).map(|i| i.to_string()).collect();
        assert_eq!(texts, want);
    }

    #[test]
    fn a_failed_write_keeps_the_queue() {
        let e = Egress::default();
        e.push(frame(OpCode::Text, b"kept"));
        let before = e.queued();
        let r = e.write_with(64, |_| Err(io::ErrorKind::WouldBlock.into()));
        assert!(r.is_err());
        assert_eq!(e.queued(), before);
        assert!(e.write_with(64, |_| Ok(0)).is_ok());
        assert_eq!(e.queued(), before);
    }
}
