//! The REST surface end to end: route lookup, path variables (percent-decoded), query string,
//! JSON body → request (the transcoder in `src/rest/transcode.rs`: the method's typed codec, or
//! the descriptors), the direct call to the real services over an in-memory broker (the table
//! `startup` builds, with its scope policy), and the answer back to JSON, SSE or NDJSON.
//! Reached through `rest::router`, built as `startup` builds it.
//!
//! Input: up to 4 requests separated by `\n====\n`, each
//! `METHOD /path?query\nheader: value\n...\n\nbody`.
//!
//! Invariants: no answer is a 500 (the fake broker never fails, so a 500 is the transcoder's
//! own "internal error"); a 2xx `application/json` answer is valid JSON; a problem answer is
//! valid problem+json.
#![no_main]

use iggy_gateway_fuzz::{content_type, read_body, requests, with_shared_gateway};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fuzz_target!(|data: &[u8]| {
    let requests = requests(data);
    if requests.is_empty() {
        return;
    }
    let runtime = iggy_gateway_fuzz::runtime();
    let router = with_shared_gateway(|_, router| router.clone());
    runtime.block_on(async {
        for request in requests {
            let shown = format!("{} {}", request.method(), request.uri());
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let content_type = content_type(&response);
            let body = read_body(response.into_body(), 4).await;
            if grpc {
                continue;
            }
            let body = body.unwrap_or_else(|err| panic!("{shown}: body error {err}"));
            assert_ne!(
                status,
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "{shown} answered 500: {}",
                String::from_utf8_lossy(&body)
            );
            if content_type == "application/json" || content_type == "application/problem+json" {
                if let Err(err) = serde_json::from_slice::<serde_json::Value>(&body) {
                    panic!(
                        "{shown} answered {status} {content_type} that is not JSON ({err}): {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    });
});
