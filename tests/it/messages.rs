use std::collections::HashMap;

use bytes::Bytes;
use iggy_gateway::proto;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app, spawn_configured, text_message, texts};

async fn app_with_topic(partitions: u32) -> TestApp {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", partitions).await;
    app
}

fn send_request(messages: Vec<proto::Message>) -> proto::SendMessagesRequest {
    proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
        messages,
    }
}

fn poll_request(strategy: proto::PollingStrategy, count: u32) -> proto::PollMessagesRequest {
    proto::PollMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partition_id: 0,
        strategy: strategy.into(),
        count,
        ..Default::default()
    }
}

fn header(kind: proto::header_value::Kind) -> proto::HeaderValue {
    proto::HeaderValue { kind: Some(kind) }
}

#[tokio::test]
async fn sent_messages_come_back_with_ids_headers_offsets_and_their_body_form() {
    let app = app_with_topic(1).await;
    let json = pbjson_types::Value {
        kind: Some(pbjson_types::value::Kind::StructValue(
            pbjson_types::Struct {
                fields: [(
                    "user".to_owned(),
                    pbjson_types::Value {
                        kind: Some(pbjson_types::value::Kind::StringValue("ada".into())),
                    },
                )]
                .into_iter()
                .collect(),
            },
        )),
    };
    let headers: HashMap<String, proto::HeaderValue> = [
        (
            "source".to_owned(),
            header(proto::header_value::Kind::StringValue("web".into())),
        ),
        (
            "attempt".to_owned(),
            header(proto::header_value::Kind::Int64Value(-3)),
        ),
        (
            "urgent".to_owned(),
            header(proto::header_value::Kind::BoolValue(true)),
        ),
        (
            "raw".to_owned(),
            header(proto::header_value::Kind::BytesValue(Bytes::from_static(
                b"\x01\x02",
            ))),
        ),
    ]
    .into_iter()
    .collect();
    let given_id = "0190f7c4-7b8e-7c4a-9d2e-1234567890ab";
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();

    let ids = app
        .messages
        .clone()
        .send_messages(send_request(vec![
            proto::Message {
                id: given_id.into(),
                headers: headers.clone(),
                body: Some(proto::message::Body::Json(json.clone())),
            },
            proto::Message {
                body: Some(proto::message::Body::Payload(Bytes::from_static(
                    b"\x00\xffbin",
                ))),
                ..Default::default()
            },
            text_message("plain text"),
        ]))
        .await
        .expect("sent")
        .into_inner()
        .ids;
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], given_id, "a client-given id is kept");
    for assigned in &ids[1..] {
        let uuid = uuid::Uuid::parse_str(assigned).expect("assigned ids are UUIDs");
        assert_eq!(uuid.get_version_num(), 7, "assigned ids are UUIDv7");
    }

    let polled = app.poll_from("orders", "created", 0, 0, 10).await;
    assert_eq!(polled.partition_id, 0);
    assert_eq!(polled.current_offset, 2);
    let offsets: Vec<u64> = polled.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [0, 1, 2]);
    let polled_ids: Vec<&str> = polled.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        polled_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let first = &polled.messages[0];
    assert_eq!(
        first.headers, headers,
        "typed headers round-trip; the body-form header is hidden"
    );
    assert_eq!(first.body, Some(proto::polled_message::Body::Json(json)));
    assert!(first.timestamp.as_ref().expect("timestamp").seconds as u64 >= before);
    assert_eq!(
        polled.messages[1].body,
        Some(proto::polled_message::Body::Payload(Bytes::from_static(
            b"\x00\xffbin"
        )))
    );
    assert_eq!(
        polled.messages[2].body,
        Some(proto::polled_message::Body::Text("plain text".into()))
    );
}

#[tokio::test]
async fn balanced_partitioning_goes_round_robin_one_batch_per_partition() {
    let app = app_with_topic(3).await;
    for text in ["a", "b", "c", "d"] {
        let mut request = send_request(vec![text_message(text)]);
        request.partitioning = None;
        app.messages
            .clone()
            .send_messages(request)
            .await
            .expect("sent");
    }
    let mut seen = Vec::new();
    for partition in 0..3 {
        seen.push(texts(
            &app.poll_from("orders", "created", partition, 0, 10).await,
        ));
    }
    assert_eq!(seen, [vec!["a", "d"], vec!["b"], vec!["c"]]);
}

/// Concurrent senders share commits (the store commits whatever is queued together); each
/// acknowledged message must still be stored once, each caller's messages stay in the order it
/// sent them, offsets stay gapless, and a caller's bad send fails alone.
#[tokio::test]
async fn concurrent_senders_are_each_stored_once_in_their_order() {
    const CALLERS: usize = 16;
    const SENDS: usize = 25;
    let app = app_with_topic(3).await;
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let mut client = app.messages.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for seq in 0..SENDS {
                let mut request = send_request(vec![text_message(&format!("{caller}:{seq}"))]);
                request.partitioning = Some(
                    proto::send_messages_request::Partitioning::PartitionId((caller % 3) as u32),
                );
                client.send_messages(request).await.expect("acknowledged");
                if seq % 5 == 0 {
                    let mut bad = send_request(vec![text_message("never stored")]);
                    bad.partitioning =
                        Some(proto::send_messages_request::Partitioning::PartitionId(7));
                    let status = client.send_messages(bad).await.expect_err("no partition 7");
                    assert_eq!(status.code(), Code::NotFound);
                    refused += 1;
                }
            }
            refused
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("caller ran"), SENDS / 5);
    }

    let mut seen: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut total = 0;
    for partition in 0..3u32 {
        let polled = app.poll_from("orders", "created", partition, 0, 1000).await;
        let offsets: Vec<u64> = polled.messages.iter().map(|m| m.offset).collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as u64).collect::<Vec<_>>(),
            "gapless offsets in partition {partition}"
        );
        for text in texts(&polled) {
            let (caller, seq) = text.split_once(':').expect("caller:seq");
            let caller: usize = caller.parse().expect("caller");
            assert_eq!(
                caller % 3,
                partition as usize,
                "{text} in the wrong partition"
            );
            seen.entry(caller)
                .or_default()
                .push(seq.parse().expect("seq"));
            total += 1;
        }
    }
    assert_eq!(total, CALLERS * SENDS);
    for caller in 0..CALLERS {
        assert_eq!(
            seen.get(&caller),
            Some(&(0..SENDS).collect::<Vec<_>>()),
            "caller {caller}'s messages, once each, in order"
        );
    }
}

#[tokio::test]
async fn one_key_always_lands_in_one_partition() {
    let app = app_with_topic(8).await;
    for text in ["first", "second", "third"] {
        let mut request = send_request(vec![text_message(text)]);
        request.partitioning = Some(proto::send_messages_request::Partitioning::PartitionKey(
            "customer-42".into(),
        ));
        app.messages
            .clone()
            .send_messages(request)
            .await
            .expect("sent");
    }
    let mut holders = Vec::new();
    for partition in 0..8 {
        let got = texts(&app.poll_from("orders", "created", partition, 0, 10).await);
        if !got.is_empty() {
            holders.push((partition, got));
        }
    }
    assert_eq!(
        holders.len(),
        1,
        "all messages of one key in one partition: {holders:?}"
    );
    assert_eq!(holders[0].1, ["first", "second", "third"]);
}

#[tokio::test]
async fn polling_strategies_follow_iggy() {
    let app = app_with_topic(1).await;
    app.send_texts("orders", "created", 0, &["m0", "m1", "m2"])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.send_texts("orders", "created", 0, &["m3", "m4"]).await;

    let mut offset = poll_request(proto::PollingStrategy::Offset, 2);
    offset.offset = Some(1);
    assert_eq!(texts(&app.poll(offset).await), ["m1", "m2"]);
    assert_eq!(
        texts(
            &app.poll(poll_request(proto::PollingStrategy::First, 2))
                .await
        ),
        ["m0", "m1"]
    );
    assert_eq!(
        texts(
            &app.poll(poll_request(proto::PollingStrategy::Last, 2))
                .await
        ),
        ["m3", "m4"]
    );
    assert_eq!(
        texts(
            &app.poll(poll_request(proto::PollingStrategy::Last, 50))
                .await
        )
        .len(),
        5
    );

    let since = cut.duration_since(std::time::UNIX_EPOCH).expect("clock");
    let mut by_time = poll_request(proto::PollingStrategy::Timestamp, 10);
    by_time.timestamp = Some(pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    });
    assert_eq!(texts(&app.poll(by_time).await), ["m3", "m4"]);

    let mut beyond = poll_request(proto::PollingStrategy::Offset, 10);
    beyond.offset = Some(99);
    assert!(app.poll(beyond).await.messages.is_empty());
}

#[tokio::test]
async fn a_consumer_resumes_after_what_it_committed() {
    let app = app_with_topic(1).await;
    app.send_texts("orders", "created", 0, &["m0", "m1", "m2", "m3", "m4"])
        .await;

    let mut next = poll_request(proto::PollingStrategy::Next, 2);
    next.consumer = "billing".into();
    next.auto_commit = true;
    assert_eq!(texts(&app.poll(next.clone()).await), ["m0", "m1"]);
    assert_eq!(texts(&app.poll(next.clone()).await), ["m2", "m3"]);

    // Without a strategy, a consumer with no offset means "next".
    let mut implicit = poll_request(proto::PollingStrategy::Unspecified, 10);
    implicit.consumer = "billing".into();
    assert_eq!(texts(&app.poll(implicit).await), ["m4"]);

    // Another consumer has its own position.
    let mut other = next.clone();
    other.consumer = "7".into();
    assert_eq!(texts(&app.poll(other).await), ["m0", "m1"]);
}

#[tokio::test]
async fn consumer_offsets_are_stored_read_and_deleted() {
    let app = app_with_topic(2).await;
    app.send_texts("orders", "created", 1, &["m0", "m1", "m2"])
        .await;
    let mut client = app.messages.clone();
    let at = |partition_id| proto::GetConsumerOffsetRequest {
        stream: "orders".into(),
        topic: "created".into(),
        consumer: "billing".into(),
        partition_id,
    };

    let none = client
        .get_consumer_offset(at(1))
        .await
        .expect("read")
        .into_inner();
    assert_eq!((none.current_offset, none.stored_offset), (2, None));

    client
        .store_consumer_offset(proto::StoreConsumerOffsetRequest {
            stream: "orders".into(),
            topic: "created".into(),
            consumer: "billing".into(),
            partition_id: 1,
            offset: Some(1),
        })
        .await
        .expect("stored");
    let stored = client
        .get_consumer_offset(at(1))
        .await
        .expect("read")
        .into_inner();
    assert_eq!((stored.partition_id, stored.stored_offset), (1, Some(1)));

    let mut next = poll_request(proto::PollingStrategy::Next, 10);
    next.partition_id = 1;
    next.consumer = "billing".into();
    assert_eq!(texts(&app.poll(next.clone()).await), ["m2"]);

    let beyond = client
        .store_consumer_offset(proto::StoreConsumerOffsetRequest {
            stream: "orders".into(),
            topic: "created".into(),
            consumer: "billing".into(),
            partition_id: 1,
            offset: Some(3),
        })
        .await
        .expect_err("past the newest message");
    assert_eq!(beyond.code(), Code::InvalidArgument);

    client
        .delete_consumer_offset(proto::DeleteConsumerOffsetRequest {
            stream: "orders".into(),
            topic: "created".into(),
            consumer: "billing".into(),
            partition_id: 1,
        })
        .await
        .expect("deleted");
    assert_eq!(texts(&app.poll(next).await), ["m0", "m1", "m2"]);
    let again = client
        .delete_consumer_offset(proto::DeleteConsumerOffsetRequest {
            stream: "orders".into(),
            topic: "created".into(),
            consumer: "billing".into(),
            partition_id: 1,
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(
        again.get_details_error_info().expect("reason").reason,
        "CONSUMER_OFFSET_NOT_FOUND"
    );
}

async fn assert_invalid(app: &TestApp, request: proto::SendMessagesRequest, field: &str) {
    let err = app
        .messages
        .clone()
        .send_messages(request)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let violations = err.get_details_bad_request().expect("field violation");
    assert_eq!(violations.field_violations[0].field, field, "{err:?}");
}

#[tokio::test]
async fn bad_batches_are_refused_whole_and_store_nothing() {
    let app = spawn_configured(|c| {
        c.limits.batch_max_size = 3;
        c.limits.max_message_size = 16;
    })
    .await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;

    assert_invalid(&app, send_request(vec![]), "messages").await;
    assert_invalid(&app, send_request(vec![text_message("x"); 4]), "messages").await;
    assert_invalid(
        &app,
        send_request(vec![text_message("ok"), text_message(&"x".repeat(17))]),
        // The field the client sent, not the stored payload.
        "messages[1].text",
    )
    .await;
    let mut bad_id = text_message("ok");
    bad_id.id = "not-a-uuid".into();
    assert_invalid(
        &app,
        send_request(vec![text_message("ok"), bad_id]),
        "messages[1].id",
    )
    .await;
    let mut nil_id = text_message("ok");
    nil_id.id = uuid::Uuid::nil().to_string();
    assert_invalid(&app, send_request(vec![nil_id]), "messages[0].id").await;
    let mut reserved = text_message("ok");
    reserved.headers.insert(
        "gateway-body".into(),
        header(proto::header_value::Kind::StringValue("json".into())),
    );
    assert_invalid(
        &app,
        send_request(vec![reserved]),
        "messages[0].headers[gateway-body]",
    )
    .await;
    assert_invalid(
        &app,
        send_request(vec![text_message("")]),
        "messages[0].text",
    )
    .await;
    let mut empty_header = text_message("ok");
    empty_header.headers.insert(
        "k".into(),
        header(proto::header_value::Kind::StringValue(String::new())),
    );
    assert_invalid(
        &app,
        send_request(vec![empty_header]),
        "messages[0].headers[k].string_value",
    )
    .await;
    let no_body = proto::Message::default();
    assert_invalid(&app, send_request(vec![no_body]), "messages[0].body").await;

    assert!(
        app.poll_from("orders", "created", 0, 0, 10)
            .await
            .messages
            .is_empty(),
        "no refused batch left anything behind"
    );
}

#[tokio::test]
async fn sends_to_unknown_places_are_not_found() {
    let app = app_with_topic(2).await;
    let mut client = app.messages.clone();
    let mut to_partition = send_request(vec![text_message("x")]);
    to_partition.partitioning = Some(proto::send_messages_request::Partitioning::PartitionId(2));
    let err = client
        .send_messages(to_partition)
        .await
        .expect_err("no partition 2");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.get_details_error_info().expect("reason").reason,
        "PARTITION_NOT_FOUND"
    );

    let mut to_topic = send_request(vec![text_message("x")]);
    to_topic.topic = "nope".into();
    let err = client.send_messages(to_topic).await.expect_err("no topic");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_polls_are_refused_with_the_field_named() {
    let app = app_with_topic(1).await;
    let mut client = app.messages.clone();
    let cases = [
        (poll_request(proto::PollingStrategy::First, 0), "count"),
        (poll_request(proto::PollingStrategy::First, 1001), "count"),
        (poll_request(proto::PollingStrategy::Next, 1), "consumer"),
        (poll_request(proto::PollingStrategy::Offset, 1), "offset"),
        (
            poll_request(proto::PollingStrategy::Timestamp, 1),
            "timestamp",
        ),
        (
            proto::PollMessagesRequest {
                auto_commit: true,
                ..poll_request(proto::PollingStrategy::First, 1)
            },
            "consumer",
        ),
    ];
    for (request, field) in cases {
        let err = client.poll_messages(request).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.get_details_bad_request()
                .expect("violation")
                .field_violations[0]
                .field,
            field
        );
    }
    let mut unknown = poll_request(proto::PollingStrategy::First, 1);
    unknown.partition_id = 5;
    assert_eq!(
        client
            .poll_messages(unknown)
            .await
            .expect_err("no partition")
            .code(),
        Code::NotFound
    );
}
