//! The clients of the `failover` scenario: readers and senders that behave as
//! docs/protocol.md and docs/consistency.md tell a client to, and record what they saw.
//!
//! * A **reader** is one user on one node at a time, member of every room. On (re)connect it
//!   joins every room and catches up with `resume` from its highest contiguous seq (paged:
//!   `complete: false` → again); it records every `newMessage` push per session, answers
//!   `resync {roomId}` with the same catch-up, and when its session ends it reconnects to its
//!   home node, else the next one. While it is away from home it goes back as soon as home
//!   answers `/healthz` again, so that every node keeps readers. [`Reader::finish`] catches
//!   up every room a last time.
//! * A **sender** (`failover_sender`) is one user sending into one room, one message at a time at its share of
//!   the rate, each with its own `clientMsgId`. A send that fails (error ack, no ack, session
//!   ended) is sent again with the same `clientMsgId` (bounded by `retry_for` and
//!   `max_attempts`), on a session on the next node if its node went away. Every ack is
//!   recorded as an [`Acked`].
//!
//! Nothing here panics or gives up the run: failures are counted (`errors`, by code) and the
//! final check judges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::failover_conn::{error_code, retryable, Conn, Event, ReqError};
use crate::failover_ledger::{Acked, RoomLog};
use crate::failover_nodes::{self, NodeSpec};
use crate::net::ConnOpts;
use crate::stats::{self, Counts};
use crate::token::Minter;

/// How long a reader keeps trying to get a working session before it gives up.
pub const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// What every client of a run shares.
pub struct Ctx {
    pub nodes: Vec<NodeSpec>,
    pub opts: ConnOpts,
    pub minter: Minter,
    pub prefix: String,
    pub rooms: Vec<String>,
    pub request_timeout: Duration,
    pub retry_for: Duration,
    pub max_attempts: u32,
    /// Interval between two messages of one sender.
    pub send_interval: Duration,
    pub acks: Mutex<Vec<Acked>>,
    /// First attempt → ack, µs (retries included).
    pub ack_latency: stats::Shared,
    pub errors: Mutex<Counts>,
    pub unexpected: Mutex<Vec<String>>,
    pub attempts: AtomicU64,
    pub abandoned: AtomicU64,
    pub sender_sessions: AtomicU64,
    conn_index: AtomicU64,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nodes: Vec<NodeSpec>,
        opts: ConnOpts,
        minter: Minter,
        prefix: String,
        rooms: Vec<String>,
        request_timeout: Duration,
        retry_for: Duration,
        max_attempts: u32,
        send_interval: Duration,
    ) -> Ctx {
        Ctx {
            nodes,
            opts,
            minter,
            prefix,
            rooms,
            request_timeout,
            retry_for,
            max_attempts,
            send_interval,
            acks: Mutex::default(),
            ack_latency: stats::shared(),
            errors: Mutex::default(),
            unexpected: Mutex::default(),
            attempts: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            sender_sessions: AtomicU64::new(0),
            conn_index: AtomicU64::new(0),
        }
    }

    pub fn count(&self, key: &str) {
        stats::bump(
            &mut self.errors.lock().unwrap_or_else(|p| p.into_inner()),
            key,
        );
    }

    pub fn unexpected(&self, what: String) {
        let mut u = self.unexpected.lock().unwrap_or_else(|p| p.into_inner());
        if u.len() < 50 {
            u.push(what);
        }
    }

    pub async fn open(
        &self,
        node: usize,
        token: &str,
    ) -> Result<(Conn, mpsc::UnboundedReceiver<Event>), ()> {
        let index = self.conn_index.fetch_add(1, Relaxed);
        Conn::open(&self.nodes[node].target, token, index, self.opts)
            .await
            .map_err(|f| self.count(&format!("connect:{}", f.kind)))
    }

    /// Counts how a session ended: the server's close code, no close frame, or given up by
    /// the client (no answer, a failed request).
    pub fn closed(&self, conn: &Conn) {
        let key = match conn.closed() {
            Some(Some(code)) => format!("closed:{code}"),
            Some(None) => "closed:no_close_frame".to_string(),
            None => "closed:by_client".to_string(),
        };
        self.count(&key);
    }
}

// ---------------------------------------------------------------------------------------
// Readers

/// What a reader saw.
#[derive(Debug, Default, Clone)]
pub struct ReaderState {
    pub name: String,
    pub home: usize,
    pub rooms: BTreeMap<String, RoomLog>,
    /// Node of the current session.
    pub node: usize,
    pub sessions: u64,
    /// Joined and caught up on the current session.
    pub ready: bool,
    pub resyncs: u64,
    /// Sessions ended by the reader to go back to its home node.
    pub went_home: u64,
    /// Why it gave up, if it did.
    pub fatal: Option<String>,
}

pub struct Reader {
    state: Arc<Mutex<ReaderState>>,
    finish: mpsc::UnboundedSender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn with<R>(state: &Mutex<ReaderState>, f: impl FnOnce(&mut ReaderState) -> R) -> R {
    f(&mut state.lock().unwrap_or_else(|p| p.into_inner()))
}

impl Reader {
    pub fn start(ctx: Arc<Ctx>, name: String, home: usize) -> Reader {
        let state = Arc::new(Mutex::new(ReaderState {
            name,
            home,
            node: home,
            rooms: ctx
                .rooms
                .iter()
                .map(|r| (r.clone(), RoomLog::default()))
                .collect(),
            ..Default::default()
        }));
        let (finish, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(reader_loop(ctx, state.clone(), rx));
        Reader {
            state,
            finish,
            task,
        }
    }

    pub fn snapshot(&self) -> ReaderState {
        with(&self.state, |s| s.clone())
    }

    pub fn with<R>(&self, f: impl FnOnce(&ReaderState) -> R) -> R {
        with(&self.state, |s| f(s))
    }

    /// Catches up every room a last time (reconnecting if needed); false if that did not
    /// happen within `within` or the reader had given up.
    pub async fn finish(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.finish.send(tx).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
            && self.with(|s| s.fatal.is_none())
    }
}

/// Why a session ended.
enum Ended {
    /// The session broke (closed, no answer, a failed request): reconnect.
    Broken,
    /// Home is back: reconnect there.
    GoHome,
    /// Finished, or the handle is gone.
    Done,
}

async fn reader_loop(
    ctx: Arc<Ctx>,
    state: Arc<Mutex<ReaderState>>,
    mut finish: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let (name, home) = with(&state, |s| (s.name.clone(), s.home));
    let token = match ctx.minter.mint(&name, &name) {
        Ok(t) => t,
        Err(e) => return with(&state, |s| s.fatal = Some(format!("token: {e}"))),
    };
    let n = ctx.nodes.len();
    let mut next = home;
    let mut finishing: Option<oneshot::Sender<()>> = None;
    let mut since = Instant::now();
    loop {
        if since.elapsed() > RECONNECT_FOR {
            with(&state, |s| {
                s.fatal = Some(format!("no working session for {RECONNECT_FOR:?}"))
            });
            return;
        }
        let node = next % n;
        let Ok((conn, mut events)) = ctx.open(node, &token).await else {
            next = node + 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let session = with(&state, |s| {
            s.sessions += 1;
            s.node = node;
            s.sessions
        });
        let mut r = Session {
            ctx: &ctx,
            state: &state,
            conn: &conn,
            session,
        };
        if r.join_all().await.is_err() {
            ctx.closed(&conn);
            next = node + 1;
            continue;
        }
        with(&state, |s| s.ready = true);
        if let Some(done) = finishing.take() {
            // Reconnected during the final catch-up, which join_all just did.
            let _ = done.send(());
            conn.close().await;
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::Push(v)) => {
                        if r.on_push(v).await.is_err() {
                            break Ended::Broken;
                        }
                    }
                    Some(Event::Closed) | None => break Ended::Broken,
                },
                c = finish.recv() => match c {
                    Some(done) => {
                        // What already arrived first, then a last catch-up of every room.
                        let mut ok = true;
                        while let Ok(ev) = events.try_recv() {
                            match ev {
                                Event::Push(v) => ok &= r.on_push(v).await.is_ok(),
                                Event::Closed => ok = false,
                            }
                        }
                        for room in &ctx.rooms {
                            ok = ok && r.catch_up(room).await.is_ok();
                        }
                        if ok {
                            let _ = done.send(());
                            break Ended::Done;
                        }
                        finishing = Some(done);
                        break Ended::Broken;
                    }
                    None => break Ended::Done,
                },
                _ = tick.tick(), if node != home && finishing.is_none() => {
                    if failover_nodes::healthy(&ctx.nodes[home].target).await {
                        break Ended::GoHome;
                    }
                }
            }
        };
        with(&state, |s| s.ready = false);
        since = Instant::now();
        match ended {
            Ended::Done => {
                conn.close().await;
                return;
            }
            Ended::GoHome => {
                with(&state, |s| s.went_home += 1);
                conn.close().await;
                next = home;
            }
            Ended::Broken => {
                ctx.closed(&conn);
                // Home first (it may be back already), then the others in turn.
                next = if node == home { home + 1 } else { node + 1 };
            }
        }
    }
}

/// One session of a reader.
struct Session<'a> {
    ctx: &'a Ctx,
    state: &'a Mutex<ReaderState>,
    conn: &'a Conn,
    session: u64,
}

/// The session is unusable: reconnect.
struct Broken;

impl Session<'_> {
    /// A request, retried while the answer is a retryable error (bounded).
    async fn request(&mut self, event: &str, data: Value) -> Result<Value, Broken> {
        let deadline = Instant::now() + self.ctx.retry_for;
        loop {
            match self
                .conn
                .request(event, data.clone(), self.ctx.request_timeout)
                .await
            {
                Ok(ack) => match error_code(&ack) {
                    None => return Ok(ack["data"].clone()),
                    Some(code) => {
                        self.ctx.count(&format!("{event}:{code}"));
                        if !retryable(&code) || Instant::now() > deadline {
                            if !retryable(&code) && code != "not_in_room" {
                                self.ctx.unexpected(format!("{event} {data}: {ack}"));
                            }
                            return Err(Broken);
                        }
                        let pause = if code == "rate_limited" { 1000 } else { 200 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                },
                Err(ReqError::Closed) => return Err(Broken),
                Err(ReqError::Timeout) => {
                    self.ctx.count(&format!("{event}:no_answer"));
                    return Err(Broken);
                }
            }
        }
    }

    async fn join_all(&mut self) -> Result<(), Broken> {
        for room in &self.ctx.rooms {
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
        let mut after = self.log(room, RoomLog::contiguous);
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
            let last = msgs.iter().filter_map(|m| m["seq"].as_u64()).max();
            let next = last.unwrap_or(0).max(self.log(room, RoomLog::contiguous));
            if next <= after {
                self.ctx.unexpected(format!(
                    "resume {room} after {after}: an incomplete page that does not advance: {page}"
                ));
                return Err(Broken);
            }
            after = next;
        }
    }

    async fn on_push(&mut self, v: Value) -> Result<(), Broken> {
        let data = &v["data"];
        let room = data["roomId"].as_str().unwrap_or_default().to_string();
        match v["event"].as_str() {
            Some("newMessage") => match data["seq"].as_u64() {
                Some(seq) if seq > 0 => {
                    let cmid = data["clientMsgId"].as_str().map(str::to_string);
                    let session = self.session;
                    self.log_mut(&room, |l| l.push(session, seq, cmid));
                }
                _ => self
                    .ctx
                    .unexpected(format!("newMessage without a seq: {v}")),
            },
            Some("resync") => {
                with(self.state, |s| s.resyncs += 1);
                if with(self.state, |s| s.rooms.contains_key(&room)) {
                    return self.catch_up(&room).await;
                }
                self.ctx
                    .unexpected(format!("resync of a room not joined: {v}"));
            }
            Some("error") => self.ctx.count(&format!(
                "pushed_error:{}",
                data["code"].as_str().unwrap_or("unknown")
            )),
            Some(_) => {}
            None => self
                .ctx
                .unexpected(format!("a frame that is not a push: {v}")),
        }
        Ok(())
    }

    fn record_fetched(&mut self, room: &str, m: &Value) {
        match m["seq"].as_u64() {
            Some(seq) if seq > 0 => {
                let cmid = m["clientMsgId"].as_str().map(str::to_string);
                self.log_mut(room, |l| l.fetched(seq, cmid));
            }
            _ => self.ctx.unexpected(format!("a message without a seq: {m}")),
        }
    }

    fn log<R>(&self, room: &str, f: impl FnOnce(&RoomLog) -> R) -> R {
        with(self.state, |s| f(&s.rooms[room]))
    }

    fn log_mut(&mut self, room: &str, f: impl FnOnce(&mut RoomLog)) {
        let known = with(self.state, |s| s.rooms.get_mut(room).map(f).is_some());
        if !known {
            self.ctx
                .unexpected(format!("a message of {room:?}, a room not joined"));
        }
    }
}
