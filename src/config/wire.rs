//! How bytes travel between clients and the gateway: TLS (a certificate and key, reloaded when
//! the files change or on SIGHUP, and optionally a CA whose client certificates alone are let
//! in) and the size above which HTTP answers are compressed.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::listener::TlsSettings;

/// TLS and compression.
#[derive(Debug, Clone, Args)]
pub struct WireConfig {
    /// The server's certificate chain, PEM, leaf first. With TLS_KEY_FILE, the port speaks
    /// TLS only (ALPN h2 and http/1.1); unset: cleartext.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of TLS_CERT_FILE, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// CA certificates, PEM, that client certificates must chain to (mutual TLS): a client
    /// without one is refused during the handshake. Unset: no client certificate is asked for.
    #[arg(long, env = "TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// How often the certificate and key files are checked for a change, in milliseconds
    /// (SIGHUP reloads them at once).
    #[arg(long, env = "TLS_RELOAD_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub tls_reload_interval_ms: u64,

    /// Answers (REST JSON) smaller than this many bytes are sent uncompressed, whatever the
    /// client accepts: below about a kilobyte compression costs more than it saves.
    #[arg(long, env = "COMPRESSION_MIN_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub compression_min_bytes: u16,
}

impl WireConfig {
    /// The rules between these settings; whether the files can be read and match is checked
    /// at start-up, which loads them.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err("TLS_CERT_FILE is set without TLS_KEY_FILE".into()),
            (None, Some(_)) => Err("TLS_KEY_FILE is set without TLS_CERT_FILE".into()),
            (None, None) if self.tls_client_ca_file.is_some() => Err(
                "TLS_CLIENT_CA_FILE is set without TLS_CERT_FILE and TLS_KEY_FILE: client \
                 certificates are asked for only over TLS"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The listener's TLS settings, when TLS is on.
    pub fn tls_settings(&self) -> Option<TlsSettings> {
        let (cert, key) = (self.tls_cert_file.clone()?, self.tls_key_file.clone()?);
        Some(TlsSettings {
            cert,
            key,
            client_ca: self.tls_client_ca_file.clone(),
            reload_interval: Duration::from_millis(self.tls_reload_interval_ms),
        })
    }
}
