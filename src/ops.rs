//! Operator endpoints on the main port, in the original service's shapes: `/health` (liveness),
//! `/ready` (readiness follows the backend), `/stats` (counts and uptime) and `/metrics`
//! (Prometheus). Kubernetes should prefer the native gRPC probe (`grpc.health.v1`).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    answer::{Problem, broker_status, methods::read_only},
    broker::Broker,
    metrics::Metrics,
};

/// Now in RFC 3339 (UTC, to the microsecond), as proto3 JSON writes timestamps.
fn now_text() -> String {
    let mut now = prost_types::Timestamp::from(std::time::SystemTime::now());
    now.nanos -= now.nanos % 1_000;
    now.to_string()
}

#[derive(Clone)]
struct Ops {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
}

pub fn router(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", read_only(health))
        .route("/ready", read_only(ready))
        .route("/stats", read_only(stats))
        .route("/metrics", read_only(metrics_text))
        .with_state(Ops { broker, metrics })
}

/// `/metrics` alone, for a separate port (`METRICS_PORT`) that scrapers reach without a key.
pub fn metrics_router(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", read_only(metrics_text))
        .with_state(Ops { broker, metrics })
}

/// Always 200 while the process serves; `degraded` when the backend is unavailable.
async fn health(State(ops): State<Ops>) -> Json<serde_json::Value> {
    let connected = *ops.broker.availability().borrow();
    Json(json!({
        "status": if connected { "healthy" } else { "degraded" },
        "iggy_connected": connected,
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": now_text(),
    }))
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

async fn stats(State(ops): State<Ops>) -> Response {
    let streams = match ops.broker.list_streams().await {
        Ok(streams) => streams,
        Err(err) => return Problem::from_status(&broker_status(err)).into_response(),
    };
    Json(json!({
        "streams_count": streams.len(),
        "topics_count": streams.iter().map(|s| u64::from(s.topics_count)).sum::<u64>(),
        "total_messages": streams.iter().map(|s| s.messages_count).sum::<u64>(),
        "total_size_bytes": streams.iter().map(|s| s.size_bytes).sum::<u64>(),
        "uptime_seconds": ops.metrics.uptime_seconds(),
        "messages_sent": ops.metrics.messages_sent(),
        "messages_polled": ops.metrics.messages_polled(),
    }))
    .into_response()
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    ops.metrics.observe_reconnects(ops.broker.reconnects());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        ops.metrics.render(),
    )
        .into_response()
}
