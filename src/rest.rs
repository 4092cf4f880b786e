//! The REST/JSON surface, derived from the `google.api.http` annotations in `proto/`: a route
//! table read from the descriptor set, a transcoder that turns each REST call into a call of the
//! same gRPC service, and RFC 9457 problem bodies for every error.

mod problem;
mod routes;
mod template;
mod transcode;

use std::sync::Arc;

use axum::Router;

pub use problem::{PROBLEM_JSON, Problem, http_status};
pub use routes::{BodyRule, Route, RouteTable};
pub use template::PathTemplate;
pub use transcode::Transcoder;

use crate::proto;

/// The package whose services REST exposes.
pub const API_PACKAGE: &str = "iggy.gateway.v1";

/// Reads the route table from the API's descriptor set.
pub fn route_table() -> Result<RouteTable, String> {
    let pool = prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
        .map_err(|err| format!("the API descriptor set does not decode: {err}"))?;
    RouteTable::from_descriptors(&pool, API_PACKAGE)
}

/// The REST router: annotated routes, transcoded to `grpc` (the gRPC services alone).
pub fn router(table: RouteTable, grpc: Router, max_body_bytes: usize) -> Router {
    let transcoder = Arc::new(Transcoder::new(table, grpc, max_body_bytes));
    Router::new()
        .fallback(transcode::handle)
        .with_state(transcoder)
}

#[cfg(test)]
mod tests;
