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
