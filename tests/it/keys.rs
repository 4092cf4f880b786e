//! Named keys from a keys file: scopes on stream/topic patterns, quotas per identity, reloads
//! that add and revoke keys (ending a revoked key's subscription), and the audit trail, over
//! real sockets on every protocol.

use std::{path::PathBuf, time::Duration};

use futures_util::StreamExt;
use iggy_gateway::{identity::hash_key, proto};
use prost::Message;
use serde_json::{Value, json};
use tempfile::TempDir;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::{
    durability::Gateway,
    helpers::{TestApp, spawn_configured, text_message},
};

/// A keys file with: an admin of everything, a reader of `orders/*`, the `orders` team, two
/// producers with and without a quota, and an auditor of `*/audit`.
pub fn keys_file() -> String {
    format!(
        r#"
[[keys]]
name = "platform"
sha256 = "{admin}"
scopes = ["admin:*", "read:*", "write:*"]

[[keys]]
name = "orders-reader"
sha256 = "{reader}"
scopes = ["read:orders/*"]

[[keys]]
name = "orders-team"
sha256 = "{team}"
scopes = ["read:orders/*", "write:orders/*", "admin:orders/*"]

[[keys]]
name = "limited"
sha256 = "{limited}"
scopes = ["read:*", "write:*"]
[keys.quota]
produce_requests_per_second = 1

[[keys]]
name = "unlimited"
sha256 = "{unlimited}"
scopes = ["read:*", "write:*"]

[[keys]]
name = "auditor"
sha256 = "{auditor}"
scopes = ["read:*/audit"]

[[keys]]
name = "watcher"
sha256 = "{watcher}"
scopes = ["read:*"]
[keys.quota]
subscriptions = 2

[[keys]]
name = "billing"
sha256 = "{billing}"
scopes = ["read:*"]
consumers = ["billing-eu", "billing-us"]
"#,
        admin = hash_key("admin-key"),
        reader = hash_key("reader-key"),
        team = hash_key("team-key"),
        limited = hash_key("limited-key"),
        unlimited = hash_key("unlimited-key"),
        auditor = hash_key("auditor-key"),
        watcher = hash_key("watcher-key"),
        billing = hash_key("billing-key"),
    )
}

pub struct Keyed {
    pub app: TestApp,
    pub file: PathBuf,
    _dir: TempDir,
}

/// A gateway with the keys file above (re-read every 100 ms) and `API_KEY=static-key`, with
/// streams `orders` (topics `created`, `audit`) and `payments` (topics `settled`, `audit`).
pub async fn keyed_gateway() -> Keyed {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, keys_file()).expect("keys file");
    let path = file.clone();
    let app = spawn_configured(move |c| {
        c.auth.api_key = Some(iggy_gateway::config::ApiKeys::new(["static-key"]));
        c.auth.api_keys_file = Some(path);
        c.auth.api_keys_reload_interval_ms = 100;
    })
    .await;
    for stream in ["orders", "payments"] {
        admin(&app, "/v1/streams", json!({"name": stream})).await;
    }
    for (stream, topic) in [
        ("orders", "created"),
        ("orders", "audit"),
        ("payments", "settled"),
        ("payments", "audit"),
    ] {
        admin(
            &app,
            &format!("/v1/streams/{stream}/topics"),
            json!({"name": topic, "partitions_count": 1}),
        )
        .await;
    }
    Keyed {
        app,
        file,
        _dir: dir,
    }
}

async fn admin(app: &TestApp, path: &str, body: Value) {
    let (status, answer) = rest(app, "admin-key", reqwest::Method::POST, path, Some(body)).await;
    assert_eq!(status, 201, "{answer}");
}

/// A REST call with a key: the status and the JSON answer (`Null` when empty).
pub async fn rest(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, answer) = rest_full(app, key, method, path, body).await;
    (status, answer)
}

async fn rest_full(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app
        .http1
        .request(method, app.url(path))
        .header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (status, headers, json)
}

/// A gRPC request carrying `key`.
pub fn keyed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().expect("metadata"));
    request
}

fn send_request(stream: &str, topic: &str, text: &str) -> proto::SendMessagesRequest {
    proto::SendMessagesRequest {
        stream: stream.into(),
        topic: topic.into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages: vec![text_message(text)],
    }
}

/// The names of the topics of `stream` that `key` lists over REST.
async fn topic_names(app: &TestApp, key: &str, stream: &str) -> Vec<String> {
    let path = format!("/v1/streams/{stream}/topics");
    let (status, topics) = rest(app, key, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{topics}");
    topics["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|topic| topic["name"].as_str().map(str::to_owned))
        .collect()
}

/// RESOURCE_EXHAUSTED with `reason` and a `RetryInfo` saying when to retry.
fn assert_throttled(status: &tonic::Status, reason: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some(reason)
    );
    assert!(details.retry_info().and_then(|r| r.retry_delay).is_some());
}

fn assert_scope_missing(status: &tonic::Status, scope: &str, target: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "SCOPE_MISSING");
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some(scope));
    assert_eq!(
        info.metadata.get("target").map(String::as_str),
        Some(target)
    );
}

fn assert_problem_scope_missing(status: u16, problem: &Value, scope: &str, target: &str) {
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["reason"], "SCOPE_MISSING", "{problem}");
    assert_eq!(problem["code"], "PERMISSION_DENIED");
    assert_eq!(problem["metadata"]["scope"], scope, "{problem}");
    assert_eq!(problem["metadata"]["target"], target, "{problem}");
    assert!(problem["request_id"].is_string());
}

/// gRPC-Web over HTTP/1.1, framed by hand: the message frames and the trailers.
pub async fn grpc_web(
    app: &TestApp,
    key: &str,
    path: &str,
    message: &impl Message,
) -> (Vec<Vec<u8>>, Vec<(String, String)>) {
    grpc_web_raw(app, key, path, message.encode_to_vec()).await
}

async fn grpc_web_raw(
    app: &TestApp,
    key: &str,
    path: &str,
    body: Vec<u8>,
) -> (Vec<Vec<u8>>, Vec<(String, String)>) {
    let framed = crate::helpers::grpc_frame(&body);
    let response = app
        .http1
        .post(app.url(path))
        .header("content-type", "application/grpc-web+proto")
        .header("x-api-key", key)
        .body(framed)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let mut trailers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("grpc-"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let bytes = response.bytes().await.expect("body");
    let (mut messages, mut rest) = (Vec::new(), &bytes[..]);
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.push((k.trim().to_lowercase(), v.trim().to_owned()));
                }
            }
        } else {
            messages.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    (messages, trailers)
}

fn trailer<'a>(trailers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    trailers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `ErrorInfo` reason and metadata of a gRPC-Web error's trailers.
fn web_status(trailers: &[(String, String)]) -> tonic::Status {
    let mut headers = http::HeaderMap::new();
    for (name, value) in trailers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    tonic::Status::from_header_map(&headers).expect("a grpc-status")
}

#[tokio::test]
async fn a_read_only_key_polls_and_subscribes_but_cannot_send_on_any_protocol() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let ids = app
        .messages
        .clone()
        .send_messages(keyed("team-key", send_request("orders", "created", "one")))
        .await
        .expect("the team sends")
        .into_inner()
        .ids;
    assert_eq!(ids.len(), 1);

    // REST: polls, subscribes, but a send is 403 naming the scope.
    let (status, polled) = rest(
        app,
        "reader-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/created/messages?partition_id=0&count=10&strategy=POLLING_STRATEGY_FIRST",
        None,
    )
    .await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["messages"][0]["text"], "one");
    let (status, problem) = rest(
        app,
        "reader-key",
        reqwest::Method::POST,
        "/v1/streams/orders/topics/created/messages",
        Some(json!({"partition_id": 0, "messages": [{"text": "nope"}]})),
    )
    .await;
    assert_problem_scope_missing(status, &problem, "write", "*");
    let subscribed = app
        .http1
        .get(app.url(
            "/v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=POLLING_STRATEGY_FIRST",
        ))
        .header("x-api-key", "reader-key")
        .send()
        .await
        .expect("subscribed");
    assert_eq!(subscribed.status(), 200);
    let mut chunks = subscribed.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), chunks.next())
        .await
        .expect("a line in time")
        .expect("a chunk")
        .expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("\"one\""));

    // gRPC: the same.
    let polled = app
        .messages
        .clone()
        .poll_messages(keyed(
            "reader-key",
            proto::PollMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                strategy: proto::PollingStrategy::First.into(),
                count: 10,
                ..Default::default()
            },
        ))
        .await
        .expect("the reader polls")
        .into_inner();
    assert_eq!(polled.messages.len(), 1);
    let mut stream = subscribe_as(app, "reader-key")
        .await
        .expect("the reader subscribes");
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
        .expect("no error")
        .expect("a message");
    assert!(first.cursor.len() > 10);
    let refused = app
        .messages
        .clone()
        .send_messages(keyed("reader-key", send_request("orders", "created", "no")))
        .await
        .expect_err("a reader cannot send");
    assert_scope_missing(&refused, "write", "*");

    // gRPC-Web: the same.
    let (messages, trailers) = grpc_web(
        app,
        "reader-key",
        "/iggy.gateway.v1.MessageService/PollMessages",
        &proto::PollMessagesRequest {
            stream: "orders".into(),
            topic: "created".into(),
            strategy: proto::PollingStrategy::First.into(),
            count: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
    let polled = proto::PollMessagesResponse::decode(&messages[0][..]).expect("decodes");
    assert_eq!(polled.messages.len(), 1);
    let (_, trailers) = grpc_web(
        app,
        "reader-key",
        "/iggy.gateway.v1.MessageService/SendMessages",
        &send_request("orders", "created", "no"),
    )
    .await;
    assert_scope_missing(&web_status(&trailers), "write", "*");
    // A gRPC-Web subscription: its first frame is the stored message.
    let subscribe = proto::SubscribeRequest {
        stream: "orders".into(),
        topic: "created".into(),
        strategy: proto::PollingStrategy::First.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let framed = crate::helpers::grpc_frame(&subscribe);
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/Subscribe"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-api-key", "reader-key")
        .body(framed)
        .send()
        .await
        .expect("subscribed");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if received.len() >= 5 {
                let len = u32::from_be_bytes([received[1], received[2], received[3], received[4]])
                    as usize;
                if received.len() >= 5 + len {
                    return proto::SubscribeResponse::decode(&received[5..5 + len])
                        .expect("a SubscribeResponse");
                }
            }
            let chunk = body.next().await.expect("more").expect("bytes");
            received.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("a message in time");
    assert!(matches!(
        first.event,
        Some(proto::subscribe_response::Event::Message(_))
    ));

    // Nothing the reader tried was stored.
    let polled = app
        .messages
        .clone()
        .poll_messages(keyed(
            "admin-key",
            proto::PollMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                strategy: proto::PollingStrategy::First.into(),
                count: 10,
                ..Default::default()
            },
        ))
        .await
        .expect("polled")
        .into_inner();
    assert_eq!(polled.messages.len(), 1);
}

#[tokio::test]
async fn a_key_scoped_to_orders_cannot_see_or_touch_payments() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;

    // Listings show only what the key may read, on every protocol.
    let (status, listed) = rest(app, "team-key", reqwest::Method::GET, "/v1/streams", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["orders"]);
    let listed = app
        .streams
        .clone()
        .list_streams(keyed("team-key", proto::ListStreamsRequest {}))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        listed
            .streams
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["orders"]
    );
    let (messages, trailers) = grpc_web(
        app,
        "team-key",
        "/iggy.gateway.v1.StreamService/ListStreams",
        &proto::ListStreamsRequest {},
    )
    .await;
    assert_eq!(trailer(&trailers, "grpc-status"), Some("0"));
    let listed = proto::ListStreamsResponse::decode(&messages[0][..]).expect("decodes");
    assert_eq!(listed.streams.len(), 1);
    assert_eq!(listed.streams[0].name, "orders");
    // The full-access keys see both.
    let (_, listed) = rest(app, "static-key", reqwest::Method::GET, "/v1/streams", None).await;
    assert_eq!(listed["streams"].as_array().map(Vec::len), Some(2));

    // Every way of touching payments is refused, naming the target.
    let (status, problem) = rest(
        app,
        "team-key",
        reqwest::Method::GET,
        "/v1/streams/payments",
        None,
    )
    .await;
    assert_problem_scope_missing(status, &problem, "read", "payments");
    let (status, problem) = rest(
        app,
        "team-key",
        reqwest::Method::GET,
        "/v1/streams/payments/topics",
        None,
    )
    .await;
    assert_problem_scope_missing(status, &problem, "read", "payments");
    let (status, problem) = rest(
        app,
        "team-key",
        reqwest::Method::POST,
        "/v1/streams/payments/topics/settled/messages",
        Some(json!({"messages": [{"text": "x"}]})),
    )
    .await;
    assert_problem_scope_missing(status, &problem, "write", "payments/settled");
    let (status, problem) = rest(
        app,
        "team-key",
        reqwest::Method::DELETE,
        "/v1/streams/payments",
        None,
    )
    .await;
    assert_problem_scope_missing(status, &problem, "admin", "payments");
    let (status, problem) = rest(
        app,
        "team-key",
        reqwest::Method::POST,
        "/v1/streams/payments/topics",
        Some(json!({"name": "mine", "partitions_count": 1})),
    )
    .await;
    assert_problem_scope_missing(status, &problem, "admin", "payments/mine");
    // By numeric id too (stream 1 is payments): the id is looked up, not trusted, and the
    // refusal names the id, not the name the key may not see.
    let (status, problem) =
        rest(app, "team-key", reqwest::Method::GET, "/v1/streams/1", None).await;
    assert_problem_scope_missing(status, &problem, "read", "1");
    // Renaming its own stream into another team's name is refused too.
    let (status, problem) = rest(
        app,
        "team-key",
        reqwest::Method::PATCH,
        "/v1/streams/orders",
        Some(json!({"name": "payments-v2"})),
    )
    .await;
    assert_problem_scope_missing(status, &problem, "admin", "payments-v2");
    let refused = app
        .messages
        .clone()
        .send_messages(keyed("team-key", send_request("payments", "settled", "x")))
        .await
        .expect_err("refused");
    assert_scope_missing(&refused, "write", "payments/settled");
    let refused = app
        .subscribe(keyed(
            "team-key",
            proto::SubscribeRequest {
                stream: "payments".into(),
                topic: "settled".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("refused");
    assert_scope_missing(&refused, "read", "payments/settled");
    let refused = app
        .topics
        .clone()
        .delete_topic(keyed(
            "team-key",
            proto::DeleteTopicRequest {
                stream: "payments".into(),
                topic: "settled".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("refused");
    assert_scope_missing(&refused, "admin", "payments/settled");
    let (_, trailers) = grpc_web(
        app,
        "team-key",
        "/iggy.gateway.v1.StreamService/GetStream",
        &proto::GetStreamRequest {
            stream: "payments".into(),
        },
    )
    .await;
    assert_scope_missing(&web_status(&trailers), "read", "payments");

    // In its own stream it does everything its scopes allow.
    let (status, _) = rest(
        app,
        "team-key",
        reqwest::Method::POST,
        "/v1/streams/orders/topics",
        Some(json!({"name": "shipped", "partitions_count": 1})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = rest(
        app,
        "team-key",
        reqwest::Method::POST,
        "/v1/streams/orders/topics/shipped/messages",
        Some(json!({"messages": [{"text": "x"}]})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = rest(
        app,
        "team-key",
        reqwest::Method::DELETE,
        "/v1/streams/orders/topics/shipped",
        None,
    )
    .await;
    assert_eq!(status, 204);
    // Nothing happened to payments.
    let (status, topics) = rest(
        app,
        "admin-key",
        reqwest::Method::GET,
        "/v1/streams/payments/topics",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(topics["topics"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_topic_pattern_across_streams_sees_only_those_topics() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    for (topic, texts) in [("created", 3), ("audit", 1)] {
        let messages: Vec<Value> = (0..texts)
            .map(|i| json!({"text": format!("m{i}")}))
            .collect();
        admin(
            app,
            &format!("/v1/streams/orders/topics/{topic}/messages"),
            json!({"partition_id": 0, "messages": messages}),
        )
        .await;
    }
    let (_, audit) = rest(
        app,
        "admin-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/audit",
        None,
    )
    .await;
    let audit_size = audit["topic"]["size_bytes"].clone();
    // `read:*/audit`: both streams are listed, each with its audit topic only, and counted
    // over it alone: nothing tells how many other topics there are, nor how much they hold.
    let (_, listed) = rest(
        app,
        "auditor-key",
        reqwest::Method::GET,
        "/v1/streams",
        None,
    )
    .await;
    assert_eq!(listed["streams"].as_array().map(Vec::len), Some(2));
    let orders = listed["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["name"] == "orders"))
        .expect("orders listed");
    assert_eq!(orders["topics_count"], 1, "{orders}");
    assert_eq!(orders["messages_count"], "1", "{orders}");
    assert_eq!(orders["size_bytes"], audit_size, "{orders}");
    let (_, whole) = rest(app, "admin-key", reqwest::Method::GET, "/v1/streams", None).await;
    let whole = whole["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["name"] == "orders"))
        .expect("orders listed")
        .clone();
    assert_eq!(
        (&whole["topics_count"], &whole["messages_count"]),
        (&json!(2), &json!("4")),
        "an admin sees it all: {whole}"
    );
    assert_eq!(topic_names(app, "auditor-key", "payments").await, ["audit"]);
    let stream = app
        .streams
        .clone()
        .get_stream(keyed(
            "auditor-key",
            proto::GetStreamRequest {
                stream: "orders".into(),
            },
        ))
        .await
        .expect("got")
        .into_inner()
        .stream
        .expect("stream");
    assert_eq!(
        stream
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["audit"]
    );
    assert_eq!((stream.topics_count, stream.messages_count), (1, 1));
    assert_eq!(
        Some(stream.size_bytes),
        audit_size.as_str().and_then(|size| size.parse().ok())
    );
    let (status, problem) = rest(
        app,
        "auditor-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/created",
        None,
    )
    .await;
    assert_problem_scope_missing(status, &problem, "read", "orders/created");
    // Its scope covers topics, not whole streams: it may not purge one even if it were admin.
    let (status, problem) = rest(
        app,
        "auditor-key",
        reqwest::Method::POST,
        "/v1/streams/orders:purge",
        Some(json!({})),
    )
    .await;
    assert_problem_scope_missing(status, &problem, "admin", "*");
}

#[tokio::test]
async fn quotas_hold_back_one_identity_and_leave_another_alone() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let send = || json!({"partition_id": 0, "messages": [{"text": "q"}]});
    let path = "/v1/streams/orders/topics/created/messages";
    // `limited` may send 1 request per second; the next within the second is refused.
    let (status, answer) = rest(
        app,
        "limited-key",
        reqwest::Method::POST,
        path,
        Some(send()),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let (status, headers, problem) = rest_full(
        app,
        "limited-key",
        reqwest::Method::POST,
        path,
        Some(send()),
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["reason"], "QUOTA_EXCEEDED");
    assert_eq!(problem["metadata"]["quota"], "produce_requests_per_second");
    assert_eq!(problem["metadata"]["identity"], "limited");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(headers["ratelimit-limit"], "1");
    assert_eq!(headers["ratelimit-remaining"], "0");
    // gRPC: RESOURCE_EXHAUSTED with RetryInfo.
    let refused = app
        .messages
        .clone()
        .send_messages(keyed("limited-key", send_request("orders", "created", "q")))
        .await
        .expect_err("over quota");
    assert_throttled(&refused, "QUOTA_EXCEEDED");
    // gRPC-Web: the same.
    let (_, trailers) = grpc_web(
        app,
        "limited-key",
        "/iggy.gateway.v1.MessageService/SendMessages",
        &send_request("orders", "created", "q"),
    )
    .await;
    assert_eq!(web_status(&trailers).code(), Code::ResourceExhausted);
    // Its reads (consume) are not limited, and another identity sends on, from the same address.
    let (status, _) = rest(
        app,
        "limited-key",
        reqwest::Method::GET,
        "/v1/streams",
        None,
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..20 {
        let (status, answer) = rest(
            app,
            "unlimited-key",
            reqwest::Method::POST,
            path,
            Some(send()),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }
    // After a second the budget is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = rest(
        app,
        "limited-key",
        reqwest::Method::POST,
        path,
        Some(send()),
    )
    .await;
    assert_eq!(status, 201);

    // /metrics counts per identity, labelled by name.
    let (status, metrics) = {
        let response = app
            .http1
            .get(app.url("/metrics"))
            .header("x-api-key", "static-key")
            .send()
            .await
            .expect("metrics");
        (
            response.status().as_u16(),
            response.text().await.expect("text"),
        )
    };
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"iggy_gateway_identity_refusals_total{identity="limited",reason="QUOTA_EXCEEDED"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"iggy_gateway_identity_calls_total{identity="unlimited",scope="write"} 20"#
        )
    );
    assert!(
        metrics
            .contains(r#"iggy_gateway_identity_bytes_total{identity="unlimited",class="produce"}"#)
    );
}

#[tokio::test]
async fn byte_quotas_hold_back_a_producer_that_sends_too_much() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    std::fs::write(
        &file,
        format!(
            "keys:\n  - name: bulky\n    sha256: {}\n    scopes: [\"write:*\", \"admin:*\"]\n    quota:\n      produce_bytes_per_second: 1000\n",
            hash_key("bulky-key")
        ),
    )
    .expect("keys file");
    let app = spawn_configured(move |c| c.auth.api_keys_file = Some(file)).await;
    let (status, _) = rest(
        &app,
        "bulky-key",
        reqwest::Method::POST,
        "/v1/streams",
        Some(json!({"name": "b"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = rest(
        &app,
        "bulky-key",
        reqwest::Method::POST,
        "/v1/streams/b/topics",
        Some(json!({"name": "t", "partitions_count": 1})),
    )
    .await;
    assert_eq!(status, 201);
    let big = "x".repeat(3000);
    let path = "/v1/streams/b/topics/t/messages";
    let (status, _) = rest(
        &app,
        "bulky-key",
        reqwest::Method::POST,
        path,
        Some(json!({"messages": [{"text": big}]})),
    )
    .await;
    assert_eq!(status, 201, "admitted while the budget is not overdrawn");
    let (status, headers, problem) = rest_full(
        &app,
        "bulky-key",
        reqwest::Method::POST,
        path,
        Some(json!({"messages": [{"text": "small"}]})),
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["metadata"]["quota"], "produce_bytes_per_second");
    let wait: u64 = headers["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=3).contains(&wait), "{wait}");
}

/// A gateway whose keys file holds one key, `name`, whose secret is `<name>-key`, with
/// `scopes` and the quota lines `quota` (YAML, under `quota:`).
async fn one_key_gateway(name: &str, scopes: &str, quota: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    std::fs::write(
        &file,
        format!(
            "keys:\n  - name: {name}\n    sha256: {}\n    scopes: {scopes}\n    quota:\n{quota}",
            hash_key(&format!("{name}-key"))
        ),
    )
    .expect("keys file");
    let app = spawn_configured(move |c| c.auth.api_keys_file = Some(file)).await;
    // The file is read at start-up; the directory may go.
    drop(dir);
    app
}

// Threads of their own, so calls admitted together are charged together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_and_polls_at_once_overdraw_a_byte_quota_by_one_call_only() {
    let app = one_key_gateway(
        "burst",
        "[\"write:*\", \"read:*\", \"admin:*\"]",
        "      produce_bytes_per_second: 1000\n      consume_bytes_per_second: 1000\n",
    )
    .await;
    for (path, body) in [
        ("/v1/streams", json!({"name": "b"})),
        (
            "/v1/streams/b/topics",
            json!({"name": "t", "partitions_count": 1}),
        ),
    ] {
        let (status, answer) =
            rest(&app, "burst-key", reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let path = "/v1/streams/b/topics/t/messages";
    // Over one HTTP/2 connection, so the sends arrive together.
    let sends = (0..20).map(|i| {
        let mut client = app.messages.clone();
        async move {
            client
                .send_messages(keyed(
                    "burst-key",
                    proto::SendMessagesRequest {
                        stream: "b".into(),
                        topic: "t".into(),
                        partitioning: None,
                        messages: vec![text_message(&format!("{i:02}{}", "x".repeat(3000)))],
                    },
                ))
                .await
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let stored = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(stored, 1, "one send overdraws the budget, no more");
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        let info = refused.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "QUOTA_EXCEEDED");
        assert_eq!(info.metadata["quota"], "produce_bytes_per_second");
    }
    // What the topic holds (the consume budget is whole yet).
    let polled = app
        .messages
        .clone()
        .poll_messages(keyed(
            "burst-key",
            proto::PollMessagesRequest {
                stream: "b".into(),
                topic: "t".into(),
                partition_id: 0,
                count: 100,
                strategy: proto::PollingStrategy::First.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("polled")
        .into_inner();
    assert_eq!(
        polled.messages.len(),
        1,
        "only the answered send was stored"
    );
    // That poll overdrew the consume budget by itself (3 KB against 1 KB a second); wait it
    // out, then poll at once from many callers: one is answered, the others are refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let poll = format!("{path}?partition_id=0&count=10&strategy=first&consumer=c&auto_commit=true");
    let polls = (0..10).map(|_| rest_full(&app, "burst-key", reqwest::Method::GET, &poll, None));
    let answers = futures_util::future::join_all(polls).await;
    let answered = answers
        .iter()
        .filter(|(status, _, _)| *status == 200)
        .count();
    assert_eq!(answered, 1, "one poll overdraws the budget, no more");
    for (status, _, problem) in answers.iter().filter(|(status, _, _)| *status != 200) {
        assert_eq!(*status, 429, "{problem}");
        assert_eq!(problem["metadata"]["quota"], "consume_bytes_per_second");
    }
}

#[tokio::test]
async fn a_call_refused_for_what_it_names_is_charged_to_its_quota_not_again_to_the_share() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    std::fs::write(
        &file,
        format!(
            "keys:\n  - name: payments\n    sha256: {}\n    scopes: [\"write:payments/*\"]\n    quota:\n      produce_requests_per_second: 100\n",
            hash_key("payments-key")
        ),
    )
    .expect("keys file");
    let app = spawn_configured(move |c| {
        c.auth.api_keys_file = Some(file);
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 1;
    })
    .await;
    // Each send names a stream out of scope: refused once its body is read, after it took a
    // request of its quota when admitted; the per-identity share (one call) is not taken too.
    for attempt in 0..4 {
        let (status, problem) = rest(
            &app,
            "payments-key",
            reqwest::Method::POST,
            "/v1/streams/orders/topics/created/messages",
            Some(json!({"messages": [{"text": "not ours"}]})),
        )
        .await;
        assert_eq!(status, 403, "attempt {attempt}: {problem}");
        assert_eq!(problem["reason"], "SCOPE_MISSING", "{problem}");
    }
}

#[tokio::test]
async fn a_reload_adds_and_revokes_keys_and_ends_the_revoked_keys_subscription() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let mut grpc = app
        .subscribe(keyed(
            "reader-key",
            proto::SubscribeRequest {
                stream: "orders".into(),
                topic: "created".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("subscribed");
    let sse = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages:subscribe?partition_id=0"))
        .header("x-api-key", "reader-key")
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("subscribed");
    assert_eq!(sse.status(), 200);
    let (status, _) = rest(
        app,
        "newcomer-key",
        reqwest::Method::GET,
        "/v1/streams",
        None,
    )
    .await;
    assert_eq!(status, 401);

    // A bad file keeps the keys in force.
    std::fs::write(&gateway.file, "[[keys]]\nname = \"broken\"\n").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _) = rest(app, "reader-key", reqwest::Method::GET, "/v1/streams", None).await;
    assert_eq!(status, 200, "a bad file must not revoke anything");

    // The reader is removed, a newcomer added.
    let file = keys_file().replace(&hash_key("reader-key"), &hash_key("newcomer-key"));
    std::fs::write(&gateway.file, file).expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = rest(
            app,
            "newcomer-key",
            reqwest::Method::GET,
            "/v1/streams",
            None,
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, problem) =
        rest(app, "reader-key", reqwest::Method::GET, "/v1/streams", None).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["reason"], "API_KEY_INVALID");

    // The open subscriptions end: gRPC with UNAUTHENTICATED, SSE with a problem event.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match grpc.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the subscription ends");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert_eq!(
        ended
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .as_deref(),
        Some("API_KEY_REVOKED")
    );
    let text = tokio::time::timeout(Duration::from_secs(5), sse.text())
        .await
        .expect("the SSE stream ends")
        .expect("text");
    assert!(text.contains("event: problem"), "{text}");
    assert!(text.contains("API_KEY_REVOKED"), "{text}");
}

/// The next message a subscription delivers (its offset), within `wait`.
async fn next_offset(
    stream: &mut tonic::Streaming<proto::SubscribeResponse>,
    wait: Duration,
) -> Option<u64> {
    tokio::time::timeout(wait, async {
        loop {
            let item = stream.message().await.expect("open").expect("not ended");
            if let Some(proto::subscribe_response::Event::Message(message)) = item.event {
                return message.offset;
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_consume_quota_a_reload_adds_paces_a_subscription_already_open() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let mut stream = subscribe_as(app, "unlimited-key")
        .await
        .expect("subscribed");
    // The reload gives the key a byte quota of 1000 a second.
    let file = keys_file();
    let at = file.find("name = \"unlimited\"").expect("the key");
    let end = at + file[at..].find("\n\n").expect("its end");
    let file = format!(
        "{}\n[keys.quota]\nconsume_bytes_per_second = 1000{}",
        &file[..end],
        &file[end..]
    );
    std::fs::write(&gateway.file, file).expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let send = |text: String| {
        rest(
            app,
            "admin-key",
            reqwest::Method::POST,
            "/v1/streams/orders/topics/created/messages",
            Some(json!({"partition_id": 0, "messages": [{"text": text}]})),
        )
    };
    // Ten kilobytes: delivered (one delivery may overdraw the budget), and charged to it.
    let (status, answer) = send("x".repeat(10_000)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        next_offset(&mut stream, Duration::from_secs(5)).await,
        Some(0)
    );
    // The budget is nine seconds overdrawn: the next message waits, and the key's polls are
    // refused meanwhile.
    let (status, answer) = send("small".into()).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        next_offset(&mut stream, Duration::from_secs(2)).await,
        None,
        "held back by the quota the reload added"
    );
    let (status, problem) = rest(
        app,
        "unlimited-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/created/messages?partition_id=0&count=1&strategy=first",
        None,
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["metadata"]["quota"], "consume_bytes_per_second");
}

#[tokio::test]
async fn a_scope_taken_away_by_a_reload_ends_the_subscription_with_scope_missing() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let mut grpc = app
        .subscribe(keyed(
            "team-key",
            proto::SubscribeRequest {
                stream: "orders".into(),
                topic: "created".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("subscribed");
    let file = keys_file().replace(
        r#"["read:orders/*", "write:orders/*", "admin:orders/*"]"#,
        r#"["write:orders/*"]"#,
    );
    std::fs::write(&gateway.file, file).expect("write");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(status) = grpc.message().await {
                return status;
            }
        }
    })
    .await
    .expect("ends");
    assert_scope_missing(&ended, "read", "orders/created");
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nname = \"old\"\nsha256 = \"{}\"\nscopes = [\"read\"]\nexpires_at = 2001-01-01T00:00:00Z\n",
            hash_key("old-key")
        ),
    )
    .expect("keys file");
    let app = spawn_configured(move |c| c.auth.api_keys_file = Some(file)).await;
    let (status, problem) = rest(&app, "old-key", reqwest::Method::GET, "/v1/streams", None).await;
    assert_eq!(status, 401);
    assert_eq!(problem["reason"], "API_KEY_EXPIRED");
}

#[tokio::test]
async fn every_rpc_refuses_a_key_without_its_scope_on_what_it_names() {
    // Every RPC of the API, called on stream `payments`: refused to a key that reads `orders/*`
    // only (at the layer for write and admin RPCs, by the service for read ones), and to the
    // `orders` team, which holds every scope on `orders/*` (by the service: each method checks
    // what its request names, or this fails).
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let table = iggy_gateway::layers::RpcTable::from_descriptors().expect("table");
    let mut rpcs: Vec<_> = table.rpcs().cloned().collect();
    rpcs.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(rpcs.len() >= 24, "{}", rpcs.len());
    for rpc in rpcs {
        // These name no stream: they are filtered, or global.
        if rpc.path.ends_with("/ListStreams") || rpc.path.ends_with("/GetStats") {
            continue;
        }
        for key in ["reader-key", "team-key"] {
            let (_, trailers) = grpc_web_raw(app, key, &rpc.path, call_body(&rpc.path)).await;
            let status = web_status(&trailers);
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{} with {key}: {status:?}",
                rpc.path
            );
            assert_eq!(
                status
                    .get_error_details()
                    .error_info()
                    .map(|i| i.reason.clone())
                    .as_deref(),
                Some("SCOPE_MISSING"),
                "{} with {key}",
                rpc.path
            );
        }
    }
}

/// A request for `path` naming stream `payments`, topic `settled`, consumer `c` and name
/// `new-name` wherever it has such a field (every request of the API calls them so).
fn call_body(path: &str) -> Vec<u8> {
    let pool = prost_reflect::DescriptorPool::decode(iggy_gateway::proto::FILE_DESCRIPTOR_SET)
        .expect("pool");
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .expect("a gRPC path");
    let method = pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .expect("method");
    let mut message = prost_reflect::DynamicMessage::new(method.input());
    let input = method.input();
    let message_of = |name: &str| {
        let mut message =
            prost_reflect::DynamicMessage::new(pool.get_message_by_name(name).expect("message"));
        if name == "iggy.gateway.v1.Message" {
            message.set_field_by_name("text", prost_reflect::Value::String("x".into()));
        }
        prost_reflect::Value::Message(message)
    };
    // A request the protos' rules take (they are checked when it is decoded, before the
    // service looks at its target), so what refuses it is the scope check.
    for (field, value) in [
        ("stream", prost_reflect::Value::String("payments".into())),
        ("topic", prost_reflect::Value::String("settled".into())),
        ("name", prost_reflect::Value::String("new-name".into())),
        ("consumer", prost_reflect::Value::String("c".into())),
        ("count", prost_reflect::Value::U32(1)),
        ("partitions_count", prost_reflect::Value::U32(1)),
        ("offset", prost_reflect::Value::U64(0)),
        ("event", message_of("iggy.gateway.v1.Event")),
        (
            "events",
            prost_reflect::Value::List(vec![message_of("iggy.gateway.v1.Event")]),
        ),
        (
            "messages",
            prost_reflect::Value::List(vec![message_of("iggy.gateway.v1.Message")]),
        ),
    ] {
        if let Some(field) = input.get_field_by_name(field) {
            message.set_field(&field, value);
        }
    }
    message.encode_to_vec()
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_and_writes_an_audit_line_per_admin_call_and_refusal() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, keys_file()).expect("keys file");
    let gateway = Gateway::start_with(
        &dir.path().join("data"),
        &[
            ("API_KEYS_FILE", file.display().to_string()),
            // Only SIGHUP reloads.
            ("API_KEYS_RELOAD_INTERVAL_MS", "0".into()),
        ],
    );
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", gateway.addr);
    let created = client
        .post(url("/v1/streams"))
        .header("x-api-key", "team-key")
        .header("x-request-id", "audit-create-1")
        .json(&json!({"name": "orders"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let refused = client
        .post(url("/v1/streams"))
        .header("x-api-key", "team-key")
        .header("x-request-id", "audit-refused-1")
        .json(&json!({"name": "payments"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 403);
    // An admin call whose request the protos refuse is audited too, over Connect as over gRPC.
    let invalid = client
        .post(url("/iggy.gateway.v1.StreamService/CreateStream"))
        .header("x-api-key", "team-key")
        .header("x-request-id", "audit-invalid-1")
        .header("connect-protocol-version", "1")
        .json(&json!({"name": "12345"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(invalid.status(), 400);
    // And one whose body does not parse, refused before its method runs, on REST and Connect.
    for (id, path, connect) in [
        ("audit-malformed-rest", "/v1/streams", false),
        (
            "audit-malformed-connect",
            "/iggy.gateway.v1.StreamService/CreateStream",
            true,
        ),
    ] {
        let mut request = client
            .post(url(path))
            .header("x-api-key", "team-key")
            .header("x-request-id", id)
            .header("content-type", "application/json")
            .body("{not json");
        if connect {
            request = request.header("connect-protocol-version", "1");
        }
        let malformed = request.send().await.expect("sent");
        assert_eq!(malformed.status(), 400, "{id}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let line = |id: &str| -> Value {
        let lines = gateway.logged(id);
        let line = lines
            .iter()
            .find(|line| line.contains("\"target\":\"audit\""))
            .unwrap_or_else(|| panic!("no audit line for {id}: {lines:?}"));
        serde_json::from_str(line).expect("JSON")
    };
    let admin = line("audit-create-1");
    assert_eq!(admin["fields"]["identity"], "orders-team");
    assert_eq!(admin["fields"]["method"], "StreamService.CreateStream");
    assert_eq!(admin["fields"]["target"], "orders");
    assert_eq!(admin["fields"]["result"], "OK");
    let refusal = line("audit-refused-1");
    assert_eq!(refusal["fields"]["identity"], "orders-team");
    assert_eq!(refusal["fields"]["target"], "payments");
    assert_eq!(refusal["fields"]["result"], "PERMISSION_DENIED");
    assert_eq!(refusal["fields"]["scope"], "admin");
    let invalid = line("audit-invalid-1");
    assert_eq!(invalid["fields"]["identity"], "orders-team");
    assert_eq!(invalid["fields"]["method"], "StreamService.CreateStream");
    assert_eq!(invalid["fields"]["result"], "INVALID_ARGUMENT");
    for id in ["audit-malformed-rest", "audit-malformed-connect"] {
        let malformed = line(id);
        assert_eq!(
            malformed["fields"]["method"], "StreamService.CreateStream",
            "{id}"
        );
        assert_eq!(malformed["fields"]["result"], "INVALID_ARGUMENT", "{id}");
    }
    // Each call has its one line, whichever way it ended.
    for id in [
        "audit-create-1",
        "audit-refused-1",
        "audit-invalid-1",
        "audit-malformed-rest",
        "audit-malformed-connect",
    ] {
        assert_eq!(
            gateway
                .logged(id)
                .iter()
                .filter(|line| line.contains("\"target\":\"audit\""))
                .count(),
            1,
            "{id}: one audit line"
        );
    }

    // SIGHUP: the file's new key works, the removed one no longer does.
    std::fs::write(
        &file,
        keys_file().replace(&hash_key("team-key"), &hash_key("rotated-key")),
    )
    .expect("write");
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = client
            .get(url("/v1/streams"))
            .header("x-api-key", "rotated-key")
            .send()
            .await
            .expect("sent")
            .status();
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = client
        .get(url("/v1/streams"))
        .header("x-api-key", "team-key")
        .send()
        .await
        .expect("sent");
    assert_eq!(old.status(), 401);
    assert!(!gateway.logged("keys file reloaded").is_empty());
    gateway.kill_hard();
}

#[test]
fn hash_key_prints_the_digest_the_file_wants() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .args(["--hash-key", "test"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .arg("--hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"  test \t\r\n")
        .expect("written");
    let output = child.wait_with_output().expect("ends");
    // Without the blanks around it, which no HTTP header can carry.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        hash_key("test")
    );
}

#[test]
fn an_api_key_setting_that_names_no_key_exits_78_instead_of_running_open() {
    let dir = tempfile::tempdir().expect("dir");
    for value in [" , ", ","] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
            .env("API_KEY", value)
            .env("PORT", "0")
            .env("DATA_DIR", dir.path().join("data"))
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(78), "API_KEY={value:?}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains("holds no key"), "{text}");
    }
}

#[test]
fn a_bad_keys_file_at_start_up_exits_78_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, "[[keys]]\nname = \"x\"\nsha256 = \"short\"\n").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .env("API_KEYS_FILE", &file)
        .env("PORT", "0")
        .env("DATA_DIR", dir.path().join("data"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("API_KEYS_FILE"), "{text}");
    assert!(text.contains("sha256"), "{text}");
}

#[tokio::test]
async fn openapi_lists_the_scope_of_every_operation() {
    let app = crate::helpers::spawn_app().await;
    let document: Value = app
        .http1
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let send = &document["paths"]["/v1/streams/{stream}/topics/{topic}/messages"]["post"];
    assert_eq!(send["x-required-scope"], "write");
    assert!(
        send["description"]
            .as_str()
            .is_some_and(|d| d.contains("Needs scope `write`") && d.contains("idempotency-key")),
        "{send}"
    );
    let delete = &document["paths"]["/v1/streams/{stream}"]["delete"];
    assert_eq!(delete["x-required-scope"], "admin");
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            if operation.get("operationId").is_some() {
                assert!(
                    operation["x-required-scope"].is_string(),
                    "{method} {path} lists no scope"
                );
            }
        }
    }
}

/// A Connect unary call with JSON, as connect-web and `buf curl` make it.
async fn connect_call(app: &TestApp, key: &str, method: &str, body: &Value) -> reqwest::Response {
    app.http1
        .post(app.url(&format!("/iggy.gateway.v1.{method}")))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .expect("sent")
}

/// [`connect_call`]'s HTTP status and JSON.
async fn connect(app: &TestApp, key: &str, method: &str, body: Value) -> (u16, Value) {
    let response = connect_call(app, key, method, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_connect_caller_over_its_quota_hears_when_to_retry_as_a_rest_caller_does() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let send = json!({
        "stream": "orders", "topic": "created", "partitionId": 0,
        "messages": [{"text": "q"}]
    });
    let call = || connect_call(app, "limited-key", "MessageService/SendMessages", &send);
    // `limited` may send 1 request per second; the next within the second is refused.
    let first = call().await;
    assert_eq!(first.status(), 200);
    let refused = call().await;
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    let error: Value = refused.json().await.expect("Connect's error JSON");
    assert_eq!(error["code"], "resource_exhausted", "{error}");
    assert!(
        error["details"].to_string().contains("QUOTA_EXCEEDED"),
        "{error}"
    );
    let wait: u64 = headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|secs| secs.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&wait), "retry after {wait} s");
    assert_eq!(headers["ratelimit-limit"], "1");
    assert_eq!(headers["ratelimit-remaining"], "0");
}

#[tokio::test]
async fn connect_calls_are_held_to_the_keys_scopes_like_every_other_protocol() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let send = json!({
        "stream": "orders", "topic": "created", "partitionId": 0,
        "messages": [{"text": "over connect"}]
    });
    // The team may send to orders; the reader may not, and hears why in Connect's terms.
    let (status, sent) =
        connect(app, "team-key", "MessageService/SendMessages", send.clone()).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["ids"].as_array().map(Vec::len), Some(1), "{sent}");
    let (status, refused) = connect(app, "reader-key", "MessageService/SendMessages", send).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["code"], "permission_denied", "{refused}");
    assert!(
        refused["details"].to_string().contains("SCOPE_MISSING"),
        "{refused}"
    );
    // A key scoped to orders does not see payments in a listing.
    let (status, listed) = connect(app, "reader-key", "StreamService/ListStreams", json!({})).await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["streams"]
        .as_array()
        .map(|streams| streams.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["orders"], "{listed}");
    // Without a key, Connect hears unauthenticated.
    let (status, _) = connect(app, "no-such-key", "StreamService/ListStreams", json!({})).await;
    assert_eq!(status, 401);
}

/// A gRPC call over HTTP/2 whose content type is `content_type` (or none): the HTTP status,
/// and the `grpc-status` of its head or trailers.
async fn h2_call(
    app: &TestApp,
    key: &str,
    path: &str,
    content_type: Option<&str>,
    message: &impl Message,
) -> (u16, Option<String>) {
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.expect("ready");
    let mut request = http::Request::post(app.url(path))
        .header("te", "trailers")
        .header("x-api-key", key);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let (response, mut body) = h2
        .send_request(request.body(()).expect("request"), false)
        .expect("stream opened");
    let encoded = message.encode_to_vec();
    let framed = crate::helpers::grpc_frame(&encoded);
    body.send_data(framed.into(), true).expect("body sent");
    let response = response.await.expect("a response");
    let status = response.status().as_u16();
    let head = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut answer = response.into_body();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.expect("a chunk");
        let _ = answer.flow_control().release_capacity(chunk.len());
    }
    let trailers = answer.trailers().await.ok().flatten();
    let grpc_status = head.or_else(|| {
        trailers
            .and_then(|t| t.get("grpc-status").cloned())
            .and_then(|v| v.to_str().ok().map(str::to_owned))
    });
    (status, grpc_status)
}

#[tokio::test]
async fn a_call_whose_content_type_is_not_grpc_is_still_held_to_the_keys_scopes() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    // Over HTTP/2 tonic serves a call whatever its content type says; the scope policy must
    // judge it all the same.
    for content_type in [None, Some("text/plain"), Some("application/octet-stream")] {
        let (status, grpc_status) = h2_call(
            app,
            "reader-key",
            "/iggy.gateway.v1.StreamService/CreateStream",
            content_type,
            &proto::CreateStreamRequest {
                name: "sneaked-in".into(),
            },
        )
        .await;
        assert!(
            matches!(
                (status, grpc_status.as_deref()),
                (200, Some("7")) | (403, None)
            ),
            "{content_type:?}: PERMISSION_DENIED, in gRPC's words or REST's: {status} {grpc_status:?}"
        );
        let (status, grpc_status) = h2_call(
            app,
            "reader-key",
            "/iggy.gateway.v1.MessageService/SendMessages",
            content_type,
            &proto::SendMessagesRequest {
                stream: "payments".into(),
                topic: "settled".into(),
                messages: vec![text_message("sneaked in")],
                ..Default::default()
            },
        )
        .await;
        assert!(
            matches!(
                (status, grpc_status.as_deref()),
                (200, Some("7")) | (403, None)
            ),
            "{content_type:?}: PERMISSION_DENIED, in gRPC's words or REST's: {status} {grpc_status:?}"
        );
    }
    let (status, answer) = rest(
        app,
        "admin-key",
        reqwest::Method::GET,
        "/v1/streams/sneaked-in",
        None,
    )
    .await;
    assert_eq!(status, 404, "nothing was created: {answer}");
    let (status, answer) = rest(
        app,
        "admin-key",
        reqwest::Method::GET,
        "/v1/streams/payments/topics/settled/messages?partition_id=0&strategy=first&count=10",
        None,
    )
    .await;
    assert_eq!((status, &answer["messages"]), (200, &json!([])), "{answer}");

    // A key that holds the scope is served as a gRPC call, checked on what it names.
    let (status, grpc_status) = h2_call(
        app,
        "team-key",
        "/iggy.gateway.v1.MessageService/SendMessages",
        Some("text/plain"),
        &proto::SendMessagesRequest {
            stream: "payments".into(),
            topic: "settled".into(),
            messages: vec![text_message("sneaked in")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!((status, grpc_status.as_deref()), (200, Some("7")));
}

#[tokio::test]
async fn what_tonic_web_refuses_on_an_rpc_path_keeps_its_status_and_is_no_internal_error() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    // gRPC over HTTP/1.1, and a GET with gRPC-Web's content type: no service answers them.
    for (method, content_type) in [
        (reqwest::Method::POST, "application/grpc"),
        (reqwest::Method::GET, "application/grpc-web+proto"),
    ] {
        let response = app
            .http1
            .request(
                method.clone(),
                app.url("/iggy.gateway.v1.StreamService/ListStreams"),
            )
            .header("x-api-key", "admin-key")
            .header("content-type", content_type)
            .send()
            .await
            .expect("answered");
        let status = response.status().as_u16();
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert!(
            (400..500).contains(&status) && grpc_status.as_deref() != Some("13"),
            "{method} {content_type}: {status} {grpc_status:?}"
        );
    }
}

#[tokio::test]
async fn a_refusal_names_what_the_request_named_never_the_name_behind_an_id() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    let (status, payments) = rest(
        app,
        "admin-key",
        reqwest::Method::GET,
        "/v1/streams/payments",
        None,
    )
    .await;
    assert_eq!(status, 200, "{payments}");
    let id = payments["stream"]["id"].as_u64().expect("an id");
    // The orders team may not see `payments`: asked by id, it must not learn the name.
    for path in [
        format!("/v1/streams/{id}"),
        format!("/v1/streams/{id}/topics/0"),
        format!("/v1/streams/{id}/topics/0/messages?partition_id=0&count=1"),
        // A topic id that names nothing is no way round it.
        format!("/v1/streams/{id}/topics/4242"),
    ] {
        let (status, answer) = rest(app, "team-key", reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 403, "{path}: {answer}");
        let text = answer.to_string();
        assert!(
            !text.contains("payments") && !text.contains("settled"),
            "{path}: {text}"
        );
        assert!(
            text.contains(&format!("'{id}")),
            "{path}: names the id: {text}"
        );
    }
    // An id that names nothing is refused alike.
    let (status, answer) = rest(
        app,
        "team-key",
        reqwest::Method::GET,
        "/v1/streams/4242",
        None,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    // Over gRPC too.
    let mut request = Request::new(proto::GetStreamRequest {
        stream: id.to_string(),
    });
    request
        .metadata_mut()
        .insert("x-api-key", "team-key".parse().expect("ascii"));
    let err = proto::stream_service_client::StreamServiceClient::new(app.channel.clone())
        .get_stream(request)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(!err.message().contains("payments"), "{}", err.message());
}

/// Statistics count every stream and metrics name every identity: a key that reads only part of
/// the streams sees neither, on any protocol; one that reads them all sees both.
#[tokio::test]
async fn statistics_and_metrics_need_read_on_every_stream() {
    let keyed = keyed_gateway().await;
    let app = &keyed.app;
    for key in ["reader-key", "auditor-key", "team-key"] {
        for path in ["/stats", "/v1/stats"] {
            let (status, problem) = rest(app, key, reqwest::Method::GET, path, None).await;
            assert_eq!(status, 403, "{key} {path}: {problem}");
            assert_eq!(problem["reason"], "SCOPE_MISSING", "{key} {path}");
        }
        let metrics = metrics_with(app, key).await;
        assert_eq!(metrics.status(), 403, "{key} /metrics");
        let refused = app
            .stats
            .clone()
            .get_stats(keyed_request(key))
            .await
            .expect_err("refused");
        assert_scope_missing(&refused, "read", "*/*");
    }
    for key in ["admin-key", "unlimited-key", "static-key"] {
        let (status, stats) = rest(app, key, reqwest::Method::GET, "/stats", None).await;
        assert_eq!(status, 200, "{key}: {stats}");
        assert!(stats["streams_count"].is_u64(), "{key}: {stats}");
        let metrics = metrics_with(app, key).await;
        assert_eq!(metrics.status(), 200, "{key} /metrics");
        // The refusals above (two routes, metrics, GetStats) are counted as every refusal by
        // scope is.
        let text = metrics.text().await.expect("metrics");
        assert!(
            text.contains(
                r#"identity_refusals_total{identity="orders-reader",reason="SCOPE_MISSING"} 4"#
            ),
            "{text}"
        );
        let answer = app.stats.clone().get_stats(keyed_request(key)).await;
        assert!(answer.is_ok(), "{key}: {answer:?}");
    }
}

async fn metrics_with(app: &TestApp, key: &str) -> reqwest::Response {
    app.http1
        .get(app.url("/metrics"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("sent")
}

fn keyed_request(key: &str) -> Request<proto::GetStatsRequest> {
    keyed(key, proto::GetStatsRequest {})
}

/// A keys-file key skips the per-client rate limit, and its quotas count produce and consume
/// calls only: everything else it does (admin calls, calls refused for scope, statistics,
/// metrics, paths of no route) is held to `RATE_LIMIT_RPS` / `RATE_LIMIT_BURST` per identity,
/// so no key can churn the store or flood the audit log without bound, while its produce and
/// consume calls stay with its quotas, and other identities at the same address go on.
#[tokio::test]
async fn calls_no_quota_counts_are_held_to_the_rate_limit_per_identity() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, keys_file()).expect("keys file");
    let app = spawn_configured(move |c| {
        c.auth.api_key = Some(iggy_gateway::config::ApiKeys::new(["static-key"]));
        c.auth.api_keys_file = Some(file);
        // Three at once, then one a second: every identity's budget below is spent well
        // within the second it has.
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 3;
    })
    .await;
    let app = &app;
    // `platform` spends two of its three on the fixtures.
    admin(app, "/v1/streams", json!({"name": "orders"})).await;
    admin(
        app,
        "/v1/streams/orders/topics",
        json!({"name": "created", "partitions_count": 1}),
    )
    .await;

    // Produce calls are the quotas' (`unlimited` has none), not the ceiling's.
    let send = json!({"partition_id": 0, "messages": [{"text": "q"}]});
    let messages = "/v1/streams/orders/topics/created/messages";
    for _ in 0..10 {
        let (status, answer) = rest(
            app,
            "unlimited-key",
            reqwest::Method::POST,
            messages,
            Some(send.clone()),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }

    // Admin calls: three, then 429 naming the identity, on REST and gRPC alike.
    for topic in ["t1", "t2", "t3"] {
        let (status, answer) = rest(
            app,
            "team-key",
            reqwest::Method::POST,
            "/v1/streams/orders/topics",
            Some(json!({"name": topic, "partitions_count": 1})),
        )
        .await;
        assert_eq!(status, 201, "{topic}: {answer}");
    }
    let (status, headers, problem) = rest_full(
        app,
        "team-key",
        reqwest::Method::POST,
        "/v1/streams/orders/topics",
        Some(json!({"name": "t4", "partitions_count": 1})),
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["reason"], "RATE_LIMITED");
    assert_eq!(problem["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(problem["metadata"]["identity"], "orders-team");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(headers["ratelimit-limit"], "3");
    let refused = app
        .topics
        .clone()
        .create_topic(keyed(
            "team-key",
            proto::CreateTopicRequest {
                stream: "orders".into(),
                name: "t5".into(),
                partitions_count: 1,
                ..Default::default()
            },
        ))
        .await
        .expect_err("over the ceiling");
    assert_throttled(&refused, "RATE_LIMITED");
    // Neither refused create left a topic behind.
    let names = topic_names(app, "unlimited-key", "orders").await;
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        !names.iter().any(|name| name == "t4" || name == "t5"),
        "{names:?}"
    );

    // Calls refused for scope (each an audit line): three, then refused for rate instead.
    for _ in 0..3 {
        let (status, problem) = rest(
            app,
            "reader-key",
            reqwest::Method::POST,
            messages,
            Some(send.clone()),
        )
        .await;
        assert_eq!(status, 403, "{problem}");
        assert_eq!(problem["reason"], "SCOPE_MISSING");
    }
    let (status, problem) = rest(
        app,
        "reader-key",
        reqwest::Method::POST,
        messages,
        Some(send.clone()),
    )
    .await;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(problem["reason"], "RATE_LIMITED");
    assert_eq!(problem["metadata"]["identity"], "orders-reader");
    // A REST route answers as REST whatever protocol the content type names.
    let response = app
        .http1
        .post(app.url(messages))
        .header("x-api-key", "reader-key")
        .header("content-type", "application/connect+json")
        .body(send.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["ratelimit-limit"], "3");
    // Its reads are consume calls, which its quotas (none) govern, not the ceiling.
    let (status, answer) = rest(
        app,
        "reader-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/created/messages?partition_id=0&count=1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // Statistics and metrics, off the scope policy, share `platform`'s one call left.
    let (status, stats) = rest(app, "admin-key", reqwest::Method::GET, "/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    let metrics = metrics_with(app, "admin-key").await;
    assert_eq!(metrics.status(), 429);
    // A read refused on what it names (`auditor` reads only `*/audit`), audited each time,
    // draws on the same share; so do paths of no route.
    for expected in [403, 403] {
        let (status, problem) = rest(
            app,
            "auditor-key",
            reqwest::Method::GET,
            "/v1/streams/orders/topics/created",
            None,
        )
        .await;
        assert_eq!(status, expected, "{problem}");
    }
    let (status, _) = rest(app, "auditor-key", reqwest::Method::GET, "/nowhere", None).await;
    assert_eq!(status, 404);
    let refused = app
        .topics
        .clone()
        .get_topic(keyed(
            "auditor-key",
            proto::GetTopicRequest {
                stream: "orders".into(),
                topic: "created".into(),
            },
        ))
        .await
        .expect_err("held");
    assert_throttled(&refused, "RATE_LIMITED");
    // Held in the service, it tells its limit as a refusal held at admission does.
    assert_eq!(
        refused
            .metadata()
            .get("ratelimit-limit")
            .and_then(|v| v.to_str().ok()),
        Some("3")
    );
    // A Connect stream in a codec the gateway lacks is admitted first, like any call: an
    // admin call by a key whose share is spent is held, not told about its codec.
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/CreateStream"))
        .header("x-api-key", "team-key")
        .header("content-type", "application/connect+xml")
        .body(Vec::new())
        .send()
        .await
        .expect("sent");
    let end = response.bytes().await.expect("body");
    assert!(
        String::from_utf8_lossy(&end).contains("resource_exhausted"),
        "{}",
        String::from_utf8_lossy(&end)
    );

    // A REST route called with a gRPC content type is no call of the API: charged as a path
    // of no route (and answered in gRPC's terms).
    for expected in ["12", "12", "12", "8"] {
        let response = app
            .http1
            .post(app.url("/v1/streams"))
            .header("x-api-key", "unlimited-key")
            .header("content-type", "application/grpc-web+proto")
            .body(Vec::new())
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some(expected)
        );
    }

    // A call of the API is admitted before its body is read, as a gRPC call is before it is
    // decoded: a malformed send takes its produce quota too (`limited`: one a second).
    for (expected, reason) in [(400, "MALFORMED_JSON"), (429, "QUOTA_EXCEEDED")] {
        let response = app
            .http1
            .post(app.url(messages))
            .header("x-api-key", "limited-key")
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), expected);
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["reason"], reason, "{problem}");
    }
    // And so over Connect.
    let (status, error) =
        connect(app, "limited-key", "MessageService/SendMessages", json!({})).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["code"], "resource_exhausted", "{error}");

    // Another identity from the same address still sends, and `API_KEY`'s key keeps its own
    // per-client budget: /metrics counts each refusal by identity.
    let (status, answer) = rest(
        app,
        "unlimited-key",
        reqwest::Method::POST,
        messages,
        Some(send),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let metrics = metrics_with(app, "static-key").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("metrics");
    for line in [
        r#"identity_refusals_total{identity="orders-team",reason="RATE_LIMITED"} 3"#,
        r#"identity_refusals_total{identity="orders-reader",reason="RATE_LIMITED"} 2"#,
        r#"identity_refusals_total{identity="orders-reader",reason="SCOPE_MISSING"} 3"#,
        r#"identity_refusals_total{identity="platform",reason="RATE_LIMITED"} 1"#,
        r#"identity_refusals_total{identity="auditor",reason="RATE_LIMITED"} 1"#,
        r#"identity_refusals_total{identity="auditor",reason="SCOPE_MISSING"} 2"#,
        r#"identity_refusals_total{identity="unlimited",reason="RATE_LIMITED"} 1"#,
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

/// A subscription held back by its own identity's consume bytes is paced, not taken for a
/// subscriber that stopped reading: it goes on past `SUBSCRIBE_SLOW_CLIENT_MS` of pauses and
/// delivers everything.
#[tokio::test]
async fn a_subscription_paced_by_its_quota_is_not_cut_off_as_a_slow_reader() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    std::fs::write(
        &file,
        format!(
            "keys:\n  - name: paced\n    sha256: {}\n    scopes: [\"read:*\", \"write:*\", \"admin:*\"]\n    quota:\n      consume_bytes_per_second: 262144\n",
            hash_key("paced-key")
        ),
    )
    .expect("keys file");
    let app = spawn_configured(move |c| {
        c.auth.api_keys_file = Some(file);
        c.subscriptions.subscribe_slow_client_ms = 100;
    })
    .await;
    for (path, body) in [
        ("/v1/streams", json!({"name": "orders"})),
        (
            "/v1/streams/orders/topics",
            json!({"name": "created", "partitions_count": 1}),
        ),
    ] {
        let (status, answer) =
            rest(&app, "paced-key", reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    // Sixteen messages of 64 KiB, four times the subscription's buffer: past the first
    // second's worth, each waits a quarter of a second for the budget, longer than the
    // slow-reader timeout, while the buffer is full.
    let text = "x".repeat(64 * 1024);
    let messages: Vec<Value> = (0..16).map(|_| json!({"text": text})).collect();
    let (status, answer) = rest(
        &app,
        "paced-key",
        reqwest::Method::POST,
        "/v1/streams/orders/topics/created/messages",
        Some(json!({"partition_id": 0, "messages": messages})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let mut stream = subscribe_as(&app, "paced-key").await.expect("subscribed");
    let mut offsets = Vec::new();
    while offsets.len() < 16 {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("in time")
            .unwrap_or_else(|status| panic!("ended after {offsets:?}: {status:?}"))
            .unwrap_or_else(|| panic!("ended after {offsets:?} without a status"));
        if let Some(proto::subscribe_response::Event::Message(message)) = item.event {
            offsets.push(message.offset);
        }
    }
    assert_eq!(offsets, (0..16).collect::<Vec<u64>>());
}

/// A gRPC subscription to orders/created by `key`, from the first message.
async fn subscribe_as(
    app: &TestApp,
    key: &str,
) -> Result<tonic::Streaming<proto::SubscribeResponse>, tonic::Status> {
    app.subscribe(keyed(
        key,
        proto::SubscribeRequest {
            stream: "orders".into(),
            topic: "created".into(),
            strategy: proto::PollingStrategy::First.into(),
            ..Default::default()
        },
    ))
    .await
}

fn assert_over_subscriptions(status: &tonic::Status) {
    assert_refused(
        status,
        Code::ResourceExhausted,
        "QUOTA_EXCEEDED",
        [("quota", "subscriptions"), ("identity", "watcher")],
    );
}

#[tokio::test]
async fn a_subscriptions_quota_caps_one_identity_on_every_protocol_and_leaves_others_alone() {
    let Keyed { app, file, _dir } = keyed_gateway().await;
    let sse = || {
        app.http1
            .get(app.url(
                "/v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=first",
            ))
            .header("x-api-key", "watcher-key")
            .header("accept", "text/event-stream")
            .send()
    };
    let first = subscribe_as(&app, "watcher-key").await.expect("first");
    let second = sse().await.expect("answered");
    assert_eq!(second.status(), 200);
    // A third, on any protocol, is over the identity's own cap (the gateway's is 1000).
    let refused = subscribe_as(&app, "watcher-key").await.expect_err("third");
    assert_over_subscriptions(&refused);
    let refused = sse().await.expect("answered");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_none());
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["reason"], "QUOTA_EXCEEDED", "{problem}");
    assert_eq!(problem["metadata"]["quota"], "subscriptions", "{problem}");
    // Another identity, from the same address, is not held back by it.
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(
            subscribe_as(&app, "reader-key")
                .await
                .expect("another identity"),
        );
    }
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains(
            r#"iggy_gateway_identity_refusals_total{identity="watcher",reason="QUOTA_EXCEEDED"} 2"#
        ),
        "{metrics}"
    );
    // A reload that raises the cap keeps the count: one more, not three. One that gives the
    // other identity a cap of 2 counts its three open ones: it gets none more.
    let text = std::fs::read_to_string(&file).expect("keys");
    let reader = "scopes = [\"read:orders/*\"]\n";
    assert!(text.contains(reader));
    let text = text
        .replace("subscriptions = 2", "subscriptions = 3")
        .replace(
            reader,
            &format!("{reader}[keys.quota]\nsubscriptions = 2\n"),
        );
    std::fs::write(&file, text).expect("write");
    let mut third = None;
    for _ in 0..100 {
        match subscribe_as(&app, "watcher-key").await {
            Ok(stream) => {
                third = Some(stream);
                break;
            }
            Err(status) => assert_over_subscriptions(&status),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(third.is_some(), "the raised cap took effect");
    assert_over_subscriptions(&subscribe_as(&app, "watcher-key").await.expect_err("fourth"));
    let refused = subscribe_as(&app, "reader-key")
        .await
        .expect_err("over a cap added by the reload");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A place frees when one of its subscriptions ends.
    drop(second);
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(stream) = subscribe_as(&app, "watcher-key").await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a place came back");
}

fn assert_consumer_not_allowed(status: &tonic::Status, consumer: &str) {
    assert_refused(
        status,
        Code::PermissionDenied,
        "CONSUMER_NOT_ALLOWED",
        [("consumer", consumer), ("identity", "billing")],
    );
}

/// A refusal with its code, `ErrorInfo` reason and these metadata entries.
fn assert_refused<const N: usize>(
    status: &tonic::Status,
    code: Code,
    reason: &str,
    metadata: [(&str, &str); N],
) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason, "{status:?}");
    for (key, value) in metadata {
        assert_eq!(
            info.metadata.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_key_uses_only_the_consumers_its_entry_names_and_cannot_move_anothers_offsets() {
    let Keyed { app, file, _dir } = keyed_gateway().await;
    for text in ["one", "two"] {
        app.messages
            .clone()
            .send_messages(keyed("team-key", send_request("orders", "created", text)))
            .await
            .expect("sent");
    }
    let poll = |key: &str, consumer: &str| {
        keyed(
            key,
            proto::PollMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                consumer: consumer.into(),
                strategy: proto::PollingStrategy::First.into(),
                count: 10,
                ..Default::default()
            },
        )
    };
    let mut messages = app.messages.clone();
    // Its own consumers work; another team's is refused on every call that names one.
    let polled = messages
        .poll_messages(poll("billing-key", "billing-eu"))
        .await;
    assert_eq!(polled.expect("its consumer").into_inner().messages.len(), 2);
    let refused = messages
        .poll_messages(poll("billing-key", "analytics"))
        .await
        .expect_err("another's consumer");
    assert_consumer_not_allowed(&refused, "analytics");
    let store = |consumer: &str| {
        keyed(
            "billing-key",
            proto::StoreConsumerOffsetRequest {
                stream: "orders".into(),
                topic: "created".into(),
                consumer: consumer.into(),
                partition_id: 0,
                offset: Some(1),
            },
        )
    };
    messages
        .store_consumer_offset(store("billing-eu"))
        .await
        .expect("stored for its own");
    let refused = messages
        .store_consumer_offset(store("analytics"))
        .await
        .expect_err("not for another's");
    assert_consumer_not_allowed(&refused, "analytics");
    let (status, problem) = rest(
        &app,
        "billing-key",
        reqwest::Method::DELETE,
        "/v1/streams/orders/topics/created/consumers/analytics/offsets/0",
        None,
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["reason"], "CONSUMER_NOT_ALLOWED", "{problem}");
    let (status, problem) = rest(
        &app,
        "billing-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/created/consumers/analytics/offsets/0",
        None,
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    // Events are polled as consumer 1 unless told: not one of its consumers either.
    let (status, problem) = rest(
        &app,
        "billing-key",
        reqwest::Method::GET,
        "/v1/streams/orders/topics/created/events",
        None,
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["metadata"]["consumer"], "1", "{problem}");
    // A key without `consumers` uses any; it subscribes as analytics and hands its cursor on.
    let mut theirs = subscribe_as_consumer(&app, "reader-key", "analytics", "")
        .await
        .expect("any consumer");
    let (cursor, _) = crate::subscribe::next_message(&mut theirs).await;
    let refused = subscribe_as_consumer(&app, "billing-key", "analytics", "")
        .await
        .expect_err("another's consumer");
    assert_consumer_not_allowed(&refused, "analytics");
    let refused = subscribe_as_consumer(&app, "billing-key", "", &cursor)
        .await
        .expect_err("another's consumer, carried by a cursor");
    assert_consumer_not_allowed(&refused, "analytics");
    // A reload that takes the consumer away ends the subscription that commits as it.
    let mut own = subscribe_as_consumer(&app, "billing-key", "billing-eu", "")
        .await
        .expect("its own");
    crate::subscribe::next_message(&mut own).await;
    let text = std::fs::read_to_string(&file).expect("keys");
    std::fs::write(&file, text.replace("\"billing-eu\", ", "")).expect("write");
    let ended = crate::subscribe::end_of(&mut own, Duration::from_secs(5)).await;
    assert_consumer_not_allowed(&ended, "billing-eu");
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains(
            r#"iggy_gateway_identity_refusals_total{identity="billing",reason="CONSUMER_NOT_ALLOWED"} 7"#
        ),
        "{metrics}"
    );
}

async fn subscribe_as_consumer(
    app: &TestApp,
    key: &str,
    consumer: &str,
    cursor: &str,
) -> Result<tonic::Streaming<proto::SubscribeResponse>, tonic::Status> {
    app.subscribe(keyed(
        key,
        proto::SubscribeRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partition_id: Some(0),
            consumer: consumer.into(),
            cursor: cursor.into(),
            strategy: if cursor.is_empty() {
                proto::PollingStrategy::First.into()
            } else {
                proto::PollingStrategy::Unspecified.into()
            },
            ..Default::default()
        },
    ))
    .await
}

/// `/metrics` as the full-access static key reads it.
async fn metrics_text(app: &TestApp) -> String {
    metrics_with(app, "static-key")
        .await
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn answers_that_depend_on_the_key_are_kept_from_shared_caches() {
    let gateway = keyed_gateway().await;
    let app = &gateway.app;
    for (key, path, status) in [
        ("reader-key", "/v1/streams", 200),
        ("reader-key", "/v1/streams/orders", 200),
        ("reader-key", "/v1/streams/payments", 403),
        ("wrong-key", "/v1/streams", 401),
    ] {
        let (answered, headers, _) = rest_full(app, key, reqwest::Method::GET, path, None).await;
        assert_eq!(answered, status, "{path}");
        assert_eq!(headers["cache-control"], "private", "{key} {path}");
    }
    let subscription = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages:subscribe"))
        .header("x-api-key", "reader-key")
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("subscribed");
    assert_eq!(subscription.headers()["cache-control"], "private, no-cache");
}

/// `identity_bytes_total` counts what an identity's calls kept: an idempotent send answered
/// again and a send the backend refused give their bytes back, and count nothing.
#[tokio::test]
async fn bytes_given_back_are_not_counted_against_the_identity() {
    let app = one_key_gateway(
        "counted",
        "[\"write:*\", \"read:*\", \"admin:*\"]",
        "      produce_bytes_per_second: 1000000\n",
    )
    .await;
    for (path, body) in [
        ("/v1/streams", json!({"name": "c"})),
        (
            "/v1/streams/c/topics",
            json!({"name": "t", "partitions_count": 1}),
        ),
    ] {
        let (status, answer) =
            rest(&app, "counted-key", reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let counted = |metrics: &str| -> u64 {
        let line = r#"iggy_gateway_identity_bytes_total{identity="counted",class="produce"} "#;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    let send = |key: Option<&'static str>, partition: u32| {
        let mut request = app
            .http1
            .post(app.url("/v1/streams/c/topics/t/messages"))
            .header("x-api-key", "counted-key")
            .json(&json!({"partitionId": partition, "messages": [{"text": "ten bytes!"}]}));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        async move { request.send().await.expect("sent").status().as_u16() }
    };
    let scrape = || async {
        metrics_with(&app, "counted-key")
            .await
            .text()
            .await
            .expect("text")
    };

    assert_eq!(send(Some("once"), 0).await, 201);
    let one = counted(&scrape().await);
    assert!(one >= 10, "one send counted: {one}");
    // Answered again: nothing stored, nothing counted.
    assert_eq!(send(Some("once"), 0).await, 201);
    assert_eq!(counted(&scrape().await), one, "a replay is not counted");
    // Refused by the backend (no partition 7): nothing stored, nothing counted.
    assert_eq!(send(None, 7).await, 404);
    assert_eq!(
        counted(&scrape().await),
        one,
        "a refused send is not counted"
    );
    // Another kept send counts as the first did.
    assert_eq!(send(None, 0).await, 201);
    assert_eq!(counted(&scrape().await), 2 * one);
}
