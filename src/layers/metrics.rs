//! Counts every call at the edge of the stack (inside tracing, outside the refusing layers):
//! by protocol, route and status, its latency, the calls in flight, and refusals by reason.
//! Route labels are only names the gateway defines, so clients cannot grow the series.

use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    extract::MatchedPath,
    http::{Request, Response},
};
use tower::{Layer, Service};

use super::after::{AfterAnswer, Answering};

use crate::{
    extensions::{MatchedRoute, Protocol, RejectedFor, names},
    metrics::{GaugeGuard, Metrics, StatusLabel},
};

/// Counts every call at the edge of the stack (inside tracing, outside the refusing layers).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
    known: Arc<KnownRoutes>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            known: KnownRoutes::shared(),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
            known: Arc::clone(&self.known),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    known: Arc<KnownRoutes>,
}

/// The gRPC methods this gateway serves (`/package.Service/Method`), read from the descriptor
/// sets of its services, health and reflection. Fixed at start-up and only looked up in, so a
/// fast hash.
struct KnownRoutes {
    grpc_methods: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl KnownRoutes {
    /// Decoded once per process: the sets are compiled in, and decoding them took most of the
    /// time of building the layer stack (tests and the fuzzer build one per gateway).
    fn shared() -> Arc<Self> {
        static KNOWN: LazyLock<Arc<KnownRoutes>> =
            LazyLock::new(|| Arc::new(KnownRoutes::from_descriptors()));
        Arc::clone(&KNOWN)
    }

    fn from_descriptors() -> Self {
        let others = [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .filter_map(|set| prost_reflect::DescriptorPool::decode(set).ok());
        let grpc_methods = crate::descriptors::pool()
            .into_iter()
            .chain(others)
            .flat_map(|pool| {
                pool.services()
                    .flat_map(|service| {
                        service
                            .methods()
                            .map(|method| {
                                Arc::from(format!("/{}/{}", service.full_name(), method.name()))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Self { grpc_methods }
    }
}

impl<S> Service<Request<Body>> for MetricsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answering<S::Future, Call>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let protocol = Protocol::of(&request);
        // Labels are shared strings the gateway wrote once (a method's path, a route's
        // template), so counting a call allocates none.
        let method = self.known.grpc_methods.get(request.uri().path()).cloned();
        // A gRPC service's matched path is its `/{*rest}` pattern: only plain routes count.
        let matched_path = request
            .extensions()
            .get::<MatchedPath>()
            .filter(|matched| !matched.as_str().contains('*'))
            .cloned();
        // A guard, not a decrement after the await: a cancelled call must not stay counted.
        let in_flight = self.metrics.call_started();
        let call = Call {
            metrics: Arc::clone(&self.metrics),
            in_flight,
            protocol,
            method,
            matched_path,
            started: Instant::now(),
        };
        Answering::new(self.inner.call(request), call)
    }
}

/// What counting a call needs once it is answered. Dropped unanswered (the caller went
/// away), it leaves the calls in flight and is not counted as answered.
pub struct Call {
    metrics: Arc<Metrics>,
    in_flight: GaugeGuard,
    protocol: Protocol,
    method: Option<Arc<str>>,
    matched_path: Option<MatchedPath>,
    started: Instant,
}

impl AfterAnswer<Body> for Call {
    fn answered(self, response: Response<Body>) -> Response<Body> {
        let Call {
            metrics,
            in_flight,
            protocol,
            method,
            matched_path,
            started,
        } = self;
        drop(in_flight);
        let status = match protocol {
            Protocol::Grpc | Protocol::GrpcWeb => StatusLabel::grpc(
                response
                    .headers()
                    .get(&names::GRPC_STATUS)
                    .and_then(|v| v.to_str().ok()),
            ),
            // A Connect stream's outcome is in its last message, which layers never read:
            // its status is the HTTP one, like a unary Connect call's.
            Protocol::Connect | Protocol::ConnectStream { .. } | Protocol::Rest => {
                StatusLabel::http(response.status())
            }
        };
        // Only names the gateway defines become labels, so clients cannot grow the series.
        let route = match (response.extensions().get::<MatchedRoute>(), method) {
            (Some(route), _) => Arc::clone(&route.0),
            (None, Some(method)) => method,
            (None, None) => matched_path.map_or_else(
                || Arc::from("unmatched"),
                |matched| Arc::from(matched.as_str()),
            ),
        };
        let rejected = response.extensions().get::<RejectedFor>().copied();
        metrics.call_answered(protocol, route, status, started.elapsed(), rejected);
        response
    }
}
