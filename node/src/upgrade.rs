//! WebSocket connections leave actix-http's HTTP/1 dispatcher at the upgrade.
//!
//! Why: actix-http gives every connection an 8 KiB read and an 8 KiB write buffer (fixed
//! constants in `h1/dispatcher.rs`) and keeps them, with the whole dispatcher task, for the
//! life of a WebSocket. Measured with heaptrack at 3,000 idle sessions, that was 16,384 B of
//! buffers plus a 2.3 KiB task per connection: the largest part of a node's memory per idle
//! connection (BENCHMARKS.md, "Memory per connection: where it goes, and what was done").
//!
//! So the HTTP service is built with an upgrade handler. actix-http hands the socket over at
//! a WebSocket upgrade request; this module
//! 1. runs that request through the same actix-web `App` (its own instance per worker), so the
//!    `/ws` and `/socket.io` handlers, authentication, limits and the actix `WebsocketContext`
//!    session actors are exactly the ones plain HTTP requests reach;
//! 2. writes the response head with actix-http's own HTTP/1 codec, and for anything but
//!    `101 Switching Protocols` the body, then closes the connection;
//! 3. drives the session on a small task of its own (the dispatcher's task ends, and its
//!    buffers are freed): the session reads through [`SocketInput`], which holds no buffer
//!    while the socket is idle (a read lands in the worker thread's buffer and is copied into
//!    a `Bytes` of exactly its length), and a pump writes, with vectored writes, the frames the
//!    session queued in the connection's `sessions::egress::Egress` (a push's frame is encoded
//!    once and its bytes shared by every recipient) and whatever its actix context produced.
//!
//! Backpressure is the dispatcher's: the session is not polled while more than
//! [`PAUSE_AT`] bytes wait for the socket, so a client that stops reading holds at most that
//! much here (plus its bounded outbox; see `sessions::outbox` for the slow-consumer eviction
//! and the kill switch that ends such a connection). After the session's last frame (its close
//! frame), the rest is flushed for at most [`CLOSE_FLUSH`], and the client gets up to
//! [`CLOSE_LINGER`] to close its side (as actix-http's `client_disconnect_timeout` gave it).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::{h1, ConnectionType, HttpMessage, Payload, Request, Response, StatusCode};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use sessions::egress::Egress;
use tokio::sync::Notify;

/// Stop polling a session while this many bytes of its frames wait for the socket.
pub const PAUSE_AT: usize = 64 * 1024;
/// How long the frames left after a session ended (its close frame) may take to flush.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// How long a closed connection waits for the client to close its side.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Largest non-101 response body written on an upgrade request (error bodies are small JSON).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Frames per vectored write.
const MAX_SLICES: usize = sessions::egress::MAX_SLICES;
/// Buffer for one socket read.
const READ_CHUNK: usize = 8 * 1024;

/// The WebSocket connections this node drives: its connection limit, and a graceful stop.
#[derive(Debug)]
pub struct LiveSockets {
    count: AtomicUsize,
    max: usize,
    idle: Notify,
}

impl LiveSockets {
    /// Room for `max` connections; one more is refused (`503 server_full`).
    pub fn new(max: usize) -> Self {
        LiveSockets {
            count: AtomicUsize::new(0),
            max,
            idle: Notify::new(),
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn is_full(&self) -> bool {
        self.count() >= self.max
    }

    /// Waits until no WebSocket connection is left, or `limit` has passed.
    pub async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.count() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Counts a connection while it lives.
struct LiveGuard(Arc<LiveSockets>);

impl LiveGuard {
    fn new(live: Arc<LiveSockets>) -> Self {
        live.count.fetch_add(1, Ordering::AcqRel);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Takes an upgrade request over from actix-http: the connection continues on a task of its
/// own, and the dispatcher (with its buffers) is dropped at once.
pub fn hand_over<S, B>(
    app: Rc<S>,
    live: Arc<LiveSockets>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    // Checked before this connection counts: at most `max` live at once (a race between
    // workers may let one or two more through).
    let admit = if live.is_full() {
        metrics::counter!("parley_connections_refused_total", "reason" => "server_full")
            .increment(1);
        Admit::Full(live.max())
    } else {
        Admit::Yes
    };
    let guard = LiveGuard::new(live);
    actix_web::rt::spawn(async move {
        // The handshake (with the App's handler future) runs boxed, so its state is freed once
        // the connection is established: the task itself keeps only the pump.
        match Box::pin(handshake(app, req, framed, admit)).await {
            Ok(Some(mut pump)) => {
                if let Err(e) = pump.run().await {
                    tracing::debug!(error = %e, "websocket connection ended with an error");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "websocket handshake failed"),
        }
        drop(guard);
    });
}

/// Whether an upgrade request may become a connection.
enum Admit {
    Yes,
    /// The node holds its limit of connections (the limit).
    Full(usize),
}

/// `503 server_full`, with a hint to come back later (or to another node).
fn server_full(max: usize) -> Response<BoxBody> {
    let res = actix_web::HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "5"))
        .json(serde_json::json!({"error": {
            "code": "server_full",
            "message": format!("this node holds its limit of {max} connections; retry later or connect to another node"),
        }}));
    Response::from(res).map_into_boxed_body()
}

/// Runs the upgrade request through the App and writes the response head. `Some`: the session
/// to drive; `None`: the request was refused (the response is written, the connection closed).
async fn handshake<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    admit: Admit,
) -> io::Result<Option<Pump>>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let parts = framed.into_parts();
    let io = Rc::new(parts.io);
    let mut codec = parts.codec;
    // Bytes the client sent right behind the request head (its first frames), copied out so
    // the dispatcher's 8 KiB buffers are freed here.
    let early = (!parts.read_buf.is_empty()).then(|| Bytes::copy_from_slice(&parts.read_buf));
    drop(parts.read_buf);
    drop(parts.write_buf);

    let input = SocketInput {
        io: io.clone(),
        early,
        done: false,
    };
    let (req, _) = req.replace_payload(Payload::Stream {
        payload: Box::pin(input) as actix_http::BoxedPayloadStream,
    });
    // The connection's write queue: a `/ws` session writes its frames straight into it.
    let out = Egress::default();
    req.extensions_mut().insert(out.clone());
    let res: Response<BoxBody> = match admit {
        Admit::Full(max) => server_full(max),
        Admit::Yes => match app.call(req).await {
            Ok(res) => Response::from(res).map_into_boxed_body(),
            Err(e) => Response::from(e),
        },
    };
    let (mut head, body) = res.into_parts();
    let mut head_bytes = BytesMut::new();

    if head.status() != StatusCode::SWITCHING_PROTOCOLS {
        let bytes = match body.size() {
            BodySize::Sized(n) if n as usize <= MAX_ERROR_BODY => {
                actix_http::body::to_bytes(body).await.unwrap_or_default()
            }
            _ => Bytes::new(),
        };
        head.head_mut().set_connection_type(ConnectionType::Close);
        codec
            .encode(
                h1::Message::Item((head, BodySize::Sized(bytes.len() as u64))),
                &mut head_bytes,
            )
            .map_err(io::Error::other)?;
        head_bytes.extend_from_slice(&bytes);
        write_all(&io, &head_bytes).await?;
        linger(&io).await;
        return Ok(None);
    }

    codec
        .encode(h1::Message::Item((head, BodySize::Stream)), &mut head_bytes)
        .map_err(io::Error::other)?;
    // First in the queue: the session has not run yet (the pump polls it).
    out.push(head_bytes.freeze());
    Ok(Some(Pump {
        io,
        body,
        out,
        body_done: false,
    }))
}

/// Ends a connection as the WebSocket closing handshake wants: shut down our side, then read
/// (and discard) until the client closes too, for at most [`CLOSE_LINGER`]. Closing with
/// unread input at once would answer the client's late frames (a pong, its close frame) with
/// a reset, and a reset makes the client's kernel drop the close frame it has not read yet.
async fn linger(io: &TcpStream) {
    let _ = socket2::SockRef::from(io).shutdown(std::net::Shutdown::Write);
    let drain = async {
        while io.readable().await.is_ok() {
            match discard_input(io) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}

/// One read into a stack buffer (kept out of the futures above, whose state lives as long as
/// the connection).
fn discard_input(io: &TcpStream) -> io::Result<usize> {
    let mut buf = [0u8; 1024];
    io.try_read(&mut buf)
}

async fn write_all(io: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        io.writable().await?;
        match io.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as the session's input: a stream of exactly-sized chunks.
pub struct SocketInput {
    io: Rc<TcpStream>,
    early: Option<Bytes>,
    done: bool,
}

impl Stream for SocketInput {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(b) = this.early.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Err(e) = ready!(this.io.poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Err(PayloadError::Io(e))));
            }
            match read_chunk(&this.io) {
                Ok(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(Some(b)) => return Poll::Ready(Some(Ok(b))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(PayloadError::Io(e))));
                }
            }
        }
    }
}

thread_local! {
    /// The worker thread's read buffer: zeroed once, not on every read.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// One read through the thread's buffer, copied into a `Bytes` of exactly its length (the
/// connection holds no buffer while idle). `None` at end of stream.
fn read_chunk(io: &TcpStream) -> io::Result<Option<Bytes>> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        match io.try_read(&mut buf)? {
            0 => Ok(None),
            n => Ok(Some(Bytes::copy_from_slice(&buf[..n]))),
        }
    })
}

/// Moves a session's frames to its socket: the frames it queued in the connection's
/// [`Egress`], and whatever its actix context produced (the body stream).
struct Pump {
    io: Rc<TcpStream>,
    body: BoxBody,
    out: Egress,
    body_done: bool,
}

impl Pump {
    /// Drives the session to its end, then closes the connection.
    async fn run(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_session(cx)).await?;
        // The session ended: flush its last frames (the close frame), bounded.
        match tokio::time::timeout(CLOSE_FLUSH, poll_fn(|cx| self.poll_flush(cx))).await {
            Ok(r) => r?,
            Err(_) => tracing::debug!("client did not read its last frames; dropping the socket"),
        }
        linger(&self.io).await;
        Ok(())
    }

    /// Runs the session (polling its context runs the actor and reads its input) and writes
    /// what it produces; ready when the session has ended.
    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Poll the session until it has nothing more (its waker is then registered) or
            // until PAUSE_AT bytes wait for the socket.
            let mut paused = false;
            while !self.body_done {
                if self.out.queued() >= PAUSE_AT {
                    paused = true;
                    break;
                }
                match Pin::new(&mut self.body).poll_next(cx) {
                    Poll::Ready(Some(Ok(b))) => self.out.push(b),
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(io::Error::other(e.to_string())))
                    }
                    Poll::Ready(None) => self.body_done = true,
                    Poll::Pending => break,
                }
            }
            if self.body_done {
                return Poll::Ready(Ok(()));
            }
            let wrote = self.write_some(cx)?;
            // Polled again only if it was paused and writing made room: each poll runs the
            // whole actor context, so a session that said Pending is left to its waker.
            if !(paused && wrote > 0 && self.out.queued() < PAUSE_AT) {
                return Poll::Pending;
            }
        }
    }

    /// Ready when every queued frame is written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            if self.write_some(cx)? == 0 {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes as much of the queue as the socket takes now; the bytes written.
    fn write_some(&mut self, cx: &mut Context<'_>) -> io::Result<usize> {
        let mut total = 0;
        while !self.out.is_empty() {
            match self.io.poll_write_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(r) => r?,
            }
            let io = &self.io;
            match self
                .out
                .write_with(MAX_SLICES, |slices| io.try_write_vectored(slices))
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => total += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_sockets_drain_when_the_last_guard_drops() {
        let live = Arc::new(LiveSockets::new(usize::MAX));
        assert!(live.drained(Duration::from_millis(10)).await);
        let a = LiveGuard::new(live.clone());
        let b = LiveGuard::new(live.clone());
        assert_eq!(live.count(), 2);
        assert!(!live.drained(Duration::from_millis(20)).await);
        drop(a);
        let waiter = {
            let live = live.clone();
            tokio::spawn(async move { live.drained(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b);
        assert!(waiter.await.unwrap());
        assert_eq!(live.count(), 0);
    }
}
