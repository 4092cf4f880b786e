//! TLS on the one port (rustls, ring): ALPN offers `h2` and `http/1.1`, so gRPC, gRPC-Web and
//! REST all work over it. The certificate is served from an `ArcSwap`, so a reload (SIGHUP, or
//! the files changing) takes effect for new handshakes while open connections carry on.
//!
//! With a client CA, every client must present a certificate that chains to it (mutual TLS);
//! its subject and names are handed to the layers as a [`PeerCertificate`].

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::extensions::PeerCertificate;

/// Where the certificate, its key and the client CA are, and how often to look for changes.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate that chains to one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for a change.
    pub reload_interval: Duration,
}

/// Why the TLS files cannot be used; at start-up each is a configuration error (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{variable}: cannot read {}: {source}", path.display())]
    Unreadable {
        variable: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{variable}: {} {why}", path.display())]
    Invalid {
        variable: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("TLS_KEY_FILE does not match TLS_CERT_FILE's certificate: {0}")]
    Mismatch(String),
}

/// The server side of TLS: the acceptor handshakes use, and the certificate they are given.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadableCertificate>,
    settings: TlsSettings,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The provider named once: the iggy SDK also compiles rustls with aws-lc-rs, and with two
/// providers rustls picks none by itself.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads the files and builds the server configuration; any unreadable, malformed or
    /// mismatched file is an error naming its variable.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let provider = provider();
        let certificate = Arc::new(ReloadableCertificate {
            current: ArcSwap::from_pointee(certified_key(&settings, &provider)?),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Invalid {
                variable: "TLS_CERT_FILE",
                path: settings.cert.clone(),
                why: err.to_string(),
            })?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = client_roots(path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|err| TlsError::Invalid {
                            variable: "TLS_CLIENT_CA_FILE",
                            path: path.clone(),
                            why: err.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        // h2 first: gRPC needs HTTP/2, and HTTP/1.1 clients (curl, browsers' gRPC-Web) offer
        // only what they speak.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
            settings,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the certificate and key again and serves them to new handshakes; on failure the
    /// one in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.settings, &provider())?;
        self.certificate.current.store(Arc::new(key));
        Ok(())
    }

    /// Reloads on SIGHUP and whenever the files' modification time or size changes (checked
    /// every `reload_interval`; a Kubernetes Secret is updated by swapping a symbolic link,
    /// which inotify on the file itself would miss), until `stop`.
    pub fn spawn_reloader(&self, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup = hangup_signal();
            let mut seen = tls.fingerprint();
            let mut tick = tokio::time::interval(tls.settings.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    () = stop.cancelled() => return,
                    () = next_hangup(&mut hangup) => "SIGHUP",
                    _ = tick.tick() => {
                        let now = tls.fingerprint();
                        if now == seen {
                            continue;
                        }
                        "the files changed"
                    }
                };
                match tls.reload() {
                    Ok(()) => {
                        seen = tls.fingerprint();
                        tracing::info!(reason = why, "TLS certificate reloaded");
                    }
                    // Until a good pair is in place (a key written after its certificate),
                    // the old certificate keeps serving.
                    Err(err) => tracing::error!(
                        reason = why,
                        error = %err,
                        "TLS certificate not reloaded; the previous one is still served"
                    ),
                }
            }
        });
    }

    fn fingerprint(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
        };
        [stamp(&self.settings.cert), stamp(&self.settings.key)]
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; TLS files are still watched");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

#[cfg(unix)]
async fn next_hangup(signal: &mut Option<tokio::signal::unix::Signal>) {
    let received = match signal {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        // No signal to wait for (or its stream ended): only the file checks reload.
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Option<()>) {
    std::future::pending().await
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
struct ReloadableCertificate {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(variable: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        variable,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    variable: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |why: String| TlsError::Invalid {
        variable,
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(&read(variable, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("is not PEM: {err}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn certified_key(
    settings: &TlsSettings,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates("TLS_CERT_FILE", &settings.cert)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read("TLS_KEY_FILE", &settings.key)?).map_err(|err| {
            TlsError::Invalid {
                variable: "TLS_KEY_FILE",
                path: settings.key.clone(),
                why: format!("holds no usable private key: {err}"),
            }
        })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|err| TlsError::Mismatch(err.to_string()))
}

fn client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("TLS_CLIENT_CA_FILE", path)? {
        roots.add(cert).map_err(|err| TlsError::Invalid {
            variable: "TLS_CLIENT_CA_FILE",
            path: path.to_owned(),
            why: format!("holds a certificate that is not a usable CA: {err}"),
        })?;
    }
    Ok(roots)
}

/// The verified client certificate of a connection (mutual TLS), read once per connection:
/// its subject and its DNS, e-mail and URI names.
pub fn peer_certificate(connection: &rustls::ServerConnection) -> Option<PeerCertificate> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let leaf = connection.peer_certificates()?.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(name)
                    | GeneralName::RFC822Name(name)
                    | GeneralName::URI(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(PeerCertificate {
        subject: cert.subject().to_string(),
        names,
    })
}
