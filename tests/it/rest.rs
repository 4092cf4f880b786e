//! REST/JSON with curl-style requests: the /v1 resource routes, the original service's
//! routes, proto3 JSON edge cases and every error class with its problem body.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with_default_topic, texts};

#[tokio::test]
async fn streams_and_topics_are_managed_over_rest() {
    let app = spawn_app().await;
    let (status, created) = app
        .post_json("/v1/streams", json!({"name": "orders"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(created["stream"]["id"], 0);
    assert_eq!(created["stream"]["name"], "orders");
    assert_eq!(
        created["stream"]["messages_count"], "0",
        "64-bit integers are strings"
    );

    // lowerCamelCase is accepted as well as the proto names.
    let (status, topic) = app
        .post_json(
            "/v1/streams/orders/topics",
            json!({"name": "created", "partitionsCount": 2, "message_expiry": "3600s"}),
        )
        .await;
    assert_eq!(status, 201, "{topic}");
    assert_eq!(topic["topic"]["partitions_count"], 2);
    assert_eq!(topic["topic"]["message_expiry"], "3600s");
    assert_eq!(
        topic["topic"]["compression_algorithm"],
        "COMPRESSION_ALGORITHM_NONE"
    );
    let created_at = topic["topic"]["created_at"].as_str().expect("a timestamp");
    assert!(created_at.ends_with('Z'), "RFC 3339 in UTC: {created_at}");

    let (status, renamed) = app
        .patch_json("/v1/streams/0", json!({"name": "orders-v2"}))
        .await;
    assert_eq!(
        (status, renamed["stream"]["name"].clone()),
        (200, json!("orders-v2"))
    );

    let (status, listed) = app.get_json("/v1/streams/orders-v2/topics").await;
    assert_eq!(status, 200);
    assert_eq!(listed["topics"][0]["name"], "created");

    let (status, body) = app
        .post_json(
            "/v1/streams/orders-v2/topics/created/partitions",
            json!({"partitions_count": 1}),
        )
        .await;
    assert_eq!(
        (status, body["topic"]["partitions_count"].clone()),
        (200, json!(3))
    );
    let (status, body) = app
        .delete("/v1/streams/orders-v2/topics/created/partitions?partitions_count=2")
        .await;
    assert_eq!(
        (status, body["topic"]["partitions_count"].clone()),
        (200, json!(1))
    );

    let (status, body) = app.delete("/v1/streams/orders-v2").await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, problem) = app.get_json("/v1/streams/orders-v2").await;
    assert_eq!(status, 404);
    assert_eq!(problem["reason"], "STREAM_NOT_FOUND");
}

#[tokio::test]
async fn json_bodies_come_back_as_json_and_bytes_as_base64() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let (status, sent) = app
        .post_json(
            "/v1/streams/orders/topics/created/messages",
            json!({
                "partition_id": 0,
                "messages": [
                    {"json": {"user": "ada", "age": 36, "tags": ["a"], "nested": {"ok": true}},
                     "headers": {"attempt": {"int64_value": "-2"}, "origin": {"string_value": "web"}}},
                    {"payload": "AAEC/w=="},
                    {"text": "naïve ☃"}
                ]
            }),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["ids"].as_array().map(Vec::len), Some(3));

    let (status, polled) = app
        .get_json("/v1/streams/orders/topics/created/messages?partition_id=0&count=10&strategy=POLLING_STRATEGY_FIRST")
        .await;
    assert_eq!(status, 200);
    let messages = polled["messages"].as_array().expect("messages");
    assert_eq!(
        messages[0]["json"],
        json!({"user": "ada", "age": 36, "tags": ["a"], "nested": {"ok": true}})
    );
    assert_eq!(messages[0]["headers"]["attempt"]["int64_value"], "-2");
    assert_eq!(messages[0]["offset"], "0");
    assert_eq!(messages[1]["payload"], "AAEC/w==");
    assert_eq!(messages[2]["text"], "naïve ☃");
    assert_eq!(messages[0]["id"], sent["ids"][0]);

    // Enum values by number work too, and repeated query names are accepted.
    let (status, last) = app
        .get_json("/v1/streams/orders/topics/created/messages?count=1&strategy=4")
        .await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["messages"][0]["text"], "naïve ☃");

    // And by the short names people type, in any case: the same answers as the full names.
    for (short, full) in [
        ("last", "POLLING_STRATEGY_LAST"),
        ("First", "POLLING_STRATEGY_FIRST"),
    ] {
        let (status, by_short) = app
            .get_json(&format!("/v1/streams/orders/topics/created/messages?partition_id=0&count=10&strategy={short}"))
            .await;
        assert_eq!(status, 200, "{by_short}");
        let (_, by_full) = app
            .get_json(&format!(
                "/v1/streams/orders/topics/created/messages?partition_id=0&count=10&strategy={full}"
            ))
            .await;
        assert_eq!(by_short["messages"], by_full["messages"], "{short}");
    }
    let (_, first) = app
        .get_json(
            "/v1/streams/orders/topics/created/messages?partition_id=0&count=10&strategy=FIRST",
        )
        .await;
    assert_eq!(first["messages"].as_array().map(Vec::len), Some(3));
    let (_, last) = app
        .get_json("/v1/streams/orders/topics/created/messages?partition_id=0&count=1&strategy=last")
        .await;
    assert_eq!(last["messages"][0]["text"], "naïve ☃");
}

#[tokio::test]
async fn consumer_offsets_over_rest() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["a", "b"]).await;
    let path = "/v1/streams/orders/topics/created/consumers/billing/offsets/0";
    let (status, _) = app.put_json(path, json!({"offset": "1"})).await;
    assert_eq!(status, 204);
    let (status, got) = app.get_json(path).await;
    assert_eq!(status, 200);
    assert_eq!(got["stored_offset"], "1");
    assert_eq!(got["current_offset"], "1");
}

#[tokio::test]
async fn the_original_event_routes_keep_working() {
    let app = spawn_app_with_default_topic().await;
    let event = |id: &str, kind: &str| {
        let data = match kind {
            "User" => json!({"action": "Created", "email": "ada@example.com", "name": "Ada",
                             "user_id": "0b6f3a52-4a8e-4c43-9d3e-8f1a2b3c4d5e"}),
            "Order" => json!({"action": "Shipped", "carrier": "DHL",
                              "order_id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                              "tracking_number": "JJD000390007"}),
            _ => json!({"anything": ["goes", 1]}),
        };
        json!({
            "id": id,
            "event_type": "user.created",
            "timestamp": "2026-11-25T10:00:00Z",
            "payload": {"type": kind, "data": data}
        })
    };
    let (status, published) = app
        .post_json(
            "/messages",
            json!({"event": event("6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "User"), "partition_key": "u1"}),
        )
        .await;
    assert_eq!(status, 201, "{published}");
    assert_eq!(published["success"], true);
    assert_eq!(
        published["event_id"],
        "6f1c2a3e-1111-4a2b-9c3d-0123456789ab"
    );
    assert_eq!(published["stream"], "sample-stream");
    assert_eq!(published["topic"], "events");

    let (status, batch) = app
        .post_json(
            "/messages/batch",
            json!({"events": [
                event("6f1c2a3e-2222-4a2b-9c3d-0123456789ab", "Order"),
                event("6f1c2a3e-3333-4a2b-9c3d-0123456789ab", "Generic")
            ], "partition_key": "u1"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        batch.as_array().map(Vec::len),
        Some(2),
        "the batch answers an array: {batch}"
    );

    // One key, one partition: find it and read all three back.
    let mut found = None;
    for partition in 0..3 {
        let (status, polled) = app
            .get_json(&format!(
                "/messages?partition_id={partition}&offset=0&count=10"
            ))
            .await;
        assert_eq!(status, 200);
        if polled["count"] != 0 {
            found = Some(polled);
        }
    }
    let polled = found.expect("the events are stored");
    assert_eq!(polled["count"], 3);
    let first = &polled["messages"][0];
    assert_eq!(first["offset"], "0");
    assert_eq!(
        first["event"],
        event("6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "User")
    );
    assert_eq!(polled["messages"][2]["event"]["payload"]["type"], "Generic");

    // Without an offset, a consumer resumes after what it committed.
    let partition = polled["partition_id"].as_u64().expect("partition");
    let next = format!("/messages?partition_id={partition}&consumer_id=9&count=2&auto_commit=true");
    let (_, page) = app.get_json(&next).await;
    assert_eq!(page["count"], 2);
    let (_, page) = app.get_json(&next).await;
    assert_eq!(page["count"], 1);
    assert_eq!(page["messages"][0]["offset"], "2");
}

#[tokio::test]
async fn bad_events_are_refused_naming_the_field() {
    let app = spawn_app_with_default_topic().await;
    let cases = [
        (
            json!({"id": "nope", "event_type": "x", "timestamp": "2026-11-25T10:00:00Z", "payload": {"type": "User"}}),
            "event.id",
        ),
        (
            json!({"id": "6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "event_type": "", "timestamp": "2026-11-25T10:00:00Z", "payload": {"type": "User"}}),
            "event.event_type",
        ),
        (
            json!({"id": "6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "event_type": "x", "payload": {"type": "User"}}),
            "event.timestamp",
        ),
        (
            json!({"id": "6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "event_type": "x", "timestamp": "2026-11-25T10:00:00Z", "payload": {"type": "Robot"}}),
            "event.payload.type",
        ),
    ];
    for (event, field) in cases {
        let (status, problem) = app.post_json("/messages", json!({"event": event})).await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["violations"][0]["field"], field, "{problem}");
    }
    let (status, problem) = app
        .post_json("/messages/batch", json!({"events": []}))
        .await;
    assert_eq!(
        (status, problem["violations"][0]["field"].clone()),
        (400, json!("events"))
    );
}

#[tokio::test]
async fn the_original_stream_routes_keep_working() {
    let app = spawn_app().await;
    let (status, stream) = app.post_json("/streams", json!({"name": "legacy"})).await;
    assert_eq!((status, stream["name"].clone()), (201, json!("legacy")));
    let (status, topic) = app
        .post_json(
            "/streams/legacy/topics",
            json!({"name": "t1", "partitions": 2}),
        )
        .await;
    assert_eq!((status, topic["partitions_count"].clone()), (201, json!(2)));
    let (status, streams) = app.get_json("/streams").await;
    assert_eq!((status, streams[0]["name"].clone()), (200, json!("legacy")));
    let (status, got) = app.get_json("/streams/legacy").await;
    assert_eq!((status, got["topics_count"].clone()), (200, json!(1)));
    let (status, got) = app.get_json("/streams/legacy/topics/t1").await;
    assert_eq!((status, got["name"].clone()), (200, json!("t1")));
    let (status, topics) = app.get_json("/streams/legacy/topics").await;
    assert_eq!((status, topics.as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(app.delete("/streams/legacy/topics/t1").await.0, 204);
    assert_eq!(app.delete("/streams/legacy").await.0, 204);
    assert_eq!(app.get_json("/streams/legacy").await.0, 404);
}

#[tokio::test]
async fn every_error_class_answers_a_problem_body() {
    let app = spawn_app().await;
    app.create_stream("orders").await;

    let check = |response: reqwest::Response, status: u16, reason: &'static str| async move {
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let allow = response.headers().get("allow").cloned();
        let body: Value = response.json().await.expect("problem JSON");
        assert_eq!(body["status"], status);
        assert_eq!(body["reason"], reason, "{body}");
        assert!(body["title"].is_string() && body["detail"].is_string());
        (body, allow)
    };

    let (body, _) = check(
        app.http1.get(app.url("/nope")).send().await.expect("sent"),
        404,
        "ROUTE_NOT_FOUND",
    )
    .await;
    assert_eq!(body["type"], "about:blank");
    let (_, allow) = check(
        app.http1
            .put(app.url("/v1/streams"))
            .send()
            .await
            .expect("sent"),
        405,
        "METHOD_NOT_ALLOWED",
    )
    .await;
    assert_eq!(allow.expect("Allow header"), "POST, GET, HEAD, OPTIONS");
    check(
        app.http1
            .post(app.url("/v1/streams"))
            .header("content-type", "text/plain")
            .body("name=x")
            .send()
            .await
            .expect("sent"),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    let (body, _) = check(
        app.http1
            .post(app.url("/v1/streams"))
            .json(&json!({"name": "x", "colour": "red"}))
            .send()
            .await
            .expect("sent"),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert_eq!(
        body["violations"][0]["field"], "colour",
        "unknown fields are named"
    );
    let (body, _) = check(
        app.http1
            .post(app.url("/v1/streams"))
            .json(&json!({"name": 5}))
            .send()
            .await
            .expect("sent"),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(
        body["detail"].as_str().expect("detail").contains("string"),
        "{body}"
    );
    check(
        app.http1
            .get(app.url("/v1/streams/orders/topics/t/messages?count=many"))
            .send()
            .await
            .expect("sent"),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    check(
        app.http1
            .post(app.url("/v1/streams"))
            .json(&json!({"name": "orders"}))
            .send()
            .await
            .expect("sent"),
        409,
        "STREAM_ALREADY_EXISTS",
    )
    .await;
    let (body, _) = check(
        app.http1
            .post(app.url("/v1/streams"))
            .header("x-request-id", "req-42")
            .json(&json!({"name": ""}))
            .send()
            .await
            .expect("sent"),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert_eq!(body["violations"][0]["field"], "name");
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    assert_eq!(body["request_id"], "req-42");
    for bad in ["{\"name\":", "{\"name\":\"x\"} trailing", "{\"name\":\"x\""] {
        check(
            app.http1
                .post(app.url("/v1/streams"))
                .header("content-type", "application/json")
                .body(bad)
                .send()
                .await
                .expect("sent"),
            400,
            "MALFORMED_JSON",
        )
        .await;
    }
    let (body, _) = check(
        app.http1
            .post(app.url("/v1/streams"))
            .json(&json!(["orders"]))
            .send()
            .await
            .expect("sent"),
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert_eq!(body["violations"][0]["field"], "body", "{body}");
    let big = "x".repeat(17 * 1024 * 1024);
    check(
        app.http1
            .post(app.url("/v1/streams"))
            .json(&json!({"name": big}))
            .send()
            .await
            .expect("sent"),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
}

#[tokio::test]
async fn an_array_of_messages_can_be_posted_to_one_partition() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 3).await;
    let (status, sent) = app
        .post_json(
            "/v1/streams/orders/topics/created/partitions/2/messages",
            json!([{"text": "a"}, {"json": {"n": 1}}]),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    let polled = app.poll_from("orders", "created", 2, 0, 10).await;
    assert_eq!(polled.messages.len(), 2);
    assert_eq!(polled.messages[0].id, sent["ids"][0].as_str().expect("id"));
}

/// Path variables win over the same fields in a `body: "*"` body, as google.api.http has it:
/// the path names where a message goes, whatever the body says.
#[tokio::test]
async fn path_variables_win_over_the_body() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    app.create_stream("other").await;
    app.create_topic("other", "created", 2).await;
    let (status, sent) = app
        .post_json(
            "/v1/streams/orders/topics/created/messages",
            json!({"stream": "other", "partitionId": 1, "messages": [{"text": "here"}]}),
        )
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(
        texts(&app.poll_from("orders", "created", 1, 0, 10).await),
        ["here"],
        "stored in the path's stream, in the body's partition"
    );
    assert!(
        app.poll_from("other", "created", 1, 0, 10)
            .await
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn head_is_answered_wherever_a_get_only_reads_with_headers_and_no_body() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let head = app
        .http1
        .head(app.url("/v1/streams/orders"))
        .send()
        .await
        .expect("answered");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert!(head.bytes().await.expect("body").is_empty());
    let missing = app
        .http1
        .head(app.url("/v1/streams/missing"))
        .send()
        .await
        .expect("answered");
    assert_eq!(missing.status(), 404);
    // 405 lists HEAD beside GET.
    let refused = app
        .http1
        .put(app.url("/v1/streams/orders"))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 405);
    let allow = refused.headers()["allow"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
}

/// A `HEAD` is a `GET` whose answer is never read, so it may not commit: not a poll's
/// `autoCommit` (which moved the consumer past two messages nobody saw), not a subscription.
/// A browser sends `HEAD` cross-site without a preflight, like `GET`.
#[tokio::test]
async fn head_of_a_poll_or_a_subscription_is_refused_and_commits_nothing() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["one", "two", "three"])
        .await;
    let mut answers = Vec::new();
    for path in [
        "/v1/streams/orders/topics/created/messages?partitionId=0&consumer=c&strategy=next&count=2&autoCommit=true",
        "/v1/streams/orders/topics/created/events?partitionId=0&consumerId=7&count=2&autoCommit=true",
        "/v1/streams/orders/topics/created/messages:subscribe?consumer=c&strategy=next&commitEvery=1",
    ] {
        let head = app
            .http1
            .head(app.url(path))
            .send()
            .await
            .expect("answered");
        let allow = head.headers().get("allow").cloned();
        answers.push((path, head.status(), allow));
    }
    assert_eq!(app.stored_offset("orders", "created", "c", 0).await, None);
    assert_eq!(app.stored_offset("orders", "created", "7", 0).await, None);
    for (path, status, allow) in answers {
        assert_eq!(status, 405, "{path}");
        let allow = allow.expect("an Allow header");
        let allow = allow.to_str().expect("text");
        assert!(
            allow.contains("GET") && !allow.contains("HEAD"),
            "{path}: {allow}"
        );
    }
    // The GET of the same poll reads and commits as before.
    let (status, polled) = app
        .get_json("/v1/streams/orders/topics/created/messages?partitionId=0&consumer=c&strategy=next&count=2&autoCommit=true")
        .await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["messages"][0]["text"], "one", "{polled}");
    assert_eq!(
        app.stored_offset("orders", "created", "c", 0).await,
        Some(1)
    );
}
