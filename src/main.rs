//! Entry point: read the configuration, start the gateway, stop on SIGINT or SIGTERM, and exit
//! with a sysexits code that says what went wrong.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use iggy_gateway::{
    config::Config,
    startup::{Application, StartupError},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(err) => {
            // --help and --version are not errors.
            let code = if err.use_stderr() { 78 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    telemetry::init(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(config: Config) -> Result<(), StartupError> {
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
