//! HTTP long-polling: GET waits for packets, POST delivers packets, plus CORS.
//!
//! A GET hands a oneshot to the session and waits; the session answers it as soon as packets
//! are pending (a server ping at the latest, every `heartbeat_interval`). A POST body is read
//! up to `max_frame_bytes` (Socket.IO's `maxHttpBufferSize`): larger ends the session (413).
//!
//! CORS follows the seed (`cors: {origin: ALLOWED_ORIGINS, credentials: true}`): an allowed
//! `Origin` is reflected with `Access-Control-Allow-Credentials: true`; a preflight `OPTIONS`
//! is answered for allowed origins only.

use std::time::Duration;

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::StreamExt;
use tokio::sync::oneshot;

use super::engine::{self, HttpError};
use super::session::{Data, EngineSession, Kill, Poll};
use crate::close::CloseReason;
use crate::endpoint::SessionsContext;

/// Adds the CORS answer headers for an allowed `Origin`.
pub(crate) fn cors(req: &HttpRequest, ctx: &SessionsContext, b: &mut HttpResponseBuilder) {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return;
    };
    if ctx.auth.check_origin(req).is_ok() {
        b.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
            .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
            .insert_header((header::VARY, "Origin"));
    }
}

/// The answer to a preflight request.
pub(crate) fn preflight(req: &HttpRequest, ctx: &SessionsContext) -> HttpResponse {
    if ctx.auth.check_origin(req).is_err() {
        return error(req, ctx, HttpError::Forbidden, StatusCode::FORBIDDEN);
    }
    let mut b = HttpResponse::NoContent();
    cors(req, ctx, &mut b);
    b.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"));
    if let Some(h) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        b.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
    }
    b.finish()
}

/// An Engine.IO error answer.
pub(crate) fn error(
    req: &HttpRequest,
    ctx: &SessionsContext,
    e: HttpError,
    status: StatusCode,
) -> HttpResponse {
    let mut b = HttpResponse::build(status);
    cors(req, ctx, &mut b);
    b.content_type("application/json").body(e.body())
}

/// A new session refused: the node holds `max_engine_sessions` (as `/ws` answers at its
/// connection limit).
pub(crate) fn server_full(req: &HttpRequest, ctx: &SessionsContext) -> HttpResponse {
    metrics::counter!("parley_connections_refused_total", "reason" => "server_full").increment(1);
    let mut b = HttpResponse::ServiceUnavailable();
    cors(req, ctx, &mut b);
    b.insert_header((header::RETRY_AFTER, "5"))
        .json(serde_json::json!({"error": {
            "code": "server_full",
            "message": "this node holds its limit of sessions; retry later or connect to another node",
        }}))
}

/// A polling answer: packets as text.
pub(crate) fn text(req: &HttpRequest, ctx: &SessionsContext, body: String) -> HttpResponse {
    let mut b = HttpResponse::Ok();
    cors(req, ctx, &mut b);
    b.content_type("text/plain; charset=UTF-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// GET with a `sid`: the next packets.
pub(crate) async fn poll(
    req: &HttpRequest,
    ctx: &SessionsContext,
    session: Addr<EngineSession>,
) -> HttpResponse {
    let (tx, rx) = oneshot::channel();
    match session.send(Poll(tx)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return error(req, ctx, e, StatusCode::BAD_REQUEST),
        Err(_) => return error(req, ctx, HttpError::UnknownSid, StatusCode::BAD_REQUEST),
    }
    // The session answers within a ping interval; the bound only guards against a bug.
    let bound = ctx.limits.heartbeat_interval + ctx.limits.client_timeout + Duration::from_secs(1);
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(payload)) => text(req, ctx, payload),
        // The session stopped without answering: tell the client it is closed.
        Ok(Err(_)) | Err(_) => text(req, ctx, engine::CLOSE.to_string()),
    }
}

/// POST with a `sid`: packets from the client.
pub(crate) async fn data(
    req: &HttpRequest,
    ctx: &SessionsContext,
    session: Addr<EngineSession>,
    mut body: web::Payload,
) -> HttpResponse {
    let max = ctx.limits.max_frame_bytes;
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return error(req, ctx, HttpError::BadRequest, StatusCode::BAD_REQUEST);
        };
        if buf.len() + chunk.len() > max {
            session.do_send(Kill(CloseReason::MessageTooBig));
            return error(
                req,
                ctx,
                HttpError::BadRequest,
                StatusCode::PAYLOAD_TOO_LARGE,
            );
        }
        buf.extend_from_slice(&chunk);
    }
    let Ok(text_body) = String::from_utf8(buf.to_vec()) else {
        session.do_send(Kill(CloseReason::ProtocolError));
        return error(req, ctx, HttpError::BadRequest, StatusCode::BAD_REQUEST);
    };
    match session.send(Data(text_body)).await {
        Ok(Ok(())) => text(req, ctx, "ok".to_string()),
        Ok(Err(e)) => error(req, ctx, e, StatusCode::BAD_REQUEST),
        Err(_) => error(req, ctx, HttpError::UnknownSid, StatusCode::BAD_REQUEST),
    }
}
