//! The Connect translator end to end (`src/connect.rs`, `src/connect/`): a unary `POST` body
//! or `GET` query (`message`, `encoding`, `base64`, `compression`), a stream's envelopes (with
//! their compression flag and `Connect-Content-Encoding`), protocol version and timeout
//! headers; protobuf decoded by the direct call within the budget, JSON inspected, charged and
//! read by the method's typed codec or handed back to the descriptors; the direct calls to the
//! real services over an in-memory broker; answers and errors in Connect's terms. Reached as
//! `ConnectPaths` hands a call over: `Connect::handle` with the protocol its headers name.
//!
//! Input: up to 4 requests separated by `\n====\n`, each
//! `METHOD /path?query\nheader: value\n...\n\nbody` (the body raw bytes: protobuf and
//! envelopes are written as they are).
//!
//! Invariants: no answer is a 500 (the fake broker never fails, so INTERNAL or UNKNOWN is the
//! translator's own fault); a unary JSON answer is valid JSON, and an error one carries its
//! `code`; a stream is HTTP 200 (415 for a unary method) and, when it ends, ends with one
//! end-of-stream envelope (flag 0x02) of JSON whose error, if any, is neither `internal` nor
//! `unknown`.
#![no_main]

use std::time::Duration;

use iggy_gateway::{extensions::Protocol, identity::Identity};
use iggy_gateway_fuzz::{content_type, read_body, requests, shared_connect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let requests = requests(data);
    if requests.is_empty() {
        return;
    }
    let runtime = iggy_gateway_fuzz::runtime();
    let connect = shared_connect();
    runtime.block_on(async {
        for mut request in requests {
            let protocol = Protocol::of(&request);
            if !matches!(protocol, Protocol::Connect | Protocol::ConnectStream { .. }) {
                continue;
            }
            let shown = format!("{} {}", request.method(), request.uri());
            // What the API key layer inserts when no key is configured.
            request.extensions_mut().insert(Identity::anonymous());
            let response = connect.handle(request, protocol).await;
            let status = response.status();
            let content_type = content_type(&response);
            // A subscription that succeeds waits for messages: read what comes, briefly.
            let read = tokio::time::timeout(
                Duration::from_millis(200),
                read_body(response.into_body(), 64),
            )
            .await;
            let complete = read.is_ok();
            let body = match read {
                Ok(body) => body.unwrap_or_else(|err| panic!("{shown}: body error {err}")),
                Err(_) => Vec::new(),
            };
            let text = String::from_utf8_lossy(&body);
            assert_ne!(
                status,
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "{shown} answered 500: {text}"
            );
            match protocol {
                Protocol::ConnectStream { .. } => {
                    // A unary method called as a stream is a 415, as the protocol has it.
                    assert!(
                        matches!(status.as_u16(), 200 | 415),
                        "{shown}: a stream answered {status}"
                    );
                    if status == http::StatusCode::OK && complete && !body.is_empty() {
                        check_stream(&shown, &body);
                    }
                }
                _ if content_type == "application/json" && complete => {
                    let json: serde_json::Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|err| panic!("{shown}: not JSON ({err}): {text}"));
                    if !status.is_success() {
                        assert!(
                            json["code"].is_string(),
                            "{shown}: an error without a code: {text}"
                        );
                    }
                }
                _ => {}
            }
        }
    });
});

/// Envelopes (`flags`, big-endian `u32` length, message) whole, the last and only the last the
/// end of the stream.
fn check_stream(shown: &str, mut body: &[u8]) {
    let mut ended = false;
    while !body.is_empty() {
        assert!(!ended, "{shown}: an envelope after the end of the stream");
        assert!(body.len() >= 5, "{shown}: a torn envelope head");
        let flags = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "{shown}: a torn envelope");
        let message = &body[5..5 + len];
        if flags & 0x02 != 0 {
            ended = true;
            let end: serde_json::Value = serde_json::from_slice(message).unwrap_or_else(|err| {
                panic!("{shown}: an end-of-stream message that is not JSON ({err})")
            });
            let code = end["error"]["code"].as_str().unwrap_or("");
            assert!(
                code != "internal" && code != "unknown",
                "{shown}: ended with {end}"
            );
        }
        body = &body[5 + len..];
    }
}
