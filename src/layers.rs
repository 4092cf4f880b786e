//! The one middleware stack every call passes through, whatever its protocol (gRPC, gRPC-Web,
//! Connect, REST). Order, outermost first, and why each layer sits where it does:
//!
//! 1. request id — first, so every log line and every answer below carries it (with
//!    `Cache-Control: private` unless the answer set its own: answers depend on the key);
//! 2. client IP — decided once (trusted proxies only) for logs, rate limits and lockouts, which
//!    count an IPv6 client by its /64;
//! 3. trace — one span per call, so rejections by the layers below are logged too;
//! 4. metrics — every call counted by protocol, route and status, refusals by reason;
//! 5. compression — HTTP answers (REST JSON, problems) of `COMPRESSION_MIN_BYTES` or more, in
//!    gzip, br or zstd as `Accept-Encoding` asks; never gRPC (which compresses per message,
//!    negotiated by the services), SSE or NDJSON (a live stream must not sit in an encoder);
//!    at most `MAX_ENCODERS` (32) at once, the rest sent uncompressed, as an encoder holds up
//!    to 2 MiB while its answer is sent (`encoders.rs`: a slot given to each answer just
//!    inside, which the predicate fills with a permit its body keeps); an `Accept-Encoding`
//!    that accepts none of the three is taken off just outside, so such a request is answered
//!    plainly, never with tower-http's 406 after its call has run;
//! 6. allowed hosts — with `ALLOWED_HOSTS` set, a request naming another host (DNS rebinding)
//!    is refused before CORS or anything else answers it; absent when unset;
//! 7. CORS — browsers' preflights are answered before limits and auth see them (a plain
//!    `OPTIONS` goes on to the routes, which know the path's methods); absent when no origin
//!    is allowed (the default), so nothing is ever allowed cross-origin;
//! 8. header list — an HTTP/2 request's headers over 16 KiB are refused in the caller's
//!    protocol, inside CORS so a browser reads the refusal (gRPC clients read hyper's own 431
//!    as UNKNOWN; hyper itself refuses past 20 KiB, while it decodes);
//! 9. cross site — a request a browser sends without a preflight that could change something
//!    (a form's `POST`, a committing `GET`) from an origin CORS does not list is refused
//!    before anything runs (CSRF);
//! 10. codecs — gRPC(-Web) bodies other than protobuf are refused in gRPC's terms
//!     (UNIMPLEMENTED), not with tonic-web's empty 400;
//! 11. API key — authenticate before any work is done for the caller, and give the call its
//!     identity (anonymous when no key is needed); wrong keys are throttled by the lockout;
//! 12. rate limit — per client, for calls without a keys-file identity (those are held to their
//!     own quotas instead, so teams behind one proxy do not share one budget, and what the
//!     quotas do not count to the same rate per identity: here, what is no call of the API);
//! 13. concurrency — shed new calls at once when the gateway is full, and a client's past its
//!     share (`MAX_CONCURRENT_REQUESTS_PER_CLIENT`);
//! 14. timeout — bound each call (a shorter `grpc-timeout` or `Connect-Timeout-Ms` wins);
//! 15. body limit — refuse oversized bodies before reading them, and bodies beyond what all
//!     calls together may hold (`MAX_INFLIGHT_BYTES`); a compressed HTTP body
//!     (`Content-Encoding`) is inflated here, so both limits count what it inflates to.
//!
//! Below the router, each of the API's gRPC services is guarded by [`Scopes`] (`scope.rs`):
//! the scope each RPC needs, and the identity's quotas, checked on the gRPC path of the call
//! (REST and Connect, which call the methods directly, are admitted by the same policy).
//!
//! Every rejection answers in the caller's protocol (see [`protocol`]). Layers never look
//! inside message bodies. REST and Connect calls reach their service's method below this
//! stack, so each call passes each layer exactly once.

pub mod after;
pub mod allowed_hosts;
pub mod auth;
pub mod client_ip;
pub mod codecs;
pub mod cross_site;
pub mod encoders;
pub mod guard;
pub mod heads;
pub mod inflate;
pub mod limits;
pub mod metrics;
pub mod preflight;
pub mod rate_limit;
pub mod request_id;
pub mod scope;

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response},
};
use ipnet::IpNet;
use tower::ServiceBuilder;
use tower_http::{
    CompressionLevel,
    compression::{
        CompressionLayer,
        predicate::{NotForContentType, Predicate, SizeAbove},
    },
    cors::{AllowHeaders, AllowOrigin, CorsLayer},
    map_response_body::MapResponseBodyLayer,
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};
use tracing::Span;

use crate::{
    budget::InflightBytes,
    extensions::{ClientIp, Protocol, RequestId, names},
    identity::KeyRing,
    metrics::Metrics,
};

pub use allowed_hosts::{AllowedHost, AllowedHosts};
pub use auth::{ApiKey, AuthSettings};
pub use client_ip::ClientIpLayer;
pub use cross_site::CrossSite;
pub use encoders::{
    EncoderSlotLayer, HasEncoder, MAX_ENCODERS, MAX_ENCODERS_PER_CLIENT, without_unaccepted_codings,
};
pub use guard::{Exempt, GuardLayer, Policy};
pub use heads::{HEADER_LIST_CEILING, HeaderList, MAX_HEADER_LIST_BYTES};
pub use limits::{BodyLimitLayer, GuardedBody, Shedding, TimeoutLayer};
pub use metrics::MetricsLayer;
pub use preflight::PreflightOnlyLayer;
pub use rate_limit::{ApiCalls, RateLimit};
pub use request_id::RequestIdLayer;
pub use scope::{RpcTable, Scoped, Scopes};

/// Everything the stack is configured with.
#[derive(Debug, Clone)]
pub struct LayerSettings {
    pub trusted_proxies: Vec<IpNet>,
    /// Leading bits of an IPv6 address that name one client (see [`ClientIp::key`]).
    pub ipv6_client_prefix: u8,
    /// Requests per second and burst per client; `None` disables rate limiting.
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
    pub auth: AuthSettings,
    /// `*` for any origin, or the allowed origins; empty: no cross-origin access at all.
    pub cors_origins: Vec<String>,
    /// Headers a preflight allows; empty: what the browser asks for.
    pub cors_headers: Vec<String>,
    /// Hosts requests may name; empty: no check.
    pub allowed_hosts: Vec<AllowedHost>,
    pub max_body_bytes: usize,
    /// Request body bytes all calls together may hold (`MAX_INFLIGHT_BYTES`).
    pub max_inflight_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrent: usize,
    /// Calls in flight from one client (`MAX_CONCURRENT_REQUESTS_PER_CLIENT`).
    pub max_concurrent_per_client: usize,
    /// Answers smaller than this are sent uncompressed.
    pub compression_min_bytes: u16,
}

/// Wraps the router in the stack; returns the rate limiter too, so start-up can sweep it.
/// `keys` are the keys in force (`API_KEY`'s and the keys file's); `api_calls` tells which
/// requests the scope policy holds a keys-file key to account for (the rate limit the rest).
pub fn apply(
    router: Router,
    settings: &LayerSettings,
    metrics: Arc<Metrics>,
    keys: Arc<KeyRing>,
    api_calls: ApiCalls,
) -> (Router, Option<RateLimit>) {
    let rate_limit = settings.rate_limit.map(|(per_second, burst)| {
        RateLimit::new(
            per_second,
            burst,
            Arc::clone(&keys),
            Arc::clone(&metrics),
            api_calls,
        )
    });
    let stack = ServiceBuilder::new()
        .layer(RequestIdLayer)
        // Answers depend on who asks (a key's scopes filter a listing; polls move a
        // consumer): no shared cache may keep one for the next caller. A browser's own cache
        // still may, and revalidates with the ETags.
        .layer(SetResponseHeaderLayer::if_not_present(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("private"),
        ))
        .layer(ClientIpLayer::new(
            settings.trusted_proxies.clone(),
            settings.ipv6_client_prefix,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_request(())
                .on_response(on_response)
                .on_eos(on_eos)
                .on_failure(()),
        )
        .layer(MetricsLayer::new(metrics))
        .layer(MapResponseBodyLayer::new(Body::new))
        .map_request(without_unaccepted_codings::<Body>)
        .layer(compression(settings.compression_min_bytes))
        .layer(EncoderSlotLayer)
        .option_layer(AllowedHosts::new(&settings.allowed_hosts).map(GuardLayer::new))
        .option_layer(
            cors(&settings.cors_origins, &settings.cors_headers).map(PreflightOnlyLayer::new),
        )
        .layer(GuardLayer::new(HeaderList))
        .layer(GuardLayer::new(CrossSite::new(&settings.cors_origins)))
        .layer(GuardLayer::new(codecs::ProtobufOnly))
        .layer(GuardLayer::new(ApiKey::with_keys(
            settings.auth.clone(),
            keys,
        )))
        .option_layer(rate_limit.clone().map(GuardLayer::new))
        .layer(GuardLayer::new(Shedding::new(
            settings.max_concurrent,
            settings.max_concurrent_per_client,
        )))
        .layer(TimeoutLayer::new(settings.request_timeout))
        .layer(BodyLimitLayer::new(
            settings.max_body_bytes,
            Arc::new(InflightBytes::new(settings.max_inflight_bytes)),
        ));
    (router.layer(stack), rate_limit)
}

/// Compresses answers a client accepts compressed, when they are large enough to gain from it
/// and are not streams that must reach the client as they are written.
fn compression(min_bytes: u16) -> CompressionLayer<impl Predicate> {
    let predicate = SizeAbove::new(u64::from(min_bytes))
        // gRPC and gRPC-Web both: tower-http's own `GRPC` predicate lets gRPC-Web through,
        // and a gRPC-Web subscription would then sit in the encoder like SSE.
        .and(NotForContentType::const_new("application/grpc"))
        .and(NotForContentType::SSE)
        .and(NotForContentType::const_new("application/x-ndjson"))
        // Connect's streams compress each message themselves (`Connect-Content-Encoding`).
        .and(NotForContentType::const_new("application/connect+"))
        .and(NotForContentType::IMAGES)
        // Last: it takes one of the encoders for the answer's life.
        .and(HasEncoder::new(MAX_ENCODERS, MAX_ENCODERS_PER_CLIENT));
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .zstd(true)
        // Brotli's default level (11) costs many times gzip's CPU for a few percent more.
        .quality(CompressionLevel::Precise(4))
        .compress_when(predicate)
}

fn make_span(request: &Request<Body>) -> Span {
    let protocol = Protocol::of(request).name();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or("", RequestId::as_str);
    // Written only if the span is recorded: at the usual `warn` a call formats nothing here.
    let client = request
        .extensions()
        .get::<ClientIp>()
        .map(|ip| tracing::field::display(ip.addr()));
    let traceparent = request
        .headers()
        .get(&names::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The path is the gRPC method for gRPC calls and the route for REST; never the query,
    // which may hold an API key.
    let span = tracing::info_span!(
        "call",
        protocol,
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        client,
        traceparent,
        status = tracing::field::Empty,
        grpc_status = tracing::field::Empty,
    );
    // A caller's W3C traceparent makes this call a child of its trace in exported spans.
    if !traceparent.is_empty() {
        use opentelemetry::propagation::TextMapPropagator;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
    }
    span
}

/// One line per call, when its answer starts: status, gRPC status when it is already known
/// (every rejection and unary error is trailers-only), and latency.
fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    if let Some(status) = response
        .headers()
        .get(&names::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
    {
        span.record("grpc_status", status);
    }
    tracing::info!(parent: span, latency_ms = latency.as_secs_f64() * 1000.0, "call answered");
}

/// The final gRPC status of a call whose answer streamed (it arrives in trailers).
fn on_eos(trailers: Option<&HeaderMap>, duration: Duration, span: &Span) {
    if let Some(status) = trailers
        .and_then(|t| t.get(&names::GRPC_STATUS))
        .and_then(|v| v.to_str().ok())
    {
        span.record("grpc_status", status);
        tracing::debug!(parent: span, stream_ms = duration.as_secs_f64() * 1000.0, "call finished");
    }
}

/// `None` without origins: then no answer carries CORS headers, not even a preflight's, and
/// browsers keep other sites' pages away from the gateway.
fn cors(origins: &[String], allowed_headers: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    // gRPC metadata travels as HTTP headers, so a browser client may send any header its
    // application adds (and Connect's, idempotency keys…): by default the preflight allows
    // what the browser asks for, for allowed origins only.
    let allow_headers = if allowed_headers.is_empty() {
        AllowHeaders::mirror_request()
    } else {
        AllowHeaders::list(
            allowed_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        )
    };
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let names = |list: &[&'static str]| -> Vec<HeaderName> {
        list.iter()
            .map(|name| HeaderName::from_static(name))
            .collect()
    };
    let layer = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(allow_headers)
        // A browser client reads only the response headers exposed to it: gRPC-Web's status,
        // Connect's stream codings, the request id, rate-limit advice, and the REST headers clients act on.
        .expose_headers(names(&[
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
            "grpc-encoding",
            "grpc-accept-encoding",
            "connect-content-encoding",
            "connect-accept-encoding",
            "x-request-id",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "www-authenticate",
            "etag",
            "location",
            "idempotent-replayed",
        ]))
        .max_age(Duration::from_secs(600));
    Some(layer)
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};

    use crate::{extensions::ClientIp, testing::text_log};

    /// A call's span names its client, method and path when it is recorded (its fields are
    /// written out only then).
    #[test]
    fn the_call_span_names_the_client_when_it_is_recorded() {
        let text = text_log(|| {
            let mut request = Request::post("/v1/streams")
                .body(Body::empty())
                .expect("request");
            request
                .extensions_mut()
                .insert(ClientIp::new([203, 0, 113, 7].into(), 64));
            super::make_span(&request).in_scope(|| tracing::info!("inside"));
            let mut anonymous = Request::get("/health")
                .body(Body::empty())
                .expect("request");
            anonymous.extensions_mut().clear();
            super::make_span(&anonymous).in_scope(|| tracing::info!("inside"));
        });
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        assert!(first.contains("client=203.0.113.7"), "{first}");
        assert!(
            first.contains("method=POST") && first.contains("path=/v1/streams"),
            "{first}"
        );
        let second = lines.next().unwrap_or_default();
        assert!(!second.contains("client="), "{second}");
        assert!(second.contains("path=/health"), "{second}");
    }
}
