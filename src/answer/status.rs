//! Turning errors into answers, once, at the edge: every [`BrokerError`] becomes one gRPC
//! status with a stable `ErrorInfo` reason (and `RetryInfo` where a retry can help). REST
//! answers are derived from the same status, so both protocols speak one error vocabulary.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{broker::BrokerError, budget::Exhausted};

/// The `ErrorInfo.domain` of every error this gateway produces.
pub const ERROR_DOMAIN: &str = "iggy-gateway";

/// The reason of a conditional change refused because the resource's etag has changed; REST
/// answers it as 412 Precondition Failed (see `problem.rs`).
pub const ETAG_MISMATCH: &str = "ETAG_MISMATCH";

/// The reason of a send whose `Idempotency-Key` was used before with another body; REST
/// answers it as 422 Unprocessable Content (the IETF httpapi idempotency draft).
pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// The reason of a call refused because its key lacks the scope it needs on what it names;
/// `ErrorInfo.metadata` holds `scope`, `target` and `identity`.
pub const SCOPE_MISSING: &str = "SCOPE_MISSING";

/// The reason of a call over a rate that is not a keys-file quota: the per-client
/// `RATE_LIMIT_RPS`, or the same rate held per identity for a keys-file key's calls its quotas
/// do not count.
pub const RATE_LIMITED: &str = "RATE_LIMITED";

/// The reason of a call over one of its identity's quotas.
pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";

/// A request message that is not protobuf (see [`malformed_protobuf`]).
pub const MALFORMED_PROTOBUF: &str = "MALFORMED_PROTOBUF";

/// How long a caller should wait before retrying an unavailable backend.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The stable UPPER_SNAKE reason code of a broker error.
pub fn reason(err: &BrokerError) -> &'static str {
    match err {
        BrokerError::StreamNotFound(_) => "STREAM_NOT_FOUND",
        BrokerError::TopicNotFound { .. } => "TOPIC_NOT_FOUND",
        BrokerError::PartitionNotFound { .. } => "PARTITION_NOT_FOUND",
        BrokerError::ConsumerOffsetNotFound { .. } => "CONSUMER_OFFSET_NOT_FOUND",
        BrokerError::StreamAlreadyExists(_) => "STREAM_ALREADY_EXISTS",
        BrokerError::TopicAlreadyExists { .. } => "TOPIC_ALREADY_EXISTS",
        BrokerError::InvalidArgument { .. } => "INVALID_ARGUMENT",
        BrokerError::EtagMismatch { .. } => ETAG_MISMATCH,
        BrokerError::IdempotencyKeyReused => IDEMPOTENCY_KEY_REUSED,
        BrokerError::Unavailable(_) => "BACKEND_UNAVAILABLE",
        BrokerError::Timeout(_) => "BACKEND_TIMEOUT",
        BrokerError::Unauthenticated(_) => "BACKEND_UNAUTHENTICATED",
        BrokerError::Storage(_) => "BACKEND_STORAGE_ERROR",
    }
}

/// The gRPC status a broker error answers with.
pub fn broker_status(err: BrokerError) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason(&err), ERROR_DOMAIN, []);
    let (code, message) = match &err {
        BrokerError::StreamNotFound(_)
        | BrokerError::TopicNotFound { .. }
        | BrokerError::PartitionNotFound { .. }
        | BrokerError::ConsumerOffsetNotFound { .. } => (Code::NotFound, err.to_string()),
        BrokerError::StreamAlreadyExists(_) | BrokerError::TopicAlreadyExists { .. } => {
            (Code::AlreadyExists, err.to_string())
        }
        BrokerError::InvalidArgument { field, reason } => {
            details.add_bad_request_violation(*field, reason.clone());
            (Code::InvalidArgument, err.to_string())
        }
        // AIP-154: a stale etag is a failed precondition; the caller reads again and decides.
        BrokerError::EtagMismatch { .. } => (Code::FailedPrecondition, err.to_string()),
        // The IETF httpapi draft's 422: the key stands for another request.
        BrokerError::IdempotencyKeyReused => (Code::FailedPrecondition, err.to_string()),
        BrokerError::Unavailable(_) | BrokerError::Timeout(_) => {
            details.set_retry_info(Some(RETRY_AFTER));
            let code = if matches!(err, BrokerError::Timeout(_)) {
                Code::DeadlineExceeded
            } else {
                Code::Unavailable
            };
            (code, err.to_string())
        }
        // The gateway's own credentials failed: the caller can do nothing about it, and the
        // details are for the operator's log, not the caller.
        BrokerError::Unauthenticated(_) => {
            tracing::error!(error = %err, "backend refused the gateway's credentials");
            (Code::Unavailable, "backend unavailable".to_owned())
        }
        BrokerError::Storage(_) => {
            tracing::error!(error = %err, "backend storage error");
            (Code::Internal, "internal storage error".to_owned())
        }
    };
    Status::with_error_details(code, message, details)
}

/// The reason of a call to a method no service here has (a client newer than the gateway,
/// or a typo): UNIMPLEMENTED, or 404 for REST.
pub const UNKNOWN_METHOD: &str = "UNKNOWN_METHOD";

/// UNAVAILABLE (`SHUTTING_DOWN`, with a retry) for a stream the gateway ends as it stops.
pub fn shutting_down(what: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info("SHUTTING_DOWN", ERROR_DOMAIN, []);
    details.set_retry_info(Some(RETRY_AFTER));
    Status::with_error_details(
        Code::Unavailable,
        format!("the gateway is shutting down; {what}"),
        details,
    )
}

/// A call whose answer would take the gateway past `MAX_INFLIGHT_BYTES`: UNAVAILABLE with a
/// retry while other calls hold the budget, RESOURCE_EXHAUSTED when the answer alone is larger.
pub fn over_budget(exhausted: Exhausted, what: &str) -> Status {
    budget_status(exhausted, "ANSWER_TOO_LARGE", what)
}

/// The reason of a request that can never fit the budget of calls in flight (or the body
/// limit); REST answers it as 413 Content Too Large (see `problem.rs`).
pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";

/// A request refused by the budget of calls in flight (`MAX_INFLIGHT_BYTES`): OVERLOADED
/// (UNAVAILABLE, retry) while other calls hold it, PAYLOAD_TOO_LARGE (RESOURCE_EXHAUSTED) when
/// the request alone needs more than all of it.
pub fn request_over_budget(exhausted: Exhausted, what: &str) -> Status {
    budget_status(exhausted, PAYLOAD_TOO_LARGE, what)
}

/// OVERLOADED (UNAVAILABLE, retry) while other calls hold the budget; `too_large`
/// (RESOURCE_EXHAUSTED) when what was asked can never fit it.
fn budget_status(exhausted: Exhausted, too_large: &str, what: &str) -> Status {
    let mut details = ErrorDetails::new();
    let code = match exhausted {
        Exhausted::Busy { .. } => {
            details.set_error_info("OVERLOADED", ERROR_DOMAIN, []);
            details.set_retry_info(Some(RETRY_AFTER));
            Code::Unavailable
        }
        Exhausted::Never { .. } => {
            details.set_error_info(too_large, ERROR_DOMAIN, []);
            Code::ResourceExhausted
        }
    };
    Status::with_error_details(code, format!("{what}: {exhausted}"), details)
}

/// PERMISSION_DENIED: `identity` lacks `scope` on `target` (a stream, `stream/topic` or `*`).
pub fn scope_missing(identity: &str, scope: &str, target: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        SCOPE_MISSING,
        ERROR_DOMAIN,
        [
            ("scope".to_owned(), scope.to_owned()),
            ("target".to_owned(), target.to_owned()),
            ("identity".to_owned(), identity.to_owned()),
        ],
    );
    Status::with_error_details(
        Code::PermissionDenied,
        format!("the key '{identity}' lacks scope '{scope}' on '{target}'"),
        details,
    )
}

/// The reason of a call refused because its key may not use the consumer it names (the keys
/// file's `consumers`).
pub const CONSUMER_NOT_ALLOWED: &str = "CONSUMER_NOT_ALLOWED";

/// PERMISSION_DENIED: `identity` may not poll, subscribe or commit as `consumer`.
pub fn consumer_not_allowed(identity: &str, consumer: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        CONSUMER_NOT_ALLOWED,
        ERROR_DOMAIN,
        [
            ("consumer".to_owned(), consumer.to_owned()),
            ("identity".to_owned(), identity.to_owned()),
        ],
    );
    Status::with_error_details(
        Code::PermissionDenied,
        format!("the key '{identity}' may not use the consumer '{consumer}'"),
        details,
    )
}

/// A request message that does not decode as protobuf: INVALID_ARGUMENT, reason
/// `MALFORMED_PROTOBUF`, as malformed JSON is `MALFORMED_JSON`, on every protocol.
pub fn malformed_protobuf(why: impl std::fmt::Display) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(MALFORMED_PROTOBUF, ERROR_DOMAIN, []);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("the request is not valid protobuf: {why}"),
        details,
    )
}

/// A request field that failed validation: INVALID_ARGUMENT with a `BadRequest` violation
/// naming the field, so clients can point at it.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    let field = field.into();
    let description = description.into();
    let mut details = ErrorDetails::new();
    details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, []);
    details.add_bad_request_violation(field.clone(), description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        details,
    )
}

#[cfg(test)]
mod tests;
