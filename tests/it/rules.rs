//! The protos' `buf.validate` rules over real sockets: the same request refused alike over
//! gRPC, REST and Connect by the rule alone, and a body made optional by the rules (`:purge`)
//! taken without one.

use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::spawn_app;

/// A message id in the UUID's simple form: a 128-bit value the `uuid` parser reads, but not
/// the hyphenated form the proto's `string.uuid` rule (and OpenAPI's `format: uuid`) states.
const SIMPLE_FORM_ID: &str = "0190f7c41f2e7a3b8c4d5e6f708192a3";

#[tokio::test]
async fn a_message_id_outside_the_uuid_rule_is_refused_alike_over_grpc_rest_and_connect() {
    let app = spawn_app().await;
    app.create_stream("rules").await;
    app.create_topic("rules", "t", 1).await;

    let refused = app
        .messages
        .clone()
        .send_messages(iggy_gateway::proto::SendMessagesRequest {
            stream: "rules".into(),
            topic: "t".into(),
            partitioning: None,
            messages: vec![iggy_gateway::proto::Message {
                id: SIMPLE_FORM_ID.into(),
                headers: Default::default(),
                body: Some(iggy_gateway::proto::message::Body::Text("x".into())),
            }],
        })
        .await
        .expect_err("refused by the uuid rule");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "messages[0].id: must be a UUID (8-4-4-4-12 hex digits)"
    );

    let body = json!({"messages": [{"id": SIMPLE_FORM_ID, "text": "x"}]});
    let (status, problem) = app
        .post_json("/v1/streams/rules/topics/t/messages", body.clone())
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["violations"][0]["field"], "messages[0].id");
    assert_eq!(problem["detail"], refused.message());

    let mut connect_body = body;
    connect_body["stream"] = json!("rules");
    connect_body["topic"] = json!("t");
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(connect_body.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = response.json().await.expect("Connect error JSON");
    assert_eq!(error["code"], "invalid_argument");
    assert_eq!(error["message"], refused.message());

    // Nothing was stored by any of the three.
    let (_, topic) = app.get_json("/v1/streams/rules/topics/t").await;
    assert_eq!(topic["topic"]["messages_count"], "0", "{topic}");
}

#[tokio::test]
async fn an_id_past_32_bits_is_refused_by_the_rule_over_grpc_and_rest() {
    let app = spawn_app().await;
    let refused = app
        .streams
        .clone()
        .get_stream(iggy_gateway::proto::GetStreamRequest {
            stream: "4294967296".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("stream: must match the pattern"),
        "{}",
        refused.message()
    );
    let (status, problem) = app.get_json("/v1/streams/4294967296").await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["violations"][0]["field"], "stream");
}

#[tokio::test]
async fn a_purge_takes_no_body_as_openapi_says() {
    let app = spawn_app().await;
    app.create_stream("purged").await;
    app.create_topic("purged", "t", 1).await;
    for path in [
        "/v1/streams/purged:purge",
        "/v1/streams/purged/topics/t:purge",
    ] {
        let response = app.http1.post(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status().as_u16(), 204, "{path}");
    }
    let (_, document) = app.get_json("/openapi.json").await;
    assert_eq!(
        document["paths"]["/v1/streams/{stream}:purge"]["post"]["requestBody"]["required"],
        false
    );
}
