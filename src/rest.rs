//! The REST/JSON surface, derived from the `google.api.http` annotations in `proto/`: a route
//! table read from the descriptor set, a transcoder that turns each REST call into a call of the
//! same gRPC service, and RFC 9457 problem bodies for every error.

mod conditional;
pub mod direct;
mod fields;
mod openapi;
mod routes;
mod scalars;
pub mod shape;
mod template;
mod transcode;

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    http::{HeaderValue, StatusCode, header},
    response::IntoResponse,
};
use bytes::Bytes;

pub use routes::{BodyRule, Lookup, Route, RouteTable, side_effect_free};
pub use template::PathTemplate;
/// What the Connect translator and the direct calls share with REST: one JSON codec.
pub(crate) use transcode::{
    JsonRequest, PIECES_ABOVE, json_request, typed_json_bytes, typed_json_pieces, untyped_json,
};
pub use transcode::{Transcoder, is_grpc};

use crate::answer::methods::read_only;

/// The package whose services REST exposes.
pub const API_PACKAGE: &str = "iggy.gateway.v1";

fn descriptor_pool() -> Result<prost_reflect::DescriptorPool, String> {
    crate::descriptors::pool()
}

/// Reads the route table from the API's descriptor set.
pub fn route_table() -> Result<RouteTable, String> {
    RouteTable::from_descriptors(&descriptor_pool()?, API_PACKAGE)
}

/// The OpenAPI 3.1 document of the REST surface.
pub fn openapi_document(table: &RouteTable, settings: RestSettings) -> serde_json::Value {
    openapi::document(
        table,
        openapi::Limits {
            batch_max: settings.batch_max,
            poll_max: settings.poll_max,
        },
    )
}

/// How the REST surface reads requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestSettings {
    /// Largest request body, in bytes (`MAX_REQUEST_BODY_SIZE`).
    pub max_body_bytes: usize,
    /// Refuse query parameters that name no field (`REST_STRICT_QUERY`). By default they are
    /// ignored, as grpc-gateway does: browsers' cache-busters (`_=12345`) and tracking
    /// parameters must not break every GET.
    pub strict_query: bool,
    /// `BATCH_MAX_SIZE` and `POLL_MAX_COUNT`, which OpenAPI states as the bounds of the fields
    /// the protos mark with `configured_limit`.
    pub batch_max: u32,
    pub poll_max: u32,
}

/// The REST router: `/openapi.json`, `/docs`, and every annotated route, each calling its
/// method through `direct` (see `direct`), which must hold every route's method: start-up's
/// table does (`startup::direct::table` fails otherwise); a route without one answers 500.
pub fn router(table: RouteTable, direct: direct::Direct, settings: RestSettings) -> Router {
    let openapi = Arc::new(Document::new(settings));
    let transcoder = Arc::new(Transcoder::new(table, direct, settings));
    let routes = Arc::clone(&transcoder);
    Router::new()
        .route(
            "/openapi.json",
            read_only(move || {
                let openapi = Arc::clone(&openapi);
                let routes = Arc::clone(&routes);
                async move {
                    match openapi.bytes(routes.table()) {
                        Ok(bytes) => (
                            [(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            )],
                            bytes.clone(),
                        )
                            .into_response(),
                        Err(err) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, err.clone()).into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/docs",
            read_only(|| async { axum::response::Html(DOCS_PAGE) }),
        )
        .fallback(transcode::handle)
        .with_state(transcoder)
}

/// The OpenAPI document, written when it is first asked for: writing it reads the protos'
/// comments and builds a JSON tree several times its size, which a gateway need not hold
/// from start-up on (or leave behind as freed pages) for a page only people read.
struct Document {
    settings: RestSettings,
    written: OnceLock<Result<Bytes, String>>,
}

impl Document {
    fn new(settings: RestSettings) -> Self {
        Self {
            settings,
            written: OnceLock::new(),
        }
    }

    /// The document of `table`, the transcoder's, written on the first call.
    fn bytes(&self, table: &RouteTable) -> &Result<Bytes, String> {
        self.written.get_or_init(|| {
            serde_json::to_vec_pretty(&openapi_document(table, self.settings))
                // Boxed, so the buffer's slack (a sixth of it) is not kept.
                .map(|text| Bytes::from(text.into_boxed_slice()))
                .map_err(|err| format!("the OpenAPI document could not be written: {err}"))
        })
    }
}

/// A self-contained page that renders `/openapi.json` (no CDN).
const DOCS_PAGE: &str = include_str!("rest/docs.html");

#[cfg(test)]
mod tests;
