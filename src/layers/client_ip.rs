//! The client's IP, decided once per request: the TCP peer, or, only when the peer is a
//! trusted proxy (`TRUSTED_PROXIES`), the address that proxy reports (`X-Forwarded-For`, read
//! from the right past other trusted proxies, or `X-Real-IP`). An untrusted peer cannot spoof
//! its way around rate limits or lockouts with these headers.

use std::{
    convert::Infallible,
    net::IpAddr,
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

/// The IP the request is accounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    trusted: Arc<Vec<IpNet>>,
}

impl ClientIpLayer {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted: Arc::new(trusted),
        }
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            trusted: Arc::clone(&self.trusted),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    trusted: Arc<Vec<IpNet>>,
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
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0)
        })
        .map(|addr| addr.ip().to_canonical())
}

/// The client behind a chain of trusted proxies.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .collect();
    if let Some(client) = forwarded.iter().rev().find(|ip| !is_trusted(ip)) {
        return client.to_canonical();
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, |ip| ip.to_canonical())
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
            request.extensions_mut().insert(ClientIp(client));
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

    #[test]
    fn untrusted_peers_cannot_spoof_forwarded_headers() {
        let peer: IpAddr = "203.0.113.9".parse().expect("ip");
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(
            resolve(peer, &spoofed, &["10.0.0.0/8".parse().expect("net")]),
            peer
        );
    }

    #[test]
    fn trusted_proxies_report_the_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer: IpAddr = "10.0.0.2".parse().expect("ip");
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.1")]);
        assert_eq!(
            resolve(peer, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        let real = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(
            resolve(peer, &real, &trusted),
            "198.51.100.8".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(resolve(peer, &HeaderMap::new(), &trusted), peer);
    }
}
