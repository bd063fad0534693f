//! Logging (tracing: text on a terminal, JSON in production) and the
//! Prometheus recorder behind `/metrics`.

use std::io::IsTerminal;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Latency buckets (seconds): 100 us to 60 s, fine enough around the
/// targets that matter (10 ms schedule lateness, 1.5 s sample-to-ack, the
/// default 10 s batch interval) to tell whether they are met.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1,
    0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 11.0, 12.5, 15.0, 20.0, 30.0, 60.0,
];
/// Batch size buckets (records).
const RECORD_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0];
/// Batch size buckets (bytes).
const BYTE_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

pub(crate) fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}

/// Installs the global Prometheus recorder and describes our metrics.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("collector_batch_records".into()),
            RECORD_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full("collector_batch_bytes".into()), BYTE_BUCKETS)?
        .install_recorder()?;
    collector_core::metrics::describe();
    Ok(handle)
}
