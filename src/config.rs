//! One typed configuration, read from the environment (the names the original service used)
//! and from command-line flags, and checked before anything starts.
//!
//! The settings come in groups, one file each under `config/`; a group checks its own fields,
//! and [`Config::validate`] adds the rules between groups, so a loaded `Config` is a valid one.

mod auth;
mod backend;
mod edge;
mod limits;
mod server;
mod subscriptions;
mod telemetry;
mod wire;

use std::{convert::Infallible, fmt, num::NonZeroU32, str::FromStr, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};

pub use auth::{ApiKeys, AuthConfig};
pub use backend::BackendConfig;
pub use edge::EdgeConfig;
pub use limits::LimitsConfig;
pub use server::ServerConfig;
pub use subscriptions::{MIN_CURSOR_SECRET_BYTES, SubscriptionsConfig};
pub use telemetry::{LogFormat, TelemetryConfig};
pub use wire::WireConfig;

use crate::{
    broker::{embedded::Location, iggy::IggySettings},
    grpc::{DefaultTopic, Limits},
    layers::LayerSettings,
    listener::{ListenerSettings, TlsSettings},
    rest::RestSettings,
    subscription::SubscribeSettings,
};

/// A setting that holds a secret (a signing key, a password inside a URL): its `Debug` output,
/// and so every dump of the configuration, never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// iggy-gateway: gRPC, gRPC-Web and REST/JSON for Apache Iggy, on one port.
#[derive(Debug, Clone, Parser)]
#[command(name = "iggy-gateway", version, about)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub backend: BackendConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub edge: EdgeConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub subscriptions: SubscriptionsConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    #[command(flatten)]
    pub wire: WireConfig,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Print the SHA-256 digest of an API key, as the keys file (API_KEYS_FILE) holds it, and
    /// exit. Without a value the key is read from standard input (so it stays out of the shell
    /// history and the process list).
    #[arg(long, value_name = "KEY", num_args = 0..=1, default_missing_value = "")]
    pub hash_key: Option<Secret>,
}

/// What loading the configuration can end in besides a configuration.
#[derive(Debug)]
pub enum LoadError {
    /// `--help` or `--version`: print it and exit 0.
    Info(String),
    /// A bad setting: one line naming the variable, the value and what is allowed (exit 78).
    Invalid(String),
}

/// The settings as they take effect, one `(ENV_NAME, value)` per option; secrets redacted.
pub type EffectiveSettings = Vec<(String, String)>;

impl Config {
    /// Reads flags and environment, and checks every rule; see [`LoadError`].
    pub fn load_from<I, T>(args: I) -> Result<(Self, EffectiveSettings), LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::load_with(Self::command(), args)
    }

    /// A configuration for tests: loopback, a free port, the given data directory, and the
    /// overrides below; everything else at its default. It is parsed like any other, with the
    /// environment ignored, so a variable exported in the developer's shell cannot change a test.
    ///
    /// # Panics
    /// If these arguments stop parsing, which the unit tests catch first.
    pub fn for_tests(data_dir: impl Into<String>) -> Self {
        let data_dir = format!("--data-dir={}", data_dir.into());
        let args = [
            "iggy-gateway",
            "--host=127.0.0.1",
            // Tests run side by side: each gateway takes a free port.
            "--port=0",
            &data_dir,
            // A small pool that reconnects and gives up quickly, for the Iggy backend tests.
            "--iggy-pool-size=2",
            "--reconnect-base-delay-ms=100",
            "--reconnect-max-delay-ms=1000",
            "--operation-timeout-ms=5000",
            "--health-check-interval-ms=1000",
            "--iggy-connect-wait-ms=500",
            // No default topic, so tests see only what they create.
            "--iggy-stream=",
            "--iggy-topic=",
            // Tests send bursts from one address.
            "--rate-limit-rps=0",
            // A fixed key (the default is random per process): a cursor is valid on every test
            // gateway unless a test sets another key.
            "--cursor-secret=test-cursor-secret-of-32-bytes-at-least",
            // Subscriptions notice new messages quickly.
            "--subscribe-idle-poll-ms=50",
            // Stopping a gateway does not hold a test up.
            "--shutdown-timeout=2",
            // Statistics catch up within a test's patience.
            "--stats-refresh-interval-ms=100",
        ];
        match Self::load_with(command_without_environment(), args) {
            Ok((config, _)) => config,
            Err(err) => panic!("the test configuration does not load: {err:?}"),
        }
    }

    fn load_with<I, T>(
        command: clap::Command,
        args: I,
    ) -> Result<(Self, EffectiveSettings), LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = command
            .clone()
            .try_get_matches_from(args)
            .map_err(|err| explain(&command, &err))?;
        let config = Self::from_arg_matches(&matches).map_err(|err| explain(&command, &err))?;
        config.validate().map_err(LoadError::Invalid)?;
        Ok((config, effective_settings(&command, &matches)))
    }

    /// Every rule clap's parsers cannot state, the first broken one as one line naming the
    /// variable. [`Config::load_from`] applies it, and start-up again, since the fields are
    /// public and tests change them after loading.
    pub fn validate(&self) -> Result<(), String> {
        // The rule between groups first, then each group's own: the order in which they
        // have always been reported when several are broken.
        if self.edge.allows_any_origin() && self.auth.is_keyless() {
            return Err("CORS_ALLOWED_ORIGINS=* needs API_KEY: without a key any web page could \
                        use the gateway from its visitors' browsers; list the origins or set API_KEY"
                .into());
        }
        self.subscriptions.validate()?;
        self.limits.validate()?;
        self.wire.validate()?;
        self.backend.validate()
    }

    /// Where the embedded backend keeps its data.
    pub fn location(&self) -> Location {
        self.server.location()
    }

    /// The default topic of the event routes, when both names are set.
    pub fn default_topic(&self) -> Result<Option<DefaultTopic>, String> {
        self.backend.default_topic()
    }

    /// How to reach Iggy, when a connection string is set.
    pub fn iggy_settings(&self) -> Result<Option<IggySettings>, String> {
        let Some(mut settings) = self.backend.iggy_settings()? else {
            return Ok(None);
        };
        // A coalesced batch stays within what one call may send.
        settings.send_batching.max_messages = self.limits.batch_max_size as usize;
        settings.send_batching.max_bytes = self.limits.max_request_body_size as usize;
        settings.appends_idle = Duration::from_millis(self.subscriptions.subscribe_idle_poll_ms);
        Ok(Some(settings))
    }

    /// The subscriptions' settings (see [`SubscriptionsConfig::settings`] for their keys).
    pub fn subscribe_settings(&self) -> SubscribeSettings {
        self.subscriptions
            .settings(usize::try_from(self.limits.poll_max_bytes).unwrap_or(usize::MAX))
    }

    /// The settings of the shared layer stack.
    pub fn layer_settings(&self) -> LayerSettings {
        let (edge, limits) = (&self.edge, &self.limits);
        LayerSettings {
            trusted_proxies: edge.trusted_proxies.clone(),
            ipv6_client_prefix: edge.ipv6_client_prefix,
            rate_limit: NonZeroU32::new(limits.rate_limit_rps)
                .map(|rps| (rps, NonZeroU32::new(limits.rate_limit_burst).unwrap_or(rps))),
            auth: self.auth.settings(),
            cors_origins: edge.cors_origins(),
            cors_headers: edge.cors_headers(),
            allowed_hosts: edge.allowed_hosts.clone(),
            max_body_bytes: limits.max_request_body_size as usize,
            max_inflight_bytes: usize::try_from(limits.max_inflight_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_millis(limits.request_timeout_ms),
            max_concurrent: usize::try_from(limits.max_concurrent_requests).unwrap_or(usize::MAX),
            max_concurrent_per_client: usize::try_from(limits.max_concurrent_requests_per_client)
                .unwrap_or(usize::MAX),
            compression_min_bytes: self.wire.compression_min_bytes,
        }
    }

    /// The listener's limits, given the open-files limit in force (`None`: unknown).
    pub fn listener_settings(&self, descriptor_limit: Option<u64>) -> ListenerSettings {
        ListenerSettings {
            trusted_proxies: self.edge.trusted_proxies.clone(),
            ipv6_client_prefix: self.edge.ipv6_client_prefix,
            ..self.limits.listener_settings(descriptor_limit)
        }
    }

    /// TLS on the listener, when a certificate and key are configured.
    pub fn tls_settings(&self) -> Option<TlsSettings> {
        self.wire.tls_settings()
    }

    /// How the REST surface reads requests.
    pub fn rest_settings(&self) -> RestSettings {
        RestSettings {
            max_body_bytes: self.limits.max_request_body_size as usize,
            strict_query: self.edge.rest_strict_query,
            batch_max: self.limits.batch_max_size,
            poll_max: self.limits.poll_max_count,
        }
    }

    /// Whether the gateway is reachable from other machines without any key.
    pub fn is_open_to_the_network(&self) -> bool {
        !self.server.host.is_loopback() && self.auth.is_keyless()
    }

    /// The limits the message services apply to each call.
    pub fn limits(&self) -> Limits {
        self.limits.message_limits()
    }
}

/// The parser with every `env = ...` removed, so it reads flags only (clap reads the variables
/// when the command is built; setting or clearing them in a test is unsafe and process-wide).
fn command_without_environment() -> clap::Command {
    Config::command().mut_args(|arg| arg.env(None::<&'static str>))
}

/// One `(ENV_NAME, value)` per option that has a variable, as it takes effect; hidden values
/// (secrets) only say whether they are set.
fn effective_settings(command: &clap::Command, matches: &clap::ArgMatches) -> EffectiveSettings {
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let value = if arg.is_hide_env_values_set() {
                // An empty value is as good as unset (it names no key); say so, not "redacted".
                match matches
                    .get_raw(arg.get_id().as_str())
                    .map(|mut values| values.all(|value| value.is_empty()))
                {
                    None | Some(true) => "(unset)".to_owned(),
                    Some(false) => "(redacted)".to_owned(),
                }
            } else {
                matches.get_raw(arg.get_id().as_str()).map_or_else(
                    || "(unset)".to_owned(),
                    |values| {
                        values
                            .map(|v| v.to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                )
            };
            Some((env, value))
        })
        .collect()
}

/// One line for a clap error: the environment variable and flag, the value, and why it is
/// refused (clap's own reason says what is allowed).
fn explain(command: &clap::Command, err: &clap::Error) -> LoadError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return LoadError::Info(err.render().to_string());
    }
    let rendered = err.render().to_string();
    let reason = rendered
        .lines()
        .next()
        .unwrap_or("invalid configuration")
        .trim_start_matches("error: ")
        .to_owned();
    let flag = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => flag.split_whitespace().next().map(str::to_owned),
        _ => None,
    };
    let env = flag.as_deref().and_then(|flag| {
        command
            .get_arguments()
            .find(|arg| {
                arg.get_long()
                    .is_some_and(|long| flag == format!("--{long}"))
            })
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    });
    LoadError::Invalid(match env {
        Some(env) => format!("{env}: {reason}"),
        None => reason,
    })
}

#[cfg(test)]
mod tests;
