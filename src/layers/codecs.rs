//! gRPC-Web bodies must be protobuf (`application/grpc-web`, `+proto`, `-text`): a browser
//! client set to JSON (`application/grpc-web+json`) is refused in gRPC-Web's own terms, a
//! `grpc-status` with a message it can show, never the empty 400 tonic-web would answer. The
//! same for gRPC with a codec other than protobuf. JSON is REST's (`/v1/…`). Framing that
//! tonic refuses as INTERNAL though the caller is at fault is answered INVALID_ARGUMENT.

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header},
};
use tonic::Code;

use super::guard::{Exempt, Policy};
use crate::answer::Rejection;

/// The content types of gRPC and gRPC-Web bodies the services decode.
fn is_protobuf_grpc(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    matches!(
        essence,
        "application/grpc"
            | "application/grpc+proto"
            | "application/grpc-web"
            | "application/grpc-web+proto"
            | "application/grpc-web-text"
            | "application/grpc-web-text+proto"
    )
}

/// Refuses gRPC and gRPC-Web bodies in any codec but protobuf.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtobufOnly;

impl Policy for ProtobufOnly {
    type Admitted = ();
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<(), Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/grpc") && !is_protobuf_grpc(content_type) {
            let message = format!(
                "{content_type} bodies are not served: use protobuf (application/grpc-web+proto \
                 or application/grpc-web-text), or JSON over REST (/v1/…)"
            );
            return Err(Rejection::new(
                Code::Unimplemented,
                "UNSUPPORTED_CODEC",
                message,
            ));
        }
        Ok(())
    }

    fn answered(&self, (): (), mut response: Response<Body>) -> Response<Body> {
        if is_framing_fault(response.headers()) {
            response
                .headers_mut()
                .insert(GRPC_STATUS, HeaderValue::from_static("3"));
        }
        response
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What tonic and tonic-web answer INTERNAL though the caller's framing is at fault (no
/// message, a length past the end, an unknown flag, a body that does not inflate, broken
/// base64), as `grpc-message` writes them (percent-encoded). Before any service runs, so the
/// status is in the answer's head. A compressed flag without `grpc-encoding` stays INTERNAL,
/// as gRPC's compression spec requires.
const FRAMING_FAULTS: [&str; 5] = [
    "Missing%20request%20message.",
    "Unexpected%20EOF%20decoding%20stream.",
    "protocol%20error:%20received%20message%20with%20invalid%20compression%20flag",
    "Error%20decompressing:",
    "tonic-web:",
];

fn is_framing_fault(headers: &HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|status| status == "13")
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                FRAMING_FAULTS
                    .iter()
                    .any(|fault| message.starts_with(fault))
            })
}

#[cfg(test)]
mod tests {
    use super::is_protobuf_grpc;

    #[test]
    fn only_protobuf_codecs_pass() {
        for served in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "application/grpc-web+proto; charset=utf-8",
            "application/grpc-web-text",
        ] {
            assert!(is_protobuf_grpc(served), "{served}");
        }
        for refused in [
            "application/grpc-web+json",
            "application/grpc+json",
            "application/grpcx",
        ] {
            assert!(!is_protobuf_grpc(refused), "{refused}");
        }
    }
}
