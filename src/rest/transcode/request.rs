//! The request half of the transcoder: the protobuf request message a REST call becomes, built
//! from its JSON body, path variables and query string by proto3 JSON rules. The body's shape is
//! measured and charged to the call's memory budget before anything is parsed, then inspected
//! against the message; every refusal is a 400 whose violation names the field as the client
//! wrote it (`partitionsCount`, `messages[2].headers[h].int64_value`, a query parameter).

use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
};
use serde_json::{Map, Value};

use crate::{
    answer::Problem,
    budget::{self, Exhausted},
    rest::{
        conditional,
        routes::{BodyRule, Route},
        scalars,
        shape::{self, Expect, ShapeRefusal},
        template::{self, Bindings},
    },
};

/// How strictly the query string is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Parameters that name no field are ignored (cache-busters, tracking parameters), as
    /// grpc-gateway does.
    Lenient,
    /// Parameters that name no field are refused (`REST_STRICT_QUERY`).
    Strict,
}

/// What a REST call's request becomes.
pub(super) enum Built {
    /// The request message, parsed by the descriptors.
    Message(DynamicMessage),
    /// A `body: "*"` JSON object, measured, charged and inspected, left for the method's typed
    /// codec; the path and query fields (and `If-Match` as the `etag`), none of which the body
    /// sets, encoded to merge over it; and what the typed request was charged (given back if
    /// the descriptors parse it instead).
    Json {
        body: Bytes,
        overlay: Vec<u8>,
        charged: usize,
        /// For a create: the path and query fields as a message, which hold every field its
        /// `Location` is filled from (the create's path variables: `routes::location`).
        location: Option<DynamicMessage>,
    },
}

/// The request message: the body, then path variables and the query string laid over it (the
/// path wins over the same field in the body, as in google.api.http).
///
/// A `body: "*"` body (the common case, and the large one) is parsed straight into the message;
/// the path and query fields are parsed on their own and laid over it. Other bodies, and bodies
/// with scalars to respell, go through a JSON tree first. With `typed` (the caller has the
/// method's typed codec), a `body: "*"` object whose fields the parameters do not meet is
/// left unparsed ([`Built::Json`]).
#[allow(clippy::too_many_arguments, reason = "the parts of one REST request")]
pub(super) fn request_message(
    route: &Route,
    bindings: Bindings,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    last_event_id: Option<&str>,
    strictness: Query,
    typed: bool,
) -> Result<Built, Problem> {
    let input = route.method.input();
    let parsed = body_message(route, headers, body, typed)?;
    let mut overlay = parameters(route, bindings, query, strictness)?;
    let mut message = match parsed {
        Body::Parsed(message) => message,
        Body::Inspected(top_fields, charged) => {
            let meets = |name: &String| {
                input
                    .get_field_by_name(name)
                    .is_some_and(|field| top_fields.contains(&field.number()))
            };
            // Taken by `if_match_laid_over` already: this lays it over.
            conditional::if_match_as_etag(route, headers, None, &mut overlay)?;
            if !overlay.keys().any(meets) {
                // Parsed alone, as each parameter already was (a string field of the request
                // takes any text); merged over the body field by field, which is laying over
                // when the two share none. Top-level strings (a send's stream and topic) are
                // written as protobuf straight away.
                if route.created.is_none()
                    && let Some(fields) = plain_strings(&input, &overlay)
                {
                    return Ok(Built::Json {
                        body: body.clone(),
                        overlay: fields,
                        charged,
                        location: None,
                    });
                }
                let fields = if overlay.is_empty() {
                    DynamicMessage::new(input)
                } else {
                    DynamicMessage::deserialize_with_options(
                        input,
                        Value::Object(overlay),
                        &deny_unknown(),
                    )
                    .map_err(|err| Problem::invalid_field("query", err.to_string()))?
                };
                return Ok(Built::Json {
                    body: body.clone(),
                    overlay: fields.encode_to_vec(),
                    charged,
                    location: route.created.is_some().then_some(fields),
                });
            }
            budget::give_back(charged);
            parse_inspected(&input, body)?
        }
    };
    // SSE clients resume by sending the last event id back: it is the cursor, and it wins
    // over a `cursor` in the query, since an EventSource reconnects to the URL it was opened
    // with (the cursor it started from) and sends the newest id it has seen.
    if let Some(last_event_id) = last_event_id
        && let Some(cursor) = input.get_field_by_name("cursor")
        && !message.has_field(&cursor)
    {
        overlay.insert("cursor".into(), Value::String(last_event_id.to_owned()));
    }
    // `If-Match` is the request's `etag` field, wherever the request has one (AIP-154).
    conditional::if_match_as_etag(route, headers, Some(&message), &mut overlay)?;
    if overlay.is_empty() {
        return Ok(Built::Message(message));
    }
    let overlay = Value::Object(overlay);
    // Each parameter parsed alone already; together they parse too.
    let fields = DynamicMessage::deserialize_with_options(input, &overlay, &deny_unknown())
        .map_err(|err| Problem::invalid_field("query", err.to_string()))?;
    if let Value::Object(overlay) = &overlay {
        lay_over(&mut message, &fields, overlay);
    }
    Ok(Built::Message(message))
}

impl Built {
    /// The request message, parsing a [`Built::Json`] one by the descriptors.
    pub(super) fn into_message(self, route: &Route) -> Result<DynamicMessage, Problem> {
        match self {
            Self::Message(message) => Ok(message),
            Self::Json {
                body,
                overlay,
                charged,
                ..
            } => untyped(route, &body, &overlay, charged),
        }
    }
}

/// A [`Built::Json`] request parsed by the descriptors after all: what the typed codec
/// refused is accepted here or refused naming the field, as any body is.
pub(super) fn untyped(
    route: &Route,
    body: &Bytes,
    overlay: &[u8],
    charged: usize,
) -> Result<DynamicMessage, Problem> {
    let mut message = untyped_json(&route.method.input(), body, charged)?;
    message
        .merge(overlay)
        .map_err(|err| Problem::invalid_field("query", err.to_string()))?;
    Ok(message)
}

/// A JSON object left to the typed codec (inspected, `charged` for its typed request) that the
/// codec refused, parsed by the descriptors instead: accepted, or refused naming the field.
pub(crate) fn untyped_json(
    input: &MessageDescriptor,
    body: &Bytes,
    charged: usize,
) -> Result<DynamicMessage, Problem> {
    // The dynamic message is charged by the call instead, as any is.
    budget::give_back(charged);
    parse_inspected(input, body)
}

fn deny_unknown() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(true)
}

/// A request body: parsed, or (for a typed codec) measured, charged and inspected only, with
/// the numbers of the fields it sets.
enum Body {
    Parsed(DynamicMessage),
    /// The fields the body sets, and what its typed request was charged.
    Inspected(Vec<u32>, usize),
}

/// The body as the request message (an empty message when there is no body).
fn body_message(
    route: &Route,
    headers: &HeaderMap,
    body: &Bytes,
    typed: bool,
) -> Result<Body, Problem> {
    let input = route.method.input();
    if body.is_empty() {
        return Ok(Body::Parsed(DynamicMessage::new(input)));
    }
    let (expect, prefix) = match &route.body {
        BodyRule::None => {
            return Err(Problem::invalid_field(
                "body",
                format!(
                    "{} {} takes no request body",
                    route.http_method, route.template
                ),
            ));
        }
        BodyRule::All => (Expect::Message(input.clone()), None),
        BodyRule::Field(name) => {
            let field = input.get_field_by_name(name).ok_or_else(|| {
                Problem::invalid_field(name.clone(), "is not a field of the request")
            })?;
            (Expect::of_field(&field), Some(name.as_str()))
        }
    };
    check_json_content(headers)?;
    let inspection = inspect(body, &expect, prefix)?;
    if typed
        && route.body == BodyRule::All
        && inspection
            .as_ref()
            .is_some_and(|(found, _)| if_match_laid_over(route, headers, &found.top_fields))
        && let Some(typed_cost) = charge_typed(body, inspection.as_ref())?
        && let Some((inspection, _)) = &inspection
    {
        return Ok(Body::Inspected(inspection.top_fields.clone(), typed_cost));
    }
    let respell = inspection.is_some_and(|(inspection, _)| inspection.respell);
    parse_json(&input, &route.body, respell, body).map(Body::Parsed)
}

/// Whether `If-Match` (if any) can be laid over a typed body as its `etag`, as a parameter
/// is: the body gives no etag of its own and the header is one the request takes. Otherwise
/// the descriptors parse the body first and the header is read after it, as for any body, so
/// a bad body is named before a bad header and neither is refused by the typed message's
/// charge first.
fn if_match_laid_over(route: &Route, headers: &HeaderMap, top_fields: &[u32]) -> bool {
    !headers.contains_key(header::IF_MATCH)
        || (!conditional::body_sets_etag(&route.method.input(), top_fields)
            && conditional::if_match_as_etag(route, headers, None, &mut Map::new()).is_ok())
}

/// When the typed codec may read an inspected body (a JSON object with nothing to respell or
/// to leave to the descriptors), charges what its typed request will hold before it is built:
/// a struct per value (the decoder's 256 bytes a message, with the values' own charge), and
/// its strings and payloads, never longer than the body's text of them. Returns the charge, to
/// be given back if the typed codec refuses the body and the descriptors parse it instead.
fn charge_typed(
    body: &[u8],
    inspection: Option<&(shape::Inspection, usize)>,
) -> Result<Option<usize>, Problem> {
    let Some((inspection, values)) = inspection else {
        return Ok(None);
    };
    if inspection.respell || inspection.needs_descriptors || !starts_an_object(body) {
        return Ok(None);
    }
    let typed_cost = values
        .saturating_mul(shape::JSON_VALUE_COST)
        .saturating_add(body.len());
    charge(typed_cost, "the request's message")?;
    Ok(Some(typed_cost))
}

/// The parameters as protobuf when each sets a singular `string` field of the request itself:
/// the fields the descriptors would set once merged (an empty string is written, where the
/// descriptors leave an unset field, which merges the same over a body that does not set
/// it); `None` for anything else.
fn plain_strings(input: &MessageDescriptor, overlay: &Map<String, Value>) -> Option<Vec<u8>> {
    let mut wire = Vec::new();
    for (name, value) in overlay {
        let field = input.get_field_by_name(name)?;
        let (Kind::String, false, false, Value::String(text)) =
            (field.kind(), field.is_list(), field.is_map(), value)
        else {
            return None;
        };
        prost::encoding::string::encode(field.number(), text, &mut wire);
    }
    Some(wire)
}

fn starts_an_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// What a whole request message from JSON becomes (the Connect protocol's JSON codec).
pub(crate) enum JsonRequest {
    /// Left for the method's typed codec (`Input::Json`), charged what its typed request will
    /// hold; given back by [`untyped_json`] if the codec refuses it.
    Typed { charged: usize },
    /// Parsed by the descriptors: a body the typed codec is not given.
    Parsed(DynamicMessage),
}

/// A whole request message from a JSON body by the rules REST bodies follow (measured and
/// charged first, fields named in every refusal), left for the method's typed codec (when
/// `typed`) where REST's direct calls would leave it to theirs.
pub(crate) fn json_request(
    input: &MessageDescriptor,
    body: &Bytes,
    typed: bool,
) -> Result<JsonRequest, Problem> {
    if body.is_empty() {
        return Ok(JsonRequest::Parsed(DynamicMessage::new(input.clone())));
    }
    let inspection = inspect(body, &Expect::Message(input.clone()), None)?;
    if typed && let Some(charged) = charge_typed(body, inspection.as_ref())? {
        return Ok(JsonRequest::Typed { charged });
    }
    let respell = inspection.is_some_and(|(inspection, _)| inspection.respell);
    parse_json(input, &BodyRule::All, respell, body).map(JsonRequest::Parsed)
}

/// Parses a JSON body (already inspected) that `rule` says holds the whole message or one
/// field of it.
fn parse_json(
    input: &MessageDescriptor,
    rule: &BodyRule,
    respell: bool,
    body: &Bytes,
) -> Result<DynamicMessage, Problem> {
    if *rule == BodyRule::All && !respell {
        return parse_inspected(input, body);
    }
    let mut tree = match (rule, serde_json::from_slice(body)) {
        (_, Err(err)) => return Err(malformed_json(&err)),
        (BodyRule::Field(name), Ok(value)) => {
            Value::Object(Map::from_iter([(name.clone(), value)]))
        }
        (_, Ok(object @ Value::Object(_))) => object,
        (_, Ok(_)) => return Err(Problem::invalid_field("body", "must be a JSON object")),
    };
    if respell {
        shape::respell(&mut tree, &Expect::Message(input.clone()));
    }
    DynamicMessage::deserialize_with_options(input.clone(), &tree, &deny_unknown()).map_err(|err| {
        match tree.as_object() {
            Some(fields) => locate(input, fields, &err),
            None => Problem::invalid_field("body", without_position(&err.to_string())),
        }
    })
}

/// A whole message from an inspected JSON body with nothing to respell, parsed straight from
/// the bytes; a refusal names the field the parser choked on.
fn parse_inspected(input: &MessageDescriptor, body: &Bytes) -> Result<DynamicMessage, Problem> {
    if !starts_an_object(body) {
        return Err(Problem::invalid_field("body", "must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed =
        DynamicMessage::deserialize_with_options(input.clone(), &mut deserializer, &deny_unknown())
            .and_then(|message| deserializer.end().map(|()| message));
    match parsed {
        Ok(message) => Ok(message),
        Err(err) if err.classify() == serde_json::error::Category::Data => {
            // The parser names no field: find the one it choked on.
            let tree: Value = serde_json::from_slice(body).map_err(|err| malformed_json(&err))?;
            match tree {
                Value::Object(object) => Err(locate(input, &object, &err)),
                _ => Err(Problem::invalid_field("body", "must be a JSON object")),
            }
        }
        Err(err) => Err(malformed_json(&err)),
    }
}

/// Measures the body and charges it to the call's memory budget, then inspects it against the
/// message; `None` when it is not JSON at all.
fn inspect(
    body: &[u8],
    expect: &Expect,
    prefix: Option<&str>,
) -> Result<Option<(shape::Inspection, usize)>, Problem> {
    // One walk measures, charges and inspects: the budget pays for each block of values before
    // they are walked, so the keys the inspection keeps are always paid for. What it charged
    // ahead is given back at the end.
    let mut charged = 0usize;
    let walked = shape::inspect(body, expect, prefix, &mut |values| {
        let bytes = values.saturating_mul(shape::JSON_VALUE_COST);
        let paid = matches!(budget::charge(bytes), None | Some(Ok(())));
        if paid {
            charged += bytes;
        }
        paid
    });
    if let Ok(walked) = walked
        && walked.finished
    {
        budget::give_back(
            charged.saturating_sub(walked.values.saturating_mul(shape::JSON_VALUE_COST)),
        );
        return Ok(Some((walked.found, walked.values)));
    }
    // Anything else (malformed, too deep, refused, over the budget) is answered as it always
    // was, in order: measured alone, allocating nothing; charged whole; then inspected.
    budget::give_back(charged);
    let values = match shape::count_values(body) {
        Err(ShapeRefusal::Malformed) => return Ok(None),
        Err(refusal @ ShapeRefusal::TooDeep) => {
            return Err(Problem::invalid_field("body", refusal.to_string()));
        }
        Ok(values) => values,
    };
    charge(
        values.saturating_mul(shape::JSON_VALUE_COST),
        &format!("the request body holds {values} JSON values"),
    )?;
    shape::inspect(body, expect, prefix, &mut |_| true)
        .map(|walked| Some((walked.found, values)))
        .map_err(|refusal| Problem::invalid_field(refusal.field, refusal.reason))
}

/// Charges `bytes` to the call's memory budget: 413 when the call could never fit, 503 (retry)
/// while other calls hold the budget.
fn charge(bytes: usize, what: &str) -> Result<(), Problem> {
    match budget::charge(bytes) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(exhausted @ Exhausted::Never { .. })) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("{what}: {exhausted}"),
        )),
        Some(Err(exhausted @ Exhausted::Busy { .. })) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            exhausted.to_string(),
        )
        .with_retry_after(1)),
    }
}

/// The field of `message` a JSON key names: its JSON name or its proto name.
fn field_named(message: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_json_name(key)
        .or_else(|| message.get_field_by_name(key))
}

/// The problem for a body the parser refused: the deepest field whose value alone fails to
/// parse, as the client wrote it; the whole body when no one field does.
fn locate(
    message: &MessageDescriptor,
    object: &Map<String, Value>,
    err: &impl std::fmt::Display,
) -> Problem {
    match failing_field(message, object) {
        Some((field, reason)) => Problem::invalid_field(field, reason),
        None => Problem::invalid_field("body", without_position(&err.to_string())),
    }
}

/// The first field of `object` whose value does not parse alone, with why; inside a message,
/// a list or a map, the value within it that does not. Lists and maps are looked at item by
/// item, so a large one is never copied whole.
fn failing_field(
    message: &MessageDescriptor,
    object: &Map<String, Value>,
) -> Option<(String, String)> {
    object.iter().find_map(|(key, value)| {
        let Some(field) = field_named(message, key) else {
            return Some((key.clone(), "unknown field".to_owned()));
        };
        let whole = || {
            parse_alone(message, key, value.clone())
                .err()
                .map(|detail| (key.clone(), describe(&field, true, &detail)))
        };
        match (value, field.kind()) {
            (Value::Array(items), _) if field.is_list() => {
                items.iter().enumerate().find_map(|(index, item)| {
                    let alone = Value::Array(vec![item.clone()]);
                    item_failure(message, key, alone, &field, item)
                        .map(|(path, reason)| (format!("{key}[{index}]{path}"), reason))
                })
            }
            (Value::Object(entries), Kind::Message(entry)) if field.is_map() => {
                let value_field = entry.map_entry_value_field();
                entries.iter().find_map(|(name, item)| {
                    let alone = Value::Object(Map::from_iter([(name.clone(), item.clone())]));
                    item_failure(message, key, alone, &value_field, item)
                        .map(|(path, reason)| (format!("{key}[{name}]{path}"), reason))
                })
            }
            (Value::Object(fields), Kind::Message(inner))
                if !field.is_list() && !field.is_map() && Expect::is_plain_message(&inner) =>
            {
                failing_field(&inner, fields)
                    .map(|(path, reason)| (format!("{key}.{path}"), reason))
                    .or_else(whole)
            }
            _ => whole(),
        }
    })
}

/// Why one item of a list or map fails (`alone`: the field holding just that item), with the
/// path within the item (`""`, or `.a.b` inside a message).
fn item_failure(
    message: &MessageDescriptor,
    key: &str,
    alone: Value,
    item_field: &FieldDescriptor,
    item: &Value,
) -> Option<(String, String)> {
    let detail = parse_alone(message, key, alone).err()?;
    if let (Kind::Message(inner), Value::Object(fields)) = (item_field.kind(), item)
        && Expect::is_plain_message(&inner)
        && let Some((path, reason)) = failing_field(&inner, fields)
    {
        return Some((format!(".{path}"), reason));
    }
    Some((String::new(), describe(item_field, false, &detail)))
}

/// Parses `{key: value}` into `message`; the parser's complaint if it fails.
fn parse_alone(message: &MessageDescriptor, key: &str, value: Value) -> Result<(), String> {
    let object = Value::Object(Map::from_iter([(key.to_owned(), value)]));
    DynamicMessage::deserialize_with_options(message.clone(), &object, &deny_unknown())
        .map(drop)
        .map_err(|err| without_position(&err.to_string()))
}

/// serde_json's " at line 1 column 35", which says nothing once the field is named.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => message[..at].to_owned(),
        _ => message.to_owned(),
    }
}

/// Why a value does not fit its field: what the field takes, and the parser's own words.
/// `whole` when the value is the field's whole value (a list or map), not one item of it.
fn describe(field: &FieldDescriptor, whole: bool, detail: &str) -> String {
    let expected = if whole && field.is_map() {
        "a JSON object".to_owned()
    } else if whole && field.is_list() {
        "a JSON array".to_owned()
    } else {
        expected(&field.kind())
    };
    format!("must be {expected} ({detail})")
}

fn expected(kind: &Kind) -> String {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit integer".to_owned(),
        Kind::Uint32 | Kind::Fixed32 => "a 32-bit unsigned integer".to_owned(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit integer".to_owned(),
        Kind::Uint64 | Kind::Fixed64 => "a 64-bit unsigned integer".to_owned(),
        Kind::Double | Kind::Float => "a number".to_owned(),
        Kind::Bool => "true or false".to_owned(),
        Kind::String => "a string".to_owned(),
        Kind::Bytes => "base64 text".to_owned(),
        Kind::Enum(values) => format!(
            "one of {} or its number",
            values
                .values()
                .map(|value| value.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Timestamp" => {
                "an RFC 3339 time such as 2026-01-01T00:00:00Z".to_owned()
            }
            "google.protobuf.Duration" => "seconds with an s, such as 1.5s".to_owned(),
            "google.protobuf.Value" => "a JSON value".to_owned(),
            "google.protobuf.ListValue" => "a JSON array".to_owned(),
            _ => "a JSON object".to_owned(),
        },
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
        let nested = matches!(field.kind(), Kind::Message(m) if Expect::is_plain_message(&m))
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

/// A parameter resolved against the request message.
struct Resolved {
    /// The dotted path in proto names, whatever names the client used.
    path: String,
    field: FieldDescriptor,
}

/// Resolves a dotted field path (`a.b.c`, proto or JSON names at each step).
fn resolve(message: &MessageDescriptor, path: &str) -> Option<Resolved> {
    let mut current = message.clone();
    let mut proto_path = Vec::new();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = field_named(&current, step)?;
        proto_path.push(field.name().to_owned());
        if steps.peek().is_none() {
            return Some(Resolved {
                path: proto_path.join("."),
                field,
            });
        }
        current = match field.kind() {
            Kind::Message(next) if !field.is_list() && !field.is_map() => next,
            _ => return None,
        };
    }
    None
}

/// Path variables and query parameters as one proto3 JSON object (proto names). Each value is
/// parsed alone first (but a string field of the request, which takes any text), so a bad one
/// is refused naming its parameter; a field is set once (a list field takes a value per
/// parameter), and one member of a oneof at most.
pub(super) fn parameters(
    route: &Route,
    bindings: Bindings,
    query: Option<&str>,
    strictness: Query,
) -> Result<Map<String, Value>, Problem> {
    let input = route.method.input();
    let mut overlay = Overlay {
        input: &input,
        root: Map::new(),
        set: Vec::new(),
    };
    let mut bound = Vec::new();
    for (name, raw) in bindings {
        let value = template::decode(&raw)
            .map_err(|bad| Problem::invalid_field(name.clone(), bad.to_string()))?;
        let resolved = resolve(&input, &name)
            .ok_or_else(|| Problem::invalid_field(name.clone(), "is not a field of the request"))?;
        bound.push(resolved.path.clone());
        overlay.add(&name, &resolved, &value)?;
    }

    for (raw_key, raw_value) in query_pairs(query.unwrap_or("")) {
        let key = match decode_query(raw_key) {
            Ok(key) if !key.is_empty() => key,
            Ok(_) => continue,
            Err(bad) => match strictness {
                Query::Strict => {
                    return Err(Problem::invalid_field(
                        "query",
                        format!("a parameter name {bad}"),
                    ));
                }
                Query::Lenient => continue,
            },
        };
        let Some(resolved) = resolve(&input, &key) else {
            match strictness {
                Query::Strict => {
                    return Err(Problem::invalid_field(key, "unknown query parameter"));
                }
                Query::Lenient => continue,
            }
        };
        let in_body = match &route.body {
            BodyRule::All => true,
            BodyRule::Field(field) => {
                resolved.path == *field || resolved.path.starts_with(&format!("{field}."))
            }
            BodyRule::None => false,
        };
        if in_body || bound.contains(&resolved.path) {
            return Err(Problem::invalid_field(
                key,
                "is set by the path or the body, not the query string",
            ));
        }
        if resolved.field.is_map() {
            return Err(Problem::invalid_field(
                key,
                "map fields cannot be set from the query string",
            ));
        }
        let value = decode_query(raw_value)
            .map_err(|bad| Problem::invalid_field(key.clone(), bad.to_string()))?;
        overlay.add(&key, &resolved, &value)?;
    }
    Ok(overlay.root)
}

/// `a=1&b=2` split into raw (still encoded) names and values; empty pieces skipped.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| piece.split_once('=').unwrap_or((piece, "")))
}

/// A query name or value decoded as HTML forms encode it: `+` is a space, `%XX` a byte, and a
/// bad escape is refused rather than kept as written or replaced.
fn decode_query(raw: &str) -> Result<String, template::BadEscape> {
    if raw.contains('+') {
        template::decode(&raw.replace('+', " "))
    } else {
        template::decode(raw)
    }
}

/// The path and query fields gathered so far.
struct Overlay<'a> {
    input: &'a MessageDescriptor,
    root: Map<String, Value>,
    /// Each field set, by proto path, with the name the client used for it.
    set: Vec<(String, String)>,
}

impl Overlay<'_> {
    /// Adds `name=value` (`name` as the client wrote it) after parsing it alone (a string
    /// field of the request takes any text, so it is not).
    fn add(&mut self, name: &str, resolved: &Resolved, value: &str) -> Result<(), Problem> {
        let field = &resolved.field;
        if !field.is_list() && self.set.iter().any(|(path, _)| *path == resolved.path) {
            return Err(Problem::invalid_field(
                name,
                "is given more than once; it takes one value",
            ));
        }
        if let Some(oneof) = field.containing_oneof() {
            let parent = resolved
                .path
                .rsplit_once('.')
                .map_or("", |(parent, _)| parent);
            let other = self.set.iter().find(|(path, _)| {
                path.rsplit_once('.').map_or("", |(parent, _)| parent) == parent
                    && path != &resolved.path
                    && resolve(self.input, path)
                        .and_then(|other| other.field.containing_oneof())
                        .is_some_and(|other| other == oneof)
            });
            if let Some((_, other)) = other {
                return Err(Problem::invalid_field(
                    name,
                    format!(
                        "conflicts with {other}: set one of {}",
                        oneof
                            .fields()
                            .map(|f| f.name().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let json = scalar_json(field, name, value)?;
        // A string field of the request takes any string: only other kinds (and fields within
        // other messages, well-known types among them) can be refused alone.
        if field.kind() != Kind::String || resolved.path.contains('.') {
            let mut alone = Map::new();
            set_path(&mut alone, &resolved.path, json.clone(), field.is_list());
            DynamicMessage::deserialize_with_options(
                self.input.clone(),
                &Value::Object(alone),
                &deny_unknown(),
            )
            .map_err(|err| {
                Problem::invalid_field(
                    name,
                    describe(field, false, &without_position(&err.to_string())),
                )
            })?;
        }
        set_path(&mut self.root, &resolved.path, json, field.is_list());
        self.set.push((resolved.path.clone(), name.to_owned()));
        Ok(())
    }
}

/// A path or query value as the JSON proto3 parsing expects it: bools and floats as JSON
/// values, everything else (integers, enums, strings, Timestamps, Durations) as a string, in
/// the spellings `scalars` settles.
fn scalar_json(field: &FieldDescriptor, name: &str, value: &str) -> Result<Value, Problem> {
    let kind = field.kind();
    Ok(match Expect::of_field(field) {
        Expect::List(item) | Expect::Map(item) => item_json(&item, &kind, name, value)?,
        expect => item_json(&expect, &kind, name, value)?,
    })
}

fn item_json(expect: &Expect, kind: &Kind, name: &str, value: &str) -> Result<Value, Problem> {
    Ok(match (expect, kind) {
        (_, Kind::Bool) => Value::Bool(scalars::boolean(value).ok_or_else(|| {
            Problem::invalid_field(
                name,
                "must be true or false (also True, TRUE, t, 1; False, FALSE, f, 0)",
            )
        })?),
        (Expect::Integer, _) => {
            Value::String(scalars::integer(value).unwrap_or_else(|| value.to_owned()))
        }
        (Expect::Timestamp, _) => Value::String(
            scalars::timestamp(value)
                .map_err(|reason| Problem::invalid_field(name, reason))?
                .unwrap_or_else(|| value.to_owned()),
        ),
        (Expect::Duration, _) => {
            scalars::duration(value).map_err(|reason| Problem::invalid_field(name, reason))?;
            Value::String(value.to_owned())
        }
        // Enums are names (full or short, any case) or numbers; a number must reach the parser
        // as a JSON number, a name as the canonical one.
        (_, Kind::Enum(enumeration)) => match value.parse::<i32>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::String(
                scalars::enum_value(enumeration, value).unwrap_or_else(|| value.to_owned()),
            ),
        },
        (_, Kind::Double | Kind::Float) => value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(value.to_owned()), Value::Number),
        (Expect::Message(_), _) => {
            return Err(Problem::invalid_field(
                name,
                "a message field cannot be set from a single value; name one of its fields (a.b=c)",
            ));
        }
        _ => Value::String(value.to_owned()),
    })
}

/// Sets `a.b.c` (proto names) in a JSON object tree, creating the objects on the way; a list
/// field gathers its values.
pub(super) fn set_path(root: &mut Map<String, Value>, path: &str, value: Value, list: bool) {
    let mut current = root;
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        if steps.peek().is_none() {
            if list {
                if let Value::Array(items) = current
                    .entry(step)
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    items.push(value);
                }
            } else {
                current.insert(step.to_owned(), value);
            }
            return;
        }
        let entry = current
            .entry(step)
            .or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(object) => object,
            // A scalar set at a parent path: `add` parsed this path alone and found it a
            // message, so the parent cannot be a scalar; leave the value out.
            _ => return,
        };
    }
}
