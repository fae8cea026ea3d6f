//! Operational HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and (tests only) `/debug/*`.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use cluster_proto::RoomId;
use metrics_exporter_prometheus::PrometheusHandle;
use rooms::Rooms;
use serde_json::json;
use tokio::sync::watch;

pub struct HttpState {
    pub rooms: Arc<Rooms>,
    pub prometheus: PrometheusHandle,
    pub shutdown: watch::Receiver<bool>,
}

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The node can serve chat: its history store answers and it is not shutting down.
pub async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    if *state.shutdown.borrow() {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}));
    }
    let store = state.rooms.store();
    match store.check().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready", "store": store.name()})),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "degraded", "store": store.name(), "error": e.to_string()
        })),
    }
}

/// Prometheus text format.
pub async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    metrics::gauge!("parley_hub_sessions").set(state.rooms.hub().session_count() as f64);
    metrics::gauge!("parley_live_room_actors").set(state.rooms.live_rooms() as f64);
    metrics::gauge!("parley_live_user_actors").set(state.rooms.live_users() as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}

/// Test hook: panic the room's actor (`--test-hooks` only).
pub async fn debug_panic(state: web::Data<HttpState>, room: web::Path<String>) -> HttpResponse {
    match RoomId::new(&room) {
        Ok(r) if state.rooms.inject_panic(&r) => {
            HttpResponse::Accepted().json(json!({"panicked": r}))
        }
        Ok(_) => HttpResponse::NotFound().json(json!({"error": "room is not running"})),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    }
}
