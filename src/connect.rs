//! The Connect protocol (connectrpc.com/docs/protocol) on the same port as gRPC: a translator
//! like REST's. A Connect call (unary `POST` with `application/proto` or `application/json`,
//! `GET` for methods marked `NO_SIDE_EFFECTS`, a server stream in `application/connect+*`
//! envelopes) becomes a direct call of the same service's method (`rest::direct`, as REST's
//! calls are), below the same layers and held to the same scope policy; its answer or status
//! comes back in Connect's terms. Protobuf is decoded as the gRPC decoder decodes it; JSON is
//! read as REST reads it: by each method's typed codec, with the descriptors where REST would
//! use them.

mod envelope;
mod request;
mod stream;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use prost_reflect::MethodDescriptor;
use tonic::{Code, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};
use tower::Service;

use self::request::Codec;
use crate::{
    answer::{Caller, ERROR_DOMAIN, Rejection, connect, grpc_code_name, methods},
    extensions::{AnsweredCode, MatchedRoute, Protocol, names},
    identity::Access,
    rest::{
        self,
        direct::{
            ANSWER_METADATA, Admit, Answer, Call, Direct, Failure, Input, ItemsAs, Output,
            StreamCall, carried, forwarded,
        },
    },
};

/// How the translator reads requests.
#[derive(Debug, Clone, Copy)]
pub struct ConnectSettings {
    /// Largest request body (`MAX_REQUEST_BODY_SIZE`), also after inflating it.
    pub max_body_bytes: usize,
    /// Streamed messages smaller than this are sent uncompressed (`COMPRESSION_MIN_BYTES`).
    pub compression_min_bytes: usize,
}

/// One method a Connect client may call.
struct Procedure {
    method: MethodDescriptor,
    /// Marked `idempotency_level = NO_SIDE_EFFECTS`: callable with `GET`.
    side_effect_free: bool,
    call: Callable,
}

/// A method's direct call.
enum Callable {
    Unary(Call),
    ServerStream(StreamCall),
}

pub struct Connect {
    /// By gRPC path, `/iggy.gateway.v1.StreamService/GetStream`.
    procedures: HashMap<String, Procedure>,
    settings: ConnectSettings,
    /// The scope policy's admission, before a request is read (see `Direct::set_admission`).
    admit: Option<Admit>,
}

impl Connect {
    /// Whether the method at `path` takes a Connect `GET` (it is marked `NO_SIDE_EFFECTS`).
    pub fn takes_get(&self, path: &str) -> bool {
        self.procedures
            .get(path)
            .is_some_and(|procedure| procedure.side_effect_free)
    }

    /// Every method of the API's services, read from the descriptor set, with its direct call
    /// from `direct` (which reads JSON with the method's typed codec); fails for a method
    /// without one, so no new method is left unserved.
    pub fn new(direct: &Direct, settings: ConnectSettings) -> Result<Self, String> {
        let pool = crate::descriptors::pool()?;
        let procedures = pool
            .services()
            .filter(|service| service.package_name() == rest::API_PACKAGE)
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .map(|method| {
                let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
                let side_effect_free = rest::side_effect_free(&method);
                let call = if method.is_server_streaming() {
                    direct.stream(&path).cloned().map(Callable::ServerStream)
                } else {
                    direct.get(&path).cloned().map(Callable::Unary)
                };
                let call = call
                    .filter(|_| !method.is_client_streaming())
                    .ok_or_else(|| format!("{path} has no direct call in startup/direct.rs"))?;
                let procedure = Procedure {
                    method,
                    side_effect_free,
                    call,
                };
                Ok((path, procedure))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            procedures,
            settings,
            admit: direct.admission(),
        })
    }

    /// Answers one Connect call (`protocol` is what the layers read from it).
    pub async fn handle(&self, request: Request<Body>, protocol: Protocol) -> Response {
        let path = request.uri().path().to_owned();
        let streaming = match protocol {
            Protocol::ConnectStream { json } => Some(json),
            _ => None,
        };
        let refuse = |status: tonic::Status| match streaming {
            Some(json) => connect::stream_error(&status, json),
            None => connect::unary_error(&status),
        };
        let Some(procedure) = self.procedures.get(&path) else {
            return refuse(Rejection::unknown_method(&path).status());
        };
        // Admitted before anything of it is read, as a gRPC call is before it is decoded.
        let mut request = request;
        let admitted = self
            .admit
            .as_ref()
            .and_then(|admit| admit(&path, request.extensions_mut()));
        let access = request.extensions().get::<Arc<Access>>().cloned();
        let mut response = match admitted {
            Some(Err(rejection)) => rejection.respond(&request),
            // `application/connect+` names the codec: only the two the gateway speaks are read.
            _ if streaming.is_some() && !is_stream_codec(&request) => unsupported_media_type(
                "Connect streams are read as application/connect+proto or application/connect+json",
            ),
            _ => match streaming {
                Some(json) => self.stream(procedure, request, json).await,
                None => self.unary(procedure, request).await,
            },
        };
        // An admin call whose method never ran (its request did not parse) still gets its
        // audit line, with the code it was refused with.
        if let (Some(access), Some(code)) = (access, response.extensions().get::<AnsweredCode>()) {
            access.audit_outcome(grpc_code_name(code.0));
        }
        // Metrics label the call by its method, a name the gateway defines.
        response.extensions_mut().insert(MatchedRoute(path.into()));
        response
    }

    async fn unary(&self, procedure: &Procedure, request: Request<Body>) -> Response {
        let method = &procedure.method;
        let Callable::Unary(call) = &procedure.call else {
            return unsupported_media_type(&format!(
                "{} streams: call it with application/connect+proto or application/connect+json",
                method.full_name()
            ));
        };
        let caller = Caller::of(&request);
        let (parts, body) = request.into_parts();
        let read = if parts.method == Method::GET {
            if !procedure.side_effect_free {
                return method_not_allowed(method);
            }
            request::from_query(&parts, self.settings.max_body_bytes).await
        } else if parts.method == Method::POST {
            request::from_body(&parts, body, self.settings.max_body_bytes).await
        } else {
            return method_not_allowed(method);
        };
        let (codec, payload) = match read {
            Ok(read) => read,
            Err(refusal) => return refusal.unary(),
        };
        let read = match request::input(method, codec, payload) {
            Ok(read) => read,
            Err(status) => return connect::unary_error(&status),
        };
        let answer_as = match codec {
            Codec::Proto => Answer::Protobuf,
            Codec::Json => Answer::Written,
        };
        match called(&parts, method, read, |request| call(request, answer_as)).await {
            Ok(answer) => unary_answer(answer),
            Err(failure) => failed(failure, &caller),
        }
    }

    async fn stream(&self, procedure: &Procedure, request: Request<Body>, json: bool) -> Response {
        let method = &procedure.method;
        let refuse = |status: tonic::Status| connect::stream_error(&status, json);
        let Callable::ServerStream(call) = &procedure.call else {
            return unsupported_media_type(&format!(
                "{} is unary: call it with application/proto or application/json",
                method.full_name()
            ));
        };
        let caller = Caller::of(&request);
        let (parts, body) = request.into_parts();
        let codec = if json { Codec::Json } else { Codec::Proto };
        let payload =
            match request::from_envelopes(&parts, body, self.settings.max_body_bytes).await {
                Ok(payload) => payload,
                Err(refusal) => return refuse(refusal.status()),
            };
        let read = match request::input(method, codec, payload) {
            Ok(read) => read,
            Err(status) => return refuse(status),
        };
        let deadline = parts
            .headers
            .get(&names::CONNECT_TIMEOUT_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        let items_as = if json {
            ItemsAs::Json
        } else {
            ItemsAs::Protobuf
        };
        // Refused before the first message: a stream that is only its end.
        let items = match called(&parts, method, read, |request| call(request, items_as)).await {
            Ok(answer) => answer.into_inner(),
            Err(failure) => return failed(failure, &caller),
        };
        let compression = parts
            .headers
            .get("connect-accept-encoding")
            .and_then(|v| v.to_str().ok())
            .and_then(envelope::Coding::preferred);
        stream::respond(
            items,
            stream::Writer {
                json,
                compression,
                compression_min_bytes: self.settings.compression_min_bytes,
                deadline,
            },
        )
    }
}

/// The method called with the call's input; a JSON object its typed codec hands back
/// ([`Failure::Untyped`]) is parsed by the descriptors and called with again, as REST does.
async fn called<T, Fut>(
    parts: &http::request::Parts,
    method: &MethodDescriptor,
    read: request::Read,
    call: impl Fn(tonic::Request<Input>) -> Fut,
) -> Result<T, Failure>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let request::Read { input, charged } = read;
    match call(service_request(parts, input)).await {
        Err(Failure::Untyped { body, .. }) => {
            let input = request::untyped(method, &body, charged)?;
            call(service_request(parts, input)).await
        }
        answer => answer,
    }
}

/// The service's request: the call's message, the headers every direct call carries on as
/// metadata (REST's: ids, trace context, credentials, idempotency key), what the layers
/// learnt of the caller.
fn service_request(parts: &http::request::Parts, input: Input) -> tonic::Request<Input> {
    tonic::Request::from_parts(
        MetadataMap::from_headers(forwarded(&parts.headers)),
        carried(&parts.extensions),
        input,
    )
}

/// Why a direct call has no answer, in Connect's terms for the caller's kind of call (an error
/// answer, or a stream that is only its end): the method's status, or the scope policy's
/// refusal, answered as the layers answer a Connect caller.
fn failed(failure: Failure, caller: &Caller) -> Response {
    let status = match failure {
        Failure::Status(status) => status,
        Failure::Refused(rejection) => return rejection.respond_to(caller),
        Failure::Unwritable(detail) => internal(detail),
        // Handed back only for a JSON body, which `called` parses and calls again with.
        Failure::Untyped { .. } => internal("a Connect request was handed back untyped".into()),
    };
    match caller.protocol() {
        Protocol::ConnectStream { json } => connect::stream_error(&status, json),
        _ => connect::unary_error(&status),
    }
}

/// A unary answer as Connect's: the message in the request's codec, with the service's answer
/// metadata as headers.
fn unary_answer(answer: tonic::Response<Output>) -> Response {
    let (metadata, output, _) = answer.into_parts();
    let (content_type, body) = match output {
        Output::Protobuf(bytes) => ("application/proto", Body::from(bytes)),
        Output::Json(body) => ("application/json", body),
        Output::ToRead(bytes) => ("application/json", Body::from(bytes)),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Whether a send was answered from its idempotency record, and the identity's quota.
    let metadata = metadata.into_headers();
    for name in ANSWER_METADATA {
        if let Some(value) = metadata.get(name) {
            headers.insert(name, value.clone());
        }
    }
    response
}

/// A status with its stable `ErrorInfo` reason, as every status the gateway answers with.
fn status(code: Code, reason: &'static str, message: impl Into<String>) -> tonic::Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, []);
    tonic::Status::with_error_details(code, message.into(), details)
}

/// A fault of the gateway, logged with its detail and answered without it.
fn internal(detail: String) -> tonic::Status {
    tracing::error!(%detail, "Connect translation failed");
    status(
        Code::Internal,
        "INTERNAL",
        "internal error while translating the Connect call",
    )
}

/// Whether a streaming call's content type names one of the codecs served.
fn is_stream_codec(request: &Request<Body>) -> bool {
    let essence = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/connect+proto" | "application/connect+json"
    )
}

/// 415, as the protocol asks for a content type the method is not called with.
fn unsupported_media_type(message: &str) -> Response {
    let status = status(Code::InvalidArgument, "UNSUPPORTED_MEDIA_TYPE", message);
    let mut response = connect::unary_error(&status);
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
}

/// 405 for a `GET` of a method with side effects (or any other HTTP method), naming what the
/// method takes.
fn method_not_allowed(method: &MethodDescriptor) -> Response {
    let status = status(
        Code::Unimplemented,
        "METHOD_NOT_ALLOWED",
        format!(
            "{} takes POST (GET only for methods marked NO_SIDE_EFFECTS)",
            method.full_name()
        ),
    );
    let mut response = connect::unary_error(&status);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// Wraps a gRPC service on its `/package.Service/` paths: Connect calls go to the translator,
/// everything else (gRPC, gRPC-Web, plain HTTP) to the service as before.
#[derive(Clone)]
pub struct ConnectPaths<S> {
    inner: S,
    connect: Arc<Connect>,
}

impl<S> ConnectPaths<S> {
    pub fn new(inner: S, connect: Arc<Connect>) -> Self {
        Self { inner, connect }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for ConnectPaths<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for ConnectPaths<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut protocol = Protocol::of(&request);
        if protocol == Protocol::Rest
            && request.method() != Method::POST
            && self.connect.takes_get(request.uri().path())
        {
            // A method without side effects also takes Connect's GET: a GET there is one
            // (Connect names what it lacks), and OPTIONS and 405 list GET with POST.
            if request.method() == Method::GET {
                protocol = Protocol::Connect;
            } else {
                let allowed = methods::allowed(&[Method::GET, Method::POST]);
                let answer = methods::other_method(&request, &allowed);
                return Either::Right(Box::pin(std::future::ready(Ok(answer))));
            }
        }
        if !matches!(protocol, Protocol::Connect | Protocol::ConnectStream { .. }) {
            return Either::Left(self.inner.call(request));
        }
        let connect = Arc::clone(&self.connect);
        let request = request.map(Body::new);
        Either::Right(Box::pin(async move {
            Ok(connect.handle(request, protocol).await)
        }))
    }
}

#[cfg(test)]
mod tests;
