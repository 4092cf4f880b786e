//! CORS for preflights only: tower-http's `CorsLayer` answers every `OPTIONS` request itself,
//! with its fixed method list and no `Allow`, whatever the path (even one that does not exist).
//! A preflight is an `OPTIONS` with `Origin` and `Access-Control-Request-Method` (Fetch); any
//! other `OPTIONS` goes past CORS to the routes, which answer with the path's real `Allow`.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{Method, Request, Response, header},
};
use futures_util::future::Either;
use tower::{Layer, Service, ServiceExt, util::Oneshot};
use tower_http::cors::{Cors, CorsLayer, ResponseFuture};

/// [`CorsLayer`], for everything but a plain `OPTIONS`.
#[derive(Debug, Clone)]
pub struct PreflightOnlyLayer {
    cors: CorsLayer,
}

impl PreflightOnlyLayer {
    pub fn new(cors: CorsLayer) -> Self {
        Self { cors }
    }
}

impl<S: Clone> Layer<S> for PreflightOnlyLayer {
    type Service = PreflightOnly<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PreflightOnly {
            cors: self.cors.layer(inner.clone()),
            plain: inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PreflightOnly<S> {
    cors: Cors<S>,
    /// The same inner service, without CORS, for a plain `OPTIONS`.
    plain: S,
}

fn is_preflight(request: &Request<Body>) -> bool {
    request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl<S> Service<Request<Body>> for PreflightOnly<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<ResponseFuture<S::Future>, Oneshot<S, Request<Body>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if *request.method() == Method::OPTIONS && !is_preflight(&request) {
            // `plain` was not polled: a clone driven to readiness by `oneshot` takes the call.
            return Either::Right(self.plain.clone().oneshot(request));
        }
        Either::Left(self.cors.call(request))
    }
}
