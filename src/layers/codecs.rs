//! gRPC-Web bodies must be protobuf (`application/grpc-web`, `+proto`, `-text`): a browser
//! client set to JSON (`application/grpc-web+json`) is refused in gRPC-Web's own terms, a
//! `grpc-status` with a message it can show, never the empty 400 tonic-web would answer. The
//! same for gRPC with a codec other than protobuf. JSON is REST's (`/v1/…`).

use axum::{
    body::Body,
    http::{Request, header},
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
