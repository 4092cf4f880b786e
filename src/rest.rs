//! The HTTP/JSON side of the port. For now it answers what no gRPC service claims: an unknown
//! path gets a JSON 404 (`application/problem+json`), and a gRPC call to an unknown service gets
//! `UNIMPLEMENTED` in gRPC's own framing, so each caller hears its own protocol.

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
};

pub const PROBLEM_JSON: &str = "application/problem+json";

pub fn router() -> Router {
    Router::new().fallback(unknown_route)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

async fn unknown_route(request: Request<axum::body::Body>) -> Response {
    if is_grpc(request.headers()) {
        let status =
            tonic::Status::unimplemented(format!("unknown gRPC method {}", request.uri().path()));
        return status.into_http::<axum::body::Body>().into_response();
    }
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": format!("no route for {} {}", request.method(), request.uri().path()),
        "reason": "ROUTE_NOT_FOUND",
    });
    let mut response = (StatusCode::NOT_FOUND, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}
