//! The shared layer stack, over gRPC, gRPC-Web and REST: request ids, rate limits, API keys,
//! lockouts, CORS, body limits, timeouts and load shedding; each rejection in the caller's
//! protocol.

use std::time::Duration;

use bytes::Bytes;
use iggy_gateway::{config::ApiKeys, proto};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Code, metadata::MetadataValue};
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app, spawn_configured};

fn grpc_web_frame(message: &impl Message) -> Vec<u8> {
    crate::helpers::grpc_frame(&message.encode_to_vec())
}

async fn list_streams_grpc(
    app: &TestApp,
    key: Option<&str>,
) -> Result<tonic::Response<proto::ListStreamsResponse>, tonic::Status> {
    let mut request = tonic::Request::new(proto::ListStreamsRequest {});
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("x-api-key", MetadataValue::try_from(key).expect("ascii"));
    }
    app.streams.clone().list_streams(request).await
}

/// A gRPC-Web ListStreams; returns the HTTP status and the grpc-status it carries.
async fn list_streams_grpc_web(
    app: &TestApp,
    key: Option<&str>,
) -> (u16, Option<String>, reqwest::header::HeaderMap) {
    let mut request = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .header("content-type", "application/grpc-web+proto")
        .body(grpc_web_frame(&proto::ListStreamsRequest {}));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body");
    let in_headers = headers
        .get("grpc-status")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let in_trailers = String::from_utf8_lossy(&body)
        .split("grpc-status:")
        .nth(1)
        .map(|rest| {
            rest.trim()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        });
    (status, in_headers.or(in_trailers), headers)
}

async fn rest_get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.http1.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("sent")
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated_on_every_protocol() {
    let app = spawn_app().await;
    let echoed = rest_get(&app, "/v1/streams", &[("x-request-id", "req-42")]).await;
    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    let generated = rest_get(&app, "/v1/streams", &[]).await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "a UUID: {id}");
    let insane = rest_get(
        &app,
        "/v1/streams",
        &[("x-request-id", "has spaces and\ttabs")],
    )
    .await;
    assert_ne!(insane.headers()["x-request-id"], "has spaces and\ttabs");
    let problem: serde_json::Value =
        rest_get(&app, "/v1/streams/nope", &[("x-request-id", "req-43")])
            .await
            .json()
            .await
            .expect("json");
    assert_eq!(problem["request_id"], "req-43", "error bodies carry the id");

    let mut request = tonic::Request::new(proto::ListStreamsRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::from_static("grpc-7"));
    let response = app.streams.clone().list_streams(request).await.expect("ok");
    assert_eq!(
        response.metadata().get("x-request-id").expect("echoed"),
        "grpc-7"
    );
    let mut failing = tonic::Request::new(proto::GetStreamRequest {
        stream: "nope".into(),
    });
    failing
        .metadata_mut()
        .insert("x-request-id", MetadataValue::from_static("grpc-8"));
    let status = app
        .streams
        .clone()
        .get_stream(failing)
        .await
        .expect_err("missing");
    assert_eq!(
        status
            .metadata()
            .get("x-request-id")
            .expect("on errors too"),
        "grpc-8"
    );

    let (_, _, headers) = list_streams_grpc_web(&app, None).await;
    assert!(headers.get("x-request-id").is_some());
}

/// An HPACK integer (RFC 7541 §5.1) with an `n`-bit prefix, from the start of `block`.
fn hpack_integer(block: &mut &[u8], n: u32) -> usize {
    let max = (1usize << n) - 1;
    let mut value = usize::from(block[0]) & max;
    *block = &block[1..];
    if value == max {
        let mut shift = 0;
        loop {
            let byte = block[0];
            *block = &block[1..];
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    value
}

/// How many fields of an HPACK header block are sent never indexed (RFC 7541 §6.2.3), read
/// by walking each field's representation (names and values skipped, Huffman or not).
fn never_indexed_fields(mut block: &[u8]) -> usize {
    let mut never = 0;
    while let Some(&first) = block.first() {
        let (prefix, literal) = match first {
            b if b & 0x80 != 0 => (7, false),
            b if b & 0xc0 == 0x40 => (6, true),
            b if b & 0xe0 == 0x20 => (5, false),
            b => {
                never += usize::from(b & 0xf0 == 0x10);
                (4, true)
            }
        };
        let indexed_name = hpack_integer(&mut block, prefix) != 0;
        if literal {
            let strings = if indexed_name { 1 } else { 2 };
            for _ in 0..strings {
                let length = hpack_integer(&mut block, 7);
                block = &block[length..];
            }
        }
    }
    never
}

/// A request id is used once: sent never indexed, it costs the gateway's HPACK encoder no
/// table insert and keeps the client's table for the fields that repeat.
#[tokio::test]
async fn request_ids_are_never_indexed_in_http2_answers() {
    let app = spawn_app().await;
    let mut tcp = TcpStream::connect(app.addr).await.expect("connects");
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    };
    // GET /health: `:method GET` and `:scheme http` from the static table, the path and
    // authority as literals with indexed names.
    let authority = app.addr.to_string();
    let mut block = vec![0x82, 0x86, 0x04, 7];
    block.extend(b"/health");
    block.extend([0x01, authority.len() as u8]);
    block.extend(authority.as_bytes());
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    for stream in [1, 3] {
        hello.extend(frame(0x1, 0x5, stream, &block));
    }
    tcp.write_all(&hello).await.expect("sent");

    let mut answers = Vec::new();
    let read = async {
        while answers.len() < 2 {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head).await.expect("a frame head");
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            tcp.read_exact(&mut payload).await.expect("a frame");
            let (kind, flags) = (head[3], head[4]);
            if kind == 0x4 && flags & 0x1 == 0 {
                tcp.write_all(&frame(0x4, 0x1, 0, &[])).await.expect("ack");
            }
            if kind == 0x1 {
                assert_ne!(flags & 0x4, 0, "one frame holds each answer's head");
                let padding = if flags & 0x8 != 0 {
                    usize::from(payload[0])
                } else {
                    0
                };
                let start = usize::from(flags & 0x8 != 0) + if flags & 0x20 != 0 { 5 } else { 0 };
                answers.push(payload[start..payload.len() - padding].to_vec());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("both answered");
    for block in &answers {
        assert_eq!(
            never_indexed_fields(block),
            1,
            "the id, and only the id, never indexed: {block:02x?}"
        );
    }
}

#[tokio::test]
async fn auth_bypass_paths_decide_which_http_probes_need_no_key() {
    let app = spawn_configured(|c| {
        c.auth.api_key = Some(ApiKeys::new(["probe-test-key"]));
        c.auth.auth_bypass_paths = vec!["/ready".into()];
    })
    .await;
    // /health is no longer listed, so it needs the key like any route; /ready does not.
    let health = rest_get(&app, "/health", &[]).await;
    assert_eq!(health.status(), 401);
    let problem: serde_json::Value = health.json().await.expect("problem");
    assert_eq!(problem["reason"], "API_KEY_MISSING");
    assert_eq!(
        rest_get(&app, "/health", &[("x-api-key", "probe-test-key")])
            .await
            .status(),
        200
    );
    assert_eq!(rest_get(&app, "/ready", &[]).await.status(), 200);
    // The gRPC health service stays keyless whatever the list says: Kubernetes sends none.
    app.health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("gRPC health needs no key");
}

#[tokio::test]
async fn a_burst_above_the_limit_gets_exactly_the_right_statuses_over_rest() {
    let app = spawn_configured(|c| {
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let response = rest_get(&app, "/v1/streams", &[]).await;
        statuses.push(response.status().as_u16());
        last = Some(response);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let last = last.expect("a response");
    let headers = last.headers().clone();
    assert!(
        headers["retry-after"]
            .to_str()
            .expect("ascii")
            .parse::<u64>()
            .expect("seconds")
            >= 1
    );
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let problem: serde_json::Value = last.json().await.expect("problem");
    assert_eq!(problem["reason"], "RATE_LIMITED");
    assert_eq!(problem["status"], 429);

    // Health checks are never limited.
    assert_eq!(rest_get(&app, "/health", &[]).await.status(), 200);
    let mut health = app.health.clone();
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is not rate limited");
}

#[tokio::test]
async fn grpc_callers_over_the_limit_get_resource_exhausted_never_unavailable() {
    let app = spawn_configured(|c| {
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 2;
    })
    .await;
    list_streams_grpc(&app, None).await.expect("1");
    list_streams_grpc(&app, None).await.expect("2");
    let status = list_streams_grpc(&app, None).await.expect_err("limited");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.get_details_retry_info().is_some(),
        "retry information"
    );
    assert_eq!(
        status.get_details_error_info().expect("reason").reason,
        "RATE_LIMITED"
    );

    let (http, grpc_status, _) = list_streams_grpc_web(&app, None).await;
    assert_eq!((http, grpc_status.as_deref()), (200, Some("8")));
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let untrusted = spawn_configured(|c| {
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 1;
    })
    .await;
    assert_eq!(rest_get(&untrusted, "/v1/streams", &[]).await.status(), 200);
    let spoofed = rest_get(
        &untrusted,
        "/v1/streams",
        &[
            ("x-forwarded-for", "203.0.113.50"),
            ("x-real-ip", "203.0.113.51"),
        ],
    )
    .await;
    assert_eq!(
        spoofed.status(),
        429,
        "a spoofed X-Forwarded-For from an untrusted peer is ignored"
    );

    let behind_proxy = spawn_configured(|c| {
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 1;
        c.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let from = |ip| [("x-forwarded-for", ip)];
    assert_eq!(
        rest_get(&behind_proxy, "/v1/streams", &from("203.0.113.50"))
            .await
            .status(),
        200
    );
    assert_eq!(
        rest_get(&behind_proxy, "/v1/streams", &from("203.0.113.50"))
            .await
            .status(),
        429
    );
    assert_eq!(
        rest_get(&behind_proxy, "/v1/streams", &from("203.0.113.60"))
            .await
            .status(),
        200,
        "another client behind the proxy has its own budget"
    );
}

fn with_keys(keys: &[&str]) -> impl FnOnce(&mut iggy_gateway::config::Config) {
    let keys = ApiKeys::new(keys.iter().map(|k| (*k).to_owned()));
    move |c| c.auth.api_key = Some(keys)
}

#[tokio::test]
async fn api_keys_are_required_on_every_protocol_and_rotate() {
    let app = spawn_configured(with_keys(&["old-key-123", "new-key-456"])).await;

    let missing = rest_get(&app, "/v1/streams", &[]).await;
    assert_eq!(missing.status(), 401);
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    let problem: serde_json::Value = missing.json().await.expect("problem");
    assert_eq!(problem["reason"], "API_KEY_MISSING");
    for wrong in ["old-key-124", "x", "new-key-456-and-more"] {
        let response = rest_get(&app, "/v1/streams", &[("x-api-key", wrong)]).await;
        assert_eq!(response.status(), 401, "key {wrong}");
        let problem: serde_json::Value = response.json().await.expect("problem");
        assert_eq!(problem["reason"], "API_KEY_INVALID");
    }
    // A key that is not ASCII text was presented all the same: invalid, not missing.
    for (name, bytes) in [
        ("x-api-key", &b"old-key-12\xe9"[..]),
        ("authorization", &b"Bearer new-key-45\xff"[..]),
    ] {
        let value = reqwest::header::HeaderValue::from_bytes(bytes).expect("header bytes");
        let response = app
            .http1
            .get(app.url("/v1/streams"))
            .header(name, value)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 401, "{name}");
        let problem: serde_json::Value = response.json().await.expect("problem");
        assert_eq!(problem["reason"], "API_KEY_INVALID", "{name}");
    }
    // Junk in x-api-key beside a valid bearer token: the token is the key.
    let junk = reqwest::header::HeaderValue::from_bytes(b"\xe9").expect("header bytes");
    let response = app
        .http1
        .get(app.url("/v1/streams"))
        .header("x-api-key", junk)
        .header("authorization", "Bearer new-key-456")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        rest_get(&app, "/v1/streams", &[("x-api-key", "old-key-123")])
            .await
            .status(),
        200
    );
    assert_eq!(
        rest_get(
            &app,
            "/v1/streams",
            &[("authorization", "Bearer new-key-456")]
        )
        .await
        .status(),
        200
    );

    assert_eq!(
        list_streams_grpc(&app, None)
            .await
            .expect_err("no key")
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        list_streams_grpc(&app, Some("wrong"))
            .await
            .expect_err("bad key")
            .code(),
        Code::Unauthenticated
    );
    list_streams_grpc(&app, Some("new-key-456"))
        .await
        .expect("a valid key");
    let (http, grpc_status, _) = list_streams_grpc_web(&app, None).await;
    assert_eq!((http, grpc_status.as_deref()), (200, Some("16")));
    let (_, grpc_status, _) = list_streams_grpc_web(&app, Some("old-key-123")).await;
    assert_eq!(grpc_status.as_deref(), Some("0"));

    // Health needs no key, on either protocol.
    assert_eq!(rest_get(&app, "/health", &[]).await.status(), 200);
    assert_eq!(rest_get(&app, "/ready", &[]).await.status(), 200);
    let mut health = app.health.clone();
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("gRPC health needs no key");

    // The query parameter is off unless enabled.
    assert_eq!(
        rest_get(&app, "/v1/streams?api_key=old-key-123", &[])
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn the_api_key_query_parameter_works_only_when_enabled() {
    let app = spawn_configured(|c| {
        with_keys(&["k-1"])(c);
        c.auth.api_key_query_param = true;
    })
    .await;
    assert_eq!(
        rest_get(&app, "/v1/streams?api_key=k-1", &[])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_client_out_on_every_protocol() {
    let app = spawn_configured(|c| {
        with_keys(&["right"])(c);
        c.auth.auth_max_failures = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            rest_get(&app, "/v1/streams", &[("x-api-key", "wrong")])
                .await
                .status(),
            401
        );
    }
    let locked = rest_get(&app, "/v1/streams", &[("x-api-key", "wrong")]).await;
    assert_eq!(locked.status(), 429, "a locked-out client waits");
    assert!(locked.headers().get("retry-after").is_some());
    let problem: serde_json::Value = locked.json().await.expect("problem");
    assert_eq!(problem["reason"], "AUTH_LOCKED_OUT");
    let status = list_streams_grpc(&app, None).await.expect_err("locked");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let (http, grpc_status, _) = list_streams_grpc_web(&app, None).await;
    assert_eq!((http, grpc_status.as_deref()), (200, Some("8")));
    // The right key is never locked out (tests/it/clients.rs has the NAT case).
    list_streams_grpc(&app, Some("right"))
        .await
        .expect("a valid key passes");
    assert_eq!(rest_get(&app, "/health", &[]).await.status(), 200);
}

#[tokio::test]
async fn cors_preflights_are_answered_before_auth_and_expose_grpc_headers() {
    let app = spawn_configured(|c| {
        with_keys(&["k"])(c);
        c.edge.cors_allowed_origins = vec!["*".into()];
    })
    .await;
    let preflight = app
        .http1
        .request(
            reqwest::Method::OPTIONS,
            app.url("/iggy.gateway.v1.StreamService/ListStreams"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-api-key",
        )
        .send()
        .await
        .expect("sent");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let actual = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .header("origin", "https://app.example")
        .header("content-type", "application/grpc-web+proto")
        .header("x-api-key", "k")
        .body(grpc_web_frame(&proto::ListStreamsRequest {}))
        .send()
        .await
        .expect("sent");
    let exposed = actual.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for header in ["grpc-status", "grpc-message", "x-request-id"] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
}

#[tokio::test]
async fn only_listed_origins_pass_cors() {
    let app =
        spawn_configured(|c| c.edge.cors_allowed_origins = vec!["https://ok.example".into()]).await;
    let allowed = rest_get(&app, "/v1/streams", &[("origin", "https://ok.example")]).await;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://ok.example"
    );
    let other = rest_get(&app, "/v1/streams", &[("origin", "https://evil.example")]).await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

/// Sends raw HTTP/1.1 and returns the status line and whole answer.
async fn raw_http(app: &TestApp, head: &str, body: &[u8]) -> (TcpStream, String) {
    let mut socket = TcpStream::connect(app.addr).await.expect("connects");
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(body).await.expect("body");
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
        .await
        .expect("an answer without sending the rest of the body")
        .expect("read");
    (socket, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_read() {
    let app = spawn_configured(|c| c.limits.max_request_body_size = 4096).await;
    // Announces 100 MB and sends none of it: the answer comes at once.
    let (_, answer) = raw_http(
        &app,
        "POST /v1/streams HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n",
        b"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("PAYLOAD_TOO_LARGE"), "{answer}");

    // gRPC callers hear RESOURCE_EXHAUSTED.
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let big = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: None,
        messages: vec![proto::Message {
            body: Some(proto::message::Body::Payload(Bytes::from(vec![7u8; 8000]))),
            ..Default::default()
        }],
    };
    let status = app
        .messages
        .clone()
        .send_messages(big.clone())
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
        .header("content-type", "application/grpc-web+proto")
        .body(grpc_web_frame(&big))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().expect("ascii")),
        Some("8")
    );
    assert!(
        app.poll_from("orders", "created", 0, 0, 10)
            .await
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn a_stalled_call_times_out_in_the_callers_protocol() {
    let app = spawn_configured(|c| c.limits.request_timeout_ms = 300).await;
    // REST: the body never finishes arriving.
    let (_, answer) = raw_http(
        &app,
        "POST /v1/streams HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n",
        b"{\"na",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("DEADLINE_EXCEEDED"), "{answer}");

    // gRPC over h2c: the message never finishes arriving.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let frame = grpc_web_frame(&proto::CreateStreamRequest {
        name: "never".into(),
    });
    let partial = Bytes::copy_from_slice(&frame[..frame.len() - 2]);
    let body = futures_util::stream::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, std::io::Error>(partial)]),
        futures_util::stream::pending(),
    );
    let response = h2c
        .post(app.url("/iggy.gateway.v1.StreamService/CreateStream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn one_client_holds_at_most_its_share_of_the_calls_in_flight() {
    let app = spawn_configured(|c| {
        c.limits.max_concurrent_requests = 8;
        c.limits.max_concurrent_requests_per_client = 2;
        c.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    // A client holds two calls open, trickling their bodies.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut holder = TcpStream::connect(app.addr).await.expect("connects");
        holder
            .write_all(
                b"POST /v1/streams HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 198.51.100.7\r\n\
                  content-type: application/json\r\ncontent-length: 50\r\n\r\n{",
            )
            .await
            .expect("write");
        holders.push(holder);
    }

    // Its next call is refused (once both are admitted), on every protocol, and says why.
    let mut refused = rest_get(&app, "/v1/streams", &[("x-forwarded-for", "198.51.100.7")]).await;
    for _ in 0..50 {
        if refused.status() == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused = rest_get(&app, "/v1/streams", &[("x-forwarded-for", "198.51.100.7")]).await;
    }
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let problem: serde_json::Value = refused.json().await.expect("problem");
    assert_eq!(problem["reason"], "CLIENT_CONCURRENCY", "{problem}");
    assert_eq!(problem["code"], "RESOURCE_EXHAUSTED", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("198.51.100.7/32 already has 2 calls"),
        "{problem}"
    );
    let from = |client: &str| {
        let mut request = tonic::Request::new(proto::ListStreamsRequest {});
        request
            .metadata_mut()
            .insert("x-forwarded-for", client.parse().expect("ascii"));
        request
    };
    let status = app
        .streams
        .clone()
        .list_streams(from("198.51.100.7"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Other clients are served meanwhile.
    let served = rest_get(&app, "/v1/streams", &[("x-forwarded-for", "198.51.100.8")]).await;
    assert_eq!(served.status(), 200);
    app.streams
        .clone()
        .list_streams(from("198.51.100.8"))
        .await
        .expect("another client is served");
    // Its places come back when its calls end.
    drop(holders);
    let mut status = 0;
    for _ in 0..50 {
        status = rest_get(&app, "/v1/streams", &[("x-forwarded-for", "198.51.100.7")])
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "served again once its calls ended");
}

#[tokio::test]
async fn a_full_gateway_sheds_new_calls_at_once() {
    let app = spawn_configured(|c| c.limits.max_concurrent_requests = 1).await;
    // Holds the only slot: a REST call whose body is still arriving.
    let mut holder = TcpStream::connect(app.addr).await.expect("connects");
    holder
        .write_all(b"POST /v1/streams HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let shed = rest_get(&app, "/v1/streams", &[]).await;
    assert_eq!(shed.status(), 503);
    assert!(shed.headers().get("retry-after").is_some());
    let problem: serde_json::Value = shed.json().await.expect("problem");
    assert_eq!(problem["reason"], "OVERLOADED");
    let status = list_streams_grpc(&app, None).await.expect_err("shed");
    assert_eq!(status.code(), Code::Unavailable);
    // Probes still answer.
    assert_eq!(rest_get(&app, "/ready", &[]).await.status(), 200);
    drop(holder);
}
