//! A reader: one user, member of some rooms, connected to one node at a time, behaving like the
//! client docs/protocol.md describes, and recording everything in a [`RoomLog`] per room.
//!
//! * on (re)connect it joins every room and catches up with `resume` from its highest
//!   contiguous seq (paged: `complete: false` → again);
//! * `newMessage` pushes are recorded per session (a session = one connection);
//! * `resync {roomId}` is answered with the same catch-up;
//! * when its session ends (close code recorded) it reconnects to the next node of its list,
//!   for at most [`RECONNECT_FOR`];
//! * [`Reader::finish`] catches up every room a last time and returns what it saw.
//!
//! It never panics in its task: what goes wrong is recorded (`fatal`, `violations` of the
//! logs) and asserted by the test at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{error_code, retryable, Conn, Event, RequestError};
use crate::ledger::{Msg, RoomLog};

/// How long a reader keeps trying to get a working session (connect, join, catch up).
pub const RECONNECT_FOR: Duration = Duration::from_secs(45);
/// Deadline of one request.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// What a reader saw.
#[derive(Debug, Default, Clone)]
pub struct ReaderState {
    pub user: String,
    pub rooms: BTreeMap<String, RoomLog>,
    /// The node of the current session (HTTP address).
    pub node: String,
    /// Sessions opened so far.
    pub sessions: u64,
    /// Joined every room on the current session and caught up.
    pub ready: bool,
    /// (node, close code) of every session that ended.
    pub closes: Vec<(String, Option<u16>)>,
    pub resyncs: u64,
    /// Failed requests that were retried, by code.
    pub errors: BTreeMap<String, u64>,
    /// Why the reader gave up, if it did.
    pub fatal: Option<String>,
}

enum Cmd {
    Finish(oneshot::Sender<()>),
}

pub struct Reader {
    pub user: String,
    state: Arc<Mutex<ReaderState>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    /// Starts a reader of `rooms` on the first of `nodes` (HTTP addresses, the later ones are
    /// where it goes when its node closes); returns once it has joined every room.
    pub async fn start(user: &str, rooms: &[String], nodes: Vec<String>) -> Reader {
        let state = Arc::new(Mutex::new(ReaderState {
            user: user.to_string(),
            rooms: rooms
                .iter()
                .map(|r| (r.clone(), RoomLog::default()))
                .collect(),
            ..Default::default()
        }));
        let (cmd, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(state.clone(), rooms.to_vec(), nodes, rx));
        let r = Reader {
            user: user.to_string(),
            state,
            cmd,
            task,
        };
        r.wait_for("joined every room", Duration::from_secs(30), |s| s.ready)
            .await;
        r
    }

    /// A copy of what the reader saw so far.
    pub fn snapshot(&self) -> ReaderState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `pred` holds (panics after `within`, or at once if the reader gave up).
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&ReaderState) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            {
                let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if pred(&s) {
                    return;
                }
                if let Some(f) = &s.fatal {
                    panic!(
                        "reader {}: gave up while waiting for {what}: {f}",
                        self.user
                    );
                }
                if Instant::now() > deadline {
                    let rooms: Vec<String> = s
                        .rooms
                        .iter()
                        .map(|(r, l)| format!("{r}: 1..={} of {}", l.contiguous(), l.max_seq()))
                        .collect();
                    panic!(
                        "reader {}: not {what} within {within:?}; on {} (ready: {}), sessions \
                         {}, closes {:?}, {} resyncs, errors {:?}, known {rooms:?}",
                        self.user, s.node, s.ready, s.sessions, s.closes, s.resyncs, s.errors
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the message `client_msg_id` of `room` arrived as a push.
    pub async fn wait_pushed(&self, room: &str, client_msg_id: &str, within: Duration) {
        self.wait_for(&format!("pushed {client_msg_id} in {room}"), within, |s| {
            s.rooms[room].pushed_client_msg(client_msg_id)
        })
        .await;
    }

    /// Catches up every room a last time (reconnecting if needed) and returns what the reader
    /// saw.
    pub async fn finish(self, within: Duration) -> ReaderState {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(Cmd::Finish(tx));
        let done = tokio::time::timeout(within, rx).await;
        let s = self.snapshot();
        match done {
            Ok(Ok(())) => s,
            _ => panic!(
                "reader {}: final catch-up not done within {within:?} (fatal: {:?}, on {}, \
                 ready {})",
                self.user, s.fatal, s.node, s.ready
            ),
        }
    }
}

/// What ended a session's loop.
enum Ended {
    /// The server closed the session (code, if any).
    Closed(Option<u16>),
    /// A request failed or got no answer: reconnect.
    Broken,
    /// Finished (or the handle is gone).
    Done,
}

async fn run(
    state: Arc<Mutex<ReaderState>>,
    rooms: Vec<String>,
    nodes: Vec<String>,
    mut cmd: mpsc::UnboundedReceiver<Cmd>,
) {
    let user = state.lock().unwrap_or_else(|p| p.into_inner()).user.clone();
    let mut next = 0usize;
    let mut finishing: Option<oneshot::Sender<()>> = None;
    let mut since = Instant::now();
    loop {
        if since.elapsed() > RECONNECT_FOR {
            set(&state, |s| {
                s.fatal = Some(format!("no working session for {RECONNECT_FOR:?}"))
            });
        }
        if state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fatal
            .is_some()
        {
            return;
        }
        let node = nodes[next % nodes.len()].clone();
        let (conn, mut events) = match Conn::open(&node, &user).await {
            Ok(c) => c,
            Err(e) => {
                count(&state, &format!("connect: {e}"));
                next += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let session = set(&state, |s| {
            s.sessions += 1;
            s.node = node.clone();
            s.sessions
        });
        let mut r = Session {
            state: &state,
            conn: &conn,
            session,
        };
        let ended = if r.join_all(&rooms).await.is_err() {
            Ended::Broken
        } else {
            set(&state, |s| s.ready = true);
            if let Some(done) = finishing.take() {
                // Reconnected during the final catch-up, which join_all just did.
                let _ = done.send(());
                return;
            }
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(Event::Push(v)) => {
                            if r.on_push(v).await.is_err() {
                                break Ended::Broken;
                            }
                        }
                        Some(Event::Closed(code)) => break Ended::Closed(code),
                        None => break Ended::Closed(None),
                    },
                    c = cmd.recv() => match c {
                        Some(Cmd::Finish(done)) => {
                            // What already arrived first, then a last catch-up of every room.
                            let mut closed = None;
                            while let Ok(ev) = events.try_recv() {
                                match ev {
                                    Event::Push(v) => {
                                        let _ = r.on_push(v).await;
                                    }
                                    Event::Closed(code) => closed = Some(code),
                                }
                            }
                            let mut ok = closed.is_none();
                            for room in &rooms {
                                ok = ok && r.catch_up(room).await.is_ok();
                            }
                            if ok {
                                let _ = done.send(());
                                break Ended::Done;
                            }
                            finishing = Some(done);
                            break closed.map(Ended::Closed).unwrap_or(Ended::Broken);
                        }
                        None => break Ended::Done,
                    },
                }
            }
        };
        let was_ready = set(&state, |s| std::mem::replace(&mut s.ready, false));
        match ended {
            Ended::Done => return,
            Ended::Closed(code) => set(&state, |s| s.closes.push((node.clone(), code))),
            Ended::Broken => r.closed(&mut events).await,
        }
        next += 1;
        if was_ready {
            // The bound counts from the end of the last working session.
            since = Instant::now();
        }
    }
}

fn set<R>(state: &Mutex<ReaderState>, f: impl FnOnce(&mut ReaderState) -> R) -> R {
    f(&mut state.lock().unwrap_or_else(|p| p.into_inner()))
}

fn count(state: &Mutex<ReaderState>, what: &str) {
    set(state, |s| {
        *s.errors.entry(what.to_string()).or_default() += 1
    });
}

/// One session of a reader.
struct Session<'a> {
    state: &'a Mutex<ReaderState>,
    conn: &'a Conn,
    session: u64,
}

/// The session is unusable: reconnect.
struct Broken;

impl Session<'_> {
    /// Records how a broken session ended: its close code if the server sends one within
    /// 500 ms (pushes that arrive meanwhile are still recorded), else `None`.
    async fn closed(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        let code = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Closed(code) => return code,
                    Event::Push(v) if v["event"] == "newMessage" => {
                        let _ = self.on_push(v).await;
                    }
                    Event::Push(_) => {}
                }
            }
            None
        })
        .await
        .unwrap_or(None);
        let node = self.conn.node.clone();
        set(self.state, |s| s.closes.push((node, code)));
    }

    /// A request, retried while the answer is a retryable error (bounded).
    async fn request(&mut self, event: &str, data: Value) -> Result<Value, Broken> {
        let deadline = Instant::now() + RECONNECT_FOR;
        loop {
            match self.conn.request(event, data.clone(), REQUEST_WITHIN).await {
                Ok(ack) => match error_code(&ack) {
                    None => return Ok(ack["data"].clone()),
                    Some(code) if retryable(&code) && Instant::now() < deadline => {
                        count(self.state, &format!("{event}: {code}"));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Some(code) => {
                        set(self.state, |s| {
                            s.fatal = Some(format!("{event} {data} answered {code}: {ack}"))
                        });
                        return Err(Broken);
                    }
                },
                Err(RequestError::Closed) => return Err(Broken),
                Err(RequestError::Timeout) => {
                    count(self.state, &format!("{event}: no answer"));
                    return Err(Broken);
                }
            }
        }
    }

    async fn join_all(&mut self, rooms: &[String]) -> Result<(), Broken> {
        for room in rooms {
            let j = self.request("joinRoom", json!({"roomId": room})).await?;
            for m in j["messages"].as_array().into_iter().flatten() {
                self.record_fetched(room, m);
            }
            self.catch_up(room).await?;
        }
        Ok(())
    }

    /// `resume` from the highest contiguous seq until `complete`.
    async fn catch_up(&mut self, room: &str) -> Result<(), Broken> {
        let mut after = self.log(room, |l| l.contiguous());
        loop {
            let page = self
                .request("resume", json!({"roomId": room, "afterSeq": after}))
                .await?;
            let msgs = page["messages"].as_array().cloned().unwrap_or_default();
            for m in &msgs {
                self.record_fetched(room, m);
            }
            if page["complete"] == true {
                return Ok(());
            }
            // Next page after the last seq received (or the contiguous one, if the page was
            // odd: the final check reports gaps).
            let last = msgs.iter().filter_map(|m| m["seq"].as_u64()).max();
            let next = last.unwrap_or(0).max(self.log(room, |l| l.contiguous()));
            if next <= after {
                set(self.state, |s| {
                    s.fatal = Some(format!("resume of {room} after {after}: incomplete page that does not advance: {page}"))
                });
                return Err(Broken);
            }
            after = next;
        }
    }

    async fn on_push(&mut self, v: Value) -> Result<(), Broken> {
        let data = &v["data"];
        let room = data["roomId"].as_str().unwrap_or_default().to_string();
        match v["event"].as_str() {
            Some("newMessage") => {
                let session = self.session;
                match Msg::from_json(data) {
                    Ok(m) => self.log_mut(&room, |l| l.push(session, m)),
                    Err(e) => self.violation(&room, format!("bad newMessage: {e}")),
                }
            }
            Some("resync") => {
                set(self.state, |s| s.resyncs += 1);
                if self
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rooms
                    .contains_key(&room)
                {
                    return self.catch_up(&room).await;
                }
                self.violation(&room, format!("resync of a room not joined: {v}"));
            }
            Some("error") => count(self.state, &format!("pushed error {}", data["code"])),
            Some(_) => {}
            None => self.violation(&room, format!("a frame that is not a push: {v}")),
        }
        Ok(())
    }

    fn record_fetched(&mut self, room: &str, m: &Value) {
        match Msg::from_json(m) {
            Ok(m) => self.log_mut(room, |l| l.fetched(m)),
            Err(e) => self.violation(room, format!("bad message from the server: {e}")),
        }
    }

    fn violation(&mut self, room: &str, what: String) {
        let user = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .user
            .clone();
        // Recorded against the room if it is one of ours, else against the first.
        set(self.state, |s| {
            let key = if s.rooms.contains_key(room) {
                room.to_string()
            } else {
                s.rooms.keys().next().cloned().unwrap_or_default()
            };
            if let Some(l) = s.rooms.get_mut(&key) {
                l.violations.push(format!("{user}: {what}"));
            }
        });
    }

    fn log<R>(&self, room: &str, f: impl FnOnce(&RoomLog) -> R) -> R {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&s.rooms[room])
    }

    fn log_mut(&mut self, room: &str, f: impl FnOnce(&mut RoomLog)) {
        let known = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match s.rooms.get_mut(room) {
                Some(l) => {
                    f(l);
                    true
                }
                None => false,
            }
        };
        if !known {
            self.violation(room, format!("a message of {room:?}, a room not joined"));
        }
    }
}
