//! Idempotent produce: a send under an `Idempotency-Key` is stored once however it is retried
//! (after a timeout, concurrently, after a restart, through another replica on Iggy), a retry
//! gets the original answer marked replayed, and the same key with another body is refused.

use std::time::Duration;

use iggy_gateway::{config::Config, proto};
use serde_json::{Value, json};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::{
    helpers::{TestApp, restart_with, spawn_app, spawn_configured, spawn_with, text_message},
    keys::keyed,
};

async fn topic(app: &TestApp) {
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
}

const PATH: &str = "/v1/streams/orders/topics/created/messages";

/// A REST send under `key`: status, the `Idempotent-Replayed` header, and the answer.
async fn rest_send(app: &TestApp, key: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = app
        .http1
        .post(app.url(PATH))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let answer = response.json().await.expect("JSON");
    (status, replayed, answer)
}

fn grpc_send(key: &str, texts: &[&str]) -> Request<proto::SendMessagesRequest> {
    let mut request = Request::new(proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages: texts.iter().map(|t| text_message(t)).collect(),
    });
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().expect("metadata"));
    request
}

async fn stored_texts(app: &TestApp) -> Vec<String> {
    let polled = app.poll_from("orders", "created", 0, 0, 1000).await;
    crate::helpers::texts(&polled)
}

#[tokio::test]
async fn a_rest_retry_is_answered_again_stored_once_and_another_body_is_422() {
    let app = spawn_app().await;
    topic(&app).await;
    let body = json!({"partition_id": 0, "messages": [{"text": "a"}, {"text": "b", "id": "0190f7c4-0000-7000-8000-000000000001"}]});
    let (status, replayed, first) = rest_send(&app, "order-1001", body.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(replayed, None);
    // The id the client left out is derived from (identity, key, index): a UUIDv8.
    let derived = first["ids"][0].as_str().expect("id");
    assert_eq!(&derived[14..15], "8", "{derived}");
    assert_eq!(first["ids"][1], "0190f7c4-0000-7000-8000-000000000001");
    let (status, replayed, again) = rest_send(&app, "order-1001", body.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(again, first, "the original answer");
    assert_eq!(stored_texts(&app).await, ["a", "b"]);

    let (status, _, problem) = rest_send(
        &app,
        "order-1001",
        json!({"partition_id": 0, "messages": [{"text": "changed"}]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["reason"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(problem["code"], "FAILED_PRECONDITION");
    // Another key is another send.
    let (status, replayed, _) = rest_send(&app, "order-1002", body).await;
    assert_eq!((status, replayed), (201, None));
    assert_eq!(stored_texts(&app).await, ["a", "b", "a", "b"]);
    // A malformed key is refused, naming the header.
    let response = app
        .http1
        .post(app.url(PATH))
        .header("idempotency-key", "has space")
        .json(&json!({"messages": [{"text": "x"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("JSON");
    assert_eq!(problem["violations"][0]["field"], "idempotency-key");
}

#[tokio::test]
async fn grpc_and_grpc_web_retries_are_replayed_and_another_body_fails_its_precondition() {
    let app = spawn_app().await;
    topic(&app).await;
    let first = app
        .messages
        .clone()
        .send_messages(grpc_send("k-1", &["x"]))
        .await
        .expect("sent");
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let again = app
        .messages
        .clone()
        .send_messages(grpc_send("k-1", &["x"]))
        .await
        .expect("replayed");
    assert_eq!(
        again
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap_or("")),
        Some("true")
    );
    assert_eq!(again.get_ref().ids, first.get_ref().ids);
    let refused = app
        .messages
        .clone()
        .send_messages(grpc_send("k-1", &["y"]))
        .await
        .expect_err("another body");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );
    // REST with the same key and body as the gRPC call is the same request.
    let (status, replayed, answer) = rest_send(
        &app,
        "k-1",
        json!({"partition_id": 0, "messages": [{"text": "x"}]}),
    )
    .await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(answer["ids"][0], first.get_ref().ids[0]);

    // gRPC-Web: the replay mark is in the answer's headers.
    let send = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages: vec![text_message("web")],
    };
    for expected in [None, Some("true")] {
        let response = app
            .http1
            .post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
            .header("content-type", "application/grpc-web+proto")
            .header("idempotency-key", "web-1")
            .body(crate::helpers::grpc_frame(&prost::Message::encode_to_vec(
                &send,
            )))
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap_or("")),
            expected
        );
    }
    assert_eq!(stored_texts(&app).await, ["x", "web"]);
}

#[tokio::test]
async fn a_retry_after_a_forced_timeout_is_stored_once() {
    let app = spawn_app().await;
    topic(&app).await;
    // A batch big enough that a 1 ms deadline cuts the call while it is being stored (or
    // before): either way the client learns nothing of what happened.
    let texts: Vec<String> = (0..500).map(|i| format!("{i:0>2000}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut timed_out = 0;
    for attempt in 0..5 {
        let key = format!("batch-{attempt}");
        let mut first = grpc_send(&key, &texts);
        first.set_timeout(Duration::from_millis(1));
        if let Err(status) = app.messages.clone().send_messages(first).await {
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{status:?}"
            );
            timed_out += 1;
        }
        // The retry, with time to finish.
        let retried = app
            .messages
            .clone()
            .send_messages(grpc_send(&key, &texts))
            .await
            .expect("the retry succeeds");
        assert_eq!(retried.get_ref().ids.len(), 500);
    }
    assert!(timed_out > 0, "no call was cut short by its deadline");
    // Five keys, each stored exactly once, whatever the deadline cut.
    let mut count = 0;
    loop {
        let polled = app
            .poll_from("orders", "created", 0, count as u64, 1000)
            .await;
        if polled.messages.is_empty() {
            break;
        }
        count += polled.messages.len();
    }
    assert_eq!(count, 5 * 500);
}

#[tokio::test]
async fn a_concurrent_retry_waits_for_the_first_and_gets_its_answer() {
    let app = spawn_app().await;
    topic(&app).await;
    let texts: Vec<String> = (0..200).map(|i| format!("{i:0>1000}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let calls = (0..8).map(|_| {
        let mut client = app.messages.clone();
        let request = grpc_send("together", &texts);
        async move { client.send_messages(request).await.expect("sent") }
    });
    let answers = futures_util::future::join_all(calls).await;
    let replays = answers
        .iter()
        .filter(|a| a.metadata().get("idempotent-replayed").is_some())
        .count();
    assert_eq!(replays, 7, "one call stored, the others got its answer");
    for answer in &answers {
        assert_eq!(answer.get_ref().ids, answers[0].get_ref().ids);
    }
    assert_eq!(stored_texts(&app).await.len(), 200);
}

#[tokio::test]
async fn the_embedded_record_survives_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let config = Config::for_tests(dir.path().display().to_string());
    let app = spawn_with(config.clone(), dir).await;
    topic(&app).await;
    let body = json!({"partition_id": 0, "messages": [{"text": "kept"}]});
    let (status, _, first) = rest_send(&app, "restart-1", body.clone()).await;
    assert_eq!(status, 201);
    let dir = app.stop().await;
    let app = restart_with(config, dir).await;
    let (status, replayed, again) = rest_send(&app, "restart-1", body).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first);
    let (status, _, problem) = rest_send(
        &app,
        "restart-1",
        json!({"partition_id": 0, "messages": [{"text": "other"}]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(stored_texts(&app).await, ["kept"]);
}

#[tokio::test]
async fn keys_belong_to_their_identity() {
    // Two identities may use the same key for different sends: each is its own.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, crate::keys::keys_file()).expect("keys");
    let app = spawn_configured(move |c| c.auth.api_keys_file = Some(file)).await;
    for (stream, topic) in [("orders", "created")] {
        let mut create = Request::new(proto::CreateStreamRequest {
            name: stream.into(),
        });
        create
            .metadata_mut()
            .insert("x-api-key", "admin-key".parse().expect("key"));
        app.streams
            .clone()
            .create_stream(create)
            .await
            .expect("stream");
        let mut create = Request::new(proto::CreateTopicRequest {
            stream: stream.into(),
            name: topic.into(),
            partitions_count: 1,
            ..Default::default()
        });
        create
            .metadata_mut()
            .insert("x-api-key", "admin-key".parse().expect("key"));
        app.topics
            .clone()
            .create_topic(create)
            .await
            .expect("topic");
    }
    let mut ids = Vec::new();
    for (key, text) in [("team-key", "from team"), ("unlimited-key", "from other")] {
        let mut request = grpc_send("shared-key", &[text]);
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().expect("key"));
        let answer = app
            .messages
            .clone()
            .send_messages(request)
            .await
            .expect("sent");
        assert!(answer.metadata().get("idempotent-replayed").is_none());
        ids.push(answer.into_inner().ids);
    }
    assert_ne!(ids[0], ids[1], "derived ids differ by identity");
}

/// A second Iggy server with message deduplication on, for the replicas test; or a visible skip.
fn dedup_server() -> Option<String> {
    match std::env::var("IGGY_DEDUP_TEST_CONNECTION_STRING") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED: IGGY_DEDUP_TEST_CONNECTION_STRING is unset; no Iggy server with \
                 IGGY_SYSTEM_MESSAGE_DEDUPLICATION_ENABLED=true to test replicas against"
            );
            None
        }
    }
}

async fn on_iggy(url: &str) -> TestApp {
    let url = url.to_owned();
    let app = spawn_configured(move |c| {
        c.backend.iggy_connection_string = Some(url.into());
        c.backend.iggy_connect_wait_ms = 10_000;
    })
    .await;
    for _ in 0..100 {
        let ready = app.http1.get(app.url("/ready")).send().await.expect("sent");
        if ready.status() == 200 {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway did not connect to Iggy");
}

/// The stream the deduplication test keeps on its server: Iggy 0.8 deduplicates only the
/// partitions it loaded at start-up (one created later gets no deduplicator until the server
/// restarts), so the test needs a topic that outlives a restart of the server.
const DEDUP_STREAM: &str = "gateway-idempotency-test";

/// Needs an Iggy whose deduplication survives a batch made only of duplicates, which a retry
/// through another replica is: Iggy 0.8.0's server panics on one (`Option::unwrap()` on the
/// batch's last timestamp, `shard/system/messages.rs`) and shuts down, so against 0.8.0 this
/// test fails with the server gone (README, "Idempotent sends").
#[tokio::test]
async fn on_iggy_with_deduplication_two_replicas_store_a_retried_send_once() {
    let Some(url) = dedup_server() else { return };
    // Two gateways, as two replicas behind a load balancer: neither knows the other's keys.
    let (first, second) = (on_iggy(&url).await, on_iggy(&url).await);
    let _ = first
        .streams
        .clone()
        .create_stream(proto::CreateStreamRequest {
            name: DEDUP_STREAM.into(),
        })
        .await;
    let _ = first
        .topics
        .clone()
        .create_topic(proto::CreateTopicRequest {
            stream: DEDUP_STREAM.into(),
            name: "created".into(),
            partitions_count: 1,
            ..Default::default()
        })
        .await;
    let count_ids = |ids: Vec<String>| {
        let app = &first;
        async move {
            let polled = app
                .poll(proto::PollMessagesRequest {
                    stream: DEDUP_STREAM.into(),
                    topic: "created".into(),
                    strategy: proto::PollingStrategy::Last.into(),
                    count: 100,
                    ..Default::default()
                })
                .await;
            polled
                .messages
                .iter()
                .filter(|m| ids.contains(&m.id))
                .count()
        }
    };
    // Is the server deduplicating this partition? One id sent twice tells (each time with a
    // fresh message beside it: Iggy 0.8.0 panics on a batch made only of duplicates).
    let probe = uuid::Uuid::now_v7().to_string();
    for _ in 0..2 {
        let mut message = text_message("probe");
        message.id = probe.clone();
        first
            .messages
            .clone()
            .send_messages(proto::SendMessagesRequest {
                stream: DEDUP_STREAM.into(),
                topic: "created".into(),
                partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
                messages: vec![message, text_message("fresh")],
            })
            .await
            .expect("probe sent");
    }
    if count_ids(vec![probe]).await != 1 {
        eprintln!(
            "SKIPPED: the server does not deduplicate {DEDUP_STREAM}/created: Iggy 0.8 \
             deduplicates only partitions it loaded at start-up; restart the server once (the \
             topic is kept) and run again"
        );
        return;
    }
    let key = format!("replicated-{}", uuid::Uuid::now_v7().simple());
    let send = || {
        let mut request = Request::new(proto::SendMessagesRequest {
            stream: DEDUP_STREAM.into(),
            topic: "created".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages: vec![text_message("one"), text_message("two")],
        });
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().expect("metadata"));
        request
    };
    let a = first
        .messages
        .clone()
        .send_messages(send())
        .await
        .expect("sent through the first replica")
        .into_inner();
    // The client timed out and retried; the load balancer picked the other replica.
    let b = second
        .messages
        .clone()
        .send_messages(send())
        .await
        .expect("retried through the second replica")
        .into_inner();
    assert_eq!(a.ids, b.ids, "the same derived ids on both replicas");
    // A retry on the first replica is answered from its memory.
    let again = first
        .messages
        .clone()
        .send_messages(send())
        .await
        .expect("replayed");
    assert!(again.metadata().get("idempotent-replayed").is_some());
    assert_eq!(
        count_ids(a.ids).await,
        2,
        "each message once: Iggy dropped the second replica's copies"
    );
}

#[tokio::test]
async fn on_iggy_without_deduplication_the_ids_still_tell_the_copies_apart() {
    // The default server (deduplication off) stores the second replica's copy; the derived ids
    // make it recognisable as the same message.
    let url = match std::env::var("IGGY_TEST_CONNECTION_STRING") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("SKIPPED: IGGY_TEST_CONNECTION_STRING is unset");
            return;
        }
    };
    let (first, second) = (on_iggy(&url).await, on_iggy(&url).await);
    let stream = format!("gw-idem-{}", uuid::Uuid::now_v7().simple());
    first.create_stream(&stream).await;
    first.create_topic(&stream, "created", 1).await;
    let send = || {
        let mut request = Request::new(proto::SendMessagesRequest {
            stream: stream.clone(),
            topic: "created".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages: vec![text_message("one")],
        });
        request
            .metadata_mut()
            .insert("idempotency-key", "k".parse().expect("metadata"));
        request
    };
    first
        .messages
        .clone()
        .send_messages(send())
        .await
        .expect("sent");
    second
        .messages
        .clone()
        .send_messages(send())
        .await
        .expect("sent");
    let polled = first.poll_from(&stream, "created", 0, 0, 100).await;
    assert_eq!(polled.messages.len(), 2);
    assert_eq!(polled.messages[0].id, polled.messages[1].id);
    first
        .streams
        .clone()
        .delete_stream(proto::DeleteStreamRequest {
            stream,
            ..Default::default()
        })
        .await
        .expect("cleaned up");
}

/// On Iggy the gateway's memory is all that recognises a retry on one replica, so another
/// identity's flood of new keys must not make it forget an answer: it forgets its own first.
#[tokio::test]
async fn on_iggy_a_flood_of_keys_by_one_identity_does_not_store_anothers_retry_twice() {
    let url = match std::env::var("IGGY_TEST_CONNECTION_STRING") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("SKIPPED: IGGY_TEST_CONNECTION_STRING is unset");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, crate::keys::keys_file()).expect("keys");
    let app = spawn_configured(move |c| {
        c.auth.api_keys_file = Some(file);
        c.backend.iggy_connection_string = Some(url.into());
        c.backend.iggy_connect_wait_ms = 10_000;
        c.limits.idempotency_max_entries = 8;
    })
    .await;
    let stream = format!("gw-idem-{}", uuid::Uuid::now_v7().simple());
    app.streams
        .clone()
        .create_stream(keyed(
            "admin-key",
            proto::CreateStreamRequest {
                name: stream.clone(),
            },
        ))
        .await
        .expect("stream");
    app.topics
        .clone()
        .create_topic(keyed(
            "admin-key",
            proto::CreateTopicRequest {
                stream: stream.clone(),
                name: "created".into(),
                partitions_count: 1,
                ..Default::default()
            },
        ))
        .await
        .expect("topic");
    let send = |api_key: &str, key: &str, text: &str| {
        let mut request = keyed(
            api_key,
            proto::SendMessagesRequest {
                stream: stream.clone(),
                topic: "created".into(),
                partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
                messages: vec![text_message(text)],
            },
        );
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().expect("metadata"));
        let mut client = app.messages.clone();
        async move {
            let answer = client.send_messages(request).await.expect("sent");
            answer.metadata().get("idempotent-replayed").is_some()
        }
    };
    assert!(!send("admin-key", "order-1", "victim").await);
    for i in 0..50 {
        assert!(!send("unlimited-key", &format!("flood-{i}"), "flood").await);
    }
    assert!(
        send("admin-key", "order-1", "victim").await,
        "the victim's retry is answered from memory"
    );
    // The flood's own first key was forgotten: its retry is stored again (the bound, as
    // documented), which shows the memory was full.
    assert!(!send("unlimited-key", "flood-0", "flood").await);
    let polled = app
        .messages
        .clone()
        .poll_messages(keyed(
            "admin-key",
            proto::PollMessagesRequest {
                stream: stream.clone(),
                topic: "created".into(),
                count: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("polled")
        .into_inner();
    let texts = crate::helpers::texts(&polled);
    assert_eq!(texts.iter().filter(|t| *t == "victim").count(), 1);
    assert_eq!(texts.iter().filter(|t| *t == "flood").count(), 51);
    app.streams
        .clone()
        .delete_stream(keyed(
            "admin-key",
            proto::DeleteStreamRequest {
                stream,
                ..Default::default()
            },
        ))
        .await
        .expect("cleaned up");
}

#[tokio::test]
async fn a_connect_retry_is_replayed_with_its_header_and_stored_once() {
    let app = spawn_app().await;
    topic(&app).await;
    let send = || {
        app.http1
            .post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1")
            .header("idempotency-key", "connect-order-7")
            .json(&json!({
                "stream": "orders", "topic": "created", "partitionId": 0,
                "messages": [{"text": "seven"}]
            }))
            .send()
    };
    let first = send().await.expect("sent");
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("JSON");
    let again = send().await.expect("sent");
    assert_eq!(again.status(), 200);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["ids"], first["ids"]);
    assert_eq!(stored_texts(&app).await, ["seven"]);
}

#[tokio::test]
async fn two_idempotency_keys_on_one_send_are_refused_on_every_protocol() {
    let app = spawn_app().await;
    topic(&app).await;
    let response = app
        .http1
        .post(app.url(PATH))
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .json(&json!({"partition_id": 0, "messages": [{"text": "a"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(
        problem["violations"][0]["field"], "idempotency-key",
        "{problem}"
    );

    let mut request = grpc_send("one", &["b"]);
    request
        .metadata_mut()
        .append("idempotency-key", "two".parse().expect("metadata"));
    let refused = app
        .messages
        .clone()
        .send_messages(request)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(stored_texts(&app).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_derived_id_cannot_be_worked_out_and_taken_by_another_writer_first() {
    let app = spawn_app().await;
    topic(&app).await;
    // Another writer of the topic computes the id a send under `order-77` would derive without
    // the gateway's secret, and sends a message of its own under it first.
    let guessed = uuid::Uuid::from_u128(iggy_gateway::idempotency::message_id(
        iggy_gateway::identity::ANONYMOUS,
        "order-77",
        0,
    ))
    .to_string();
    let forged = json!({"partition_id": 0, "messages": [{"text": "forged", "id": guessed}]});
    let (status, _, _) = rest_send(&app, "unrelated-key", forged).await;
    assert_eq!(status, 201);
    let real = json!({"partition_id": 0, "messages": [{"text": "real"}]});
    let (status, _, answer) = rest_send(&app, "order-77", real).await;
    assert_eq!(status, 201, "{answer}");
    assert_ne!(
        answer["ids"][0],
        guessed.as_str(),
        "the derived id is keyed"
    );
}
