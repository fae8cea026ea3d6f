//! `/socket.io/`: Engine.IO v4 (WebSocket, HTTP long-polling, upgrade) and Socket.IO v5, so
//! that the seed's `socket.io-client` code works against a Parley node unchanged.
//!
//! Why a second protocol at all: the seed's users have Socket.IO clients in many languages;
//! speaking their protocol makes Parley a drop-in replacement. The chat behaviour is not
//! reimplemented: a Socket.IO socket drives the same [`crate::chat`] logic and the same
//! [`crate::ChatBackend`] as a `/ws` session, so both kinds of clients share rooms.
//!
//! Layout: [`engine`] and [`packet`] encode/decode the two protocol layers (pure), [`events`]
//! maps the seed's events and answers, [`session`] is the per-session actor (timers, queues,
//! upgrade, chat), [`ws`] and [`polling`] are the transports. What is supported and what
//! differs from the Node.js server is in `docs/socketio.md`.

pub mod engine;
pub mod events;
pub mod packet;
mod polling;
mod session;
mod ws;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_web_actors::ws as aws;
use base64::Engine as _;
use bytestring::ByteString;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::conn::{ConnSocket, KillSwitch};
use crate::egress::Egress;
use crate::endpoint::SessionsContext;
use crate::stats::stats;
use engine::HttpError;
use session::{AttachProbe, EngineSession, WsOut};

/// The live Engine.IO sessions of a node, by sid.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Addr<EngineSession>>>,
}

impl Registry {
    fn get(&self, sid: &str) -> Option<Addr<EngineSession>> {
        self.lock().get(sid).cloned()
    }

    fn insert(&self, sid: Arc<str>, addr: Addr<EngineSession>) {
        self.lock().insert(sid, addr);
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Addr<EngineSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new unguessable session id (the sid is the only credential of a polling request);
/// `None` if the OS has no randomness to give.
fn new_sid() -> Option<Arc<str>> {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).ok()?;
    Some(Arc::from(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ))
}

#[derive(Deserialize)]
struct Query {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

fn open_params(ctx: &SessionsContext) -> engine::OpenParams {
    engine::OpenParams {
        ping_interval_ms: ctx.limits.heartbeat_interval.as_millis() as u64,
        ping_timeout_ms: ctx.limits.client_timeout.as_millis() as u64,
        max_payload: ctx.limits.max_frame_bytes,
    }
}

/// The `/socket.io/` handler (every method).
pub async fn socketio_endpoint(
    req: HttpRequest,
    body: web::Payload,
    ctx: web::Data<SessionsContext>,
) -> Result<HttpResponse, actix_web::Error> {
    let bad = |e: HttpError| Ok(polling::error(&req, &ctx, e, StatusCode::BAD_REQUEST));
    if req.method() == Method::OPTIONS {
        return Ok(polling::preflight(&req, &ctx));
    }
    if *ctx.shutdown.borrow() {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    }
    if ctx.auth.check_origin(&req).is_err() {
        stats().forbidden_origin.increment(1);
        return Ok(polling::error(
            &req,
            &ctx,
            HttpError::Forbidden,
            StatusCode::FORBIDDEN,
        ));
    }
    let Ok(q) = web::Query::<Query>::from_query(req.query_string()) else {
        return bad(HttpError::BadRequest);
    };
    if q.eio.as_deref() != Some("4") {
        return bad(HttpError::UnsupportedProtocolVersion);
    }
    let existing = match q.sid.as_deref() {
        Some(sid) => match ctx.engine.get(sid) {
            Some(addr) => Some(addr),
            None => return bad(HttpError::UnknownSid),
        },
        None => None,
    };
    let is_get = req.method() == Method::GET;
    if existing.is_none() && is_get && ctx.engine.len() >= ctx.limits.max_engine_sessions {
        return Ok(polling::server_full(&req, &ctx));
    }
    match (q.transport.as_deref(), existing) {
        (Some("polling"), None) if is_get => Ok(handshake_polling(&req, &ctx)),
        (Some("polling"), None) => bad(HttpError::BadHandshakeMethod),
        (Some("polling"), Some(addr)) if is_get => Ok(polling::poll(&req, &ctx, addr).await),
        (Some("polling"), Some(addr)) if req.method() == Method::POST => {
            Ok(polling::data(&req, &ctx, addr, body).await)
        }
        (Some("polling"), Some(_)) => bad(HttpError::BadRequest),
        (Some("websocket"), existing) if is_get => {
            websocket(&req, body, ctx.clone().into_inner(), existing).await
        }
        (Some("websocket"), _) => bad(HttpError::BadHandshakeMethod),
        _ => bad(HttpError::UnknownTransport),
    }
}

/// A token on the handshake request itself (header or `?token=`), used when CONNECT has none.
fn handshake_member(req: &HttpRequest, ctx: &SessionsContext) -> Option<cluster_proto::Member> {
    ctx.auth.authenticate(req).ok().map(|a| a.member)
}

fn handshake_polling(req: &HttpRequest, ctx: &web::Data<SessionsContext>) -> HttpResponse {
    let Some(sid) = new_sid() else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    let member = handshake_member(req, ctx);
    let session = EngineSession::new(sid.clone(), ctx.clone().into_inner(), None, member);
    let addr = session.start();
    ctx.engine.insert(sid.clone(), addr);
    let open = engine::open_packet(&sid, &["websocket"], open_params(ctx));
    polling::text(req, ctx, open)
}

async fn websocket(
    req: &HttpRequest,
    body: web::Payload,
    ctx: Arc<SessionsContext>,
    existing: Option<Addr<EngineSession>>,
) -> Result<HttpResponse, actix_web::Error> {
    if aws::handshake(req).is_err() {
        return Ok(polling::error(
            req,
            &ctx,
            HttpError::BadRequest,
            StatusCode::BAD_REQUEST,
        ));
    }
    let kill = Arc::new(KillSwitch::new(req.conn_data::<ConnSocket>().copied()));
    let (tx, rx) = mpsc::channel(ctx.limits.outbound_queue.max(1));
    let (addr, gen) = match existing {
        Some(addr) => {
            let probe = AttachProbe {
                tx,
                kill: kill.clone(),
            };
            match addr.send(probe).await {
                Ok(Ok(gen)) => (addr, gen),
                Ok(Err(e)) => return Ok(polling::error(req, &ctx, e, StatusCode::BAD_REQUEST)),
                Err(_) => {
                    return Ok(polling::error(
                        req,
                        &ctx,
                        HttpError::UnknownSid,
                        StatusCode::BAD_REQUEST,
                    ))
                }
            }
        }
        None => {
            let Some(sid) = new_sid() else {
                return Ok(HttpResponse::ServiceUnavailable().finish());
            };
            let open = engine::open_packet(&sid, &[], open_params(&ctx));
            // The open packet goes first; the queue is empty, so this cannot fail.
            let _ = tx.try_send(WsOut::Text(ByteString::from(open)));
            let member = handshake_member(req, &ctx);
            let session =
                EngineSession::new(sid.clone(), ctx.clone(), Some((tx, kill.clone())), member);
            let addr = session.start();
            ctx.engine.insert(sid, addr.clone());
            (addr, 0)
        }
    };
    // The connection's write queue, when parley-node's upgrade path drives this socket.
    let egress = req.extensions_mut().remove::<Egress>();
    let pipe = ws::EioWs::new(addr, gen, rx, kill, ctx.limits.max_frame_bytes, egress);
    aws::WsResponseBuilder::new(pipe, req, body)
        .frame_size(ctx.limits.max_frame_bytes)
        .start()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_random_and_url_safe() {
        let (a, b) = (new_sid().unwrap(), new_sid().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
