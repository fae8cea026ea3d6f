//! A long-lived `/ws` session for the `failover` scenario: requests are awaited while pushes
//! keep arriving, and a node that dies is an outcome, never an error of the tool.
//!
//! The connection is opened with [`net::connect`] (loopback only, spread source addresses,
//! bearer token), then a task of its own reads every frame: an ack goes to the request that
//! waits for it (by id), anything else to an event channel, and finally the end of the session
//! (with the close code, if the server sent one). Frames are parsed with serde_json: this
//! scenario is about correctness at moderate rates, not about the cost per delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::net::{self, ConnOpts, Fail, Target};
use crate::ws::{Frame, WsReader, WsWriter};

/// What the server sent that is not an ack.
#[derive(Debug)]
pub enum Event {
    /// A push (`{"event": ..., "data": ...}`).
    Push(Value),
    /// The session ended (its close code: [`Conn::closed`]).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqError {
    /// The session ended before the ack.
    Closed,
    /// No ack within the deadline (the outcome is unknown).
    Timeout,
}

#[derive(Default)]
struct Shared {
    pending: HashMap<u64, oneshot::Sender<Value>>,
    closed: Option<Option<u16>>,
}

type Writer = Arc<tokio::sync::Mutex<WsWriter>>;

pub struct Conn {
    writer: Writer,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Opens a session with `token` on `target`; `index` picks the source address.
    pub async fn open(
        target: &Target,
        token: &str,
        index: u64,
        opts: ConnOpts,
    ) -> Result<(Conn, mpsc::UnboundedReceiver<Event>), Fail> {
        let (ws, _) = net::connect(target, token, index, opts).await?;
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(ws.w));
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let (events, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(read_loop(ws.r, writer.clone(), shared.clone(), events));
        Ok((
            Conn {
                writer,
                shared,
                next_id: AtomicU64::new(1),
                task,
            },
            rx,
        ))
    }

    /// Sends `{"event","data","id"}` and returns the ack frame (`{"ack":..,"data"|"error":..}`).
    pub async fn request(
        &self,
        event: &str,
        data: Value,
        within: Duration,
    ) -> Result<Value, ReqError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut s = lock(&self.shared);
            if s.closed.is_some() {
                return Err(ReqError::Closed);
            }
            s.pending.insert(id, tx);
        }
        let frame = json!({"event": event, "data": data, "id": id}).to_string();
        let outcome = tokio::time::timeout(within, async {
            self.writer
                .lock()
                .await
                .send_text(frame.as_bytes())
                .await
                .map_err(|_| ReqError::Closed)?;
            rx.await.map_err(|_| ReqError::Closed)
        })
        .await
        .unwrap_or(Err(ReqError::Timeout));
        if outcome.is_err() {
            lock(&self.shared).pending.remove(&id);
        }
        outcome
    }

    /// The close code once the session has ended (`Some(None)`: no close frame).
    pub fn closed(&self) -> Option<Option<u16>> {
        lock(&self.shared).closed
    }

    /// Sends a normal close (bounded).
    pub async fn close(&self) {
        let w = self.writer.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), async move {
            w.lock().await.close().await
        })
        .await;
    }
}

async fn read_loop(
    mut r: WsReader,
    writer: Writer,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let code = 'read: loop {
        loop {
            let mut ping = None;
            match r.next() {
                Ok(Some(Frame::Text(t))) => dispatch(t, &shared, &events),
                Ok(Some(Frame::Ping(p))) => ping = Some(p.to_vec()),
                Ok(Some(Frame::Close(code))) => break 'read Some(code),
                Ok(Some(Frame::Binary(_) | Frame::Pong)) => {}
                Ok(None) => break,
                Err(_) => break 'read None,
            }
            if let Some(p) = ping {
                if writer.lock().await.pong(&p).await.is_err() {
                    break 'read None;
                }
            }
        }
        match r.fill().await {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    {
        let mut s = lock(&shared);
        s.closed = Some(code);
        s.pending.clear();
    }
    let _ = events.send(Event::Closed);
}

fn dispatch(t: &[u8], shared: &Mutex<Shared>, events: &mpsc::UnboundedSender<Event>) {
    let v: Value = serde_json::from_slice(t)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(t).into_owned()));
    if let Some(id) = v.get("ack").and_then(Value::as_u64) {
        if let Some(w) = lock(shared).pending.remove(&id) {
            let _ = w.send(v);
        }
    } else {
        let _ = events.send(Event::Push(v));
    }
}

/// The error code of an ack, if it is an error.
pub fn error_code(ack: &Value) -> Option<String> {
    ack.get("error").map(|e| {
        e["code"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "unknown".to_string())
    })
}

/// Error codes after which the same request may be sent again (docs/protocol.md: the server's
/// failures, the cluster's `room_moved`, and the two "back off" answers).
pub fn retryable(code: &str) -> bool {
    matches!(
        code,
        "timeout"
            | "room_unavailable"
            | "store_unavailable"
            | "room_moved"
            | "internal"
            | "overloaded"
            | "rate_limited"
    )
}
