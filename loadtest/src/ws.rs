//! A lean WebSocket client connection, so the receive path costs one read syscall per
//! batch of frames and nothing per frame: frames are parsed in place from a fixed read
//! buffer (no zeroing per read, no per-frame buffers, wakers or UTF-8 checks), and sends
//! are masked into a reused write buffer. The HTTP upgrade is done here as well, with
//! tungstenite's key helpers.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::frame::{bad, encode, parse, MAX_FRAME};

/// Largest HTTP upgrade response accepted.
const MAX_HEAD: usize = 16 << 10;

/// One frame from the server. Pings are answered by the caller via [`WsWriter::pong`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// Close with its status code (1005 when none was given).
    Close(u16),
}

pub struct WsConn {
    pub r: WsReader,
    pub w: WsWriter,
    /// Engine.IO: answer a `2` text frame (ping) with `3` (pong) in [`WsConn::read_until`].
    pub eio: bool,
}

pub struct WsReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Reassembly of a fragmented message: opcode and data so far.
    frag: Option<(u8, Vec<u8>)>,
    done: Vec<u8>,
}

pub struct WsWriter {
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
    seed: u32,
}

/// Why a handshake failed: `kind` is `http_<status>` or `handshake`.
pub struct HandshakeError {
    pub kind: String,
    pub detail: String,
}

fn herr(kind: impl Into<String>, detail: impl Into<String>) -> HandshakeError {
    HandshakeError {
        kind: kind.into(),
        detail: detail.into(),
    }
}

/// Upgrades a connected stream: `GET path`, with `Authorization: Bearer token` if given.
pub async fn handshake(
    mut stream: TcpStream,
    host: &str,
    path: &str,
    token: Option<&str>,
    read_buffer: usize,
) -> Result<WsConn, HandshakeError> {
    let key = generate_key();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    );
    let io = |e: io::Error| herr("io", e.to_string());
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = vec![0u8; read_buffer.max(MAX_HEAD)];
    let mut end = 0;
    let head_len = loop {
        if let Some(i) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
            break i + 4;
        }
        if end == MAX_HEAD {
            return Err(herr("handshake", "HTTP response head too long"));
        }
        let n = stream.read(&mut buf[end..MAX_HEAD]).await.map_err(io)?;
        if n == 0 {
            return Err(herr("handshake", "connection closed during the upgrade"));
        }
        end += n;
    };
    check_response(&buf[..head_len], &derive_accept_key(key.as_bytes()))?;
    buf.copy_within(head_len..end, 0);
    buf.truncate(read_buffer.max(1024).max(end - head_len));
    let (rd, wr) = stream.into_split();
    Ok(WsConn {
        r: WsReader {
            rd,
            buf,
            start: 0,
            end: end - head_len,
            frag: None,
            done: Vec::new(),
        },
        w: WsWriter {
            wr,
            buf: Vec::with_capacity(256),
            seed: 0x9e37_79b9 ^ (crate::sys::mono_ns() as u32 | 1),
        },
        eio: false,
    })
}

impl WsConn {
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.w.send_text(payload).await
    }

    /// Reads until `f` returns Some for a text frame, answering pings on the way;
    /// a close or the end of the stream is an error.
    pub async fn read_until<T>(&mut self, mut f: impl FnMut(&[u8]) -> Option<T>) -> io::Result<T> {
        loop {
            while let Some(frame) = self.r.next()? {
                match frame {
                    Frame::Text(b"2") if self.eio => self.w.send_text(b"3").await?,
                    Frame::Text(t) => {
                        if let Some(v) = f(t) {
                            return Ok(v);
                        }
                    }
                    Frame::Ping(p) => self.w.pong(p).await?,
                    Frame::Close(code) => {
                        let msg = format!("closed by the server ({code})");
                        return Err(io::Error::new(io::ErrorKind::ConnectionAborted, msg));
                    }
                    Frame::Binary(_) | Frame::Pong => {}
                }
            }
            if self.r.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends a close frame, waiting at most 2 s.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.w.close()).await;
    }
}

/// Checks the status line and `Sec-WebSocket-Accept` of an upgrade response.
fn check_response(head: &[u8], accept: &str) -> Result<(), HandshakeError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code != "101" {
        let body = status.to_string();
        return Err(herr(format!("http_{code}"), body));
    }
    let ok = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        })
    });
    if !ok {
        return Err(herr("handshake", "missing or wrong Sec-WebSocket-Accept"));
    }
    Ok(())
}

impl WsReader {
    /// One read from the socket into the buffer; Ok(0) means end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() || self.start > self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            // A frame larger than the buffer: grow (bounded by MAX_FRAME in `next`).
            let new_len = self.buf.len() * 2;
            self.buf.resize(new_len, 0);
        }
        let n = self.rd.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame in the buffer, or None when more bytes are needed.
    pub fn next(&mut self) -> io::Result<Option<Frame<'_>>> {
        loop {
            let Some((fin, op, range)) = parse(&mut self.buf[self.start..self.end])? else {
                return Ok(None);
            };
            let (a, b) = (self.start + range.start, self.start + range.end);
            self.start += range.end;
            let data = a..b;
            match (op, fin, self.frag.is_some()) {
                (0x1 | 0x2, true, false) => {
                    let p = &self.buf[data];
                    return Ok(Some(if op == 1 {
                        Frame::Text(p)
                    } else {
                        Frame::Binary(p)
                    }));
                }
                (0x1 | 0x2, false, false) => {
                    let mut v = std::mem::take(&mut self.done);
                    v.clear();
                    v.extend_from_slice(&self.buf[data]);
                    self.frag = Some((op, v));
                }
                (0x0, _, true) => {
                    let (fop, v) = self.frag.as_mut().expect("checked");
                    v.extend_from_slice(&self.buf[data]);
                    if v.len() > MAX_FRAME {
                        return Err(bad("fragmented message too large"));
                    }
                    if fin {
                        let fop = *fop;
                        self.done = self.frag.take().expect("checked").1;
                        let p = &self.done[..];
                        return Ok(Some(if fop == 1 {
                            Frame::Text(p)
                        } else {
                            Frame::Binary(p)
                        }));
                    }
                }
                (0x8, _, _) => {
                    let p = &self.buf[data];
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    return Ok(Some(Frame::Close(code)));
                }
                (0x9, _, _) => return Ok(Some(Frame::Ping(&self.buf[data]))),
                (0xA, _, _) => return Ok(Some(Frame::Pong)),
                _ => return Err(bad("unexpected opcode or fragment")),
            }
        }
    }
}

impl WsWriter {
    /// Sends one text frame (masked, as a client must).
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.frame(0x1, payload);
        self.wr.write_all(&self.buf).await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.frame(0xA, payload);
        self.wr.write_all(&self.buf).await
    }

    /// Sends a normal close (1000) and shuts down the write side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.frame(0x8, &1000u16.to_be_bytes());
        self.wr.write_all(&self.buf).await?;
        self.wr.shutdown().await
    }

    fn frame(&mut self, op: u8, payload: &[u8]) {
        // xorshift32: masking keys need not be strong here, only non-constant.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 17;
        self.seed ^= self.seed << 5;
        encode(&mut self.buf, op, payload, self.seed.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::tests::server_frame;

    #[test]
    fn upgrade_response_is_checked() {
        let acc = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {acc}\r\n\r\n");
        assert!(check_response(ok.as_bytes(), &acc).is_ok());
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            check_response(wrong.as_bytes(), &acc).unwrap_err().kind,
            "handshake"
        );
        let denied = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            check_response(denied.as_bytes(), &acc).unwrap_err().kind,
            "http_401"
        );
    }

    #[tokio::test]
    async fn reader_reassembles_fragments_and_reports_control_frames() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = s.read(&mut head).await.unwrap();
            let req = String::from_utf8_lossy(&head[..n]).to_string();
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let acc = derive_accept_key(key.trim().as_bytes());
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: {acc}\r\n\r\n"
            )
            .into_bytes();
            out.extend(server_frame(true, 1, b"hello"));
            out.extend(server_frame(false, 1, b"fra"));
            out.extend(server_frame(true, 9, b"pi"));
            out.extend(server_frame(true, 0, b"gment"));
            out.extend(server_frame(true, 1, &vec![b'z'; 3000]));
            out.extend(server_frame(true, 8, &4008u16.to_be_bytes()));
            s.write_all(&out).await.unwrap();
            let mut pong = [0u8; 64];
            let n = s.read(&mut pong).await.unwrap();
            let (_, op, r) = parse(&mut pong[..n]).unwrap().unwrap();
            assert_eq!((op, &pong[r]), (0xA, &b"pi"[..]));
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let Ok(mut c) = handshake(stream, "h", "/ws", Some("t"), 1024).await else {
            panic!("handshake failed")
        };
        let mut got = Vec::new();
        loop {
            while let Some(f) = c.r.next().unwrap() {
                match f {
                    Frame::Ping(p) => {
                        let p = p.to_vec();
                        c.w.pong(&p).await.unwrap();
                        got.push("ping".to_string());
                    }
                    Frame::Text(t) => got.push(format!("text {}", t.len())),
                    Frame::Close(code) => got.push(format!("close {code}")),
                    other => panic!("{other:?}"),
                }
            }
            if got.last().is_some_and(|l| l.starts_with("close")) {
                break;
            }
            assert!(c.r.fill().await.unwrap() > 0);
        }
        assert_eq!(got, ["text 5", "ping", "text 8", "text 3000", "close 4008"]);
        server.await.unwrap();
    }
}
