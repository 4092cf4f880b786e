use tonic::Code;
use tonic_types::StatusExt;

use super::*;
use crate::broker::Identifier;

#[test]
fn not_found_carries_a_stable_reason() {
    let status = broker_status(BrokerError::StreamNotFound(Identifier::Name(
        "orders".into(),
    )));
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "stream 'orders' not found");
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "STREAM_NOT_FOUND");
    assert_eq!(info.domain, ERROR_DOMAIN);
}

#[test]
fn storage_errors_hide_their_cause_from_callers() {
    let status = broker_status(BrokerError::Storage("disk /dev/sda1 on fire".into()));
    assert_eq!(status.code(), Code::Internal);
    assert!(!status.message().contains("sda1"));
}

#[test]
fn unavailable_backends_ask_for_a_retry() {
    let status = broker_status(BrokerError::Unavailable("connection refused".into()));
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.get_details_retry_info().is_some());
}

#[test]
fn invalid_fields_are_named_in_a_bad_request_violation() {
    let status = invalid_field("messages[2].id", "not a UUID");
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad = status.get_details_bad_request().expect("bad request");
    assert_eq!(bad.field_violations[0].field, "messages[2].id");
}

#[test]
fn a_stale_etag_is_a_failed_precondition_with_its_own_reason() {
    let status = broker_status(BrokerError::EtagMismatch {
        resource: "stream 'orders'".into(),
    });
    assert_eq!(status.code(), Code::FailedPrecondition);
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, ETAG_MISMATCH);
    assert!(status.message().contains("stream 'orders'"));
}
