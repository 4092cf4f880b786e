//! Scopes and quotas, per identity: the policy that guards each of the API's gRPC services,
//! whatever protocol reached it (gRPC and gRPC-Web directly, REST and Connect through
//! `admit_call`/`settle_call` around the method itself, in their direct calls), so
//! every protocol is judged by the same policy, keyed by the same gRPC path.
//!
//! The scope each RPC needs is read from the descriptor set at start-up
//! (`iggy.gateway.v1.required_scope`; a method without it fails start-up). Here, before the
//! request is read: the caller must hold that scope on some pattern (else PERMISSION_DENIED,
//! reason `SCOPE_MISSING`), and be within its quota for the call's class (produce for `write`,
//! consume for `read`; else RESOURCE_EXHAUSTED, `QUOTA_EXCEEDED`, with `RetryInfo` and
//! `RateLimit-*`). An admitted call carries an [`Access`] in its extensions: the service checks
//! the stream and topic its request names against it (layers never read bodies), and when the
//! answer comes back here a call whose target was never checked is refused, so a service that
//! forgot the check fails closed. Admin calls get their audit line here, with their outcome.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{Request, Response, StatusCode},
};
use prost_reflect::Value;
use tonic::{Code, server::NamedService};
use tower::{Layer, Service};

use super::guard::{Exempt, Guard, GuardLayer, Policy};
use crate::{
    answer::{Caller, QUOTA_EXCEEDED, RATE_LIMITED, Rejection, SCOPE_MISSING, grpc_code_name},
    extensions::{RequestId, names},
    identity::{Access, Identity, KeyRing, Rpc, Scope, Target, audit_refused},
    metrics::Metrics,
};

/// The package whose services are guarded.
const PACKAGE: &str = "iggy.gateway.v1";
const SCOPE_OPTION: &str = "iggy.gateway.v1.required_scope";

/// Every RPC of the API by gRPC path, with the scope it needs. Read on every call and never
/// written after start-up, so a fast hash: a caller's path is only ever looked up in it.
#[derive(Debug, Clone, Default)]
pub struct RpcTable(HashMap<String, Arc<Rpc>, foldhash::fast::RandomState>);

impl RpcTable {
    /// Reads `required_scope` of every method of the API's services; one without it, or with
    /// `SCOPE_UNSPECIFIED`, is an error naming it.
    pub fn from_descriptors() -> Result<Self, String> {
        let pool = crate::descriptors::pool()?;
        let option = pool
            .get_extension_by_name(SCOPE_OPTION)
            .ok_or("the descriptor set lacks iggy.gateway.v1.required_scope")?;
        let mut rpcs = HashMap::default();
        for service in pool.services().filter(|s| s.package_name() == PACKAGE) {
            for method in service.methods() {
                let options = method.options();
                let number = match options.get_extension(&option).as_ref() {
                    Value::EnumNumber(number) if options.has_extension(&option) => *number,
                    _ => 0,
                };
                let scope = match number {
                    1 => Scope::Read,
                    2 => Scope::Write,
                    3 => Scope::Admin,
                    _ => {
                        return Err(format!(
                            "{} declares no required_scope (see http_options.proto)",
                            method.full_name()
                        ));
                    }
                };
                let path = format!("/{}/{}", service.full_name(), method.name());
                let rpc = Rpc {
                    path: path.clone(),
                    name: format!("{}.{}", service.name(), method.name()),
                    scope,
                };
                rpcs.insert(path, Arc::new(rpc));
            }
        }
        Ok(Self(rpcs))
    }

    pub fn get(&self, path: &str) -> Option<&Arc<Rpc>> {
        self.0.get(path)
    }

    pub fn rpcs(&self) -> impl Iterator<Item = &Arc<Rpc>> {
        self.0.values()
    }
}

/// The scope and quota policy; see the module's documentation.
#[derive(Clone)]
pub struct Scopes {
    table: Arc<RpcTable>,
    keys: Arc<KeyRing>,
    metrics: Arc<Metrics>,
}

impl Scopes {
    pub fn new(keys: Arc<KeyRing>, metrics: Arc<Metrics>) -> Result<Self, String> {
        Ok(Self {
            table: Arc::new(RpcTable::from_descriptors()?),
            keys,
            metrics,
        })
    }
}

impl Scopes {
    /// `service` (a gRPC service of the API, as mounted on the router) behind this policy.
    pub fn guard<S>(&self, service: S) -> Scoped<S> {
        Scoped(GuardLayer::new(self.clone()).layer(service))
    }
}

/// A gRPC service behind [`Scopes`], mountable where the service itself would be (tonic's
/// router hands services its own body type; the guard reads axum's).
#[derive(Clone)]
pub struct Scoped<S>(Guard<S, Scopes>);

impl<S: NamedService> NamedService for Scoped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<tonic::body::Body>> for Scoped<S>
where
    Guard<S, Scopes>: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <Guard<S, Scopes> as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        self.0.call(request.map(Body::new))
    }
}

/// What an admitted call holds until it is answered.
pub struct Admitted {
    access: Arc<Access>,
    caller: Caller,
}

impl Policy for Scopes {
    type Admitted = Admitted;
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<Admitted, Rejection> {
        // A path the table lacks is no RPC of ours, under a service that is: UNIMPLEMENTED,
        // with its reason, as for a service the gateway lacks (tonic's own answer has
        // neither). Whatever is sent to an RPC's path is admitted whatever its content type
        // says: over HTTP/2 tonic serves a call whose content type is not gRPC's too.
        let Some(rpc) = self.table.get(request.uri().path()).cloned() else {
            return Err(Rejection::unknown_method(request.uri().path()));
        };
        let caller = Caller::of(request);
        let access = self.admit(rpc, request.extensions_mut())?;
        Ok(Admitted { access, caller })
    }

    fn answered(&self, admitted: Admitted, response: Response<Body>) -> Response<Body> {
        let Admitted { access, caller } = admitted;
        // An error is trailers-only (its status in the head); a 200 without one succeeded or
        // is streaming. Any other HTTP status is tonic-web's refusal of what is not a call
        // (a GET, gRPC over HTTP/1.1): no service answered it.
        let code = match response
            .headers()
            .get(&names::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
        {
            Some(code) => Code::from(code),
            None if response.status() == StatusCode::OK => Code::Ok,
            None => return response,
        };
        match Self::settle(&access, code) {
            Ok(()) => response,
            Err(rejection) => rejection.respond_to(&caller),
        }
    }
}

/// The same policy for a call that reaches a service without HTTP in between (REST's direct
/// call): admitted by the RPC's gRPC path before the service runs, settled with its outcome.
impl Scopes {
    /// Admits a call to the RPC at `path` by what its `extensions` say of the caller (and adds
    /// its `Access` there); `None` when `path` is not an RPC of the API.
    pub fn admit_call(
        &self,
        path: &str,
        extensions: &mut axum::http::Extensions,
    ) -> Option<Result<Arc<Access>, Rejection>> {
        let rpc = self.table.get(path).cloned()?;
        Some(self.admit(rpc, extensions))
    }

    /// Whether `path` is an RPC of the API the policy knows.
    pub fn knows(&self, path: &str) -> bool {
        self.table.get(path).is_some()
    }

    /// Settles an admitted call with the code its service answered: refused when a success
    /// never checked its target; audited when it is an admin call.
    pub fn settle_call(&self, access: &Access, code: Code) -> Result<(), Rejection> {
        Self::settle(access, code)
    }

    fn admit(
        &self,
        rpc: Arc<Rpc>,
        extensions: &mut axum::http::Extensions,
    ) -> Result<Arc<Access>, Rejection> {
        // The API key layer gives every call an identity (anonymous when no key is needed): a
        // call without one did not come through it, and is refused rather than let through.
        let Some(identity) = extensions.get::<Arc<Identity>>().cloned() else {
            tracing::error!(method = %rpc.name, "a call reached the scope check without an identity");
            return Err(Rejection::new(
                Code::Unauthenticated,
                "IDENTITY_MISSING",
                "the call carries no identity",
            ));
        };
        let request_id = extensions
            .get::<RequestId>()
            .map(|id| Arc::clone(&id.0))
            .unwrap_or_default();
        let allowed = identity.allows(rpc.scope, &Target::Any);
        let class = rpc.scope.class();
        // A keys-file key skips the per-client rate limit: what its quotas do not count (admin
        // calls, and refusals, each of which writes an audit line) is held to that rate per
        // identity instead, so no key can call or log without bound.
        if (!allowed || class.is_none())
            && let Err(held) = self.keys.admit_uncounted(&identity)
        {
            self.metrics.identity_refused(identity.name(), RATE_LIMITED);
            return Err(Rejection::identity_rate_limited(
                identity.name(),
                held.per_second,
                held.burst,
                held.wait,
            ));
        }
        if !allowed {
            self.metrics
                .identity_refused(identity.name(), SCOPE_MISSING);
            audit_refused(&identity, &rpc, "*", &request_id);
            return Err(Rejection::new(
                Code::PermissionDenied,
                SCOPE_MISSING,
                format!(
                    "the key '{}' lacks scope '{}' (needed by {})",
                    identity.name(),
                    rpc.scope,
                    rpc.name
                ),
            )
            .metadata("scope", rpc.scope.as_str())
            .metadata("target", "*")
            .metadata("identity", identity.name()));
        }
        if let (Some(class), Some(quota)) = (class, identity.quota())
            && let Err(throttle) = quota.admit(class)
        {
            self.metrics
                .identity_refused(identity.name(), QUOTA_EXCEEDED);
            return Err(Rejection::quota_exceeded(identity.name(), throttle));
        }
        self.metrics
            .identity_call(identity.shared_name(), rpc.scope.as_str());
        let access = Arc::new(Access::new(
            identity,
            rpc,
            request_id,
            Arc::clone(&self.keys),
            Arc::clone(&self.metrics),
        ));
        extensions.insert(Arc::clone(&access));
        Ok(access)
    }

    fn settle(access: &Access, code: Code) -> Result<(), Rejection> {
        if code == Code::Ok && !access.was_checked() {
            tracing::error!(
                method = %access.rpc().name,
                "the service answered without checking the call's target; refused"
            );
            return Err(Rejection::new(
                Code::Internal,
                "SCOPE_UNCHECKED",
                "the call's scope was not checked",
            ));
        }
        access.audit_outcome(grpc_code_name(code));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::identity::{Grant, Identity};

    fn scopes() -> Scopes {
        Scopes::new(
            Arc::new(KeyRing::from_static(&[])),
            Arc::new(Metrics::new()),
        )
        .expect("every RPC declares its scope")
    }

    fn call(path: &str, identity: Option<Identity>) -> Request<Body> {
        let mut request = Request::post(path)
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .expect("request");
        if let Some(identity) = identity {
            request.extensions_mut().insert(Arc::new(identity));
        }
        request
    }

    fn reader() -> Identity {
        Identity::named(
            "reader",
            [1; 32],
            vec![Grant::parse("read:orders/*").expect("grant")],
            None,
            None,
            None,
        )
    }

    fn grpc_status(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get(&names::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_success_whose_target_was_never_checked_is_refused() {
        // A service that answers without calling `Access::check`.
        let forgetful = service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let guarded = GuardLayer::new(scopes()).layer(forgetful);
        let response = guarded
            .oneshot(call(
                "/iggy.gateway.v1.StreamService/GetStream",
                Some(reader()),
            ))
            .await
            .expect("answers");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(grpc_status(&response), Some("13"), "INTERNAL");
    }

    #[tokio::test]
    async fn a_checked_call_passes_and_an_unheld_scope_or_a_missing_identity_is_refused() {
        let checking = service_fn(|request: Request<Body>| async move {
            let access = request.extensions().get::<Arc<Access>>().cloned();
            let checked = access.is_some_and(|access| {
                access
                    .check(&[Target::Topic("orders".into(), "created".into())])
                    .is_ok()
            });
            assert!(checked);
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let guarded = GuardLayer::new(scopes()).layer(checking);
        let ok = guarded
            .clone()
            .oneshot(call(
                "/iggy.gateway.v1.MessageService/PollMessages",
                Some(reader()),
            ))
            .await
            .expect("answers");
        assert_eq!(grpc_status(&ok), None, "passed through");
        let refused = guarded
            .clone()
            .oneshot(call(
                "/iggy.gateway.v1.MessageService/SendMessages",
                Some(reader()),
            ))
            .await
            .expect("answers");
        assert_eq!(grpc_status(&refused), Some("7"), "PERMISSION_DENIED");
        let anonymous = guarded
            .oneshot(call("/iggy.gateway.v1.MessageService/PollMessages", None))
            .await
            .expect("answers");
        assert_eq!(grpc_status(&anonymous), Some("16"), "UNAUTHENTICATED");
    }
}
