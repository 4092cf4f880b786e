//! Hostile input, tried as an attacker would over real sockets: every case asserts the refusal
//! and that the gateway still serves; the amplification cases run the real binary and hold its
//! peak RSS under a stated bound.

use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use iggy_gateway::proto;
use prost::Message;

use crate::{
    durability::Gateway,
    helpers::{spawn_app, spawn_app_with_default_topic},
};

/// A gRPC request frame (uncompressed) around `message`.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(message.len() + 5);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).expect("fits"));
    frame.put_slice(message);
    frame.freeze()
}

/// The `grpc-status` of an answer, from its headers (trailers-only) or its trailers.
async fn grpc_status(response: reqwest::Response) -> (String, String) {
    let header = |name: &str, headers: &reqwest::header::HeaderMap| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(code) = header("grpc-status", response.headers()) {
        let message = header("grpc-message", response.headers()).unwrap_or_default();
        return (code, message);
    }
    panic!("no trailers-only status: {:?}", response.headers());
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

async fn send_raw_grpc(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    message: Vec<u8>,
) -> (String, String) {
    let response = client
        .post(format!("{base}/iggy.gateway.v1.MessageService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(grpc_frame(&message))
        .send()
        .await
        .expect("answered");
    grpc_status(response).await
}

/// A memory figure of a process from /proc/PID/status (`VmHWM:` the peak resident memory,
/// `VmRSS:` the resident memory now), in bytes.
fn memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

fn peak_rss_bytes(pid: u32) -> u64 {
    memory_bytes(pid, "VmHWM:")
}

/// Asserts the process's peak RSS grew less than `mib` over `idle` bytes.
fn assert_peak_rss_grew_less_than(pid: u32, idle: u64, mib: u64) {
    let peak = peak_rss_bytes(pid);
    assert!(
        peak.saturating_sub(idle) < mib << 20,
        "peak RSS {} MiB over {} MiB idle",
        peak >> 20,
        idle >> 20
    );
}

/// Millions of empty repeated entries: two bytes each on the wire, a struct each once decoded.
fn empty_entries_request(bytes: usize) -> Vec<u8> {
    let mut wire = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        ..Default::default()
    }
    .encode_to_vec();
    wire.extend([0x2a, 0x00].repeat(bytes / 2));
    wire
}

#[tokio::test]
async fn amplified_bodies_are_refused_before_decoding_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let base = format!("http://{}", gateway.addr);
    gateway.channel_with_topic().await;
    let client = h2_client();
    let grpc_body = empty_entries_request(15 * 1024 * 1024);
    let rest_body = format!(
        "{{\"messages\":[{}{{}}]}}",
        "{},".repeat(15 * 1024 * 1024 / 3)
    );

    // Eight attackers at once, four over gRPC and four over REST.
    let mut attacks = Vec::new();
    for _ in 0..4 {
        let grpc_client = client.clone();
        let grpc_base = base.clone();
        let body = grpc_body.clone();
        attacks.push(tokio::spawn(async move {
            let (code, message) =
                send_raw_grpc(&grpc_client, &grpc_base, "SendMessages", body).await;
            assert!(
                code == "8" || code == "14",
                "RESOURCE_EXHAUSTED or UNAVAILABLE, got {code}: {message}"
            );
        }));
        let client = reqwest::Client::new();
        let url = format!("{base}/v1/streams/orders/topics/created/messages");
        let body = rest_body.clone();
        attacks.push(tokio::spawn(async move {
            let answer = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    assert!(status == 413 || status == 503, "got {status}");
                }
                // Refused (503) from its Content-Length, before the upload ended: the server
                // answers and closes, and the client sees its write cut off.
                Err(err) => assert!(err.is_request(), "{err:?}"),
            }
        }));
    }
    for attack in attacks {
        attack.await.expect("attack answered as expected");
    }
    let peak = peak_rss_bytes(gateway.pid());
    // Eight 15 MiB bodies are 120 MiB on the wire alone; decoded they would be gigabytes.
    assert!(peak < 256 * 1024 * 1024, "peak RSS {} MiB", peak >> 20);

    // Still serving, and a real batch still goes through.
    let (status, json) = rest_post(
        &base,
        "/v1/streams/orders/topics/created/messages",
        r#"{"messages":[{"text":"still here"}]}"#,
    )
    .await;
    assert_eq!(status, 201, "{json}");
    gateway.kill_hard();
}

async fn rest_post(base: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn garbage_protobuf_is_invalid_argument_not_internal() {
    let app = spawn_app().await;
    let client = h2_client();
    let (code, message) = send_raw_grpc(
        &client,
        &app.url(""),
        "SendMessages",
        vec![0x2a, 0x05, 0x00],
    )
    .await;
    assert_eq!(code, "3", "{message}");
}

/// The `ErrorInfo` reason in a trailers-only gRPC or gRPC-Web answer's headers.
fn grpc_reason(headers: &reqwest::header::HeaderMap) -> Option<String> {
    use tonic_types::StatusExt;
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(name.clone(), value.clone());
    }
    tonic::Status::from_header_map(&map)?
        .get_details_error_info()
        .map(|info| info.reason)
}

#[tokio::test]
async fn a_request_that_is_not_protobuf_says_so_with_one_reason_on_every_protocol() {
    let app = spawn_app().await;
    // A length past the end, and a wrong wire type for a known field.
    for garbage in [vec![0x0a, 0x05, b'a'], vec![0x0d, 0, 0, 0, 0]] {
        let grpc = h2_client()
            .post(app.url("/iggy.gateway.v1.StreamService/CreateStream"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(grpc_frame(&garbage))
            .send()
            .await
            .expect("answered");
        assert_eq!(grpc.headers()["grpc-status"], "3");
        assert_eq!(
            grpc_reason(grpc.headers()).as_deref(),
            Some("MALFORMED_PROTOBUF")
        );
        let web = app
            .http1
            .post(app.url("/iggy.gateway.v1.StreamService/CreateStream"))
            .header("content-type", "application/grpc-web+proto")
            .body(grpc_frame(&garbage))
            .send()
            .await
            .expect("answered");
        assert_eq!(web.headers()["grpc-status"], "3");
        assert_eq!(
            grpc_reason(web.headers()).as_deref(),
            Some("MALFORMED_PROTOBUF")
        );
        let connect = app
            .http1
            .post(app.url("/iggy.gateway.v1.StreamService/CreateStream"))
            .header("content-type", "application/proto")
            .header("connect-protocol-version", "1")
            .body(garbage.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(connect.status(), 400);
        let error: serde_json::Value = connect.json().await.expect("Connect's error JSON");
        assert_eq!(error["code"], "invalid_argument");
        assert_eq!(
            error["details"][0]["debug"]["reason"], "MALFORMED_PROTOBUF",
            "{error}"
        );
    }
}

#[tokio::test]
async fn json_nested_too_deeply_is_refused_on_the_way_in_naming_the_field() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));

    // REST: the body as a whole nests past its limit.
    let (status, json) = rest_post(
        &app.url(""),
        "/v1/streams/orders/topics/created/messages",
        &format!(r#"{{"messages":[{{"json":{}}}]}}"#, deep(60)),
    )
    .await;
    assert_eq!(status, 400, "{json}");
    // gRPC: a json body deeper than the way out can carry.
    let mut value = pbjson_types::Value {
        kind: Some(pbjson_types::value::Kind::NumberValue(1.0)),
    };
    for _ in 0..33 {
        value = pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::ListValue(
                pbjson_types::ListValue {
                    values: vec![value],
                },
            )),
        };
    }
    let refused = app
        .messages
        .clone()
        .send_messages(proto::SendMessagesRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitioning: None,
            messages: vec![proto::Message {
                body: Some(proto::message::Body::Json(value)),
                ..Default::default()
            }],
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("messages[0].json"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn too_many_headers_are_refused_and_header_bytes_count_towards_the_size_limit() {
    let app =
        crate::helpers::spawn_configured(|config| config.limits.max_message_size = 1000).await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let header = |i: usize| {
        (
            format!("h{i}"),
            proto::HeaderValue {
                kind: Some(proto::header_value::Kind::StringValue("x".repeat(200))),
            },
        )
    };
    let send = |headers: std::collections::HashMap<String, proto::HeaderValue>| {
        let mut client = app.messages.clone();
        async move {
            client
                .send_messages(proto::SendMessagesRequest {
                    stream: "orders".into(),
                    topic: "created".into(),
                    partitioning: None,
                    messages: vec![proto::Message {
                        headers,
                        body: Some(proto::message::Body::Text("small".into())),
                        ..Default::default()
                    }],
                })
                .await
        }
    };
    let refused = send((0..65).map(header).collect())
        .await
        .expect_err("65 headers");
    assert!(
        refused.message().contains("messages[0].headers"),
        "{refused:?}"
    );
    // Five 200-byte values: a 5-byte text is 1,000+ bytes with its headers.
    let refused = send((0..5).map(header).collect())
        .await
        .expect_err("over 1000 bytes");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("messages[0].text"),
        "{refused:?}"
    );
    send((0..4).map(header).collect())
        .await
        .expect("within the limit");
}

#[tokio::test]
async fn random_paths_never_grow_the_metrics() {
    let app = spawn_app().await;
    let client = &app.http1;
    let base = app.url("");
    let attack = |round: usize| {
        let base = base.clone();
        async move {
            let noise: String = (0..4000)
                .map(|i| char::from(b'a' + u8::try_from((i * 7 + round) % 26).unwrap_or(0)))
                .collect();
            let paths = [
                format!("/grpc.health.v1.Health/{noise}"),
                format!("/{noise}"),
                format!("/streams/{noise}/x/y"),
            ];
            for path in paths {
                let _ = client.get(format!("{base}{path}")).send().await;
                let _ = client
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/grpc")
                    .send()
                    .await;
                let _ = client.delete(format!("{base}/messages")).send().await;
            }
        }
    };
    attack(0).await;
    let metrics = || async {
        client
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let before = metrics().await.len();
    for round in 1..200 {
        attack(round).await;
    }
    let after = metrics().await;
    // Counters grow by a few digits; series do not multiply.
    assert!(
        after.len() < before + 2_000,
        "{before} -> {} bytes:\n{after}",
        after.len()
    );
    assert!(!after.contains("aaaa") && !after.contains("abcdefgh"));
}

#[tokio::test]
async fn a_poison_message_on_the_events_topic_does_not_fail_the_poll() {
    let app = spawn_app_with_default_topic().await;
    // Raw bytes another client could write: JSON nested far past what protobuf can carry.
    let poison = format!("{{\"payload\":{}1{}}}", "[".repeat(90), "]".repeat(90));
    app.messages
        .clone()
        .send_messages(proto::SendMessagesRequest {
            stream: "sample-stream".into(),
            topic: "events".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages: vec![proto::Message {
                body: Some(proto::message::Body::Payload(Bytes::from(poison))),
                ..Default::default()
            }],
        })
        .await
        .expect("stored");
    app.send_texts("sample-stream", "events", 0, &["after the poison"])
        .await;
    // Polled with auto-commit by the consumer: the poll answers, and the consumer moves past
    // the poison message instead of failing on it forever.
    for _ in 0..2 {
        let response = app
            .http1
            .get(app.url("/messages?partition_id=0&count=1&auto_commit=true"))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    let offset = app
        .messages
        .clone()
        .get_consumer_offset(proto::GetConsumerOffsetRequest {
            stream: "sample-stream".into(),
            topic: "events".into(),
            // The event routes' default consumer.
            consumer: "1".into(),
            partition_id: 0,
        })
        .await
        .expect("the consumer's offset")
        .into_inner();
    assert_eq!(offset.stored_offset, Some(1), "{offset:?}");
}

#[tokio::test]
async fn a_flood_of_http_headers_is_refused_before_the_request_is_served() {
    let app = spawn_app().await;
    let mut request = app.http1.get(app.url("/health"));
    for i in 0..150 {
        request = request.header(format!("x-flood-{i}"), "v");
    }
    let refused = request.send().await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() == 431),
        "{refused:?}"
    );
    // Over HTTP/2 the header list is bounded in bytes.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let refused = h2
        .get(app.url("/health"))
        .header("x-big", "v".repeat(20 * 1024))
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() == 431),
        "{refused:?}"
    );
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200, "still serving");
}

#[tokio::test]
async fn ten_thousand_calls_on_one_http2_connection_are_served_200_at_a_time() {
    let app = spawn_app().await;
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let h2 = h2.ready().await.expect("ready");
    // A well-behaved client learns the limit from the server's SETTINGS before its burst (one
    // that opens streams past it is refused, and closed after enough refusals).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h2.current_max_send_streams(), 200);
    let mut calls = Vec::new();
    for _ in 0..10_000 {
        let mut h2 = h2.clone();
        let url = app.url("/health");
        calls.push(tokio::spawn(async move {
            // The client waits for a free stream: the server allows 200 at once.
            h2 = h2.ready().await.map_err(|e| e.to_string())?;
            let request = http::Request::get(url)
                .body(())
                .map_err(|e| e.to_string())?;
            let (response, _) = h2.send_request(request, true).map_err(|e| e.to_string())?;
            Ok::<u16, String>(response.await.map_err(|e| e.to_string())?.status().as_u16())
        }));
    }
    let mut ok = 0;
    let mut failures = Vec::new();
    for call in calls {
        match call.await.expect("joined") {
            Ok(200) => ok += 1,
            other => failures.push(other),
        }
    }
    assert_eq!(ok, 10_000, "{:?}", failures.first());
}

#[tokio::test]
async fn the_http2_limits_are_advertised_and_rapid_resets_close_the_connection() {
    let app = spawn_app().await;
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    h2 = h2.ready().await.expect("ready");
    // The server's SETTINGS arrive with the first exchange.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h2.current_max_send_streams(), 200);

    // Rapid reset: open streams and cancel each at once.
    let mut refused = false;
    for _ in 0..10_000 {
        let request = http::Request::post(app.url("/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        match h2.ready().await {
            Ok(ready) => h2 = ready,
            Err(_) => {
                refused = true;
                break;
            }
        }
        match h2.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        refused || matches!(ended, Ok(Ok(Err(_)))),
        "the server ends a connection that resets streams without end"
    );
    let (status, _) = app.get_json("/v1/streams").await;
    assert_eq!(status, 200, "still serving");
}

#[tokio::test]
async fn a_poll_answers_within_poll_max_bytes_and_commits_only_what_it_returned() {
    let app = crate::helpers::spawn_configured(small_polls).await;
    poll_within_budget(&app, "orders").await;
}

/// `POLL_MAX_BYTES` of 12,000 bytes, and messages of up to 7,900 (what it leaves them).
pub fn small_polls(config: &mut iggy_gateway::config::Config) {
    config.limits.poll_max_bytes = 12_000;
    config.limits.max_message_size = 7_900;
}

/// At its defaults the gateway never builds a poll answer a gRPC client refuses at its own
/// default (4 MiB: tonic here, as grpc-go, grpc-java, grpcio and grpc-js): twelve messages of
/// 600 kB, polled ten at a time with `auto_commit`, come back six and six, and the consumer
/// moves only past what it was answered.
#[tokio::test]
async fn a_poll_answer_fits_what_grpc_clients_take_by_default_and_commits_only_that() {
    use prost::Message;
    let app = crate::helpers::spawn_app().await;
    app.create_stream("large").await;
    app.create_topic("large", "created", 1).await;
    let body = "x".repeat(600_000);
    for _ in 0..12 {
        app.send_texts("large", "created", 0, &[body.as_str()])
            .await;
    }
    let next = proto::PollMessagesRequest {
        stream: "large".into(),
        topic: "created".into(),
        partition_id: 0,
        consumer: "billing".into(),
        strategy: proto::PollingStrategy::Next.into(),
        count: 10,
        auto_commit: true,
        ..Default::default()
    };
    let first = app.poll(next.clone()).await;
    assert!(first.encoded_len() <= 4 * 1024 * 1024);
    let offsets = |polled: &proto::PollMessagesResponse| {
        polled.messages.iter().map(|m| m.offset).collect::<Vec<_>>()
    };
    assert_eq!(offsets(&first), (0..6).collect::<Vec<u64>>());
    assert_eq!(
        app.stored_offset("large", "created", "billing", 0).await,
        Some(5),
        "committed only what was answered"
    );
    let second = app.poll(next.clone()).await;
    assert_eq!(offsets(&second), (6..12).collect::<Vec<u64>>());
    assert!(app.poll(next).await.messages.is_empty());
}

/// A JSON body that would encode past what gRPC clients take (as a `google.protobuf.Value` a
/// list of numbers is five times its text) is answered as the bytes stored, with its body
/// form, by a poll and by a subscription; the poll's commit then covers only what arrived.
#[tokio::test]
async fn a_json_body_that_would_grow_past_an_answer_comes_back_as_its_stored_bytes() {
    let app = crate::helpers::spawn_configured(|c| c.limits.max_inflight_bytes = 1 << 28).await;
    app.create_stream("wide").await;
    app.create_topic("wide", "created", 1).await;
    // 800 kB of JSON text, under MAX_MESSAGE_SIZE; about 4.4 MB as a Value.
    let zeros = format!("[{}0]", "0,".repeat(400_000));
    let body =
        format!(r#"{{"partitionId":0,"messages":[{{"json":{zeros}}},{{"text":"second"}}]}}"#);
    let response = app
        .http1
        .post(app.url("/v1/streams/wide/topics/created/messages"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let next = proto::PollMessagesRequest {
        stream: "wide".into(),
        topic: "created".into(),
        partition_id: 0,
        consumer: "c".into(),
        strategy: proto::PollingStrategy::Next.into(),
        count: 10,
        auto_commit: true,
        ..Default::default()
    };
    // The test's tonic client takes 4 MiB, as grpc-go, grpcio and grpc-js do by default.
    let polled = app.poll(next).await;
    let first = polled.messages.first().expect("the large message");
    match &first.body {
        Some(proto::polled_message::Body::Payload(bytes)) => {
            assert_eq!(bytes.as_ref(), zeros.as_bytes());
        }
        other => panic!(
            "the stored bytes, not {:?}",
            other.as_ref().map(|_| "a Value")
        ),
    }
    let form = first
        .headers
        .get("gateway-body")
        .and_then(|v| v.kind.clone());
    assert_eq!(
        form,
        Some(proto::header_value::Kind::StringValue("json".into())),
        "its body form kept"
    );
    assert_eq!(
        app.stored_offset("wide", "created", "c", 0).await,
        polled.messages.last().map(|m| m.offset)
    );
    // A subscription delivers it the same way.
    let mut subscription = app
        .subscribe(proto::SubscribeRequest {
            stream: "wide".into(),
            topic: "created".into(),
            strategy: proto::PollingStrategy::First.into(),
            ..Default::default()
        })
        .await
        .expect("subscribed");
    let (_, delivered) = crate::subscribe::next_message(&mut subscription).await;
    assert!(
        matches!(
            delivered.body,
            Some(proto::polled_message::Body::Payload(_))
        ),
        "delivered as its stored bytes"
    );
}

/// A poll on a gateway with [`small_polls`] answers within `POLL_MAX_BYTES`, commits only
/// what it answered, and reads forward in order across the backend's chunks (also run on a
/// real Iggy).
pub async fn poll_within_budget(app: &crate::helpers::TestApp, stream: &str) {
    app.create_stream(stream).await;
    app.create_topic(stream, "created", 1).await;
    let four_kib = "k".repeat(4096);
    let texts: Vec<&str> = vec![four_kib.as_str(); 5];
    app.send_texts(stream, "created", 0, &texts).await;
    let big = "b".repeat(7800);
    app.send_texts(stream, "created", 0, &[big.as_str()]).await;
    let next = proto::PollMessagesRequest {
        stream: stream.into(),
        topic: "created".into(),
        partition_id: 0,
        consumer: "billing".into(),
        strategy: proto::PollingStrategy::Next.into(),
        count: 100,
        auto_commit: true,
        ..Default::default()
    };
    let offsets = |polled: proto::PollMessagesResponse| {
        polled.messages.iter().map(|m| m.offset).collect::<Vec<_>>()
    };
    // Two 4 KiB messages fit in 12,000 bytes; a third would not.
    assert_eq!(offsets(app.poll(next.clone()).await), [0, 1]);
    assert_eq!(offsets(app.poll(next.clone()).await), [2, 3]);
    // Read together (11,928 bytes of payloads and headers), the last 4 KiB and the largest
    // message a send may carry encode past the limit: they come back one at a time.
    assert_eq!(offsets(app.poll(next.clone()).await), [4]);
    assert_eq!(offsets(app.poll(next.clone()).await), [5]);
    assert!(app.poll(next.clone()).await.messages.is_empty());

    // Small messages: one answer of 40, read in more than one chunk, in offset order.
    let small: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
    let small: Vec<&str> = small.iter().map(String::as_str).collect();
    app.send_texts(stream, "created", 0, &small).await;
    let from = |strategy: proto::PollingStrategy, count: u32| proto::PollMessagesRequest {
        consumer: String::new(),
        auto_commit: false,
        strategy: strategy.into(),
        offset: (strategy == proto::PollingStrategy::Offset).then_some(6),
        count,
        ..next.clone()
    };
    let all = app.poll(from(proto::PollingStrategy::Offset, 40)).await;
    assert_eq!(offsets(all.clone()), (6..46).collect::<Vec<u64>>());
    assert_eq!(crate::helpers::texts(&all), small);
    // The newest ten, oldest first.
    let last = app.poll(from(proto::PollingStrategy::Last, 10)).await;
    assert_eq!(offsets(last), (36..46).collect::<Vec<u64>>());
    // The consumer resumes after what it was answered.
    assert_eq!(offsets(app.poll(next).await), (6..46).collect::<Vec<u64>>());
}

#[tokio::test]
async fn open_health_watches_are_capped_on_their_own_and_never_starve_other_calls() {
    use iggy_gateway::layers::limits::{MAX_HEALTH_WATCHERS, MAX_HEALTH_WATCHERS_PER_CLIENT};
    use tonic_health::pb::HealthCheckRequest;
    let app = crate::helpers::spawn_configured(|config| {
        config.limits.max_concurrent_requests = 2;
        config.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let health = app.health.clone();
    let watch_from = |client: String| {
        let mut health = health.clone();
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request
                .metadata_mut()
                .insert("x-forwarded-for", client.parse().expect("ascii"));
            let mut watch = health.watch(request).await?.into_inner();
            watch.message().await?.expect("a status");
            Ok::<_, tonic::Status>(watch)
        }
    };
    // One client holds its share, and no more.
    let mut watches = Vec::new();
    for _ in 0..MAX_HEALTH_WATCHERS_PER_CLIENT {
        watches.push(
            watch_from("198.51.100.1".into())
                .await
                .expect("watch opened"),
        );
    }
    let shed = watch_from("198.51.100.1".into())
        .await
        .expect_err("over its client's share");
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message()
            .contains("198.51.100.1/32 already has 8 health watchers"),
        "{shed:?}"
    );
    // Other clients fill every place.
    let mut client = 1;
    while watches.len() < MAX_HEALTH_WATCHERS {
        if watches.len() % MAX_HEALTH_WATCHERS_PER_CLIENT == 0 {
            client += 1;
        }
        let opened = watch_from(format!("198.51.100.{client}")).await;
        watches.push(opened.expect("watch opened"));
    }
    // Every Watch place is held by an open stream: one more is shed, whoever asks.
    let shed = watch_from("203.0.113.9".into()).await.expect_err("shed");
    assert_eq!(shed.code(), tonic::Code::Unavailable, "{shed:?}");
    // Other calls, and probes, are served all the same.
    app.streams
        .clone()
        .list_streams(proto::ListStreamsRequest::default())
        .await
        .expect("a call is served while the watches are open");
    health
        .clone()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check answers");
    drop(watches);
    tokio::time::sleep(Duration::from_millis(200)).await;
    watch_from("198.51.100.1".into())
        .await
        .expect("a place is free once the watches end");
}

/// Opens an HTTP/1.1 poll whose answer the client does not read: a reader with a tiny receive
/// window, as a slow or hostile consumer would be.
async fn unread_poll(app: &crate::helpers::TestApp, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut stream = socket.connect(app.addr).await.expect("connected");
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    stream
}

#[tokio::test]
async fn poll_answers_a_slow_reader_holds_count_against_max_inflight_bytes() {
    const MESSAGE: usize = 1_000_000;
    const BUDGET: usize = 8 * MESSAGE + 4096;
    let app = crate::helpers::spawn_configured(|config| {
        config.limits.max_inflight_bytes = BUDGET as u64;
        config.limits.poll_max_bytes = BUDGET as u64;
        config.limits.max_request_body_size = 2 * 1024 * 1024;
    })
    .await;
    app.create_stream("media").await;
    app.create_topic("media", "frames", 1).await;
    let frame = "f".repeat(MESSAGE);
    for _ in 0..8 {
        app.send_texts("media", "frames", 0, &[frame.as_str()])
            .await;
    }
    let path = "/v1/streams/media/topics/frames/messages?partitionId=0&offset=0&count=8";
    let (status, body) = app.get_json(path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(8));

    // A reader that does not read holds its 8 MB answer, and so the budget.
    let mut slow = unread_poll(&app, path).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let one = "/v1/streams/media/topics/frames/messages?partitionId=0&offset=0&count=1";
    let (status, body) = app.get_json(one).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "OVERLOADED", "{body}");
    let refused = app
        .messages
        .clone()
        .poll_messages(proto::PollMessagesRequest {
            stream: "media".into(),
            topic: "frames".into(),
            partition_id: 0,
            offset: Some(0),
            count: 1,
            ..Default::default()
        })
        .await
        .expect_err("no room for the answer");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Calls that hold no answer are served meanwhile.
    let (status, _) = app.get_json("/v1/streams").await;
    assert_eq!(status, 200);

    // Once the slow reader has its answer, the budget is free again.
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut answer)
        .await
        .expect("read");
    assert!(answer.len() > 8 * MESSAGE, "read {} bytes", answer.len());
    let (status, body) = app.get_json(one).await;
    assert_eq!(status, 200, "{body}");

    // A reader that leaves halfway through the answer (written in pieces as it is read)
    // gives the budget back when its connection goes.
    let mut leaving = unread_poll(&app, path).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = app.get_json(one).await;
    assert_eq!(status, 503, "the answer holds the budget while it is sent");
    let mut part = vec![0; 256 * 1024];
    tokio::io::AsyncReadExt::read_exact(&mut leaving, &mut part)
        .await
        .expect("the first part of the answer");
    drop(leaving);
    let mut status = 0;
    for _ in 0..50 {
        (status, _) = app.get_json(one).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the budget is free once the reader has gone");
}

/// A gateway whose budget holds four 1 MB messages and whose writes may wait `write_timeout_ms`,
/// with those four messages in `media/frames`; and the path polling them.
async fn with_four_frames(write_timeout_ms: u64) -> (crate::helpers::TestApp, &'static str) {
    const MESSAGE: usize = 1_000_000;
    let app = crate::helpers::spawn_configured(|config| {
        config.limits.max_inflight_bytes = 4 * MESSAGE as u64 + 4096;
        config.limits.poll_max_bytes = 4 * MESSAGE as u64 + 4096;
        config.limits.max_request_body_size = 2 * 1024 * 1024;
        config.limits.connection_write_timeout_ms = write_timeout_ms;
    })
    .await;
    app.create_stream("media").await;
    app.create_topic("media", "frames", 1).await;
    let frame = "f".repeat(MESSAGE);
    for _ in 0..4 {
        app.send_texts("media", "frames", 0, &[frame.as_str()])
            .await;
    }
    let path = "/v1/streams/media/topics/frames/messages?partitionId=0&offset=0&count=4";
    (app, path)
}

/// An HTTP/2 connection (prior knowledge) whose streams start with `window` bytes of
/// flow-control window; the task driving it ends when the gateway closes it.
async fn h2_with_window(
    app: &crate::helpers::TestApp,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("h2 handshake");
    let driven = tokio::spawn(connection);
    (h2.ready().await.expect("ready"), driven)
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_for_its_answers_is_cut_off_and_frees_the_budget() {
    // It reads its socket (so no write of the gateway's stalls) but lets the gateway send
    // nothing of the answers it asked for, which hold the budget while they wait.
    let (app, path) = with_four_frames(3000).await;
    let (mut h2, driven) = h2_with_window(&app, 0).await;
    let request = http::Request::get(app.url(path)).body(()).expect("request");
    let (response, _) = h2.send_request(request, true).expect("stream opened");
    let response = response.await.expect("the answer's head");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let one = "/v1/streams/media/topics/frames/messages?partitionId=0&offset=0&count=1";
    let (status, body) = app.get_json(one).await;
    assert_eq!(status, 503, "the unsent answer holds the budget: {body}");

    let ended = tokio::time::timeout(Duration::from_secs(15), driven).await;
    assert!(
        ended.is_ok(),
        "the gateway closed the connection once the answer waited CONNECTION_WRITE_TIMEOUT_MS"
    );
    let (status, body) = app.get_json(one).await;
    assert_eq!(status, 200, "the budget is free again: {body}");
    drop(response);
}

#[tokio::test]
async fn an_http2_client_that_reads_an_answer_slowly_keeps_its_connection() {
    // 32 KiB at a time, each after 75 ms: a 2 MB answer takes about five seconds, five times
    // the write timeout, yet the client never stops taking it.
    let (app, _) = with_four_frames(1000).await;
    let (mut h2, driven) = h2_with_window(&app, 64 * 1024).await;
    let two = "/v1/streams/media/topics/frames/messages?partitionId=0&offset=0&count=2";
    let request = http::Request::get(app.url(two)).body(()).expect("request");
    let (response, _) = h2.send_request(request, true).expect("stream opened");
    let response = response.await.expect("the answer's head");
    assert_eq!(response.status(), 200);
    let mut answer = response.into_body();
    let (mut read, mut unreleased) = (Vec::new(), 0);
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.expect("every part of the answer");
        read.extend_from_slice(&chunk);
        unreleased += chunk.len();
        if unreleased >= 32 * 1024 {
            tokio::time::sleep(Duration::from_millis(75)).await;
            let _ = answer.flow_control().release_capacity(unreleased);
            unreleased = 0;
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&read).expect("the whole answer");
    assert_eq!(json["messages"].as_array().map(Vec::len), Some(2));
    assert!(!driven.is_finished(), "the connection is still open");
}

/// A gateway whose calls in flight may hold 64 KiB (and whose bodies may be as large), with
/// the topic `orders/created` of one partition.
async fn with_64_kib_budget() -> crate::helpers::TestApp {
    let app = crate::helpers::spawn_configured(|config| {
        config.limits.max_inflight_bytes = 64 * 1024;
        config.limits.max_request_body_size = 64 * 1024;
    })
    .await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app
}

/// `messages` sent to `orders/created` over REST: refused 413 RESOURCE_EXHAUSTED.
async fn refused_over_rest(app: &crate::helpers::TestApp, messages: serde_json::Value) {
    let (status, body) = app
        .post_json(
            "/v1/streams/orders/topics/created/messages",
            serde_json::json!({"partition_id": 0, "messages": messages}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{body}");
}

/// `messages` sent to `orders/created` over gRPC: refused RESOURCE_EXHAUSTED; and nothing is
/// stored from either protocol.
async fn refused_over_grpc_and_nothing_stored(
    app: &crate::helpers::TestApp,
    messages: Vec<proto::Message>,
) {
    let refused = app
        .messages
        .clone()
        .send_messages(proto::SendMessagesRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages,
        })
        .await
        .expect_err("over the budget");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    nothing_stored(app).await;
}

/// Nothing reached `orders/created`.
async fn nothing_stored(app: &crate::helpers::TestApp) {
    let polled = app.poll_from("orders", "created", 0, 0, 10).await;
    assert!(polled.messages.is_empty(), "{polled:?}");
}

fn text_message(text: &str) -> proto::Message {
    proto::Message {
        body: Some(proto::message::Body::Text(text.to_owned())),
        ..Default::default()
    }
}

/// What reading a request builds is charged to `MAX_INFLIGHT_BYTES` before it is built, over
/// REST (its JSON values counted, then the typed request its direct call decodes) as over gRPC
/// (the decoder's estimate): a batch whose body fits the limit but whose messages would not fit
/// the budget is refused on both, RESOURCE_EXHAUSTED, and nothing is stored.
#[tokio::test]
async fn a_batch_too_large_to_decode_within_the_budget_is_refused_over_rest_as_over_grpc() {
    let app = with_64_kib_budget().await;
    let text = "t".repeat(150);
    let messages: Vec<_> = (0..300)
        .map(|_| serde_json::json!({"text": text}))
        .collect();
    refused_over_rest(&app, serde_json::Value::Array(messages)).await;
    refused_over_grpc_and_nothing_stored(&app, vec![text_message(&text); 300]).await;
}

/// A batch of few JSON values but long strings (one 40 KB text) is charged for what the typed
/// request will hold before it is built: within the body limit, past the in-flight budget, it is
/// refused over REST as over gRPC, and nothing is stored.
#[tokio::test]
async fn a_long_string_past_the_budget_is_refused_before_the_typed_request_is_built() {
    let app = with_64_kib_budget().await;
    let text = "t".repeat(40_000);
    refused_over_rest(&app, serde_json::json!([{"text": text}])).await;
    refused_over_grpc_and_nothing_stored(&app, vec![text_message(&text)]).await;
}

/// Many empty messages are charged for the structs they would become, over REST's typed codec
/// as by the gRPC decoder (256 bytes a message): 300 of them do not fit a 64 KiB budget on
/// either protocol, and a body the descriptors parse (a `null` in it) is refused alike, 413.
#[tokio::test]
async fn empty_messages_are_charged_for_what_they_build_on_every_path() {
    let app = with_64_kib_budget().await;
    let empty: Vec<_> = (0..300).map(|_| serde_json::json!({})).collect();
    let with_null: Vec<_> = (0..300).map(|_| serde_json::json!({"id": null})).collect();
    for messages in [empty, with_null] {
        refused_over_rest(&app, serde_json::Value::Array(messages)).await;
    }
    refused_over_grpc_and_nothing_stored(&app, vec![proto::Message::default(); 300]).await;
}

/// A Connect call's protobuf is decoded as the gRPC decoder decodes it: what it would build is
/// charged to the budget first (300 empty messages do not fit 64 KiB, though their body is
/// 600 bytes), so it is refused 429 `resource_exhausted` and nothing is stored; bytes that
/// are not protobuf are `invalid_argument`, 400.
#[tokio::test]
async fn connect_protobuf_is_charged_before_it_is_decoded_and_garbage_is_invalid_argument() {
    let app = with_64_kib_budget().await;
    let connect = |body: Vec<u8>| {
        app.http1
            .post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
            .header("content-type", "application/proto")
            .header("connect-protocol-version", "1")
            .body(body)
            .send()
    };
    let batch = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages: vec![proto::Message::default(); 300],
    };
    let refused = connect(batch.encode_to_vec()).await.expect("answered");
    assert_eq!(refused.status(), 429);
    let error: serde_json::Value = refused.json().await.expect("Connect's error JSON");
    assert_eq!(error["code"], "resource_exhausted", "{error}");
    nothing_stored(&app).await;

    let garbage = connect(vec![0x2a, 0x05, 0x00]).await.expect("answered");
    assert_eq!(garbage.status(), 400);
    let error: serde_json::Value = garbage.json().await.expect("Connect's error JSON");
    assert_eq!(error["code"], "invalid_argument", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("valid protobuf")),
        "{error}"
    );

    // Within the budget, the same call is stored.
    let mut one = batch;
    one.messages = vec![text_message("fits")];
    let stored = connect(one.encode_to_vec()).await.expect("answered");
    assert_eq!(stored.status(), 200);
    let answer = proto::SendMessagesResponse::decode(stored.bytes().await.expect("body"))
        .expect("a protobuf answer");
    assert_eq!(answer.ids.len(), 1);
    let polled = app.poll_from("orders", "created", 0, 0, 10).await;
    assert_eq!(polled.messages.len(), 1, "{polled:?}");
}

/// One JSON payload of many distinct keys (the keys the inspection keeps to find one given
/// twice): its values are paid for before they are walked, so at a 64 KiB budget the walk stops
/// at the budget, and the body is refused 413 as it was before the walk was one pass, with the
/// whole count named; nothing is stored.
#[tokio::test]
async fn an_object_of_many_keys_is_paid_for_before_its_keys_are_kept() {
    let app = with_64_kib_budget().await;
    let keys = 3_000;
    let object: serde_json::Map<_, _> = (0..keys)
        .map(|key| (format!("{key:x}"), serde_json::json!(0)))
        .collect();
    // The body, its one message, the object and its values.
    let values = 1 + 1 + 1 + 1 + keys;
    let (status, body) = app
        .post_json(
            "/v1/streams/orders/topics/created/messages",
            serde_json::json!({"messages": [{"json": object}]}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("the request body holds {values} JSON values")),
        "{body}"
    );
    nothing_stored(&app).await;
}

/// A large body whose string is not JSON text (a lone surrogate, bytes that are not UTF-8, a
/// raw control character) is malformed, whatever the budget: 400 MALFORMED_JSON, never 413 or
/// 503, and nothing is stored. (Found when a walk that skimmed strings let such a body be
/// charged for the typed request it could never become.)
#[tokio::test]
async fn a_large_body_with_a_broken_string_is_malformed_not_too_large() {
    let app = with_64_kib_budget().await;
    let long = "t".repeat(40_000);
    let surrogate = format!(r#"{{"messages":[{{"text":"{long}\ud800"}}]}}"#).into_bytes();
    let mut not_utf8 = format!(r#"{{"messages":[{{"text":"{long}"#).into_bytes();
    not_utf8.extend_from_slice(b"\xff\"}]}");
    let mut control = format!(r#"{{"messages":[{{"text":"{long}"#).into_bytes();
    control.extend_from_slice(b"\x01\"}]}");
    for body in [surrogate, not_utf8, control] {
        let (status, problem) = app
            .post_raw_json("/v1/streams/orders/topics/created/messages", body)
            .await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["reason"], "MALFORMED_JSON", "{problem}");
    }
    nothing_stored(&app).await;
}

#[tokio::test]
async fn subscribers_that_never_read_hold_a_bounded_buffer_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let channel = gateway.channel_with_topic().await;
    let mut messages = proto::message_service_client::MessageServiceClient::new(channel);
    // Messages of almost the largest size allowed (1 MiB with their headers).
    let big = "x".repeat(1024 * 1024 - 1024);
    for _ in 0..4 {
        messages
            .send_messages(proto::SendMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                messages: (0..6).map(|_| crate::helpers::text_message(&big)).collect(),
                ..Default::default()
            })
            .await
            .expect("sent");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = memory_bytes(gateway.pid(), "VmRSS:");

    // Sixteen subscribers from the first message, each on a connection of its own whose
    // HTTP/2 window takes almost nothing, and none of them reads.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let channel = crate::helpers::narrow_channel(gateway.addr).await;
        let stream = proto::message_service_client::MessageServiceClient::new(channel)
            .subscribe(proto::SubscribeRequest {
                stream: "orders".into(),
                topic: "created".into(),
                partition_id: Some(0),
                strategy: proto::PollingStrategy::First.into(),
                ..Default::default()
            })
            .await
            .expect("subscribed");
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = memory_bytes(gateway.pid(), "VmRSS:").saturating_sub(before);
    // Each reads ahead one poll and one buffer of 256 KiB (a larger message goes alone) and
    // hands one message to its stream: about 3 MiB each here, where reading ahead a poll of
    // POLL_MAX_BYTES and 32 messages held the whole topic, 24 MiB, for each of them.
    assert!(grown < 128 * 1024 * 1024, "RSS grew by {} MiB", grown >> 20);
    drop(stalled);
}

#[tokio::test]
async fn a_body_whose_chunked_framing_is_malformed_is_a_400_on_every_protocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with_default_topic().await;
    // A chunk size that is not hexadecimal, and a chunk not followed by CRLF.
    for chunks in ["ZZZ\r\nabc\r\n0\r\n\r\n", "3\r\nabcXY0\r\n\r\n"] {
        for (path, content_type, expect) in [
            (
                "/v1/streams/sample-stream/topics/events/messages",
                "application/json",
                "HTTP/1.1 400",
            ),
            (
                "/iggy.gateway.v1.StreamService/CreateStream",
                "application/json\r\nConnect-Protocol-Version: 1",
                "HTTP/1.1 400",
            ),
            (
                "/iggy.gateway.v1.StreamService/CreateStream",
                "application/grpc-web+proto",
                "grpc-status: 3",
            ),
        ] {
            let mut tcp = tokio::net::TcpStream::connect(app.addr)
                .await
                .expect("connects");
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {content_type}\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunks}"
            );
            tcp.write_all(request.as_bytes()).await.expect("sent");
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
                .await
                .expect("answered and closed");
            let answer = String::from_utf8_lossy(&answer).to_lowercase();
            assert!(
                answer.contains(&expect.to_lowercase()) && answer.contains("malformed"),
                "{path} {content_type} {chunks:?}: {answer}"
            );
        }
    }
    // Still serving.
    let health = app.http1.get(app.url("/health")).send().await.expect("up");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn broken_grpc_framing_is_the_callers_fault_not_an_internal_error() {
    let app = spawn_app().await;
    let base = app.url("");
    let client = h2_client();
    let framed = |flag: u8, declared: u32, payload: &[u8]| {
        let mut body = vec![flag];
        body.extend_from_slice(&declared.to_be_bytes());
        body.extend_from_slice(payload);
        body
    };
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        ("no message at all", None, Vec::new(), "3"),
        (
            "a length past the end",
            None,
            framed(0, 100, b"\x0a\x01x"),
            "3",
        ),
        ("an unknown flag", None, framed(2, 3, b"\x0a\x01x"), "3"),
        (
            "gzip that does not inflate",
            Some("gzip"),
            framed(1, 4, b"oops"),
            "3",
        ),
        // gRPC's compression spec requires INTERNAL here.
        (
            "compressed without an encoding",
            None,
            framed(1, 3, b"\x0a\x01x"),
            "13",
        ),
    ];
    for (case, encoding, body, expected) in cases {
        let mut request = client
            .post(format!("{base}/iggy.gateway.v1.StreamService/GetStream"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let response = request.body(body).send().await.expect("answered");
        let (code, message) = grpc_status(response).await;
        assert_eq!(code, expected, "{case}: {message}");
    }
    // gRPC-Web text whose base64 is broken.
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/GetStream"))
        .header("content-type", "application/grpc-web-text")
        .body("AAAAAA!!")
        .send()
        .await
        .expect("answered");
    let (code, message) = grpc_status(response).await;
    assert_eq!(code, "3", "broken base64: {message}");
}

/// Every method but reflection's takes one request message. tonic would read a second one and
/// drop it while answering OK; the body is refused instead, on gRPC and gRPC-Web alike, and
/// nothing of it is stored.
#[tokio::test]
async fn a_second_request_message_is_refused_not_dropped() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let send = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages: vec![crate::helpers::text_message("one")],
    }
    .encode_to_vec();
    let one = grpc_frame(&send);
    let mut two = BytesMut::from(&one[..]);
    two.extend_from_slice(&grpc_frame(&send));
    let path = "/iggy.gateway.v1.MessageService/SendMessages";
    let grpc = h2_client()
        .post(app.url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(two.clone().freeze())
        .send()
        .await
        .expect("answered");
    let (code, message) = grpc_status(grpc).await;
    assert_eq!(code, "3", "{message}");
    assert!(message.contains("one%20request%20message"), "{message}");
    let web = app
        .http1
        .post(app.url(path))
        .header("content-type", "application/grpc-web+proto")
        .body(two.clone().freeze())
        .send()
        .await
        .expect("answered");
    let (code, message) = grpc_status(web).await;
    assert_eq!(code, "3", "{message}");
    assert_eq!(
        message,
        "this%20call%20takes%20one%20request%20message;%20the%20body%20holds%20more"
    );
    // Media types are case-insensitive; gRPC-Web text is counted through its base64.
    let grpc = h2_client()
        .post(app.url(path))
        .header("content-type", "Application/GRPC+Proto")
        .header("te", "trailers")
        .body(two.clone().freeze())
        .send()
        .await
        .expect("answered");
    assert_eq!(grpc_status(grpc).await.0, "3", "Application/GRPC+Proto");
    let web_text = app
        .http1
        .post(app.url(path))
        .header("content-type", "application/grpc-web-text")
        .body(base64::engine::general_purpose::STANDARD.encode(&two))
        .send()
        .await
        .expect("answered");
    assert_eq!(grpc_status(web_text).await.0, "3", "grpc-web-text");
    assert!(
        app.poll_from("orders", "created", 0, 0, 10)
            .await
            .messages
            .is_empty()
    );
    // One message is one send, as before.
    let sent = h2_client()
        .post(app.url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(one)
        .send()
        .await
        .expect("answered");
    assert_eq!(sent.status(), 200);
    let _ = sent.bytes().await;
    assert_eq!(
        crate::helpers::texts(&app.poll_from("orders", "created", 0, 0, 10).await),
        ["one"]
    );
}

#[tokio::test]
async fn a_connect_message_inflates_only_into_what_the_budget_has_left() {
    use base64::Engine;
    // Three of the four 1 MB frames held by an answer its client opens no window for: about
    // 1 MB of the budget is left, while a message may inflate to 2 MiB (MAX_REQUEST_BODY_SIZE).
    let (app, _) = with_four_frames(30_000).await;
    let (mut h2, _driven) = h2_with_window(&app, 0).await;
    let three = "/v1/streams/media/topics/frames/messages?partitionId=0&offset=0&count=3";
    let request = http::Request::get(app.url(three))
        .body(())
        .expect("request");
    let (held, _) = h2.send_request(request, true).expect("stream opened");
    let held = held.await.expect("the answer's head");
    assert_eq!(held.status(), 200);
    // 1.5 MiB of zeros, a kilobyte or two once compressed.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gzip, &vec![0u8; 1536 * 1024]).expect("gzip");
    let message =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(gzip.finish().expect("gzip"));
    let answer = app
        .http1
        .get(app.url(&format!(
            "/iggy.gateway.v1.StreamService/GetStream?connect=v1&encoding=proto&base64=1&compression=gzip&message={message}"
        )))
        .send()
        .await
        .expect("sent");
    let status = answer.status();
    let error: serde_json::Value = answer.json().await.expect("a Connect error");
    assert_eq!(status, 503, "refused while inflating, retry later: {error}");
    assert_eq!(error["code"], "unavailable", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains("the message as inflated")),
        "{error}"
    );
}

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK flooder's connection until `until`: batches of `batch` gRPC calls, each header block
/// a few hundred bytes that decode to a 14 KB list (400 one-byte references to one table
/// entry, under the 16 KiB limit), the next batch sent once the last has been answered. Returns
/// the calls answered (or reset).
async fn hpack_flood_connection(
    addr: std::net::SocketAddr,
    until: tokio::time::Instant,
    batch: u32,
) -> u32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let mut base = vec![0x83, 0x86, 0x04];
    let path = b"/iggy.gateway.v1.StreamService/ListStreams";
    base.push(u8::try_from(path.len()).expect("short"));
    base.extend_from_slice(path);
    base.extend([0x01, 0x09]);
    base.extend_from_slice(b"localhost");
    // content-type (static entry 31's name) and te: literals without indexing.
    base.extend([0x0f, 0x10, 0x10]);
    base.extend_from_slice(b"application/grpc");
    base.extend([0x00, 0x02]);
    base.extend_from_slice(b"te");
    base.push(0x08);
    base.extend_from_slice(b"trailers");
    // The first block adds `x: v` to the dynamic table (index 62); every block refers to it.
    let mut first = base.clone();
    first.extend([0x40, 0x01, b'x', 0x01, b'v']);
    first.extend([0xbe; 399]);
    let mut rest = base;
    rest.extend([0xbe; 400]);

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    let mut next_stream = 1u32;
    let mut answered = 0;
    let mut read = BytesMut::with_capacity(64 * 1024);
    while tokio::time::Instant::now() < until {
        for _ in 0..batch {
            let block = if next_stream == 1 { &first } else { &rest };
            // HEADERS with END_HEADERS and END_STREAM: a call with no message.
            out.extend(h2_frame(0x1, 0x5, next_stream, block));
            next_stream += 2;
        }
        if tcp.write_all(&out).await.is_err() {
            return answered;
        }
        out.clear();
        let mut ended = 0;
        while ended < batch {
            while read.len() >= 9 {
                let len =
                    usize::from(read[0]) << 16 | usize::from(read[1]) << 8 | usize::from(read[2]);
                if read.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (read[3], read[4]);
                let stream = u32::from_be_bytes([read[5], read[6], read[7], read[8]]);
                let _ = read.split_to(9 + len);
                match kind {
                    0x0 | 0x1 if stream != 0 && flags & 0x1 != 0 => ended += 1,
                    0x3 => ended += 1,
                    0x4 if flags & 0x1 == 0 => out.extend(h2_frame(0x4, 0x1, 0, &[])),
                    0x7 => return answered + ended,
                    _ => {}
                }
            }
            if tokio::time::Instant::now() >= until {
                return answered + ended;
            }
            let wait = tokio::time::timeout_at(until, tcp.read_buf(&mut read)).await;
            if !matches!(wait, Ok(Ok(n)) if n > 0) {
                return answered + ended;
            }
        }
        answered += ended;
    }
    answered
}

// An HPACK flood over many connections: each decodes two header blocks a turn, so what they
// hold between them grew with their number (a thousand held about 400 MB). Past 256 requests
// handed on and not yet begun, across the process, HTTP/2 connections read nothing more.
#[tokio::test]
async fn an_hpack_flood_over_many_connections_is_held_to_a_process_wide_count_of_heads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_with(
        dir.path(),
        &[
            ("RATE_LIMIT_RPS", "0".into()),
            ("MAX_CONCURRENT_REQUESTS_PER_CLIENT", "100000".into()),
            // The flood's connections all come from one address: what holds here must be the
            // gate, whatever the per-client connection cap the machine's limits give.
            ("MAX_CONNECTIONS_PER_CLIENT", "100000".into()),
        ],
    );
    let base = format!("http://{}", gateway.addr);
    let idle = memory_bytes(gateway.pid(), "VmRSS:");
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let flooders: Vec<_> = (0..200)
        .map(|_| tokio::spawn(hpack_flood_connection(gateway.addr, until, 180)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Honest clients are still served meanwhile, over HTTP/1.1 (never held) and HTTP/2 (its
    // header blocks wait their turn; its body, 1 MiB of DATA, does not).
    let (status, json) = rest_post(&base, "/v1/streams", r#"{"name":"during-the-flood"}"#).await;
    assert_eq!(status, 201, "{json}");
    let (status, json) = rest_post(
        &base,
        "/v1/streams/during-the-flood/topics",
        r#"{"name":"uploads","partitions_count":1}"#,
    )
    .await;
    assert_eq!(status, 201, "{json}");
    let text = "x".repeat(1024 * 1024 - 64);
    let answer = h2_client()
        .post(format!(
            "{base}/v1/streams/during-the-flood/topics/uploads/messages"
        ))
        .header("content-type", "application/json")
        .body(format!(r#"{{"messages":[{{"text":"{text}"}}]}}"#))
        .send()
        .await
        .expect("answered over HTTP/2");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 201, "stored");
    // A client of its own (another loopback address) sending one request at a time has its
    // header blocks read past the gate as a quiet connection's; the flood's connections, 200
    // from one address, never do.
    let quiet = reqwest::Client::builder()
        .http2_prior_knowledge()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let calls = 50;
    for _ in 0..calls {
        let answer = quiet
            .get(format!("{base}/v1/streams"))
            .send()
            .await
            .expect("answered");
        assert_eq!(answer.status(), 200);
    }
    let mut answered = 0;
    for flooder in flooders {
        answered += flooder.await.expect("flooder joined");
    }
    assert!(answered > 1000, "the flood's calls were served: {answered}");
    let held = crate::helpers::metric(
        &reqwest::Client::new(),
        &base,
        "iggy_gateway_http2_reads_held_total",
    )
    .await;
    assert!(held > 0.0, "no HTTP/2 read was held back");
    let quiet_reads = crate::helpers::metric(
        &reqwest::Client::new(),
        &base,
        "iggy_gateway_http2_quiet_reads_total",
    )
    .await;
    assert!(
        (1.0..=f64::from(calls)).contains(&quiet_reads),
        "{quiet_reads} quiet reads for {calls} quiet calls"
    );
    assert_peak_rss_grew_less_than(gateway.pid(), idle, 80);
}

/// What a control-frame flood's connection met by its end.
struct Flooded {
    /// Bytes the gateway took.
    taken: usize,
    /// When it last took any.
    last_taken: tokio::time::Instant,
    /// The gateway closed the connection.
    closed: bool,
}

/// A connection that writes `start` and then `chunk` over and over until `until`, never
/// reading.
async fn control_frame_flood(
    addr: std::net::SocketAddr,
    start: Vec<u8>,
    chunk: Vec<u8>,
    until: tokio::time::Instant,
) -> Flooded {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(start);
    let mut flooded = Flooded {
        taken: 0,
        last_taken: tokio::time::Instant::now(),
        closed: false,
    };
    loop {
        match tokio::time::timeout_at(until, tcp.write_all(&out)).await {
            Ok(Ok(())) => {
                flooded.taken += out.len();
                flooded.last_taken = tokio::time::Instant::now();
            }
            Ok(Err(_)) => {
                flooded.closed = true;
                return flooded;
            }
            Err(_) => return flooded,
        }
        out.clone_from(&chunk);
    }
}

// HTTP/2's control frames each ask for nothing but an answer (PING, SETTINGS) or a little
// state (CONTINUATION): a client that sends them without end, and never reads, must meet
// backpressure or a closed connection, not a gateway that queues its answers or grows a
// header list, while other clients are served.
#[tokio::test]
async fn control_frame_floods_meet_backpressure_or_a_closed_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_with(dir.path(), &[("RATE_LIMIT_RPS", "0".into())]);
    let idle = memory_bytes(gateway.pid(), "VmRSS:");
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let pings = h2_frame(0x6, 0, 0, b"12345678").repeat(4096);
    let settings = h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]).repeat(4096);
    // HEADERS without END_HEADERS, then CONTINUATION frames of new literal fields for ever.
    let head = [&[0x83, 0x86, 0x84, 0x01, 0x09][..], b"localhost"].concat();
    let continuations = h2_frame(0x9, 0, 1, &[0x40, 0x01, b'x', 0x01, b'y']).repeat(4096);
    let mut floods = Vec::new();
    for (kind, start, chunk) in [
        ("ping", Vec::new(), pings),
        ("settings", Vec::new(), settings),
        ("continuation", h2_frame(0x1, 0x1, 1, &head), continuations),
    ] {
        for _ in 0..2 {
            let (start, chunk) = (start.clone(), chunk.clone());
            floods.push((
                kind,
                tokio::spawn(control_frame_flood(gateway.addr, start, chunk, until)),
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = format!("http://{}", gateway.addr);
    for _ in 0..10 {
        let answer = h2_client()
            .get(format!("{base}/health"))
            .send()
            .await
            .expect("answered during the floods");
        assert_eq!(answer.status(), 200);
    }
    for (kind, flood) in floods {
        let flooded = flood.await.expect("flooder joined");
        match kind {
            // The gateway answers one at a time and reads no further while an answer waits:
            // once the sockets' buffers are full it takes nothing more (a flood of frames
            // that ask for no answer goes on being taken to the end).
            "ping" | "settings" => assert!(
                until - flooded.last_taken > Duration::from_millis(1500),
                "{kind}: still taken {:?} before the end ({} MiB in all) from a client that \
                 reads nothing",
                until - flooded.last_taken,
                flooded.taken >> 20
            ),
            _ => assert!(flooded.closed, "{kind}: an endless header block is cut off"),
        }
    }
    assert_peak_rss_grew_less_than(gateway.pid(), idle, 32);
}
