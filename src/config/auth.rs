//! Who may call: the API keys (several, for rotation), the paths that need none, and the
//! lockout of clients that keep guessing. Keys are never printed.

use std::{fmt, str::FromStr, time::Duration};

use clap::Args;

use crate::{identity::KeyRing, layers::AuthSettings};

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
        // Set, yet naming no key (" , "): running open would fail open on a typo.
        if keys.is_empty() && !value.is_empty() {
            return Err(
                "holds no key (only commas and blanks); unset it to run without keys".into(),
            );
        }
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

/// Authentication by API key.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// API key, or a comma-separated list (for rotation); unset disables authentication.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKeys>,

    /// A file of named keys with scopes, quotas and expiry (TOML, or YAML by its `.yaml` /
    /// `.yml` extension); reloaded on SIGHUP and when it changes. `API_KEY`'s keys keep full
    /// access beside it.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// How often the keys file is read to see whether it changed, in milliseconds; 0: only on
    /// SIGHUP.
    #[arg(long, env = "API_KEYS_RELOAD_INTERVAL_MS", default_value_t = 5000)]
    pub api_keys_reload_interval_ms: u64,

    /// Paths reachable without a key (the gRPC health service always is).
    #[arg(
        long,
        env = "AUTH_BYPASS_PATHS",
        value_delimiter = ',',
        default_value = "/health,/ready",
        value_parser = |value: &str| Ok::<_, String>(value.trim().to_owned())
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
}

impl AuthConfig {
    /// No key is set (`API_KEY` unset, or only commas and blanks, and no `API_KEYS_FILE`):
    /// anyone may call.
    pub fn is_keyless(&self) -> bool {
        self.api_key.as_ref().is_none_or(|keys| keys.0.is_empty()) && self.api_keys_file.is_none()
    }

    /// `API_KEY`'s keys and the keys file, read now (a file that does not load is an error).
    pub fn key_ring(&self) -> Result<KeyRing, String> {
        let keys = self
            .api_key
            .as_ref()
            .map(|keys| keys.0.clone())
            .unwrap_or_default();
        KeyRing::load(&keys, self.api_keys_file.clone())
    }

    /// The settings of the API key layer.
    pub fn settings(&self) -> AuthSettings {
        AuthSettings {
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
        }
    }
}
