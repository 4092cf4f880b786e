//! Connect's rendering of the one gRPC status every error already is: `{"code": "not_found",
//! "message": …, "details": [{"type", "value", "debug"}]}`, the same `ErrorInfo`, `BadRequest`
//! and `RetryInfo` details gRPC callers read, answered with the HTTP status of Connect's code
//! table (unary calls) or inside the end-of-stream message of a streamed answer (HTTP 200).

use std::sync::OnceLock;

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value, json};
use tonic::Code;

use super::http_status;
use crate::extensions::AnsweredCode;

/// The envelope flag of the message that ends a Connect stream.
pub const END_STREAM_FLAG: u8 = 0x02;

/// Connect's name of a code: gRPC's, in lower case, except that CANCELLED is `canceled`.
pub fn connect_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a unary Connect error. Connect's table is the one REST already uses
/// (`http_status`: 499, 400, 504, 404, 409, 403, 429, 501, 500, 503, 401), without REST's
/// exceptions (412 for a stale etag, 413 for a large body): a Connect client reads the code.
pub fn connect_http_status(code: Code) -> StatusCode {
    http_status(code)
}

/// The details' message types, for the human-readable `debug` copy of each detail.
fn error_types() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        // The global pool holds the well-known types the details import (Duration).
        let mut pool = DescriptorPool::global();
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .ok()
            .map(|()| pool)
    })
    .as_ref()
}

/// A detail as Connect writes it: its type's full name, its protobuf bytes in unpadded base64,
/// and (for readers, never for clients to depend on) its proto3 JSON.
fn detail(any: &prost_types::Any) -> Value {
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let mut detail = json!({
        "type": name,
        "value": STANDARD_NO_PAD.encode(&any.value),
    });
    let debug = error_types()
        .and_then(|pool| pool.get_message_by_name(name))
        .and_then(|descriptor| DynamicMessage::decode(descriptor, any.value.as_slice()).ok())
        .and_then(|message| {
            message
                .serialize_with_options(
                    serde_json::value::Serializer,
                    &SerializeOptions::new().skip_default_fields(true),
                )
                .ok()
        });
    if let (Some(debug), Some(object)) = (debug, detail.as_object_mut()) {
        object.insert("debug".to_owned(), debug);
    }
    detail
}

/// The Connect error object of a status (never of an OK one).
pub fn error_json(status: &tonic::Status) -> Value {
    let mut error = Map::new();
    error.insert(
        "code".to_owned(),
        Value::from(connect_code_name(status.code())),
    );
    if !status.message().is_empty() {
        error.insert("message".to_owned(), Value::from(status.message()));
    }
    let details = tonic_types::pb::Status::decode(status.details())
        .map(|decoded| decoded.details)
        .unwrap_or_default();
    if !details.is_empty() {
        error.insert(
            "details".to_owned(),
            Value::Array(details.iter().map(detail).collect()),
        );
    }
    Value::Object(error)
}

/// A unary call's error: the code's HTTP status and the error as `application/json`.
pub fn unary_error(status: &tonic::Status) -> Response {
    let body = serde_json::to_vec(&error_json(status)).unwrap_or_default();
    let mut response = (connect_http_status(status.code()), body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .extensions_mut()
        .insert(AnsweredCode(status.code()));
    response
}

/// The end-of-stream message, enveloped: `{}` after a stream that succeeded, `{"error": …}`
/// after one that failed. Always JSON, whatever the stream's codec.
pub fn end_stream(status: Option<&tonic::Status>) -> Bytes {
    let message = match status {
        Some(status) if status.code() != Code::Ok => json!({ "error": error_json(status) }),
        _ => json!({}),
    };
    let payload = serde_json::to_vec(&message).unwrap_or_default();
    let mut envelope = BytesMut::with_capacity(5 + payload.len());
    envelope.put_u8(END_STREAM_FLAG);
    envelope.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    envelope.put_slice(&payload);
    envelope.freeze()
}

/// The content type of a Connect stream in the codec its request used.
pub fn stream_content_type(json: bool) -> HeaderValue {
    HeaderValue::from_static(if json {
        "application/connect+json"
    } else {
        "application/connect+proto"
    })
}

/// A streaming call refused before its first message: HTTP 200, and a stream that holds only
/// its end, carrying the error.
pub fn stream_error(status: &tonic::Status, json: bool) -> Response {
    let mut response = Response::new(Body::from(end_stream(Some(status))));
    response
        .extensions_mut()
        .insert(AnsweredCode(status.code()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, stream_content_type(json));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};

    use super::{connect_http_status, end_stream, error_json};

    #[test]
    fn an_error_carries_its_code_message_and_details_in_connect_terms() {
        let mut details = ErrorDetails::new();
        details.set_error_info("RATE_LIMITED", "iggy-gateway", []);
        details.set_retry_info(Some(Duration::from_secs(2)));
        let status =
            tonic::Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        let error = error_json(&status);
        assert_eq!(error["code"], "resource_exhausted");
        assert_eq!(error["message"], "slow down");
        let details = error["details"].as_array().cloned().unwrap_or_default();
        let of_type = |name: &str| {
            details
                .iter()
                .find(|detail| detail["type"] == name)
                .cloned()
                .unwrap_or_default()
        };
        let info = of_type("google.rpc.ErrorInfo");
        assert_eq!(info["debug"]["reason"], "RATE_LIMITED");
        assert!(!info["value"].as_str().unwrap_or("=").contains('='));
        assert_eq!(of_type("google.rpc.RetryInfo")["debug"]["retryDelay"], "2s");
        assert_eq!(connect_http_status(Code::ResourceExhausted).as_u16(), 429);
        assert_eq!(connect_http_status(Code::Cancelled).as_u16(), 499);
    }

    #[test]
    fn a_stream_ends_with_an_end_stream_envelope() {
        let ok = end_stream(None);
        assert_eq!(&ok[..], b"\x02\x00\x00\x00\x02{}");
        let failed = end_stream(Some(&tonic::Status::cancelled("bye")));
        assert_eq!(failed[0], 0x02);
        let json: serde_json::Value = serde_json::from_slice(&failed[5..]).expect("JSON");
        assert_eq!(json["error"]["code"], "canceled");
    }
}
