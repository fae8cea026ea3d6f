//! A sender: one user sending continuously, one message at a time, at a bounded rate, into
//! its rooms in turn, each message with its own `clientMsgId`.
//!
//! A send that fails (an error ack, no ack, or the session ending) is sent again with the
//! **same** `clientMsgId` (docs/protocol.md: the answer is then the original message), after
//! reconnecting to the next node of its list if the session ended, for at most `retry_for`;
//! then the message is *abandoned* (its outcome unknown) and the sender goes on. Every ack is
//! recorded as an [`Acked`] and checked against what was sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{error_code, retryable, Conn, RequestError};
use crate::ledger::Acked;

/// Deadline of one request.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub user: String,
    pub rooms: Vec<String>,
    /// HTTP addresses: the first is where it starts, the others where it goes next.
    pub nodes: Vec<String>,
    /// Pause after each acknowledged (or abandoned) message.
    pub pace: Duration,
    /// Stop after this many acks.
    pub limit: Option<usize>,
    /// How long one message is retried before it is abandoned.
    pub retry_for: Duration,
}

impl SenderConfig {
    pub fn new(user: &str, rooms: &[String], nodes: Vec<String>) -> SenderConfig {
        SenderConfig {
            user: user.to_string(),
            rooms: rooms.to_vec(),
            nodes,
            pace: Duration::from_millis(20),
            limit: None,
            retry_for: Duration::from_secs(30),
        }
    }
}

/// What a sender did and was told.
#[derive(Debug, Default, Clone)]
pub struct SenderLog {
    pub user: String,
    pub acked: Vec<Acked>,
    /// Requests sent (first sends and retries).
    pub attempts: u64,
    /// Failures, by error code, `no answer`, `session closed` or `connect`.
    pub errors: BTreeMap<String, u64>,
    /// Sessions opened.
    pub sessions: u64,
    /// (node, close code) of every session that ended under it.
    pub closes: Vec<(String, Option<u16>)>,
    /// (room, clientMsgId) of messages given up after `retry_for`.
    pub abandoned: Vec<(String, String)>,
    /// Answers that break the protocol (an ack that is not the message sent, an error that is
    /// not retryable, ...).
    pub unexpected: Vec<String>,
    /// The node of the current session.
    pub node: String,
}

impl SenderLog {
    /// When the first ack after `t` arrived.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acked
            .iter()
            .map(|a| Instant::from_std(a.at))
            .find(|&at| at > t)
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: {} acked, {} attempts, {} retried messages, errors {:?}, {} sessions, closes \
             {:?}, {} abandoned, {} unexpected",
            self.user,
            self.acked.len(),
            self.attempts,
            self.acked.iter().filter(|a| a.attempts > 1).count(),
            self.errors,
            self.sessions,
            self.closes,
            self.abandoned.len(),
            self.unexpected.len()
        )
    }
}

pub struct Sender {
    pub user: String,
    log: Arc<Mutex<SenderLog>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sender {
    pub fn start(cfg: SenderConfig) -> Sender {
        let log = Arc::new(Mutex::new(SenderLog {
            user: cfg.user.clone(),
            ..Default::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let user = cfg.user.clone();
        let task = tokio::spawn(run(cfg, log.clone(), stopped));
        Sender {
            user,
            log,
            stop,
            task,
        }
    }

    pub fn snapshot(&self) -> SenderLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn acked(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked
            .len()
    }

    /// Waits until at least `n` messages are acknowledged (panics after `within`, or if the
    /// sender stopped before).
    pub async fn wait_acked(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let acked = self.acked();
            if acked >= n {
                return;
            }
            if self.task.is_finished() || Instant::now() > deadline {
                panic!(
                    "sender {}: {acked} acks, not {n} within {within:?}: {}",
                    self.user,
                    self.snapshot().summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops after the message in flight (bounded by `within`) and returns the log.
    pub async fn stop(mut self, within: Duration) -> SenderLog {
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            panic!(
                "sender {}: did not stop within {within:?}: {}",
                self.user,
                self.snapshot().summary()
            );
        }
        self.snapshot()
    }

    /// Waits until the sender reached its `limit` (bounded by `within`) and returns the log.
    pub async fn finish(mut self, within: Duration) -> SenderLog {
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            panic!(
                "sender {}: limit not reached within {within:?}: {}",
                self.user,
                self.snapshot().summary()
            );
        }
        self.snapshot()
    }
}

fn with<R>(log: &Mutex<SenderLog>, f: impl FnOnce(&mut SenderLog) -> R) -> R {
    f(&mut log.lock().unwrap_or_else(|p| p.into_inner()))
}

fn count(log: &Mutex<SenderLog>, what: &str) {
    with(log, |l| *l.errors.entry(what.to_string()).or_default() += 1);
}

/// A session (its pushes are not needed: the conn drops them once its receiver is gone).
type Session = Conn;

async fn run(cfg: SenderConfig, log: Arc<Mutex<SenderLog>>, stopped: watch::Receiver<bool>) {
    let mut next_node = 0usize;
    let mut session: Option<Session> = None;
    let mut n = 0u64;
    while !*stopped.borrow() {
        if cfg
            .limit
            .is_some_and(|l| with(&log, |g| g.acked.len()) >= l)
        {
            return;
        }
        n += 1;
        let room = &cfg.rooms[(n as usize - 1) % cfg.rooms.len()];
        let cmid = format!("{}-{n}", cfg.user);
        let text = format!("{} #{n} to {room}", cfg.user);
        let deadline = Instant::now() + cfg.retry_for;
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(50);
        loop {
            if *stopped.borrow() {
                return;
            }
            if Instant::now() > deadline {
                with(&log, |l| l.abandoned.push((room.clone(), cmid.clone())));
                break;
            }
            if session.is_none() {
                session = connect(&cfg, &log, &mut next_node, deadline).await;
                if session.is_none() {
                    continue; // the deadline check above abandons the message
                }
            }
            let conn = session.as_ref().expect("a session");
            attempts += 1;
            with(&log, |l| l.attempts += 1);
            let data = json!({"roomId": room, "text": text, "clientMsgId": cmid});
            match conn.request("sendMessage", data, REQUEST_WITHIN).await {
                Ok(ack) => match error_code(&ack) {
                    None => {
                        let d = &ack["data"];
                        let seq = d["seq"].as_u64().unwrap_or(0);
                        if d["roomId"] != room.as_str()
                            || d["clientMsgId"] != cmid.as_str()
                            || d["text"] != text.as_str()
                            || seq == 0
                        {
                            with(&log, |l| {
                                l.unexpected.push(format!(
                                    "the ack of {cmid} ({room}, {text:?}) is not that message: {ack}"
                                ))
                            });
                        } else {
                            with(&log, |l| {
                                l.acked.push(Acked {
                                    sender: cfg.user.clone(),
                                    room: room.clone(),
                                    seq,
                                    client_msg_id: cmid.clone(),
                                    text: text.clone(),
                                    at: Instant::now().into_std(),
                                    attempts,
                                })
                            });
                        }
                        break;
                    }
                    Some(code) if retryable(&code) => count(&log, &code),
                    Some(code) if code == "not_in_room" => {
                        // The session lost its membership (its node changed its mind about the
                        // room): join again on a fresh session.
                        count(&log, &code);
                        session = None;
                    }
                    Some(code) => {
                        count(&log, &code);
                        with(&log, |l| {
                            l.unexpected
                                .push(format!("{cmid} in {room}: not retryable: {ack}"))
                        });
                        break;
                    }
                },
                Err(RequestError::Timeout) => {
                    count(&log, "no answer");
                    end_session(&log, &mut session).await;
                    next_node += 1;
                }
                Err(RequestError::Closed) => {
                    count(&log, "session closed");
                    let code = conn.close_code(Duration::from_millis(500)).await;
                    with(&log, |l| l.closes.push((conn.node.clone(), code)));
                    session = None;
                    next_node += 1;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        tokio::time::sleep(cfg.pace).await;
    }
}

/// Drops a session that stopped answering, recording its end (no close code).
async fn end_session(log: &Mutex<SenderLog>, session: &mut Option<Session>) {
    if let Some(conn) = session.take() {
        with(log, |l| l.closes.push((conn.node.clone(), None)));
    }
}

/// A session on the next node that answers, joined to every room; `None` at `deadline`.
async fn connect(
    cfg: &SenderConfig,
    log: &Mutex<SenderLog>,
    next_node: &mut usize,
    deadline: Instant,
) -> Option<Session> {
    'nodes: while Instant::now() < deadline {
        let node = &cfg.nodes[*next_node % cfg.nodes.len()];
        let conn = match Conn::open(node, &cfg.user).await {
            Ok((conn, _pushes)) => conn,
            Err(_) => {
                count(log, "connect");
                *next_node += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        with(log, |l| {
            l.sessions += 1;
            l.node = node.clone();
        });
        for room in &cfg.rooms {
            loop {
                match conn
                    .request("joinRoom", json!({"roomId": room}), REQUEST_WITHIN)
                    .await
                {
                    Ok(ack) => match error_code(&ack) {
                        None => break,
                        Some(code) if retryable(&code) && Instant::now() < deadline => {
                            count(log, &format!("join: {code}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Some(code) => {
                            count(log, &format!("join: {code}"));
                            if !retryable(&code) {
                                with(log, |l| l.unexpected.push(format!("join {room}: {ack}")));
                            }
                            return None;
                        }
                    },
                    Err(_) => {
                        count(log, "join: no session");
                        with(log, |l| l.closes.push((node.clone(), None)));
                        *next_node += 1;
                        continue 'nodes;
                    }
                }
            }
        }
        return Some(conn);
    }
    None
}

/// The checks every test makes of its senders' logs: no answer broke the protocol, and (when
/// `abandon_ok` is false) no message was given up.
pub fn check_senders(logs: &[SenderLog], abandon_ok: bool) -> Vec<String> {
    let mut out = Vec::new();
    for l in logs {
        out.extend(l.unexpected.iter().map(|u| format!("{}: {u}", l.user)));
        if !abandon_ok && !l.abandoned.is_empty() {
            out.push(format!(
                "{}: gave up on {} messages after retrying them: {:?}",
                l.user,
                l.abandoned.len(),
                l.abandoned
            ));
        }
    }
    out
}

/// Every ack of every sender.
pub fn all_acked(logs: &[SenderLog]) -> Vec<Acked> {
    logs.iter().flat_map(|l| l.acked.iter().cloned()).collect()
}

/// The acks of `room`.
pub fn acked_in<'a>(acked: &'a [Acked], room: &str) -> Vec<&'a Acked> {
    acked.iter().filter(|a| a.room == room).collect()
}
