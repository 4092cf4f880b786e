//! `ALLOWED_HOSTS`: when set, a request is served only if the host it names (`Host`, or HTTP/2's
//! `:authority`) is listed. This stops DNS rebinding, where a web page makes a browser reach a
//! gateway on localhost or a private network under the attacker's own host name. Refusals are
//! 421 Misdirected Request for REST and PERMISSION_DENIED for gRPC(-Web). Health probes are not
//! exempt: Kubernetes sends the pod IP as the host, so list it or leave `ALLOWED_HOSTS` unset.

use std::{fmt, str::FromStr, sync::Arc};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use tonic::Code;

use super::guard::{Exempt, Policy};
use crate::answer::Rejection;

/// One entry of `ALLOWED_HOSTS`: a host name or IP, with a port or without (then any port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lower case, without a trailing dot; an IPv6 address keeps its brackets.
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        self.host == host && self.port.is_none_or(|allowed| Some(allowed) == port)
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl FromStr for AllowedHost {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_authority(value)
            .ok_or_else(|| format!("{value:?} is not a host name with an optional :port"))?;
        Ok(Self { host, port })
    }
}

/// `host[:port]` as a request names it, normalised for comparison; `None` if it is malformed.
pub(super) fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim();
    let (host, port) = if authority.starts_with('[') {
        // An IPv6 literal: the port, if any, follows the closing bracket.
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // One spelling per address, so `[0:0::1]` matches `[::1]`.
        Some(ipv6) => {
            let ip = ipv6.parse::<std::net::Ipv6Addr>().ok()?;
            Some((format!("[{ip}]"), port))
        }
        None => {
            let valid = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            valid.then_some((host, port))
        }
    }
}

/// The host a request names: HTTP/2's `:authority` (or an absolute URI), else `Host`.
pub(super) fn requested_host<B>(request: &Request<B>) -> Option<(String, Option<u16>)> {
    match request.uri().authority() {
        Some(authority) => split_authority(authority.as_str()),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(split_authority),
    }
}

#[derive(Debug, Clone)]
pub struct AllowedHosts {
    allowed: Arc<Vec<AllowedHost>>,
}

impl AllowedHosts {
    /// `None` when the list is empty: no check at all.
    pub fn new(allowed: &[AllowedHost]) -> Option<Self> {
        (!allowed.is_empty()).then(|| Self {
            allowed: Arc::new(allowed.to_vec()),
        })
    }
}

impl Policy for AllowedHosts {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        let allowed = requested_host(request)
            .is_some_and(|(host, port)| self.allowed.iter().any(|entry| entry.allows(&host, port)));
        if allowed {
            return Ok(());
        }
        // The refused name is not echoed: it is the attacker's, and answers may be logged.
        Err(Rejection::new(
            Code::PermissionDenied,
            "HOST_NOT_ALLOWED",
            "this gateway does not serve the host this request names (ALLOWED_HOSTS)",
        )
        .http_status(StatusCode::MISDIRECTED_REQUEST))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> AllowedHost {
        text.parse().expect("an allowed host")
    }

    fn allows(entries: &[&str], authority: &str) -> bool {
        let Some((host, port)) = split_authority(authority) else {
            return false;
        };
        entries.iter().any(|e| entry(e).allows(&host, port))
    }

    #[test]
    fn a_host_without_a_port_allows_any_port_and_one_with_a_port_only_that_one() {
        assert!(allows(&["gateway.example"], "gateway.example"));
        assert!(allows(&["gateway.example"], "Gateway.Example.:8080"));
        assert!(allows(&["gateway.example:443"], "gateway.example:443"));
        assert!(!allows(&["gateway.example:443"], "gateway.example:8443"));
        assert!(!allows(&["gateway.example:443"], "gateway.example"));
        assert!(!allows(
            &["gateway.example"],
            "gateway.example.evil.example"
        ));
        assert!(!allows(&["gateway.example"], "evil.example"));
    }

    #[test]
    fn ip_literals_are_hosts_too() {
        assert!(allows(&["127.0.0.1"], "127.0.0.1:8080"));
        assert!(allows(&["[::1]"], "[::1]:8080"));
        assert!(allows(&["[0:0::1]"], "[::1]"));
        assert!(allows(&["[::1]:8080"], "[::1]:8080"));
        assert!(!allows(&["[::1]:8080"], "[::1]:9090"));
    }

    #[test]
    fn malformed_entries_and_hosts_are_refused() {
        for bad in [
            "",
            ":80",
            "host:port",
            "a b",
            "[::1",
            "[::1]x",
            "host:99999",
            "::1",
            "[nope]",
        ] {
            assert!(bad.parse::<AllowedHost>().is_err(), "{bad:?}");
            assert!(!allows(&["host"], bad), "{bad:?}");
        }
    }
}
