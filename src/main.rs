//! Entry point: read the configuration, start the gateway, stop on SIGINT or SIGTERM, and exit
//! with a sysexits code that says what went wrong.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use iggy_gateway::{
    config::{Config, LoadError},
    startup::{Application, StartupError},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let (config, settings) = match Config::load_from(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(LoadError::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(LoadError::Invalid(line)) => {
            eprintln!("iggy-gateway: configuration error: {line}");
            return ExitCode::from(78);
        }
    };
    if config.print_config {
        for (name, value) in settings {
            println!("{name}={value}");
        }
        return ExitCode::SUCCESS;
    }
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
