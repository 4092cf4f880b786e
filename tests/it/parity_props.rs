//! REST and gRPC make the same broker call for the same request, for any request: random
//! `SendMessages` batches (ids or none, headers of every kind, raw, JSON and text bodies) are
//! sent once over gRPC and once over REST (the same message written as proto3 JSON), each to a
//! topic of its own, and what the two topics then hold must be the same, message for message.

use std::collections::HashMap;

use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    test_runner::{Config as ProptestConfig, TestRunner},
};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app};
use iggy_gateway::proto;

fn header_value() -> impl Strategy<Value = proto::HeaderValue> {
    use proto::header_value::Kind;
    prop_oneof![
        "\\PC{0,20}".prop_map(Kind::StringValue),
        vec(any::<u8>(), 0..16).prop_map(|b| Kind::BytesValue(b.into())),
        any::<i64>().prop_map(Kind::Int64Value),
        any::<u64>().prop_map(Kind::Uint64Value),
        any::<bool>().prop_map(Kind::BoolValue),
        // Finite only: proto3 JSON writes NaN and infinities as strings, a case of its own.
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Kind::DoubleValue),
    ]
    .prop_map(|kind| proto::HeaderValue { kind: Some(kind) })
}

fn json_value() -> impl Strategy<Value = pbjson_types::Value> {
    use pbjson_types::value::Kind;
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<bool>().prop_map(Kind::BoolValue),
        any::<i32>().prop_map(|n| Kind::NumberValue(f64::from(n))),
        (-1e6f64..1e6).prop_map(Kind::NumberValue),
        "\\PC{0,12}".prop_map(Kind::StringValue),
    ]
    .prop_map(|kind| pbjson_types::Value { kind: Some(kind) });
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|values| pbjson_types::Value {
                kind: Some(Kind::ListValue(pbjson_types::ListValue { values })),
            }),
            btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|fields| pbjson_types::Value {
                kind: Some(Kind::StructValue(pbjson_types::Struct {
                    fields: fields.into_iter().collect(),
                })),
            }),
        ]
    })
}

fn message() -> impl Strategy<Value = proto::Message> {
    use proto::message::Body;
    let id = prop::option::of(1u128..).prop_map(|id| {
        id.map(|id| uuid::Uuid::from_u128(id).hyphenated().to_string())
            .unwrap_or_default()
    });
    let headers = btree_map("[a-z][a-z0-9_]{0,11}", header_value(), 0..4);
    let body = prop_oneof![
        vec(any::<u8>(), 0..64).prop_map(|b| Body::Payload(b.into())),
        "\\PC{0,40}".prop_map(Body::Text),
        json_value().prop_map(Body::Json),
    ];
    (id, headers, body).prop_map(|(id, headers, body)| proto::Message {
        id,
        headers: headers.into_iter().collect::<HashMap<_, _>>(),
        body: Some(body),
    })
}

/// The request as proto3 JSON, the way a REST client writes it (stream and topic go in the path).
fn as_json(pool: &DescriptorPool, request: &proto::SendMessagesRequest) -> Value {
    let descriptor = pool
        .get_message_by_name("iggy.gateway.v1.SendMessagesRequest")
        .expect("descriptor");
    let dynamic =
        DynamicMessage::decode(descriptor, request.encode_to_vec().as_slice()).expect("decodes");
    serde_json::to_value(&dynamic).expect("serializes")
}

/// What a topic's partition 0 holds, with what the gateway assigns (offsets' timestamps, and
/// ids where the request gave none) cleared so two topics can be compared.
async fn stored(app: &TestApp, topic: &str, sent: &[proto::Message]) -> Vec<proto::PolledMessage> {
    let polled = app.poll_from("props", topic, 0, 0, 100).await.messages;
    polled
        .into_iter()
        .zip(sent)
        .map(|(mut message, sent)| {
            message.timestamp = None;
            if sent.id.is_empty() {
                message.id.clear();
            }
            message
        })
        .collect()
}

#[test]
fn any_batch_is_stored_the_same_over_rest_and_grpc() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let app = runtime.block_on(async {
        let app = spawn_app().await;
        app.create_stream("props").await;
        app
    });
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let accepted = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&vec(message(), 1..6), |messages| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (grpc_topic, rest_topic) = (format!("grpc-{case}"), format!("rest-{case}"));
            runtime.block_on(async {
                app.create_topic("props", &grpc_topic, 1).await;
                app.create_topic("props", &rest_topic, 1).await;
                let request = proto::SendMessagesRequest {
                    stream: String::new(),
                    topic: String::new(),
                    partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
                    messages: messages.clone(),
                };
                let over_grpc = app
                    .messages
                    .clone()
                    .send_messages(proto::SendMessagesRequest {
                        stream: "props".into(),
                        topic: grpc_topic.clone(),
                        ..request.clone()
                    })
                    .await
                    .map(|answer| answer.into_inner().ids.len());
                let (status, answer) = app
                    .post_json(
                        &format!("/v1/streams/props/topics/{rest_topic}/messages"),
                        as_json(&pool, &request),
                    )
                    .await;
                match over_grpc {
                    Ok(ids) => {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        prop_assert_eq!(ids, messages.len());
                        prop_assert_eq!(status, 201, "{}", answer);
                        let grpc_stored = stored(&app, &grpc_topic, &messages).await;
                        let rest_stored = stored(&app, &rest_topic, &messages).await;
                        prop_assert_eq!(grpc_stored.len(), messages.len());
                        prop_assert_eq!(grpc_stored, rest_stored);
                    }
                    // Refused: refused over REST too, for the same reason and field, and
                    // nothing stored on either side.
                    Err(refusal) => {
                        let details = refusal.get_error_details();
                        let reason = details.error_info().map(|info| info.reason.clone());
                        let field = details
                            .bad_request()
                            .and_then(|bad| bad.field_violations.first())
                            .map(|violation| violation.field.clone());
                        prop_assert_eq!(status, 400, "{}", answer);
                        prop_assert_eq!(answer["reason"].as_str().map(str::to_owned), reason);
                        prop_assert_eq!(
                            answer["violations"][0]["field"].as_str().map(str::to_owned),
                            field
                        );
                        prop_assert!(stored(&app, &grpc_topic, &messages).await.is_empty());
                        prop_assert!(stored(&app, &rest_topic, &messages).await.is_empty());
                    }
                }
                Ok(())
            })
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    // Most generated batches are valid, so the stored-alike branch is what is mostly tested.
    let accepted = accepted.into_inner();
    assert!(
        accepted >= 24,
        "only {accepted} of 48 batches were accepted"
    );
}
