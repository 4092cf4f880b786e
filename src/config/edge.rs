//! What the gateway believes about the traffic reaching it: which proxies may name the client,
//! how much of an IPv6 address is one client, which web origins browsers may call from, which
//! host names requests may use, and what REST query strings may carry besides the API's fields.
//! These apply to every call, with or without a key.

use clap::Args;
use ipnet::IpNet;

use crate::layers::AllowedHost;

/// Proxies, client identity, CORS, allowed hosts and REST query strings.
#[derive(Debug, Clone, Args)]
pub struct EdgeConfig {
    /// Proxies (CIDRs or single addresses, comma-separated) whose X-Forwarded-For / X-Real-IP
    /// are believed.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..,
          value_parser = parse_proxy)]
    pub trusted_proxies: Vec<IpNet>,

    /// Leading bits of an IPv6 address that name one client for rate limits, lockouts,
    /// subscriber caps and connection caps: a host can use every address of its /64, so each
    /// is not a new client.
    #[arg(long, env = "IPV6_CLIENT_PREFIX", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(32..=128))]
    pub ipv6_client_prefix: u8,

    /// Origins allowed by CORS, comma-separated, or `*` (only with API_KEY set). Unset: no
    /// cross-origin access, so no web page can call the gateway from its visitors' browsers.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', num_args = 0..)]
    pub cors_allowed_origins: Vec<String>,

    /// Request headers a CORS preflight allows, comma-separated. Unset: whatever the browser
    /// asks for (gRPC metadata and application headers travel as headers), for allowed
    /// origins only.
    #[arg(long, env = "CORS_ALLOWED_HEADERS", value_delimiter = ',', num_args = 0..)]
    pub cors_allowed_headers: Vec<String>,

    /// Host names (optionally with :port) requests may name in Host / :authority, comma-separated;
    /// others get 421 / PERMISSION_DENIED, which stops DNS rebinding. Unset: no check. Health
    /// probes are checked too: Kubernetes sends the pod IP, so list it.
    #[arg(long, env = "ALLOWED_HOSTS", value_delimiter = ',', num_args = 0..,
          value_parser = |value: &str| value.trim().parse::<AllowedHost>())]
    pub allowed_hosts: Vec<AllowedHost>,

    /// Refuse REST query parameters that name no request field (400). Off: they are ignored,
    /// as grpc-gateway does, so browsers' cache-busters (`_=12345`) and proxies' tracking
    /// parameters do not break calls.
    #[arg(long, env = "REST_STRICT_QUERY", default_value_t = false)]
    pub rest_strict_query: bool,
}

impl EdgeConfig {
    /// `*` is among the CORS origins: any web page may call.
    pub fn allows_any_origin(&self) -> bool {
        self.cors_allowed_origins.iter().any(|o| o.trim() == "*")
    }

    /// The CORS origins, trimmed, without empty entries.
    pub fn cors_origins(&self) -> Vec<String> {
        trimmed(&self.cors_allowed_origins)
    }

    /// The headers a CORS preflight allows, trimmed, without empty entries.
    pub fn cors_headers(&self) -> Vec<String> {
        trimmed(&self.cors_allowed_headers)
    }
}

fn trimmed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .collect()
}

/// A trusted proxy: a CIDR, or a single address as operators often write one (its /32 or
/// /128); blanks around commas are ignored.
fn parse_proxy(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is neither a CIDR (10.0.0.0/8) nor an IP address"))
}
