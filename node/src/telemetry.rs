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
    Ok(handle)
}
