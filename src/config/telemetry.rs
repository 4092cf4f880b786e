//! How the gateway reports on itself: the log format and the optional separate `/metrics` port.
//! (`RUST_LOG` and `OTEL_EXPORTER_OTLP_ENDPOINT` are read by `crate::telemetry` directly.)

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs and metrics.
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Also serve `/metrics` (without a key) on this port of HOST; unset: only on PORT.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,
}
