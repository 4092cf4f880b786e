//! The REST → gRPC transcoder: a matched route's path variables, query string and JSON body
//! become one protobuf request (proto3 JSON rules), which is sent as a gRPC call to the very
//! service gRPC clients reach; the answer (or `grpc-status`) comes back as JSON (or a problem).
//!
//! Here is the call itself; `request` builds the request message, `framing` frames the call
//! and takes its answer apart, `render` writes the answer as JSON, SSE or NDJSON.

mod framing;
mod render;
mod request;

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body::Body as _;
use http_body_util::BodyExt;
use prost_reflect::DynamicMessage;
use tower::ServiceExt;

use crate::{
    answer::Problem,
    extensions::{ClientIp, MatchedRoute},
    rest::conditional,
};

use self::{
    framing::EncodeError,
    render::{internal, respond},
    request::{Query, request_message},
};
use super::{
    RestSettings,
    routes::{Lookup, Route, RouteTable},
    template,
};

/// Request headers passed on to the gRPC service as metadata.
const FORWARDED_HEADERS: [&str; 5] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "authorization",
    "x-api-key",
];

pub struct Transcoder {
    table: RouteTable,
    /// The gRPC services alone (no gRPC-Web, no REST), called in process.
    grpc: axum::Router,
    max_body_bytes: usize,
    query: Query,
}

impl Transcoder {
    pub fn new(table: RouteTable, grpc: axum::Router, settings: RestSettings) -> Self {
        Self {
            table,
            grpc,
            max_body_bytes: settings.max_body_bytes,
            query: if settings.strict_query {
                Query::Strict
            } else {
                Query::Lenient
            },
        }
    }

    pub fn table(&self) -> &RouteTable {
        &self.table
    }
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// The first content coding of the request other than `identity`, if any.
fn content_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("unreadable").split(','))
        .map(str::trim)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        .map(str::to_owned)
}

/// Answers every request no other route claims.
pub async fn handle(State(transcoder): State<Arc<Transcoder>>, request: Request<Body>) -> Response {
    // A gRPC call to a service this gateway lacks gets a gRPC answer, not a JSON one.
    if is_grpc(request.headers()) {
        let status =
            tonic::Status::unimplemented(format!("unknown gRPC method {}", request.uri().path()));
        return status.into_http::<Body>().into_response();
    }
    let id = request_id(request.headers());
    match transcode(&transcoder, request).await {
        Ok(response) => response,
        Err(problem) => problem.with_request_id(id).into_response(),
    }
}

async fn transcode(transcoder: &Transcoder, request: Request<Body>) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let (route, bindings) = match transcoder.table.find(&parts.method, path) {
        Lookup::Found(route, bindings) => (route, bindings),
        Lookup::MethodNotAllowed(allowed) => {
            return Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("{} is not allowed on {path}", parts.method),
            )
            .with_allow(&allowed));
        }
        Lookup::NotFound => {
            // A bad escape is the client's error wherever it is, not a missing route.
            if let Err(bad) = template::decode(path) {
                return Err(Problem::invalid_field("path", bad.to_string()));
            }
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                format!("no route for {} {path}", parts.method),
            ));
        }
    };

    // Refused before the body is read: nothing here decompresses, and a compressed body
    // read as JSON would only be called malformed.
    if let Some(coding) = content_coding(&parts.headers)
        && body.size_hint().exact() != Some(0)
    {
        let mut response = Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_CONTENT_ENCODING",
            format!("request bodies must not be compressed (Content-Encoding: {coding})"),
        )
        .with_request_id(request_id(&parts.headers))
        .into_response();
        // RFC 9110 §12.5.3: a 415 for a content coding says which codings are accepted.
        response.headers_mut().insert(
            header::ACCEPT_ENCODING,
            header::HeaderValue::from_static("identity"),
        );
        return Ok(response);
    }
    let body = axum::body::to_bytes(body, transcoder.max_body_bytes)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "the request body is over {} bytes (MAX_REQUEST_BODY_SIZE)",
                    transcoder.max_body_bytes
                ),
            )
        })?;
    let requires_absence = conditional::requires_absence(route, &parts.headers)?;
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let message = request_message(
        route,
        bindings,
        parts.uri.query(),
        &parts.headers,
        &body,
        last_event_id,
        transcoder.query,
    )?;

    if route.method.is_server_streaming() {
        let client = parts.extensions.get::<ClientIp>().copied();
        let mut response = stream_grpc(transcoder, route, &parts.headers, &message, client).await?;
        response.extensions_mut().insert(MatchedRoute(format!(
            "{} {}",
            route.http_method, route.template
        )));
        return Ok(response);
    }
    let reply = call_grpc(transcoder, route, &parts.headers, &message).await;
    let mut response = match reply {
        Ok(reply) => {
            let etag = conditional::answer_etag(&reply);
            let mut response = respond(route, reply)?;
            if let Some(etag) = etag {
                response.headers_mut().insert(header::ETAG, etag);
            }
            response
        }
        // `If-None-Match: *` met a resource that exists: its precondition failed.
        Err(problem) if requires_absence && problem.status() == StatusCode::CONFLICT.as_u16() => {
            problem
                .precondition_failed()
                .with_request_id(request_id(&parts.headers))
                .into_response()
        }
        Err(problem) => problem
            .with_request_id(request_id(&parts.headers))
            .into_response(),
    };
    response.extensions_mut().insert(MatchedRoute(format!(
        "{} {}",
        route.http_method, route.template
    )));
    Ok(response)
}

/// The gRPC call a REST request becomes: one framed message, selected headers as metadata.
fn grpc_call(
    route: &Route,
    headers: &HeaderMap,
    message: &DynamicMessage,
) -> Result<Request<Body>, Problem> {
    let frame = framing::encode(message).map_err(|err| match err {
        EncodeError::TooLarge => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "request too large",
        ),
        EncodeError::Message(_) => internal(err.to_string()),
    })?;

    let mut call = Request::builder()
        .method(Method::POST)
        .uri(route.grpc_path.as_str())
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers");
    for name in FORWARDED_HEADERS {
        for value in headers.get_all(name) {
            call = call.header(name, value);
        }
    }
    call.body(Body::from(frame))
        .map_err(|err| internal(format!("building the gRPC call: {err}")))
}

async fn call_grpc(
    transcoder: &Transcoder,
    route: &Route,
    headers: &HeaderMap,
    message: &DynamicMessage,
) -> Result<DynamicMessage, Problem> {
    let call = grpc_call(route, headers, message)?;
    let response = match transcoder.grpc.clone().oneshot(call).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|err| internal(format!("reading the gRPC answer: {err}")))?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();

    // A trailers-only answer (any error) carries its status in the headers.
    let status = framing::status(&parts.headers, trailers.as_ref())
        .ok_or_else(|| internal("the gRPC answer had no grpc-status".into()))?;
    if status.code() != tonic::Code::Ok {
        return Err(Problem::from_status(&status));
    }
    let payload = framing::single_message(data).map_err(|err| internal(err.to_string()))?;
    DynamicMessage::decode(route.method.output(), payload)
        .map_err(|err| internal(format!("decoding the gRPC answer: {err}")))
}

/// A server-streaming call as Server-Sent Events (`Accept: text/event-stream`) or NDJSON: each
/// gRPC message becomes one event or line as it arrives. A `cursor` field becomes the SSE id.
async fn stream_grpc(
    transcoder: &Transcoder,
    route: &Route,
    headers: &HeaderMap,
    message: &DynamicMessage,
    client: Option<ClientIp>,
) -> Result<Response, Problem> {
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let mut call = grpc_call(route, headers, message)?;
    if let Some(client) = client {
        call.extensions_mut().insert(client);
    }
    let response = match transcoder.grpc.clone().oneshot(call).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    // Refused before the first message (trailers-only): an ordinary problem answer.
    if let Some(status) = framing::error_status(&parts.headers) {
        return Err(Problem::from_status(&status));
    }
    Ok(render::stream(body, route.method.output(), sse))
}

#[cfg(test)]
mod tests;
