//! The answer half of the transcoder: a unary reply as JSON with the route's success status,
//! and a server stream as Server-Sent Events or NDJSON, one event or line per answer as it
//! arrives, ending with a problem event or an error line when the stream fails. The
//! descriptors' rendering of a message (`json_bytes`, `respond_message`, `stream_item`) is
//! kept for the tests only: the reference the typed codec's answers are held to, byte for
//! byte.

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use prost_reflect::DynamicMessage;
#[cfg(test)]
use prost_reflect::SerializeOptions;
#[cfg(test)]
use serde_json::Value;

use crate::{
    answer::Problem,
    proto::wkt::Writable,
    rest::{
        conditional,
        direct::{ItemError, Items},
        fields::{self, Fields},
        routes::{Created, Route},
    },
};

/// The field of a streamed message that becomes the SSE event id (and that `Last-Event-ID`
/// fills back in).
pub(in crate::rest) const CURSOR_FIELD: &str = "cursor";

/// The SSE event that ends a stream which failed. Not `error`: a browser's EventSource hands an
/// event named `error` to `onerror` as a bare `Event`, so the page could never read the problem.
pub(in crate::rest) const PROBLEM_EVENT: &str = "problem";

/// How long an EventSource waits before reconnecting (its `retry:` field), in milliseconds:
/// long enough not to hammer a gateway that is restarting, short enough to resume promptly.
pub(in crate::rest) const SSE_RETRY_MS: u32 = 2000;

/// A server stream's answers (each already JSON) as Server-Sent Events (`sse`) or NDJSON,
/// one event or line as each arrives (a `cursor` field becomes the SSE id); an error ends it
/// with a problem carrying `request_id`. Written as the connection takes them, with no task or
/// buffer between the stream and the body: a client gone drops the stream, and with it the
/// subscription, at once.
pub(super) fn stream_items(items: Items, sse: bool, request_id: Option<String>) -> Response {
    let retry = sse.then(|| {
        Ok::<_, std::convert::Infallible>(Bytes::from(format!("retry: {SSE_RETRY_MS}\n\n")))
    });
    let written = futures_util::stream::unfold(Some(items), move |items| {
        let request_id = request_id.clone();
        async move {
            let mut items = items?;
            let written = match items.next().await? {
                Ok(json) if sse => sse_event(&json),
                Ok(mut json) => {
                    json.push(b'\n');
                    Ok(Bytes::from(json))
                }
                Err(ItemError::Status(status)) => Err(Problem::from_status(&status)),
                // Logged; the stream ends with an internal error rather than a gap.
                Err(ItemError::Unwritable(detail)) => Err(internal(detail)),
            };
            Some(match written {
                Ok(item) => (Ok(item), Some(items)),
                Err(problem) => (Ok(stream_error(sse, problem, request_id)), None),
            })
        }
    });
    let body = futures_util::stream::iter(retry).chain(written);
    streaming(Body::from_stream(body), sse)
}

/// The answer whose body is `body`, as SSE or NDJSON.
fn streaming(body: Body, sse: bool) -> Response {
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

/// One message's JSON object as an SSE event, as `stream_item` writes it from the message:
/// its cursor the id, its first other field set the event's name and data. The object's
/// fields are read as they were written (no tree of values is built for the payload).
pub(super) fn sse_event(json: &[u8]) -> Result<Bytes, Problem> {
    let fields =
        Fields::of(json).map_err(|err| internal(format!("reading a streamed answer: {err}")))?;
    let id = fields.get(CURSOR_FIELD).and_then(fields::string);
    let (event, data) = fields
        .iter()
        .find(|(key, value)| *key != CURSOR_FIELD && value.get() != "null")
        .map_or(("message", json), |(key, value)| {
            (key, value.get().as_bytes())
        });
    let mut text = Vec::with_capacity(data.len() + event.len() + 64);
    if let Some(id) = id {
        text.extend_from_slice(b"id: ");
        text.extend_from_slice(id.as_bytes());
        text.push(b'\n');
    }
    text.extend_from_slice(b"event: ");
    text.extend_from_slice(event.as_bytes());
    text.extend_from_slice(b"\ndata: ");
    text.extend_from_slice(data);
    text.extend_from_slice(b"\n\n");
    Ok(Bytes::from(text))
}

/// A message as REST writes it: proto3 JSON with proto field names, defaults included, and
/// whole doubles as integers.
#[cfg(test)]
pub(crate) fn json_value(message: &DynamicMessage) -> Result<Value, String> {
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &serialize_options())
        .map_err(|err| format!("encoding the answer as JSON: {err}"))?;
    integral_numbers(&mut json);
    Ok(json)
}

/// The same JSON as `json_value`, written straight to bytes: no tree of values is built and
/// thrown away, which on a poll of many messages is a copy of every payload's base64 text.
#[cfg(test)]
pub(crate) fn json_bytes(message: &DynamicMessage) -> Result<Vec<u8>, String> {
    // base64 and JSON's punctuation make the text longer than the protobuf it comes from.
    let mut out = Vec::with_capacity(
        prost::Message::encoded_len(message)
            .saturating_mul(2)
            .saturating_add(64),
    );
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, IntegralFloats);
    message
        .serialize_with_options(&mut serializer, &serialize_options())
        .map_err(|err| format!("encoding the answer as JSON: {err}"))?;
    Ok(out)
}

/// A typed message (pbjson's codec) as `json_bytes` writes its dynamic twin: the same bytes,
/// with no dynamic message built for it.
pub(crate) fn typed_json_bytes<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, IntegralFloats);
    message
        .serialize(&mut serializer)
        .map_err(|err| format!("encoding the answer as JSON: {err}"))?;
    Ok(out)
}

/// Answers whose protobuf is larger than this are written piece by piece
/// ([`typed_json_pieces`]); smaller ones in one buffer, with a `Content-Length`.
pub(crate) const PIECES_ABOVE: usize = 256 * 1024;

/// About how much JSON one piece of a large answer holds: its items are written until a piece
/// reaches this, so a piece is at most this and one item more.
pub(crate) const PIECE_BYTES: usize = 64 * 1024;

/// A large answer (a poll of many messages) as [`typed_json_bytes`] writes it, but piece by
/// piece as the body is read: the answer's other fields around its list `field` (taken out of
/// it as `items`), then the items, a piece at a time. No copy of the whole answer's JSON is
/// ever held (base64 makes it a third larger than the payloads the call was charged for), and
/// a client that reads slowly costs one piece, not a second copy of the answer. An answer with
/// an item the codec cannot write is refused before anything is sent ([`Writable`]); should
/// one fail anyway, the body ends with an error, logged (the status is already sent).
pub(crate) fn typed_json_pieces<T, I>(
    answer: &T,
    field: &str,
    items: Vec<I>,
) -> Result<Body, String>
where
    T: serde::Serialize,
    I: serde::Serialize + Writable + Send + 'static,
{
    // Refused whole, before a piece is sent, as an answer written in one buffer would be.
    if let Some(at) = items.iter().position(|item| !item.is_writable()) {
        return Err(format!("{field}[{at}] cannot be written as JSON"));
    }
    let pieces = Pieces::new(answer, field, items, PIECE_BYTES)?;
    Ok(Body::from_stream(futures_util::stream::iter(pieces)))
}

/// A large answer being written: what comes before its items, the items left, and what
/// follows them.
pub(super) struct Pieces<I> {
    head: Option<Bytes>,
    items: std::vec::IntoIter<I>,
    first: bool,
    tail: Option<Bytes>,
    piece_bytes: usize,
}

impl<I: serde::Serialize> Pieces<I> {
    /// `answer` (its list `field` emptied) and `items`, the list, in pieces of about
    /// `piece_bytes`.
    pub(super) fn new<T: serde::Serialize>(
        answer: &T,
        field: &str,
        items: Vec<I>,
        piece_bytes: usize,
    ) -> Result<Self, String> {
        // The answer without its items, and where its empty list opens.
        let skeleton = typed_json_bytes(answer)?;
        let fields =
            Fields::of(&skeleton).map_err(|err| format!("reading the answer's JSON: {err}"))?;
        let open = fields
            .get(field)
            .filter(|list| list.get() == "[]")
            .map(|list| list.get().as_ptr() as usize - skeleton.as_ptr() as usize)
            .ok_or_else(|| format!("the answer has no empty list {field}"))?;
        drop(fields);
        let mut tail = Bytes::from(skeleton);
        let head = tail.split_to(open + 1);
        Ok(Self {
            head: Some(head),
            items: items.into_iter(),
            first: true,
            tail: Some(tail),
            piece_bytes,
        })
    }
}

impl<I: serde::Serialize> Iterator for Pieces<I> {
    type Item = Result<Bytes, std::io::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let head = self.head.take();
        let tail = self.tail.as_ref()?;
        let mut piece = Vec::with_capacity(self.piece_bytes + self.piece_bytes / 4);
        piece.extend_from_slice(head.as_deref().unwrap_or_default());
        // At least one item a piece, however small `piece_bytes`, so the answer always ends.
        loop {
            let Some(item) = self.items.next() else {
                piece.extend_from_slice(tail);
                self.tail = None;
                break;
            };
            if !std::mem::take(&mut self.first) {
                piece.push(b',');
            }
            let mut serializer = serde_json::Serializer::with_formatter(&mut piece, IntegralFloats);
            if let Err(err) = item.serialize(&mut serializer) {
                tracing::error!(detail = %err, "REST transcoding failed mid-answer");
                self.tail = None;
                return Some(Err(std::io::Error::other(
                    "the answer could not be written",
                )));
            }
            if piece.len() >= self.piece_bytes {
                break;
            }
        }
        Some(Ok(Bytes::from(piece)))
    }
}

#[cfg(test)]
fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
}

/// serde_json's compact output, with whole doubles written as integers as `integral_numbers`
/// does to a tree (a float is widened to a double first, as the tree holds it).
struct IntegralFloats;

impl serde_json::ser::Formatter for IntegralFloats {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        match whole(value) {
            Some(whole) => serde_json::ser::CompactFormatter.write_i64(writer, whole),
            None => serde_json::ser::CompactFormatter.write_f64(writer, value),
        }
    }

    fn write_f32<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f32,
    ) -> std::io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }
}

/// A double that is whole and exactly representable (below 2^53), as the integer it equals.
fn whole(float: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    #[allow(
        clippy::cast_possible_truncation,
        reason = "whole and below 2^53, so exact"
    )]
    (float.fract() == 0.0 && float.abs() < EXACT).then_some(float as i64)
}

#[cfg(test)]
pub(super) fn stream_item(sse: bool, message: &DynamicMessage) -> Bytes {
    if !sse {
        let mut line = json_bytes(message).unwrap_or_else(|_| b"null".to_vec());
        line.push(b'\n');
        return Bytes::from(line);
    }
    let json = json_value(message).unwrap_or(Value::Null);
    // The cursor is the event id; the event's name is the field the message set.
    let id = json
        .get(CURSOR_FIELD)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (event, data) = match json.as_object() {
        Some(object) => object
            .iter()
            .find(|(key, value)| key.as_str() != CURSOR_FIELD && !value.is_null())
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

/// One stream error as the stream's last event (`event: problem`) or NDJSON line
/// (`{"error":…}`), with the call's request id so the failure can be found in the logs.
fn stream_error(sse: bool, problem: Problem, request_id: Option<String>) -> Bytes {
    let json = problem.with_request_id(request_id).to_json();
    if sse {
        Bytes::from(format!("event: {PROBLEM_EVENT}\ndata: {json}\n\n"))
    } else {
        Bytes::from(format!("{{\"error\":{json}}}\n"))
    }
}

/// An answer already written as JSON, with the route's success status.
/// An answer's JSON: whole (sent with its length), or a large one's pieces
/// ([`typed_json_pieces`]).
pub(super) fn respond_json(route: &Route, body: impl Into<Body>) -> Response {
    let mut response = (route.success, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An answer as a message, as REST wrote it from the descriptors (the tests' reference for
/// [`respond_written`]): the route's success status; the `ETag` of the resource it holds; for
/// a create, the new resource's `Location` (from its `request`); and the whole answer or the
/// one field the route answers with.
#[cfg(test)]
pub(super) fn respond_message(
    route: &Route,
    reply: DynamicMessage,
    request: Option<&DynamicMessage>,
) -> Result<Response, Problem> {
    let etag = conditional::answer_etag(&reply);
    let location = location(route, request, |created, request| {
        created.url(request, &reply)
    });
    Ok(with_headers(respond(route, reply)?, etag, location))
}

/// An answer the typed codec wrote (`json`), answered as `respond_message` answers it as a
/// message: the same status, headers and body, read from the text (the one field the route
/// answers with copied out of it).
pub(super) fn respond_written(
    route: &Route,
    json: Vec<u8>,
    request: Option<&DynamicMessage>,
) -> Result<Response, Problem> {
    let etag = conditional::json_etag(&route.method.output(), &json);
    let location = location(route, request, |created, request| {
        created.url_from_json(request, &json)
    });
    let response = if route.success == StatusCode::NO_CONTENT {
        StatusCode::NO_CONTENT.into_response()
    } else if let Some(field) = &route.response_body {
        let fields = Fields::of(&json)
            .map_err(|err| internal(format!("reading the answer's JSON: {err}")))?;
        let value = fields.get(field).map_or("null", |value| value.get());
        respond_json(route, value.as_bytes().to_vec())
    } else {
        respond_json(route, json)
    };
    Ok(with_headers(response, etag, location))
}

/// A create's `Location`: the URL `url` writes of the created resource from the create's
/// `request`; `None` on other routes.
fn location(
    route: &Route,
    request: Option<&DynamicMessage>,
    url: impl FnOnce(&Created, &DynamicMessage) -> Option<String>,
) -> Option<HeaderValue> {
    let (created, request) = route.created.as_ref().zip(request)?;
    HeaderValue::try_from(url(created, request)?).ok()
}

/// `response` with the `ETag` and `Location` its answer gave, where it gave them.
fn with_headers(
    mut response: Response,
    etag: Option<HeaderValue>,
    location: Option<HeaderValue>,
) -> Response {
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[cfg(test)]
fn respond(route: &Route, reply: DynamicMessage) -> Result<Response, Problem> {
    if route.success == StatusCode::NO_CONTENT {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body = match &route.response_body {
        None => json_bytes(&reply).map_err(internal)?,
        // One field of the answer (a resource, a list): small, so through a tree.
        Some(field) => {
            let json = json_value(&reply)
                .map_err(internal)?
                .get_mut(field)
                .map_or(Value::Null, Value::take);
            serde_json::to_vec(&json)
                .map_err(|err| internal(format!("encoding the answer as JSON: {err}")))?
        }
    };
    Ok(respond_json(route, body))
}

/// `google.protobuf.Value` holds every JSON number as a double, which prints as `1.0`; a JSON
/// client sent `1` and should get `1` back. Doubles that are whole and exactly representable
/// are printed as integers (the same number in JSON).
#[cfg(test)]
fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(whole) = number.as_f64().filter(|_| number.is_f64()).and_then(whole) {
                *number = serde_json::Number::from(whole);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

pub(super) fn internal(detail: String) -> Problem {
    tracing::error!(%detail, "REST transcoding failed");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error while transcoding",
    )
}
