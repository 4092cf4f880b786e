//! One typed configuration, read from the environment (the names the original service used)
//! and from command-line flags, and checked before anything starts.

use std::{fmt, net::IpAddr, num::NonZeroU32, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

use crate::{
    broker::{Name, embedded::Location, iggy::IggySettings},
    grpc::{DefaultTopic, Limits, SubscribeSettings},
    layers::{AllowedHost, AuthSettings, LayerSettings},
    listener::{self, ListenerSettings},
};

/// Shortest CURSOR_SECRET: an HMAC-SHA256 key guessable by brute force signs nothing.
pub const MIN_CURSOR_SECRET_BYTES: usize = 32;

/// API keys; never printed (its `Debug` says how many there are, nothing more).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys(Vec<String>);

impl FromStr for ApiKeys {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let keys: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self(keys))
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys([redacted; {}])", self.0.len())
    }
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(keys.into_iter().map(Into::into).collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// iggy-gateway: gRPC, gRPC-Web and REST/JSON for Apache Iggy, on one port.
#[derive(Debug, Clone, Parser)]
#[command(name = "iggy-gateway", version, about)]
pub struct Config {
    /// Address to listen on; 0.0.0.0 or :: to accept connections from other machines.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one (logged at start-up).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Where the embedded backend keeps its data; `:memory:` keeps nothing.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: String,

    /// Iggy server to front, e.g. iggy://user:pass@host:8090. Unset: the embedded backend.
    #[arg(long, env = "IGGY_CONNECTION_STRING", hide_env_values = true)]
    pub iggy_connection_string: Option<String>,

    /// Connections to Iggy; the SDK runs one request at a time per connection.
    #[arg(long, env = "IGGY_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub iggy_pool_size: u32,

    /// First reconnection delay, in milliseconds (doubles per attempt, with full jitter).
    #[arg(long, env = "RECONNECT_BASE_DELAY_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_base_delay_ms: u64,

    /// Longest reconnection delay, in milliseconds.
    #[arg(long, env = "RECONNECT_MAX_DELAY_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_max_delay_ms: u64,

    /// Reconnection attempts before giving up on a connection; 0 keeps trying forever.
    #[arg(long, env = "MAX_RECONNECT_ATTEMPTS", default_value_t = 0)]
    pub max_reconnect_attempts: u32,

    /// Longest an Iggy call may take, in milliseconds (the SDK has no timeout of its own).
    #[arg(long, env = "OPERATION_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub operation_timeout_ms: u64,

    /// How often each Iggy connection is pinged, in milliseconds.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub health_check_interval_ms: u64,

    /// How long a call waits for a connection to Iggy before UNAVAILABLE, in milliseconds.
    #[arg(long, env = "IGGY_CONNECT_WAIT_MS", default_value_t = 2_000)]
    pub iggy_connect_wait_ms: u64,

    /// Default stream for the event routes (POST/GET /messages); created at start-up if missing.
    /// Empty: no default, so event calls must name a stream.
    #[arg(long, env = "IGGY_STREAM", default_value = "sample-stream")]
    pub iggy_stream: String,

    /// Default topic for the event routes; created at start-up if missing.
    #[arg(long, env = "IGGY_TOPIC", default_value = "events")]
    pub iggy_topic: String,

    /// Partitions of the default topic when the gateway creates it.
    #[arg(long, env = "IGGY_PARTITIONS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub iggy_partitions: u32,

    /// Most messages in one send.
    #[arg(long, env = "BATCH_MAX_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_size: u32,

    /// Most messages one poll may return.
    #[arg(long, env = "POLL_MAX_COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub poll_max_count: u32,

    /// Most payload and header bytes one poll answers (always at least one message); also
    /// bounds each read of a live subscription.
    #[arg(long, env = "POLL_MAX_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub poll_max_bytes: u64,

    /// Largest payload of one message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1..=64 * 1024 * 1024))]
    pub max_message_size: u32,

    /// Largest request body, in bytes (a whole batch must fit).
    #[arg(long, env = "MAX_REQUEST_BODY_SIZE", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024 * 1024))]
    pub max_request_body_size: u32,

    /// Request body bytes all calls together may hold; a call beyond it is shed with
    /// UNAVAILABLE / 503. At least MAX_REQUEST_BODY_SIZE.
    #[arg(long, env = "MAX_INFLIGHT_BYTES", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 40))]
    pub max_inflight_bytes: u64,

    /// Requests per second allowed per client IP; 0 disables rate limiting.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 100)]
    pub rate_limit_rps: u32,

    /// Requests a client may make at once above the sustained rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_limit_burst: u32,

    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For / X-Real-IP are believed.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..)]
    pub trusted_proxies: Vec<IpNet>,

    /// Leading bits of an IPv6 address that name one client for rate limits, lockouts and
    /// subscriber caps: a host can use every address of its /64, so each is not a new client.
    #[arg(long, env = "IPV6_CLIENT_PREFIX", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(32..=128))]
    pub ipv6_client_prefix: u8,

    /// API key, or a comma-separated list (for rotation); unset disables authentication.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKeys>,

    /// Paths reachable without a key (the gRPC health service always is).
    #[arg(
        long,
        env = "AUTH_BYPASS_PATHS",
        value_delimiter = ',',
        default_value = "/health,/ready"
    )]
    pub auth_bypass_paths: Vec<String>,

    /// Also accept the key as `?api_key=` (it may then end up in proxy logs).
    #[arg(long, env = "API_KEY_QUERY_PARAM", default_value_t = false)]
    pub api_key_query_param: bool,

    /// Failed key attempts from one client, within the window, before it is locked out.
    #[arg(long, env = "AUTH_MAX_FAILURES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_max_failures: u32,

    /// Seconds over which failed key attempts are counted.
    #[arg(long, env = "AUTH_FAILURE_WINDOW_SECS", default_value_t = 60)]
    pub auth_failure_window_secs: u64,

    /// Seconds a locked-out client must wait (at most a year is honoured).
    #[arg(long, env = "AUTH_LOCKOUT_SECS", default_value_t = 300)]
    pub auth_lockout_secs: u64,

    /// Origins allowed by CORS, comma-separated, or `*` (only with API_KEY set). Unset: no
    /// cross-origin access, so no web page can call the gateway from its visitors' browsers.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', num_args = 0..)]
    pub cors_allowed_origins: Vec<String>,

    /// Request headers a CORS preflight allows, comma-separated. Unset: whatever the browser
    /// asks for (gRPC metadata and application headers travel as headers), for allowed
    /// origins only.
    #[arg(long, env = "CORS_ALLOWED_HEADERS", value_delimiter = ',', num_args = 0..)]
    pub cors_allowed_headers: Vec<String>,

    /// Host names (optionally with :port) requests may name in Host / :authority, comma-separated;
    /// others get 421 / PERMISSION_DENIED, which stops DNS rebinding. Unset: no check. Health
    /// probes are checked too: Kubernetes sends the pod IP, so list it.
    #[arg(long, env = "ALLOWED_HOSTS", value_delimiter = ',', num_args = 0..)]
    pub allowed_hosts: Vec<AllowedHost>,

    /// Longest a call may take, in milliseconds (a shorter grpc-timeout wins).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Calls in flight beyond which new calls are refused with UNAVAILABLE / 503.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,

    /// Open connections beyond which new ones are closed on arrival. Unset: what the open-files
    /// limit leaves after a reserve for the store and the backend (a quarter, at least 64),
    /// at most 10,000.
    #[arg(long, env = "MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: Option<u64>,

    /// A connection with no call in flight for this long is closed, in milliseconds.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_idle_timeout_ms: u64,

    /// An HTTP/1.1 request's headers must arrive within this time, in milliseconds (slowloris).
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// Also serve `/metrics` (without a key) on this port of HOST; unset: only on PORT.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// Key that signs subscription cursors; replicas sharing it resume each other's cursors.
    /// Unset: a random key per process (cursors then resume only on this process).
    #[arg(long, env = "CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<String>,

    /// Most live subscriptions at once (RESOURCE_EXHAUSTED / 429 beyond).
    #[arg(long, env = "MAX_SUBSCRIBERS", default_value_t = 1000)]
    pub max_subscribers: u32,

    /// Most live subscriptions from one client IP.
    #[arg(long, env = "MAX_SUBSCRIBERS_PER_CLIENT", default_value_t = 100)]
    pub max_subscribers_per_client: u32,

    /// Longest wait between polls of an idle subscription, in milliseconds.
    #[arg(long, env = "SUBSCRIBE_IDLE_POLL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub subscribe_idle_poll_ms: u64,

    /// Heartbeat interval of an idle subscription, in milliseconds.
    #[arg(long, env = "SUBSCRIBE_HEARTBEAT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub subscribe_heartbeat_ms: u64,

    /// A subscriber that reads nothing for this long is disconnected, in milliseconds.
    #[arg(long, env = "SUBSCRIBE_SLOW_CLIENT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub subscribe_slow_client_ms: u64,

    /// Seconds to let calls in flight finish after SIGTERM before closing them.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
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
    /// Reads flags and environment; see [`LoadError`].
    pub fn load_from<I, T>(args: I) -> Result<(Self, EffectiveSettings), LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::load_with(<Self as clap::CommandFactory>::command(), args)
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
        let config = <Self as clap::FromArgMatches>::from_arg_matches(&matches)
            .map_err(|err| explain(&command, &err))?;
        config.check().map_err(LoadError::Invalid)?;
        Ok((config, effective_settings(&command, &matches)))
    }
}

/// The parser with every `env = ...` removed, so it reads flags only (clap reads the variables
/// when the command is built; setting or clearing them in a test is unsafe and process-wide).
fn command_without_environment() -> clap::Command {
    <Config as clap::CommandFactory>::command().mut_args(|arg| arg.env(None::<&'static str>))
}

/// One `(ENV_NAME, value)` per option that has a variable, as it takes effect; hidden values
/// (secrets) only say whether they are set.
fn effective_settings(command: &clap::Command, matches: &clap::ArgMatches) -> EffectiveSettings {
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let value = if arg.is_hide_env_values_set() {
                matches
                    .get_raw(arg.get_id().as_str())
                    .map_or_else(|| "(unset)".to_owned(), |_| "(redacted)".to_owned())
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

impl Config {
    /// Rules that involve more than one setting; one line naming the variable when broken.
    pub fn check(&self) -> Result<(), String> {
        let keyless = self.api_key.as_ref().is_none_or(|keys| keys.0.is_empty());
        if keyless && self.cors_allowed_origins.iter().any(|o| o.trim() == "*") {
            return Err("CORS_ALLOWED_ORIGINS=* needs API_KEY: without a key any web page could \
                        use the gateway from its visitors' browsers; list the origins or set API_KEY"
                .into());
        }
        if let Some(secret) = &self.cursor_secret
            && secret.len() < MIN_CURSOR_SECRET_BYTES
        {
            return Err(format!(
                "CURSOR_SECRET: must be at least {MIN_CURSOR_SECRET_BYTES} bytes, it is {} (it \
                 signs cursors; `openssl rand -base64 32` makes one)",
                secret.len()
            ));
        }
        if self.max_inflight_bytes < u64::from(self.max_request_body_size) {
            return Err(format!(
                "MAX_INFLIGHT_BYTES: {} is less than MAX_REQUEST_BODY_SIZE ({}), so the largest \
                 request could never be served",
                self.max_inflight_bytes, self.max_request_body_size
            ));
        }
        Ok(())
    }

    pub fn location(&self) -> Location {
        if self.data_dir == ":memory:" {
            Location::Memory
        } else {
            Location::Directory(PathBuf::from(&self.data_dir))
        }
    }

    /// The default topic of the event routes, when both names are set.
    pub fn default_topic(&self) -> Result<Option<DefaultTopic>, String> {
        if self.iggy_stream.is_empty() || self.iggy_topic.is_empty() {
            return Ok(None);
        }
        Ok(Some(DefaultTopic {
            stream: Name::parse(&self.iggy_stream)
                .map_err(|reason| format!("IGGY_STREAM={:?}: {reason}", self.iggy_stream))?,
            topic: Name::parse(&self.iggy_topic)
                .map_err(|reason| format!("IGGY_TOPIC={:?}: {reason}", self.iggy_topic))?,
            partitions: self.iggy_partitions,
        }))
    }

    /// How to reach Iggy, when a connection string is set.
    pub fn iggy_settings(&self) -> Result<Option<IggySettings>, String> {
        let Some(connection_string) = &self.iggy_connection_string else {
            return Ok(None);
        };
        if self.reconnect_base_delay_ms > self.reconnect_max_delay_ms {
            return Err(format!(
                "RECONNECT_BASE_DELAY_MS={} must not exceed RECONNECT_MAX_DELAY_MS={}",
                self.reconnect_base_delay_ms, self.reconnect_max_delay_ms
            ));
        }
        if !connection_string.starts_with("iggy://")
            && !connection_string.starts_with("iggy+tcp://")
        {
            return Err(
                "IGGY_CONNECTION_STRING must look like iggy://user:password@host:8090".into(),
            );
        }
        Ok(Some(IggySettings {
            connection_string: connection_string.clone(),
            pool_size: self.iggy_pool_size as usize,
            reconnect_base_delay: Duration::from_millis(self.reconnect_base_delay_ms),
            reconnect_max_delay: Duration::from_millis(self.reconnect_max_delay_ms),
            max_reconnect_attempts: self.max_reconnect_attempts,
            operation_timeout: Duration::from_millis(self.operation_timeout_ms),
            health_check_interval: Duration::from_millis(self.health_check_interval_ms),
            connect_wait: Duration::from_millis(self.iggy_connect_wait_ms),
        }))
    }

    pub fn subscribe_settings(&self) -> SubscribeSettings {
        SubscribeSettings {
            cursor_secret: match &self.cursor_secret {
                Some(secret) => secret.as_bytes().to_vec(),
                // Two v4 UUIDs: 244 bits from the OS's random source.
                None => [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
                    .iter()
                    .flat_map(|id| id.as_bytes().to_vec())
                    .collect(),
            },
            max_subscribers: self.max_subscribers as usize,
            max_subscribers_per_client: self.max_subscribers_per_client as usize,
            idle_poll: Duration::from_millis(self.subscribe_idle_poll_ms),
            batch_max_bytes: usize::try_from(self.poll_max_bytes).unwrap_or(usize::MAX),
            heartbeat: Duration::from_millis(self.subscribe_heartbeat_ms),
            slow_client: Duration::from_millis(self.subscribe_slow_client_ms),
        }
    }

    /// The settings of the shared layer stack.
    pub fn layer_settings(&self) -> LayerSettings {
        LayerSettings {
            trusted_proxies: self.trusted_proxies.clone(),
            ipv6_client_prefix: self.ipv6_client_prefix,
            rate_limit: NonZeroU32::new(self.rate_limit_rps)
                .map(|rps| (rps, NonZeroU32::new(self.rate_limit_burst).unwrap_or(rps))),
            auth: AuthSettings {
                keys: self
                    .api_key
                    .as_ref()
                    .map(|keys| keys.0.clone())
                    .unwrap_or_default(),
                bypass_paths: self.auth_bypass_paths.clone(),
                allow_query_param: self.api_key_query_param,
                max_failures: self.auth_max_failures,
                window: Duration::from_secs(self.auth_failure_window_secs),
                lockout: Duration::from_secs(self.auth_lockout_secs),
            },
            cors_origins: self
                .cors_allowed_origins
                .iter()
                .map(|origin| origin.trim().to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
            cors_headers: self
                .cors_allowed_headers
                .iter()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect(),
            allowed_hosts: self.allowed_hosts.clone(),
            max_body_bytes: self.max_request_body_size as usize,
            max_inflight_bytes: usize::try_from(self.max_inflight_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent: usize::try_from(self.max_concurrent_requests).unwrap_or(usize::MAX),
        }
    }

    /// The listener's limits, given the open-files limit in force (`None`: unknown).
    pub fn listener_settings(&self, descriptor_limit: Option<u64>) -> ListenerSettings {
        let max_connections = self.max_connections.map_or_else(
            || listener::default_max_connections(descriptor_limit),
            |max| usize::try_from(max).unwrap_or(usize::MAX),
        );
        ListenerSettings {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            ..ListenerSettings::new(
                max_connections,
                Duration::from_millis(self.connection_idle_timeout_ms),
            )
        }
    }

    /// Whether the gateway is reachable from other machines without any key.
    pub fn is_open_to_the_network(&self) -> bool {
        !self.host.is_loopback() && self.api_key.as_ref().is_none_or(|keys| keys.0.is_empty())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            batch_max: self.batch_max_size as usize,
            poll_max: self.poll_max_count,
            message_max_bytes: self.max_message_size as usize,
            poll_max_bytes: usize::try_from(self.poll_max_bytes).unwrap_or(usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_never_show_in_debug_output() {
        let config = Config {
            api_key: Some("sekrit-1, sekrit-2".parse().expect("keys")),
            ..Config::for_tests(":memory:")
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("sekrit"), "{printed}");
        assert!(printed.contains("redacted; 2"));
    }

    #[test]
    fn the_environment_names_of_the_original_service_are_read() {
        let config = Config::try_parse_from([
            "iggy-gateway",
            "--port",
            "0",
            "--trusted-proxies",
            "10.0.0.0/8,192.168.0.0/16",
            "--cors-allowed-origins",
            "https://a.example,https://b.example",
        ])
        .expect("parses");
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.cors_allowed_origins.len(), 2);
        assert_eq!(config.auth_bypass_paths, ["/health", "/ready"]);
        assert!(
            Config::try_parse_from(["iggy-gateway", "--trusted-proxies", "not-a-cidr"]).is_err()
        );
        let hosts = Config::try_parse_from([
            "iggy-gateway",
            "--allowed-hosts",
            "gateway.example,localhost:8080,[::1]",
        ])
        .expect("parses");
        let hosts: Vec<String> = hosts
            .allowed_hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(hosts, ["gateway.example", "localhost:8080", "[::1]"]);
        let Err(LoadError::Invalid(line)) =
            Config::load_from(["iggy-gateway", "--allowed-hosts", "a b"])
        else {
            panic!("a malformed host is refused");
        };
        assert!(line.starts_with("ALLOWED_HOSTS: "), "{line}");
    }

    #[test]
    fn settings_that_conflict_or_are_too_weak_are_refused_naming_the_variable() {
        let refused = |args: &[&str]| match Config::load_from(args.iter().copied()) {
            Err(LoadError::Invalid(line)) => line,
            other => panic!("{args:?} accepted: {other:?}"),
        };
        let line = refused(&["iggy-gateway", "--cursor-secret", "short"]);
        assert!(
            line.starts_with("CURSOR_SECRET: must be at least 32 bytes"),
            "{line}"
        );
        assert!(
            !line.contains("short"),
            "the secret itself is never printed: {line}"
        );
        let line = refused(&[
            "iggy-gateway",
            "--max-request-body-size",
            "2048",
            "--max-inflight-bytes",
            "1024",
        ]);
        assert!(line.starts_with("MAX_INFLIGHT_BYTES: "), "{line}");
        assert!(Config::load_from(["iggy-gateway", "--cursor-secret", &"k".repeat(32)]).is_ok());
    }

    #[test]
    fn the_test_configuration_is_the_defaults_with_its_overrides_whatever_the_environment() {
        assert!(
            command_without_environment()
                .get_arguments()
                .all(|arg| arg.get_env().is_none())
        );
        let Ok((mut expected, _)) =
            Config::load_with(command_without_environment(), ["iggy-gateway"])
        else {
            panic!("defaults load");
        };
        expected.port = 0;
        expected.data_dir = "/tmp/somewhere".into();
        expected.shutdown_timeout = 2;
        expected.iggy_pool_size = 2;
        expected.reconnect_base_delay_ms = 100;
        expected.reconnect_max_delay_ms = 1_000;
        expected.operation_timeout_ms = 5_000;
        expected.health_check_interval_ms = 1_000;
        expected.iggy_connect_wait_ms = 500;
        expected.iggy_stream = String::new();
        expected.iggy_topic = String::new();
        expected.rate_limit_rps = 0;
        expected.cursor_secret = Some("test-cursor-secret-of-32-bytes-at-least".into());
        expected.subscribe_idle_poll_ms = 50;
        let config = Config::for_tests("/tmp/somewhere");
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        assert!(config.host.is_loopback());
        assert_eq!(config.default_topic(), Ok(None));
    }

    #[test]
    fn a_bad_value_is_explained_in_one_line_naming_the_variable() {
        let Err(LoadError::Invalid(line)) =
            Config::load_from(["iggy-gateway", "--batch-max-size", "0"])
        else {
            panic!("0 is refused");
        };
        assert!(line.starts_with("BATCH_MAX_SIZE: "), "{line}");
        assert!(
            line.contains("'0'") && line.contains("1..=100000"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn cross_origin_access_is_off_by_default_and_any_origin_needs_a_key() {
        let Ok((config, _)) = Config::load_from(["iggy-gateway"]) else {
            panic!("defaults load");
        };
        assert!(config.layer_settings().cors_origins.is_empty());
        let Err(LoadError::Invalid(line)) =
            Config::load_from(["iggy-gateway", "--cors-allowed-origins", "*"])
        else {
            panic!("* without a key is refused");
        };
        assert!(
            line.starts_with("CORS_ALLOWED_ORIGINS=* needs API_KEY"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert!(
            Config::load_from([
                "iggy-gateway",
                "--cors-allowed-origins",
                "*",
                "--api-key",
                "k"
            ])
            .is_ok()
        );
        assert!(
            Config::load_from([
                "iggy-gateway",
                "--cors-allowed-origins",
                "https://a.example"
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_effective_settings_redact_secrets() {
        let Ok((_, settings)) =
            Config::load_from(["iggy-gateway", "--api-key", "sekrit", "--port", "9000"])
        else {
            panic!("loads");
        };
        let get = |name: &str| {
            settings
                .iter()
                .find(|(env, _)| env == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("API_KEY").as_deref(), Some("(redacted)"));
        assert_eq!(get("PORT").as_deref(), Some("9000"));
        assert!(!format!("{settings:?}").contains("sekrit"));
    }

    #[test]
    fn the_readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        let command = <Config as clap::CommandFactory>::command();
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                let name = format!("`{}`", env.to_string_lossy());
                assert!(
                    readme.contains(&name),
                    "README.md's configuration table lacks {name}"
                );
            }
        }
    }
}
