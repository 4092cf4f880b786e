//! REST and Connect have no behaviour of their own: for every annotated RPC in the descriptor
//! set, the same request over gRPC, over REST (its /v1 route) and over Connect (JSON) gives the
//! same answer and leaves the same state. Driven from the descriptors, so an RPC added without
//! a scenario here fails.

use bytes::{Buf, BufMut, Bytes};
use iggy_gateway::{
    answer::grpc_code_name,
    proto,
    rest::{self, BodyRule},
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use serde_json::{Map, Value, json};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::helpers::{TestApp, spawn_app};

/// Passes already-encoded protobuf bytes through tonic unchanged.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

const ID_A: &str = "11111111-1111-4111-8111-111111111111";
const ID_B: &str = "22222222-2222-4222-8222-222222222222";

fn event(id: &str) -> Value {
    json!({"id": id, "event_type": "user.created", "timestamp": "2026-01-01T00:00:00Z",
           "payload": {"type": "Generic", "data": {"n": 1}}})
}

/// Lets the statistics cache (refreshed every 100 ms in tests) catch up with the set-up before
/// `GetStats` reads it, so both gateways answer from the same state.
async fn settle(method: &MethodDescriptor) {
    if method.name() == "GetStats" {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
}

/// One request per RPC, in proto3 JSON.
fn scenario(method: &str) -> Option<Value> {
    let t = json!({"stream": "orders", "topic": "created"});
    let with = |extra: Value| {
        let mut base = t.clone();
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        base
    };
    Some(match method {
        "CreateStream" => json!({"name": "payments"}),
        "GetStream" => json!({"stream": "orders"}),
        "ListStreams" => json!({}),
        "GetStats" => json!({}),
        "UpdateStream" => json!({"stream": "orders", "name": "orders-v2"}),
        "DeleteStream" => json!({"stream": "orders"}),
        "PurgeStream" => json!({"stream": "0"}),
        "CreateTopic" => {
            json!({"stream": "orders", "name": "shipped", "partitions_count": 4, "message_expiry": "60s"})
        }
        "GetTopic" => t,
        "ListTopics" => json!({"stream": "orders"}),
        "UpdateTopic" => with(json!({"name": "created-v2", "max_topic_size_bytes": "9000"})),
        "DeleteTopic" => t,
        "PurgeTopic" => t,
        "CreatePartitions" => with(json!({"partitions_count": 2})),
        "DeletePartitions" => with(json!({"partitions_count": 1})),
        "SendMessages" => with(json!({"partition_id": 1, "messages": [
            {"id": ID_B, "json": {"k": [1, 2]}, "headers": {"h": {"bool_value": true}}},
            {"id": ID_A, "text": "t"}]})),
        "PollMessages" => {
            with(json!({"partition_id": 0, "strategy": "POLLING_STRATEGY_FIRST", "count": 10}))
        }
        "StoreConsumerOffset" => {
            with(json!({"consumer": "billing", "partition_id": 0, "offset": "1"}))
        }
        "GetConsumerOffset" => with(json!({"consumer": "billing", "partition_id": 0})),
        "DeleteConsumerOffset" => with(json!({"consumer": "billing", "partition_id": 0})),
        "PublishEvent" => with(json!({"event": event(ID_B), "partition_key": "k"})),
        "PublishEvents" => with(json!({"events": [event(ID_A), event(ID_B)]})),
        "PollEvents" => with(json!({"partition_id": 0, "offset": "0"})),
        "Subscribe" => with(json!({"partition_id": 0, "strategy": "POLLING_STRATEGY_FIRST"})),
        _ => return None,
    })
}

/// The same starting state in every gateway: fixed ids, no generated ones.
async fn setup(app: &TestApp) {
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    let message = |id: &str, text: &str| proto::Message {
        id: id.into(),
        body: Some(proto::message::Body::Text(text.into())),
        ..Default::default()
    };
    app.send_to(
        "orders",
        "created",
        0,
        vec![message(ID_A, "a"), message(ID_B, "b")],
    )
    .await;
    app.messages
        .clone()
        .store_consumer_offset(proto::StoreConsumerOffsetRequest {
            stream: "orders".into(),
            topic: "created".into(),
            consumer: "billing".into(),
            partition_id: 0,
            offset: Some(0),
        })
        .await
        .expect("stored");
}

fn to_json(message: &DynamicMessage) -> Value {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serializes")
}

/// Times differ between two runs, and so do cursors and etags (both are bound to the
/// resource's creation time); numbers are compared as numbers (1 and 1.0 alike).
fn normalize(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if (key == "created_at" || key == "timestamp" || key == "refreshed_at")
                    && field.is_string()
                {
                    *field = json!("<time>");
                } else if key == "uptime_seconds" {
                    // Two gateways started a moment apart.
                    *field = json!("<uptime>");
                } else if key == "cursor" && field.as_str().is_some_and(|c| !c.is_empty()) {
                    *field = json!("<cursor>");
                } else if key == "etag" && field.as_str().is_some_and(|e| !e.is_empty()) {
                    *field = json!("<etag>");
                } else {
                    normalize(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Number(number) => {
            if let Some(float) = number.as_f64() {
                *value = json!(float);
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

async fn call_grpc(
    app: &TestApp,
    method: &MethodDescriptor,
    request: &Value,
) -> Result<Value, tonic::Status> {
    let message = DynamicMessage::deserialize(method.input(), request.clone())
        .expect("scenario is valid JSON for the request");
    let mut client = tonic::client::Grpc::new(app.channel.clone());
    client.ready().await.expect("ready");
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let reply = client
        .unary(
            tonic::Request::new(Bytes::from(message.encode_to_vec())),
            http::uri::PathAndQuery::try_from(path).expect("path"),
            RawCodec,
        )
        .await?
        .into_inner();
    Ok(to_json(
        &DynamicMessage::decode(method.output(), reply).expect("decodes"),
    ))
}

fn query_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

async fn call_rest(app: &TestApp, route: &rest::Route, request: &Value) -> (u16, Value) {
    let mut fields: Map<String, Value> = request.as_object().cloned().unwrap_or_default();
    let mut path = route.template.openapi_path();
    for field in route.template.fields() {
        let value = fields
            .remove(field)
            .expect("scenario sets every path variable");
        path = path.replace(&format!("{{{field}}}"), &query_value(&value));
    }
    let body = match &route.body {
        BodyRule::All => Some(Value::Object(std::mem::take(&mut fields))),
        BodyRule::Field(name) => fields.remove(name),
        BodyRule::None => None,
    };
    let query: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.clone(), query_value(v)))
        .collect();
    let mut http = app
        .http1
        .request(route.http_method.clone(), app.url(&path))
        .query(&query);
    if let Some(body) = body {
        http = http.json(&body);
    }
    let response = http.send().await.expect("sent");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (status, json)
}

/// The same call over Connect with a JSON body: the HTTP status and the answer.
async fn call_connect(app: &TestApp, method: &MethodDescriptor, request: &Value) -> (u16, Value) {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let response = app
        .http1
        .post(app.url(&path))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(request.to_string())
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// The first `count` messages of a server-streaming call over Connect (`connect+json`).
async fn connect_stream(
    app: &TestApp,
    method: &MethodDescriptor,
    request: &Value,
    count: usize,
) -> Vec<Value> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let message = request.to_string().into_bytes();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&message);
    let mut response = app
        .http1
        .post(app.url(&path))
        .header("content-type", "application/connect+json")
        .body(body)
        .send()
        .await
        .expect("sent");
    let mut buffer = Vec::new();
    let mut items = Vec::new();
    while items.len() < count {
        let chunk = response.chunk().await.expect("ok").expect("more");
        buffer.extend_from_slice(&chunk);
        while buffer.len() >= 5 {
            let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if buffer.len() < 5 + length {
                break;
            }
            assert_eq!(buffer[0], 0, "a message, not the stream's end");
            items.push(serde_json::from_slice(&buffer[5..5 + length]).expect("JSON"));
            buffer.drain(..5 + length);
        }
    }
    items.truncate(count);
    items
}

/// Every stream with its topics and every topic with its partitions, times blanked.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    let streams = app
        .streams
        .clone()
        .list_streams(proto::ListStreamsRequest {})
        .await
        .expect("listed")
        .into_inner()
        .streams;
    for stream in streams {
        let topics = app
            .topics
            .clone()
            .list_topics(proto::ListTopicsRequest {
                stream: stream.id.to_string(),
            })
            .await
            .expect("listed")
            .into_inner()
            .topics;
        out.push(format!(
            "{} {} {} {}",
            stream.id, stream.name, stream.messages_count, stream.topics_count
        ));
        for topic in topics {
            let mut full = app
                .topics
                .clone()
                .get_topic(proto::GetTopicRequest {
                    stream: stream.id.to_string(),
                    topic: topic.id.to_string(),
                })
                .await
                .expect("got")
                .into_inner()
                .topic
                .expect("topic");
            full.created_at = None;
            full.etag.clear();
            full.partitions.iter_mut().for_each(|p| p.created_at = None);
            out.push(format!("{full:?}"));
        }
    }
    out
}

/// The first `count` items of a server-streaming call over gRPC, as JSON.
async fn grpc_stream(
    app: &TestApp,
    method: &MethodDescriptor,
    request: &Value,
    count: usize,
) -> Vec<Value> {
    let message =
        DynamicMessage::deserialize(method.input(), request.clone()).expect("valid request");
    let mut client = tonic::client::Grpc::new(app.channel.clone());
    client.ready().await.expect("ready");
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let mut stream = client
        .server_streaming(
            tonic::Request::new(Bytes::from(message.encode_to_vec())),
            http::uri::PathAndQuery::try_from(path).expect("path"),
            RawCodec,
        )
        .await
        .expect("stream opens")
        .into_inner();
    let mut items = Vec::new();
    while items.len() < count {
        let bytes = stream.message().await.expect("ok").expect("an item");
        items.push(to_json(
            &DynamicMessage::decode(method.output(), bytes).expect("decodes"),
        ));
    }
    items
}

/// The first `count` lines of the same call over REST as NDJSON.
async fn rest_stream(
    app: &TestApp,
    route: &rest::Route,
    request: &Value,
    count: usize,
) -> Vec<Value> {
    let mut fields: Map<String, Value> = request.as_object().cloned().unwrap_or_default();
    let mut path = route.template.openapi_path();
    for field in route.template.fields() {
        let value = fields.remove(field).expect("path variable");
        path = path.replace(&format!("{{{field}}}"), &query_value(&value));
    }
    let query: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.clone(), query_value(v)))
        .collect();
    let mut response = app
        .http1
        .request(route.http_method.clone(), app.url(&path))
        .query(&query)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("sent");
    let mut text = String::new();
    while text.lines().count() < count || !text.ends_with('\n') {
        let chunk = response.chunk().await.expect("ok").expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .take(count)
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The messages of partition 0 of topic 0 in stream 0 (or the error code once deleted).
async fn stored_messages(app: &TestApp) -> Result<Vec<(u64, String)>, tonic::Code> {
    let polled = app
        .messages
        .clone()
        .poll_messages(proto::PollMessagesRequest {
            stream: "0".into(),
            topic: "0".into(),
            count: 100,
            ..Default::default()
        })
        .await
        .map_err(|status| status.code())?
        .into_inner();
    Ok(polled
        .messages
        .into_iter()
        .map(|m| (m.offset, m.id))
        .collect())
}

#[tokio::test]
async fn every_annotated_rpc_behaves_the_same_over_grpc_rest_and_connect() {
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let table = rest::route_table().expect("routes");
    let mut checked = 0;
    for service in pool
        .services()
        .filter(|s| s.package_name() == rest::API_PACKAGE)
    {
        for method in service.methods() {
            let grpc_path = format!("/{}/{}", service.full_name(), method.name());
            let route = table
                .routes()
                .iter()
                .find(|r| r.grpc_path == grpc_path && r.template.to_string().starts_with("/v1/"))
                .unwrap_or_else(|| panic!("{grpc_path} has no /v1 REST route"));
            let request = scenario(method.name())
                .unwrap_or_else(|| panic!("no parity scenario for {grpc_path}: add one"));

            if method.is_server_streaming() {
                let over_grpc = spawn_app().await;
                setup(&over_grpc).await;
                let over_rest = spawn_app().await;
                setup(&over_rest).await;
                let over_connect = spawn_app().await;
                setup(&over_connect).await;
                let mut grpc_items = grpc_stream(&over_grpc, &method, &request, 2).await;
                let mut rest_items = rest_stream(&over_rest, route, &request, 2).await;
                let mut connect_items = connect_stream(&over_connect, &method, &request, 2).await;
                grpc_items.iter_mut().for_each(normalize);
                rest_items.iter_mut().for_each(normalize);
                connect_items.iter_mut().for_each(normalize);
                assert_eq!(grpc_items, rest_items, "{grpc_path}: streams differ");
                assert_eq!(
                    grpc_items, connect_items,
                    "{grpc_path}: Connect's stream differs"
                );
                checked += 1;
                continue;
            }
            let over_grpc = spawn_app().await;
            setup(&over_grpc).await;
            settle(&method).await;
            let mut grpc_answer = call_grpc(&over_grpc, &method, &request)
                .await
                .unwrap_or_else(|status| panic!("{grpc_path} over gRPC failed: {status:?}"));

            let over_rest = spawn_app().await;
            setup(&over_rest).await;
            settle(&method).await;
            let (status, mut rest_answer) = call_rest(&over_rest, route, &request).await;
            assert_eq!(
                status,
                route.success.as_u16(),
                "{grpc_path} over REST: {rest_answer}"
            );

            let over_connect = spawn_app().await;
            setup(&over_connect).await;
            settle(&method).await;
            let (connect_status, mut connect_answer) =
                call_connect(&over_connect, &method, &request).await;
            assert_eq!(
                connect_status, 200,
                "{grpc_path} over Connect: {connect_answer}"
            );

            normalize(&mut grpc_answer);
            normalize(&mut rest_answer);
            normalize(&mut connect_answer);
            assert_eq!(
                grpc_answer, connect_answer,
                "{grpc_path}: Connect's answer differs"
            );
            if status == 204 {
                assert_eq!(grpc_answer, json!({}), "{grpc_path}: an empty answer");
            } else {
                assert_eq!(grpc_answer, rest_answer, "{grpc_path}: answers differ");
            }
            assert_eq!(
                snapshot(&over_grpc).await,
                snapshot(&over_rest).await,
                "{grpc_path}: state differs"
            );
            assert_eq!(
                stored_messages(&over_grpc).await,
                stored_messages(&over_rest).await,
                "{grpc_path}: messages differ"
            );
            assert_eq!(
                snapshot(&over_grpc).await,
                snapshot(&over_connect).await,
                "{grpc_path}: state differs over Connect"
            );
            assert_eq!(
                stored_messages(&over_grpc).await,
                stored_messages(&over_connect).await,
                "{grpc_path}: messages differ over Connect"
            );
            checked += 1;
        }
    }
    assert!(checked >= 22, "only {checked} RPCs were checked");
}

#[tokio::test]
async fn errors_are_the_same_over_grpc_rest_and_connect() {
    let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let table = rest::route_table().expect("routes");
    let method = pool
        .get_service_by_name("iggy.gateway.v1.TopicService")
        .and_then(|s| s.methods().find(|m| m.name() == "CreateTopic"))
        .expect("CreateTopic");
    let route = table
        .routes()
        .iter()
        .find(|r| {
            r.grpc_path.ends_with("/CreateTopic") && r.template.to_string().starts_with("/v1/")
        })
        .expect("route");
    let app = spawn_app().await;
    setup(&app).await;
    for (request, code, http, reason) in [
        (
            json!({"stream": "nope", "name": "x", "partitions_count": 1}),
            tonic::Code::NotFound,
            404,
            "STREAM_NOT_FOUND",
        ),
        (
            json!({"stream": "orders", "name": "created", "partitions_count": 1}),
            tonic::Code::AlreadyExists,
            409,
            "TOPIC_ALREADY_EXISTS",
        ),
        (
            json!({"stream": "orders", "name": "x", "partitions_count": 0}),
            tonic::Code::InvalidArgument,
            400,
            "INVALID_ARGUMENT",
        ),
    ] {
        let status = call_grpc(&app, &method, &request).await.expect_err("fails");
        let (rest_status, problem) = call_rest(&app, route, &request).await;
        assert_eq!(status.code(), code);
        assert_eq!(rest_status, http);
        assert_eq!(problem["reason"], reason);
        assert_eq!(problem["detail"], status.message());
        let (connect_status, error) = call_connect(&app, &method, &request).await;
        assert_eq!(connect_status, http);
        assert_eq!(
            error["code"],
            grpc_code_name(code).to_ascii_lowercase(),
            "Connect's code is gRPC's, in lower case"
        );
        assert_eq!(error["message"], status.message());
        assert_eq!(error["details"][0]["type"], "google.rpc.ErrorInfo");
        assert_eq!(error["details"][0]["debug"]["reason"], reason);
    }
}
