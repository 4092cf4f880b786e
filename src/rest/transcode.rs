//! The REST → gRPC transcoder: a matched route's path variables, query string and JSON body
//! become one protobuf request (proto3 JSON rules), which is sent as a gRPC call to the very
//! service gRPC clients reach; the answer (or `grpc-status`) comes back as JSON (or a problem).

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};
use tower::ServiceExt;

use super::{
    problem::Problem,
    routes::{BodyRule, Lookup, Route, RouteTable, field_kind_at},
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
}

impl Transcoder {
    pub fn new(table: RouteTable, grpc: axum::Router, max_body_bytes: usize) -> Self {
        Self {
            table,
            grpc,
            max_body_bytes,
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
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "ROUTE_NOT_FOUND",
                format!("no route for {} {path}", parts.method),
            ));
        }
    };

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
    let input = request_json(route, bindings, parts.uri.query(), &parts.headers, &body)?;
    let message = DynamicMessage::deserialize_with_options(
        route.method.input(),
        input,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|err| json_problem(&err.to_string()))?;

    let reply = call_grpc(transcoder, route, &parts.headers, &message).await;
    let mut response = match reply {
        Ok(reply) => respond(route, reply)?,
        Err(problem) => problem
            .with_request_id(request_id(&parts.headers))
            .into_response(),
    };
    response
        .extensions_mut()
        .insert(crate::metrics::MatchedRoute(format!(
            "{} {}",
            route.http_method, route.template
        )));
    Ok(response)
}

/// The request message as proto3 JSON: body, then path variables, then the query string.
fn request_json(
    route: &Route,
    bindings: Vec<(String, String)>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, Problem> {
    let input = route.method.input();
    let mut root = Map::new();
    if !body.is_empty() {
        if route.body == BodyRule::None {
            return Err(Problem::invalid_field(
                "body",
                format!(
                    "{} {} takes no request body",
                    route.http_method, route.template
                ),
            ));
        }
        let json_content = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| {
                let essence = essence.trim().to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            });
        if !json_content {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "request bodies must be JSON (Content-Type: application/json)",
            ));
        }
        let parsed: Value = serde_json::from_slice(body).map_err(|err| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_JSON",
                format!("the body is not valid JSON: {err}"),
            )
        })?;
        match &route.body {
            BodyRule::All => match parsed {
                Value::Object(object) => root = object,
                _ => {
                    return Err(Problem::invalid_field("body", "must be a JSON object"));
                }
            },
            BodyRule::Field(field) => {
                root.insert(field.clone(), parsed);
            }
            BodyRule::None => {}
        }
    }

    let bound: Vec<String> = bindings.iter().map(|(field, _)| field.clone()).collect();
    for (field, value) in bindings {
        let descriptor = field_kind_at(&input, &field)
            .map_err(|err| Problem::invalid_field(field.clone(), err))?;
        set_path(
            &mut root,
            &input,
            &field,
            scalar_json(&descriptor, &field, &value)?,
            false,
        )?;
    }

    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let descriptor = field_kind_at(&input, &key)
            .map_err(|_| Problem::invalid_field(key.to_string(), "unknown query parameter"))?;
        let in_body = match &route.body {
            BodyRule::All => true,
            BodyRule::Field(field) => {
                key == field.as_str() || key.starts_with(&format!("{field}."))
            }
            BodyRule::None => false,
        };
        if in_body || bound.iter().any(|b| *b == key) {
            return Err(Problem::invalid_field(
                key.to_string(),
                "is set by the path or the body, not the query string",
            ));
        }
        if descriptor.is_map() {
            return Err(Problem::invalid_field(
                key.to_string(),
                "map fields cannot be set from the query string",
            ));
        }
        let json = scalar_json(&descriptor, &key, &value)?;
        set_path(&mut root, &input, &key, json, descriptor.is_list())?;
    }
    Ok(Value::Object(root))
}

/// A path or query value as the JSON proto3 parsing expects it: bools and floats as JSON
/// values, everything else (integers, enums, strings, Timestamps, Durations) as a string.
fn scalar_json(field: &FieldDescriptor, name: &str, value: &str) -> Result<Value, Problem> {
    Ok(match field.kind() {
        Kind::Bool => match value {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(Problem::invalid_field(name, "must be true or false")),
        },
        // Enums are names or numbers; a number must reach the parser as a JSON number.
        Kind::Enum(_) => value
            .parse::<i32>()
            .map_or_else(|_| Value::String(value.to_owned()), Value::from),
        Kind::Double | Kind::Float => value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(value.to_owned()), Value::Number),
        Kind::Message(message)
            if !matches!(
                message.full_name(),
                "google.protobuf.Timestamp"
                    | "google.protobuf.Duration"
                    | "google.protobuf.FieldMask"
                    | "google.protobuf.StringValue"
                    | "google.protobuf.Int64Value"
                    | "google.protobuf.UInt64Value"
                    | "google.protobuf.Int32Value"
                    | "google.protobuf.UInt32Value"
                    | "google.protobuf.BytesValue"
            ) =>
        {
            return Err(Problem::invalid_field(
                name,
                "a message field cannot be set from a single value; name one of its fields (a.b=c)",
            ));
        }
        _ => Value::String(value.to_owned()),
    })
}

/// Sets `a.b.c` in a JSON object tree, creating the objects on the way, keyed by proto names.
fn set_path(
    root: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    value: Value,
    repeated: bool,
) -> Result<(), Problem> {
    let mut current = root;
    let mut descriptor = message.clone();
    let steps: Vec<&str> = path.split('.').collect();
    for (index, step) in steps.iter().enumerate() {
        let field = descriptor
            .get_field_by_name(step)
            .or_else(|| descriptor.get_field_by_json_name(step))
            .ok_or_else(|| Problem::invalid_field(path, "unknown field"))?;
        // The JSON parser accepts either name; keep one key per field (the proto name).
        let name = field.name().to_owned();
        if field.json_name() != name
            && let Some(value) = current.remove(field.json_name())
        {
            current.entry(name.clone()).or_insert(value);
        }
        if index + 1 == steps.len() {
            if repeated {
                match current
                    .entry(name)
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(items) => items.push(value),
                    _ => return Err(Problem::invalid_field(path, "is set twice")),
                }
            } else {
                current.insert(name, value);
            }
            return Ok(());
        }
        let Kind::Message(next) = field.kind() else {
            return Err(Problem::invalid_field(path, "is not a message field"));
        };
        descriptor = next;
        let entry = current
            .entry(name)
            .or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(object) => object,
            _ => return Err(Problem::invalid_field(path, "conflicts with another value")),
        };
    }
    Ok(())
}

/// A proto3-JSON parse error as a 400 that names the field when the parser did.
fn json_problem(message: &str) -> Problem {
    let field = message
        .split_once("unrecognized field name '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(field, _)| field.to_owned());
    match field {
        Some(field) => Problem::invalid_field(field, "unknown field"),
        None => Problem::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message),
    }
}

async fn call_grpc(
    transcoder: &Transcoder,
    route: &Route,
    headers: &HeaderMap,
    message: &DynamicMessage,
) -> Result<DynamicMessage, Problem> {
    let length = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + length);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(length).map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "request too large",
        )
    })?);
    message
        .encode(&mut frame)
        .map_err(|err| internal(format!("encoding the request: {err}")))?;

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
    let call = call
        .body(Body::from(frame.freeze()))
        .map_err(|err| internal(format!("building the gRPC call: {err}")))?;
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
    let mut data = collected.to_bytes();

    // A trailers-only answer (any error) carries its status in the headers.
    let status = trailers
        .as_ref()
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(&parts.headers))
        .ok_or_else(|| internal("the gRPC answer had no grpc-status".into()))?;
    if status.code() != tonic::Code::Ok {
        return Err(Problem::from_status(&status));
    }
    if data.len() < 5 || data[0] != 0 {
        return Err(internal(
            "the gRPC answer was not one uncompressed message".into(),
        ));
    }
    data.advance(1);
    let length = data.get_u32() as usize;
    if data.len() < length {
        return Err(internal("the gRPC answer was cut short".into()));
    }
    DynamicMessage::decode(route.method.output(), data.split_to(length))
        .map_err(|err| internal(format!("decoding the gRPC answer: {err}")))
}

fn respond(route: &Route, reply: DynamicMessage) -> Result<Response, Problem> {
    if route.success == StatusCode::NO_CONTENT {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut json = reply
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|err| internal(format!("encoding the answer as JSON: {err}")))?;
    if let Some(field) = &route.response_body {
        json = json.get_mut(field).map(Value::take).unwrap_or(Value::Null);
    }
    integral_numbers(&mut json);
    let body = serde_json::to_vec(&json)
        .map_err(|err| internal(format!("encoding the answer as JSON: {err}")))?;
    let mut response = (route.success, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `google.protobuf.Value` holds every JSON number as a double, which prints as `1.0`; a JSON
/// client sent `1` and should get `1` back. Doubles that are whole and exactly representable
/// are printed as integers (the same number in JSON).
fn integral_numbers(value: &mut Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(number) => {
            if let Some(float) = number
                .as_f64()
                .filter(|f| number.is_f64() && f.fract() == 0.0 && f.abs() < EXACT)
            {
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "whole and below 2^53, so exact"
                )]
                let whole = float as i64;
                *number = serde_json::Number::from(whole);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

fn internal(detail: String) -> Problem {
    tracing::error!(%detail, "REST transcoding failed");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error while transcoding",
    )
}

#[cfg(test)]
mod tests;
