//! Live subscriptions: the key that signs their cursors, how many may run at once (in all and
//! per client), and their polling, heartbeat and slow-reader timings.

use std::time::Duration;

use clap::Args;

use super::Secret;
pub use crate::subscription::MIN_CURSOR_SECRET_BYTES;
use crate::subscription::{CursorKeys, SubscribeSettings};

/// Subscription caps and timings.
#[derive(Debug, Clone, Args)]
pub struct SubscriptionsConfig {
    /// Key that signs subscription cursors; replicas sharing it resume each other's cursors.
    /// Unset: the embedded backend keeps a generated key in DATA_DIR (`cursor-secret`); with
    /// Iggy or `:memory:`, a random key per process (cursors then die with it).
    #[arg(long, env = "CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<Secret>,

    /// The key CURSOR_SECRET replaces, during a rotation: cursors it signed are still accepted,
    /// new ones are signed with CURSOR_SECRET. Drop it once clients have moved on.
    #[arg(long, env = "CURSOR_SECRET_PREVIOUS", hide_env_values = true)]
    pub cursor_secret_previous: Option<Secret>,

    /// Most live subscriptions at once (RESOURCE_EXHAUSTED / 429 beyond); a keys-file quota's
    /// `subscriptions` caps one identity's share.
    #[arg(long, env = "MAX_SUBSCRIBERS", default_value_t = 1000)]
    pub max_subscribers: u32,

    /// Most live subscriptions from one client IP.
    #[arg(long, env = "MAX_SUBSCRIBERS_PER_CLIENT", default_value_t = 100)]
    pub max_subscribers_per_client: u32,

    /// Longest wait between polls of an idle subscription, in milliseconds; on Iggy, between
    /// reads of a followed topic while nothing changes.
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
    /// A cursor secret, when set, is long enough to sign anything, and a previous one comes
    /// with the one that replaces it. The secrets themselves are never part of the message.
    pub fn validate(&self) -> Result<(), String> {
        for (name, secret) in [
            ("CURSOR_SECRET", &self.cursor_secret),
            ("CURSOR_SECRET_PREVIOUS", &self.cursor_secret_previous),
        ] {
            if let Some(secret) = secret
                && secret.expose().len() < MIN_CURSOR_SECRET_BYTES
            {
                return Err(format!(
                    "{name}: must be at least {MIN_CURSOR_SECRET_BYTES} bytes, it is {} (it \
                     signs cursors; `openssl rand -base64 32` makes one)",
                    secret.expose().len()
                ));
            }
        }
        if self.cursor_secret_previous.is_some() && self.cursor_secret.is_none() {
            return Err(
                "CURSOR_SECRET_PREVIOUS: needs CURSOR_SECRET, the key that replaces it \
                        (a rotation signs new cursors with CURSOR_SECRET and still accepts the \
                        previous key's)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The configured keys; `None` when CURSOR_SECRET is unset, and start-up finds a key.
    pub fn cursor_keys(&self) -> Option<CursorKeys> {
        let current = self.cursor_secret.as_ref()?;
        Some(CursorKeys::new(
            current.expose().as_bytes(),
            self.cursor_secret_previous
                .as_ref()
                .map(|previous| previous.expose().as_bytes().to_vec()),
        ))
    }

    /// The subscriptions' settings; `batch_max_bytes` bounds each read (POLL_MAX_BYTES, a limit
    /// kept with the others). Without CURSOR_SECRET the keys are random: start-up replaces them
    /// with the kept ones where it can.
    pub fn settings(&self, batch_max_bytes: usize) -> SubscribeSettings {
        SubscribeSettings {
            cursor_keys: self.cursor_keys().unwrap_or_else(CursorKeys::random),
            max_subscribers: self.max_subscribers as usize,
            max_subscribers_per_client: self.max_subscribers_per_client as usize,
            idle_poll: Duration::from_millis(self.subscribe_idle_poll_ms),
            batch_max_bytes,
            heartbeat: Duration::from_millis(self.subscribe_heartbeat_ms),
            slow_client: Duration::from_millis(self.subscribe_slow_client_ms),
        }
    }
}
