//! Every bound on what one client or all of them together may make the gateway do: message,
//! batch, poll and body sizes, the in-flight byte budget, rate, concurrency, connections and
//! timeouts. Each is enforced before the allocation or the work it protects.

use std::time::Duration;

use clap::Args;

use crate::{
    grpc::Limits,
    listener::{self, ListenerSettings},
};

/// Sizes, rates, counts and timeouts.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Most messages in one send.
    #[arg(long, env = "BATCH_MAX_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_size: u32,

    /// Most messages one poll may return.
    #[arg(long, env = "POLL_MAX_COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub poll_max_count: u32,

    /// Most bytes one poll answers: its payloads and headers, and its answer as protobuf
    /// encodes it (always at least one message); also bounds each read of a live subscription.
    /// 4 MiB by default, the largest message gRPC clients take unless told otherwise.
    #[arg(long, env = "POLL_MAX_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub poll_max_bytes: u64,

    /// How long, in seconds, a send's `Idempotency-Key` is remembered: a retry within it is
    /// answered from the first send (the embedded store keeps the record across restarts).
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_secs: u64,

    /// Most idempotency keys remembered in memory at once (about 250 bytes each, whatever the
    /// send); beyond it the identity holding the most forgets its oldest answer (the embedded
    /// store's records still answer a retry).
    #[arg(long, env = "IDEMPOTENCY_MAX_ENTRIES", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub idempotency_max_entries: u64,

    /// Largest payload of one message, in bytes (at most POLL_MAX_BYTES less 4 KiB).
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

    /// Requests a client may make at once: the whole bucket, refilled at RATE_LIMIT_RPS.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_limit_burst: u32,

    /// Longest a call may take, in milliseconds (a shorter grpc-timeout wins).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Calls in flight beyond which new calls are refused with UNAVAILABLE / 503.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,

    /// Calls in flight from one client (a keys-file identity, or else an IPv4 address or IPv6
    /// prefix) beyond which its new calls are refused with RESOURCE_EXHAUSTED / 429, so one
    /// client holding calls open (a trickled body) cannot take every place.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS_PER_CLIENT", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests_per_client: u64,

    /// Open connections beyond which new ones are closed on arrival. Unset: what the open-files
    /// limit leaves after a reserve for the store and the backend (a quarter, at least 64),
    /// at most 10,000.
    #[arg(long, env = "MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: Option<u64>,

    /// Open connections from one client (an IPv4 address, or an IPv6 prefix of
    /// IPV6_CLIENT_PREFIX bits) beyond which its new ones are closed on arrival, so one client
    /// cannot hold every place; a TRUSTED_PROXIES peer's are not counted. Unset: a quarter of
    /// MAX_CONNECTIONS, at least 16 (or MAX_CONNECTIONS, if less).
    #[arg(long, env = "MAX_CONNECTIONS_PER_CLIENT",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections_per_client: Option<u64>,

    /// A connection with no call in flight for this long is closed, in milliseconds.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_idle_timeout_ms: u64,

    /// A TLS handshake, what tells a new connection's HTTP version, and an HTTP/1.1 request's
    /// headers must each arrive within this time, in milliseconds (slowloris).
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// A connection whose peer takes no byte of what it is sent for this long is closed, in
    /// milliseconds (a client that stopped reading holds no buffers past it); so is one that
    /// takes no part of a poll's answer for this long (an HTTP/2 client that opens no window).
    #[arg(long, env = "CONNECTION_WRITE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_write_timeout_ms: u64,
}

impl LimitsConfig {
    /// The one rule between two limits that clap's ranges cannot state.
    pub fn validate(&self) -> Result<(), String> {
        // A message's answer adds its offset, time, id and header framing to its bytes.
        if self.poll_max_bytes < u64::from(self.max_message_size) + POLL_ANSWER_MARGIN {
            return Err(format!(
                "POLL_MAX_BYTES: {} is less than MAX_MESSAGE_SIZE ({}) and {POLL_ANSWER_MARGIN} \
                 bytes more, so a message could be stored that no poll could answer",
                self.poll_max_bytes, self.max_message_size
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

    /// The limits the message services apply to each call.
    pub fn message_limits(&self) -> Limits {
        Limits {
            batch_max: self.batch_max_size as usize,
            poll_max: self.poll_max_count,
            message_max_bytes: self.max_message_size as usize,
            poll_max_bytes: usize::try_from(self.poll_max_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Sends under an `Idempotency-Key`: remembered this long, this many at most.
    pub fn idempotency(&self) -> crate::idempotency::Idempotency {
        crate::idempotency::Idempotency::new(
            std::time::Duration::from_secs(self.idempotency_ttl_secs),
            usize::try_from(self.idempotency_max_entries).unwrap_or(usize::MAX),
        )
    }

    /// The listener's limits, given the open-files limit in force (`None`: unknown).
    pub fn listener_settings(&self, descriptor_limit: Option<u64>) -> ListenerSettings {
        let max_connections = self.max_connections.map_or_else(
            || listener::default_max_connections(descriptor_limit),
            |max| usize::try_from(max).unwrap_or(usize::MAX),
        );
        let max_connections_per_client = self.max_connections_per_client.map_or_else(
            || listener::default_max_connections_per_client(max_connections),
            |max| usize::try_from(max).unwrap_or(usize::MAX),
        );
        ListenerSettings {
            max_connections_per_client,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            write_timeout: Duration::from_millis(self.connection_write_timeout_ms),
            ..ListenerSettings::new(
                max_connections,
                Duration::from_millis(self.connection_idle_timeout_ms),
            )
        }
    }
}

/// What a poll's answer adds to a message's own bytes, at most: its offset, timestamp,
/// partition, id and the framing of its headers.
const POLL_ANSWER_MARGIN: u64 = 4096;
