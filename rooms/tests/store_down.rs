//! A room whose store is down, slow, or loses acknowledgements: joins, presence and typing keep
//! working, sends and receipts fail with `store_unavailable` without ever taking a seq, and the
//! room recovers by itself (pushing `resync` to the sessions that joined without history).
//!
//! The store is the real embedded store behind a switch (reads and writes fail, hang, or
//! commit but report failure); pushes are recorded per session and waited for with deadlines.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cluster_proto::api::SendRequest;
use cluster_proto::{
    ChatMessage, ErrorCode, Member, Push, PushError, PushKind, PushSink, RoomId, SessionId, UserId,
};
use history::{
    Claim, EmbeddedStore, HistoryStore, Receipt, RoomMeta, StoreError, WriteOp, WriteTicket,
};
use rooms::{Hub, RoomConfig, Rooms, RoomsConfig};
use serde_json::Value;
use tokio::sync::Notify;

const UP: u8 = 0;
/// Every call fails at once with `Unavailable`.
const DOWN: u8 = 1;
/// Every call waits until the mode changes (a store that does not answer).
const HANG: u8 = 2;
/// Writes are committed but reported as failed (an ack lost on the way back).
const LOSE_ACKS: u8 = 3;
/// Like `LOSE_ACKS` for the next write only, then `UP`.
const LOSE_ONE_ACK: u8 = 4;

const DEADLINE: Duration = Duration::from_secs(10);

struct Switchable {
    inner: Arc<EmbeddedStore>,
    mode: AtomicU8,
}

impl Switchable {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Waits out `HANG`, then fails if the store is `DOWN`.
    async fn gate(&self) -> Result<(), StoreError> {
        while self.mode.load(Ordering::SeqCst) == HANG {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Err(StoreError::Unavailable("switched off".into())),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl HistoryStore for Switchable {
    fn name(&self) -> &'static str {
        "switchable"
    }
    fn submit(&self, ops: Vec<WriteOp>) -> WriteTicket {
        let mode =
            match self
                .mode
                .compare_exchange(LOSE_ONE_ACK, UP, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => LOSE_ACKS,
                Err(mode) => mode,
            };
        match mode {
            DOWN => WriteTicket::ready(Err(StoreError::Unavailable("switched off".into()))),
            LOSE_ACKS => {
                let ticket = self.inner.submit(ops);
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let r = ticket.await;
                    assert_eq!(r, Ok(()), "the inner store commits");
                    let _ = tx.send(Err(StoreError::Unavailable("ack lost".into())));
                });
                WriteTicket::pending(rx)
            }
            _ => self.inner.submit(ops),
        }
    }
    async fn room_meta(&self, room: &RoomId) -> Result<RoomMeta, StoreError> {
        self.gate().await?;
        self.inner.room_meta(room).await
    }
    async fn claim(&self, room: &RoomId) -> Result<Claim, StoreError> {
        self.gate().await?;
        self.inner.claim(room).await
    }
    async fn latest(&self, room: &RoomId, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        self.gate().await?;
        self.inner.latest(room, limit).await
    }
    async fn before(
        &self,
        room: &RoomId,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.gate().await?;
        self.inner.before(room, before, limit).await
    }
    async fn after(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.gate().await?;
        self.inner.after(room, after, limit).await
    }
    async fn receipts(&self, room: &RoomId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        self.gate().await?;
        self.inner.receipts(room, limit).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.check().await
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// Records every push a session receives.
#[derive(Default)]
struct Recorder {
    pushes: Mutex<Vec<Arc<Push>>>,
    arrived: Notify,
}

impl PushSink for Recorder {
    fn try_push(&self, push: &Arc<Push>) -> Result<(), PushError> {
        self.pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(push.clone());
        self.arrived.notify_waiters();
        Ok(())
    }
    fn evict(&self) {}
}

impl Recorder {
    fn of(&self, kind: PushKind) -> Vec<Value> {
        self.pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| serde_json::from_str(p.data_str()).expect("push data is JSON"))
            .collect()
    }

    /// Waits until a push of `kind` has arrived; returns the first one.
    async fn wait_for(&self, kind: PushKind) -> Value {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.arrived.notified();
                if let Some(v) = self.of(kind).into_iter().next() {
                    return v;
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {kind:?} push within {DEADLINE:?}"))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Switchable>,
    rooms: Arc<Rooms>,
    room: RoomId,
}

fn config() -> RoomsConfig {
    RoomsConfig {
        room: RoomConfig {
            join_history_wait: Duration::from_millis(300),
            load_retry_min: Duration::from_millis(20),
            load_retry_max: Duration::from_millis(100),
            ..RoomConfig::default()
        },
        ..RoomsConfig::default()
    }
}

impl Fixture {
    /// A store holding `stored` messages in room "r", switched to `mode`.
    async fn new(stored: u64, mode: u8) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = EmbeddedStore::open(dir.path()).expect("open store");
        let room = RoomId::new("r").expect("room id");
        inner.claim(&room).await.expect("claim the room to seed it");
        for seq in 1..=stored {
            inner
                .submit(vec![WriteOp::Message(ChatMessage {
                    id: ChatMessage::make_id(&room, seq),
                    room_id: room.clone(),
                    seq,
                    user_id: UserId::new("old").expect("user id"),
                    username: "Old".into(),
                    text: format!("old {seq}"),
                    attachments: "[]".into(),
                    timestamp: 1_700_000_000_000 + seq as i64,
                    client_msg_id: None,
                })])
                .await
                .expect("seed");
        }
        let store = Arc::new(Switchable {
            inner,
            mode: AtomicU8::new(mode),
        });
        let cfg = config();
        let cluster = rooms::ClusterView::solo(&cfg.node_name);
        let rooms = Rooms::start(cfg, store.clone(), Arc::new(Hub::default()), cluster)
            .await
            .expect("start rooms");
        Fixture {
            _dir: dir,
            store,
            rooms,
            room,
        }
    }

    async fn connect(&self, id: u64, user: &str) -> (SessionId, Member, Arc<Recorder>) {
        let member = Member {
            user_id: UserId::new(user).expect("user id"),
            username: user.to_uppercase(),
        };
        let rec = Arc::new(Recorder::default());
        self.rooms
            .connect(SessionId(id), &member, rec.clone())
            .await
            .expect("connect");
        (SessionId(id), member, rec)
    }

    fn send(&self, text: &str) -> SendRequest {
        SendRequest {
            room: self.room.clone(),
            text: text.into(),
            attachments: "[]".into(),
            client_msg_id: Some(format!("c-{text}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_presence_and_typing_work_while_the_store_is_down_then_history_returns() {
    let f = Fixture::new(3, DOWN).await;
    let (sa, a, ra) = f.connect(1, "alice").await;
    let (sb, b, rb) = f.connect(2, "bob").await;

    // Joins succeed without history; nobody pretends the room is empty.
    let ja = f.rooms.join(sa, &a, &f.room).await.expect("join a");
    assert!(ja.history_unavailable);
    assert_eq!(ja.last_seq, None);
    assert_eq!(ja.read_up_to, None);
    assert!(ja.messages.is_empty());
    let jb = f.rooms.join(sb, &b, &f.room).await.expect("join b");
    assert!(jb.history_unavailable);
    assert_eq!(jb.member_count, 2);
    let json = serde_json::to_value(&jb).expect("serialize");
    assert_eq!(json["lastSeq"], Value::Null);
    assert_eq!(json["historyUnavailable"], true);

    // Presence and typing.
    assert_eq!(ra.wait_for(PushKind::UserJoined).await["userId"], "bob");
    f.rooms.typing(sb, &b, &f.room, true);
    let t = ra.wait_for(PushKind::UserTyping).await;
    assert_eq!(
        (t["userId"].as_str(), t["isTyping"].as_bool()),
        (Some("bob"), Some(true))
    );

    // Sends and receipts fail, and take no seq.
    for text in ["x", "y"] {
        let e = f.rooms.send(sa, &a, f.send(text)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StoreUnavailable, "{e}");
    }
    let e = f.rooms.mark_read(sa, &a, &f.room, 2).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::StoreUnavailable);
    assert!(ra.of(PushKind::NewMessage).is_empty());

    // The store returns: without any request, both sessions are told to resume.
    f.store.set(UP);
    for r in [&ra, &rb] {
        let resync = r.wait_for(PushKind::Resync).await;
        assert_eq!(resync, serde_json::json!({"roomId": "r", "lastSeq": 3}));
    }
    // Seqs continue after the stored ones: nothing was assigned before the room knew them.
    let m = f
        .rooms
        .send(sa, &a, f.send("x"))
        .await
        .expect("send after recovery");
    assert_eq!(m.seq, 4);
    assert_eq!(f.rooms.mark_read(sb, &b, &f.room, 4).await, Ok(4));
    let (sc, c, _) = f.connect(3, "carol").await;
    let jc = f.rooms.join(sc, &c, &f.room).await.expect("join c");
    assert!(!jc.history_unavailable);
    assert_eq!(jc.last_seq, Some(4));
    let seqs: Vec<u64> = jc.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let stored: Vec<u64> = f
        .store
        .inner
        .latest(&f.room, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, vec![1, 2, 3, 4]);
    f.rooms.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_delays_a_join_by_join_history_wait_at_most() {
    let f = Fixture::new(2, HANG).await;
    let (sa, a, _ra) = f.connect(1, "alice").await;
    let (sb, b, rb) = f.connect(2, "bob").await;
    let t0 = std::time::Instant::now();
    let ja = f.rooms.join(sa, &a, &f.room).await.expect("join a");
    assert!(ja.history_unavailable);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "join took {:?}",
        t0.elapsed()
    );
    let jb = f.rooms.join(sb, &b, &f.room).await.expect("join b");
    assert!(jb.history_unavailable);
    f.rooms.typing(sa, &a, &f.room, true);
    assert_eq!(rb.wait_for(PushKind::UserTyping).await["userId"], "alice");
    let e = f.rooms.send(sa, &a, f.send("x")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::StoreUnavailable);
    // The load that was hanging finishes: the degraded sessions resume, sends get seq 3.
    f.store.set(UP);
    assert_eq!(rb.wait_for(PushKind::Resync).await["lastSeq"], 2);
    assert_eq!(
        f.rooms.send(sa, &a, f.send("x")).await.expect("send").seq,
        3
    );
    f.rooms.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_ack_was_lost_is_found_by_the_next_send() {
    let f = Fixture::new(1, UP).await;
    let (sa, a, ra) = f.connect(1, "alice").await;
    let (sb, b, rb) = f.connect(2, "bob").await;
    let ja = f.rooms.join(sa, &a, &f.room).await.expect("join a");
    assert_eq!(ja.last_seq, Some(1));
    f.rooms.join(sb, &b, &f.room).await.expect("join b");
    // Committed as seq 2, but the room is told it failed.
    f.store.set(LOSE_ACKS);
    let e = f.rooms.send(sa, &a, f.send("lost")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::StoreUnavailable);
    f.store.set(UP);
    // The room rereads the last seq before its next seq: no conflict, no gap, no duplicate,
    // and everyone is told to resume because a message was stored without being pushed.
    let m = f.rooms.send(sb, &b, f.send("next")).await.expect("send");
    assert_eq!(m.seq, 3);
    for r in [&ra, &rb] {
        assert_eq!(r.wait_for(PushKind::Resync).await["lastSeq"], 2);
    }
    // The resend of the "failed" message is recognised by its client id.
    let again = f.rooms.send(sa, &a, f.send("lost")).await.expect("resend");
    assert_eq!((again.seq, again.text.as_str()), (2, "lost"));
    let stored: Vec<(u64, String)> = f
        .store
        .inner
        .latest(&f.room, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.text))
        .collect();
    assert_eq!(
        stored,
        vec![(1, "old 1".into()), (2, "lost".into()), (3, "next".into())]
    );
    f.rooms.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_under_a_later_successful_write_is_resynced() {
    let f = Fixture::new(0, UP).await;
    let (sa, a, ra) = f.connect(1, "alice").await;
    let (sb, b, rb) = f.connect(2, "bob").await;
    f.rooms.join(sa, &a, &f.room).await.expect("join a");
    f.rooms.join(sb, &b, &f.room).await.expect("join b");
    // Seq 1 is committed but reported failed; seq 2, already in flight, succeeds on top of it.
    f.store.set(LOSE_ONE_ACK);
    let (first, second) = tokio::join!(
        f.rooms.send(sa, &a, f.send("first")),
        f.rooms.send(sb, &b, f.send("second")),
    );
    assert_eq!(first.unwrap_err().code, ErrorCode::StoreUnavailable);
    assert_eq!(second.expect("second").seq, 2);
    // Seq 1 was never pushed: the room finds it on its reread and everyone resumes.
    for r in [&ra, &rb] {
        assert_eq!(r.wait_for(PushKind::Resync).await["lastSeq"], 2);
    }
    let again = f.rooms.send(sa, &a, f.send("first")).await.expect("resend");
    assert_eq!(again.seq, 1);
    assert_eq!(
        f.rooms
            .send(sa, &a, f.send("third"))
            .await
            .expect("third")
            .seq,
        3
    );
    f.rooms.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_leave_no_gap_and_are_never_pushed() {
    let f = Fixture::new(0, UP).await;
    let (s, m, rec) = f.connect(1, "u").await;
    f.rooms.join(s, &m, &f.room).await.expect("join");
    assert_eq!(f.rooms.send(s, &m, f.send("1")).await.expect("send").seq, 1);
    f.store.set(DOWN);
    for t in ["2", "3"] {
        let e = f.rooms.send(s, &m, f.send(t)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StoreUnavailable);
    }
    f.store.set(UP);
    // The failed seqs are reused: no gap, and the resend of "2" is a new message, not a dup.
    assert_eq!(f.rooms.send(s, &m, f.send("2")).await.expect("send").seq, 2);
    assert_eq!(f.rooms.send(s, &m, f.send("4")).await.expect("send").seq, 3);
    let stored: Vec<u64> = f
        .store
        .inner
        .latest(&f.room, 10)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, vec![1, 2, 3]);
    let pushed: Vec<u64> = rec
        .of(PushKind::NewMessage)
        .iter()
        .map(|v| v["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(pushed, vec![1, 2, 3], "failed messages are never pushed");
    f.rooms.stop();
}
