//! The markers every layer shares, carried in request and response extensions: which protocol
//! a call speaks, who sent it (its address, its client certificate), its id, which route answered and why a layer refused it. The
//! ground floor of the request path: this module imports nothing else of the crate, so every
//! layer, service and answer can read these without importing each other.

use std::{net::IpAddr, time::Duration};

use axum::http::{HeaderName, Method, Request, Uri, header};
use ipnet::IpNet;

/// The protocol a call speaks, read from its content type (and, for Connect's unary calls,
/// from its `Connect-Protocol-Version` header or its `/package.Service/Method` path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    GrpcWeb,
    /// Connect's unary calls: `POST` with `application/proto` or `application/json`, or `GET`
    /// with the message in the query. Errors are HTTP statuses with a JSON body.
    Connect,
    /// Connect's streaming calls (`application/connect+proto` or `+json`): always HTTP 200,
    /// errors in the end-of-stream message, written in the request's codec's content type.
    ConnectStream {
        json: bool,
    },
    Rest,
}

impl Protocol {
    pub fn of<B>(request: &Request<B>) -> Self {
        let headers = request.headers();
        let content_type = headers.get(header::CONTENT_TYPE);
        // What nearly every gRPC and REST client sends, settled without parsing (as below:
        // JSON on a procedure's path is Connect's).
        match content_type.map(|v| v.as_bytes()) {
            Some(b"application/grpc") => return Protocol::Grpc,
            Some(b"application/json") if !is_procedure_path(request.uri().path()) => {
                return Protocol::Rest;
            }
            _ => {}
        }
        // Read in place, whatever its case: every layer asks, so it allocates nothing.
        let essence = content_type
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if starts_with_ignoring_case(essence, "application/grpc-web") {
            Protocol::GrpcWeb
        } else if starts_with_ignoring_case(essence, "application/grpc") {
            Protocol::Grpc
        } else if starts_with_ignoring_case(essence, "application/connect+") {
            Protocol::ConnectStream {
                json: essence
                    .get("application/connect+".len()..)
                    .is_some_and(|codec| codec.eq_ignore_ascii_case("json")),
            }
        } else if is_procedure_path(request.uri().path())
            && (headers.contains_key(&CONNECT_PROTOCOL_VERSION)
                || essence.eq_ignore_ascii_case("application/proto")
                || essence.eq_ignore_ascii_case("application/json")
                || (request.method() == Method::GET && is_connect_query(request.uri())))
        {
            // Only on a procedure's path: a REST route is answered as REST whatever headers
            // ride along (its refusals keep REST's statuses: 413, not Connect's 429).
            Protocol::Connect
        } else {
            Protocol::Rest
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Connect | Protocol::ConnectStream { .. } => "connect",
            Protocol::Rest => "rest",
        }
    }

    /// gRPC or gRPC-Web: errors travel as `grpc-status`, messages compress per message.
    pub fn is_grpc(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::GrpcWeb)
    }
}

fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The header that marks a Connect unary call (its only value so far is `1`).
pub const CONNECT_PROTOCOL_VERSION: HeaderName =
    HeaderName::from_static("connect-protocol-version");

/// Header names read on every call, parsed once: a name given as `&str` is parsed and checked
/// again on each lookup.
pub mod names {
    use axum::http::HeaderName;

    pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
    pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub const CONNECT_TIMEOUT_MS: HeaderName = HeaderName::from_static("connect-timeout-ms");
    pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
}

/// A `Connect-Timeout-Ms` value: a positive number of milliseconds, at most 10 digits;
/// `None` for anything else (the timeout layer ignores it, the Connect translator refuses it).
pub fn connect_timeout(value: &str) -> Option<Duration> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// `/package.Service/Method`: two segments, the first a qualified service name. REST paths
/// (`/v1/...`) and the operator routes never look like this.
pub fn is_procedure_path(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    service.contains('.') && !method.is_empty() && !method.contains('/')
}

/// A Connect `GET`'s query: it names its protocol (`connect=v1`) or carries a message.
fn is_connect_query(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "connect=v1" || pair.starts_with("message="))
    })
}

/// The id of the request being served; shared, since refusals, audits and direct calls each
/// keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub std::sync::Arc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The deadline the client asked for (`grpc-timeout`, `Connect-Timeout-Ms`), set by the timeout
/// layer. That layer bounds a call until its answer begins; a server stream reads this to end
/// itself with DEADLINE_EXCEEDED when the deadline comes while it is still open.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub tokio::time::Instant);

/// Set by the deadline on each call; the call marks it once it has begun what it cannot take
/// back (a poll's commit of the consumer's offset). From then on the deadline waits for the
/// call's own answer instead of cutting it off: DEADLINE_EXCEEDED never follows a change made.
#[derive(Debug, Clone, Default)]
pub struct NoReturn(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl NoReturn {
    /// The call has begun changing something: let it answer.
    pub fn pass(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn passed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Which route answered, set on the response by whoever matched it (REST templates), so route
/// labels stay few whatever paths clients invent.
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub std::sync::Arc<str>);

/// The client certificate verified during the TLS handshake (mutual TLS), on every request of
/// its connection. Nothing maps it to a key's identity yet; it is there for the layers to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's distinguished name, as `CN=client, O=Example`.
    pub subject: String,
    /// Its subject alternative names: DNS names, e-mail addresses and URIs.
    pub names: Vec<String>,
}

/// Set on an error answer written by the gateway (a problem, a Connect error): its gRPC code,
/// so the surface that wrote it can settle a call its method never answered (the audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredCode(pub tonic::Code);

/// Set on a refusal's response: why, for the metrics of refusals by reason.
#[derive(Debug, Clone, Copy)]
pub struct RejectedFor(pub &'static str);

/// The IP the request is accounted to, and the key per-client controls count it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    addr: IpAddr,
    key: IpNet,
}

impl ClientIp {
    /// `ipv6_prefix` is how many leading bits of an IPv6 address name one client (clamped to
    /// 0..=128); an IPv4 address is always its own client.
    pub fn new(addr: IpAddr, ipv6_prefix: u8) -> Self {
        let addr = addr.to_canonical();
        let prefix = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => ipv6_prefix.min(128),
        };
        let key = IpNet::new(addr, prefix).map_or_else(|_| IpNet::from(addr), |net| net.trunc());
        Self { addr, key }
    }

    /// The client's own address, for logs.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// What rate limits, lockouts and subscriber caps count: `198.51.100.7/32`,
    /// `2001:db8:1:2::/64`. Rotating addresses within one IPv6 prefix keeps the same key.
    pub fn key(&self) -> IpNet {
        self.key
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::{Method, Request};

    use super::{Protocol, connect_timeout, is_procedure_path};

    #[test]
    fn connect_timeouts_are_positive_milliseconds_of_at_most_ten_digits() {
        assert_eq!(connect_timeout("250"), Some(Duration::from_millis(250)));
        assert_eq!(
            connect_timeout("9999999999"),
            Some(Duration::from_millis(9_999_999_999))
        );
        for refused in ["0", "", "-5", "1.5", "12345678901", "5s"] {
            assert_eq!(connect_timeout(refused), None, "{refused}");
        }
    }

    fn protocol(method: Method, path: &str, content_type: Option<&str>) -> Protocol {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        Protocol::of(&request.body(()).expect("a request"))
    }

    #[test]
    fn the_protocol_is_read_from_the_content_type_whatever_its_case_and_parameters() {
        let call = "/iggy.gateway.v1.StreamService/GetStream";
        for (content_type, expected) in [
            ("application/grpc", Protocol::Grpc),
            ("Application/GRPC+proto", Protocol::Grpc),
            (" application/grpc ; charset=x", Protocol::Grpc),
            ("application/grpc-web-text", Protocol::GrpcWeb),
            ("APPLICATION/GRPC-WEB+proto", Protocol::GrpcWeb),
            (
                "application/connect+json",
                Protocol::ConnectStream { json: true },
            ),
            (
                "Application/Connect+JSON",
                Protocol::ConnectStream { json: true },
            ),
            (
                "application/connect+proto",
                Protocol::ConnectStream { json: false },
            ),
            (
                "application/connect+",
                Protocol::ConnectStream { json: false },
            ),
            ("Application/JSON; charset=utf-8", Protocol::Connect),
            ("application/json", Protocol::Connect),
            ("application/proto", Protocol::Connect),
            ("application/protobuf", Protocol::Rest),
            ("text/plain", Protocol::Rest),
            ("applicatio", Protocol::Rest),
            ("é", Protocol::Rest),
        ] {
            assert_eq!(
                protocol(Method::POST, call, Some(content_type)),
                expected,
                "{content_type}"
            );
        }
        // Off a procedure's path, JSON is REST's.
        assert_eq!(
            protocol(Method::POST, "/v1/streams", Some("application/json")),
            Protocol::Rest
        );
        assert_eq!(protocol(Method::POST, call, None), Protocol::Rest);
        assert_eq!(
            protocol(Method::GET, &format!("{call}?connect=v1"), None),
            Protocol::Connect
        );
    }

    #[test]
    fn procedure_paths_name_a_qualified_service_and_a_method() {
        assert!(is_procedure_path(
            "/iggy.gateway.v1.StreamService/GetStream"
        ));
        for other in [
            "/v1/streams",
            "/v1/streams/a.b",
            "/health",
            "/a.B/",
            "/a.B/c/d",
        ] {
            assert!(!is_procedure_path(other), "{other}");
        }
    }
}
