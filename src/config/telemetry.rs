//! How the gateway reports on itself: the log format, the optional separate `/metrics` port and
//! how often the statistics are refreshed.
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

    /// How often, in milliseconds, the backend's numbers behind `/stats` and `GetStats` are
    /// read again; those answers come from that cache, so they stay cheap and answer while the
    /// backend is down.
    #[arg(long, env = "STATS_REFRESH_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub stats_refresh_interval_ms: u64,
}
