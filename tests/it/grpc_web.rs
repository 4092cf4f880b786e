//! gRPC-Web over plain HTTP/1.1, framed by hand as a browser client frames it.

use base64::Engine;
use iggy_gateway::proto;
use prost::Message;

use crate::helpers::{TestApp, spawn_app, text_message};

fn frame(message: &impl Message) -> Vec<u8> {
    crate::helpers::grpc_frame(&message.encode_to_vec())
}

/// Splits a gRPC-Web response body into its message frames and its trailers.
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, Vec<(String, String)>) {
    let (mut messages, mut trailers) = (Vec::new(), Vec::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n") {
                if let Some((key, value)) = line.split_once(':') {
                    trailers.push((key.trim().to_lowercase(), value.trim().to_owned()));
                }
            }
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

fn trailer<'a>(trailers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    trailers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn call(
    app: &TestApp,
    method: &str,
    request: &impl Message,
) -> (Vec<Vec<u8>>, Vec<(String, String)>) {
    let response = app
        .http1
        .post(app.url(&format!("/iggy.gateway.v1.MessageService/{method}")))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame(request))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    unframe(&response.bytes().await.expect("body"))
}

#[tokio::test]
async fn grpc_web_clients_send_and_poll_over_http1() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;

    let send = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: None,
        messages: vec![text_message("from the browser")],
    };
    let (messages, trailers) = call(&app, "SendMessages", &send).await;
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
    let sent = proto::SendMessagesResponse::decode(messages[0].as_slice()).expect("decodes");
    assert_eq!(sent.ids.len(), 1);

    let poll = proto::PollMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        count: 10,
        ..Default::default()
    };
    let (messages, trailers) = call(&app, "PollMessages", &poll).await;
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
    let polled = proto::PollMessagesResponse::decode(messages[0].as_slice()).expect("decodes");
    assert_eq!(polled.messages.len(), 1);
    assert_eq!(polled.messages[0].id, sent.ids[0]);
    assert_eq!(
        polled.messages[0].body,
        Some(proto::polled_message::Body::Text("from the browser".into()))
    );
}

#[tokio::test]
async fn grpc_web_errors_arrive_as_grpc_status_trailers() {
    let app = spawn_app().await;
    let poll = proto::PollMessagesRequest {
        stream: "missing".into(),
        topic: "created".into(),
        count: 1,
        ..Default::default()
    };
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/PollMessages"))
        .header("content-type", "application/grpc-web+proto")
        .body(frame(&poll))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    // A trailers-only answer carries the status in the HTTP headers.
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = response.bytes().await.expect("body");
    let (_, trailers) = unframe(&body);
    let status = status.or_else(|| trailer(&trailers, "grpc-status").map(str::to_owned));
    assert_eq!(status.as_deref(), Some("5"), "NOT_FOUND");
}

#[tokio::test]
async fn grpc_web_text_clients_get_base64_framing() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let request = proto::ListStreamsRequest {};
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(base64::engine::general_purpose::STANDARD.encode(frame(&request)))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web-text+proto"
    );
    let text = response.text().await.expect("body");
    let raw = decode_concatenated_base64(&text);
    let (messages, trailers) = unframe(&raw);
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
    let streams = proto::ListStreamsResponse::decode(messages[0].as_slice()).expect("decodes");
    assert_eq!(streams.streams[0].name, "orders");
}

/// gRPC-Web text bodies are each frame in base64 with its own padding, one after another, so a
/// piece ends after each run of `=`.
fn decode_concatenated_base64(text: &str) -> Vec<u8> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let end = match rest.find('=') {
            Some(first_pad) => {
                first_pad
                    + rest[first_pad..]
                        .find(|c| c != '=')
                        .unwrap_or(rest.len() - first_pad)
            }
            None => rest.len(),
        };
        out.extend(engine.decode(&rest[..end]).expect("valid base64 piece"));
        rest = &rest[end..];
    }
    out
}
