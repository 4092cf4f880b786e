//! TLS on the one port: gRPC (tonic, `buf curl`, Python grpcio), gRPC-Web and REST over
//! HTTP/1.1 and HTTP/2, mutual TLS, certificate reload, and the start-up errors of bad files.
//! Certificates are made for each test (rcgen): a CA, and leaves it signs.

use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use iggy_gateway::{
    config::Config,
    proto::{self, stream_service_client::StreamServiceClient},
    startup::{Application, StartupError},
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA and a leaf it signed, in PEM.
pub struct Pki {
    pub ca: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&key).expect("CA certificate").pem();
        Self {
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        self.leaf("localhost", &["localhost", "127.0.0.1"])
    }

    pub fn leaf(&self, common_name: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A gateway serving TLS with certificate files in its own directory.
pub struct TlsGateway {
    pub addr: std::net::SocketAddr,
    pub dir: TempDir,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), StartupError>>,
}

impl TlsGateway {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

/// Writes the leaf (and, for mutual TLS, the client CA) into a new directory and starts a
/// gateway on them.
pub async fn spawn_tls(
    leaf: &Leaf,
    client_ca: Option<&str>,
    change: impl FnOnce(&mut Config),
) -> TlsGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert).expect("cert written");
    std::fs::write(dir.path().join("tls.key"), &leaf.key).expect("key written");
    let mut config = Config::for_tests(dir.path().join("data").display().to_string());
    config.wire.tls_cert_file = Some(dir.path().join("tls.crt"));
    config.wire.tls_key_file = Some(dir.path().join("tls.key"));
    if let Some(ca) = client_ca {
        std::fs::write(dir.path().join("client-ca.crt"), ca).expect("CA written");
        config.wire.tls_client_ca_file = Some(dir.path().join("client-ca.crt"));
    }
    change(&mut config);
    let app = Application::build(config).await.expect("gateway starts");
    let addr = app.local_addr();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop.await;
    }));
    TlsGateway {
        addr,
        dir,
        shutdown,
        server,
    }
}

/// A tonic channel over TLS that trusts `ca` (and shows `identity`, for mutual TLS).
pub async fn grpc_channel(
    gateway: &TlsGateway,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(gateway.url(""))
        .expect("valid uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// An HTTPS client that trusts `ca` only; `http1` keeps it to HTTP/1.1, else ALPN decides.
pub fn https_client(ca: &str, identity: Option<&Leaf>, http1: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"));
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert, leaf.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().expect("https client")
}

async fn create_stream(channel: Channel, name: &str) -> Result<proto::Stream, tonic::Status> {
    let created = StreamServiceClient::new(channel)
        .create_stream(proto::CreateStreamRequest { name: name.into() })
        .await?;
    Ok(created.into_inner().stream.expect("stream"))
}

fn grpc_web_frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

#[tokio::test]
async fn grpc_grpc_web_and_rest_share_one_tls_port() {
    let pki = Pki::new("test CA");
    let gateway = spawn_tls(&pki.server(), None, |_| {}).await;

    let channel = grpc_channel(&gateway, &pki.ca, None)
        .await
        .expect("TLS connects");
    let stream = create_stream(channel, "over-tls")
        .await
        .expect("gRPC over TLS");
    assert_eq!(stream.name, "over-tls");

    // REST over HTTP/1.1 (ALPN http/1.1) and over HTTP/2 (ALPN h2), on the same port.
    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let response = https_client(&pki.ca, None, http1)
            .get(gateway.url("/v1/streams/over-tls"))
            .send()
            .await
            .expect("REST over TLS");
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["stream"]["name"], "over-tls");
    }

    // gRPC-Web over HTTP/1.1 and TLS, as a browser sends it.
    let response = https_client(&pki.ca, None, true)
        .post(gateway.url("/iggy.gateway.v1.StreamService/GetStream"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(grpc_web_frame(&proto::GetStreamRequest {
            stream: "over-tls".into(),
        }))
        .send()
        .await
        .expect("gRPC-Web over TLS");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let body = response.bytes().await.expect("body");
    let trailers = String::from_utf8_lossy(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_tls_port_does_not_answer_cleartext_nor_clients_that_distrust_its_certificate() {
    let pki = Pki::new("test CA");
    let gateway = spawn_tls(&pki.server(), None, |_| {}).await;
    let cleartext = reqwest::Client::new()
        .get(format!("http://{}/health", gateway.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(cleartext.is_err(), "cleartext was answered: {cleartext:?}");
    let other = Pki::new("another CA");
    assert!(
        https_client(&other.ca, None, true)
            .get(gateway.url("/health"))
            .send()
            .await
            .is_err(),
        "a client that trusts another CA must not get through"
    );
    gateway.stop().await;
}

/// A TLS client that completes its handshake and then sends nothing (or only part of the
/// HTTP/2 preface) holds a `MAX_CONNECTIONS` place no longer than the header read timeout, as
/// a cleartext one does; one that speaks within it is served.
#[tokio::test]
async fn a_tls_connection_silent_after_its_handshake_is_closed_at_the_header_read_timeout() {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{
        TlsConnector,
        rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
    };

    let pki = Pki::new("test CA");
    let gateway = spawn_tls(&pki.server(), None, |config| {
        config.limits.header_read_timeout_ms = 300;
    })
    .await;
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(pki.ca.as_bytes()).expect("CA");
    roots.add(ca).expect("CA added");
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(gateway.addr)
            .await
            .expect("connects");
        connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake")
    };

    for said in [&b""[..], b"PRI * HT"] {
        let mut silent = connect().await;
        silent.write_all(said).await.expect("written");
        silent.flush().await.expect("flushed");
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
            .await
            .expect("closed well before the idle timeout (60 s)");
        // A close without TLS's close_notify reads as an error; either way nothing came.
        assert!(matches!(read, Ok(0) | Err(_)), "{said:?}: {read:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{said:?}: closed before the header read timeout: {:?}",
            started.elapsed()
        );
    }

    // A TCP check (a kubelet probe, a load balancer) connects and closes, or says nothing:
    // closed quietly, no failed handshake. Cleartext where TLS is spoken is one.
    drop(
        tokio::net::TcpStream::connect(gateway.addr)
            .await
            .expect("connects"),
    );
    let mut quiet = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connects");
    let mut nothing = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), quiet.read_to_end(&mut nothing))
        .await
        .expect("closed at the header read timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let mut cleartext = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connects");
    cleartext
        .write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("written");
    let _ = tokio::time::timeout(Duration::from_secs(5), cleartext.read_to_end(&mut nothing)).await;
    let metrics = https_client(&pki.ca, None, true)
        .get(gateway.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("iggy_gateway_tls_handshake_failures_total 1\n"),
        "{metrics}"
    );

    let mut late = connect().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    late.write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let _ = late.read_to_end(&mut answer).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    gateway.stop().await;
}

#[tokio::test]
async fn mutual_tls_lets_in_only_clients_with_a_certificate_from_the_client_ca() {
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let gateway = spawn_tls(&servers.server(), Some(&clients.ca), |_| {}).await;
    let client = clients.leaf("billing", &["billing.example.com"]);

    // Without a certificate: refused in the handshake, over gRPC and over HTTPS.
    let refused = match grpc_channel(&gateway, &servers.ca, None).await {
        Err(_) => true,
        Ok(channel) => create_stream(channel, "nope").await.is_err(),
    };
    assert!(refused, "a gRPC client without a certificate got through");
    assert!(
        https_client(&servers.ca, None, true)
            .get(gateway.url("/health"))
            .send()
            .await
            .is_err()
    );
    // With a certificate another CA signed: refused too.
    let stranger = Pki::new("stranger CA").leaf("stranger", &["stranger.example.com"]);
    assert!(
        https_client(&servers.ca, Some(&stranger), true)
            .get(gateway.url("/health"))
            .send()
            .await
            .is_err()
    );

    // With one from the client CA: served.
    let channel = grpc_channel(&gateway, &servers.ca, Some(&client))
        .await
        .expect("mutual TLS connects");
    create_stream(channel, "mtls").await.expect("served");
    let response = https_client(&servers.ca, Some(&client), false)
        .get(gateway.url("/v1/streams/mtls"))
        .send()
        .await
        .expect("REST with a client certificate");
    assert_eq!(response.status(), 200);
    gateway.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_while_open_ones_carry_on() {
    let first = Pki::new("first CA");
    let gateway = spawn_tls(&first.server(), None, |config| {
        config.wire.tls_reload_interval_ms = 100;
    })
    .await;
    let old = grpc_channel(&gateway, &first.ca, None)
        .await
        .expect("connects");
    create_stream(old.clone(), "before").await.expect("served");

    // The certificate is renewed, by another CA so that the tests can tell them apart: the
    // key first, then the certificate, as a careless renewal script would.
    let second = Pki::new("second CA");
    let renewed = second.server();
    std::fs::write(gateway.path("tls.key"), &renewed.key).expect("key written");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A key that does not match the certificate is not taken: the old pair still serves.
    let still_first = grpc_channel(&gateway, &first.ca, None).await;
    assert!(still_first.is_ok(), "half a renewal was served");
    std::fs::write(gateway.path("tls.crt"), &renewed.cert).expect("cert written");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        if let Ok(channel) = grpc_channel(&gateway, &second.ca, None).await {
            break channel;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    create_stream(fresh, "after")
        .await
        .expect("served with the new certificate");
    assert!(
        grpc_channel(&gateway, &first.ca, None).await.is_err(),
        "new connections still get the old certificate"
    );
    // The connection made before the renewal was not dropped.
    create_stream(old, "still-open")
        .await
        .expect("the old connection carries on");
    gateway.stop().await;
}

#[tokio::test]
async fn unreadable_malformed_or_mismatched_tls_files_stop_the_start_with_exit_78() {
    let pki = Pki::new("test CA");
    let (leaf, other) = (pki.server(), pki.server());
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("written");
        path
    };
    let (cert, key) = (write("tls.crt", &leaf.cert), write("tls.key", &leaf.key));
    let other_key = write("other.key", &other.key);
    let garbage = write("garbage.pem", "not a certificate");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            missing.clone(),
            key.clone(),
            None,
            "TLS_CERT_FILE: cannot read",
        ),
        (
            cert.clone(),
            missing.clone(),
            None,
            "TLS_KEY_FILE: cannot read",
        ),
        (garbage.clone(), key.clone(), None, "TLS_CERT_FILE"),
        (cert.clone(), garbage.clone(), None, "TLS_KEY_FILE"),
        (cert.clone(), other_key, None, "does not match"),
        (
            cert.clone(),
            key.clone(),
            Some(garbage),
            "TLS_CLIENT_CA_FILE",
        ),
        (cert, key, Some(missing), "TLS_CLIENT_CA_FILE: cannot read"),
    ];
    for (cert, key, ca, expected) in cases {
        let mut config = Config::for_tests(":memory:");
        config.wire.tls_cert_file = Some(cert);
        config.wire.tls_key_file = Some(key);
        config.wire.tls_client_ca_file = ca;
        match Application::build(config).await {
            Err(err) => {
                assert_eq!(err.exit_code(), 78, "{err}");
                assert!(err.to_string().contains(expected), "{err} lacks {expected}");
            }
            Ok(_) => panic!("started with bad TLS files ({expected})"),
        }
    }
}

#[test]
fn a_certificate_without_its_key_is_a_configuration_error() {
    for args in [
        vec!["--tls-cert-file=/tmp/a.crt"],
        vec!["--tls-key-file=/tmp/a.key"],
        vec!["--tls-client-ca-file=/tmp/ca.crt"],
    ] {
        let loaded = Config::load_from(std::iter::once("iggy-gateway").chain(args.clone()));
        assert!(loaded.is_err(), "{args:?} loaded");
    }
}

/// `buf curl` over TLS, with both of its gRPC protocols; skipped (with a line) without buf.
#[tokio::test]
async fn buf_curl_speaks_grpc_and_grpc_web_over_tls() {
    if Command::new("buf").arg("--version").output().is_err() {
        eprintln!("SKIPPED: buf is not installed (`npm install -g @bufbuild/buf`)");
        return;
    }
    let pki = Pki::new("test CA");
    let gateway = spawn_tls(&pki.server(), None, |_| {}).await;
    let ca = gateway.path("ca.crt");
    std::fs::write(&ca, &pki.ca).expect("CA written");
    for (protocol, name) in [("grpc", "buf-grpc"), ("grpcweb", "buf-grpcweb")] {
        let output = tokio::process::Command::new("buf")
            .args(["curl", "--protocol", protocol, "--cacert"])
            .arg(&ca)
            .args(["-d", &json!({ "name": name }).to_string()])
            .arg(gateway.url("/iggy.gateway.v1.StreamService/CreateStream"))
            .output()
            .await
            .expect("buf runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{protocol}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: Value = serde_json::from_str(&stdout).expect("JSON answer");
        assert_eq!(answer["stream"]["name"], name, "{protocol}");
    }
    gateway.stop().await;
}

/// A Python grpcio client with `grpc.ssl_channel_credentials`, through server reflection's
/// generic stubs-free path (a raw unary call with protobuf bytes). Skipped, with a line, when
/// python3 or grpcio is missing (`.ci/run` installs them).
#[tokio::test]
async fn python_grpcio_connects_with_ssl_channel_credentials() {
    let Some(python) = crate::helpers::python_with_grpcio() else {
        return;
    };
    let pki = Pki::new("test CA");
    let gateway = spawn_tls(&pki.server(), None, |_| {}).await;
    let ca = gateway.path("ca.crt");
    std::fs::write(&ca, &pki.ca).expect("CA written");
    let request = prost::Message::encode_to_vec(&proto::CreateStreamRequest {
        name: "from-python".into(),
    });
    // The request and the answer travel as bytes, so no generated Python code is needed.
    let script = r#"
import sys, grpc
ca, target, request = open(sys.argv[1], 'rb').read(), sys.argv[2], bytes.fromhex(sys.argv[3])
credentials = grpc.ssl_channel_credentials(root_certificates=ca)
with grpc.secure_channel(target, credentials, options=[('grpc.ssl_target_name_override', 'localhost')]) as channel:
    call = channel.unary_unary('/iggy.gateway.v1.StreamService/CreateStream')
    answer = call(request, timeout=10, compression=grpc.Compression.Gzip)
    sys.stdout.write(answer.hex())
"#;
    let hex: String = request.iter().map(|byte| format!("{byte:02x}")).collect();
    let target = format!("127.0.0.1:{}", gateway.addr.port());
    let answer = crate::helpers::run_python(
        &python,
        script,
        &[ca.as_os_str(), target.as_ref(), hex.as_ref()],
    )
    .await;
    let bytes: Vec<u8> = (0..answer.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&answer[i..i + 2], 16).expect("hex"))
        .collect();
    let created: proto::CreateStreamResponse =
        prost::Message::decode(bytes.as_slice()).expect("a CreateStreamResponse");
    assert_eq!(created.stream.expect("stream").name, "from-python");
    gateway.stop().await;
}
