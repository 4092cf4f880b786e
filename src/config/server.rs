//! Where the gateway listens, where the embedded backend keeps its data, and how long calls in
//! flight may run on at shutdown.

use std::{net::IpAddr, path::PathBuf};

use clap::Args;

use crate::broker::embedded::Location;

/// The process itself: its address, its data directory and its shutdown grace.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on; 0.0.0.0 or :: to accept connections from other machines.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one (logged at start-up).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Where the embedded backend keeps its data; `:memory:` keeps nothing.
    #[arg(long, env = "DATA_DIR", default_value = "./data", value_parser = parse_data_dir)]
    pub data_dir: String,

    /// Seconds to let calls in flight finish after SIGTERM before closing them.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout: u64,
}

impl ServerConfig {
    /// Where the embedded backend opens its store.
    pub fn location(&self) -> Location {
        if self.data_dir == ":memory:" {
            Location::Memory
        } else {
            Location::Directory(PathBuf::from(&self.data_dir))
        }
    }
}

/// A data directory is named: an empty `DATA_DIR` (a template's unset variable) would put the
/// store in whatever directory the process happens to start in.
fn parse_data_dir(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("is empty: name a directory, or `:memory:` to keep nothing".into());
    }
    Ok(value.to_owned())
}
