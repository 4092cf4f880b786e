//! Protobuf <-> broker types: parsing and validating what clients send, and shaping what the
//! broker returns. Every validation failure names the request field it is about.

use std::fmt;

use bytes::Bytes;
use pbjson_types::{Duration, Timestamp, value::Kind};
use tonic::Status;

use crate::{
    answer::invalid_field,
    broker::{
        Compression, ETag, HeaderValue, Headers, Identifier, Name, PartitionInfo, StoredMessage,
        StreamInfo, TopicInfo, TopicRef,
    },
    proto,
};

/// The header that records a message body's form (JSON or text), so a poll returns the body
/// the way it was sent; absent for raw bytes. Clients may not set it themselves.
pub const BODY_FORM_HEADER: &str = "gateway-body";
const BODY_JSON: &str = "json";
const BODY_TEXT: &str = "text";

pub fn identifier(field: &str, value: &str) -> Result<Identifier, Status> {
    Identifier::parse(value).map_err(|reason| invalid_field(field, reason))
}

pub fn name(field: &str, value: &str) -> Result<Name, Status> {
    Name::parse(value).map_err(|reason| invalid_field(field, reason))
}

/// The etag a conditional change expects (AIP-154); empty means the change is unconditional.
pub fn expected_etag(value: &str) -> Option<ETag> {
    ETag::given(value)
}

pub fn topic_ref(stream: &str, topic: &str) -> Result<TopicRef, Status> {
    Ok(TopicRef {
        stream: identifier("stream", stream)?,
        topic: identifier("topic", topic)?,
    })
}

pub fn timestamp(micros: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        // Below 1e9, so it fits.
        nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
    }
}

pub fn timestamp_micros(field: &str, value: &Timestamp) -> Result<u64, Status> {
    if value.seconds < 0 || !(0..1_000_000_000).contains(&value.nanos) {
        return Err(invalid_field(
            field,
            "must be a time after 1970-01-01T00:00:00Z",
        ));
    }
    let seconds = u64::try_from(value.seconds).unwrap_or(0);
    let nanos = u64::try_from(value.nanos).unwrap_or(0);
    seconds
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(nanos.div_ceil(1_000)))
        .ok_or_else(|| invalid_field(field, "is too far in the future"))
}

pub fn duration(micros: u64) -> Duration {
    Duration {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
    }
}

/// A duration in microseconds; zero means "none" and comes back as `None`.
pub fn duration_micros(field: &str, value: &Duration) -> Result<Option<u64>, Status> {
    if value.seconds < 0 || value.nanos < 0 {
        return Err(invalid_field(field, "must not be negative"));
    }
    let seconds = u64::try_from(value.seconds).unwrap_or(0);
    let nanos = u64::try_from(value.nanos).unwrap_or(0);
    // The backend keeps microseconds. A remainder rounds up: cut off, a non-zero duration
    // under one microsecond would turn into "none", the opposite of what was asked.
    let micros = seconds
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(nanos.div_ceil(1_000)))
        .ok_or_else(|| invalid_field(field, "is too long"))?;
    Ok((micros > 0).then_some(micros))
}

pub fn compression_from_proto(value: i32) -> Result<Option<Compression>, Status> {
    match proto::CompressionAlgorithm::try_from(value) {
        Ok(proto::CompressionAlgorithm::Unspecified) => Ok(None),
        Ok(proto::CompressionAlgorithm::None) => Ok(Some(Compression::None)),
        Ok(proto::CompressionAlgorithm::Gzip) => Ok(Some(Compression::Gzip)),
        Err(_) => Err(invalid_field(
            "compression_algorithm",
            format!("unknown value {value}"),
        )),
    }
}

fn compression_to_proto(value: Compression) -> proto::CompressionAlgorithm {
    match value {
        Compression::None => proto::CompressionAlgorithm::None,
        Compression::Gzip => proto::CompressionAlgorithm::Gzip,
    }
}

pub fn stream_to_proto(info: StreamInfo) -> proto::Stream {
    let etag = info.etag().to_string();
    proto::Stream {
        etag,
        id: info.id,
        name: info.name,
        created_at: Some(timestamp(info.created_at_micros)),
        topics_count: info.topics_count,
        size_bytes: info.size_bytes,
        messages_count: info.messages_count,
        topics: info.topics.into_iter().map(topic_to_proto).collect(),
    }
}

pub fn topic_to_proto(info: TopicInfo) -> proto::Topic {
    let etag = info.etag().to_string();
    proto::Topic {
        etag,
        id: info.id,
        name: info.name,
        created_at: Some(timestamp(info.created_at_micros)),
        partitions_count: info.partitions_count,
        message_expiry: info.message_expiry_micros.map(duration),
        max_topic_size_bytes: info.max_topic_size_bytes.unwrap_or(0),
        compression_algorithm: compression_to_proto(info.compression).into(),
        replication_factor: u32::from(info.replication_factor),
        size_bytes: info.size_bytes,
        messages_count: info.messages_count,
        partitions: info
            .partitions
            .into_iter()
            .map(partition_to_proto)
            .collect(),
    }
}

fn partition_to_proto(info: PartitionInfo) -> proto::Partition {
    proto::Partition {
        id: info.id,
        created_at: Some(timestamp(info.created_at_micros)),
        current_offset: info.current_offset,
        size_bytes: info.size_bytes,
        messages_count: info.messages_count,
    }
}

/// A message id from its UUID text form; empty means "assign one" (from `ids`).
pub fn message_id(field: impl fmt::Display, value: &str, ids: &mut Ids) -> Result<u128, Status> {
    if value.is_empty() {
        return Ok(ids.next());
    }
    let id = uuid::Uuid::try_parse(value)
        .map_err(|err| invalid_field(field.to_string(), format!("must be a UUID: {err}")))?;
    if id.is_nil() {
        return Err(invalid_field(
            field.to_string(),
            "must not be the nil UUID (leave it empty to have one assigned)",
        ));
    }
    Ok(id.as_u128())
}

/// The ids the gateway assigns to one request's messages: UUIDv7s, so ids sort by time like
/// Iggy's own. The clock is read once a request and one process-wide counter orders the ids
/// within a millisecond, as `Uuid::now_v7` does; it read the clock and took its lock once an id,
/// a twentieth of a batch's cost.
#[derive(Default)]
pub struct Ids {
    clock: Option<(u64, u32)>,
}

static ID_CONTEXT: std::sync::Mutex<uuid::ContextV7> =
    std::sync::Mutex::new(uuid::ContextV7::new());

impl Ids {
    pub fn next(&mut self) -> u128 {
        let (seconds, nanos) = *self.clock.get_or_insert_with(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (now.as_secs(), now.subsec_nanos())
        });
        let context = ID_CONTEXT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix(&*context, seconds, nanos)).as_u128()
    }
}

pub fn message_id_text(id: u128) -> String {
    uuid::Uuid::from_u128(id).hyphenated().to_string()
}

/// Headers as the broker holds them (`field` names them in a refusal, written out only then).
/// Their rules (at most 64, keys and string or bytes values of 1 to 255 bytes as Iggy holds
/// them, the reserved body-form key, one kind set) are the proto's, checked when the request
/// was decoded.
pub fn headers_from_proto(
    field: impl fmt::Display,
    headers: std::collections::HashMap<String, proto::HeaderValue>,
) -> Result<Headers, Status> {
    headers
        .into_iter()
        .map(|(key, value)| {
            let value = match value.kind {
                Some(proto::header_value::Kind::StringValue(v)) => HeaderValue::String(v),
                Some(proto::header_value::Kind::BytesValue(v)) => HeaderValue::Bytes(v.to_vec()),
                Some(proto::header_value::Kind::Int64Value(v)) => HeaderValue::Int64(v),
                Some(proto::header_value::Kind::Uint64Value(v)) => HeaderValue::Uint64(v),
                Some(proto::header_value::Kind::BoolValue(v)) => HeaderValue::Bool(v),
                Some(proto::header_value::Kind::DoubleValue(v)) => HeaderValue::Double(v),
                None => {
                    return Err(invalid_field(
                        format!("{field}[{key}]"),
                        "header value must set one of its kinds",
                    ));
                }
            };
            Ok((key, value))
        })
        .collect()
}

pub fn headers_to_proto(headers: Headers) -> std::collections::HashMap<String, proto::HeaderValue> {
    headers
        .into_iter()
        .map(|(key, value)| {
            let kind = match value {
                HeaderValue::String(v) => proto::header_value::Kind::StringValue(v),
                HeaderValue::Bytes(v) => proto::header_value::Kind::BytesValue(Bytes::from(v)),
                HeaderValue::Int64(v) => proto::header_value::Kind::Int64Value(v),
                HeaderValue::Uint64(v) => proto::header_value::Kind::Uint64Value(v),
                HeaderValue::Bool(v) => proto::header_value::Kind::BoolValue(v),
                HeaderValue::Double(v) => proto::header_value::Kind::DoubleValue(v),
            };
            (key, proto::HeaderValue { kind: Some(kind) })
        })
        .collect()
}

/// The stored form of a message body: the payload bytes, plus the body-form header for JSON
/// and text. JSON is stored as JSON text, so other Iggy clients can read it as is.
pub fn body_to_payload(
    field: impl fmt::Display,
    body: Option<proto::message::Body>,
    headers: &mut Headers,
) -> Result<Bytes, Status> {
    match body {
        Some(proto::message::Body::Payload(bytes)) => Ok(bytes),
        Some(proto::message::Body::Text(text)) => {
            headers.insert(
                BODY_FORM_HEADER.into(),
                HeaderValue::String(BODY_TEXT.into()),
            );
            Ok(Bytes::from(text))
        }
        Some(proto::message::Body::Json(value)) => {
            let json = value_to_json(&value)
                .map_err(|reason| invalid_field(format!("{field}.json"), reason))?;
            headers.insert(
                BODY_FORM_HEADER.into(),
                HeaderValue::String(BODY_JSON.into()),
            );
            serde_json::to_vec(&json)
                .map(Bytes::from)
                .map_err(|err| invalid_field(format!("{field}.json"), err.to_string()))
        }
        None => Err(invalid_field(
            field.to_string(),
            "must have a body: one of payload, json or text",
        )),
    }
}

/// The body in the form it was sent. A payload whose body-form header does not match its
/// content (written by another client) is returned as raw bytes with its headers untouched.
pub fn payload_to_body(payload: Bytes, headers: &mut Headers) -> proto::polled_message::Body {
    let form = match headers.get(BODY_FORM_HEADER) {
        Some(HeaderValue::String(form)) => form.as_str(),
        _ => return proto::polled_message::Body::Payload(payload),
    };
    let body = match form {
        // JSON too deep to render (stored by another client) comes back as its raw bytes.
        BODY_JSON => serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .filter(|json| json_depth(json) <= MAX_STORED_JSON_DEPTH)
            .map(|json| proto::polled_message::Body::Json(json_to_value(json))),
        BODY_TEXT => std::str::from_utf8(&payload)
            .ok()
            .map(|text| proto::polled_message::Body::Text(text.to_owned())),
        _ => None,
    };
    match body {
        Some(body) => {
            headers.remove(BODY_FORM_HEADER);
            body
        }
        None => proto::polled_message::Body::Payload(payload),
    }
}

/// Deepest nesting of a JSON body, in arrays and objects. Deeper would not survive the way
/// out: each level is two protobuf levels in `google.protobuf.Value`, and decoders stop at 100.
pub const MAX_JSON_DEPTH: usize = 32;

/// Deepest stored JSON read back: an event's envelope holds its data (checked against
/// [`MAX_JSON_DEPTH`] when published) two levels down, so an event that was accepted is also
/// read back. Still well within what decoders take.
pub const MAX_STORED_JSON_DEPTH: usize = MAX_JSON_DEPTH + 2;

pub fn value_to_json(value: &pbjson_types::Value) -> Result<serde_json::Value, String> {
    value_to_json_within(value, MAX_JSON_DEPTH)
}

fn value_to_json_within(
    value: &pbjson_types::Value,
    levels: usize,
) -> Result<serde_json::Value, String> {
    let nested = matches!(value.kind, Some(Kind::ListValue(_) | Kind::StructValue(_)));
    if nested && levels == 0 {
        return Err(format!("is nested deeper than {MAX_JSON_DEPTH} levels"));
    }
    let levels = levels.saturating_sub(usize::from(nested));
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(v)) => serde_json::Value::Bool(*v),
        Some(Kind::NumberValue(v)) => json_number(*v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{v} is not a JSON number"))?,
        Some(Kind::StringValue(v)) => serde_json::Value::String(v.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .iter()
                .map(|item| value_to_json_within(item, levels))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(object)) => {
            // Keys in order, so an object is stored (and fingerprinted) the same bytes
            // whatever order it was sent in: a `Struct` keeps its fields in a hash map.
            let mut fields: Vec<_> = object.fields.iter().collect();
            fields.sort_unstable_by_key(|&(key, _)| key);
            serde_json::Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| Ok((k.clone(), value_to_json_within(v, levels)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
    })
}

/// A `google.protobuf.Value` number (a double) as JSON: integral values as integers, so JSON
/// `3` is stored as `3`, as it was written, not `3.0`. Only up to 2^53, where every integer
/// is exact in a double. Negative zero stays a float: the integer 0 would lose its sign.
fn json_number(value: f64) -> Option<serde_json::Number> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let negative_zero = value == 0.0 && value.is_sign_negative();
    if value.fract() == 0.0 && value.abs() <= EXACT && !negative_zero {
        // Integral and within ±2^53: the cast is exact.
        return Some(serde_json::Number::from(value as i64));
    }
    serde_json::Number::from_f64(value)
}

/// Levels of arrays and objects in a JSON value.
pub fn json_depth(json: &serde_json::Value) -> usize {
    match json {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

pub fn json_to_value(json: serde_json::Value) -> pbjson_types::Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(v) => Kind::BoolValue(v),
        // JSON numbers are f64 in google.protobuf.Value; integers above 2^53 lose precision
        // there, which is why large ids belong in strings.
        serde_json::Value::Number(v) => Kind::NumberValue(v.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(v) => Kind::StringValue(v),
        serde_json::Value::Array(items) => Kind::ListValue(pbjson_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(pbjson_types::Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    pbjson_types::Value { kind: Some(kind) }
}

/// A stored message as a poll or a subscription answers it. A JSON body grows as a
/// `google.protobuf.Value` (a number in a list: two bytes of text, eleven encoded); one that
/// would then encode past `max_bytes` (`POLL_MAX_BYTES`, what gRPC clients take by default) is
/// answered as the bytes stored, with its body-form header, as JSON too deep to render is.
pub fn polled_to_proto(
    partition_id: u32,
    message: StoredMessage,
    max_bytes: usize,
) -> proto::PolledMessage {
    // Only a JSON payload this large can grow past the limit; only then is a copy kept.
    let json = matches!(
        message.headers.get(BODY_FORM_HEADER),
        Some(HeaderValue::String(form)) if form == BODY_JSON
    );
    let stored = (json && message.payload.len() > max_bytes / 8)
        .then(|| (message.payload.clone(), message.headers.clone()));
    let mut headers = message.headers;
    let body = payload_to_body(message.payload, &mut headers);
    let mut polled = proto::PolledMessage {
        offset: message.offset,
        timestamp: Some(timestamp(message.timestamp_micros)),
        partition_id,
        id: message_id_text(message.id),
        headers: headers_to_proto(headers),
        body: Some(body),
    };
    // With room for what the answer puts around it (a poll's fields, a subscription's
    // cursor).
    if let Some((payload, headers)) = stored
        && matches!(polled.body, Some(proto::polled_message::Body::Json(_)))
        && prost::Message::encoded_len(&polled) > super::polls::message_room(max_bytes)
    {
        polled.headers = headers_to_proto(headers);
        polled.body = Some(proto::polled_message::Body::Payload(payload));
    }
    polled
}

#[cfg(test)]
mod tests;
