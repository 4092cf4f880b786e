//! Answers, written once for every protocol: the gRPC status of a broker error ([`status`]),
//! the REST problem body derived from a status ([`problem`]), Connect's error JSON derived from
//! the same status ([`connect`]), a layer's refusal answered in
//! the caller's own protocol ([`rejection`]), and the methods a path takes ([`methods`]: 405
//! and `OPTIONS`). Layers, services and the transcoder all answer
//! through here, so neither imports the other to speak an error.

pub mod connect;
pub mod methods;
mod problem;
mod rejection;
mod status;

pub use problem::{PROBLEM_JSON, Problem, Violation, grpc_code_name, http_status};
pub use rejection::{Caller, Rejection};
pub use status::{
    ERROR_DOMAIN, ETAG_MISMATCH, IDEMPOTENCY_KEY_REUSED, MALFORMED_PROTOBUF, PAYLOAD_TOO_LARGE,
    QUOTA_EXCEEDED, RATE_LIMITED, SCOPE_MISSING, UNKNOWN_METHOD, broker_status,
    consumer_not_allowed, invalid_field, malformed_protobuf, over_budget, reason,
    request_over_budget, scope_missing, shutting_down,
};
