//! Operator endpoints on the main port, in the original service's shapes: `/health` (liveness),
//! `/ready` (readiness follows the backend), `/stats` (counts and uptime) and `/metrics`
//! (Prometheus). Kubernetes should prefer the native gRPC probe (`grpc.health.v1`).

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    answer::{Problem, SCOPE_MISSING, methods::read_only, scope_missing},
    broker::{Broker, now_micros},
    identity::{AUDIT, Identity, Scope, Target},
    metrics::Metrics,
    stats::Stats,
};

/// `/stats` and `/metrics` count every stream and name every keys-file identity: a key read
/// scoped to part of the streams may not see them (nor a key without `read`). No identity:
/// the metrics port, which serves only `/metrics`, by design without a key.
fn refused(metrics: &Metrics, identity: Option<&Arc<Identity>>, path: &str) -> Option<Response> {
    let identity = identity.filter(|identity| !identity.allows(Scope::Read, &Target::All))?;
    // Counted and logged as the scope policy counts and logs its refusals.
    metrics.identity_refused(identity.name(), SCOPE_MISSING);
    tracing::warn!(
        target: AUDIT,
        identity = identity.name(),
        method = path,
        target = "*/*",
        scope = "read",
        result = "PERMISSION_DENIED",
        "refused: scope missing"
    );
    let status = scope_missing(identity.name(), Scope::Read.as_str(), "*/*");
    Some(Problem::from_status(&status).into_response())
}

/// Microseconds since the epoch in RFC 3339, as proto3 JSON writes timestamps.
fn micros_text(micros: u64) -> String {
    prost_types::Timestamp {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
    }
    .to_string()
}

#[derive(Clone)]
struct Ops {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    stats: Option<Arc<Stats>>,
}

pub fn router(broker: Arc<dyn Broker>, metrics: Arc<Metrics>, stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/health", read_only(health))
        .route("/ready", read_only(ready))
        .route("/stats", read_only(stats_report))
        .route("/metrics", read_only(metrics_text))
        .with_state(Ops {
            broker,
            metrics,
            stats: Some(stats),
        })
}

/// `/metrics` alone, for a separate port (`METRICS_PORT`) that scrapers reach without a key.
pub fn metrics_router(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", read_only(metrics_text))
        .with_state(Ops {
            broker,
            metrics,
            stats: None,
        })
}

/// 200 while the process serves (`degraded` when the backend is unavailable for now); 503
/// `unavailable` once the backend has given up for good and the gateway is stopping.
async fn health(State(ops): State<Ops>) -> Response {
    let connected = *ops.broker.availability().borrow();
    let gave_up = *ops.broker.gave_up().borrow();
    let (status, word) = match (gave_up, connected) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (false, true) => (StatusCode::OK, "healthy"),
        (false, false) => (StatusCode::OK, "degraded"),
    };
    let body = json!({
        "status": word,
        "iggy_connected": connected,
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": micros_text(now_micros()),
    });
    (status, Json(body)).into_response()
}

/// 200 when the backend can serve calls, 503 otherwise.
async fn ready(State(ops): State<Ops>) -> Response {
    let ready = *ops.broker.availability().borrow();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

/// The original service's `/stats`, from the statistics cache (see `stats.rs`): 200 even while
/// the backend is down, then with `"stale": true`.
async fn stats_report(
    State(ops): State<Ops>,
    identity: Option<Extension<Arc<Identity>>>,
) -> Response {
    let Some(stats) = &ops.stats else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(refused) = refused(&ops.metrics, identity.as_deref(), "/stats") {
        return refused;
    }
    let report = stats.report();
    let backend = report.backend;
    let calls: serde_json::Map<String, serde_json::Value> = report
        .calls_by_protocol
        .iter()
        .map(|(protocol, count)| ((*protocol).to_owned(), json!(count)))
        .collect();
    Json(json!({
        "streams_count": backend.streams_count,
        "topics_count": backend.topics_count,
        "total_messages": backend.total_messages,
        "total_size_bytes": backend.total_size_bytes,
        "refreshed_at": backend.refreshed_at_micros.map(micros_text),
        "stale": backend.stale,
        "uptime_seconds": report.uptime_seconds,
        "messages_sent": report.messages_sent,
        "messages_polled": report.messages_polled,
        "messages_received": report.messages_polled,
        "calls_by_protocol": calls,
        "errors": report.errors,
        "backend_reconnects": report.backend_reconnects,
        "backend_durability": report.durability.as_str(),
        "backend_durability_detail": report.durability.to_string(),
        "holes_skipped": report.skipped_holes.holes,
        "offsets_skipped": report.skipped_holes.offsets,
    }))
    .into_response()
}

async fn metrics_text(
    State(ops): State<Ops>,
    identity: Option<Extension<Arc<Identity>>>,
) -> Response {
    if let Some(refused) = refused(&ops.metrics, identity.as_deref(), "/metrics") {
        return refused;
    }
    ops.metrics.observe_reconnects(ops.broker.reconnects());
    let skipped = ops.broker.skipped_holes();
    ops.metrics
        .observe_skipped_holes(skipped.holes, skipped.offsets);
    let sends = ops.broker.send_counts();
    ops.metrics.observe_send_counts(sends.sends, sends.calls);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        ops.metrics.render(),
    )
        .into_response()
}
