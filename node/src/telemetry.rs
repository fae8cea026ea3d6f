//! Logs (tracing) and metrics (Prometheus recorder). The recorder is process-global and the
//! library crates emit through the `metrics` facade; only this binary owns the exporter.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the log subscriber. `RUST_LOG` wins over the configured filter.
pub fn init_logs(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},ractor=warn,fjall=warn,lsm_tree=warn", cfg.log))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
