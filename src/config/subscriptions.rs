//! Live subscriptions: the key that signs their cursors, how many may run at once (in all and
//! per client), and their polling, heartbeat and slow-reader timings.

use std::time::Duration;

use clap::Args;

use super::Secret;
use crate::subscription::SubscribeSettings;

/// Shortest CURSOR_SECRET: an HMAC-SHA256 key guessable by brute force signs nothing.
pub const MIN_CURSOR_SECRET_BYTES: usize = 32;

/// Subscription caps and timings.
#[derive(Debug, Clone, Args)]
pub struct SubscriptionsConfig {
    /// Key that signs subscription cursors; replicas sharing it resume each other's cursors.
    /// Unset: a random key per process (cursors then resume only on this process).
    #[arg(long, env = "CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<Secret>,

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
}

impl SubscriptionsConfig {
    /// A cursor secret, when set, is long enough to sign anything. The secret itself is never
    /// part of the message.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.cursor_secret
            && secret.expose().len() < MIN_CURSOR_SECRET_BYTES
        {
            return Err(format!(
                "CURSOR_SECRET: must be at least {MIN_CURSOR_SECRET_BYTES} bytes, it is {} (it \
                 signs cursors; `openssl rand -base64 32` makes one)",
                secret.expose().len()
            ));
        }
        Ok(())
    }

    /// The subscriptions' settings; `batch_max_bytes` bounds each read (POLL_MAX_BYTES, a limit
    /// kept with the others).
    pub fn settings(&self, batch_max_bytes: usize) -> SubscribeSettings {
        SubscribeSettings {
            cursor_secret: match &self.cursor_secret {
                Some(secret) => secret.expose().as_bytes().to_vec(),
                // Two v4 UUIDs: 244 bits from the OS's random source.
                None => [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
                    .iter()
                    .flat_map(|id| id.as_bytes().to_vec())
                    .collect(),
            },
            max_subscribers: self.max_subscribers as usize,
            max_subscribers_per_client: self.max_subscribers_per_client as usize,
            idle_poll: Duration::from_millis(self.subscribe_idle_poll_ms),
            batch_max_bytes,
            heartbeat: Duration::from_millis(self.subscribe_heartbeat_ms),
            slow_client: Duration::from_millis(self.subscribe_slow_client_ms),
        }
    }
}
