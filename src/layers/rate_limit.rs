//! Per-client rate limiting with governor's keyed GCRA limiter: `RATE_LIMIT_RPS` sustained,
//! `RATE_LIMIT_BURST` at once, per [`ClientIp::key`] (an IPv6 client's whole prefix, /64 by
//! default, shares one budget). Over the limit, REST gets 429 with `Retry-After` and
//! `RateLimit-*` headers; gRPC gets RESOURCE_EXHAUSTED with `RetryInfo`. Health checks are never
//! limited. A call with a key from the keys file is held per identity instead, wherever it comes
//! from: a call of the API by the scope policy (`layers/scope.rs`: the key's quotas, or the same
//! rate per identity for what they do not count), anything else here, at that same rate per
//! identity. Memory stays bounded: idle clients are swept out. Hand-written rather than
//! tower_governor's layer, whose error handler cannot see the request (ARCHITECTURE.md).

use std::{
    net::{IpAddr, Ipv4Addr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{body::Body, http::Request};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use ipnet::IpNet;

use super::guard::{Exempt, Policy};
use crate::{
    answer::{RATE_LIMITED, Rejection},
    extensions::ClientIp,
    identity::{Identity, KeyRing},
    metrics::Metrics,
};

/// Whether a request is a call of the API, which the scope policy holds to a keys-file key's
/// quotas: an RPC's gRPC path, or a REST route called as REST (not in a gRPC content type,
/// which REST refuses unread). Given by start-up, which holds both tables.
pub type ApiCalls = Arc<dyn Fn(&Request<Body>) -> bool + Send + Sync>;

/// Above this many tracked clients, idle ones are swept at once rather than on the timer.
const MAX_TRACKED_CLIENTS: usize = 100_000;

#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpNet>>,
    burst: u32,
    /// Unix seconds of the last forced sweep, so a flood of new clients
    /// sweeps at most once a second.
    last_sweep: Arc<AtomicU64>,
    /// Holds keys-file keys per identity ([`KeyRing::admit_uncounted`]).
    keys: Arc<KeyRing>,
    metrics: Arc<Metrics>,
    api_calls: ApiCalls,
}

impl RateLimit {
    pub fn new(
        per_second: NonZeroU32,
        burst: NonZeroU32,
        keys: Arc<KeyRing>,
        metrics: Arc<Metrics>,
        api_calls: ApiCalls,
    ) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
            burst: burst.get(),
            last_sweep: Arc::new(AtomicU64::new(0)),
            keys,
            metrics,
            api_calls,
        }
    }

    /// Forgets clients whose state is back to "fresh"; run periodically.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }
}

impl Policy for RateLimit {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::HealthChecks;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        // A keys-file identity is held to its own quotas (the scope layer), wherever it calls
        // from: many teams behind one proxy must not share one address's budget. What the
        // scope layer never sees (statistics, metrics, reflection, paths of no route) is held
        // here to the same rate per identity.
        if let Some(identity) = request
            .extensions()
            .get::<Arc<Identity>>()
            .filter(|identity| identity.is_named())
        {
            if (self.api_calls)(request) {
                return Ok(());
            }
            return self.keys.admit_uncounted(identity).map_err(|held| {
                self.metrics.identity_refused(identity.name(), RATE_LIMITED);
                Rejection::identity_rate_limited(
                    identity.name(),
                    held.per_second,
                    held.burst,
                    held.wait,
                )
            });
        }
        let client = request.extensions().get::<ClientIp>().map_or(
            IpNet::from(IpAddr::from(Ipv4Addr::UNSPECIFIED)),
            ClientIp::key,
        );
        let limiter = &self.limiter;
        if limiter.len() > MAX_TRACKED_CLIENTS {
            let now = crate::broker::now_micros() / 1_000_000;
            if self.last_sweep.swap(now, Ordering::Relaxed) != now {
                self.sweep();
            }
        }
        match limiter.check_key(&client) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Err(Rejection::throttled(
                    RATE_LIMITED,
                    format!(
                        "rate limit exceeded for {client}; retry in {} ms",
                        wait.as_millis().max(1)
                    ),
                    u64::from(self.burst),
                    wait,
                ))
            }
        }
    }
}

/// Keeps the limiter's memory bounded: sweeps idle clients every `every` until the process ends.
pub fn spawn_sweeper(layer: RateLimit, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            layer.sweep();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_clients_are_swept_so_memory_stays_bounded() {
        let layer = RateLimit::new(
            NonZeroU32::new(1000).expect("non-zero"),
            NonZeroU32::new(1).expect("non-zero"),
            Arc::new(KeyRing::from_static(&[])),
            Arc::new(Metrics::new()),
            Arc::new(|_: &Request<Body>| true),
        );
        for i in 0..5000u32 {
            let ip = IpNet::from(IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i)));
            assert!(layer.limiter.check_key(&ip).is_ok());
        }
        assert_eq!(layer.tracked_clients(), 5000);
        // At 1000/s a burst of one is replenished within a few milliseconds.
        std::thread::sleep(Duration::from_millis(20));
        layer.sweep();
        assert_eq!(layer.tracked_clients(), 0);
    }
}
