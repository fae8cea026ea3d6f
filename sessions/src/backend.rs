//! The one trait the session layer needs from the rest of the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cluster_proto::api::{JoinReply, MessagePage, SendRequest};
use cluster_proto::rate::TokenBucket;
use cluster_proto::{ApiError, ChatMessage, Member, PushSink, RoomId, SessionId};

/// A boxed, `Send` future answering a request.
pub type BackendFuture<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send>>;

/// What sessions ask of the room layer. Every method returns quickly; the futures carry their
/// own deadlines (a room that does not answer yields [`cluster_proto::ErrorCode::Timeout`]).
pub trait ChatBackend: Send + Sync + 'static {
    /// A session opened: register its outbound queue; answers with the user's rate limit.
    fn connect(
        &self,
        session: SessionId,
        member: &Member,
        sink: Arc<dyn PushSink>,
    ) -> BackendFuture<Arc<TokenBucket>>;
    /// The session is gone: leave its rooms.
    fn disconnect(&self, session: SessionId, member: &Member);
    fn join(&self, session: SessionId, member: &Member, room: RoomId) -> BackendFuture<JoinReply>;
    fn leave(&self, session: SessionId, room: &RoomId);
    fn send(
        &self,
        session: SessionId,
        member: &Member,
        req: SendRequest,
    ) -> BackendFuture<Arc<ChatMessage>>;
    fn typing(&self, session: SessionId, member: &Member, room: &RoomId, is_typing: bool);
    fn mark_read(
        &self,
        session: SessionId,
        member: &Member,
        room: RoomId,
        up_to_seq: u64,
    ) -> BackendFuture<u64>;
    fn history(
        &self,
        room: RoomId,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> BackendFuture<MessagePage>;
    fn resume(&self, room: RoomId, after_seq: u64) -> BackendFuture<MessagePage>;
}
