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
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(signal)) => ExitCode::from(128 + signal),
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

/// Serves until stopped; `Some(signal)` when a second stop signal cut the drain short.
async fn run(config: Config) -> Result<Option<u8>, StartupError> {
    // Installed before anything else, so a SIGTERM during start-up stops us cleanly and a
    // SIGHUP never kills us.
    let reloads = config.wire.tls_cert_file.is_some() || config.auth.api_keys_file.is_some();
    let signals = StopSignals::listen(reloads).map_err(|err| {
        StartupError::Internal(format!("cannot listen for shutdown signals: {err}"))
    })?;
    let app = Application::build(config).await?;
    app.run_until_stopped_or_hurried(signals.nth(1), signals.nth(2))
        .await?;
    Ok(signals.hurried())
}

/// SIGINT (Ctrl-C) and SIGTERM (what Kubernetes sends), counted from when they are
/// registered: the first stops the gateway (a drain of at most `SHUTDOWN_TIMEOUT`), a second
/// cuts the drain short (the process then exits with 128 + its number, as a shell reports a
/// process that signal ended, after closing the store). SIGHUP reloads the TLS certificate
/// and the keys file where they are set (their reloaders listen for it); otherwise it is
/// logged and ignored, where its default would end the process.
struct StopSignals {
    /// How many stop signals came, and the number of the last.
    seen: tokio::sync::watch::Receiver<(u8, u8)>,
}

/// How long a hurried stop may take to close the store before the process exits all the same.
const HURRIED_STOP: std::time::Duration = std::time::Duration::from_secs(5);

impl StopSignals {
    #[cfg(unix)]
    fn listen(reloads: bool) -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let (tx, seen) = tokio::sync::watch::channel((0u8, 0u8));
        tokio::spawn(async move {
            loop {
                let number = tokio::select! {
                    _ = interrupt.recv() => 2,
                    _ = terminate.recv() => 15,
                    _ = hangup.recv() => {
                        if !reloads {
                            tracing::info!("SIGHUP: nothing to reload (no TLS_CERT_FILE, no API_KEYS_FILE)");
                        }
                        continue;
                    }
                };
                let count = tx.borrow().0.saturating_add(1);
                tx.send_replace((count, number));
                if count == 2 {
                    tracing::warn!(
                        "a second stop signal: closing calls in flight now (every acknowledged \
                         message is already stored)"
                    );
                    // Bounded: a store that cannot close in time is left as a crash leaves it. On
                    // a thread of its own, not a task, so the bound also holds while the runtime
                    // is torn down (the store closes then, and this task is dropped with it).
                    std::thread::spawn(move || {
                        std::thread::sleep(HURRIED_STOP);
                        std::process::exit(128 + i32::from(number));
                    });
                }
            }
        });
        Ok(Self { seen })
    }

    #[cfg(not(unix))]
    fn listen(_reloads: bool) -> std::io::Result<Self> {
        let (tx, seen) = tokio::sync::watch::channel((0u8, 0u8));
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                let count = tx.borrow().0.saturating_add(1);
                tx.send_replace((count, 2));
            }
        });
        Ok(Self { seen })
    }

    /// Completes once `n` stop signals have come.
    fn nth(&self, n: u8) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut seen = self.seen.clone();
        async move {
            if seen.wait_for(|(count, _)| *count >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The second stop signal's number, if one came.
    fn hurried(&self) -> Option<u8> {
        let (count, number) = *self.seen.borrow();
        (count >= 2).then_some(number)
    }
}
