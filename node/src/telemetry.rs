//! Logs and traces (tracing, exported with tracing-opentelemetry) and metrics (Prometheus
//! recorder). The recorder is process-global and the
//! library crates emit through the `metrics` facade; only this binary owns the exporter.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};

/// What must be flushed at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter (spans still queued are sent).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("parley: flushing traces failed: {e}");
            }
        }
    }
}

fn filter(cfg: &Config) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},ractor=warn,fjall=warn,lsm_tree=warn", cfg.log))
    })
}

/// Installs logs (`RUST_LOG` wins over the configured filter) and, when `otlp_endpoint` is set,
/// the OpenTelemetry layer that exports spans over OTLP/HTTP from the SDK's own batch thread.
pub fn init(cfg: &Config) -> anyhow::Result<Telemetry> {
    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Boxed = match cfg.log_format {
        LogFormat::Text => fmt.with_filter(filter(cfg)).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter(cfg)).boxed(),
    };
    let mut layers = vec![fmt];
    let mut provider = None;
    if let Some(endpoint) = &cfg.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .build()?;
        let resource = Resource::builder()
            .with_service_name("parley")
            .with_attribute(KeyValue::new("service.instance.id", cfg.node_name.clone()))
            .build();
        let p = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        // ractor starts a span per actor: keep those out of the export.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(p.tracer("parley"))
            .with_filter(EnvFilter::new("info,ractor=warn,fjall=warn,lsm_tree=warn"))
            .boxed();
        layers.push(otel);
        provider = Some(p);
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(Telemetry { provider })
}

/// The current span's W3C `traceparent`, for a call to another node; `None` when nothing is
/// traced (no OTLP layer, or no span).
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The span in which a request from node `from` runs: a child of the caller's span when its
/// `traceparent` came along, so one client request is one trace across nodes.
pub fn remote_span(traceparent: Option<&str>, from: &str) -> tracing::Span {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!("cluster_request", peer = %from);
    if let Some(tp) = traceparent {
        let carrier =
            std::collections::HashMap::from([("traceparent".to_string(), tp.to_string())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    span
}

const LATENCY_MS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
const STORE_MS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0,
];

/// Installs the Prometheus recorder (histograms with fixed buckets, as the seed's).
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("websocket_message_latency_ms".into()),
            LATENCY_MS,
        )?
        .set_buckets_for_metric(Matcher::Prefix("parley_store_".into()), STORE_MS)?
        .install_recorder()?;
    sessions::register_metrics();
    describe_node_metrics();
    Ok(handle)
}

/// `# HELP` for the room layer's, the store's and the cluster's metrics (the client-facing ones
/// are described by `sessions::register_metrics`).
fn describe_node_metrics() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    c!(
        "parley_actor_restarts_total",
        "Room and user actors restarted after a panic, by kind"
    );
    c!(
        "parley_room_loads_total",
        "Room actors started, by how their history loaded"
    );
    c!(
        "parley_degraded_joins_total",
        "Joins answered without history (store unavailable)"
    );
    c!(
        "parley_duplicate_sends_total",
        "Resent messages answered from the dedupe window"
    );
    c!(
        "parley_slow_consumer_evictions_total",
        "Sessions evicted with a full outbox (4008)"
    );
    c!(
        "parley_connections_refused_total",
        "WebSocket upgrades refused, by reason"
    );
    c!(
        "parley_user_registration_failures_total",
        "Failed registrations of sessions with their user's owner (retried every second)"
    );
    c!(
        "parley_heap_trims_total",
        "malloc_trim calls by the heap janitor"
    );
    g!("parley_live_actors", "Running actors, by kind");
    g!(
        "parley_dormant_actors",
        "Hibernated actors (kept as dormant state), by kind"
    );
    g!("parley_live_room_actors", "Running room actors");
    g!("parley_live_user_actors", "Running user actors");
    g!(
        "parley_hub_sessions",
        "Sessions this node delivers pushes to"
    );
    h!(
        "parley_heap_trim_seconds",
        "Duration of a malloc_trim by the heap janitor"
    );
    c!(
        "parley_store_errors_total",
        "History store errors, by kind (transient or permanent)"
    );
    c!(
        "parley_store_retries_total",
        "History store operations retried"
    );
    c!(
        "parley_store_rejected_total",
        "Store operations refused without trying, by reason (open circuit breaker)"
    );
    c!(
        "parley_store_queue_full_total",
        "Writes refused: the store's write queue was full"
    );
    c!(
        "parley_store_breaker_opened_total",
        "Times the store's circuit breaker opened"
    );
    g!(
        "parley_store_breaker_open",
        "1 while the store's circuit breaker is open"
    );
    c!(
        "parley_store_claims_total",
        "Room ownership claims (fence) made in the store"
    );
    c!(
        "parley_store_claim_contended_total",
        "Claims that lost to another owner"
    );
    c!(
        "parley_store_claim_future_writetime_total",
        "Claims that met a write timestamp from the future"
    );
    c!(
        "parley_store_fenced_total",
        "Writes refused because another node owns the room"
    );
    h!(
        "parley_store_commit_ms",
        "Duration of a history commit (one group), in milliseconds"
    );
    h!(
        "parley_store_write_latency_ms",
        "Time from a message's submission to its commit, in milliseconds"
    );
    g!(
        "parley_cluster_members",
        "Members of the cluster in this node's view, itself included"
    );
    g!(
        "parley_cluster_owned_rooms",
        "Rooms this node runs (it owns them)"
    );
    g!(
        "parley_cluster_ring_changes",
        "Times this node's view of the ring changed"
    );
    c!(
        "parley_cluster_handoffs_total",
        "Rooms handed to or taken from another node, by reason"
    );
    c!(
        "parley_cluster_handoff_states_total",
        "Room states received in planned handoffs, by outcome"
    );
    c!(
        "parley_cluster_messages_sent_total",
        "Frames sent to other nodes, by kind"
    );
    c!(
        "parley_cluster_send_failures_total",
        "Frames that could not be sent to another node"
    );
    c!(
        "parley_cluster_peer_failures_total",
        "Peers declared down by the failure detector"
    );
    c!(
        "parley_cluster_decode_errors_total",
        "Frames from peers that did not decode"
    );
    c!(
        "parley_cluster_oversize_frames_total",
        "Frames refused for exceeding cluster.max_frame_bytes"
    );
    h!(
        "parley_cluster_call_seconds",
        "Duration of a request to another node"
    );
    h!(
        "parley_cluster_heartbeat_seconds",
        "Heartbeat round trip to a peer"
    );
}
