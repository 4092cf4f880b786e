//! The REST transcoder: a matched route's path variables, query string and JSON body become
//! one request of the route's RPC (proto3 JSON rules), handed by a direct call (`direct`) to
//! the method of the very service instance gRPC clients reach; its answer comes back as JSON,
//! its status as a problem.
//!
//! Here is the call itself; `request` builds the request, `render` writes the answer as JSON,
//! SSE or NDJSON.

mod render;
mod request;

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use prost_reflect::DynamicMessage;

use crate::{
    answer::{Caller, Problem, Rejection, grpc_code_name, methods},
    extensions::{AnsweredCode, MatchedRoute, Protocol, RejectedFor, is_procedure_path, names},
    identity::Access,
    rest::conditional,
};

pub(super) use self::render::{CURSOR_FIELD, PROBLEM_EVENT};
use self::{
    render::internal,
    request::{Built, Query, request_message},
};
pub(crate) use self::{
    render::{PIECES_ABOVE, typed_json_bytes, typed_json_pieces},
    request::{JsonRequest, json_request, untyped_json},
};
use super::{
    RestSettings,
    direct::{
        ANSWER_METADATA, Answer, Call, Direct, Failure, Input, ItemsAs, Output, StreamCall,
        carried, forwarded,
    },
    routes::{Lookup, Route, RouteTable},
    template,
};

/// What the REST answer takes over from the call's answer metadata or refusal:
/// `direct::ANSWER_METADATA` and why the call was refused (so the metrics count it by reason).
#[derive(Debug, Default)]
struct Echo {
    headers: Vec<(header::HeaderName, HeaderValue)>,
    rejected: Option<RejectedFor>,
}

impl Echo {
    fn of(parts: &axum::http::response::Parts) -> Self {
        Self {
            headers: echoed(&parts.headers),
            rejected: parts.extensions.get::<RejectedFor>().copied(),
        }
    }

    /// What a direct call's answer (or status) carries in its metadata, which the gRPC path
    /// would have sent as headers.
    fn of_metadata(metadata: &tonic::metadata::MetadataMap) -> Self {
        Self {
            headers: echoed(&metadata.clone().into_headers()),
            rejected: None,
        }
    }

    fn apply(self, response: &mut Response) {
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        if let Some(rejected) = self.rejected {
            response.extensions_mut().insert(rejected);
        }
    }
}

pub struct Transcoder {
    table: RouteTable,
    /// The methods each route calls, unary and streamed.
    direct: Direct,
    max_body_bytes: usize,
    query: Query,
}

impl Transcoder {
    pub fn new(table: RouteTable, direct: Direct, settings: RestSettings) -> Self {
        Self {
            table,
            direct,
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

/// Whether a route's answer is only written out, as the typed codec writes it (in pieces when
/// large): not a stream, no `ETag` or `Location` to read from it, not one field of it. Other
/// answers are written by it too, and read before they are sent ([`render::respond_written`]).
fn json_answer(route: &Route) -> bool {
    !route.method.is_server_streaming()
        && route.created.is_none()
        && route.response_body.is_none()
        && route.success != StatusCode::NO_CONTENT
        && !conditional::may_carry_etag(&route.method.output())
}

fn echoed(headers: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
    ANSWER_METADATA
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .map(|value| (header::HeaderName::from_static(name), value.clone()))
        })
        .collect()
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(&names::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A gRPC content type: no REST call, answered UNIMPLEMENTED unread.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    // Media types are case-insensitive (RFC 9110), as `Protocol::of` reads them.
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        value
            .as_bytes()
            .get(..GRPC.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(GRPC))
    })
}

/// Answers every request no other route claims.
pub async fn handle(State(transcoder): State<Arc<Transcoder>>, request: Request<Body>) -> Response {
    // A gRPC call to a service this gateway lacks gets a gRPC answer, not a JSON one (as
    // `application/grpc-web+proto` for gRPC-Web, whose clients check it); a Connect call to
    // one, Connect's error JSON. Only on a procedure's path, which no REST route has: a REST
    // route answers as REST whatever content type rides along.
    if is_grpc(request.headers())
        || (is_procedure_path(request.uri().path())
            && matches!(
                Protocol::of(&request),
                Protocol::Connect | Protocol::ConnectStream { .. }
            ))
    {
        return unknown_method(&request);
    }
    let id = request_id(request.headers());
    match transcode(&transcoder, request).await {
        Ok(response) => response,
        Err(problem) => problem.with_request_id(id).into_response(),
    }
}

/// UNIMPLEMENTED for a gRPC, gRPC-Web or Connect call to a method no service here has.
pub fn unknown_method<B>(request: &Request<B>) -> Response {
    Rejection::unknown_method(request.uri().path()).respond(request)
}

async fn transcode(transcoder: &Transcoder, request: Request<Body>) -> Result<Response, Problem> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    let (route, bindings) = match transcoder.table.find(&parts.method, path) {
        Lookup::Found(route, bindings) => (route, bindings),
        Lookup::MethodNotAllowed(allowed) => {
            let allowed = methods::allowed(&allowed);
            // A plain OPTIONS (a CORS preflight never gets here) asks what the path takes.
            if parts.method == Method::OPTIONS {
                return Ok(methods::options(&allowed));
            }
            return Err(methods::method_not_allowed(&parts.method, path, &allowed));
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

    // Admitted before its body is read, as a gRPC call is before it is decoded.
    if let Err(rejection) = transcoder
        .direct
        .admit(&route.grpc_path, &mut parts.extensions)
    {
        // As REST answers every refusal, whatever protocol its content type names.
        let (problem, echo) = refusal(rejection);
        let mut response = problem
            .with_request_id(request_id(&parts.headers))
            .into_response();
        echo.apply(&mut response);
        response
            .extensions_mut()
            .insert(MatchedRoute(Arc::clone(&route.label)));
        return Ok(response);
    }
    // An admin call whose method never ran (its request did not parse) still gets its audit
    // line, with the code it was refused with.
    let access = parts.extensions.get::<Arc<Access>>().cloned();
    let answered = async {
        // A compressed body was inflated by the body-limit layer, within the same limit.
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
        // An EventSource that has seen no id yet sends an empty Last-Event-ID: no cursor, not a
        // cursor that fails to decode.
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty());
        // The typed codec reads a unary call's body: nothing here needs the request message again
        // (a stream's is read for its cursor).
        let typed = !route.method.is_server_streaming();
        let built = request_message(
            route,
            bindings,
            parts.uri.query(),
            &parts.headers,
            &body,
            last_event_id,
            transcoder.query,
            typed,
        )?;

        if route.method.is_server_streaming() {
            let call = transcoder
                .direct
                .stream(&route.grpc_path)
                .ok_or_else(|| no_direct_call(route))?;
            let message = built.into_message(route)?;
            let mut response =
                stream_direct(call, (&parts.headers, &parts.extensions), message).await;
            response
                .extensions_mut()
                .insert(MatchedRoute(Arc::clone(&route.label)));
            return Ok(response);
        }
        let call = transcoder
            .direct
            .get(&route.grpc_path)
            .ok_or_else(|| no_direct_call(route))?;
        // A create's `Location` is filled from its request (or, left for the typed codec, from its
        // path and query fields): kept only there, so a batch is not copied.
        let for_location = match (&route.created, &built) {
            (Some(_), Built::Message(message)) => Some(message.clone()),
            (Some(_), Built::Json { location, .. }) => location.clone(),
            _ => None,
        };
        let answer = if json_answer(route) {
            Answer::Written
        } else {
            Answer::ToRead
        };
        let request = (&parts.headers, &parts.extensions);
        let (reply, echo) = call_direct(call, route, request, built, answer).await;
        let mut response = match reply {
            Ok(Output::Json(body)) => render::respond_json(route, body),
            Ok(Output::ToRead(body)) => {
                render::respond_written(route, body, for_location.as_ref())?
            }
            // REST asks for JSON only.
            Ok(Output::Protobuf(_)) => {
                return Err(internal("a direct call answered protobuf to REST".into()));
            }
            // `If-None-Match: *` met a resource that exists: its precondition failed.
            Err(problem)
                if requires_absence && problem.status() == StatusCode::CONFLICT.as_u16() =>
            {
                problem
                    .precondition_failed()
                    .with_request_id(request_id(&parts.headers))
                    .into_response()
            }
            Err(problem) => problem
                .with_request_id(request_id(&parts.headers))
                .into_response(),
        };
        echo.apply(&mut response);
        response
            .extensions_mut()
            .insert(MatchedRoute(Arc::clone(&route.label)));
        Ok(response)
    }
    .await;
    if let Some(access) = access {
        let code = match &answered {
            Err(problem) => Some(problem.code()),
            Ok(response) => response
                .extensions()
                .get::<AnsweredCode>()
                .map(|code| code.0),
        };
        if let Some(code) = code {
            access.audit_outcome(grpc_code_name(code));
        }
    }
    answered
}

/// A unary call straight to the service's method (see `direct`), with the metadata and
/// extensions a gRPC call carries; its answer or error as that call's would be.
/// A body the typed codec did not take is parsed by the descriptors and called again.
async fn call_direct(
    call: &Call,
    route: &Route,
    (headers, extensions): (&HeaderMap, &axum::http::Extensions),
    built: Built,
    answer: Answer,
) -> (Result<Output, Problem>, Echo) {
    let (mut input, charged) = match built {
        Built::Message(message) => (Input::Message(message), 0),
        Built::Json {
            body,
            overlay,
            charged,
            ..
        } => (Input::Json { body, overlay }, charged),
    };
    loop {
        let request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(forwarded(headers)),
            carried(extensions),
            input,
        );
        return match call(request, answer).await {
            Ok(response) => {
                let echo = Echo::of_metadata(response.metadata());
                (Ok(response.into_inner()), echo)
            }
            Err(Failure::Untyped { body, overlay }) => {
                match request::untyped(route, &body, &overlay, charged) {
                    Ok(message) => {
                        input = Input::Message(message);
                        continue;
                    }
                    Err(problem) => (Err(problem), Echo::default()),
                }
            }
            Err(failure) => {
                let (problem, echo) = failed(failure);
                (Err(problem), echo)
            }
        };
    }
}

/// A route whose method has no direct call: start-up refuses such a table
/// (`startup/direct.rs`), so this is a bug, answered as an internal error.
fn no_direct_call(route: &Route) -> Problem {
    internal(format!("{} has no direct call", route.grpc_path))
}

/// Why a direct call, unary or streamed, has no answer, as REST answers it: the method's
/// status, the scope policy's refusal, an answer JSON cannot write (logged).
fn failed(failure: Failure) -> (Problem, Echo) {
    match failure {
        Failure::Status(status) => (
            Problem::from_status(&status),
            Echo::of_metadata(status.metadata()),
        ),
        Failure::Refused(rejection) => refusal(rejection),
        Failure::Unwritable(detail) => (internal(detail), Echo::default()),
        // Handed back only for a JSON body, which `call_direct` parses and calls again.
        Failure::Untyped { .. } => (
            internal("a request was handed back untyped".into()),
            Echo::default(),
        ),
    }
}

/// A scope refusal of a direct call, answered as the guard answers a gRPC caller and read back
/// as any gRPC refusal is (its status in the head, its quota headers echoed).
fn refusal(rejection: Rejection) -> (Problem, Echo) {
    let grpc = Request::builder()
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(())
        .unwrap_or_default();
    let (parts, _) = rejection.respond_to(&Caller::of(&grpc)).into_parts();
    let problem = tonic::Status::from_header_map(&parts.headers)
        .filter(|status| status.code() != tonic::Code::Ok)
        .map_or_else(
            || internal("a refusal without a grpc-status".into()),
            |status| Problem::from_status(&status),
        );
    (problem, Echo::of(&parts))
}

/// A server stream called straight (see `direct`), as Server-Sent Events or NDJSON: each answer
/// the service yields is written by the typed codec as it comes. Refused before the first
/// answer: an ordinary problem answer.
async fn stream_direct(
    call: &StreamCall,
    (headers, extensions): (&HeaderMap, &axum::http::Extensions),
    message: DynamicMessage,
) -> Response {
    let request = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(forwarded(headers)),
        carried(extensions),
        Input::Message(message),
    );
    let (mut response, echo) = match call(request, ItemsAs::Json).await {
        Ok(response) => {
            let echo = Echo::of_metadata(response.metadata());
            let items = response.into_inner();
            (
                render::stream_items(items, prefers_event_stream(headers), request_id(headers)),
                echo,
            )
        }
        Err(failure) => {
            let (problem, echo) = failed(failure);
            (
                problem.with_request_id(request_id(headers)).into_response(),
                echo,
            )
        }
    };
    echo.apply(&mut response);
    response
}

/// Whether `Accept` asks for Server-Sent Events rather than NDJSON (the default, also for
/// `*/*`): `text/event-stream` (or `text/*`) with a weight above zero and at least NDJSON's.
/// Each type takes the weight of the most specific range that matches it (RFC 9110 §12.5.1),
/// so `text/event-stream;q=0` refuses SSE whatever else is listed.
fn prefers_event_stream(headers: &HeaderMap) -> bool {
    let mut ranges: Vec<(&str, f32)> = Vec::new();
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            if media.is_empty() {
                continue;
            }
            // A weight that does not parse counts as the default, 1: the range was asked for.
            let weight = parts
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, q)| q.trim().parse::<f32>().ok())
                .map_or(1.0, |q| q.clamp(0.0, 1.0));
            ranges.push((media, weight));
        }
    }
    if ranges.is_empty() {
        return false;
    }
    // The weight of the first of `candidates` (most specific first) that `Accept` lists.
    let weight_of = |candidates: &[&str]| -> Option<f32> {
        candidates.iter().find_map(|candidate| {
            ranges
                .iter()
                .find(|(media, _)| media.eq_ignore_ascii_case(candidate))
                .map(|&(_, weight)| weight)
        })
    };
    // `*/*` does not choose SSE: it also covers NDJSON, the default.
    let sse = weight_of(&["text/event-stream", "text/*"]).unwrap_or(0.0);
    let ndjson = weight_of(&["application/x-ndjson", "application/*", "*/*"]).unwrap_or(0.0);
    sse > 0.0 && sse >= ndjson
}

#[cfg(test)]
mod tests;
