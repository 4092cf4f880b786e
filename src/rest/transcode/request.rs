//! The request half of the transcoder: the protobuf request message a REST call becomes, built
//! from its JSON body, path variables and query string by proto3 JSON rules. The body's shape is
//! measured and charged to the call's memory budget before anything is parsed; refusals are
//! problems that name the field.

use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
};
use serde_json::{Map, Value};

use crate::{
    answer::Problem,
    budget::{self, Exhausted},
    rest::{
        routes::{BodyRule, Route, field_kind_at},
        shape::{self, ShapeRefusal},
        template,
    },
};

/// The request message: the body, then path variables, then the query string (which win over
/// the body, as in google.api.http).
///
/// A `body: "*"` body (the common case, and the large one) is parsed straight into the message;
/// the path and query fields are parsed on their own and laid over it. Other bodies go through
/// a JSON tree first.
pub(super) fn request_message(
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
pub(super) fn request_json(
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
    for (field, raw) in bindings {
        // Decoded here, where a bad escape can be refused naming its variable.
        let value = template::decode(&raw)
            .map_err(|bad| Problem::invalid_field(field.clone(), bad.to_string()))?;
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
pub(super) fn set_path(
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
