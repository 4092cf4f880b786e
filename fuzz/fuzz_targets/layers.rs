//! The middleware stack every call passes (`layers::apply`): request ids, client IP from
//! `x-forwarded-for`/`forwarded` behind trusted proxies, CORS, rate limit, API keys (header,
//! bearer token, `?api_key=`), concurrency, `grpc-timeout`, body limit — over the gateway's
//! REST and gRPC routes and an in-memory broker.
//!
//! Input: as `rest_transcode` (requests separated by `\n====\n`); the peer is 10.0.0.7, a
//! trusted proxy. Keys: `fuzz-key-1`, `fuzz-key-2`; `?api_key=` allowed;
//! allowed hosts (where the gateway has ALLOWED_HOSTS): localhost:8080, example.com, [::1],
//! 127.0.0.1.
//!
//! Invariants: no 500 answer; `api_key` never reaches a route in the query string (it must be
//! stripped once checked); `layers::client_ip::resolve` never panics.
#![no_main]

use std::sync::Arc;

use iggy_gateway::{
    config::Config,
    layers::{self, Exempt, LayerSettings},
    metrics::Metrics,
};
use iggy_gateway_fuzz::{read_body, requests, with_shared_gateway};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// The stack's settings, read through `Config::load_from` as the gateway reads them (so fields
/// added to `LayerSettings` later get their configured defaults).
fn settings() -> LayerSettings {
    static SETTINGS: std::sync::OnceLock<LayerSettings> = std::sync::OnceLock::new();
    SETTINGS.get_or_init(load_settings).clone()
}

/// One metrics registry for every input: it only counts, and no invariant reads it.
fn metrics() -> Arc<Metrics> {
    static METRICS: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    Arc::clone(METRICS.get_or_init(|| Arc::new(Metrics::new())))
}

fn load_settings() -> LayerSettings {
    let base = [
        "iggy-gateway",
        "--trusted-proxies",
        "10.0.0.0/8,fd00::/8",
        "--api-key",
        "fuzz-key-1,fuzz-key-2",
        "--api-key-query-param",
        "--auth-bypass-paths",
        "/v1/streams",
        "--auth-max-failures",
        "3",
        "--cors-allowed-origins",
        "https://example.com",
        "--rate-limit-rps",
        "1000",
        "--max-request-body-size",
        "16384",
        "--max-concurrent-requests",
        "8",
        "--request-timeout-ms",
        "5000",
    ];
    // ALLOWED_HOSTS is newer than some revisions of the gateway: used when the flag exists.
    let hosts = [
        "--allowed-hosts",
        "localhost:8080,example.com,[::1],127.0.0.1",
    ];
    let config = Config::load_from(base.iter().chain(hosts.iter()).copied())
        .or_else(|_| Config::load_from(base))
        .map(|(config, _)| config)
        .unwrap_or_else(|err| match err {
            iggy_gateway::config::LoadError::Info(e)
            | iggy_gateway::config::LoadError::Invalid(e) => {
                panic!("the layers target's own configuration must load: {e}")
            }
        });
    config.layer_settings()
}

fuzz_target!(|data: &[u8]| {
    let requests = requests(data);
    if requests.is_empty() {
        return;
    }
    let trusted = settings().trusted_proxies;
    for request in &requests {
        let _ = layers::client_ip::resolve([10, 0, 0, 7].into(), request.headers(), &trusted);
    }
    let runtime = iggy_gateway_fuzz::runtime();
    // The routes and metrics are shared across inputs; the layers (rate limits, lockouts) are
    // new each time, so no input sees another's limits.
    let routes = with_shared_gateway(|_, router| router.clone());
    runtime.block_on(async {
        let inner = routes.layer(tower::util::MapRequestLayer::new(
            |request: http::Request<axum::body::Body>| {
                let path = request.uri().path();
                if !Exempt::HealthChecks.covers(path) && path != "/v1/streams" {
                    if let Some(query) = request.uri().query() {
                        assert!(
                            !form_urlencoded_has_key(query),
                            "api_key reached the route: {}",
                            request.uri()
                        );
                    }
                }
                request
            },
        ));
        let keys = Arc::new(iggy_gateway::identity::KeyRing::from_static(
            &settings().auth.keys,
        ));
        // No keys file here: which requests are API calls matters only to its keys.
        let api_calls: layers::ApiCalls = Arc::new(|_| true);
        let (router, _limiter) = layers::apply(inner, &settings(), metrics(), keys, api_calls);
        for request in requests {
            let shown = format!("{} {}", request.method(), request.uri());
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = read_body(response.into_body(), 4).await.unwrap_or_default();
            if !grpc {
                assert_ne!(
                    status,
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "{shown} answered 500: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    });
});

/// Whether a query string holds an `api_key` pair, read the way the auth layer reads it.
fn form_urlencoded_has_key(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(name, _)| name == "api_key")
}
