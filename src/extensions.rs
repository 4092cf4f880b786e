//! The markers every layer shares, carried in request and response extensions: which protocol
//! a call speaks, who sent it (its address, its client certificate), its id, which route answered and why a layer refused it. The
//! ground floor of the request path: this module imports nothing else of the crate, so every
//! layer, service and answer can read these without importing each other.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

/// The protocol a call speaks, read from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    GrpcWeb,
    Rest,
}

impl Protocol {
    pub fn of(headers: &HeaderMap) -> Self {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if content_type.starts_with("application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Rest
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Rest => "rest",
        }
    }
}

/// The id of the request being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Which route answered, set on the response by whoever matched it (REST templates), so route
/// labels stay few whatever paths clients invent.
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub String);

/// The client certificate verified during the TLS handshake (mutual TLS), on every request of
/// its connection. Nothing maps it to a key's identity yet; it is there for the layers to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's distinguished name, as `CN=client, O=Example`.
    pub subject: String,
    /// Its subject alternative names: DNS names, e-mail addresses and URIs.
    pub names: Vec<String>,
}

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
