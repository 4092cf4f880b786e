//! API-key authentication for every protocol. Keys (`API_KEY`, a comma list so keys can be
//! rotated) are compared as SHA-256 digests in constant time with `subtle`, so neither the
//! key's content nor its length leaks through timing. A key is read from `x-api-key` or
//! `authorization: Bearer` (HTTP headers and gRPC metadata alike), and from `?api_key=` only
//! when enabled. Health checks and `AUTH_BYPASS_PATHS` need no key. After `max_failures`
//! failures within `window`, a client IP is locked out for `lockout`.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderValue, Request, Response, header},
};
use futures_util::future::{Either, Ready, ready};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tonic::Code;
use tower::{Layer, Service};

use super::{
    client_ip::ClientIp,
    protocol::{Rejection, is_health_check},
};

/// Most client IPs whose failures are remembered; beyond it the stalest are forgotten.
const MAX_TRACKED_CLIENTS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub keys: Vec<String>,
    pub bypass_paths: Vec<String>,
    pub allow_query_param: bool,
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

struct AuthState {
    digests: Vec<[u8; 32]>,
    bypass_paths: Vec<String>,
    allow_query_param: bool,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone)]
pub struct ApiKeyLayer {
    state: Arc<AuthState>,
}

impl ApiKeyLayer {
    pub fn new(settings: AuthSettings) -> Self {
        Self {
            state: Arc::new(AuthState {
                digests: settings.keys.iter().map(|key| digest(key)).collect(),
                bypass_paths: settings.bypass_paths,
                allow_query_param: settings.allow_query_param,
                max_failures: settings.max_failures.max(1),
                window: settings.window,
                lockout: settings.lockout,
                failures: Mutex::new(HashMap::new()),
            }),
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl AuthState {
    fn valid(&self, presented: &str) -> bool {
        let presented = digest(presented);
        // Every configured key is compared, so timing does not tell which one matched.
        let mut matched = Choice::from(0);
        for key in &self.digests {
            matched |= key.ct_eq(&presented);
        }
        matched.into()
    }

    /// How long `client` is still locked out, if it is.
    fn locked(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().ok()?;
        let until = failures.get(&client)?.locked_until?;
        (until > now).then(|| until - now)
    }

    fn record_failure(&self, client: IpAddr, now: Instant) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_TRACKED_CLIENTS && !failures.contains_key(&client) {
            let (window, lockout) = (self.window, self.lockout);
            failures.retain(|_, f| {
                now.duration_since(f.since) < window.max(lockout)
                    || f.locked_until.is_some_and(|until| until > now)
            });
            if failures.len() >= MAX_TRACKED_CLIENTS
                && let Some(stalest) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(ip, _)| *ip)
            {
                failures.remove(&stalest);
            }
        }
        let entry = failures.entry(client).or_insert(Failures {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now.duration_since(entry.since) > self.window {
            *entry = Failures {
                count: 0,
                since: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= self.max_failures {
            entry.locked_until = Some(now + self.lockout);
            entry.count = 0;
            entry.since = now;
            tracing::warn!(%client, lockout = ?self.lockout, "too many failed API key attempts; client locked out");
        }
    }
}

/// The key the caller presented, from the headers or (when enabled) the query string.
fn presented_key<B>(request: &Request<B>, allow_query: bool) -> Option<String> {
    let headers = request.headers();
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.to_owned());
    }
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    {
        return Some(token.trim().to_owned());
    }
    if allow_query {
        let query = request.uri().query()?;
        return form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "api_key")
            .map(|(_, value)| value.into_owned());
    }
    None
}

/// Removes `api_key` from the query string once it has been checked, so it travels no further
/// (into the REST transcoder, logs, or the backend).
fn strip_key_from_query<B>(request: &mut Request<B>) {
    let Some(query) = request.uri().query() else {
        return;
    };
    let kept: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name != "api_key")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let mut path_and_query = request.uri().path().to_owned();
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish(),
        );
    }
    let mut parts = request.uri().clone().into_parts();
    if let Ok(value) = path_and_query.parse() {
        parts.path_and_query = Some(value);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

#[derive(Clone)]
pub struct ApiKeyService<S> {
    inner: S,
    state: Arc<AuthState>,
}

impl<S> Service<Request<Body>> for ApiKeyService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = &self.state;
        let path = request.uri().path();
        if state.digests.is_empty()
            || is_health_check(path)
            || state.bypass_paths.iter().any(|bypass| bypass == path)
        {
            return Either::Left(self.inner.call(request));
        }
        let client = request
            .extensions()
            .get::<ClientIp>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ip| ip.0);
        let now = Instant::now();
        if let Some(wait) = state.locked(client, now) {
            let rejection = Rejection::new(
                Code::ResourceExhausted,
                "AUTH_LOCKED_OUT",
                "too many failed authentication attempts; try again later",
            )
            .retry_after(wait);
            return Either::Right(ready(Ok(rejection.respond(&request))));
        }
        let (reason, message) = match presented_key(&request, state.allow_query_param) {
            Some(key) if state.valid(&key) => {
                let mut request = request;
                if state.allow_query_param {
                    strip_key_from_query(&mut request);
                }
                return Either::Left(self.inner.call(request));
            }
            Some(_) => ("API_KEY_INVALID", "the API key is not valid"),
            None => (
                "API_KEY_MISSING",
                "an API key is required (x-api-key or authorization: Bearer)",
            ),
        };
        state.record_failure(client, now);
        let rejection = Rejection::new(Code::Unauthenticated, reason, message).header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"iggy-gateway\""),
        );
        Either::Right(ready(Ok(rejection.respond(&request))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(keys: &[&str]) -> AuthState {
        let layer = ApiKeyLayer::new(AuthSettings {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            bypass_paths: Vec::new(),
            allow_query_param: false,
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
        });
        Arc::try_unwrap(layer.state).unwrap_or_else(|_| panic!("one owner"))
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let auth = state(&["old-key", "new-key"]);
        assert!(auth.valid("old-key"));
        assert!(auth.valid("new-key"));
        assert!(!auth.valid("new-key "));
        assert!(!auth.valid("new"));
        assert!(!auth.valid(""));
    }

    #[test]
    fn failure_counters_stay_bounded_under_many_clients() {
        let auth = state(&["k"]);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 500) {
            auth.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        let tracked = auth.failures.lock().map(|f| f.len()).unwrap_or(usize::MAX);
        assert!(tracked <= MAX_TRACKED_CLIENTS, "{tracked} tracked");
    }

    #[test]
    fn repeated_failures_lock_a_client_out_for_a_while() {
        let auth = state(&["k"]);
        let client: IpAddr = "198.51.100.1".parse().expect("ip");
        let now = Instant::now();
        auth.record_failure(client, now);
        auth.record_failure(client, now);
        assert_eq!(auth.locked(client, now), None);
        auth.record_failure(client, now);
        assert_eq!(auth.locked(client, now), Some(Duration::from_secs(300)));
        assert_eq!(auth.locked(client, now + Duration::from_secs(301)), None);
        let other: IpAddr = "198.51.100.2".parse().expect("ip");
        assert_eq!(auth.locked(other, now), None);
    }
}
