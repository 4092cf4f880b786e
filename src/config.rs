//! One typed configuration, read from the environment (the names the original service used)
//! and from command-line flags, and checked before anything starts.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, ValueEnum};

use crate::{
    broker::{Name, embedded::Location},
    grpc::{DefaultTopic, Limits},
};

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

    /// Largest payload of one message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1..=64 * 1024 * 1024))]
    pub max_message_size: u32,

    /// Largest request body, in bytes (a whole batch must fit).
    #[arg(long, env = "MAX_REQUEST_BODY_SIZE", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024 * 1024))]
    pub max_request_body_size: u32,

    /// Seconds to let calls in flight finish after SIGTERM before closing them.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// A configuration for tests: loopback, a free port, everything else at its default.
    pub fn for_tests(data_dir: impl Into<String>) -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            data_dir: data_dir.into(),
            iggy_connection_string: None,
            // No default topic, so tests see only what they create.
            iggy_stream: String::new(),
            iggy_topic: String::new(),
            iggy_partitions: 3,
            batch_max_size: 1000,
            poll_max_count: 1000,
            max_message_size: 1024 * 1024,
            max_request_body_size: 16 * 1024 * 1024,
            shutdown_timeout: 2,
            log_format: LogFormat::Text,
        }
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

    pub fn limits(&self) -> Limits {
        Limits {
            batch_max: self.batch_max_size as usize,
            poll_max: self.poll_max_count,
            message_max_bytes: self.max_message_size as usize,
        }
    }
}
