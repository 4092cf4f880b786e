//! Quotas per identity: requests per second with governor (GCRA; one limiter per identity and
//! class, so the budget is keyed by identity), and bytes per second with a byte budget that may
//! be overdrawn: a call is admitted while its identity's budget is not overdrawn and its bytes
//! are charged once known (a send's before it is stored, a poll's after it is read), because a
//! poll's size is not known in advance and governor cannot charge after the fact. A charge is
//! taken only while the budget is not overdrawn (else the call is refused, before a send is
//! stored or a poll's answer is given), so calls admitted together cannot each overdraw it: over
//! time an identity moves at most its rate; at once, at most one second's worth plus one call.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock,
};

/// Produce (sends, event publishing) or consume (polls, subscriptions, reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Produce,
    Consume,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Produce => "produce",
            Class::Consume => "consume",
        }
    }
}

/// The limits of one identity, as the keys file states them; each one optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaSettings {
    pub produce_requests_per_second: Option<NonZeroU32>,
    pub produce_bytes_per_second: Option<u64>,
    pub consume_requests_per_second: Option<NonZeroU32>,
    pub consume_bytes_per_second: Option<u64>,
    /// Most live subscriptions at once, over every protocol and client.
    pub subscriptions: Option<NonZeroU32>,
}

/// Why a call was held back, for `Retry-After`, `RateLimit-*` and `RetryInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub class: Class,
    /// `"requests"` or `"bytes"`.
    pub unit: &'static str,
    /// The limit per second (and the burst: one second's worth).
    pub limit: u64,
    pub wait: Duration,
}

/// A byte budget refilled at `rate` per second up to one second's worth, which a charge may
/// overdraw.
#[derive(Debug)]
pub struct ByteBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl ByteBucket {
    pub fn new(rate: u64) -> Self {
        let rate = rate as f64;
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    fn refilled(&self, now: Instant) -> Option<std::sync::MutexGuard<'_, (f64, Instant)>> {
        let mut state = self.state.lock().ok()?;
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.rate).min(self.rate);
        state.1 = now;
        Some(state)
    }

    /// How long until the budget is no longer overdrawn; `None` when it is not.
    pub fn overdrawn(&self, now: Instant) -> Option<Duration> {
        let state = self.refilled(now)?;
        (state.0 < 0.0).then(|| Duration::from_secs_f64(-state.0 / self.rate))
    }

    pub fn charge(&self, bytes: u64, now: Instant) {
        if let Some(mut state) = self.refilled(now) {
            Self::debit(&mut state, bytes, self.rate);
        }
    }

    fn debit(state: &mut (f64, Instant), bytes: u64, rate: f64) {
        // At most a day's worth of debt, so one huge answer cannot lock an identity out for
        // longer than that.
        state.0 = (state.0 - bytes as f64).max(-rate * 86_400.0);
    }

    /// Charges `bytes` unless the budget is overdrawn already; then how long until it is not.
    /// Checked and charged under one lock, so of calls charged at once only one overdraws.
    pub fn take(&self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let Some(mut state) = self.refilled(now) else {
            return Ok(());
        };
        if state.0 < 0.0 {
            return Err(Duration::from_secs_f64(-state.0 / self.rate));
        }
        Self::debit(&mut state, bytes, self.rate);
        Ok(())
    }

    /// Gives back what [`take`](Self::take) charged for a call that moved nothing.
    pub fn refund(&self, bytes: u64, now: Instant) {
        if let Some(mut state) = self.refilled(now) {
            state.0 = (state.0 + bytes as f64).min(self.rate);
        }
    }
}

/// The live state of one identity's quotas; kept across reloads while its limits are unchanged.
#[derive(Debug)]
pub struct QuotaState {
    settings: QuotaSettings,
    produce_requests: Option<DefaultDirectRateLimiter>,
    consume_requests: Option<DefaultDirectRateLimiter>,
    produce_bytes: Option<ByteBucket>,
    consume_bytes: Option<ByteBucket>,
}

fn limiter(per_second: Option<NonZeroU32>) -> Option<DefaultDirectRateLimiter> {
    per_second.map(|rate| RateLimiter::direct(Quota::per_second(rate).allow_burst(rate)))
}

impl QuotaState {
    pub fn new(settings: QuotaSettings) -> Self {
        Self {
            settings,
            produce_requests: limiter(settings.produce_requests_per_second),
            consume_requests: limiter(settings.consume_requests_per_second),
            produce_bytes: settings.produce_bytes_per_second.map(ByteBucket::new),
            consume_bytes: settings.consume_bytes_per_second.map(ByteBucket::new),
        }
    }

    pub fn settings(&self) -> &QuotaSettings {
        &self.settings
    }

    fn requests(&self, class: Class) -> (Option<&DefaultDirectRateLimiter>, Option<NonZeroU32>) {
        match class {
            Class::Produce => (
                self.produce_requests.as_ref(),
                self.settings.produce_requests_per_second,
            ),
            Class::Consume => (
                self.consume_requests.as_ref(),
                self.settings.consume_requests_per_second,
            ),
        }
    }

    fn bytes(&self, class: Class) -> (Option<&ByteBucket>, Option<u64>) {
        match class {
            Class::Produce => (
                self.produce_bytes.as_ref(),
                self.settings.produce_bytes_per_second,
            ),
            Class::Consume => (
                self.consume_bytes.as_ref(),
                self.settings.consume_bytes_per_second,
            ),
        }
    }

    /// Admits one call of `class`: its byte budget must not be overdrawn, and it takes one
    /// request from the request budget.
    pub fn admit(&self, class: Class) -> Result<(), Throttle> {
        if let (Some(bucket), Some(limit)) = self.bytes(class)
            && let Some(wait) = bucket.overdrawn(Instant::now())
        {
            return Err(Throttle {
                class,
                unit: "bytes",
                limit,
                wait,
            });
        }
        if let (Some(limiter), Some(limit)) = self.requests(class)
            && let Err(not_until) = limiter.check()
        {
            return Err(Throttle {
                class,
                unit: "requests",
                limit: u64::from(limit.get()),
                wait: not_until.wait_time_from(limiter.clock().now()),
            });
        }
        Ok(())
    }

    pub fn charge(&self, class: Class, bytes: u64) {
        if let (Some(bucket), _) = self.bytes(class) {
            bucket.charge(bytes, Instant::now());
        }
    }

    /// Whether calls of `class` take from a request budget when admitted.
    pub fn counts_requests(&self, class: Class) -> bool {
        self.requests(class).0.is_some()
    }

    /// Charges `bytes` to `class`'s byte budget unless it is overdrawn already.
    pub fn take(&self, class: Class, bytes: u64) -> Result<(), Throttle> {
        match self.bytes(class) {
            (Some(bucket), Some(limit)) => {
                bucket.take(bytes, Instant::now()).map_err(|wait| Throttle {
                    class,
                    unit: "bytes",
                    limit,
                    wait,
                })
            }
            _ => Ok(()),
        }
    }

    pub fn refund(&self, class: Class, bytes: u64) {
        if let (Some(bucket), _) = self.bytes(class) {
            bucket.refund(bytes, Instant::now());
        }
    }

    pub fn overdrawn(&self, class: Class) -> Option<Duration> {
        self.bytes(class)
            .0
            .and_then(|bucket| bucket.overdrawn(Instant::now()))
    }
}

/// The rate a keys-file identity's calls that its quotas do not count are held to: admin
/// calls, calls refused for scope, statistics and metrics, and anything off the API. It is
/// the per-client `RATE_LIMIT_RPS` and `RATE_LIMIT_BURST`, kept per identity rather than per
/// address (such keys skip the per-client limit). Keyed by name, so a reload keeps each
/// budget; the names are the keys file's, so the map stays as small as the file.
#[derive(Debug)]
pub struct Ceiling {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

/// A call held back by the [`Ceiling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub per_second: u32,
    pub burst: u32,
    pub wait: Duration,
}

impl Ceiling {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            per_second,
            burst,
        }
    }

    /// Takes one call from `name`'s budget.
    pub fn admit(&self, name: &Arc<str>) -> Result<(), Held> {
        self.limiter.check_key(name).map_err(|not_until| Held {
            per_second: self.per_second.get(),
            burst: self.burst.get(),
            wait: not_until.wait_time_from(self.limiter.clock().now()),
        })
    }
}
