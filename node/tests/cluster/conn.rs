//! A WebSocket session for long-running clients: requests can be awaited while pushes keep
//! arriving, and a node that dies or goes silent is an outcome, never a panic.
//!
//! The e2e [`Client`](crate::harness::Client) is a script: it reads only while waiting for
//! something and panics on a close. A reader or sender that outlives a node needs the
//! opposite, so this session reads all the time in a task of its own: acks go to the request
//! that waits for them (by id), everything else, and finally the close, to an event channel.
//! It is opened with the harness's `Client::connect_url` and the harness's tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{token, Client};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The requests waiting for their ack, and how the session ended (once it has).
#[derive(Default)]
struct Shared {
    pending: HashMap<u64, oneshot::Sender<Value>>,
    closed: Option<Option<u16>>,
}

type Pending = Arc<Mutex<Shared>>;

/// How long a connection attempt (TCP + upgrade) may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// What the server sent that was not an ack.
#[derive(Debug)]
pub enum Event {
    /// A push (`{"event": ..., "data": ...}`); a frame that is not JSON arrives as a string.
    Push(Value),
    /// The session ended: the close code, or `None` when the connection just dropped.
    Closed(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The session ended before the ack.
    Closed,
    /// No ack within the deadline (the outcome is unknown).
    Timeout,
}

pub struct Conn {
    /// The node's HTTP address.
    pub node: String,
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    pending: Pending,
    next_id: AtomicU64,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Opens a session of `user` (display name: upper case) on the node at `node`.
    pub async fn open(
        node: &str,
        user: &str,
    ) -> Result<(Conn, mpsc::UnboundedReceiver<Event>), String> {
        let url = format!("ws://{node}/ws?token={}", token(user, &user.to_uppercase()));
        let client = tokio::time::timeout(CONNECT_WITHIN, Client::connect_url(&url))
            .await
            .map_err(|_| format!("connecting to {node}: no answer within {CONNECT_WITHIN:?}"))?
            .map_err(|e| format!("connecting to {node}: {e:?}"))?;
        let (sink, mut stream) = client.ws.split();
        let pending: Pending = Arc::default();
        let (events, rx) = mpsc::unbounded_channel();
        let task = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let mut code = None;
                while let Some(frame) = stream.next().await {
                    match frame {
                        Ok(Message::Text(t)) => {
                            let v: Value = serde_json::from_str(&t)
                                .unwrap_or_else(|_| Value::String(t.to_string()));
                            if let Some(id) = v.get("ack").and_then(Value::as_u64) {
                                let waiter = pending
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .pending
                                    .remove(&id);
                                if let Some(w) = waiter {
                                    let _ = w.send(v);
                                }
                            } else {
                                let _ = events.send(Event::Push(v));
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            code = frame.map(|f| u16::from(f.code));
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                // Every waiting request, and every later one, learns that the session is gone.
                {
                    let mut shared = pending.lock().unwrap_or_else(|p| p.into_inner());
                    shared.closed = Some(code);
                    shared.pending.clear();
                }
                let _ = events.send(Event::Closed(code));
            })
        };
        Ok((
            Conn {
                node: node.to_string(),
                sink: tokio::sync::Mutex::new(sink),
                pending,
                next_id: AtomicU64::new(1),
                task,
            },
            rx,
        ))
    }

    /// Sends a request and returns its ack frame (`{"ack":..,"data"|"error":..}`).
    pub async fn request(
        &self,
        event: &str,
        data: Value,
        within: Duration,
    ) -> Result<Value, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut shared = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if shared.closed.is_some() {
                return Err(RequestError::Closed);
            }
            shared.pending.insert(id, tx);
        }
        let frame = json!({"event": event, "data": data, "id": id}).to_string();
        let outcome = tokio::time::timeout(within, async {
            self.sink
                .lock()
                .await
                .send(Message::text(frame))
                .await
                .map_err(|_| RequestError::Closed)?;
            rx.await.map_err(|_| RequestError::Closed)
        })
        .await
        .unwrap_or(Err(RequestError::Timeout));
        if outcome.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending
                .remove(&id);
        }
        outcome
    }

    /// How the session ended, once it has: `Some(close code)`.
    pub fn closed(&self) -> Option<Option<u16>> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
    }

    /// Waits up to `within` for the session to end; its close code (`None`: no close frame,
    /// or still open).
    pub async fn close_code(&self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(code) = self.closed() {
                return code;
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The error code of an ack, if it is an error.
pub fn error_code(ack: &Value) -> Option<String> {
    ack.get("error").map(|e| {
        e["code"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string())
    })
}

/// Errors after which the same request may be sent again (docs/protocol.md: the server's
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
