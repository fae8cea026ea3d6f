//! `GET /ws`: authenticate, check limits, start a [`WsSession`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use cluster_proto::SessionId;
use serde_json::json;
use tokio::sync::watch;

use crate::auth::{AuthError, Authenticator, TokenSource};
use crate::backend::ChatBackend;
use crate::conn::{ConnSocket, KillSwitch};
use crate::egress::Egress;
use crate::limits::Limits;
use crate::outbox::Outbox;
use crate::session::WsSession;
use crate::stats::stats;

/// Shared by every session of a node.
pub struct SessionsContext {
    pub backend: Arc<dyn ChatBackend>,
    pub auth: Authenticator,
    pub limits: Limits,
    /// Becomes `true` when the node starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// The live Socket.IO (Engine.IO) sessions.
    pub engine: crate::socketio::Registry,
    next_id: AtomicU64,
}

impl SessionsContext {
    pub fn new(
        backend: Arc<dyn ChatBackend>,
        auth: Authenticator,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            backend,
            auth,
            limits,
            shutdown,
            engine: crate::socketio::Registry::default(),
            next_id: AtomicU64::new(session_id_base()),
        }
    }

    /// A session id unique in the cluster: rooms key members of every node by it. The high 32
    /// bits are random per process, the low 32 count up (see [`session_id_base`]).
    pub fn next_session_id(&self) -> SessionId {
        SessionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The first session id of this process: 32 random bits, then a counter from 1. Two
/// processes collide only if their random halves match (about 1 in 4 billion per pair of
/// node incarnations) *and* both are still alive with sessions in one room; the counter
/// would need 4 billion sessions to reach the next process's space.
fn session_id_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(nanos);
    ((h.finish() >> 32) << 32) | 1
}

fn error_response(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
}

/// The `/ws` handler.
pub async fn ws_endpoint(
    req: HttpRequest,
    stream: web::Payload,
    ctx: web::Data<SessionsContext>,
) -> Result<HttpResponse, actix_web::Error> {
    use actix_web::http::StatusCode;
    if *ctx.shutdown.borrow() {
        return Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "node is shutting down",
        ));
    }
    if let Err(e) = ctx.auth.check_origin(&req) {
        stats().forbidden_origin.increment(1);
        return Ok(error_response(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            &e.to_string(),
        ));
    }
    let authed = match ctx.auth.authenticate(&req) {
        Ok(a) => a,
        Err(e) => {
            stats().auth_failures.increment(1);
            let msg = match e {
                AuthError::Config(_) => "authentication is misconfigured".to_string(),
                other => other.to_string(),
            };
            return Ok(error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &msg,
            ));
        }
    };
    // Refuse non-WebSocket requests before registering anything.
    if let Err(e) = ws::handshake(&req) {
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            &e.to_string(),
        ));
    }
    let id = ctx.next_session_id();
    let sock = req.conn_data::<ConnSocket>().copied();
    let (outbox, ends) = Outbox::new(
        ctx.limits.outbound_queue,
        KillSwitch::new(sock),
        ctx.limits.slow_consumer_grace,
    );
    let bucket = match ctx.backend.connect(id, &authed.member, outbox).await {
        Ok(b) => b,
        Err(e) => {
            return Ok(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code.as_str(),
                &e.message,
            ));
        }
    };
    let member = authed.member.clone();
    // The connection's write queue, when parley-node's upgrade path drives this socket.
    let egress = req.extensions_mut().remove::<Egress>();
    let session = WsSession::new(
        id,
        authed.member,
        ctx.clone().into_inner(),
        bucket,
        ends,
        egress,
    );
    let protocols: &[&str] = if authed.source == TokenSource::Subprotocol {
        &["bearer"]
    } else {
        &[]
    };
    let res = ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(ctx.limits.max_frame_bytes)
        .protocols(protocols)
        .start();
    if res.is_err() {
        ctx.backend.disconnect(id, &member);
    }
    res
}
