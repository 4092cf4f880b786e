//! gRPC server reflection (v1 and v1alpha, for grpcurl and buf curl), built on its first call.
//! Each of the two services keeps a copy of every file, comments and all, and a map of their
//! symbols: most of a megabyte together, which a gateway that nobody inspects need not keep
//! from start-up on. The first call builds it in a few milliseconds.

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use tonic::{Status, body::Body, server::NamedService};
use tower::{Service, ServiceExt as _};

use tonic_reflection::server::{v1, v1alpha};

use crate::proto;

/// The v1 service, built on its first call.
pub(super) fn v1() -> OnFirstCall<v1::ServerReflectionServer<impl v1::ServerReflection>> {
    OnFirstCall::new(|| builder().build_v1().map_err(|err| err.to_string()))
}

/// The v1alpha service, which older tools ask, built on its first call.
pub(super) fn v1alpha()
-> OnFirstCall<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>> {
    OnFirstCall::new(|| builder().build_v1alpha().map_err(|err| err.to_string()))
}

/// The API's files with their comments, which `grpcurl describe` prints, and health's.
fn builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// A service built by `build` when it is first called; clones share it.
pub(super) struct OnFirstCall<S> {
    built: Arc<OnceLock<Result<S, String>>>,
    build: fn() -> Result<S, String>,
}

impl<S> OnFirstCall<S> {
    fn new(build: fn() -> Result<S, String>) -> Self {
        Self {
            built: Arc::new(OnceLock::new()),
            build,
        }
    }

    #[cfg(test)]
    fn is_built(&self) -> bool {
        self.built.get().is_some()
    }
}

impl<S> Clone for OnFirstCall<S> {
    fn clone(&self) -> Self {
        Self {
            built: Arc::clone(&self.built),
            build: self.build,
        }
    }
}

impl<S: NamedService> NamedService for OnFirstCall<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for OnFirstCall<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<
        tower::util::Oneshot<S, http::Request<Body>>,
        Ready<Result<http::Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call is made on a clone of the one built, which the call itself readies.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.built.get_or_init(self.build) {
            Ok(service) => Either::Left(service.clone().oneshot(request)),
            // The sets are compiled in and a test builds them, so this is a fault of the build.
            Err(err) => Either::Right(ready(Ok(Status::internal(format!(
                "server reflection could not be built: {err}"
            ))
            .into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<S>(service: &mut OnFirstCall<S>) -> http::Response<Body>
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone,
        S::Future: Unpin,
    {
        let request = http::Request::builder()
            .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .expect("a request");
        match futures_util::FutureExt::now_or_never(service.call(request)) {
            Some(Ok(response)) => response,
            Some(Err(never)) => match never {},
            None => panic!("answered at once"),
        }
    }

    fn name<S: NamedService>(_: &S) -> &'static str {
        S::NAME
    }

    #[test]
    fn reflection_is_built_on_the_first_call_and_shared_by_clones() {
        let service = v1();
        assert!(!service.is_built(), "nothing is decoded at start-up");
        let mut clone = service.clone();
        let _answer = clone.call(http::Request::new(Body::empty()));
        assert!(
            service.is_built(),
            "the first call builds it, for every clone"
        );
        assert!(matches!(service.built.get(), Some(Ok(_))));
        assert_eq!(name(&service), "grpc.reflection.v1.ServerReflection");

        let older = v1alpha();
        assert!((older.build)().is_ok(), "the compiled-in sets build");
        assert_eq!(name(&older), "grpc.reflection.v1alpha.ServerReflection");
    }

    /// Had a set failed to build, each call gets INTERNAL, saying why, and no panic.
    #[test]
    fn a_reflection_that_cannot_be_built_answers_internal() {
        #[derive(Clone)]
        struct Never;
        impl Service<http::Request<Body>> for Never {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = Ready<Result<http::Response<Body>, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<Body>) -> Self::Future {
                ready(Ok(http::Response::new(Body::empty())))
            }
        }
        let mut service: OnFirstCall<Never> = OnFirstCall::new(|| Err("a broken set".into()));
        for _ in 0..2 {
            let response = call(&mut service);
            assert_eq!(response.headers()["grpc-status"], "13");
            let message = response.headers()["grpc-message"]
                .to_str()
                .unwrap_or_default()
                .replace("%20", " "); // percent-encoded, as gRPC sends it
            assert!(message.contains("a broken set"), "{message}");
        }
    }
}
