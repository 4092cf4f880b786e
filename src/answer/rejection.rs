//! A layer's refusal, described once and answered in the caller's protocol: gRPC and gRPC-Web
//! callers get a `grpc-status` (HTTP 200, never 429 or 503, which gRPC clients would read as
//! UNAVAILABLE and retry), Connect callers the same status as Connect's error JSON (the code's
//! HTTP status for unary calls, an end-of-stream message for streams), REST callers an
//! `application/problem+json` body.

use std::time::Duration;

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use super::{ERROR_DOMAIN, Problem, QUOTA_EXCEEDED, RATE_LIMITED, connect, http_status};
use crate::{
    extensions::{Protocol, RejectedFor, RequestId},
    identity::Throttle,
};

/// What a refusal needs to know of its request: kept by layers that refuse after passing the
/// request on (timeouts), instead of a copy of its headers.
#[derive(Debug, Clone)]
pub struct Caller {
    protocol: Protocol,
    request_id: Option<std::sync::Arc<str>>,
}

impl Caller {
    pub fn of<B>(request: &Request<B>) -> Self {
        Self {
            protocol: Protocol::of(request),
            request_id: request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.clone()),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// A request a layer refuses, described once for both protocols.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: Code,
    /// REST status; usually the code's standard mapping, but 413 for an oversized body.
    pub http: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Extra headers for both protocols (`WWW-Authenticate`, `RateLimit-*`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `ErrorInfo.metadata` (gRPC) and the problem's `metadata` (REST): what the reason is about.
    pub metadata: Vec<(String, String)>,
}

impl Rejection {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            http: http_status(code),
            reason,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
            metadata: Vec::new(),
        }
    }

    pub fn metadata(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.push((key.to_owned(), value.into()));
        self
    }

    pub fn http_status(mut self, status: StatusCode) -> Self {
        self.http = status;
        self
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// RESOURCE_EXHAUSTED / 429 for a caller over a rate: `Retry-After` and `RetryInfo` say
    /// `wait`, `RateLimit-*` the `limit` (the requests its bucket holds) and when it resets.
    pub fn throttled(
        reason: &'static str,
        message: impl Into<String>,
        limit: u64,
        wait: Duration,
    ) -> Self {
        let wait = wait.max(Duration::from_millis(1));
        Self::new(Code::ResourceExhausted, reason, message)
            .retry_after(wait)
            .header(
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from(limit),
            )
            .header(
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from_static("0"),
            )
            .header(
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(wait.as_secs().max(1)),
            )
    }

    /// A keys-file identity over the rate its calls that its quotas do not count are held
    /// to (`RATE_LIMIT_RPS` a second, `burst` at once, per identity).
    pub fn identity_rate_limited(name: &str, per_second: u32, burst: u32, wait: Duration) -> Self {
        Self::throttled(
            RATE_LIMITED,
            format!(
                "'{name}' is over the rate limit of {per_second} requests per second for calls \
                 its quotas do not count; retry in {} ms",
                wait.as_millis().max(1)
            ),
            u64::from(burst),
            wait,
        )
        .metadata("identity", name)
    }

    /// A keys-file identity over one of its quotas.
    pub fn quota_exceeded(name: &str, throttle: Throttle) -> Self {
        let quota = format!("{}_{}_per_second", throttle.class.as_str(), throttle.unit);
        Self::throttled(
            QUOTA_EXCEEDED,
            format!(
                "'{name}' is over its {} quota of {} {} per second; retry in {} ms",
                throttle.class.as_str(),
                throttle.limit,
                throttle.unit,
                throttle.wait.as_millis().max(1)
            ),
            throttle.limit,
            throttle.wait,
        )
        .metadata("identity", name)
        .metadata("quota", quota)
    }

    /// A call to `path`, a method no service here has: UNIMPLEMENTED (REST: 404).
    pub fn unknown_method(path: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            super::UNKNOWN_METHOD,
            format!("no method {path} here"),
        )
        .http_status(StatusCode::NOT_FOUND)
    }

    /// The refusal as a gRPC status (`ErrorInfo`, and `RetryInfo` when it says when), for a
    /// service that refuses as a layer would.
    pub fn status(&self) -> tonic::Status {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            self.reason,
            ERROR_DOMAIN,
            self.metadata
                .iter()
                .cloned()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if let Some(wait) = self.retry_after {
            details.set_retry_info(Some(wait));
        }
        let mut status =
            tonic::Status::with_error_details(self.code, self.message.clone(), details);
        // Its headers (`RateLimit-*`) as metadata, which REST and Connect echo as headers.
        for (name, value) in &self.headers {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_bytes()),
            ) {
                status.metadata_mut().insert(key, value);
            }
        }
        status
    }

    /// The answer to `request` in its own protocol.
    pub fn respond<B>(self, request: &Request<B>) -> Response {
        self.respond_to(&Caller::of(request))
    }

    /// The answer to a caller whose request has already moved on (see [`Caller`]).
    pub fn respond_to(self, caller: &Caller) -> Response {
        let request_id = caller.request_id.as_deref().map(str::to_owned);
        let protocol = caller.protocol;
        let retry_secs = self.retry_after.map(|wait| wait.as_secs().max(1));
        let reason = self.reason;
        let status = || self.status();
        let mut response = match protocol {
            Protocol::Connect => connect::unary_error(&status()),
            Protocol::ConnectStream { json } => connect::stream_error(&status(), json),
            Protocol::Grpc | Protocol::GrpcWeb => {
                let mut response = status().into_http::<Body>();
                if protocol == Protocol::GrpcWeb {
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc-web+proto"),
                    );
                }
                response
            }
            Protocol::Rest => {
                let mut problem =
                    Problem::new(self.http, self.reason, self.message.clone()).with_code(self.code);
                problem = problem
                    .with_request_id(request_id)
                    .with_metadata(self.metadata.clone());
                problem.into_response()
            }
        };
        let headers = response.headers_mut();
        if let Some(secs) = retry_secs
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response.extensions_mut().insert(RejectedFor(reason));
        response
    }
}
