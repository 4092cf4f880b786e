//! Who is calling and what they may do: the identities API keys stand for, their scopes on
//! stream/topic patterns, their quotas, and the audit trail of what they did.
//!
//! A key from `API_KEY` is a full-access identity (`api-key`); a key from `API_KEYS_FILE` is a
//! named identity with scopes (`read`, `write`, `admin`) on patterns (`orders/*`, `*/audit`,
//! `*`), optional quotas and an optional expiry ([`keyfile`]). The keys are held by a
//! [`KeyRing`] ([`ring`]), which swaps in a new set atomically on reload. Each call carries an
//! [`Access`]: its identity, the RPC and the scope it needs; the layer stack checks the scope is
//! held at all, the service checks it on the stream and topic the request names.
//!
//! Imports `metrics` only: layers, services and the transcoder all read it.

mod keyfile;
mod quota;
mod ring;

use std::{
    fmt,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

pub use keyfile::{KeyEntry, parse_key_file};
pub use quota::{ByteBucket, Ceiling, Class, Held, QuotaSettings, QuotaState, Throttle};
pub use ring::{Authenticated, KeyRing, KeySet, spawn_reloader};

/// The `tracing` target of audit lines, so they can be routed or filtered on their own
/// (`RUST_LOG=info,audit=info`).
pub const AUDIT: &str = "audit";

/// What a key may do. Scopes are independent: `admin` does not imply `read` or `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// Which quota a call of this scope counts against: sends against produce, reads against
    /// consume; admin calls against neither.
    pub fn class(self) -> Option<Class> {
        match self {
            Scope::Read => Some(Class::Consume),
            Scope::Write => Some(Class::Produce),
            Scope::Admin => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name pattern: `*` matches any run of characters (also none); anything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// `*`, `**`, …: a glob of stars alone matches every name.
    pub fn is_any(&self) -> bool {
        self.0.bytes().all(|b| b == b'*')
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative wildcard matching with one back-tracking point (linear in practice).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// `STREAM[/TOPIC]`: `orders/*`, `*/audit`, `team-a-*/*`, `*`. A pattern without a topic covers
/// every topic of the streams it names (`orders` is `orders/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    stream: Glob,
    topic: Glob,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (stream, topic) = match text.split_once('/') {
            Some((stream, topic)) => (stream, topic),
            None => (text, "*"),
        };
        if stream.is_empty() || topic.is_empty() || topic.contains('/') {
            return Err(format!(
                "pattern '{text}' is not STREAM or STREAM/TOPIC (with * as a wildcard)"
            ));
        }
        Ok(Self {
            stream: Glob(stream.to_owned()),
            topic: Glob(topic.to_owned()),
        })
    }

    fn matches(&self, target: &Target) -> bool {
        match target {
            Target::Any => true,
            Target::All => self.stream.is_any() && self.topic.is_any(),
            Target::Stream(stream) => self.stream.matches(stream) && self.topic.is_any(),
            Target::StreamView(stream) => self.stream.matches(stream),
            Target::Topic(stream, topic) => {
                self.stream.matches(stream) && self.topic.matches(topic)
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream.0, self.topic.0)
    }
}

/// One scope on one pattern: `write:orders/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    pub pattern: Pattern,
}

impl Grant {
    /// `SCOPE:PATTERN`, or a bare scope for every stream (`read` is `read:*`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scope, pattern) = text.split_once(':').unwrap_or((text, "*"));
        let scope = Scope::parse(scope.trim()).ok_or_else(|| {
            format!("scope '{scope}' is not one of read, write, admin (in '{text}')")
        })?;
        Ok(Self {
            scope,
            pattern: Pattern::parse(pattern.trim())?,
        })
    }
}

/// What a call reaches, as its request names it (names, not ids: ids are resolved first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Everything at once (statistics, which count every stream): a pattern covering every
    /// stream and topic.
    All,
    /// Nothing in particular (listing streams, filtered): the scope held on any pattern.
    Any,
    /// A whole stream (create, rename, delete, purge it): a pattern covering all its topics.
    Stream(String),
    /// Looking into a stream (get it, list its topics): a pattern naming the stream.
    StreamView(String),
    /// One topic of one stream.
    Topic(String, String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Any => f.write_str("*"),
            Target::All => f.write_str("*/*"),
            Target::Stream(stream) | Target::StreamView(stream) => f.write_str(stream),
            Target::Topic(stream, topic) => write!(f, "{stream}/{topic}"),
        }
    }
}

/// How an identity came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No authentication (no key is configured, or the path needs none): full access.
    Anonymous,
    /// A key from `API_KEY`: full access, no quota (the per-client rate limit applies).
    Static,
    /// A key from `API_KEYS_FILE`: its scopes, quotas and expiry.
    Named,
}

/// The identity a key stands for.
pub struct Identity {
    name: Arc<str>,
    kind: Kind,
    digest: [u8; 32],
    grants: Vec<Grant>,
    expires_at: Option<SystemTime>,
    /// The consumers it may use (see `keyfile.rs`); `None`: any.
    consumers: Option<Vec<String>>,
    quota: Option<Arc<QuotaState>>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("grants", &self.grants)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The name of callers when no key is needed, and of `API_KEY`'s keys.
pub const ANONYMOUS: &str = "anonymous";
pub const STATIC_KEY: &str = "api-key";

impl Identity {
    pub fn anonymous() -> Arc<Self> {
        Arc::new(Self::full(ANONYMOUS, Kind::Anonymous))
    }

    pub fn static_key() -> Arc<Self> {
        Arc::new(Self::full(STATIC_KEY, Kind::Static))
    }

    fn full(name: &str, kind: Kind) -> Self {
        Self {
            name: Arc::from(name),
            kind,
            digest: [0; 32],
            grants: Vec::new(),
            expires_at: None,
            consumers: None,
            quota: None,
        }
    }

    pub fn named(
        name: &str,
        digest: [u8; 32],
        grants: Vec<Grant>,
        expires_at: Option<SystemTime>,
        consumers: Option<Vec<String>>,
        quota: Option<Arc<QuotaState>>,
    ) -> Self {
        Self {
            name: Arc::from(name),
            kind: Kind::Named,
            digest,
            grants,
            expires_at,
            consumers,
            quota,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared (metric labels keep it without a copy).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// From the keys file: limited by its scopes and quotas, not by the per-client rate limit.
    pub fn is_named(&self) -> bool {
        self.kind == Kind::Named
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn quota(&self) -> Option<&Arc<QuotaState>> {
        self.quota.as_ref()
    }

    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The same key (name and digest) as `other`.
    fn same_key(&self, other: &Identity) -> bool {
        *self.name == *other.name && self.digest == other.digest
    }

    /// Whether it may poll, subscribe and commit as `consumer` (its text: a name, or an id
    /// without leading zeros).
    pub fn may_use_consumer(&self, consumer: &str) -> bool {
        self.consumers
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|name| name == consumer))
    }

    /// Whether `scope` is held on `target`.
    pub fn allows(&self, scope: Scope, target: &Target) -> bool {
        match self.kind {
            Kind::Anonymous | Kind::Static => true,
            Kind::Named => self
                .grants
                .iter()
                .any(|grant| grant.scope == scope && grant.pattern.matches(target)),
        }
    }
}

/// The hex SHA-256 digest of a key, as the keys file holds it (`--hash-key`).
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Why [`Access::check`] refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The scope is not held on this target (audited).
    Scope(Target),
    /// The key may not use this consumer (audited).
    Consumer(String),
    /// The key is over its share of the rate limit, which refusals draw on.
    Held(Held),
}

/// One RPC as the scope check knows it: its path, its short name and the scope it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// `/iggy.gateway.v1.StreamService/DeleteStream`.
    pub path: String,
    /// `StreamService.DeleteStream`, for logs.
    pub name: String,
    pub scope: Scope,
}

/// One call's authorization: who makes it, which RPC, and whether the service has checked
/// its target yet. Set in the request's extensions by the scope layer (gRPC, gRPC-Web) or by
/// the direct call's admission (REST, Connect); the service reads it from there.
pub struct Access {
    identity: Arc<Identity>,
    rpc: Arc<Rpc>,
    request_id: Arc<str>,
    target: OnceLock<Target>,
    checked: AtomicBool,
    refused: AtomicBool,
    /// Its admin audit line is written ([`Access::audit_outcome`]).
    audited: AtomicBool,
    ring: Arc<KeyRing>,
    metrics: Arc<Metrics>,
    /// The identity's quotas as the keys file states them now: an open call (a subscription)
    /// follows a reload that changes them (see [`Access::revoked`]).
    quota: Mutex<Option<Arc<QuotaState>>>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("identity", &self.identity.name())
            .field("rpc", &self.rpc.name)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// Why an open call (a subscription) may no longer go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The key is gone from the keys file (or replaced by another digest).
    KeyRemoved,
    /// The key passed its expiry.
    Expired,
    /// The key is still there, without the scope on the target.
    ScopeLost,
    /// The key is still there, no longer allowed the consumer the call uses.
    ConsumerLost,
}

impl Access {
    pub fn new(
        identity: Arc<Identity>,
        rpc: Arc<Rpc>,
        request_id: Arc<str>,
        ring: Arc<KeyRing>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            quota: Mutex::new(identity.quota().cloned()),
            identity,
            rpc,
            request_id,
            target: OnceLock::new(),
            checked: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            audited: AtomicBool::new(false),
            ring,
            metrics,
        }
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Writes an admin call's audit line with its outcome (`result`, a gRPC code's name), once:
    /// when its answer is settled, or, for a call refused before its method ran (a body that
    /// does not parse), when that refusal is written. A call refused for scope has had its
    /// line.
    pub fn audit_outcome(&self, result: &str) {
        if self.rpc.scope == Scope::Admin
            && !self.was_refused()
            && !self.audited.swap(true, Ordering::AcqRel)
        {
            audit_admin(self, result);
        }
    }

    /// Whether the service checked the call's target (see [`Access::check`]).
    pub fn was_checked(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }

    /// Whether the service refused the call's target (and wrote its audit line).
    pub fn was_refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    /// The target the service checked, for the audit line.
    pub fn target(&self) -> String {
        self.target.get().map(Target::to_string).unwrap_or_default()
    }

    /// The (first) target the service checked.
    pub fn checked_target(&self) -> Option<&Target> {
        self.target.get()
    }

    /// Checks the RPC's scope on every target the request names (a rename names two), and
    /// records the first for the audit. `Err` names the target refused, after an audit line;
    /// or, for a key over its share of the rate limit, says so instead (no audit line).
    pub fn check(&self, targets: &[Target]) -> Result<(), Refusal> {
        let scope = self.rpc.scope;
        if let Some(first) = targets.first() {
            let _ = self.target.set(first.clone());
        }
        for target in targets {
            if !self.identity.allows(scope, target) {
                self.refused.store(true, Ordering::Release);
                self.charge_refusal().map_err(Refusal::Held)?;
                self.metrics
                    .identity_refused(self.identity.name(), "SCOPE_MISSING");
                audit_refused(
                    &self.identity,
                    &self.rpc,
                    &target.to_string(),
                    &self.request_id,
                );
                return Err(Refusal::Scope(target.clone()));
            }
        }
        self.checked.store(true, Ordering::Release);
        Ok(())
    }

    /// Checks the identity may use `consumer` (its `consumers` patterns). `Err` after an
    /// audit line, as a refused target; or, over its share of the rate limit, says so.
    pub fn check_consumer(&self, consumer: &str) -> Result<(), Refusal> {
        if self.identity.may_use_consumer(consumer) {
            return Ok(());
        }
        self.refused.store(true, Ordering::Release);
        self.charge_refusal().map_err(Refusal::Held)?;
        self.metrics
            .identity_refused(self.identity.name(), "CONSUMER_NOT_ALLOWED");
        tracing::warn!(
            target: AUDIT,
            identity = self.identity.name(),
            method = %self.rpc.name,
            target = self.target().as_str(),
            consumer = consumer,
            result = "PERMISSION_DENIED",
            request_id = &*self.request_id,
            "refused: consumer not allowed"
        );
        Err(Refusal::Consumer(consumer.to_owned()))
    }

    /// A refusal takes one call from a keys-file key's share of the rate limit
    /// ([`KeyRing::admit_uncounted`]), unless the call already took one when it was admitted:
    /// an admin call from that share, a produce or consume call from its request quota (a
    /// refusal for what the body names comes after that quota was charged). `Err`: held, to
    /// be answered `RATE_LIMITED`.
    pub fn charge_refusal(&self) -> Result<(), Held> {
        let counted = match (self.rpc.scope.class(), self.quota()) {
            (None, _) => true,
            (Some(class), Some(quota)) => quota.counts_requests(class),
            (Some(_), None) => false,
        };
        if counted {
            return Ok(());
        }
        self.ring.admit_uncounted(&self.identity).inspect_err(|_| {
            self.metrics
                .identity_refused(self.identity.name(), "RATE_LIMITED");
        })
    }

    /// Whether the RPC's scope is held on `target` (to filter a listing).
    pub fn allows(&self, target: &Target) -> bool {
        self.identity.allows(self.rpc.scope, target)
    }

    fn quota(&self) -> Option<Arc<QuotaState>> {
        self.quota.lock().ok().and_then(|quota| quota.clone())
    }

    /// Whether the identity may see everything without a lookup (ids need no resolving).
    pub fn is_unrestricted(&self) -> bool {
        !self.identity.is_named()
    }

    /// Counts a refusal a service made for the identity (`identity_refusals_total`).
    pub fn count_refusal(&self, reason: &str) {
        self.metrics.identity_refused(self.identity.name(), reason);
    }

    /// Bytes the call moved, charged to the identity's byte quota (produce or consume).
    pub fn charge(&self, class: Class, bytes: u64) {
        self.metrics
            .identity_bytes(self.identity.shared_name(), class.as_str(), bytes);
        if let Some(quota) = self.quota() {
            quota.charge(class, bytes);
        }
    }

    /// Bytes the call is about to move (a send's before it is stored, a poll's before it is
    /// answered), charged unless the identity's byte quota for `class` is overdrawn already:
    /// then the call is refused, so calls admitted together cannot each overdraw it. What is
    /// taken counts in `/metrics` once the call keeps it, unless [`Taken::refund`] gives it back.
    pub fn take(&self, class: Class, bytes: u64) -> Result<Taken<'_>, Throttle> {
        if let Some(quota) = self.quota() {
            quota.take(class, bytes).inspect_err(|_| {
                self.metrics
                    .identity_refused(self.identity.name(), "QUOTA_EXCEEDED");
            })?;
        }
        Ok(Taken {
            access: self,
            class,
            bytes,
        })
    }

    /// How long to hold back before the next delivery, while the identity's byte quota for
    /// `class` is overdrawn.
    pub fn pause(&self, class: Class) -> Option<Duration> {
        self.quota().and_then(|quota| quota.overdrawn(class))
    }

    /// Completes when the call may no longer go on: the key is removed or replaced by a reload,
    /// expires, loses `scope` on `target` or the use of `consumer`. Never completes for
    /// `API_KEY` and anonymous calls.
    pub async fn revoked(&self, target: Target, consumer: Option<String>) -> Revoked {
        if !self.identity.is_named() {
            return std::future::pending().await;
        }
        let scope = self.rpc.scope;
        let mut changes = self.ring.changes();
        let mut current = Arc::clone(&self.identity);
        loop {
            let expiry = current.expires_at().map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
            let expired = async {
                match expiry {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = expired => return Revoked::Expired,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let set = Arc::clone(&changes.borrow_and_update());
                    match set.find_same(&current) {
                        None => return Revoked::KeyRemoved,
                        Some(now) if !now.allows(scope, &target) => return Revoked::ScopeLost,
                        Some(now)
                            if consumer
                                .as_deref()
                                .is_some_and(|consumer| !now.may_use_consumer(consumer)) =>
                        {
                            return Revoked::ConsumerLost;
                        }
                        Some(now) if now.is_expired(SystemTime::now()) => return Revoked::Expired,
                        Some(now) => {
                            if let Ok(mut quota) = self.quota.lock() {
                                *quota = now.quota().cloned();
                            }
                            current = now;
                        }
                    }
                }
            }
        }
    }
}

/// One audit line: a call refused by scope.
pub fn audit_refused(identity: &Identity, rpc: &Rpc, target: &str, request_id: &str) {
    tracing::warn!(
        target: AUDIT,
        identity = identity.name(),
        method = %rpc.name,
        target = target,
        scope = rpc.scope.as_str(),
        result = "PERMISSION_DENIED",
        request_id = request_id,
        "refused: scope missing"
    );
}

/// One audit line: an admin call and how it ended (a gRPC code name).
pub fn audit_admin(access: &Access, result: &str) {
    tracing::info!(
        target: AUDIT,
        identity = access.identity.name(),
        method = %access.rpc.name,
        // As text, so the text log quotes it: a stream may be named `x result=OK`.
        target = access.target().as_str(),
        scope = access.rpc.scope.as_str(),
        result = result,
        request_id = access.request_id(),
        "admin call"
    );
}

/// Bytes one call took from its identity's byte quota ([`Access::take`]). Dropped, they are
/// kept and counted (`identity_bytes_total`): the call moved them, or may have (a send the
/// backend did not answer in time, a call its client gave up on). [`refund`](Self::refund)
/// gives them back uncounted, for a call that moved nothing.
#[must_use = "dropped at once, the bytes count as moved"]
pub struct Taken<'a> {
    access: &'a Access,
    class: Class,
    bytes: u64,
}

impl Taken<'_> {
    /// Gives the bytes back: the call stored nothing (refused by the backend, or an
    /// idempotent send answered again).
    pub fn refund(mut self) {
        if let Some(quota) = self.access.quota() {
            quota.refund(self.class, self.bytes);
        }
        self.bytes = 0;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.access.metrics.identity_bytes(
                self.access.identity.shared_name(),
                self.class.as_str(),
                self.bytes,
            );
        }
    }
}

#[cfg(test)]
mod tests;
