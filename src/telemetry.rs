//! Logging and tracing set-up: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks text or
//! JSON, and when `OTEL_EXPORTER_OTLP_ENDPOINT` is set every call's span is also exported over
//! OTLP/HTTP (the exporter reads the standard `OTEL_*` variables itself).

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Keeps the span exporter alive; `shutdown` flushes what is still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("iggy-gateway: flushing spans failed: {err}");
        }
    }
}

fn otlp_provider() -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("iggy-gateway: OTLP export disabled: {err}");
            return None;
        }
    };
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name("iggy-gateway")
                    .build(),
            )
            .build(),
    )
}

/// Installs the global subscriber; a second call (as in tests) leaves the first in place.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = match format {
        LogFormat::Text => fmt::layer().with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer().json().boxed(),
    };
    let provider = otlp_provider();
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("iggy-gateway"))
    });
    // try_init fails only when a subscriber is already installed, which is fine.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    Telemetry { provider }
}
