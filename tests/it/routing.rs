//! One port, three protocols: each caller gets answers in its own protocol.

use iggy_gateway::proto;

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_unknown_rest_path_answers_json_404_not_a_grpc_status() {
    let app = spawn_app().await;
    let response = app
        .http1
        .get(app.url("/no/such/route"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().get("grpc-status").is_none());
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["status"], 404);
    assert_eq!(body["reason"], "ROUTE_NOT_FOUND");
}

#[tokio::test]
async fn rest_over_http2_cleartext_is_served_on_the_same_port() {
    let app = spawn_app().await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = h2c
        .get(app.url("/no/such/route"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn an_unknown_grpc_method_is_unimplemented() {
    let app = spawn_app().await;
    // A gRPC call to a service this gateway does not have.
    let mut client = tonic::client::Grpc::new(app.channel.clone());
    client.ready().await.expect("ready");
    let err = client
        .unary::<_, proto::ListStreamsResponse, _>(
            tonic::Request::new(proto::ListStreamsRequest {}),
            http::uri::PathAndQuery::from_static("/no.such.Service/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

/// An unknown method of a service the gateway has is answered as one of a service it lacks:
/// UNIMPLEMENTED with its reason (tonic's own answer had neither message nor reason).
#[tokio::test]
async fn an_unknown_method_of_a_known_service_names_its_reason_on_every_protocol() {
    use tonic_types::StatusExt;
    let app = spawn_app().await;
    let path = "/iggy.gateway.v1.StreamService/NoSuchMethod";
    let mut client = tonic::client::Grpc::new(app.channel.clone());
    client.ready().await.expect("ready");
    let err = client
        .unary::<_, proto::ListStreamsResponse, _>(
            tonic::Request::new(proto::ListStreamsRequest {}),
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains(path), "{err:?}");
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|info| info.reason.as_str()),
        Some("UNKNOWN_METHOD")
    );
    let connect: serde_json::Value = app
        .http1
        .post(app.url(path))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body("{}")
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("Connect's error JSON");
    assert_eq!(connect["code"], "unimplemented", "{connect}");
    assert!(
        connect["details"].to_string().contains("UNKNOWN_METHOD"),
        "{connect}"
    );
}

/// A call to a method no service here has is UNIMPLEMENTED in its caller's own protocol, and
/// a Connect call to a service that only speaks gRPC says so in Connect's terms.
#[tokio::test]
async fn an_unknown_method_is_unimplemented_in_each_callers_protocol() {
    let app = spawn_app().await;
    let empty_frame = vec![0u8; 5];

    // gRPC-Web: its own content type, so a browser client reads the status, not a bad reply.
    for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
        let response = app
            .http1
            .post(app.url("/no.such.Service/Method"))
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(empty_frame.clone())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{content_type}");
        let answered = response.headers()["content-type"].to_str().expect("ascii");
        assert!(answered.starts_with("application/grpc-web"), "{answered}");
        assert_eq!(response.headers()["grpc-status"], "12", "{content_type}");
    }

    // Connect, unary and streamed: Connect's error JSON, code `unimplemented`.
    for (path, content_type) in [
        ("/no.such.Service/Method", "application/json"),
        ("/no.such.Service/Method", "application/connect+json"),
        ("/grpc.health.v1.Health/Check", "application/json"),
        ("/grpc.health.v1.Health/Watch", "application/connect+json"),
    ] {
        let response = app
            .http1
            .post(app.url(path))
            .header("content-type", content_type)
            .header("connect-protocol-version", "1")
            .body("{}")
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body");
        let error: serde_json::Value = if content_type == "application/json" {
            assert_eq!(status, 501, "{path}");
            serde_json::from_slice(&body).expect("Connect's error JSON")
        } else {
            // A stream's error is its end-of-stream message (flag 2, then its JSON).
            assert_eq!(status, 200, "{path}");
            assert_eq!(headers["content-type"], "application/connect+json");
            assert_eq!(body.first(), Some(&2), "{path}");
            let end: serde_json::Value =
                serde_json::from_slice(body.get(5..).expect("an envelope")).expect("JSON");
            end["error"].clone()
        };
        assert_eq!(
            error["code"], "unimplemented",
            "{path} {content_type}: {error}"
        );
    }

    // REST keeps its problem.
    let (status, body) = app.post_json("/no/such/route", serde_json::json!({})).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("ROUTE_NOT_FOUND"))
    );
}

/// A gRPC error with no message is sent in gRPC's trailers-only form: one HEADERS frame that
/// ends the stream. Strict clients (grpcio) read the status only from that form; headers and
/// then an empty DATA frame that ends the stream read as UNKNOWN to them.
#[tokio::test]
async fn a_grpc_error_comes_as_one_headers_frame_that_ends_the_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // Validation refuses an empty stream name (the service's error); an unknown method is
    // refused before any service.
    for path in [
        "/iggy.gateway.v1.StreamService/GetStream",
        "/no.such.Service/Method",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connected");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
        // HPACK: indexed :method POST and :scheme http, then literals without indexing.
        let mut block = vec![0x83, 0x86];
        for (index, name, value) in [
            (4u8, "", path),
            (1, "", "localhost"),
            (0, "content-type", "application/grpc"),
            (0, "te", "trailers"),
        ] {
            block.push(index);
            if index == 0 {
                block.push(name.len() as u8);
                block.extend_from_slice(name.as_bytes());
            }
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        out.extend(h2_frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
        out.extend(h2_frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // an empty message, END_STREAM
        tcp.write_all(&out).await.expect("sent");

        // Frames until the answer's HEADERS on stream 1.
        let flags = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let mut head = [0u8; 9];
                tcp.read_exact(&mut head).await.expect("a frame");
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                tcp.read_exact(&mut payload).await.expect("its payload");
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                if head[3] == 0x4 && head[4] & 0x1 == 0 {
                    tcp.write_all(&h2_frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("SETTINGS ack");
                }
                if head[3] == 0x1 && stream == 1 {
                    return head[4];
                }
            }
        })
        .await
        .expect("an answer");
        // A HEADERS frame that ends the stream before any message is an error's: a call
        // answered OK sends its message first. (Its HPACK block is Huffman-coded; the codes
        // these calls get are checked by the clients' own tests.)
        assert_eq!(flags & 0x1, 0x1, "{path}: HEADERS without END_STREAM");
    }
}

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A Python grpcio client reads each error's own code (it reads a status only from a
/// trailers-only answer or from trailers). Skipped, with a line, without python3 and grpcio
/// (`.ci/run` installs them).
#[tokio::test]
async fn python_grpcio_reads_each_errors_own_code() {
    let Some(python) = crate::helpers::python_with_grpcio() else {
        return;
    };
    let app = spawn_app().await;
    app.create_stream("taken").await;
    // Requests as protobuf bytes (field 1, the stream's name), so no generated code is needed.
    let script = r#"
import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    for path, request, metadata in [
        ('/iggy.gateway.v1.StreamService/GetStream', b'', ()),
        ('/iggy.gateway.v1.StreamService/GetStream', b'\x0a\x04nope', ()),
        ('/iggy.gateway.v1.StreamService/CreateStream', b'\x0a\x05taken', ()),
        ('/no.such.Service/Method', b'', ()),
        ('/iggy.gateway.v1.StreamService/ListStreams', b'', (('x-large', 'a' * 18000),)),
        ('/iggy.gateway.v1.StreamService/ListStreams', b'', ()),
    ]:
        try:
            channel.unary_unary(path)(request, timeout=10, metadata=metadata)
            print('OK')
        except grpc.RpcError as error:
            print(error.code().name)
"#;
    let target = format!("127.0.0.1:{}", app.addr.port());
    let output = crate::helpers::run_python(&python, script, &[target.as_ref()]).await;
    let codes: Vec<String> = output.lines().map(str::to_owned).collect();
    assert_eq!(
        codes,
        [
            "INVALID_ARGUMENT",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "UNIMPLEMENTED",
            "RESOURCE_EXHAUSTED",
            "OK"
        ]
    );
}

/// An HTTP/2 request whose headers are over 16 KiB is refused in its caller's protocol (hyper's
/// own answer, a bare 431, reads as UNKNOWN to gRPC clients), with CORS's headers so a browser
/// reads it too; HTTP/1.1 heads keep their 64 KiB.
#[tokio::test]
async fn headers_over_the_http2_limit_are_refused_in_the_callers_protocol() {
    use tonic_types::StatusExt;
    let app = crate::helpers::spawn_configured(|c| {
        c.edge.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let large = "a".repeat(18_000);
    let mut request = tonic::Request::new(proto::ListStreamsRequest {});
    request
        .metadata_mut()
        .insert("x-large", large.parse().expect("ascii"));
    let err = app
        .streams
        .clone()
        .list_streams(request)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|info| info.reason.as_str()),
        Some("HEADERS_TOO_LARGE")
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = h2
        .get(app.url("/v1/streams"))
        .header("x-large", &large)
        .header("origin", "https://app.example")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 431);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let problem: serde_json::Value = response.json().await.expect("a problem");
    assert_eq!(problem["reason"], "HEADERS_TOO_LARGE");
    // The same head over HTTP/1.1 is within its 64 KiB.
    let response = app
        .http1
        .get(app.url("/v1/streams"))
        .header("x-large", &large)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
}
