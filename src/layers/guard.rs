//! The one shape of every admission layer (allowed hosts, rate limit, API key, shedding): a
//! [`Policy`] checks each request before it goes further and either admits it, holding what it
//! needs until the answer (a permit), or refuses it with a [`Rejection`] answered in the
//! caller's protocol. Which calls a policy never sees is written once, in [`Exempt`].

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{Request, Response},
};
use futures_util::future::{Either, Ready};
use tower::{Layer, Service};

use super::after::{AfterAnswer, Answering};
use crate::answer::Rejection;

/// Calls a guard lets through unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exempt {
    /// Every call is checked.
    Nothing,
    /// The one-shot health probes (`Health/Check`, `/health`, `/ready`): an overloaded or
    /// rate-limited gateway must still answer Kubernetes. A `Watch` stays open and is checked.
    HealthChecks,
    /// The whole gRPC health service (`Check` and `Watch`), which Kubernetes calls without a key.
    HealthService,
}

impl Exempt {
    pub fn covers(self, path: &str) -> bool {
        match self {
            Exempt::Nothing => false,
            Exempt::HealthChecks => {
                path == "/grpc.health.v1.Health/Check" || path == "/health" || path == "/ready"
            }
            Exempt::HealthService => path.starts_with("/grpc.health.v1.Health/"),
        }
    }
}

/// One admission rule.
pub trait Policy: Send + Sync + 'static {
    /// What an admitted call holds until it is answered (a permit); `()` for most.
    type Admitted: Send + 'static;

    /// The calls this policy never sees.
    const EXEMPT: Exempt;

    /// Admits `request` (which it may adjust, e.g. strip a credential) or refuses it.
    fn check(&self, request: &mut Request<Body>) -> Result<Self::Admitted, Rejection>;

    /// Called with the answer's head; what was admitted is dropped after it unless kept here.
    fn answered(&self, admitted: Self::Admitted, response: Response<Body>) -> Response<Body> {
        drop(admitted);
        response
    }
}

/// A [`Policy`] as a Tower layer.
#[derive(Debug)]
pub struct GuardLayer<P> {
    policy: Arc<P>,
}

impl<P> Clone for GuardLayer<P> {
    fn clone(&self) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<P> GuardLayer<P> {
    pub fn new(policy: P) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S, P> Layer<S> for GuardLayer<P> {
    type Service = Guard<S, P>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The policy is shared, not cloned: axum clones the whole stack for each call, and each
/// admitted call keeps its guard's policy until answered.
#[derive(Debug)]
pub struct Guard<S, P> {
    inner: S,
    policy: Arc<P>,
}

impl<S: Clone, P> Clone for Guard<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S, P> Service<Request<Body>> for Guard<S, P>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    P: Policy,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Either<Answering<S::Future, Settle<P>>, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let admitted = if P::EXEMPT.covers(request.uri().path()) {
            None
        } else {
            match self.policy.check(&mut request) {
                Ok(admitted) => Some(admitted),
                Err(rejection) => {
                    return Either::Right(futures_util::future::ready(Ok(
                        rejection.respond(&request)
                    )));
                }
            }
        };
        let settle = Settle {
            admitted,
            policy: Arc::clone(&self.policy),
        };
        Either::Left(Answering::new(self.inner.call(request), settle))
    }
}

/// What an admitted call holds, handed to [`Policy::answered`] with the answer.
pub struct Settle<P: Policy> {
    admitted: Option<P::Admitted>,
    policy: Arc<P>,
}

impl<P: Policy> AfterAnswer<Body> for Settle<P> {
    fn answered(self, response: Response<Body>) -> Response<Body> {
        match self.admitted {
            Some(admitted) => self.policy.answered(admitted, response),
            None => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use axum::http::{HeaderValue, StatusCode};
    use tonic::Code;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// Refuses `/refused`, counts its checks, and marks the answers it admitted.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl Policy for Counting {
        type Admitted = &'static str;
        const EXEMPT: Exempt = Exempt::HealthChecks;

        fn check(&self, request: &mut Request<Body>) -> Result<&'static str, Rejection> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if request.uri().path() == "/refused" {
                return Err(Rejection::new(Code::PermissionDenied, "NO", "refused"));
            }
            Ok("admitted")
        }

        fn answered(&self, admitted: &'static str, mut response: Response<Body>) -> Response<Body> {
            response
                .headers_mut()
                .insert("x-admitted", HeaderValue::from_static(admitted));
            response
        }
    }

    async fn call(policy: &Counting, path: &str) -> Response<Body> {
        let inner = service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        GuardLayer::new(policy.clone())
            .layer(inner)
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn exempt_calls_skip_the_check_and_refusals_never_reach_the_service() {
        let policy = Counting::default();
        let probe = call(&policy, "/health").await;
        assert_eq!(
            policy.0.load(Ordering::SeqCst),
            0,
            "a probe is never checked"
        );
        assert!(probe.headers().get("x-admitted").is_none());

        let admitted = call(&policy, "/v1/streams").await;
        assert_eq!(admitted.headers()["x-admitted"], "admitted");

        let refused = call(&policy, "/refused").await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.headers().get("x-admitted").is_none());
        assert_eq!(policy.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_exemptions_cover_exactly_their_paths() {
        assert!(Exempt::HealthChecks.covers("/grpc.health.v1.Health/Check"));
        assert!(!Exempt::HealthChecks.covers("/grpc.health.v1.Health/Watch"));
        assert!(Exempt::HealthService.covers("/grpc.health.v1.Health/Watch"));
        assert!(!Exempt::HealthService.covers("/health"));
        assert!(!Exempt::Nothing.covers("/health"));
        assert!(!Exempt::HealthChecks.covers("/healthz"));
    }
}
