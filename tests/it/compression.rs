//! Compression both ways: gRPC messages in gzip and zstd as the client negotiates, REST answers
//! in gzip, br or zstd by `Accept-Encoding` above a size (never streams), compressed REST
//! bodies inflated, and decompression bombs refused while they inflate, over both protocols.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use iggy_gateway::proto::{self, message_service_client::MessageServiceClient};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tonic::codec::CompressionEncoding;

use crate::helpers::{TestApp, spawn_app, spawn_configured, text_message, texts};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compressed");
    encoder.finish().expect("compressed")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

async fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    async_compression::tokio::bufread::BrotliEncoder::new(bytes)
        .read_to_end(&mut out)
        .await
        .expect("compressed");
    out
}

async fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    async_compression::tokio::bufread::BrotliDecoder::new(bytes)
        .read_to_end(&mut out)
        .await
        .expect("valid brotli");
    out
}

/// A topic holding `count` text messages in partition 0.
async fn topic_with_messages(app: &TestApp, count: usize) {
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let texts: Vec<String> = (0..count).map(|i| format!("order number {i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    app.send_texts("orders", "created", 0, &texts).await;
}

const POLL: &str = "/v1/streams/orders/topics/created/messages?partition_id=0&count=100&strategy=POLLING_STRATEGY_FIRST";

#[tokio::test]
async fn rest_answers_are_compressed_as_accept_encoding_asks_and_only_when_large() {
    let app = spawn_app().await;
    topic_with_messages(&app, 100).await;
    let plain = app.http1.get(app.url(POLL)).send().await.expect("polled");
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.expect("body").to_vec();
    assert!(plain.len() > 4096, "the poll is large: {}", plain.len());

    for coding in ["gzip", "br", "zstd"] {
        let response = app
            .http1
            .get(app.url(POLL))
            .header("accept-encoding", coding)
            .send()
            .await
            .expect("polled");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], coding);
        let body = response.bytes().await.expect("body").to_vec();
        assert!(
            body.len() * 3 < plain.len(),
            "{coding}: {} bytes",
            body.len()
        );
        let inflated = match coding {
            "gzip" => gunzip(&body),
            "br" => unbrotli(&body).await,
            _ => zstd::decode_all(body.as_slice()).expect("valid zstd"),
        };
        let inflated: Value = serde_json::from_slice(&inflated).expect("JSON");
        assert_eq!(inflated["messages"].as_array().map(Vec::len), Some(100));
    }

    // A small answer is not worth compressing.
    let small = app
        .http1
        .get(app.url("/v1/streams/orders"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("read");
    assert_eq!(small.status(), 200);
    assert!(small.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn live_streams_and_grpc_web_answers_are_never_http_compressed() {
    let app = spawn_app().await;
    topic_with_messages(&app, 100).await;
    let subscribe = "/v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=POLLING_STRATEGY_FIRST";
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let response = app
            .http1
            .get(app.url(subscribe))
            .header("accept", accept)
            .header("accept-encoding", "gzip, br, zstd")
            .send()
            .await
            .expect("subscribed");
        assert_eq!(response.status(), 200, "{accept}");
        assert!(
            response.headers().get("content-encoding").is_none(),
            "{accept} was compressed, so events would wait in the encoder"
        );
        // Events arrive as they are written, readable as they are.
        let mut response = response;
        let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("an event in time")
            .expect("read")
            .expect("a chunk");
        assert!(
            String::from_utf8_lossy(&first).contains("order number")
                || String::from_utf8_lossy(&first).contains("retry"),
            "{accept}: {first:?}"
        );
    }

    let mut framed = vec![0u8];
    let request = prost::Message::encode_to_vec(&proto::PollMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        count: 100,
        strategy: proto::PollingStrategy::First.into(),
        ..Default::default()
    });
    framed.extend_from_slice(&u32::try_from(request.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(&request);
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/PollMessages"))
        .header("content-type", "application/grpc-web+proto")
        .header("accept-encoding", "gzip")
        .body(framed)
        .send()
        .await
        .expect("gRPC-Web call");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn grpc_requests_and_answers_are_compressed_both_ways_in_gzip_and_zstd() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut client = MessageServiceClient::new(app.channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let batch: Vec<proto::Message> = (0..200)
            .map(|i| text_message(&format!("compressed order {i}")))
            .collect();
        let sent = client
            .send_messages(proto::SendMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
                messages: batch,
            })
            .await
            .expect("a compressed request is accepted");
        assert_eq!(sent.get_ref().ids.len(), 200);
        let polled = client
            .poll_messages(proto::PollMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                count: 200,
                strategy: proto::PollingStrategy::Last.into(),
                ..Default::default()
            })
            .await
            .expect("polled");
        let name = match encoding {
            CompressionEncoding::Gzip => "gzip",
            _ => "zstd",
        };
        assert_eq!(
            polled
                .metadata()
                .get("grpc-encoding")
                .map(|v| v.to_str().ok()),
            Some(Some(name)),
            "the answer came back in {name}"
        );
        assert_eq!(texts(polled.get_ref()).len(), 200);
    }
    // A client that asks for nothing gets nothing compressed.
    let plain = app
        .messages
        .clone()
        .poll_messages(proto::PollMessagesRequest {
            stream: "orders".into(),
            topic: "created".into(),
            count: 10,
            strategy: proto::PollingStrategy::First.into(),
            ..Default::default()
        })
        .await
        .expect("polled");
    assert!(plain.metadata().get("grpc-encoding").is_none());
}

/// One unary call framed by hand over gRPC (HTTP/2) or gRPC-Web (HTTP/1.1), from a client
/// that takes `accept`: whether the answer's message came compressed (its flag byte), and the
/// message, inflated from gzip.
async fn unary_answer(
    app: &TestApp,
    grpc_web: bool,
    accept: &str,
    method: &str,
    request: &impl prost::Message,
) -> (bool, Vec<u8>) {
    let body = request.encode_to_vec();
    let framed = crate::helpers::grpc_frame(&body);
    let (client, content_type) = if grpc_web {
        (app.http1.clone(), "application/grpc-web+proto")
    } else {
        (
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("an HTTP/2 client"),
            "application/grpc",
        )
    };
    let answer = client
        .post(app.url(&format!("/iggy.gateway.v1.{method}")))
        .header("content-type", content_type)
        .header("te", "trailers")
        .header("grpc-accept-encoding", accept)
        .body(framed)
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 200);
    let bytes = answer.bytes().await.expect("the answer");
    assert!(bytes.len() >= 5, "a message came back: {bytes:?}");
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let message = &bytes[5..5 + len];
    match bytes[0] {
        0 => (false, message.to_vec()),
        1 if accept == "gzip" => (true, gunzip(message)),
        1 => (true, Vec::new()),
        flag => panic!("a message frame, not flag {flag}"),
    }
}

#[tokio::test]
async fn grpc_answers_smaller_than_the_compression_minimum_go_uncompressed() {
    use prost::Message;
    for (minimum, small_compressed) in [(1024, false), (0, true)] {
        let app = spawn_configured(|c| c.wire.compression_min_bytes = minimum).await;
        app.create_stream("orders").await;
        app.create_topic("orders", "created", 1).await;
        let one = proto::SendMessagesRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages: vec![text_message("one small order")],
        };
        let hundred = proto::SendMessagesRequest {
            messages: (0..100)
                .map(|i| text_message(&format!("a larger order, number {i}")))
                .collect(),
            ..one.clone()
        };
        let get_stream = proto::GetStreamRequest {
            stream: "orders".into(),
        };
        for grpc_web in [false, true] {
            for accept in ["gzip", "zstd"] {
                let seen = format!("min {minimum}, gRPC-Web {grpc_web}, {accept}");
                let (compressed, sent) =
                    unary_answer(&app, grpc_web, accept, "MessageService/SendMessages", &one).await;
                assert_eq!(compressed, small_compressed, "one id's answer, {seen}");
                if accept == "gzip" {
                    let sent = proto::SendMessagesResponse::decode(&sent[..]).expect("decodes");
                    assert_eq!(sent.ids.len(), 1);
                }
                let (compressed, stream) = unary_answer(
                    &app,
                    grpc_web,
                    accept,
                    "StreamService/GetStream",
                    &get_stream,
                )
                .await;
                assert_eq!(compressed, small_compressed, "a stream's details, {seen}");
                if accept == "gzip" {
                    let stream = proto::GetStreamResponse::decode(&stream[..]).expect("decodes");
                    assert_eq!(stream.stream.map(|s| s.name), Some("orders".to_owned()));
                }
                let (compressed, sent) = unary_answer(
                    &app,
                    grpc_web,
                    accept,
                    "MessageService/SendMessages",
                    &hundred,
                )
                .await;
                assert!(compressed, "a hundred ids are past the minimum, {seen}");
                if accept == "gzip" {
                    let sent = proto::SendMessagesResponse::decode(&sent[..]).expect("decodes");
                    assert_eq!(sent.ids.len(), 100);
                }
            }
        }
    }
}

/// A subscription's messages go uncompressed over gRPC and gRPC-Web however the client asks:
/// tonic would set up a compressor anew for each one. Unary answers still follow the minimum.
#[tokio::test]
async fn a_subscriptions_messages_go_uncompressed_whatever_the_client_accepts() {
    use prost::Message;
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    // Large and repetitive: well past the minimum, and worth compressing if anything is.
    let texts: Vec<String> = (0..3).map(|i| format!("order {i} ").repeat(400)).collect();
    app.send_texts(
        "orders",
        "created",
        0,
        &texts.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let request = proto::SubscribeRequest {
        stream: "orders".into(),
        topic: "created".into(),
        strategy: proto::PollingStrategy::First.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let framed = crate::helpers::grpc_frame(&request);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an HTTP/2 client");
    for (client, content_type) in [
        (&h2, "application/grpc"),
        (&app.http1, "application/grpc-web+proto"),
    ] {
        for accept in ["gzip", "zstd"] {
            let seen = format!("{content_type}, {accept}");
            let answer = client
                .post(app.url("/iggy.gateway.v1.MessageService/Subscribe"))
                .header("content-type", content_type)
                .header("te", "trailers")
                .header("grpc-accept-encoding", accept)
                // The stream ends at its deadline, so its whole body can be read.
                .header("grpc-timeout", "500m")
                .body(framed.clone())
                .send()
                .await
                .expect("sent");
            assert_eq!(answer.status(), 200, "{seen}");
            let bytes = answer.bytes().await.expect("the stream");
            let mut delivered = Vec::new();
            let mut rest = &bytes[..];
            while rest.len() >= 5 {
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                let (frame, after) = rest.split_at(5 + len);
                match frame[0] {
                    0 => {
                        let item = proto::SubscribeResponse::decode(&frame[5..])
                            .expect("an uncompressed message");
                        if let Some(proto::subscribe_response::Event::Message(polled)) = item.event
                        {
                            delivered.push(polled);
                        }
                    }
                    0x80 => {} // gRPC-Web's trailers
                    flag => panic!("{seen}: a stream message with flag {flag}"),
                }
                rest = after;
            }
            let got: Vec<String> = delivered
                .iter()
                .filter_map(|polled| match &polled.body {
                    Some(proto::polled_message::Body::Text(text)) => Some(text.clone()),
                    _ => None,
                })
                .collect();
            assert!(got == texts, "{seen}: {} of 3 delivered as sent", got.len());
        }
    }
}

#[tokio::test]
async fn compressed_rest_bodies_are_inflated_in_gzip_zstd_and_br() {
    let app = spawn_app().await;
    for coding in ["gzip", "zstd", "br"] {
        let name = format!("compressed-{coding}");
        let body = json!({ "name": name }).to_string();
        let compressed = match coding {
            "gzip" => gzip(body.as_bytes()),
            "zstd" => zstd::encode_all(body.as_bytes(), 3).expect("compressed"),
            _ => brotli(body.as_bytes()).await,
        };
        let response = app
            .http1
            .post(app.url("/v1/streams"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(compressed)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 201, "{coding}");
        let created: Value = response.json().await.expect("json");
        assert_eq!(created["stream"]["name"], name.as_str());
    }
}

// RFC 9659: a `zstd` content coding needs at most an 8 MiB window. A frame may declare up to
// 2 GiB, and a decoder sets its whole window aside before it writes a byte.
#[tokio::test]
async fn a_zstd_body_that_needs_a_window_past_8_mib_is_refused_as_malformed() {
    let app = spawn_app().await;
    for (window_log, status) in [(27, 400), (24, 400), (23, 201)] {
        let name = format!("window-{window_log}");
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        encoder.window_log(window_log).expect("window");
        // No content size, as a streaming client writes it: the frame keeps its window.
        encoder.include_contentsize(false).expect("no size");
        encoder
            .write_all(json!({ "name": name }).to_string().as_bytes())
            .expect("compressed");
        let response = app
            .http1
            .post(app.url("/v1/streams"))
            .header("content-type", "application/json")
            .header("content-encoding", "zstd")
            .body(encoder.finish().expect("compressed"))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), status, "window 2^{window_log}");
        let answer: Value = response.json().await.expect("JSON");
        if status == 400 {
            assert_eq!(answer["reason"], "MALFORMED_CONTENT_ENCODING", "{answer}");
        } else {
            assert_eq!(answer["stream"]["name"], name.as_str());
        }
    }
}

/// A gzip body of 16 KiB that inflates to 16 MiB of spaces inside a JSON string: one byte past
/// MAX_REQUEST_BODY_SIZE (16 MiB) once inflated.
fn gzip_bomb(inflated_bytes: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(br#"{"name":""#).expect("compressed");
    let spaces = vec![b' '; 1024 * 1024];
    let mut left = inflated_bytes;
    while left > 0 {
        let take = left.min(spaces.len());
        encoder.write_all(&spaces[..take]).expect("compressed");
        left -= take;
    }
    encoder.write_all(br#""}"#).expect("compressed");
    encoder.finish().expect("compressed")
}

#[tokio::test]
async fn a_rest_decompression_bomb_is_refused_413_while_it_inflates_and_the_gateway_serves_on() {
    let app = spawn_app().await;
    // gzip tops out near 1:1000; zstd squeezes a gigabyte of zeros into a few dozen KiB.
    let gzip_bomb = gzip_bomb(64 * 1024 * 1024);
    let zstd_bomb = {
        let mut encoder = zstd::Encoder::new(Vec::new(), 19).expect("encoder");
        std::io::copy(&mut std::io::repeat(0).take(1 << 30), &mut encoder).expect("compressed");
        encoder.finish().expect("compressed")
    };
    assert!(gzip_bomb.len() < 100 * 1024, "{}", gzip_bomb.len());
    assert!(zstd_bomb.len() < 100 * 1024, "{}", zstd_bomb.len());
    for (coding, bomb) in [("gzip", gzip_bomb), ("zstd", zstd_bomb)] {
        let started = Instant::now();
        let response = app
            .http1
            .post(app.url("/v1/streams"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(bomb)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 413, "{coding}");
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["reason"], "PAYLOAD_TOO_LARGE", "{coding}");
        // Refused once 16 MiB had come out, not after a gigabyte had.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{coding}: {:?}",
            started.elapsed()
        );
    }
    // Just under the limit is fine, and the gateway serves on.
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
    let response = app
        .http1
        .post(app.url("/v1/streams"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(br#"{"name":"after-the-bombs"}"#))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn a_grpc_decompression_bomb_is_refused_resource_exhausted_and_the_gateway_serves_on() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    // One message of 20 MiB of zeros, about 20 KiB once gzipped, over the 16 MiB limit.
    let bomb = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages: vec![proto::Message {
            body: Some(proto::message::Body::Payload(
                vec![0; 20 * 1024 * 1024].into(),
            )),
            ..Default::default()
        }],
    };
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let refused = MessageServiceClient::new(app.channel.clone())
            .send_compressed(encoding)
            .send_messages(bomb.clone())
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("MAX_REQUEST_BODY_SIZE"),
            "{}",
            refused.message()
        );
    }
    let ids = app
        .send_texts("orders", "created", 0, &["after the bomb"])
        .await;
    assert_eq!(ids.len(), 1);
}

// An encoder holds up to 2 MiB while its answer is sent, outside MAX_INFLIGHT_BYTES: a client
// that asked for many large compressed answers and took none of them held that much for each,
// and one client could hold every encoder, leaving every other client's answers plain.
#[tokio::test]
async fn at_most_max_encoders_answers_are_compressed_at_once_a_share_of_them_a_client() {
    use iggy_gateway::layers::{MAX_ENCODERS, MAX_ENCODERS_PER_CLIENT};
    let app = spawn_configured(|c| {
        c.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    // Letters that compress poorly: each compressed answer is well past the 64 KiB the
    // gateway queues beyond a stream's window, so it stays in its encoder.
    let mut seed = 7u64;
    let texts: Vec<String> = (0..100)
        .map(|_| {
            (0..2000)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    char::from(b'a' + u8::try_from((seed >> 33) % 26).unwrap_or(0))
                })
                .collect()
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    app.send_texts("orders", "created", 0, &texts).await;

    // Whether a poll by `client` that reads its answer comes back compressed.
    let compressed_for = |client: &'static str| {
        let request = app
            .http1
            .get(app.url(POLL))
            .header("accept-encoding", "zstd")
            .header("x-forwarded-for", client);
        async move {
            let answer = request.send().await.expect("polled");
            answer.headers().get("content-encoding").is_some()
        }
    };
    let compressed = |answers: &[http::Response<h2::RecvStream>]| {
        for answer in answers {
            assert!(
                answer
                    .headers()
                    .get("content-encoding")
                    .is_none_or(|coding| coding == "zstd")
            );
        }
        answers
            .iter()
            .filter(|answer| answer.headers().get("content-encoding").is_some())
            .count()
    };
    let polls = vec![POLL; MAX_ENCODERS_PER_CLIENT + 4];
    // Answers that go uncompressed take no encoder, however long they wait.
    let (plain, _held) =
        crate::helpers::window_from(&app, 0, &polls, "identity", Some("10.0.0.1")).await;
    assert!(compressed_for("10.0.0.1").await);
    plain.abort();

    // No window: every answer begins (its head) and none can end. One client gets its share,
    // and another client's answers are still compressed.
    let mut stalled = Vec::new();
    let (connection, (h2, answers)) =
        crate::helpers::window_from(&app, 0, &polls, "zstd", Some("10.0.0.1")).await;
    assert_eq!(
        compressed(&answers),
        MAX_ENCODERS_PER_CLIENT,
        "of {}",
        answers.len()
    );
    assert!(!compressed_for("10.0.0.1").await, "its share is taken");
    assert!(compressed_for("10.0.0.9").await, "another client's is not");
    stalled.push((connection, h2, answers));
    // Clients enough to take every encoder: past that, no client's answer is compressed.
    let mut total = MAX_ENCODERS_PER_CLIENT;
    for client in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"] {
        let (connection, (h2, answers)) =
            crate::helpers::window_from(&app, 0, &polls, "zstd", Some(client)).await;
        total += compressed(&answers);
        stalled.push((connection, h2, answers));
    }
    assert_eq!(total, MAX_ENCODERS);
    assert!(!compressed_for("10.0.0.9").await, "every encoder is taken");

    // The stalled answers end with their connections, and give their encoders back.
    for (connection, h2, answers) in stalled {
        connection.abort();
        drop((h2, answers));
    }
    let mut again = false;
    for _ in 0..50 {
        if compressed_for("10.0.0.1").await {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again, "a later answer is compressed again");
}

// tower-http answers 406 when `Accept-Encoding` leaves no coding acceptable, identity included,
// but only after the call has run: a stream was created and the client told 406, and a gRPC
// call that succeeded came back as an HTTP error. The gateway answers such a request plainly.
#[tokio::test]
async fn a_request_that_refuses_every_coding_is_served_plainly_never_406_after_the_fact() {
    let app = spawn_app().await;
    for (refusal, name) in [
        ("identity;q=0", "refused-identity"),
        ("*;q=0", "refused-all"),
    ] {
        let response = app
            .http1
            .post(app.url("/v1/streams"))
            .header("content-type", "application/json")
            .header("accept-encoding", refusal)
            .body(json!({ "name": name }).to_string())
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 201, "{refusal}");
        assert!(response.headers().get("content-encoding").is_none());
        let created: Value = response.json().await.expect("JSON");
        assert_eq!(created["stream"]["name"], name);
    }
    let mut request = tonic::Request::new(proto::ListStreamsRequest::default());
    request
        .metadata_mut()
        .insert("accept-encoding", "*;q=0".parse().expect("value"));
    let listed = app
        .streams
        .clone()
        .list_streams(request)
        .await
        .expect("the call is served")
        .into_inner();
    assert_eq!(listed.streams.len(), 2);
}
