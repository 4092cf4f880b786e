//! Which methods a path takes, answered the same way on every route: a method it does not take
//! gets 405 as a problem with `Allow`, and a plain `OPTIONS` (CORS preflights are the CORS
//! layer's) gets 204 with `Allow`. Every path that exists answers `OPTIONS`, so every `Allow`
//! lists it. `HEAD` is listed where the caller lists it: on a route that only reads, beside
//! its `GET`.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    handler::Handler,
    http::{HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::MethodRouter,
};
use futures_util::FutureExt;
use futures_util::future::{Either, Map, Ready};
use tower::Service;

use super::{Problem, Rejection};
use crate::extensions::{Protocol, RequestId};

/// `methods` as `Allow` lists them: in order, once each, `OPTIONS` last.
pub fn allowed(methods: &[Method]) -> Vec<Method> {
    let mut allowed: Vec<Method> = Vec::with_capacity(methods.len() + 1);
    for method in methods {
        if !allowed.contains(method) {
            allowed.push(method.clone());
        }
    }
    allowed.retain(|method| *method != Method::OPTIONS);
    allowed.push(Method::OPTIONS);
    allowed
}

/// 405 for `method` on `path`, as a problem whose `Allow` lists `allowed` (see [`allowed`]).
pub fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {path}"),
    )
    .with_allow(allowed)
}

/// A plain `OPTIONS`: 204, and the methods the path takes (see [`allowed`]).
pub fn options(allowed: &[Method]) -> Response {
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// A method `request`'s path does not serve: 204 with `Allow` for a plain `OPTIONS`, else 405
/// as a problem with `Allow` and the request's id.
pub fn other_method<B>(request: &Request<B>, allowed: &[Method]) -> Response {
    if *request.method() == Method::OPTIONS {
        return options(allowed);
    }
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.as_str().to_owned());
    method_not_allowed(request.method(), request.uri().path(), allowed)
        .with_request_id(request_id)
        .into_response()
}

/// A route that only reads (`GET`, so `HEAD`): `OPTIONS` and other methods are answered as
/// everywhere else, not with axum's bare 405.
pub fn read_only<H, T, S>(handler: H) -> MethodRouter<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    axum::routing::get(handler)
        .options(|| async { options(&allowed(&[Method::GET, Method::HEAD])) })
        .fallback(|request: Request<Body>| async move {
            other_method(&request, &allowed(&[Method::GET, Method::HEAD]))
        })
}

/// Wraps a gRPC service (under its gRPC-Web translation): gRPC and gRPC-Web calls pass, as do
/// plain HTTP `POST`s (tonic-web refuses those as before); other plain HTTP methods on its
/// paths are answered like on any other path, `POST` being the one method they take.
#[derive(Debug, Clone)]
pub struct GrpcPaths<S> {
    inner: S,
}

impl<S> GrpcPaths<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for GrpcPaths<S> {
    const NAME: &'static str = S::NAME;
}

type Answered<F, R> = Map<F, fn(Result<R, Infallible>) -> Result<Response, Infallible>>;

impl<S, B> Service<Request<B>> for GrpcPaths<S>
where
    S: Service<Request<B>, Error = Infallible>,
    S::Response: IntoResponse,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Answered<S::Future, S::Response>, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let protocol = Protocol::of(&request);
        if matches!(protocol, Protocol::Connect | Protocol::ConnectStream { .. }) {
            // Only the API's services take Connect (they are wrapped for it before this);
            // health and reflection are gRPC's, and tonic-web would answer an empty 400.
            let answer = Rejection::new(
                tonic::Code::Unimplemented,
                "CONNECT_NOT_SERVED",
                format!(
                    "{} is served over gRPC and gRPC-Web, not Connect",
                    request.uri().path()
                ),
            )
            .http_status(StatusCode::NOT_FOUND)
            .respond(&request);
            return Either::Right(futures_util::future::ready(Ok(answer)));
        }
        if *request.method() == Method::POST || protocol != Protocol::Rest {
            let into_response: fn(Result<S::Response, Infallible>) -> Result<Response, Infallible> =
                |answer| answer.map(IntoResponse::into_response);
            return Either::Left(self.inner.call(request).map(into_response));
        }
        let answer = other_method(&request, &allowed(&[Method::POST]));
        Either::Right(futures_util::future::ready(Ok(answer)))
    }
}
