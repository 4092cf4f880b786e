//! The client's IP, decided once per request: the TCP peer, or, only when the peer is a
//! trusted proxy (`TRUSTED_PROXIES`), the address that proxy reports. An untrusted peer cannot
//! spoof its way around rate limits or lockouts with forwarded headers.
//!
//! `X-Forwarded-For` is read from the right: each hop is trimmed and loses a port
//! (`1.2.3.4:5678`, `[::1]:443`); the first hop that is not a trusted proxy is the client. A hop
//! that does not parse (`unknown`, garbage, an empty hop) ends the chain, and the client is then
//! the last trusted address seen (the peer, or the trusted hop right of the garbage): whoever
//! wrote the garbage is not believed about anything further left. When every hop is trusted,
//! the leftmost one is the client. `X-Real-IP` is read only when there is no `X-Forwarded-For`.
//!
//! Per-client controls (rate limit, auth lockout, subscriber cap) count [`ClientIp::key`]: the
//! address itself for IPv4, its network (`IPV6_CLIENT_PREFIX`, /64 by default) for IPv6, since
//! one IPv6 host can draw fresh addresses from its /64 at will.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{HeaderMap, Request, Response},
};
use ipnet::IpNet;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::extensions::ClientIp;

#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    trusted: Arc<Vec<IpNet>>,
    ipv6_prefix: u8,
}

impl ClientIpLayer {
    pub fn new(trusted: Vec<IpNet>, ipv6_prefix: u8) -> Self {
        Self {
            trusted: Arc::new(trusted),
            ipv6_prefix,
        }
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            trusted: Arc::clone(&self.trusted),
            ipv6_prefix: self.ipv6_prefix,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    trusted: Arc<Vec<IpNet>>,
    ipv6_prefix: u8,
}

fn peer<B>(request: &Request<B>) -> Option<IpAddr> {
    // tonic's server and axum::serve record the peer in different extensions.
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0)
        })
        .map(|addr| addr.ip().to_canonical())
}

/// One forwarded hop as proxies write it: a bare address, `1.2.3.4:5678`, `[::1]` or
/// `[::1]:443`. Anything else is `None`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// Whether `ip` is one of the `trusted` proxies. A dual-stack listener sees an IPv4 proxy as
/// `::ffff:a.b.c.d`; its IPv4 range names it.
pub fn is_trusted_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client behind a chain of trusted proxies (see the module documentation for the rules).
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted);
    if !is_trusted(&peer) {
        return peer;
    }
    let mut forwarded = headers.get_all("x-forwarded-for").iter().peekable();
    if forwarded.peek().is_none() {
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_hop)
            .unwrap_or(peer);
    }
    // Several header lines are one list, in order; a line that is not text is garbage too.
    let hops: Vec<Option<&str>> = forwarded
        .flat_map(|line| match line.to_str() {
            Ok(text) => text.split(',').map(Some).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    let mut last_trusted = peer;
    for hop in hops.into_iter().rev() {
        let Some(ip) = hop.and_then(parse_hop) else {
            return last_trusted;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        last_trusted = ip;
    }
    last_trusted
}

impl<S, ResBody> Service<Request<Body>> for ClientIpService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>, Error = Infallible>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(peer) = peer(&request) {
            let client = resolve(peer, request.headers(), &self.trusted);
            request
                .extensions_mut()
                .insert(ClientIp::new(client, self.ipv6_prefix));
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn untrusted_peers_cannot_spoof_forwarded_headers() {
        let peer = ip("203.0.113.9");
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(
            resolve(peer, &spoofed, &["10.0.0.0/8".parse().expect("net")]),
            peer
        );
    }

    #[test]
    fn trusted_proxies_report_the_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer = ip("10.0.0.2");
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.1")]);
        assert_eq!(resolve(peer, &chain, &trusted), ip("198.51.100.7"));
        let split = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7 ,10.0.0.1"),
        ]);
        assert_eq!(resolve(peer, &split, &trusted), ip("198.51.100.7"));
        let real = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(resolve(peer, &real, &trusted), ip("198.51.100.8"));
        assert_eq!(resolve(peer, &HeaderMap::new(), &trusted), peer);
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.1")]);
        assert_eq!(resolve(peer, &all_trusted, &trusted), ip("10.9.9.9"));
    }

    #[test]
    fn an_ipv4_proxy_seen_by_a_dual_stack_listener_is_trusted_by_its_ipv4_range() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let chain = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.2"), &chain, &trusted),
            ip("198.51.100.7")
        );
        let through_two = headers(&[("x-forwarded-for", "198.51.100.7, ::ffff:10.0.0.1")]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &through_two, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn hops_lose_their_ports() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer = ip("10.0.0.2");
        for (hop, client) in [
            ("198.51.100.7:5678", "198.51.100.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("  2001:db8::7  ", "2001:db8::7"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
        ] {
            let forwarded = headers(&[("x-forwarded-for", hop)]);
            assert_eq!(resolve(peer, &forwarded, &trusted), ip(client), "{hop}");
        }
    }

    #[test]
    fn a_hop_that_does_not_parse_ends_the_trusted_chain() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer = ip("10.0.0.2");
        for (chain, client) in [
            ("unknown", "10.0.0.2"),
            ("198.51.100.7, unknown", "10.0.0.2"),
            ("198.51.100.7, garbage, 10.0.0.5", "10.0.0.5"),
            ("198.51.100.7,,10.0.0.5", "10.0.0.5"),
            ("unknown, 198.51.100.7", "198.51.100.7"),
            ("1.2.3.4:99999", "10.0.0.2"),
        ] {
            let forwarded = headers(&[("x-forwarded-for", chain)]);
            assert_eq!(resolve(peer, &forwarded, &trusted), ip(client), "{chain}");
        }
    }

    #[test]
    fn x_real_ip_is_ignored_when_x_forwarded_for_is_present() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer = ip("10.0.0.2");
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-real-ip", "198.51.100.8"),
        ]);
        assert_eq!(resolve(peer, &both, &trusted), ip("198.51.100.7"));
        let garbage = headers(&[
            ("x-forwarded-for", "unknown"),
            ("x-real-ip", "198.51.100.8"),
        ]);
        assert_eq!(resolve(peer, &garbage, &trusted), peer);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_ipv4_by_address() {
        let a = ClientIp::new(ip("2001:db8:1:2::a"), 64);
        let b = ClientIp::new(ip("2001:db8:1:2:ffff:1:2:3"), 64);
        let other = ClientIp::new(ip("2001:db8:1:3::a"), 64);
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), other.key());
        assert_eq!(a.key().to_string(), "2001:db8:1:2::/64");
        assert_eq!(a.addr(), ip("2001:db8:1:2::a"));
        assert_ne!(
            ClientIp::new(ip("2001:db8:1:2::a"), 128).key(),
            ClientIp::new(ip("2001:db8:1:2::b"), 128).key()
        );
        let v4 = ClientIp::new(ip("198.51.100.7"), 64);
        assert_eq!(v4.key().to_string(), "198.51.100.7/32");
        assert_ne!(v4.key(), ClientIp::new(ip("198.51.100.8"), 64).key());
        let mapped = ClientIp::new(ip("::ffff:198.51.100.7"), 64);
        assert_eq!(mapped.key(), v4.key());
    }
}
