//! Optimistic concurrency: streams and topics carry an etag (AIP-154) that REST answers as a
//! strong `ETag`; a change or delete given a stale one (gRPC `etag`, REST `If-Match`) is refused
//! — FAILED_PRECONDITION / 412, reason ETAG_MISMATCH — and changes nothing.

use iggy_gateway::proto;
use reqwest::{Method, Response};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app};

/// A REST call with extra headers: its status, `ETag` header and JSON answer (`Null` if none).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut request = app.http1.request(method, app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await.expect("sent")).await
}

async fn answer(response: Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let bytes = response.bytes().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (status, etag, json)
}

/// The quoted form an `ETag` header gives and `If-Match` sends back.
fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

fn assert_etag_mismatch(status: u16, problem: &Value) {
    assert_eq!(status, 412, "{problem}");
    assert_eq!(problem["reason"], "ETAG_MISMATCH", "{problem}");
    assert_eq!(problem["code"], "FAILED_PRECONDITION", "{problem}");
}

fn assert_grpc_etag_mismatch(status: &tonic::Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "ETAG_MISMATCH");
}

#[tokio::test]
async fn a_single_stream_or_topic_answers_its_etag_as_a_strong_etag_header() {
    let app = spawn_app().await;
    let stream = app.create_stream("orders").await;
    let topic = app.create_topic("orders", "created", 2).await;
    assert!(!stream.etag.is_empty() && !topic.etag.is_empty());

    for (path, etag) in [
        ("/v1/streams/orders", &stream.etag),
        ("/streams/orders", &stream.etag),
        ("/v1/streams/orders/topics/created", &topic.etag),
        ("/streams/orders/topics/created", &topic.etag),
    ] {
        let (status, header, body) = call(&app, Method::GET, path, &[], None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(header.as_deref(), Some(quoted(etag).as_str()), "{path}");
        let in_body = body["stream"]["etag"]
            .as_str()
            .or(body["topic"]["etag"].as_str())
            .or(body["etag"].as_str());
        assert_eq!(in_body, Some(etag.as_str()), "{path}: the body agrees");
    }
    // A list holds many resources: no one ETag, but each item has its etag.
    let (status, header, body) = call(&app, Method::GET, "/v1/streams", &[], None).await;
    assert_eq!((status, header), (200, None));
    assert_eq!(body["streams"][0]["etag"], json!(stream.etag));
    // A created resource's answer carries its ETag too, ready for a later If-Match.
    let (status, header, body) = call(
        &app,
        Method::POST,
        "/v1/streams",
        &[],
        Some(json!({"name": "payments"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        header,
        Some(quoted(body["stream"]["etag"].as_str().expect("etag")))
    );
}

#[tokio::test]
async fn a_topics_etag_ignores_its_counters_but_follows_its_settings_and_partitions() {
    let app = spawn_app().await;
    let stream = app.create_stream("orders").await;
    let created = app.create_topic("orders", "created", 2).await;

    app.send_texts("orders", "created", 0, &["a", "b"]).await;
    let after_sends = app.get_topic("orders", "created").await;
    assert_eq!(after_sends.messages_count, 2);
    assert_eq!(
        after_sends.etag, created.etag,
        "sends do not change the etag"
    );
    assert_eq!(
        app.get_stream("orders").await.etag,
        stream.etag,
        "nor the stream's, nor does a new topic in it"
    );

    app.topics
        .clone()
        .create_partitions(proto::CreatePartitionsRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitions_count: 1,
        })
        .await
        .expect("added");
    let after_partitions = app.get_topic("orders", "created").await;
    assert_ne!(
        after_partitions.etag, created.etag,
        "the partition count is a setting"
    );

    let (status, _, body) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders/topics/created",
        &[],
        Some(json!({"max_topic_size_bytes": "9000"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["topic"]["etag"], json!(after_partitions.etag));

    // Created again with the same name and settings, a topic is another resource.
    app.topics
        .clone()
        .delete_topic(proto::DeleteTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            ..Default::default()
        })
        .await
        .expect("deleted");
    let again = app.create_topic("orders", "created", 2).await;
    assert_ne!(again.etag, created.etag);
}

#[tokio::test]
async fn patching_a_stream_with_a_stale_or_wrong_if_match_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let read = app.create_stream("orders").await;
    // Someone else renames it after our read.
    let (status, _, _) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders",
        &[],
        Some(json!({"name": "orders-v2"})),
    )
    .await;
    assert_eq!(status, 200);
    let current = app.get_stream("orders-v2").await;

    for if_match in [quoted(&read.etag), "\"nope\"".to_owned()] {
        let (status, header, problem) = call(
            &app,
            Method::PATCH,
            "/v1/streams/orders-v2",
            &[("if-match", &if_match)],
            Some(json!({"name": "mine"})),
        )
        .await;
        assert_etag_mismatch(status, &problem);
        assert_eq!(header, None, "a refusal carries no ETag");
    }
    let after = app.get_stream("orders-v2").await;
    assert_eq!(
        (after.name.as_str(), &after.etag),
        ("orders-v2", &current.etag)
    );
}

#[tokio::test]
async fn patching_a_stream_with_its_current_if_match_applies_and_answers_the_new_etag() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let (_, etag, _) = call(&app, Method::GET, "/v1/streams/orders", &[], None).await;
    let etag = etag.expect("an ETag");

    let (status, new_etag, body) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders",
        &[("if-match", &etag)],
        Some(json!({"name": "orders-v2"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stream"]["name"], "orders-v2");
    let new_etag = new_etag.expect("the answer's ETag");
    assert_ne!(new_etag, etag, "a rename changes the etag");
    assert_eq!(new_etag, quoted(&app.get_stream("orders-v2").await.etag));

    // The old etag is now stale: the same request again is refused.
    let (status, _, problem) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders-v2",
        &[("if-match", &etag)],
        Some(json!({"name": "orders-v3"})),
    )
    .await;
    assert_etag_mismatch(status, &problem);
}

#[tokio::test]
async fn deleting_a_stream_with_a_wrong_if_match_is_412_and_with_the_current_one_deletes() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let etag = quoted(&app.get_stream("orders").await.etag);
    let (status, _, problem) = call(
        &app,
        Method::DELETE,
        "/v1/streams/orders",
        &[("if-match", "\"nope\"")],
        None,
    )
    .await;
    assert_etag_mismatch(status, &problem);
    assert_eq!(app.get_stream("orders").await.name, "orders", "still there");

    // The original service's route takes If-Match as well: it is the same RPC.
    let (status, _, problem) = call(
        &app,
        Method::DELETE,
        "/streams/orders",
        &[("if-match", "\"nope\"")],
        None,
    )
    .await;
    assert_etag_mismatch(status, &problem);
    let (status, _, _) = call(
        &app,
        Method::DELETE,
        "/streams/orders",
        &[("if-match", &etag)],
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = call(&app, Method::GET, "/v1/streams/orders", &[], None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn topics_take_if_match_on_patch_and_delete_the_same_way() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let read = app.create_topic("orders", "created", 2).await;
    let path = "/v1/streams/orders/topics/created";
    // Changed by someone else since our read.
    let (status, changed, _) = call(
        &app,
        Method::PATCH,
        path,
        &[("if-match", &quoted(&read.etag))],
        Some(json!({"replication_factor": 2})),
    )
    .await;
    assert_eq!(status, 200);
    let changed = changed.expect("ETag");

    let (status, _, problem) = call(
        &app,
        Method::PATCH,
        path,
        &[("if-match", &quoted(&read.etag))],
        Some(json!({"replication_factor": 3, "name": "mine"})),
    )
    .await;
    assert_etag_mismatch(status, &problem);
    let (status, _, problem) = call(
        &app,
        Method::DELETE,
        path,
        &[("if-match", &quoted(&read.etag))],
        None,
    )
    .await;
    assert_etag_mismatch(status, &problem);
    let after = app.get_topic("orders", "created").await;
    assert_eq!(
        (after.replication_factor, after.name.as_str()),
        (2, "created")
    );
    assert_eq!(quoted(&after.etag), changed);

    let (status, _, _) = call(&app, Method::DELETE, path, &[("if-match", &changed)], None).await;
    assert_eq!(status, 204);
    assert!(app.list_topics("orders").await.is_empty());
}

#[tokio::test]
async fn creating_with_if_none_match_star_is_412_when_the_name_exists() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let absent = [("if-none-match", "*")];

    let (status, _, problem) = call(
        &app,
        Method::POST,
        "/v1/streams",
        &absent,
        Some(json!({"name": "orders"})),
    )
    .await;
    assert_eq!(status, 412, "{problem}");
    assert_eq!(problem["reason"], "STREAM_ALREADY_EXISTS");
    // Without the header the same conflict is the usual 409.
    let (status, _, _) = call(
        &app,
        Method::POST,
        "/v1/streams",
        &[],
        Some(json!({"name": "orders"})),
    )
    .await;
    assert_eq!(status, 409);

    let (status, etag, body) = call(
        &app,
        Method::POST,
        "/v1/streams",
        &absent,
        Some(json!({"name": "payments"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(etag.is_some());

    let topic = json!({"name": "created", "partitions_count": 1});
    let (status, _, _) = call(
        &app,
        Method::POST,
        "/v1/streams/orders/topics",
        &absent,
        Some(topic.clone()),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, problem) = call(
        &app,
        Method::POST,
        "/v1/streams/orders/topics",
        &absent,
        Some(topic),
    )
    .await;
    assert_eq!(status, 412, "{problem}");
    assert_eq!(problem["reason"], "TOPIC_ALREADY_EXISTS");
}

#[tokio::test]
async fn preconditions_a_route_cannot_honour_are_refused_not_ignored() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let etag = quoted(&app.get_stream("orders").await.etag);
    let rename = || Some(json!({"name": "orders-v2"}));

    // No etag to compare on a purge, and If-None-Match means nothing on a rename.
    let (status, _, problem) = call(
        &app,
        Method::POST,
        "/v1/streams/orders:purge",
        &[("if-match", &etag)],
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["violations"][0]["field"], "If-Match");
    for (name, value) in [
        ("if-none-match", "*"),
        // One etag is compared; a list of them is not guessed at.
        ("if-match", "\"a\", \"b\""),
        ("if-match", "unquoted"),
    ] {
        let (status, _, problem) = call(
            &app,
            Method::PATCH,
            "/v1/streams/orders",
            &[(name, value)],
            rename(),
        )
        .await;
        assert_eq!(status, 400, "{name}: {value}: {problem}");
    }
    // An etag in the body must agree with If-Match.
    let (status, _, problem) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders",
        &[("if-match", &etag)],
        Some(json!({"name": "orders-v2", "etag": "other"})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    // A weak tag never matches (If-Match compares strongly).
    let weak = format!("W/{etag}");
    let (status, _, problem) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders",
        &[("if-match", &weak)],
        rename(),
    )
    .await;
    assert_etag_mismatch(status, &problem);
    assert_eq!(
        app.get_stream("orders").await.name,
        "orders",
        "nothing changed so far"
    );

    // `*` asks only that the stream exists; a GET's If-None-Match is answered in full (200).
    let (status, _, _) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders",
        &[("if-match", "*")],
        rename(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = call(
        &app,
        Method::GET,
        "/v1/streams/orders-v2",
        &[("if-none-match", "*")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn over_grpc_a_wrong_etag_is_failed_precondition_and_changes_nothing() {
    let app = spawn_app().await;
    let stream = app.create_stream("orders").await;
    let topic = app.create_topic("orders", "created", 1).await;
    let (mut streams, mut topics) = (app.streams.clone(), app.topics.clone());

    let refused = streams
        .update_stream(proto::UpdateStreamRequest {
            stream: "orders".into(),
            name: "mine".into(),
            etag: "nope".into(),
        })
        .await
        .expect_err("stale");
    assert_grpc_etag_mismatch(&refused);
    let refused = streams
        .delete_stream(proto::DeleteStreamRequest {
            stream: "orders".into(),
            etag: topic.etag.clone(),
        })
        .await
        .expect_err("a topic's etag is not the stream's");
    assert_grpc_etag_mismatch(&refused);
    let refused = topics
        .update_topic(proto::UpdateTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            replication_factor: Some(3),
            etag: stream.etag.clone(),
            ..Default::default()
        })
        .await
        .expect_err("stale");
    assert_grpc_etag_mismatch(&refused);
    let refused = topics
        .delete_topic(proto::DeleteTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            etag: "nope".into(),
        })
        .await
        .expect_err("stale");
    assert_grpc_etag_mismatch(&refused);

    assert_eq!(
        app.get_stream("orders").await.etag,
        stream.etag,
        "nothing changed"
    );
    let unchanged = app.get_topic("orders", "created").await;
    assert_eq!(
        (unchanged.replication_factor, &unchanged.etag),
        (1, &topic.etag)
    );

    // With the current etags the same calls go through.
    let updated = topics
        .update_topic(proto::UpdateTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            replication_factor: Some(3),
            etag: topic.etag.clone(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .topic
        .expect("topic");
    assert_ne!(updated.etag, topic.etag);
    topics
        .delete_topic(proto::DeleteTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            etag: updated.etag,
        })
        .await
        .expect("current");
    let renamed = streams
        .update_stream(proto::UpdateStreamRequest {
            stream: "orders".into(),
            name: "orders-v2".into(),
            etag: stream.etag.clone(),
        })
        .await
        .expect("current")
        .into_inner()
        .stream
        .expect("stream");
    streams
        .delete_stream(proto::DeleteStreamRequest {
            stream: "orders-v2".into(),
            etag: renamed.etag,
        })
        .await
        .expect("current");
    assert!(app.list_streams().await.is_empty());
}

#[tokio::test]
async fn grpc_and_rest_refuse_a_stale_etag_with_the_same_reason_and_detail() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let status = app
        .streams
        .clone()
        .update_stream(proto::UpdateStreamRequest {
            stream: "orders".into(),
            name: "mine".into(),
            etag: "nope".into(),
        })
        .await
        .expect_err("stale");
    let (http, _, problem) = call(
        &app,
        Method::PATCH,
        "/v1/streams/orders",
        &[("if-match", "\"nope\"")],
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_etag_mismatch(http, &problem);
    assert_eq!(problem["detail"], status.message());
}

#[tokio::test]
async fn of_concurrent_changes_made_with_one_etag_exactly_one_applies() {
    let app = spawn_app().await;
    let read = app.create_stream("orders").await;
    let renames = (0..8).map(|n| {
        let mut client = app.streams.clone();
        let etag = read.etag.clone();
        tokio::spawn(async move {
            client
                .update_stream(proto::UpdateStreamRequest {
                    stream: "0".into(),
                    name: format!("writer-{n}"),
                    etag,
                })
                .await
        })
    });
    let results = futures_util::future::join_all(renames).await;
    let mut applied = Vec::new();
    for result in results {
        match result.expect("task") {
            Ok(answer) => applied.push(answer.into_inner().stream.expect("stream").name),
            Err(status) => assert_grpc_etag_mismatch(&status),
        }
    }
    assert_eq!(applied.len(), 1, "the check and the change are one step");
    assert_eq!(app.get_stream("0").await.name, applied[0]);
}

#[tokio::test]
async fn openapi_declares_if_match_and_etag_where_they_apply() {
    let app = spawn_app().await;
    let (_, _, document) = call(&app, Method::GET, "/openapi.json", &[], None).await;
    let header_names = |operation: &Value| -> Vec<String> {
        operation["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "header")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    let stream = &document["paths"]["/v1/streams/{stream}"];
    assert_eq!(header_names(&stream["patch"]), ["If-Match"]);
    assert_eq!(header_names(&stream["delete"]), ["If-Match"]);
    assert!(header_names(&stream["get"]).is_empty());
    assert_eq!(
        header_names(&document["paths"]["/v1/streams"]["post"]),
        ["If-None-Match"]
    );
    assert!(stream["get"]["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(stream["patch"]["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(document["paths"]["/v1/streams"]["get"]["responses"]["200"]["headers"].is_null());
    let topic = &document["paths"]["/v1/streams/{stream}/topics/{topic}"];
    assert_eq!(header_names(&topic["patch"]), ["If-Match"]);
    assert!(topic["get"]["responses"]["200"]["headers"]["ETag"].is_object());
}
