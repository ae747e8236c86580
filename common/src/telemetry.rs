//! Logging setup: human-readable lines by default, JSON lines on request.
//!
//! Filtering follows `RUST_LOG` when set, otherwise the level given by the caller.

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-11-21T10:00:00Z  INFO smelter_worker: committed table=bronze.events ...`
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber. Safe to call more than once (later calls are
/// ignored), which keeps tests that start several components in one process simple.
pub fn init_logging(format: LogFormat, default_level: &str) {
    // Our crates at the requested level; dependencies (delta kernel, DataFusion, h2) only
    // when something is wrong. delta-rs warns on routine events (a concurrent append it
    // merged, a binary column without stats); our commit path logs the outcomes that matter.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let ours = [
            "smelter",
            "smelter_client",
            "smelter_common",
            "smelter_coordinator",
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
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
