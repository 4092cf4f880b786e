//! Entry point: read the configuration, start the gateway, stop on SIGINT or SIGTERM, and exit
//! with a sysexits code that says what went wrong.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use iggy_gateway::{
    config::{Config, LoadError},
    startup::{Application, StartupError},
    telemetry,
};

/// glibc's malloc keeps an arena per thread and hands little back when buffers are freed on
/// another thread than the one that allocated them, which the store's writer thread and the
/// runtime's workers do all day: RSS crept up under a steady load (BENCHMARKS.md, soak).
/// jemalloc stays flat and keeps the idle footprint small.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    if let Some(key) = &config.hash_key {
        return hash_key(key.expose());
    }
    if config.print_config {
        for (name, value) in settings {
            println!("{name}={value}");
        }
        return ExitCode::SUCCESS;
    }
    let telemetry = telemetry::init(config.telemetry.log_format);
    let code = match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(err.exit_code())
        }
    };
    // Off the runtime: the span exporter flushes with a blocking HTTP client.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

/// `--hash-key`: the digest of the key given, or of the first line of standard input, without
/// the blanks around it.
fn hash_key(given: &str) -> ExitCode {
    let key = if given.is_empty() {
        let mut line = String::new();
        if let Err(err) = std::io::stdin().read_line(&mut line) {
            eprintln!("iggy-gateway: cannot read the key from standard input: {err}");
            return ExitCode::from(74);
        }
        line.trim().to_owned()
    } else {
        given.trim().to_owned()
    };
    // Trimmed as `API_KEY` is: HTTP drops the blanks around a header's value, so a key
    // hashed with them could never be presented.
    if key.is_empty() {
        eprintln!("iggy-gateway: --hash-key needs a key (as its value or on standard input)");
        return ExitCode::from(64);
    }
    println!("{}", iggy_gateway::identity::hash_key(&key));
    ExitCode::SUCCESS
}

async fn run(config: Config) -> Result<(), StartupError> {
    // Installed before anything else, so a SIGTERM during start-up stops us cleanly and a
    // SIGHUP never kills us.
    let reloads = config.wire.tls_cert_file.is_some() || config.auth.api_keys_file.is_some();
    let shutdown = shutdown_signal(reloads).map_err(|err| {
        StartupError::Internal(format!("cannot listen for shutdown signals: {err}"))
    })?;
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown).await
}

/// Registers SIGINT (Ctrl-C), SIGTERM (what Kubernetes sends) and SIGHUP now; the returned
/// future completes on the first SIGINT or SIGTERM. A second one stops the process at once,
/// without waiting for calls in flight (exit code 128 + the signal's number, as a shell reports
/// a process that signal ended). SIGHUP reloads the TLS certificate and the keys file where
/// they are set (their reloaders listen for it); otherwise it is logged and ignored, where its
/// default would end the process.
#[cfg(unix)]
fn shutdown_signal(reloads: bool) -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    if !reloads {
                        tracing::info!("SIGHUP: nothing to reload (no TLS_CERT_FILE, no API_KEYS_FILE)");
                    }
                }
            }
        }
        tokio::spawn(async move {
            let code = tokio::select! {
                _ = interrupt.recv() => 130,
                _ = terminate.recv() => 143,
            };
            tracing::warn!(
                "a second stop signal: exiting now, without waiting for calls in flight \
                 (every acknowledged message is already stored)"
            );
            std::process::exit(code);
        });
    })
}

#[cfg(not(unix))]
fn shutdown_signal(_reloads: bool) -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
