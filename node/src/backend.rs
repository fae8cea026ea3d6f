//! The wiring: the session layer's [`ChatBackend`] implemented with the room layer.

use std::sync::Arc;

use cluster_proto::api::{JoinReply, MessagePage, SendRequest};
use cluster_proto::rate::TokenBucket;
use cluster_proto::{ChatMessage, Member, PushSink, RoomId, SessionId};
use rooms::Rooms;
use sessions::{BackendFuture, ChatBackend};

pub struct NodeBackend {
    rooms: Arc<Rooms>,
}

impl NodeBackend {
    pub fn new(rooms: Arc<Rooms>) -> Self {
        Self { rooms }
    }
}

impl ChatBackend for NodeBackend {
    fn connect(
        &self,
        session: SessionId,
        member: &Member,
        sink: Arc<dyn PushSink>,
    ) -> BackendFuture<Arc<TokenBucket>> {
        let (rooms, member) = (self.rooms.clone(), member.clone());
        Box::pin(async move { rooms.connect(session, &member, sink).await })
    }

    fn disconnect(&self, session: SessionId, member: &Member) {
        self.rooms.disconnect(session, &member.user_id);
    }

    fn join(&self, session: SessionId, member: &Member, room: RoomId) -> BackendFuture<JoinReply> {
        let (rooms, member) = (self.rooms.clone(), member.clone());
        Box::pin(async move { rooms.join(session, &member, &room).await })
    }

    fn leave(&self, session: SessionId, room: &RoomId) {
        self.rooms.leave(session, room);
    }

    fn send(
        &self,
        session: SessionId,
        member: &Member,
        req: SendRequest,
    ) -> BackendFuture<Arc<ChatMessage>> {
        let (rooms, member) = (self.rooms.clone(), member.clone());
        Box::pin(async move { rooms.send(session, &member, req).await })
    }

    fn typing(&self, session: SessionId, member: &Member, room: &RoomId, is_typing: bool) {
        self.rooms.typing(session, member, room, is_typing);
    }

    fn mark_read(
        &self,
        session: SessionId,
        member: &Member,
        room: RoomId,
        up_to_seq: u64,
    ) -> BackendFuture<u64> {
        let (rooms, member) = (self.rooms.clone(), member.clone());
        Box::pin(async move { rooms.mark_read(session, &member, &room, up_to_seq).await })
    }

    fn history(
        &self,
        room: RoomId,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> BackendFuture<MessagePage> {
        let rooms = self.rooms.clone();
        Box::pin(async move { rooms.history(&room, before, limit).await })
    }

    fn resume(&self, room: RoomId, after_seq: u64) -> BackendFuture<MessagePage> {
        let rooms = self.rooms.clone();
        Box::pin(async move { rooms.resume(&room, after_seq).await })
    }
}
