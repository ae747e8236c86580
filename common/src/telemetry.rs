//! Logging and tracing setup: human-readable lines by default, JSON lines on request, and
//! OpenTelemetry spans exported over OTLP/HTTP when a collector is configured
//! ([`crate::config::TelemetryConfig`]).
//!
//! Filtering follows `RUST_LOG` when set, otherwise the level given by the caller. Spans go
//! to the collector through the same filter, so what a process logs at `info` is what it
//! traces. The exporter batches on a thread of its own; [`Telemetry`] flushes it when the
//! process ends (dropped at the end of `main`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TelemetryConfig;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-11-21T10:00:00Z  INFO smelter_worker: committed table=bronze.events ...`
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What the process keeps while it runs: the span exporter, flushed and stopped on drop.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: traces not all exported: {error}");
        }
    }
}

/// The filter: our crates at `default_level`, dependencies only when something is wrong.
fn filter(default_level: &str) -> EnvFilter {
    // delta-rs warns on routine events (a concurrent append it merged, a binary column
    // without stats); our commit path logs the outcomes that matter.
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let ours = [
            "smelter",
            "smelter_client",
            "smelter_common",
            "smelter_coordinator",
            "smelter_lake",
            "smelter_worker",
            "smelter_tests",
        ];
        let directives: Vec<String> = ours
            .iter()
            .map(|c| format!("{c}={default_level}"))
            .collect();
        EnvFilter::new(format!(
            "warn,deltalake_core=error,{}",
            directives.join(",")
        ))
    })
}

/// Installs the global subscriber: log lines to stderr, and spans to the collector
/// `config` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names. Keep the returned [`Telemetry`]
/// until the process ends. A second call installs nothing (tests start several components
/// in one process).
pub fn init(format: LogFormat, default_level: &str, config: &TelemetryConfig) -> Telemetry {
    let endpoint = config
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty());
    let provider = endpoint.and_then(|endpoint| {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url.clone())
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(
                                config
                                    .service_name
                                    .clone()
                                    .unwrap_or_else(|| "smelter".into()),
                            )
                            .build(),
                    )
                    .build(),
            ),
            Err(error) => {
                eprintln!("warning: no traces: cannot export to {url}: {error}");
                None
            }
        }
    });
    install(format, default_level, provider)
}

/// Installs the subscriber, exporting spans through `provider` when there is one.
fn install(
    format: LogFormat,
    default_level: &str,
    provider: Option<SdkTracerProvider>,
) -> Telemetry {
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("smelter")));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(filter(default_level))
        .with(traces);
    let installed = match format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).try_init(),
    };
    Telemetry {
        provider: if installed.is_ok() { provider } else { None },
    }
}

/// Installs log lines only (no traces): see [`init`].
pub fn init_logging(format: LogFormat, default_level: &str) {
    // Nothing to flush without an exporter.
    drop(install(format, default_level, None));
}

/// Makes `span` part of the trace a caller named in W3C Trace Context headers
/// (`traceparent`, and `tracestate` if given), so that a client's trace shows what its
/// request did here. Without a valid `traceparent` the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(traceparent) = traceparent else {
        return;
    };
    let mut headers = std::collections::HashMap::new();
    headers.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        headers.insert("tracestate".to_string(), state.to_string());
    }
    let context = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&headers);
    if context.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to join then.
        let _ = span.set_parent(context);
    }
}

/// The W3C Trace Context headers (`traceparent`, and `tracestate` when there is one) that
/// make a call's spans on another process part of `span`'s trace: what a caller sends on a
/// gRPC call it makes within `span`. Empty when spans are not exported (no OpenTelemetry
/// layer, or a span filtered out).
pub fn trace_headers(span: &tracing::Span) -> Vec<(String, String)> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut headers = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&context, &mut headers);
    let mut out: Vec<(String, String)> = headers.into_iter().collect();
    out.sort();
    out
}
