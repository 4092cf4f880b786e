//! The Connect protocol on the gateway's one port: `buf curl` with its default protocol (unary
//! and server streaming, cleartext and TLS), and hand-built Connect requests over HTTP/1.1 and
//! HTTP/2: protobuf and JSON, GET, errors with Connect's codes and HTTP statuses, timeouts,
//! the protocol version, compression, and the layers' refusals in Connect's terms.

use std::{io::Read, process::Stdio, time::Duration};

use base64::Engine;
use bytes::{Buf, Bytes};
use iggy_gateway::{config::ApiKeys, proto};
use prost::Message;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, spawn_app, spawn_configured, text_message},
    tls::{Pki, https_client, spawn_tls},
};

const STREAMS: &str = "/iggy.gateway.v1.StreamService";
const SUBSCRIBE: &str = "/iggy.gateway.v1.MessageService/Subscribe";

fn http2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

/// A unary Connect call with a JSON body: the HTTP status and the JSON answer.
async fn call_json(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type");
    assert_eq!(content_type, "application/json", "status {status}");
    (status, response.json().await.expect("JSON"))
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The reason of a Connect error's `ErrorInfo` detail.
fn reason(error: &Value) -> String {
    error["details"]
        .as_array()
        .and_then(|details| {
            details
                .iter()
                .find(|detail| detail["type"] == "google.rpc.ErrorInfo")
        })
        .map(|info| {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(info["value"].as_str().expect("value"))
                .expect("unpadded base64");
            tonic_types::pb::ErrorInfo::decode(bytes.as_slice())
                .expect("ErrorInfo")
                .reason
        })
        .unwrap_or_default()
}

fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Reads envelopes from a streamed answer until `count` have arrived or the stream ends.
async fn envelopes(response: &mut reqwest::Response, count: usize) -> Vec<(u8, Bytes)> {
    let mut buffer = bytes::BytesMut::new();
    let mut out = Vec::new();
    while out.len() < count {
        while buffer.len() >= 5 {
            let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if buffer.len() < 5 + length {
                break;
            }
            let flags = buffer[0];
            buffer.advance(5);
            out.push((flags, buffer.split_to(length).freeze()));
        }
        if out.len() >= count {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("a chunk in time")
            .expect("readable")
        {
            Some(chunk) => buffer.extend_from_slice(&chunk),
            None => break,
        }
    }
    out
}

async fn with_messages(app: &TestApp) {
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["first", "second"])
        .await;
}

#[tokio::test]
async fn a_unary_call_answers_json_and_protobuf_over_http1_and_http2() {
    let app = spawn_app().await;
    for (client, name) in [(app.http1.clone(), "over-h1"), (http2(), "over-h2")] {
        let (status, answer) = call_json(
            &client,
            app.url(&format!("{STREAMS}/CreateStream")),
            json!({"name": name}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["stream"]["name"], name);

        let request = proto::GetStreamRequest {
            stream: name.to_owned(),
        };
        let response = client
            .post(app.url(&format!("{STREAMS}/GetStream")))
            .header("content-type", "application/proto")
            .header("connect-protocol-version", "1")
            .body(request.encode_to_vec())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), "application/proto");
        let answer = proto::GetStreamResponse::decode(response.bytes().await.expect("body"))
            .expect("protobuf answer");
        assert_eq!(answer.stream.expect("stream").name, name);
    }
}

#[tokio::test]
async fn errors_carry_connect_codes_http_statuses_and_the_grpc_reasons() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let url = |method: &str| app.url(&format!("{STREAMS}/{method}"));
    let (status, error) = call_json(&app.http1, url("GetStream"), json!({"stream": "nope"})).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    assert_eq!(reason(&error), "STREAM_NOT_FOUND");
    assert!(error["message"].as_str().unwrap_or("").contains("nope"));

    let (status, error) =
        call_json(&app.http1, url("CreateStream"), json!({"name": "orders"})).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("already_exists"))
    );
    assert_eq!(reason(&error), "STREAM_ALREADY_EXISTS");

    // A body REST's codec refuses is refused the same way, naming the field.
    let (status, error) = call_json(&app.http1, url("CreateStream"), json!({"name": 5})).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let violations = error["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["type"] == "google.rpc.BadRequest"))
        .expect("a BadRequest detail");
    assert_eq!(violations["debug"]["fieldViolations"][0]["field"], "name");

    let (status, error) = call_json(
        &app.http1,
        app.url("/iggy.gateway.v1.StreamService/Nope"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (501, Some("unimplemented"))
    );
}

#[tokio::test]
async fn a_call_without_protocol_version_1_is_refused() {
    let app = spawn_app().await;
    let url = app.url(&format!("{STREAMS}/ListStreams"));
    for version in [None, Some("2")] {
        let mut request = app
            .http1
            .post(&url)
            .header("content-type", "application/json")
            .body("{}");
        if let Some(version) = version {
            request = request.header("connect-protocol-version", version);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), 400, "{version:?}");
        let error: Value = response.json().await.expect("JSON");
        assert_eq!(error["code"], "invalid_argument");
        assert_eq!(reason(&error), "UNSUPPORTED_PROTOCOL_VERSION");
    }
}

#[tokio::test]
async fn side_effect_free_methods_answer_get_and_others_refuse_it() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let get = app
        .http1
        .get(app.url(&format!("{STREAMS}/GetStream")))
        .query(&[
            ("connect", "v1"),
            ("encoding", "json"),
            ("message", r#"{"stream":"orders"}"#),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(get.status(), 200);
    let answer: Value = get.json().await.expect("JSON");
    assert_eq!(answer["stream"]["name"], "orders");

    // Protobuf travels in URL-safe base64, compressed if the client likes.
    let request = proto::GetStreamRequest {
        stream: "orders".into(),
    }
    .encode_to_vec();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, &request).expect("gzip");
    let message =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(gzip.finish().expect("gzip"));
    let get = app
        .http1
        .get(app.url(&format!("{STREAMS}/GetStream")))
        .query(&[
            ("connect", "v1"),
            ("encoding", "proto"),
            ("base64", "1"),
            ("compression", "gzip"),
            ("message", message.as_str()),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(get.status(), 200);
    let answer = proto::GetStreamResponse::decode(get.bytes().await.expect("body")).expect("proto");
    assert_eq!(answer.stream.expect("stream").name, "orders");

    // Or percent-encoded as it is, binary and all (gzip's bytes are no UTF-8).
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, &request).expect("gzip");
    let binary = gzip.finish().expect("gzip");
    assert!(std::str::from_utf8(&binary).is_err());
    let message = percent_encoding::percent_encode(&binary, percent_encoding::NON_ALPHANUMERIC);
    let get = app
        .http1
        .get(app.url(&format!(
            "{STREAMS}/GetStream?connect=v1&encoding=proto&compression=gzip&message={message}"
        )))
        .send()
        .await
        .expect("sent");
    assert_eq!(get.status(), 200);
    let answer = proto::GetStreamResponse::decode(get.bytes().await.expect("body")).expect("proto");
    assert_eq!(answer.stream.expect("stream").name, "orders");

    let refused = app
        .http1
        .get(app.url(&format!("{STREAMS}/DeleteStream")))
        .query(&[
            ("connect", "v1"),
            ("encoding", "json"),
            ("message", r#"{"stream":"orders"}"#),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 405);
    assert_eq!(header(&refused, "allow"), "POST");
    assert_eq!(app.list_streams().await.len(), 1, "nothing was deleted");
}

// A side-effect-free method takes Connect's GET, so its path lists GET wherever it says what it
// takes; a GET without Connect's query is Connect's to refuse, naming what it lacks.
#[tokio::test]
async fn a_side_effect_free_methods_path_lists_get_among_the_methods_it_takes() {
    let app = spawn_app().await;
    let get_stream = app.url(&format!("{STREAMS}/GetStream"));
    let delete_stream = app.url(&format!("{STREAMS}/DeleteStream"));
    let options = |url: &str| app.http1.request(reqwest::Method::OPTIONS, url).send();
    let listed = options(&get_stream).await.expect("sent");
    assert_eq!(listed.status(), 204);
    assert_eq!(header(&listed, "allow"), "GET, POST, OPTIONS");
    let listed = options(&delete_stream).await.expect("sent");
    assert_eq!(header(&listed, "allow"), "POST, OPTIONS");

    let head = app.http1.head(&get_stream).send().await.expect("sent");
    assert_eq!(head.status(), 405);
    assert_eq!(header(&head, "allow"), "GET, POST, OPTIONS");
    let put = app.http1.put(&delete_stream).send().await.expect("sent");
    assert_eq!(put.status(), 405);
    assert_eq!(header(&put, "allow"), "POST, OPTIONS");

    // A bare GET is a Connect GET without its message: Connect's error, not a 405.
    let bare = app.http1.get(&get_stream).send().await.expect("sent");
    let status = bare.status();
    let body: Value = bare.json().await.expect("a Connect error");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument", "{body}");
}

#[tokio::test]
async fn a_server_stream_arrives_in_envelopes_and_ends_at_its_timeout() {
    let app = spawn_app().await;
    with_messages(&app).await;
    let request = json!({"stream": "orders", "topic": "created", "partition_id": 0,
                         "strategy": "POLLING_STRATEGY_FIRST"});
    for client in [app.http1.clone(), http2()] {
        let mut response = client
            .post(app.url(SUBSCRIBE))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .header("connect-timeout-ms", "800")
            .body(envelope(0, request.to_string().as_bytes()))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "content-type"),
            "application/connect+json"
        );
        let items = envelopes(&mut response, 10).await;
        let texts: Vec<String> = items
            .iter()
            .filter(|(flags, _)| *flags == 0)
            .filter_map(|(_, m)| serde_json::from_slice::<Value>(m).ok())
            .filter_map(|m| m["message"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(texts, ["first", "second"]);
        let (flags, end) = items.last().expect("an end");
        assert_eq!(
            *flags, 0x02,
            "the stream ends with its end-of-stream message"
        );
        let end: Value = serde_json::from_slice(end).expect("JSON end");
        assert_eq!(end["error"]["code"], "deadline_exceeded");
    }
}

#[tokio::test]
async fn a_stream_takes_a_compressed_protobuf_request_and_compresses_its_messages() {
    // Every message is large enough to compress.
    let app = spawn_configured(|c| c.wire.compression_min_bytes = 1).await;
    with_messages(&app).await;
    let request = proto::SubscribeRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partition_id: Some(0),
        strategy: proto::PollingStrategy::First as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, &request).expect("gzip");
    let mut response = http2()
        .post(app.url(SUBSCRIBE))
        .header("content-type", "application/connect+proto")
        .header("connect-content-encoding", "gzip")
        .header("connect-accept-encoding", "gzip")
        .header("connect-timeout-ms", "500")
        .body(envelope(0x01, &gzip.finish().expect("gzip")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "connect-content-encoding"), "gzip");
    let items = envelopes(&mut response, 2).await;
    let (flags, first) = &items[0];
    assert_eq!(*flags, 0x01, "compressed");
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&first[..])
        .read_to_end(&mut inflated)
        .expect("gunzips");
    let item = proto::SubscribeResponse::decode(inflated.as_slice()).expect("protobuf");
    assert!(!item.cursor.is_empty());
}

#[tokio::test]
async fn a_stream_refused_before_its_first_message_is_only_its_end() {
    let app = spawn_app().await;
    let error = stream_refusal(&app, json!({"stream": "nope", "topic": "x"})).await;
    assert_eq!(error["code"], "not_found");
    assert_eq!(reason(&error), "STREAM_NOT_FOUND");

    // A request its typed codec hands back is parsed by the descriptors, which name the field.
    let error = stream_refusal(&app, json!({"stream": 5, "topic": "x"})).await;
    assert_eq!(error["code"], "invalid_argument");
    let violations = error["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["type"] == "google.rpc.BadRequest"))
        .expect("a BadRequest detail");
    assert_eq!(violations["debug"]["fieldViolations"][0]["field"], "stream");
}

/// The error of a JSON subscription refused before its first message: a stream that is only
/// its end-of-stream message.
async fn stream_refusal(app: &TestApp, request: Value) -> Value {
    let mut response = app
        .http1
        .post(app.url(SUBSCRIBE))
        .header("content-type", "application/connect+json")
        .body(envelope(0, request.to_string().as_bytes()))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let items = envelopes(&mut response, 2).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].0, 0x02);
    let end: Value = serde_json::from_slice(&items[0].1).expect("JSON");
    end["error"].clone()
}

#[tokio::test]
async fn a_timeout_that_is_not_milliseconds_is_refused() {
    let app = spawn_app().await;
    let response = app
        .http1
        .post(app.url(&format!("{STREAMS}/ListStreams")))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .header("connect-timeout-ms", "soon")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(reason(&error), "INVALID_TIMEOUT");
}

#[tokio::test]
async fn unary_bodies_and_answers_are_compressed_by_http_content_coding() {
    let app = spawn_app().await;
    for n in 0..40 {
        app.create_stream(&format!("stream-with-a-long-name-{n}"))
            .await;
    }
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, b"{}").expect("gzip");
    let response = app
        .http1
        .post(app.url(&format!("{STREAMS}/ListStreams")))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "gzip")
        .body(gzip.finish().expect("gzip"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-encoding"), "gzip");
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&response.bytes().await.expect("body")[..])
        .read_to_end(&mut json)
        .expect("gunzips");
    let answer: Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(answer["streams"].as_array().map(Vec::len), Some(40));

    // A coding the gateway lacks is Connect's unimplemented, as in a GET's `compression` or a
    // stream's Connect-Content-Encoding, naming the codings it has.
    let response = app
        .http1
        .post(app.url(&format!("{STREAMS}/ListStreams")))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .header("content-encoding", "compress")
        .body(vec![0x1f, 0x9d])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 501);
    assert_eq!(
        header(&response, "accept-encoding"),
        "gzip, zstd, br, identity"
    );
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["code"], "unimplemented", "{error}");
}

#[tokio::test]
async fn the_layers_refuse_connect_calls_in_connect_terms() {
    let app = spawn_configured(|c| {
        c.auth.api_key = Some(ApiKeys::new(["connect-key"]));
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 1;
    })
    .await;
    let url = app.url(&format!("{STREAMS}/ListStreams"));
    let (status, error) = call_json(&app.http1, url.clone(), json!({})).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("unauthenticated"))
    );

    let keyed = |client: &reqwest::Client| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1")
            .header("x-api-key", "connect-key")
            .body("{}")
    };
    let mut last = None;
    for _ in 0..3 {
        last = Some(keyed(&app.http1).send().await.expect("sent"));
    }
    let limited = last.expect("answered");
    assert_eq!(limited.status(), 429);
    assert!(!header(&limited, "retry-after").is_empty());
    let error: Value = limited.json().await.expect("JSON");
    assert_eq!(error["code"], "resource_exhausted");
    assert!(
        error["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["type"] == "google.rpc.RetryInfo"))
    );
}

#[tokio::test]
async fn only_connect_codecs_and_procedure_paths_are_read_as_connect() {
    let app = spawn_configured(|c| c.limits.max_request_body_size = 1024).await;
    with_messages(&app).await;
    // A codec the gateway does not speak is a 415, not a body read as protobuf.
    let request = json!({"stream": "orders", "topic": "created", "partition_id": 0});
    let refused = app
        .http1
        .post(app.url(SUBSCRIBE))
        .header("content-type", "application/connect+xml")
        .header("connect-protocol-version", "1")
        .body(envelope(0, request.to_string().as_bytes()))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 415, "application/connect+xml");

    // A REST route stays REST whatever Connect header rides along: too large is 413, which a
    // client does not retry, not Connect's 429.
    let too_large = app
        .http1
        .post(app.url("/v1/streams"))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(format!(r#"{{"name":"{}"}}"#, "n".repeat(4096)))
        .send()
        .await
        .expect("sent");
    assert_eq!(too_large.status(), 413);
    assert_eq!(
        header(&too_large, "content-type"),
        "application/problem+json"
    );
}

fn has_buf() -> bool {
    std::process::Command::new("buf")
        .arg("--version")
        .output()
        .is_ok()
}

/// Runs `buf curl` (Connect, its default protocol; the schema read from `proto/`; a stream
/// ended by `--timeout`) and checks it printed `needle` at least `wanted` times.
async fn buf_curl(args: &[&str], needle: &str, wanted: usize) -> String {
    // The schema from the protos: buf curl's reflection would speak Connect too, and the
    // reflection service answers gRPC and gRPC-Web only.
    let run = tokio::process::Command::new("buf")
        .args([
            "curl",
            "--timeout",
            "3s",
            "--schema",
            env!("CARGO_MANIFEST_DIR"),
        ])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("buf curl ends")
        .expect("buf runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        printed.matches(needle).count() >= wanted,
        "{printed} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

#[tokio::test]
async fn buf_curl_calls_unary_and_streaming_methods_with_its_default_protocol() {
    if !has_buf() {
        eprintln!("SKIPPED: buf is not installed (`npm install -g @bufbuild/buf`)");
        return;
    }
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["first", "second"])
        .await;
    let printed = buf_curl(
        &[
            "-d",
            r#"{"name": "from-buf"}"#,
            &app.url(&format!("{STREAMS}/CreateStream")),
        ],
        "from-buf",
        1,
    )
    .await;
    let answer: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(answer["stream"]["name"], "from-buf");

    let printed = buf_curl(
        &[
            "-d",
            r#"{"stream": "orders", "topic": "created", "partition_id": 0, "strategy": "POLLING_STRATEGY_FIRST"}"#,
            &app.url(SUBSCRIBE),
        ],
        "\"text\"",
        2,
    )
    .await;
    assert!(
        printed.contains("first") && printed.contains("second"),
        "{printed}"
    );
}

#[tokio::test]
async fn buf_curl_and_reqwest_speak_connect_over_tls() {
    if !has_buf() {
        eprintln!("SKIPPED: buf is not installed (`npm install -g @bufbuild/buf`)");
        return;
    }
    let pki = Pki::new("test CA");
    let gateway = spawn_tls(&pki.server(), None, |_| {}).await;
    let ca = gateway.path("ca.crt");
    std::fs::write(&ca, &pki.ca).expect("CA written");
    let ca_arg = ca.display().to_string();
    let printed = buf_curl(
        &[
            "--cacert",
            &ca_arg,
            "-d",
            r#"{"name": "over-tls"}"#,
            &gateway.url(&format!("{STREAMS}/CreateStream")),
        ],
        "over-tls",
        1,
    )
    .await;
    let answer: Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(answer["stream"]["name"], "over-tls");

    let client = https_client(&pki.ca, None, false);
    let (status, _) = call_json(
        &client,
        gateway.url("/iggy.gateway.v1.TopicService/CreateTopic"),
        json!({"stream": "over-tls", "name": "t", "partitions_count": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call_json(
        &client,
        gateway.url("/iggy.gateway.v1.MessageService/SendMessages"),
        json!({"stream": "over-tls", "topic": "t", "partition_id": 0,
               "messages": [{"text": "one"}, {"text": "two"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let printed = buf_curl(
        &[
            "--cacert",
            &ca_arg,
            "-d",
            r#"{"stream": "over-tls", "topic": "t", "strategy": "POLLING_STRATEGY_FIRST"}"#,
            &gateway.url(SUBSCRIBE),
        ],
        "\"text\"",
        2,
    )
    .await;
    assert!(
        printed.contains("one") && printed.contains("two"),
        "{printed}"
    );

    for http1 in [true, false] {
        let client = https_client(&pki.ca, None, http1);
        let (status, answer) = call_json(
            &client,
            gateway.url(&format!("{STREAMS}/GetStream")),
            json!({"stream": "over-tls"}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["stream"]["name"], "over-tls");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_connect_subscriber_is_sent_messages_as_they_arrive() {
    let app = spawn_app().await;
    app.create_stream("live").await;
    app.create_topic("live", "t", 1).await;
    let request = json!({"stream": "live", "topic": "t", "partition_id": 0,
                         "strategy": "POLLING_STRATEGY_LAST"});
    let mut response = http2()
        .post(app.url(SUBSCRIBE))
        .header("content-type", "application/connect+json")
        .body(envelope(0, request.to_string().as_bytes()))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.messages
        .clone()
        .send_messages(proto::SendMessagesRequest {
            stream: "live".into(),
            topic: "t".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages: vec![text_message("now")],
        })
        .await
        .expect("sent");
    let items = envelopes(&mut response, 1).await;
    let item: Value = serde_json::from_slice(&items[0].1).expect("JSON");
    assert_eq!(item["message"]["text"], "now");
}
