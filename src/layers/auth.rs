//! API-key authentication for every protocol. Keys (`API_KEY`, a comma list so keys can be
//! rotated) are compared as SHA-256 digests in constant time with `subtle`, so neither the
//! key's content nor its length leaks through timing. A key is read from `x-api-key` or
//! `authorization: Bearer` (HTTP headers and gRPC metadata alike), and from `?api_key=` only
//! when enabled. Health checks and `AUTH_BYPASS_PATHS` need no key.
//!
//! After `max_failures` failures within `window`, a client ([`ClientIp::key`]: an IPv4 address
//! or an IPv6 /64) is locked out for `lockout`. The key is checked first: a request with a
//! valid key always passes, so bad requests from others behind the same NAT cannot lock a key
//! holder out. The lockout therefore cuts the cost of floods of bad keys; it does not make keys
//! harder to guess (the rate limit bounds guesses; long random keys make them hopeless).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderValue, Request, header},
};
use ipnet::IpNet;
use tonic::Code;

use super::guard::{Exempt, Policy};
use crate::{
    answer::Rejection,
    extensions::{ClientIp, names},
    identity::{Authenticated, KeyRing},
};

/// Most clients whose failures are remembered; beyond it the stalest unlocked ones are
/// forgotten, and never a client that is locked out.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// How many clients one eviction makes room for, so a flood of new clients pays for a scan of
/// the map once per this many insertions rather than on every one.
const EVICTION_BATCH: usize = MAX_TRACKED_CLIENTS / 10;

/// The longest lockout honoured (a year); a longer `AUTH_LOCKOUT_SECS` is clamped to it, so the
/// lockout's end and its `Retry-After` stay representable.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

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

impl Failures {
    fn is_locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }
}

/// The failures of every tracked client, bounded by [`MAX_TRACKED_CLIENTS`].
#[derive(Debug, Default)]
struct FailureLog {
    clients: HashMap<IpNet, Failures>,
    /// Set when every tracked client is locked out: until this instant nothing can be evicted,
    /// so new clients are not tracked and the map is not scanned again for each of them.
    full_until: Option<Instant>,
}

impl FailureLog {
    /// Makes room for a new client, if that is possible without lifting a lockout: forgets
    /// unlocked clients whose window has passed, then the stalest unlocked ones, a batch at once.
    fn make_room(&mut self, now: Instant, window: Duration) -> bool {
        if self.full_until.is_some_and(|until| now < until) {
            return false;
        }
        self.clients
            .retain(|_, f| f.is_locked(now) || now.duration_since(f.since) <= window);
        let target = MAX_TRACKED_CLIENTS - EVICTION_BATCH;
        if self.clients.len() > target {
            let mut unlocked: Vec<(Instant, IpNet)> = self
                .clients
                .iter()
                .filter(|(_, f)| !f.is_locked(now))
                .map(|(client, f)| (f.since, *client))
                .collect();
            let evict = (self.clients.len() - target).min(unlocked.len());
            if evict > 0 {
                unlocked.select_nth_unstable(evict - 1);
                for (_, client) in &unlocked[..evict] {
                    self.clients.remove(client);
                }
            }
        }
        if self.clients.len() < MAX_TRACKED_CLIENTS {
            self.full_until = None;
            return true;
        }
        self.full_until = self.clients.values().filter_map(|f| f.locked_until).min();
        // Once per scan, not per untracked failure, so a flood cannot flood the logs too.
        tracing::warn!(
            tracked = self.clients.len(),
            "every tracked client is locked out; failures of new clients are not counted until a \
             lockout ends"
        );
        false
    }
}

/// `now + wait`, without overflowing `Instant` (whose range is the platform's): a wait too long
/// to represent is halved until it fits.
fn saturating_add(now: Instant, mut wait: Duration) -> Instant {
    loop {
        if let Some(until) = now.checked_add(wait) {
            return until;
        }
        wait /= 2;
    }
}

struct AuthState {
    keys: Arc<KeyRing>,
    bypass_paths: Vec<String>,
    allow_query_param: bool,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    failures: Mutex<FailureLog>,
}

#[derive(Clone)]
pub struct ApiKey {
    state: Arc<AuthState>,
}

impl ApiKey {
    /// `API_KEY`'s keys alone (no keys file).
    pub fn new(settings: AuthSettings) -> Self {
        let keys = Arc::new(KeyRing::from_static(&settings.keys));
        Self::with_keys(settings, keys)
    }

    /// The keys of `keys` (`API_KEY`'s and the keys file's); `settings.keys` is not read.
    pub fn with_keys(settings: AuthSettings, keys: Arc<KeyRing>) -> Self {
        Self {
            state: Arc::new(AuthState {
                keys,
                bypass_paths: settings.bypass_paths,
                allow_query_param: settings.allow_query_param,
                max_failures: settings.max_failures.max(1),
                window: settings.window,
                lockout: settings.lockout.min(MAX_LOCKOUT),
                failures: Mutex::new(FailureLog::default()),
            }),
        }
    }
}

impl AuthState {
    #[cfg(test)]
    fn valid(&self, presented: &str) -> bool {
        matches!(self.keys.authenticate(presented), Authenticated::Valid(_))
    }

    /// How long `client` is still locked out, if it is.
    fn locked(&self, client: IpNet, now: Instant) -> Option<Duration> {
        let log = self.failures.lock().ok()?;
        let until = log.clients.get(&client)?.locked_until?;
        (until > now).then(|| until - now)
    }

    fn record_failure(&self, client: IpNet, now: Instant) {
        let Ok(mut log) = self.failures.lock() else {
            return;
        };
        if !log.clients.contains_key(&client)
            && log.clients.len() >= MAX_TRACKED_CLIENTS
            && !log.make_room(now, self.window)
        {
            return;
        }
        let fresh = Failures {
            count: 0,
            since: now,
            locked_until: None,
        };
        let entry = log.clients.entry(client).or_insert(fresh);
        if !entry.is_locked(now) && now.duration_since(entry.since) > self.window {
            *entry = fresh;
        }
        entry.count += 1;
        if entry.count >= self.max_failures {
            entry.locked_until = Some(saturating_add(now, self.lockout));
            entry.count = 0;
            entry.since = now;
            tracing::warn!(%client, lockout = ?self.lockout, "too many failed API key attempts; client locked out");
        }
    }
}

/// The key the caller presented, from the headers or (when enabled) the query string. A header
/// that is not ASCII text is still a key presented, one that matches none: it is refused as
/// invalid (and counts towards a lockout), not as missing.
fn presented_key<B>(request: &Request<B>, allow_query: bool) -> Option<String> {
    let headers = request.headers();
    let text = |value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
    let x_api_key = headers.get(&names::X_API_KEY);
    if let Some(key) = x_api_key.filter(|key| key.to_str().is_ok()) {
        return Some(text(key));
    }
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .map(text)
        .as_deref()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    {
        return Some(token.trim().to_owned());
    }
    // Unreadable, and no bearer token to fall back on (one a proxy added junk beside).
    if let Some(key) = x_api_key {
        return Some(text(key));
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

impl Policy for ApiKey {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::HealthService;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        let state = &self.state;
        let path = request.uri().path();
        // Every call that goes on carries an identity: the scope layer refuses one without.
        if !state.keys.enabled() || state.bypass_paths.iter().any(|bypass| bypass == path) {
            request.extensions_mut().insert(state.keys.anonymous());
            return Ok(());
        }
        let client = request.extensions().get::<ClientIp>().map_or(
            IpNet::from(IpAddr::from(Ipv4Addr::UNSPECIFIED)),
            ClientIp::key,
        );
        // A valid key is checked before the lockout, so it is never refused by one.
        let (reason, message) = match presented_key(request, state.allow_query_param)
            .map(|key| state.keys.authenticate(&key))
        {
            Some(Authenticated::Valid(identity)) => {
                if state.allow_query_param {
                    strip_key_from_query(request);
                }
                request.extensions_mut().insert(identity);
                return Ok(());
            }
            Some(Authenticated::Expired(identity)) => {
                tracing::info!(
                    identity = identity.name(),
                    "an expired API key was presented"
                );
                ("API_KEY_EXPIRED", "the API key has expired")
            }
            Some(Authenticated::Invalid) => ("API_KEY_INVALID", "the API key is not valid"),
            None => (
                "API_KEY_MISSING",
                "an API key is required (x-api-key or authorization: Bearer)",
            ),
        };
        let now = Instant::now();
        if let Some(wait) = state.locked(client, now) {
            return Err(Rejection::new(
                Code::ResourceExhausted,
                "AUTH_LOCKED_OUT",
                "too many failed authentication attempts; try again later",
            )
            .retry_after(wait));
        }
        state.record_failure(client, now);
        Err(
            Rejection::new(Code::Unauthenticated, reason, message).header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"iggy-gateway\""),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(keys: &[&str], lockout: Duration) -> AuthState {
        let layer = ApiKey::new(AuthSettings {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            bypass_paths: Vec::new(),
            allow_query_param: false,
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout,
        });
        Arc::try_unwrap(layer.state).unwrap_or_else(|_| panic!("one owner"))
    }

    fn state(keys: &[&str]) -> AuthState {
        state_with(keys, Duration::from_secs(300))
    }

    fn client(i: u32) -> IpNet {
        IpNet::from(IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i)))
    }

    fn tracked(auth: &AuthState) -> usize {
        auth.failures
            .lock()
            .map(|log| log.clients.len())
            .unwrap_or(usize::MAX)
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
            auth.record_failure(client(i), now);
        }
        let tracked = tracked(&auth);
        assert!(tracked <= MAX_TRACKED_CLIENTS, "{tracked} tracked");
    }

    #[test]
    fn eviction_never_lifts_a_lockout() {
        let auth = state(&["k"]);
        let now = Instant::now();
        let locked: IpNet = "198.51.100.1/32".parse().expect("net");
        for _ in 0..3 {
            auth.record_failure(locked, now);
        }
        assert!(auth.locked(locked, now).is_some());
        // Later failures of many new clients: the locked client is the stalest entry.
        let later = now + Duration::from_secs(1);
        for i in 0..(3 * MAX_TRACKED_CLIENTS as u32) {
            auth.record_failure(client(i), later);
        }
        assert!(tracked(&auth) <= MAX_TRACKED_CLIENTS);
        assert_eq!(
            auth.locked(locked, later),
            Some(Duration::from_secs(299)),
            "still locked out"
        );
    }

    #[test]
    fn when_every_tracked_client_is_locked_out_a_new_one_is_not_tracked() {
        let auth = state(&["k"]);
        let now = Instant::now();
        for i in 0..MAX_TRACKED_CLIENTS as u32 {
            for _ in 0..3 {
                auth.record_failure(client(i), now);
            }
        }
        assert_eq!(tracked(&auth), MAX_TRACKED_CLIENTS);
        let newcomer = client(MAX_TRACKED_CLIENTS as u32 + 1);
        for _ in 0..3 {
            auth.record_failure(newcomer, now);
        }
        assert_eq!(tracked(&auth), MAX_TRACKED_CLIENTS);
        assert_eq!(auth.locked(newcomer, now), None);
        assert!(auth.locked(client(0), now).is_some(), "no lockout lifted");
        // Once the lockouts end, new clients are tracked again.
        let after = now + Duration::from_secs(301);
        for _ in 0..3 {
            auth.record_failure(newcomer, after);
        }
        assert!(auth.locked(newcomer, after).is_some());
    }

    #[test]
    fn repeated_failures_lock_a_client_out_for_a_while() {
        let auth = state(&["k"]);
        let client: IpNet = "198.51.100.1/32".parse().expect("net");
        let now = Instant::now();
        auth.record_failure(client, now);
        auth.record_failure(client, now);
        assert_eq!(auth.locked(client, now), None);
        auth.record_failure(client, now);
        assert_eq!(auth.locked(client, now), Some(Duration::from_secs(300)));
        assert_eq!(auth.locked(client, now + Duration::from_secs(301)), None);
        let other: IpNet = "198.51.100.2/32".parse().expect("net");
        assert_eq!(auth.locked(other, now), None);
    }

    #[test]
    fn a_huge_lockout_is_clamped_to_a_year_without_overflowing() {
        let auth = state_with(&["k"], Duration::MAX);
        let client = client(1);
        let now = Instant::now();
        for _ in 0..3 {
            auth.record_failure(client, now);
        }
        assert_eq!(auth.locked(client, now), Some(MAX_LOCKOUT));
        assert!(saturating_add(now, Duration::MAX) > now);
    }
}
