//! Metric handles for the hot path, registered once. Labels are bounded sets (event kinds,
//! close reasons): never a user or room id.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};

use crate::close::CloseReason;
use crate::protocol::EventKind;

pub(crate) struct Stats {
    pub connections: Gauge,
    pub inbound: Vec<Counter>,
    pub outbound_push: Counter,
    pub outbound_ack: Counter,
    pub latency: Histogram,
    pub rate_limited: Counter,
    pub closes: Vec<Counter>,
    pub auth_failures: Counter,
    pub forbidden_origin: Counter,
    /// Live Engine.IO sessions (Socket.IO), whatever their transport or state.
    pub engine_sessions: Gauge,
}

/// Describes the client-facing metrics (Prometheus `# HELP`) and registers them, so a fresh
/// node exposes them at 0 instead of leaving them absent until first use. Call once, after the
/// metrics recorder is installed. The `websocket_*` names are the seed's (its dashboards keep
/// working): `websocket_connections_total` is a gauge of open connections there too.
pub fn register_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "websocket_connections_total",
        "Open /ws WebSocket sessions (a gauge, named as in the Socket.IO server Parley replaces)"
    );
    describe_counter!(
        "websocket_messages_total",
        "Frames by direction and event: inbound requests by event, outbound pushes and acks"
    );
    describe_histogram!(
        "websocket_message_latency_ms",
        Unit::Milliseconds,
        "Time from a request's arrival to its answer, in milliseconds"
    );
    describe_counter!(
        "parley_rate_limited_total",
        "Requests refused with rate_limited"
    );
    describe_counter!(
        "parley_connection_closes_total",
        "Closed client connections by reason (close code)"
    );
    describe_counter!(
        "parley_auth_failures_total",
        "Connections refused for a missing, invalid or expired token"
    );
    describe_counter!(
        "parley_forbidden_origin_total",
        "Connections refused for an Origin outside allowed_origins"
    );
    describe_gauge!(
        "parley_engineio_sessions",
        "Live Engine.IO (Socket.IO) sessions, whatever their transport"
    );
    let _ = stats();
}

pub(crate) fn stats() -> &'static Stats {
    static S: OnceLock<Stats> = OnceLock::new();
    S.get_or_init(|| Stats {
        connections: metrics::gauge!("websocket_connections_total"),
        inbound: EventKind::ALL
            .iter()
            .map(|e| metrics::counter!("websocket_messages_total", "direction" => "inbound", "event" => e.as_str()))
            .collect(),
        outbound_push: metrics::counter!("websocket_messages_total", "direction" => "outbound", "event" => "push"),
        outbound_ack: metrics::counter!("websocket_messages_total", "direction" => "outbound", "event" => "ack"),
        latency: metrics::histogram!("websocket_message_latency_ms"),
        rate_limited: metrics::counter!("parley_rate_limited_total"),
        closes: CloseReason::ALL
            .iter()
            .map(|r| metrics::counter!("parley_connection_closes_total", "reason" => r.as_str()))
            .collect(),
        auth_failures: metrics::counter!("parley_auth_failures_total"),
        forbidden_origin: metrics::counter!("parley_forbidden_origin_total"),
        engine_sessions: metrics::gauge!("parley_engineio_sessions"),
    })
}

impl Stats {
    pub fn inbound(&self, e: EventKind) -> &Counter {
        &self.inbound[e as usize]
    }

    pub fn close(&self, r: CloseReason) -> &Counter {
        let i = CloseReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        &self.closes[i]
    }
}
