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
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions,
};
use serde_json::{Map, Value};
use tower::ServiceExt;

use crate::{
    answer::Problem,
    budget::{self, Exhausted},
    extensions::{ClientIp, MatchedRoute},
};

use super::{
    routes::{BodyRule, Lookup, Route, RouteTable, field_kind_at},
    shape::{self, ShapeRefusal},
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
        Ok(reply) => respond(route, reply)?,
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

/// The request message: the body, then path variables, then the query string (which win over
/// the body, as in google.api.http).
///
/// A `body: "*"` body (the common case, and the large one) is parsed straight into the message;
/// the path and query fields are parsed on their own and laid over it. Other bodies go through
/// a JSON tree first.
fn request_message(
    route: &Route,
    bindings: Vec<(String, String)>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    last_event_id: Option<&str>,
) -> Result<DynamicMessage, Problem> {
    let input = route.method.input();
    // Measured, and charged to the call's memory budget, before any parse builds a tree or
    // a message from it.
    match shape::count_values(body) {
        Err(ShapeRefusal::Malformed) => {}
        Err(refusal @ ShapeRefusal::TooDeep) => {
            return Err(Problem::invalid_field("body", refusal.to_string()));
        }
        Ok(values) => match budget::charge(values.saturating_mul(shape::JSON_VALUE_COST)) {
            None | Some(Ok(())) => {}
            Some(Err(exhausted @ Exhausted::Never { .. })) => {
                return Err(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    format!("the request body holds {values} JSON values: {exhausted}"),
                ));
            }
            Some(Err(exhausted @ Exhausted::Busy { .. })) => {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OVERLOADED",
                    exhausted.to_string(),
                )
                .with_retry_after(1));
            }
        },
    }
    let direct = route.body == BodyRule::All && !body.is_empty();
    let mut overlay = request_json(route, bindings, query, headers, body, !direct)?;
    let message = if direct {
        check_json_content(headers)?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Problem::invalid_field("body", "must be a JSON object"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let message = DynamicMessage::deserialize_with_options(
            input.clone(),
            &mut deserializer,
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .and_then(|message| deserializer.end().map(|()| message))
        .map_err(|err| match err.classify() {
            serde_json::error::Category::Data => json_problem(&err.to_string()),
            _ => malformed_json(&err),
        })?;
        Some(message)
    } else {
        None
    };
    // SSE clients resume by sending the last event id back: it is the cursor.
    if let Some(last_event_id) = last_event_id
        && let Some(cursor) = input.get_field_by_name("cursor")
        && !message.as_ref().is_some_and(|m| m.has_field(&cursor))
    {
        overlay
            .entry("cursor")
            .or_insert_with(|| Value::String(last_event_id.to_owned()));
    }
    let overlay = Value::Object(overlay);
    let fields = DynamicMessage::deserialize_with_options(
        input,
        &overlay,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|err| json_problem(&err.to_string()))?;
    match (message, overlay.as_object()) {
        (Some(mut message), Some(overlay)) => {
            lay_over(&mut message, &fields, overlay);
            Ok(message)
        }
        _ => Ok(fields),
    }
}

/// Sets on `message` each field named in `json` (proto names), taking its value from `from`
/// (the same fields, parsed); a nested object sets fields inside the nested message rather
/// than replacing it.
fn lay_over(message: &mut DynamicMessage, from: &DynamicMessage, json: &Map<String, Value>) {
    for (name, value) in json {
        let Some(field) = message.descriptor().get_field_by_name(name) else {
            continue;
        };
        // Well-known types have JSON forms of their own (a Struct is an object of any keys),
        // so they are set whole.
        let nested = matches!(field.kind(), Kind::Message(m) if !m.full_name().starts_with("google.protobuf."))
            && !field.is_list()
            && !field.is_map()
            && value.is_object();
        let from_value = from.get_field(&field);
        match (nested, from_value.as_message()) {
            (true, Some(inner_from)) => {
                if let (Some(inner), Value::Object(inner_json)) =
                    (message.get_field_mut(&field).as_message_mut(), value)
                {
                    lay_over(inner, inner_from, inner_json);
                }
            }
            _ => message.set_field(&field, from_value.into_owned()),
        }
    }
}

fn check_json_content(headers: &HeaderMap) -> Result<(), Problem> {
    let json_content = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            let essence = essence.trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
    if json_content {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "request bodies must be JSON (Content-Type: application/json)",
        ))
    }
}

fn malformed_json(err: &serde_json::Error) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "MALFORMED_JSON",
        format!("the body is not valid JSON: {err}"),
    )
}

/// The request as a proto3 JSON object: the body (when `with_body`), then path variables,
/// then the query string.
fn request_json(
    route: &Route,
    bindings: Vec<(String, String)>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    with_body: bool,
) -> Result<Map<String, Value>, Problem> {
    let input = route.method.input();
    let mut root = Map::new();
    if with_body && !body.is_empty() {
        if route.body == BodyRule::None {
            return Err(Problem::invalid_field(
                "body",
                format!(
                    "{} {} takes no request body",
                    route.http_method, route.template
                ),
            ));
        }
        check_json_content(headers)?;
        let parsed: Value = serde_json::from_slice(body).map_err(|err| malformed_json(&err))?;
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
    Ok(root)
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

/// The gRPC call a REST request becomes: one framed message, selected headers as metadata.
fn grpc_call(
    route: &Route,
    headers: &HeaderMap,
    message: &DynamicMessage,
) -> Result<Request<Body>, Problem> {
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
    call.body(Body::from(frame.freeze()))
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
    let (parts, mut body) = response.into_parts();
    // Refused before the first message (trailers-only): an ordinary problem answer.
    if let Some(status) = tonic::Status::from_header_map(&parts.headers)
        && status.code() != tonic::Code::Ok
    {
        return Err(Problem::from_status(&status));
    }
    let output = route.method.output();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => {
                    let problem = internal(format!("reading the gRPC stream: {err}"));
                    let _ = tx.send(Ok(stream_error(sse, &problem))).await;
                    return;
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    buffer.extend_from_slice(&data);
                    while let Some(payload) = next_message(&mut buffer) {
                        let Ok(message) = DynamicMessage::decode(output.clone(), payload) else {
                            return;
                        };
                        if tx.send(Ok(stream_item(sse, &message))).await.is_err() {
                            // The client went away; dropping the body ends the gRPC call.
                            return;
                        }
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(trailers) = frame.into_trailers()
                && let Some(status) = tonic::Status::from_header_map(&trailers)
                && status.code() != tonic::Code::Ok
            {
                let _ = tx
                    .send(Ok(stream_error(sse, &Problem::from_status(&status))))
                    .await;
            }
        }
    });
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Takes one complete gRPC message out of the buffer, if it holds one.
fn next_message(buffer: &mut BytesMut) -> Option<Bytes> {
    if buffer.len() < 5 {
        return None;
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + length {
        return None;
    }
    buffer.advance(5);
    Some(buffer.split_to(length).freeze())
}

fn stream_item(sse: bool, message: &DynamicMessage) -> Bytes {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null);
    integral_numbers(&mut json);
    if !sse {
        let mut line = serde_json::to_vec(&json).unwrap_or_default();
        line.push(b'\n');
        return Bytes::from(line);
    }
    // The cursor is the event id; the event's name is the field the message set.
    let id = json
        .get("cursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (event, data) = match json.as_object() {
        Some(object) => object
            .iter()
            .find(|(key, value)| key.as_str() != "cursor" && !value.is_null())
            .map_or(("message".to_owned(), json.clone()), |(key, value)| {
                (key.clone(), value.clone())
            }),
        None => ("message".to_owned(), json.clone()),
    };
    let mut text = String::new();
    if let Some(id) = id {
        text.push_str(&format!("id: {id}\n"));
    }
    text.push_str(&format!(
        "event: {event}\ndata: {}\n\n",
        serde_json::to_string(&data).unwrap_or_default()
    ));
    Bytes::from(text)
}

fn stream_error(sse: bool, problem: &Problem) -> Bytes {
    let json = problem.to_json();
    if sse {
        Bytes::from(format!("event: error\ndata: {json}\n\n"))
    } else {
        Bytes::from(format!("{{\"error\":{json}}}\n"))
    }
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
