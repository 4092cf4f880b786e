//! HTTP's conditional requests over AIP-154's etags, written once for every route and naming no
//! RPC: `If-Match` becomes the request's `etag` field wherever the request has one (the service
//! compares it), `If-None-Match: *` on a route that creates (201) turns "already exists" into
//! 412, and an answer holding one resource with an etag carries it as a strong `ETag`. Where
//! each applies is read from the descriptors: the `etag` field and the success status.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
#[cfg(test)]
use prost_reflect::ReflectMessage;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::{
    fields::{self, Fields},
    routes::Route,
};
use crate::answer::Problem;

/// The field that carries an etag, in resources and in the requests that change them
/// (AIP-154's name for it).
pub const ETAG_FIELD: &str = "etag";

/// A precondition header's value: `*`, or the entity tags it lists as written (a weak one
/// keeps its `W/` and quotes).
enum Tags {
    Any,
    List(Vec<String>),
}

/// The entity tags of every `name` header line (RFC 9110 §13.1: `*` or a comma-separated list
/// of `"tag"` / `W/"tag"`); `None` when the header is absent.
fn tags(headers: &HeaderMap, name: &HeaderName) -> Result<Option<Tags>, Problem> {
    let malformed = || {
        Problem::invalid_field(
            name.as_str(),
            "must be * or entity tags in double quotes, as an ETag gives them",
        )
    };
    let mut found = None;
    for value in headers.get_all(name) {
        let mut rest = value.to_str().map_err(|_| malformed())?;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('*') {
                if found.is_some() {
                    return Err(malformed());
                }
                found = Some(Tags::Any);
                rest = after;
                continue;
            }
            let weak = rest.starts_with("W/");
            let quoted = rest.strip_prefix("W/").unwrap_or(rest);
            let opaque = quoted.strip_prefix('"').ok_or_else(malformed)?;
            let end = opaque.find('"').ok_or_else(malformed)?;
            let tag = if weak {
                format!("W/\"{}\"", &opaque[..end])
            } else {
                opaque[..end].to_owned()
            };
            match &mut found {
                None => found = Some(Tags::List(vec![tag])),
                Some(Tags::List(list)) => list.push(tag),
                Some(Tags::Any) => return Err(malformed()),
            }
            rest = &opaque[end + 1..];
        }
    }
    Ok(found)
}

/// The request's `etag` field, when the request message has one.
fn etag_field(input: &MessageDescriptor) -> Option<FieldDescriptor> {
    input
        .get_field_by_name(ETAG_FIELD)
        .filter(|field| field.kind() == Kind::String && !field.is_list())
}

/// Whether a body whose top-level fields are `fields` (by number) sets the request's `etag`.
pub(crate) fn body_sets_etag(input: &MessageDescriptor, fields: &[u32]) -> bool {
    etag_field(input).is_some_and(|field| fields.contains(&field.number()))
}

/// Lays `If-Match` over the request as its `etag` field, so the service checks it as it checks
/// a gRPC caller's (one check, atomic where the store allows). `*` leaves the call
/// unconditional: a missing resource is a 404 either way. A weak tag is passed on as written,
/// so it never matches (`If-Match` compares strongly). Refused rather than ignored where the
/// request has no `etag`, so a client never believes itself protected when it is not.
pub(crate) fn if_match_as_etag(
    route: &Route,
    headers: &HeaderMap,
    body: Option<&DynamicMessage>,
    overlay: &mut Map<String, Value>,
) -> Result<(), Problem> {
    let Some(tags) = tags(headers, &header::IF_MATCH)? else {
        return Ok(());
    };
    let Some(field) = etag_field(&route.method.input()) else {
        return Err(Problem::invalid_field(
            "If-Match",
            format!(
                "{} {} takes no If-Match (it has no etag to compare)",
                route.http_method, route.template
            ),
        ));
    };
    let tag = match tags {
        Tags::Any => return Ok(()),
        Tags::List(mut list) if list.len() == 1 => list.remove(0),
        Tags::List(_) => {
            return Err(Problem::invalid_field(
                "If-Match",
                "give one entity tag: the resource's ETag as last read",
            ));
        }
    };
    // Given twice (header and body or query), the two must agree: which to trust is not ours
    // to guess.
    let elsewhere = overlay
        .get(ETAG_FIELD)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| body.and_then(|message| message.get_field(&field).as_str().map(str::to_owned)))
        .filter(|etag| !etag.is_empty());
    if elsewhere.is_some_and(|etag| etag != tag) {
        return Err(Problem::invalid_field(
            ETAG_FIELD,
            "differs from If-Match; give the etag once",
        ));
    }
    overlay.insert(ETAG_FIELD.into(), Value::String(tag));
    Ok(())
}

/// Whether the call must find no existing resource: `If-None-Match: *` on a route that
/// creates (its success is 201), where an "already exists" answer then becomes 412. On GET
/// and HEAD it is not evaluated: the ETag does not cover a resource's counters, so a 304
/// would keep stale counts in caches; the full answer is always right. Anywhere else it is
/// refused rather than ignored.
pub(crate) fn requires_absence(route: &Route, headers: &HeaderMap) -> Result<bool, Problem> {
    if route.http_method == Method::GET || !headers.contains_key(header::IF_NONE_MATCH) {
        return Ok(false);
    }
    match tags(headers, &header::IF_NONE_MATCH)? {
        Some(Tags::Any) if route.success == StatusCode::CREATED => Ok(true),
        _ => Err(Problem::invalid_field(
            "If-None-Match",
            format!(
                "{} {} takes no If-None-Match (only `*`, on routes that create; use If-Match to change or delete)",
                route.http_method, route.template
            ),
        )),
    }
}

/// A message's own etag, when it has a non-empty one made only of entity-tag characters.
#[cfg(test)]
fn own_etag(message: &DynamicMessage) -> Option<String> {
    let field = etag_field(&message.descriptor())?;
    let value = message.get_field(&field);
    let etag = value.as_str()?;
    entity_tag(etag).then(|| etag.to_owned())
}

/// Whether `etag` can be sent as an entity tag: not empty, and only etagc (RFC 9110 §8.8.3):
/// visible ASCII but the double quote.
fn entity_tag(etag: &str) -> bool {
    !etag.is_empty()
        && etag
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
}

/// The resource an answer holds, as the message fields that may carry its etag: the answer
/// itself, then its single (not repeated) message fields whose type has an `etag`.
fn resource_fields(output: &MessageDescriptor) -> Vec<FieldDescriptor> {
    output
        .fields()
        .filter(|field| !field.is_list() && !field.is_map())
        .filter(|field| matches!(field.kind(), Kind::Message(m) if etag_field(&m).is_some()))
        .collect()
}

/// Whether an answer of type `output` can carry an `ETag` (`answer_etag`).
pub(crate) fn may_carry_etag(output: &MessageDescriptor) -> bool {
    etag_field(output).is_some() || resource_fields(output).len() == 1
}

/// The strong `ETag` of an answer that holds one resource with an etag (`GetStreamResponse`'s
/// `stream`, an updated topic, …); `None` for lists and for answers without one.
#[cfg(test)]
pub(crate) fn answer_etag(reply: &DynamicMessage) -> Option<HeaderValue> {
    let etag =
        own_etag(reply).or_else(|| match resource_fields(&reply.descriptor()).as_slice() {
            [field] => own_etag(reply.get_field(field).as_message()?),
            _ => None,
        })?;
    HeaderValue::from_str(&format!("\"{etag}\"")).ok()
}

/// `answer_etag` of an answer of type `output` as the typed codec wrote it (`json`), read
/// from its text: the answer's own `etag`, or that of the one resource it holds.
pub(crate) fn json_etag(output: &MessageDescriptor, json: &[u8]) -> Option<HeaderValue> {
    let own = |json: &[u8]| {
        Fields::of(json)
            .ok()?
            .get(ETAG_FIELD)
            .and_then(fields::string)
            .filter(|etag| entity_tag(etag))
    };
    let etag = etag_field(output).and_then(|_| own(json)).or_else(|| {
        match resource_fields(output).as_slice() {
            [field] => own(Fields::of(json).ok()?.get(field.name())?.get().as_bytes()),
            _ => None,
        }
    })?;
    HeaderValue::from_str(&format!("\"{etag}\"")).ok()
}

/// The conditional headers a route honours, as OpenAPI header parameters.
pub(crate) fn openapi_parameters(route: &Route) -> Vec<Value> {
    // The `etag` field itself is left out of the route's parameters and body (`openapi.rs`
    // asks `openapi_omits`): two spellings of one value that must agree are not something
    // OpenAPI can state.
    let mut parameters = Vec::new();
    if etag_field(&route.method.input()).is_some() {
        parameters.push(json!({
            "name": "If-Match",
            "in": "header",
            "required": false,
            // One entity tag (or `*`), as `tags` reads it; a list of two is refused.
            "schema": {"type": "string", "pattern": "^[ \\t,]*(?:\\*|(?:W/)?\"[ \\t!#-~]*\")?[ \\t,]*$"},
            "description": "The resource's ETag as last read: the call is refused with 412 (reason ETAG_MISMATCH), changing nothing, if the resource has changed since. It is REST's spelling of the request's `etag` field, which is therefore not listed here; a body or query `etag` that differs from it is a 400.",
        }));
    }
    if route.success == StatusCode::CREATED {
        parameters.push(json!({
            "name": "If-None-Match",
            "in": "header",
            "required": false,
            "schema": {"type": "string", "enum": ["*"]},
            "description": "`*`: create only if absent; an existing one is 412 rather than 409.",
        }));
    }
    parameters
}

/// Whether OpenAPI leaves the request field out of the route, because `If-Match` stands for it.
pub(crate) fn openapi_omits(route: &Route, field: &str) -> bool {
    field == ETAG_FIELD && etag_field(&route.method.input()).is_some()
}

/// The `ETag` header of a route's successful answer, as OpenAPI response headers, when the
/// answer holds one resource with an etag.
pub(crate) fn openapi_response_headers(route: &Route) -> Option<Value> {
    let output = route.method.output();
    let holds_one = etag_field(&output).is_some() || resource_fields(&output).len() == 1;
    (holds_one && route.success != StatusCode::NO_CONTENT).then(|| {
        json!({"ETag": {
            "description": "The resource's etag (strong), for If-Match on a later change.",
            "schema": {"type": "string"},
        }})
    })
}

#[cfg(test)]
mod tests;
