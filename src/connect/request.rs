//! The request half of the Connect translator: the message of a call read from where Connect
//! puts it (a unary `POST` body, a `GET` query, a stream's one envelope), its protocol version,
//! timeout and codings checked, and turned into the input of the method's direct call:
//! protobuf bytes are passed on as they are (decoded there as the gRPC decoder decodes them),
//! JSON as a REST body is: inspected and charged, then left to the method's typed codec there.

use axum::{
    body::Body,
    http::{StatusCode, header, request::Parts},
    response::Response,
};
use base64::{
    Engine,
    alphabet::URL_SAFE,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use bytes::Bytes;
use prost_reflect::MethodDescriptor;
use tonic::Code;

use super::{
    envelope::{self, Coding, InflateError},
    status,
};
use crate::{
    answer::{Problem, connect, request_over_budget},
    extensions::{CONNECT_PROTOCOL_VERSION, connect_timeout, names},
    rest::{
        self, JsonRequest,
        direct::{Failure, Input},
    },
};

/// How a call's messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

/// Why a call's message could not be read: a status, and for unary calls an HTTP status
/// other than the code's where the protocol names one (415 for a codec it does not serve).
pub struct Refusal {
    status: tonic::Status,
    http: Option<StatusCode>,
}

impl Refusal {
    fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: status(code, reason, message),
            http: None,
        }
    }

    fn unsupported_media_type(message: impl Into<String>) -> Self {
        // The protocol's 415; its code is what a client infers from a 415 it cannot read.
        Self {
            http: Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ..Self::new(Code::InvalidArgument, "UNSUPPORTED_MEDIA_TYPE", message)
        }
    }

    pub fn status(self) -> tonic::Status {
        self.status
    }

    /// The refusal of a unary call.
    pub fn unary(self) -> Response {
        let mut response = connect::unary_error(&self.status);
        if let Some(http) = self.http {
            *response.status_mut() = http;
        }
        response
    }
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Self {
        Self {
            status: problem.to_status(),
            http: None,
        }
    }
}

/// A unary `POST`: its codec and its body (inflated by the body-limit layer when it came with
/// a `Content-Encoding`).
pub async fn from_body(
    parts: &Parts,
    body: Body,
    max_bytes: usize,
) -> Result<(Codec, Bytes), Refusal> {
    // Connect-Protocol-Version tells a Connect call from any other POST of the same content
    // type; clients send it, and the protocol lets servers require it.
    match parts
        .headers
        .get(&CONNECT_PROTOCOL_VERSION)
        .map(|v| v.as_bytes())
    {
        Some(b"1") => {}
        Some(_) => return Err(bad_version("Connect-Protocol-Version is not 1")),
        None => return Err(bad_version("Connect-Protocol-Version: 1 is missing")),
    }
    check_timeout(parts)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let codec = match essence.as_str() {
        "application/proto" => Codec::Proto,
        "application/json" => Codec::Json,
        _ => {
            return Err(Refusal::unsupported_media_type(format!(
                "unary calls take application/proto or application/json, not {content_type:?}"
            )));
        }
    };
    Ok((codec, read(body, max_bytes).await?))
}

/// A unary `GET`: `message`, `encoding`, `base64`, `compression` and `connect` in the query.
pub async fn from_query(parts: &Parts, max_bytes: usize) -> Result<(Codec, Bytes), Refusal> {
    check_timeout(parts)?;
    let query = parts.uri.query().unwrap_or("");
    let (mut encoding, mut base64, mut compression, mut version) = (None, false, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "encoding" => encoding = Some(value.into_owned()),
            "base64" => base64 = value == "1",
            "compression" => compression = Some(value.into_owned()),
            "connect" => version = Some(value.into_owned()),
            // The protocol lets other parameters ride along (cache-busters).
            _ => {}
        }
    }
    if version.as_deref() != Some("v1") {
        return Err(bad_version("a Connect GET names its protocol: connect=v1"));
    }
    let codec = match encoding.as_deref() {
        Some("proto") => Codec::Proto,
        Some("json") => Codec::Json,
        other => {
            return Err(Refusal::unsupported_media_type(format!(
                "encoding must be proto or json, not {}",
                other.unwrap_or("missing")
            )));
        }
    };
    let message = message_bytes(query);
    let raw = if base64 {
        // URL-safe base64, padded or not (padding percent-encoded).
        let engine = GeneralPurpose::new(
            &URL_SAFE,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        Bytes::from(engine.decode(&message).map_err(|err| {
            Refusal::new(
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
                format!("message: not URL-safe base64 ({err})"),
            )
        })?)
    } else {
        Bytes::from(message)
    };
    if raw.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    let coding = Coding::named(compression.as_deref().unwrap_or("identity"))
        .map_err(|why| Refusal::new(Code::Unimplemented, "UNSUPPORTED_CONTENT_ENCODING", why))?;
    let payload = match coding {
        // A zero-length message is never inflated.
        Some(coding) if !raw.is_empty() => inflate(&raw, coding, max_bytes).await?,
        _ => raw,
    };
    Ok((codec, payload))
}

/// The `message` parameter (the last, if given twice) decoded to bytes, not text: without
/// `base64=1` it is the message itself, percent-encoded, and protobuf is not UTF-8.
fn message_bytes(query: &str) -> Vec<u8> {
    let form_decoded = |text: &str| -> Vec<u8> {
        let spaced: Vec<u8> = text
            .bytes()
            .map(|b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced).collect()
    };
    query
        .rsplit('&')
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decoded(key) == b"message").then(|| form_decoded(value))
        })
        .unwrap_or_default()
}

/// A server-streaming call's request: exactly one envelope, inflated by its
/// `Connect-Content-Encoding` when its flag says so.
pub async fn from_envelopes(parts: &Parts, body: Body, max_bytes: usize) -> Result<Bytes, Refusal> {
    if let Some(version) = parts.headers.get(&CONNECT_PROTOCOL_VERSION)
        && version.as_bytes() != b"1"
    {
        return Err(bad_version("Connect-Protocol-Version is not 1"));
    }
    check_timeout(parts)?;
    let coding = Coding::named(
        parts
            .headers
            .get("connect-content-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity"),
    )
    .map_err(|why| Refusal::new(Code::Unimplemented, "UNSUPPORTED_CONTENT_ENCODING", why))?;
    let body = read(body, max_bytes.saturating_add(5)).await?;
    let mut messages = envelope::split(body)
        .map_err(|why| Refusal::new(Code::InvalidArgument, "MALFORMED_ENVELOPE", why))?;
    if messages.len() != 1 {
        return Err(Refusal::new(
            Code::InvalidArgument,
            "MALFORMED_ENVELOPE",
            format!(
                "a server-streaming call takes exactly one request message, not {}",
                messages.len()
            ),
        ));
    }
    let enveloped = messages.remove(0);
    if enveloped.flags & envelope::END_STREAM != 0 || enveloped.flags & !envelope::COMPRESSED != 0 {
        return Err(Refusal::new(
            Code::InvalidArgument,
            "MALFORMED_ENVELOPE",
            format!(
                "a request message may not carry flags {:#04x}",
                enveloped.flags
            ),
        ));
    }
    if enveloped.flags & envelope::COMPRESSED == 0 {
        return Ok(enveloped.message);
    }
    let Some(coding) = coding else {
        return Err(Refusal::new(
            Code::InvalidArgument,
            "MALFORMED_ENVELOPE",
            "a compressed message needs a Connect-Content-Encoding",
        ));
    };
    inflate(&enveloped.message, coding, max_bytes).await
}

/// The input of a method's direct call, and what its JSON was charged.
pub struct Read {
    pub(super) input: Input,
    /// Held for the typed request a JSON object is left to be read into; given back if the
    /// typed codec refuses it ([`untyped`]).
    pub(super) charged: usize,
}

/// The input of the method's direct call: protobuf as it came (decoded within the call's
/// budget and the protos' rules there), JSON as REST's is: inspected and charged, then left
/// for the method's typed codec where REST would leave it, else parsed by the descriptors.
pub fn input(
    method: &MethodDescriptor,
    codec: Codec,
    payload: Bytes,
) -> Result<Read, tonic::Status> {
    let (input, charged) = match codec {
        Codec::Proto => (Input::Protobuf(payload), 0),
        Codec::Json => match rest::json_request(&method.input(), &payload, true)
            .map_err(|problem| problem.to_status())?
        {
            JsonRequest::Typed { charged } => (
                Input::Json {
                    body: payload,
                    overlay: Vec::new(),
                },
                charged,
            ),
            JsonRequest::Parsed(message) => (Input::Message(message), 0),
        },
    };
    Ok(Read { input, charged })
}

/// A JSON object the typed codec handed back ([`Failure::Untyped`]), parsed by the
/// descriptors: the input to call with again, or why the body is refused, naming the field.
pub fn untyped(method: &MethodDescriptor, body: &Bytes, charged: usize) -> Result<Input, Failure> {
    rest::untyped_json(&method.input(), body, charged)
        .map(Input::Message)
        .map_err(|problem| Failure::Status(problem.to_status()))
}

fn check_timeout(parts: &Parts) -> Result<(), Refusal> {
    match parts.headers.get(&names::CONNECT_TIMEOUT_MS) {
        Some(value) if value.to_str().ok().and_then(connect_timeout).is_none() => {
            Err(Refusal::new(
                Code::InvalidArgument,
                "INVALID_TIMEOUT",
                "Connect-Timeout-Ms must be a positive number of milliseconds, at most 10 digits",
            ))
        }
        _ => Ok(()),
    }
}

fn bad_version(message: &str) -> Refusal {
    Refusal::new(
        Code::InvalidArgument,
        "UNSUPPORTED_PROTOCOL_VERSION",
        message,
    )
}

fn too_large(max_bytes: usize) -> Refusal {
    Refusal::new(
        Code::ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
        format!("the request body is over {max_bytes} bytes (MAX_REQUEST_BODY_SIZE)"),
    )
}

/// The whole body, within `max_bytes` (the body-limit layer has counted it already; this
/// bounds what is collected here).
async fn read(body: Body, max_bytes: usize) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(body, max_bytes)
        .await
        .map_err(|_| too_large(max_bytes))
}

async fn inflate(compressed: &[u8], coding: Coding, max_bytes: usize) -> Result<Bytes, Refusal> {
    envelope::inflate(compressed, coding, max_bytes)
        .await
        .map_err(|err| match err {
            InflateError::TooLarge(max) => too_large(max),
            InflateError::OverBudget(exhausted) => Refusal {
                status: request_over_budget(exhausted, "the message as inflated"),
                http: None,
            },
            InflateError::Malformed(_) => Refusal::new(
                Code::InvalidArgument,
                "MALFORMED_CONTENT_ENCODING",
                format!("the message is not valid {}", coding.name()),
            ),
        })
}
