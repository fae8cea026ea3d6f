//! Operational HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/cluster` and (tests only)
//! `/debug/*`.

use std::sync::atomic::Ordering::Relaxed;
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
    /// Set when the node is part of a cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The WebSocket connections held, and the limit.
    pub live: Arc<crate::upgrade::LiveSockets>,
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
    if state.live.is_full() {
        // Not a failure: new connections should go to other nodes until some close.
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "full", "connections": state.live.count(), "maxConnections": state.live.max()
        }));
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
    metrics::gauge!("parley_cluster_owned_rooms").set(state.rooms.live_rooms() as f64);
    let c = &state.rooms.cluster().counters;
    metrics::gauge!("parley_cluster_ring_changes").set(c.ring_changes.load(Relaxed) as f64);
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

/// `GET /cluster`: this node's view of the cluster (members and their state, the ring, what
/// it serves, counters).
pub async fn cluster(state: web::Data<HttpState>) -> HttpResponse {
    let view = state.rooms.cluster();
    let c = &view.counters;
    let (members, ring_members) = match &state.cluster {
        Some(cl) => match cl.status().await {
            Some(s) => (
                serde_json::to_value(&s.members).unwrap_or_default(),
                s.ring_members,
            ),
            None => {
                return HttpResponse::ServiceUnavailable()
                    .json(json!({"error": "membership did not answer"}))
            }
        },
        None => (
            json!([{"name": view.local().to_string(), "addr": "", "state": "self"}]),
            vec![view.local().to_string()],
        ),
    };
    HttpResponse::Ok().json(json!({
        "node": view.local().to_string(),
        "protocol": cluster_proto::wire::PROTOCOL_VERSION,
        "hash": rooms::ring::RING_HASH,
        "virtualNodes": rooms::ring::VIRTUAL_NODES,
        "members": members,
        "ringMembers": ring_members,
        "local": {
            "rooms": state.rooms.live_rooms(),
            "users": state.rooms.live_users(),
            "dormantUsers": state.rooms.dormant_users(),
            "sessions": state.rooms.hub().session_count(),
        },
        "counters": {
            "handoffs": c.handoffs.load(Relaxed),
            "crossNodeSent": c.cross_node_sent.load(Relaxed),
            "crossNodeReceived": c.cross_node_received.load(Relaxed),
            "ringChanges": c.ring_changes.load(Relaxed),
        }
    }))
}

/// `GET /cluster/owner/{room}`: the room's owner in this node's current view.
pub async fn cluster_owner(state: web::Data<HttpState>, room: web::Path<String>) -> HttpResponse {
    match RoomId::new(&room) {
        Ok(r) => {
            let view = state.rooms.cluster();
            HttpResponse::Ok().json(json!({
                "room": r,
                "owner": view.room_owner(r.as_str()).to_string(),
                "ringMembers": view.ring().nodes().collect::<Vec<_>>(),
            }))
        }
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    }
}
