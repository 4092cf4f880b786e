//! OpenAPI 3.1, generated from the same route table and descriptors as the REST surface, with
//! the proto comments as descriptions and the protos' `buf.validate` rules as JSON Schema
//! keywords (`openapi/rules.rs`). Served at `/openapi.json`; `/docs` renders it.

use std::collections::HashMap;

use prost::Message as _;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use prost_types::source_code_info::Location;
use serde_json::{Map, Value, json};

mod rules;

#[cfg(test)]
pub use rules::{BASE64, decimal_at_most};

use super::{
    conditional,
    routes::{BodyRule, RouteTable},
    scalars,
    transcode::{CURSOR_FIELD, PROBLEM_EVENT},
};

/// `read`, `write` or `admin`: the method's `iggy.gateway.v1.required_scope`.
fn required_scope(method: &prost_reflect::MethodDescriptor) -> Option<&'static str> {
    let extension = method
        .parent_pool()
        .get_extension_by_name("iggy.gateway.v1.required_scope")?;
    let options = method.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).as_enum_number()? {
        1 => Some("read"),
        2 => Some("write"),
        3 => Some("admin"),
        _ => None,
    }
}

/// The protos' comments, each file's locations by its name. The process's descriptor pool is
/// decoded without them (they were half of it), so a document reads them from the full set
/// and drops them when it is written.
struct Comments {
    files: HashMap<String, Vec<Location>>,
}

impl Comments {
    fn read() -> Self {
        let files = prost_types::FileDescriptorSet::decode(crate::descriptors::FILE_DESCRIPTOR_SET)
            .map(|set| {
                set.file
                    .into_iter()
                    .filter_map(|file| Some((file.name?, file.source_code_info?.location)))
                    .collect()
            })
            .unwrap_or_default();
        Self { files }
    }

    /// The leading comment of the element at `path` in `file`, as a description.
    fn at(&self, file: &str, path: &[i32]) -> Option<String> {
        let location = self.files.get(file)?.iter().find(|l| l.path == path)?;
        let text = location.leading_comments().trim();
        (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
    }
}

fn schema_name(message: &MessageDescriptor) -> String {
    message.full_name().replace('.', "_")
}

/// The values of the settings that bound fields (`configured_limit`), as the gateway runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `BATCH_MAX_SIZE`.
    pub batch_max: u32,
    /// `POLL_MAX_COUNT`.
    pub poll_max: u32,
}

/// The messages whose schemas are still to be written, and what every schema needs to know.
struct Pending {
    messages: Vec<MessageDescriptor>,
    limits: Limits,
    comments: Comments,
}

impl Pending {
    fn push(&mut self, message: MessageDescriptor) {
        self.messages.push(message);
    }

    fn pop(&mut self) -> Option<MessageDescriptor> {
        self.messages.pop()
    }

    fn iter(&self) -> std::slice::Iter<'_, MessageDescriptor> {
        self.messages.iter()
    }
}

/// The JSON Schema of one field in proto3 JSON.
fn field_schema(field: &FieldDescriptor, pending: &mut Pending) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({"type": "object"});
        };
        let mut schema = json!({
            "type": "object",
            "additionalProperties": kind_schema(&entry.map_entry_value_field(), pending),
        });
        rules::apply(field, &mut schema, pending.limits);
        return schema;
    }
    let item = kind_schema(field, pending);
    let mut schema = if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    };
    rules::apply(field, &mut schema, pending.limits);
    schema
}

fn kind_schema(field: &FieldDescriptor, pending: &mut Pending) -> Value {
    match field.kind() {
        // Formats from the OpenAPI format registry, with their ranges spelled out so a validator
        // that does not know a format still refuses what the field cannot hold.
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({
            "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX,
        }),
        Kind::Uint32 | Kind::Fixed32 => json!({
            "type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX,
        }),
        // proto3 JSON writes 64-bit integers as decimal strings (beyond 2^53 a JSON number
        // loses digits) and accepts numbers too: `pattern` bounds the strings, `minimum` and
        // `maximum` the numbers.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "type": ["string", "integer"], "format": "int64",
            "pattern": format!(
                "^(?:-?0*{}|-0*9223372036854775808)$",
                rules::decimal_at_most(&i64::MAX.to_string())
            ),
            "minimum": i64::MIN, "maximum": i64::MAX,
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({
            "type": ["string", "integer"], "format": "uint64",
            "pattern": format!("^0*{}$", rules::decimal_at_most(&u64::MAX.to_string())),
            "minimum": 0, "maximum": u64::MAX,
        }),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        // Standard or URL-safe alphabet, padding optional, as the parser reads it.
        Kind::Bytes => json!({
            "type": "string", "contentEncoding": "base64", "pattern": rules::BASE64,
        }),
        // proto3 JSON takes an enum value by name or by number.
        Kind::Enum(enumeration) => json!({
            "anyOf": [
                {
                    "type": "string",
                    "enum": enumeration.values().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
                },
                {
                    "type": "integer",
                    "enum": enumeration.values().map(|v| v.number()).collect::<Vec<_>>(),
                },
            ],
        }),
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            "google.protobuf.Duration" => {
                json!({"type": "string", "pattern": rules::duration_pattern(true)})
            }
            "google.protobuf.Value" => json!({}),
            "google.protobuf.Struct" => json!({"type": "object"}),
            "google.protobuf.ListValue" => json!({"type": "array"}),
            _ => {
                if !pending.iter().any(|m| m.full_name() == message.full_name()) {
                    pending.push(message.clone());
                }
                json!({"$ref": format!("#/components/schemas/{}", schema_name(&message))})
            }
        },
    }
}

fn message_schema(message: &MessageDescriptor, pending: &mut Pending) -> Value {
    body_schema(message, |_| false, |_| false, pending)
}

/// proto3 JSON reads `null` as a field left out (a `google.protobuf.Value` holds it as a value).
fn nullable(schema: Value) -> Value {
    if schema.as_object().is_some_and(Map::is_empty) {
        return schema;
    }
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// A message's schema as a body: fields `elsewhere` (set from the path, whose value wins) keep
/// their type but not their rules and are never required; fields `omitted` are not listed.
/// Required are the fields whose absence (their zero value, in proto3 JSON) breaks a rule;
/// at most one member of a oneof may be given (with `(buf.validate.oneof).required`, one
/// must); unknown fields are refused, as the server refuses them (the lowerCamelCase JSON names
/// are taken too, and said so in the document's description).
fn body_schema(
    message: &MessageDescriptor,
    elsewhere: impl Fn(&str) -> bool,
    omitted: impl Fn(&str) -> bool,
    pending: &mut Pending,
) -> Value {
    let file = message.parent_file();
    let mut properties = Map::new();
    let mut required: Vec<String> = Vec::new();
    for field in message.fields() {
        if omitted(field.name()) {
            continue;
        }
        let mut schema = if elsewhere(field.name()) {
            nullable(kind_schema(&field, pending))
        } else if rules::zero_is_valid(&field) {
            nullable(field_schema(&field, pending))
        } else {
            required.push(field.name().to_owned());
            field_schema(&field, pending)
        };
        if let (Some(text), Some(object)) = (
            pending.comments.at(file.name(), field.path()),
            schema.as_object_mut(),
        ) {
            object.insert("description".into(), Value::String(text));
        }
        properties.insert(field.name().to_owned(), schema);
    }
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    let Some(object) = schema.as_object_mut() else {
        return schema;
    };
    if !required.is_empty() {
        object.insert("required".into(), json!(required));
    }
    let oneofs: Vec<Value> = message
        .oneofs()
        .filter(|oneof| !oneof.is_synthetic())
        .flat_map(|oneof| {
            let members: Vec<String> = oneof
                .fields()
                .map(|field| field.name().to_owned())
                .filter(|name| !omitted(name))
                .collect();
            let mut pairs = Vec::new();
            for (index, first) in members.iter().enumerate() {
                for second in &members[index + 1..] {
                    pairs.push(json!({"required": [first, second]}));
                }
            }
            let mut constraints = Vec::new();
            if !pairs.is_empty() {
                constraints.push(json!({"not": {"anyOf": pairs}}));
            }
            if rules::oneof_required(&oneof) {
                // Given as `null`, a member is unset, unless it holds any JSON value.
                let any: Vec<Value> = oneof
                    .fields()
                    .filter(|field| !omitted(field.name()))
                    .map(|field| match field.kind() {
                        Kind::Message(message)
                            if message.full_name() == "google.protobuf.Value" =>
                        {
                            json!({"required": [field.name()]})
                        }
                        _ => json!({
                            "required": [field.name()],
                            "properties": {field.name(): {"not": {"type": "null"}}},
                        }),
                    })
                    .collect();
                constraints.push(json!({"anyOf": any}));
            }
            constraints
        })
        .chain(rules::message_oneofs(message))
        .collect();
    if !oneofs.is_empty() {
        object.insert("allOf".into(), Value::Array(oneofs));
    }
    if let Some(text) = pending.comments.at(file.name(), message.path()) {
        object.insert("description".into(), Value::String(text));
    }
    schema
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "An RFC 9457 problem; `reason` is the stable code gRPC clients read from google.rpc.ErrorInfo.",
        "required": ["type", "title", "status", "detail", "reason", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "reason": {"type": "string", "examples": ["STREAM_NOT_FOUND"]},
            "code": {"type": "string", "examples": ["NOT_FOUND"]},
            "request_id": {"type": "string"},
            "violations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "description": {"type": "string"}}
                }
            }
        }
    })
}

/// A scalar query or path parameter's schema (objects are flattened as `a.b`).
fn parameter(name: &str, location: &str, field: &FieldDescriptor, pending: &mut Pending) -> Value {
    let mut schema = field_schema(field, pending);
    if let Kind::Enum(enumeration) = field.kind() {
        with_short_names(&mut schema, &enumeration);
    }
    let mut parameter = json!({
        "name": name,
        "in": location,
        // A query parameter is required when its absence (the field's zero value) breaks a rule.
        "required": location == "path" || !rules::zero_is_valid(field),
        "schema": schema,
    });
    if field.is_list()
        && let Some(object) = parameter.as_object_mut()
    {
        object.insert("explode".into(), Value::Bool(true));
    }
    if let (Some(text), Some(object)) = (
        pending
            .comments
            .at(field.parent_file().name(), field.path()),
        parameter.as_object_mut(),
    ) {
        object.insert("description".into(), Value::String(text));
    }
    parameter
}

/// Adds each value's short name (`last` beside `POLLING_STRATEGY_LAST`) to an enum parameter's
/// schema (or its items'), as the transcoder takes them on query strings and paths. Listed in
/// lower case, though any case is taken.
fn with_short_names(schema: &mut Value, enumeration: &prost_reflect::EnumDescriptor) {
    let target = match schema.get_mut("items") {
        Some(items) => items,
        None => schema,
    };
    // By name or by number: the names are the string branch of the `anyOf`.
    let target = if target.get("anyOf").is_some() {
        target
            .get_mut("anyOf")
            .and_then(Value::as_array_mut)
            .and_then(|branches| branches.iter_mut().find(|b| b["type"] == "string"))
    } else {
        Some(target)
    };
    if let Some(Value::Array(names)) = target.and_then(|target| target.get_mut("enum")) {
        let short: Vec<Value> = enumeration
            .values()
            .filter_map(|value| scalars::short_enum_name(enumeration, value.name()))
            .map(Value::String)
            .collect();
        names.extend(short);
    }
}

/// A server stream's answer: Server-Sent Events or NDJSON, one item per gRPC message (see
/// `transcode::render`). OpenAPI 3.1 has no stream type, so each media type's schema is the
/// schema of one item, and the description says so. An SSE item is written as OpenAPI 3.2
/// models events (`event`, `id`, `data`, `retry`), with `data`'s JSON described by
/// `contentSchema`.
fn stream_response(output: &MessageDescriptor, pending: &mut Pending) -> Value {
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let mut events: Vec<Value> = output
        .fields()
        .filter(|field| field.name() != CURSOR_FIELD)
        .map(|field| {
            json!({
                "required": ["event", "data"],
                "properties": {
                    "event": {"const": field.name()},
                    "data": {"contentSchema": field_schema(&field, pending)},
                },
            })
        })
        .collect();
    events.push(json!({
        "required": ["event", "data"],
        "properties": {
            "event": {"const": PROBLEM_EVENT},
            "data": {"contentSchema": problem},
        },
    }));
    events.push(json!({"required": ["retry"], "not": {"required": ["event"]}}));
    let has_cursor = output.get_field_by_name(CURSOR_FIELD).is_some();
    let sse_item = json!({
        "type": "object",
        "description": format!(
            "One Server-Sent Event (the stream is a sequence of them). The first sets `retry` \
             (milliseconds before an EventSource reconnects). Each message is an event named \
             after the field it sets, its JSON in `data`{}. A failure mid-stream is the last \
             event, `{PROBLEM_EVENT}`, whose data is a problem with the request id (an event \
             named `error` would reach EventSource's onerror, which cannot read it).",
            if has_cursor {
                ", its `cursor` as the event id (sent back as `Last-Event-ID`, it resumes right \
                 after the event)"
            } else {
                ""
            }
        ),
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
        "oneOf": events,
    });
    if !pending.iter().any(|m| m.full_name() == output.full_name()) {
        pending.push(output.clone());
    }
    let ndjson_item = json!({
        "description": "One line of the stream (newline-delimited JSON): a message, or, as the \
                        last line after a failure mid-stream, `{\"error\": problem}`.",
        // anyOf: a message's schema leaves room for fields added later, so it would also
        // match the error line, and oneOf would refuse both.
        "anyOf": [
            {"$ref": format!("#/components/schemas/{}", schema_name(output))},
            {
                "type": "object",
                "required": ["error"],
                "properties": {"error": problem},
                "additionalProperties": false,
            },
        ],
    });
    json!({
        "description": "A stream, one item per message as the service sends it: \
                        Server-Sent Events with `Accept: text/event-stream`, newline-delimited \
                        JSON otherwise. OpenAPI 3.1 has no stream type: each media type's \
                        schema describes one item of the stream, not the whole body.",
        "content": {
            "text/event-stream": {"schema": sse_item},
            "application/x-ndjson": {"schema": ndjson_item},
        },
    })
}

/// The whole document.
pub fn document(table: &RouteTable, limits: Limits) -> Value {
    let mut pending = Pending {
        messages: Vec::new(),
        limits,
        comments: Comments::read(),
    };
    let mut paths = Map::new();
    let mut operation_ids: Vec<String> = Vec::new();
    for route in table.routes() {
        let method = &route.method;
        let input = method.input();
        let bound: Vec<&str> = route.template.fields().collect();
        let mut parameters: Vec<Value> = Vec::new();
        for name in &bound {
            if let Ok(field) = super::routes::field_kind_at(&input, name) {
                parameters.push(parameter(name, "path", &field, &mut pending));
            }
        }
        let body_field = match &route.body {
            BodyRule::Field(field) => Some(field.as_str()),
            BodyRule::All | BodyRule::None => None,
        };
        if route.body != BodyRule::All {
            for field in input.fields() {
                let name = field.name();
                // A member of a oneof whose other member the path sets cannot be given too.
                let sibling_bound = field.containing_oneof().is_some_and(|oneof| {
                    !oneof.is_synthetic() && oneof.fields().any(|f| bound.contains(&f.name()))
                });
                if bound.contains(&name)
                    || sibling_bound
                    || body_field == Some(name)
                    || field.is_map()
                    || conditional::openapi_omits(route, name)
                {
                    continue;
                }
                if let Kind::Message(message) = field.kind()
                    && !message.full_name().starts_with("google.protobuf.")
                {
                    continue;
                }
                parameters.push(parameter(name, "query", &field, &mut pending));
            }
        }
        if method.is_server_streaming() && input.get_field_by_name(CURSOR_FIELD).is_some() {
            parameters.push(json!({
                "name": "Last-Event-ID",
                "in": "header",
                "required": false,
                "schema": {"type": "string"},
                "description": format!(
                    "Server-Sent Events: the id of the last event received, which an \
                     EventSource sends when it reconnects; it is the `{CURSOR_FIELD}`, used when \
                     the query gives none. Empty: no cursor."
                ),
            }));
        }

        let base = format!("{}_{}", method.parent_service().name(), method.name());
        let mut operation_id = base.clone();
        let mut n = 2;
        while operation_ids.contains(&operation_id) {
            operation_id = format!("{base}_{n}");
            n += 1;
        }
        operation_ids.push(operation_id.clone());

        let mut operation = Map::new();
        operation.insert("operationId".into(), Value::String(operation_id));
        operation.insert("tags".into(), json!([method.parent_service().name()]));
        if let Some(text) = pending
            .comments
            .at(method.parent_file().name(), method.path())
        {
            // The first sentence, which the proto comments keep short.
            let flat = text.replace('\n', " ");
            let summary = match flat.find(". ") {
                Some(end) => flat[..=end].to_owned(),
                None => flat.clone(),
            };
            operation.insert("summary".into(), Value::String(summary));
            operation.insert("description".into(), Value::String(text));
        }
        // The scope a key from API_KEYS_FILE needs, as the proto declares it.
        if let Some(scope) = required_scope(method) {
            operation.insert("x-required-scope".into(), Value::String(scope.into()));
            let note = format!(
                "Needs scope `{scope}` (API_KEYS_FILE keys) on the stream and topic it names; \
                 without it: 403, reason SCOPE_MISSING."
            );
            let described = match operation.get("description").and_then(Value::as_str) {
                Some(text) => format!("{text}\n\n{note}"),
                None => note,
            };
            operation.insert("description".into(), Value::String(described));
        }
        parameters.extend(conditional::openapi_parameters(route));
        operation.insert("parameters".into(), Value::Array(parameters));
        let request_schema = match &route.body {
            BodyRule::All => Some(body_schema(
                &input,
                |field| bound.contains(&field),
                |field| conditional::openapi_omits(route, field),
                &mut pending,
            )),
            BodyRule::Field(name) => input
                .get_field_by_name(name)
                .map(|f| field_schema(&f, &mut pending)),
            BodyRule::None => None,
        };
        // The server reads no body as `{}`, so a body is required only when `{}` breaks a
        // rule (`:purge`, whose one field is in the path, takes none).
        let body_required = match &route.body {
            BodyRule::All => !rules::empty_is_valid(&input, |field| bound.contains(&field)),
            // Only the named field comes from the body.
            BodyRule::Field(name) => !rules::empty_is_valid(&input, |field| field != name),
            BodyRule::None => false,
        };
        if let Some(schema) = request_schema {
            operation.insert(
                "requestBody".into(),
                json!({"required": body_required, "content": {"application/json": {"schema": schema}}}),
            );
        }
        let output = method.output();
        let mut success = if method.is_server_streaming() {
            stream_response(&output, &mut pending)
        } else if route.success == http::StatusCode::NO_CONTENT {
            json!({"description": "Done; no content."})
        } else {
            let schema = match &route.response_body {
                Some(name) => output
                    .get_field_by_name(name)
                    .map_or(json!({}), |f| field_schema(&f, &mut pending)),
                None => {
                    if !pending.iter().any(|m| m.full_name() == output.full_name()) {
                        pending.push(output.clone());
                    }
                    json!({"$ref": format!("#/components/schemas/{}", schema_name(&output))})
                }
            };
            let mut success = json!({"description": "Success.", "content": {"application/json": {"schema": schema}}});
            if let (Some(created), Some(object)) = (&route.created, success.as_object_mut()) {
                object.insert(
                    "headers".into(),
                    json!({"Location": {
                        "description": format!(
                            "The created resource's path, {} (the new one named by its id).",
                            created.template()
                        ),
                        "required": true,
                        "schema": {"type": "string", "format": "uri-reference"},
                    }}),
                );
            }
            success
        };
        // ETag joins whatever headers the answer already declares (Location on a create).
        if let (Some(Value::Object(etag)), Some(object)) = (
            conditional::openapi_response_headers(route),
            success.as_object_mut(),
        ) {
            match object.get_mut("headers") {
                Some(Value::Object(headers)) => headers.extend(etag),
                _ => {
                    object.insert("headers".into(), Value::Object(etag));
                }
            }
        }
        operation.insert(
            "responses".into(),
            json!({
                route.success.as_u16().to_string(): success,
                "default": {
                    "description": "An error, as a problem.",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                }
            }),
        );
        let path = paths
            .entry(route.template.openapi_path())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(path) = path.as_object_mut() {
            path.insert(
                route.http_method.as_str().to_ascii_lowercase(),
                Value::Object(operation),
            );
        }
    }

    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    while let Some(message) = pending.pop() {
        let name = schema_name(&message);
        if schemas.contains_key(&name) {
            continue;
        }
        let schema = message_schema(&message, &mut pending);
        schemas.insert(name, schema);
    }
    schemas.sort_keys();

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "iggy-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON for Apache Iggy, derived from the gateway's protobuf API. Every route calls the same service as gRPC; errors are application/problem+json. Request rules come from the protos' buf.validate annotations and are enforced alike on every protocol; they are stated here as JSON Schema keywords. Body fields may also be given by their lowerCamelCase JSON names. Query parameters that name no field of the request are ignored (a cache-buster such as `_=1712345`), unless the gateway runs with REST_STRICT_QUERY=true, which answers them with 400 naming the parameter; a parameter given twice is a 400 unless its field is repeated. Booleans accept true/false, True/False, TRUE/FALSE, t/f, T/F and 1/0. A request body may be compressed (Content-Encoding: gzip, zstd or br; another coding is a 415); MAX_REQUEST_BODY_SIZE applies to what it inflates to (413). Answers of a kilobyte or more are compressed as Accept-Encoding asks.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
