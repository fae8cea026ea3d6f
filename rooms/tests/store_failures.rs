//! The room's write pipeline when the store fails: no gap, no ghost message, recovery by
//! itself. Uses the real embedded store behind a switch that makes writes fail on demand.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cluster_proto::api::SendRequest;
use cluster_proto::{
    ChatMessage, ErrorCode, Member, Push, PushError, PushKind, PushSink, RoomId, SessionId, UserId,
};
use history::{EmbeddedStore, HistoryStore, Receipt, RoomMeta, StoreError, WriteOp, WriteTicket};
use rooms::{Hub, Rooms, RoomsConfig};

/// The embedded store, with writes that fail while `down` is set.
struct Switchable {
    inner: Arc<EmbeddedStore>,
    down: AtomicBool,
}

#[async_trait]
impl HistoryStore for Switchable {
    fn name(&self) -> &'static str {
        "switchable"
    }
    fn submit(&self, ops: Vec<WriteOp>) -> WriteTicket {
        if self.down.load(Ordering::SeqCst) {
            return WriteTicket::ready(Err(StoreError::Unavailable("switched off".into())));
        }
        self.inner.submit(ops)
    }
    async fn room_meta(&self, room: &RoomId) -> Result<RoomMeta, StoreError> {
        self.inner.room_meta(room).await
    }
    async fn latest(&self, room: &RoomId, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.latest(room, limit).await
    }
    async fn before(
        &self,
        room: &RoomId,
        before: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.before(room, before, limit).await
    }
    async fn after(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.inner.after(room, after, limit).await
    }
    async fn receipts(&self, room: &RoomId, limit: usize) -> Result<Vec<Receipt>, StoreError> {
        self.inner.receipts(room, limit).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// Counts the `newMessage` pushes a session receives.
#[derive(Default)]
struct Counter(AtomicUsize);

impl PushSink for Counter {
    fn try_push(&self, push: &Arc<Push>) -> Result<(), PushError> {
        if push.kind == PushKind::NewMessage {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn evict(&self) {}
}

fn send(room: &RoomId, text: &str) -> SendRequest {
    SendRequest {
        room: room.clone(),
        text: text.into(),
        attachments: "[]".into(),
        client_msg_id: Some(format!("c-{text}")),
    }
}

#[tokio::test]
async fn failed_writes_leave_no_gap_and_are_never_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Switchable {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        down: AtomicBool::new(false),
    });
    let rooms = Rooms::start(
        RoomsConfig::default(),
        store.clone(),
        Arc::new(Hub::default()),
    )
    .await
    .unwrap();
    let room = RoomId::new("r").unwrap();
    let member = Member {
        user_id: UserId::new("u").unwrap(),
        username: "U".into(),
    };
    let pushes = Arc::new(Counter::default());
    let session = SessionId(1);
    rooms
        .connect(session, &member, pushes.clone())
        .await
        .unwrap();
    rooms.join(session, &member, &room).await.unwrap();

    assert_eq!(
        rooms
            .send(session, &member, send(&room, "1"))
            .await
            .unwrap()
            .seq,
        1
    );
    store.down.store(true, Ordering::SeqCst);
    for t in ["2", "3"] {
        let e = rooms
            .send(session, &member, send(&room, t))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::StoreUnavailable);
    }
    store.down.store(false, Ordering::SeqCst);
    // The failed seqs are reused: no gap, and the resend of "2" is a new message, not a dup.
    assert_eq!(
        rooms
            .send(session, &member, send(&room, "2"))
            .await
            .unwrap()
            .seq,
        2
    );
    assert_eq!(
        rooms
            .send(session, &member, send(&room, "4"))
            .await
            .unwrap()
            .seq,
        3
    );
    let stored: Vec<u64> = store
        .latest(&room, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, vec![1, 2, 3]);
    assert_eq!(
        pushes.0.load(Ordering::SeqCst),
        3,
        "failed messages are never pushed"
    );
    rooms.stop();
}
