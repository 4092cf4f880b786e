//! REST errors as `application/problem+json` (RFC 9457), derived from the gRPC status the
//! service produced, so both protocols carry the same reason code and field violations.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use super::{ERROR_DOMAIN, ETAG_MISMATCH, IDEMPOTENCY_KEY_REUSED, PAYLOAD_TOO_LARGE};
use crate::extensions::AnsweredCode;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP status for a gRPC code, as grpc-gateway and Envoy map them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// One problem body. `reason` is the same stable code gRPC clients read from `ErrorInfo`.
/// Boxed, so `Result<_, Problem>` stays small on the happy path.
#[derive(Debug, Clone)]
pub struct Problem(Box<Body>);

#[derive(Debug, Clone, Serialize)]
struct Body {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub reason: String,
    /// The gRPC code name, for clients that speak both protocols.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// `ErrorInfo.metadata`: what the reason is about (the scope missing, the quota exceeded).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
    #[serde(skip)]
    allow: Option<String>,
    /// `code`, for what reads the answer back (`AnsweredCode`).
    #[serde(skip)]
    grpc: Code,
}

impl Problem {
    pub fn new(status: StatusCode, reason: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(Body {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            reason: reason.to_owned(),
            code: grpc_code_name(status_code_to_grpc(status)).to_owned(),
            request_id: None,
            violations: Vec::new(),
            metadata: serde_json::Map::new(),
            retry_after_secs: None,
            allow: None,
            grpc: status_code_to_grpc(status),
        }))
    }

    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The gRPC code other protocols answer the same refusal with, where the HTTP status
    /// alone would name another (415 for a coding the gateway lacks is UNIMPLEMENTED, 421 for
    /// a host it does not serve PERMISSION_DENIED).
    pub fn with_code(mut self, code: tonic::Code) -> Self {
        self.0.code = grpc_code_name(code).to_owned();
        self.0.grpc = code;
        self
    }

    /// The gRPC code the problem stands for.
    pub fn code(&self) -> tonic::Code {
        self.0.grpc
    }

    /// The problem body as JSON text (for errors inside a stream).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&*self.0).unwrap_or_default()
    }

    /// A request field the client got wrong (400, with the field named).
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let field = field.into();
        let description = description.into();
        let mut problem = Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            format!("{field}: {description}"),
        );
        problem.0.violations.push(Violation { field, description });
        problem
    }

    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        let reason = details
            .error_info()
            .map(|info| info.reason.clone())
            .unwrap_or_else(|| grpc_code_name(status.code()).to_owned());
        let metadata = details
            .error_info()
            .map(|info| {
                let mut pairs: Vec<(String, String)> = info
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                pairs.sort();
                pairs
            })
            .unwrap_or_default();
        // FAILED_PRECONDITION is 400 in general; a stale etag is HTTP's own failed
        // precondition, 412, which HTTP clients and proxies know to answer by reading again.
        let http = if reason == ETAG_MISMATCH {
            StatusCode::PRECONDITION_FAILED
        } else if reason == IDEMPOTENCY_KEY_REUSED {
            StatusCode::UNPROCESSABLE_ENTITY
        } else if reason == PAYLOAD_TOO_LARGE {
            // RESOURCE_EXHAUSTED is 429 in general; a request that can never fit is HTTP's 413.
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            http_status(status.code())
        };
        let mut problem = Self::new(http, &reason, status.message())
            .with_metadata(metadata)
            .with_code(status.code());
        if let Some(bad) = details.bad_request() {
            problem.0.violations = bad
                .field_violations
                .iter()
                .map(|v| Violation {
                    field: v.field.clone(),
                    description: v.description.clone(),
                })
                .collect();
        }
        problem.0.retry_after_secs = details
            .retry_info()
            .and_then(|info| info.retry_delay)
            .map(|delay| delay.as_secs().max(1));
        problem
    }

    /// The same problem as the gRPC status it stands for: its code, its detail as the
    /// message, its reason as `ErrorInfo`, its violations as `BadRequest`, its wait as
    /// `RetryInfo`. How a problem found before the call (a body that does not parse) reaches a
    /// protocol that speaks statuses (Connect).
    pub fn to_status(&self) -> tonic::Status {
        let body = &self.0;
        let code = ALL_CODES
            .into_iter()
            .find(|code| grpc_code_name(*code) == body.code)
            .unwrap_or(Code::Unknown);
        let mut details = ErrorDetails::new();
        details.set_error_info(body.reason.clone(), ERROR_DOMAIN, []);
        for violation in &body.violations {
            details
                .add_bad_request_violation(violation.field.clone(), violation.description.clone());
        }
        if let Some(secs) = body.retry_after_secs {
            details.set_retry_info(Some(std::time::Duration::from_secs(secs)));
        }
        tonic::Status::with_error_details(code, body.detail.clone(), details)
    }

    /// The same problem answered 412 Precondition Failed: the call's outcome showed that the
    /// request's HTTP precondition (`If-None-Match: *` meeting an existing resource) was false.
    pub fn precondition_failed(mut self) -> Self {
        let status = StatusCode::PRECONDITION_FAILED;
        self.0.status = status.as_u16();
        self.0.title = status.canonical_reason().unwrap_or("Error").to_owned();
        self
    }

    /// Adds `ErrorInfo`'s metadata as the problem's `metadata` member.
    pub fn with_metadata(mut self, metadata: impl IntoIterator<Item = (String, String)>) -> Self {
        for (key, value) in metadata {
            self.0
                .metadata
                .insert(key, serde_json::Value::String(value));
        }
        self
    }

    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.0.request_id = request_id;
        self
    }

    /// Asks the client to retry after `secs` seconds (`Retry-After`).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after_secs = Some(secs);
        self
    }

    pub fn with_allow(mut self, methods: &[http::Method]) -> Self {
        self.0.allow = Some(
            methods
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        );
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let problem = *self.0;
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = problem.retry_after_secs
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if let Some(allow) = problem.allow
            && let Ok(value) = HeaderValue::from_str(&allow)
        {
            headers.insert(header::ALLOW, value);
        }
        response.extensions_mut().insert(AnsweredCode(problem.grpc));
        response
    }
}

fn status_code_to_grpc(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 405 | 411 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        413 | 429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// `NOT_FOUND`, `INVALID_ARGUMENT`, …: the canonical names of gRPC codes.
pub fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
