//! The backend: a real Iggy server (its connection string, pool and reconnection policy) or,
//! unset, the embedded store; and the default stream and topic of the event routes, which
//! start-up creates when missing.

use std::time::Duration;

use clap::Args;

use super::Secret;
use crate::{
    broker::{
        Name,
        iggy::{IggySettings, SendBatching},
    },
    grpc::DefaultTopic,
};

/// Which backend to use and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct BackendConfig {
    /// Iggy server to front, e.g. iggy://user:pass@host:8090. Unset: the embedded backend.
    /// The gateway adds `?nodelay=true` (TCP_NODELAY) unless the string sets `nodelay`.
    #[arg(long, env = "IGGY_CONNECTION_STRING", hide_env_values = true)]
    pub iggy_connection_string: Option<Secret>,

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

    /// Exit 69 at start-up when Iggy cannot be reached within OPERATION_TIMEOUT_MS, instead of
    /// serving (not ready) until it can.
    #[arg(long, env = "IGGY_REQUIRE_AT_STARTUP", default_value_t = false)]
    pub iggy_require_at_startup: bool,

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

    /// Coalesce concurrent sends to one topic and partitioning into one Iggy send while the
    /// pool's connections are busy (each caller still gets its own answer); false: one send
    /// per call.
    #[arg(long, env = "SEND_COALESCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub send_coalesce: bool,

    /// How long a send to Iggy waits for other calls to join it, in microseconds, when nothing
    /// is on its way to that topic yet; 0 sends at once (calls still coalesce behind a busy
    /// lane). At most 1 s.
    #[arg(long, env = "SEND_LINGER_US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub send_linger_us: u64,

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
}

impl BackendConfig {
    /// Rules clap's parsers cannot state: the connection string's scheme, the reconnection
    /// delays' order (both only with a connection string), and the default names.
    pub fn validate(&self) -> Result<(), String> {
        self.iggy_settings()?;
        self.default_topic()?;
        Ok(())
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
        let connection_string = connection_string.expose();
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
            connection_string: connection_string.to_owned(),
            pool_size: self.iggy_pool_size as usize,
            reconnect_base_delay: Duration::from_millis(self.reconnect_base_delay_ms),
            reconnect_max_delay: Duration::from_millis(self.reconnect_max_delay_ms),
            max_reconnect_attempts: self.max_reconnect_attempts,
            operation_timeout: Duration::from_millis(self.operation_timeout_ms),
            health_check_interval: Duration::from_millis(self.health_check_interval_ms),
            connect_wait: Duration::from_millis(self.iggy_connect_wait_ms),
            send_batching: SendBatching {
                enabled: self.send_coalesce,
                linger: Duration::from_micros(self.send_linger_us),
                ..SendBatching::default()
            },
            // Set from the subscriptions' settings by `Config::iggy_settings`.
            appends_idle: Duration::from_millis(500),
        }))
    }
}
