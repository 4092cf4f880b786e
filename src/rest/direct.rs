//! The direct call, REST's and Connect's: an RPC's request message handed to the service's
//! method as a `tonic::Request` (the same metadata and extensions a gRPC call carries), with
//! no protobuf framing, no second HTTP request and no router in between; a server stream's
//! answers come back one by one, each written by the typed codec (as JSON, or as protobuf for
//! Connect's `proto` codec). The table is built where the services are (`startup`), each entry
//! guarded by the same scope policy as the gRPC paths; a route without an entry is refused at
//! start-up, so neither protocol has another way to a service.
//!
//! A `body: "*"` JSON object reaches the method unparsed ([`Input::Json`]) and is read by the
//! method's typed proto3 JSON codec (generated from the protos, as prost's types are): no
//! dynamic message, no protobuf encode and decode on the way. Every answer comes back as JSON
//! written by the same codec ([`Output`]); REST reads its `ETag`, its `Location` or the one
//! field it answers with from that text.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, header},
};
use bytes::Bytes;
use futures_util::Stream;
use prost_reflect::DynamicMessage;

use crate::{
    answer::Rejection,
    budget::AnswerWatch,
    extensions::{ClientIp, Deadline, NoReturn, RequestId, names},
    identity::{Access, Identity},
};

/// Why a direct call has no answer: the service's own status, or the scope policy's refusal
/// (answered as the gRPC path would answer it, so REST renders both alike).
pub enum Failure {
    Status(tonic::Status),
    Refused(Rejection),
    /// The typed codec did not take the JSON: handed back, untouched and uncalled, to be parsed
    /// by the descriptors, which accept it or name the field they refuse.
    Untyped {
        body: Bytes,
        overlay: Vec<u8>,
    },
    /// The answer could not be written as JSON (a timestamp past year 9999): a bug or bad
    /// stored data, logged and answered as an internal error without its detail.
    Unwritable(String),
}

/// Why a server stream ended before its end.
pub enum ItemError {
    Status(tonic::Status),
    /// As [`Failure::Unwritable`], for one answer of the stream.
    Unwritable(String),
}

/// The request a direct call takes.
pub enum Input {
    /// Parsed by the descriptors (of the method's input type).
    Message(DynamicMessage),
    /// A JSON object (measured, charged and inspected as REST bodies are) for the typed codec,
    /// and the path and query fields, encoded, to merge over it (the body sets none of them).
    Json { body: Bytes, overlay: Vec<u8> },
    /// Protobuf as a client sent it (Connect's `proto` codec), decoded as the gRPC decoder
    /// decodes: charged to the call's budget first, then held to the protos' rules.
    Protobuf(Bytes),
}

pub type Reply = Result<tonic::Response<Output>, Failure>;

/// How the caller takes the answer: as JSON the typed codec writes, or as protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// JSON, sent as it is: whole, or a large one in pieces as they are written.
    Written,
    /// JSON read before it is sent (an `ETag`, a `Location`, one field of it): in one buffer.
    ToRead,
    /// Protobuf, the message encoded (Connect's `proto` codec).
    Protobuf,
}

/// A direct call's answer, in the form asked for.
pub enum Output {
    /// To be sent as it is: one buffer (with its length), or a large answer's pieces
    /// (`typed_json_pieces`).
    Json(Body),
    /// In one buffer, to be read.
    ToRead(Vec<u8>),
    /// The answer encoded as protobuf.
    Protobuf(Bytes),
}

/// One unary method: takes the request and answers one message of its output type.
pub type Call = Arc<
    dyn Fn(tonic::Request<Input>, Answer) -> Pin<Box<dyn Future<Output = Reply> + Send>>
        + Send
        + Sync,
>;

/// A server stream's answers, each written as JSON by the typed codec or encoded as protobuf
/// (as [`ItemsAs`] asked); an error ends it.
pub type Items = Pin<Box<dyn Stream<Item = Result<Vec<u8>, ItemError>> + Send>>;

/// How a server stream's answers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemsAs {
    Json,
    Protobuf,
}

/// One server-streaming method: takes the request and answers its stream, or why not.
pub type StreamCall = Arc<
    dyn Fn(
            tonic::Request<Input>,
            ItemsAs,
        ) -> Pin<Box<dyn Future<Output = Result<tonic::Response<Items>, Failure>> + Send>>
        + Send
        + Sync,
>;

/// Answer metadata a REST or Connect answer carries as headers, as a gRPC answer does: the
/// identity's quota advice, and whether a send was answered from its idempotency record.
pub const ANSWER_METADATA: [&str; 4] = [
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "idempotent-replayed",
];

/// A method's typed proto3 JSON codec between JSON and protobuf, the one its direct call reads
/// and writes JSON with, on its own: the tests' handle on each method's JSON, held to the
/// descriptors' reading and writing of it.
#[derive(Clone, Copy)]
pub struct JsonCodec {
    pub request: ReadJson,
    pub answer: WriteJson,
}

/// A request's protobuf from a JSON object; `None` when the codec does not take it (the
/// descriptors then take it or name the field they refuse).
pub type ReadJson = fn(&[u8]) -> Option<Vec<u8>>;

/// One answer's JSON from its protobuf.
pub type WriteJson = fn(&[u8]) -> Result<Vec<u8>, String>;

/// Admits a call of the RPC at a gRPC path by what the extensions say of its caller (adding
/// its `Access` there): the scope policy's `admit_call`, given by start-up. `None`: the path is
/// no RPC of the API.
pub type Admit =
    Arc<dyn Fn(&str, &mut axum::http::Extensions) -> Option<Result<(), Rejection>> + Send + Sync>;

/// The methods REST calls directly, by gRPC path (`/package.Service/Method`): unary ones and
/// server streams.
#[derive(Clone, Default)]
pub struct Direct {
    unary: HashMap<String, Call>,
    streams: HashMap<String, StreamCall>,
    admit: Option<Admit>,
}

impl Direct {
    /// Admission of a call before its request is read, as the gRPC guard admits a gRPC call
    /// before tonic decodes it: a key's quota or rate is charged, and its scope checked, before
    /// any work is done on its body. The call then finds its `Access` and is not admitted again.
    pub fn set_admission(&mut self, admit: Admit) {
        self.admit = Some(admit);
    }

    /// The admission set by start-up, for another surface over the same calls (Connect).
    pub fn admission(&self) -> Option<Admit> {
        self.admit.clone()
    }

    /// Admits a call of `path` now (see [`Direct::set_admission`]); `Ok` without a policy.
    pub fn admit(
        &self,
        path: &str,
        extensions: &mut axum::http::Extensions,
    ) -> Result<(), Rejection> {
        match &self.admit {
            Some(admit) => admit(path, extensions).unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    pub fn insert(&mut self, path: impl Into<String>, call: Call) {
        self.unary.insert(path.into(), call);
    }

    pub fn insert_stream(&mut self, path: impl Into<String>, call: StreamCall) {
        self.streams.insert(path.into(), call);
    }

    pub fn get(&self, path: &str) -> Option<&Call> {
        self.unary.get(path)
    }

    pub fn stream(&self, path: &str) -> Option<&StreamCall> {
        self.streams.get(path)
    }
}

/// What the layers learnt of the caller, carried on to the service: its identity, address
/// and request id, its admission when it was admitted before its request was read, and its
/// connection's answer watch.
pub fn carried(extensions: &axum::http::Extensions) -> axum::http::Extensions {
    let mut carried = axum::http::Extensions::new();
    if let Some(identity) = extensions.get::<Arc<Identity>>() {
        carried.insert(Arc::clone(identity));
    }
    if let Some(access) = extensions.get::<Arc<Access>>() {
        carried.insert(Arc::clone(access));
    }
    // The connection's watch, which a stalled subscription closes the connection by.
    if let Some(connection) = extensions.get::<Arc<AnswerWatch>>() {
        carried.insert(Arc::clone(connection));
    }
    if let Some(client) = extensions.get::<ClientIp>() {
        carried.insert(*client);
    }
    if let Some(id) = extensions.get::<RequestId>() {
        carried.insert(id.clone());
    }
    if let Some(no_return) = extensions.get::<NoReturn>() {
        carried.insert(no_return.clone());
    }
    if let Some(deadline) = extensions.get::<Deadline>() {
        carried.insert(*deadline);
    }
    carried
}

/// Request headers a direct call carries on to the service as metadata: the request's ids and
/// trace context, its credentials, its idempotency key. Only these, so a service reading
/// metadata cannot be handed anything else a client sends.
pub const FORWARDED_HEADERS: [HeaderName; 6] = [
    names::X_REQUEST_ID,
    names::TRACEPARENT,
    HeaderName::from_static("tracestate"),
    header::AUTHORIZATION,
    names::X_API_KEY,
    HeaderName::from_static("idempotency-key"),
];

/// The request headers a call carries on as metadata ([`FORWARDED_HEADERS`]).
pub fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut forwarded = HeaderMap::new();
    // One pass over what the request has (each name's values in order) rather than a hashed
    // lookup of every name the request may lack.
    for (name, value) in headers {
        if FORWARDED_HEADERS.contains(name) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    forwarded
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_forwarded_headers_go_on_each_with_its_values_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", HeaderValue::from_static("k1"));
        headers.append("cookie", HeaderValue::from_static("session=1"));
        headers.append("traceparent", HeaderValue::from_static("00-a-b-01"));
        headers.append("x-api-key", HeaderValue::from_static("k2"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.append("idempotency-key", HeaderValue::from_static("i-1"));

        let forwarded = forwarded(&headers);

        let values = |name: &str| {
            forwarded
                .get_all(name)
                .iter()
                .map(|v| v.to_str().expect("text"))
                .collect::<Vec<_>>()
        };
        assert_eq!(values("x-api-key"), ["k1", "k2"]);
        assert_eq!(values("traceparent"), ["00-a-b-01"]);
        assert_eq!(values("authorization"), ["Bearer t"]);
        assert_eq!(values("idempotency-key"), ["i-1"]);
        assert_eq!(forwarded.len(), 5, "{forwarded:?}");
        assert!(!forwarded.contains_key("cookie"));
        assert!(!forwarded.contains_key("x-forwarded-for"));
    }
}
