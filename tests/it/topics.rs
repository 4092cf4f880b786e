use iggy_gateway::proto;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_topic_is_created_with_its_settings_and_partitions() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let topic = app
        .topics
        .clone()
        .create_topic(proto::CreateTopicRequest {
            stream: "orders".into(),
            name: "created".into(),
            partitions_count: 3,
            message_expiry: Some(pbjson_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            max_topic_size_bytes: 1_000_000,
            compression_algorithm: proto::CompressionAlgorithm::Gzip.into(),
            replication_factor: 0,
            partitions: 0,
        })
        .await
        .expect("created")
        .into_inner()
        .topic
        .expect("topic");
    assert_eq!(topic.id, 0);
    assert_eq!(topic.partitions_count, 3);
    assert_eq!(
        topic.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(topic.message_expiry.map(|d| d.seconds), Some(3600));
    assert_eq!(topic.max_topic_size_bytes, 1_000_000);
    assert_eq!(
        topic.compression_algorithm(),
        proto::CompressionAlgorithm::Gzip
    );
    assert_eq!(topic.replication_factor, 1);

    let second = app.create_topic("0", "shipped", 1).await;
    assert_eq!(second.id, 1, "topic ids count from 0 within the stream");
}

#[tokio::test]
async fn get_and_list_topics_by_name_or_id() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    app.create_topic("orders", "shipped", 1).await;
    app.send_texts("orders", "shipped", 0, &["x"]).await;

    let topic = app.get_topic("0", "1").await;
    assert_eq!(topic.name, "shipped");
    assert_eq!(topic.messages_count, 1);
    assert_eq!(topic.partitions[0].messages_count, 1);
    assert_eq!(topic.partitions[0].current_offset, 0);

    let listed = app.list_topics("orders").await;
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["created", "shipped"]
    );
}

#[tokio::test]
async fn updating_a_topic_changes_only_the_fields_given() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.create_topic("orders", "other", 1).await;
    let mut client = app.topics.clone();

    let updated = client
        .update_topic(proto::UpdateTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            name: "created-v2".into(),
            max_topic_size_bytes: Some(5000),
            ..Default::default()
        })
        .await
        .expect("updated")
        .into_inner()
        .topic
        .expect("topic");
    assert_eq!(updated.name, "created-v2");
    assert_eq!(updated.max_topic_size_bytes, 5000);
    assert_eq!(
        updated.compression_algorithm(),
        proto::CompressionAlgorithm::None
    );
    assert_eq!(updated.partitions_count, 1);

    let clash = client
        .update_topic(proto::UpdateTopicRequest {
            stream: "orders".into(),
            topic: "created-v2".into(),
            name: "other".into(),
            ..Default::default()
        })
        .await
        .expect_err("taken");
    assert_eq!(clash.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn deleting_and_purging_topics() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.create_topic("orders", "shipped", 1).await;
    app.send_texts("orders", "created", 0, &["a", "b"]).await;
    app.send_texts("orders", "shipped", 0, &["c"]).await;
    let mut client = app.topics.clone();

    client
        .purge_topic(proto::PurgeTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
        })
        .await
        .expect("purged");
    assert!(
        app.poll_from("orders", "created", 0, 0, 10)
            .await
            .messages
            .is_empty()
    );
    assert_eq!(
        app.poll_from("orders", "shipped", 0, 0, 10)
            .await
            .messages
            .len(),
        1
    );

    client
        .delete_topic(proto::DeleteTopicRequest {
            stream: "orders".into(),
            topic: "shipped".into(),
            ..Default::default()
        })
        .await
        .expect("deleted");
    let err = client
        .get_topic(proto::GetTopicRequest {
            stream: "orders".into(),
            topic: "shipped".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.get_details_error_info().expect("reason").reason,
        "TOPIC_NOT_FOUND"
    );
}

#[tokio::test]
async fn partitions_are_added_and_removed_at_the_end() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    let mut client = app.topics.clone();

    let grown = client
        .create_partitions(proto::CreatePartitionsRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitions_count: 2,
        })
        .await
        .expect("added")
        .into_inner()
        .topic
        .expect("topic");
    assert_eq!(
        grown.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    app.send_texts("orders", "created", 3, &["in the last partition"])
        .await;

    let shrunk = client
        .delete_partitions(proto::DeletePartitionsRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitions_count: 3,
        })
        .await
        .expect("removed")
        .into_inner()
        .topic
        .expect("topic");
    assert_eq!(shrunk.partitions_count, 1);
    assert_eq!(
        shrunk.messages_count, 0,
        "messages of removed partitions are gone"
    );

    let err = client
        .delete_partitions(proto::DeletePartitionsRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitions_count: 1,
        })
        .await
        .expect_err("the last partition stays");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A re-created partition 1 starts empty: nothing of the old one comes back.
    client
        .create_partitions(proto::CreatePartitionsRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitions_count: 3,
        })
        .await
        .expect("added");
    assert!(
        app.poll_from("orders", "created", 3, 0, 10)
            .await
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn partition_counts_outside_1_to_1000_are_refused() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let mut client = app.topics.clone();
    for count in [0, 1001] {
        let err = client
            .create_topic(proto::CreateTopicRequest {
                stream: "orders".into(),
                name: "created".into(),
                partitions_count: count,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "count {count}");
        assert_eq!(
            err.get_details_bad_request()
                .expect("violation")
                .field_violations[0]
                .field,
            "partitions_count"
        );
    }
    app.create_topic("orders", "created", 999).await;
    let err = client
        .create_partitions(proto::CreatePartitionsRequest {
            stream: "orders".into(),
            topic: "created".into(),
            partitions_count: 2,
        })
        .await
        .expect_err("over 1000 in all");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn topics_in_unknown_streams_and_duplicate_topics_are_refused() {
    let app = spawn_app().await;
    let mut client = app.topics.clone();
    let err = client
        .create_topic(proto::CreateTopicRequest {
            stream: "nope".into(),
            name: "created".into(),
            partitions_count: 1,
            ..Default::default()
        })
        .await
        .expect_err("no stream");
    assert_eq!(err.code(), Code::NotFound);

    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let err = client
        .create_topic(proto::CreateTopicRequest {
            stream: "orders".into(),
            name: "created".into(),
            partitions_count: 1,
            ..Default::default()
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        err.get_details_error_info().expect("reason").reason,
        "TOPIC_ALREADY_EXISTS"
    );
}

#[tokio::test]
async fn an_expiry_finer_than_a_microsecond_is_rounded_up_not_cut_to_none() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let mut client = app.topics.clone();
    let micros = |seconds: i64, nanos: i32| pbjson_types::Duration { seconds, nanos };
    for (nanos, kept) in [(999, 1_000), (1_500, 2_000)] {
        let topic = client
            .create_topic(proto::CreateTopicRequest {
                stream: "orders".into(),
                name: format!("expiring-{nanos}"),
                partitions_count: 1,
                message_expiry: Some(micros(0, nanos)),
                ..Default::default()
            })
            .await
            .expect("created")
            .into_inner()
            .topic
            .expect("topic");
        assert_eq!(topic.message_expiry, Some(micros(0, kept)), "{nanos} ns");
    }
    // An update that asks for half a microsecond keeps an expiry, of one microsecond.
    let updated = client
        .update_topic(proto::UpdateTopicRequest {
            stream: "orders".into(),
            topic: "created".into(),
            message_expiry: Some(micros(0, 500)),
            ..Default::default()
        })
        .await
        .expect("updated")
        .into_inner()
        .topic
        .expect("topic");
    assert_eq!(updated.message_expiry, Some(micros(0, 1_000)));
    // REST reads the same.
    let answer: serde_json::Value = app
        .http1
        .post(app.url("/v1/streams/orders/topics"))
        .json(&serde_json::json!({"name": "rest", "partitions_count": 1, "message_expiry": "0.000000999s"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["topic"]["message_expiry"], "0.000001s", "{answer}");
}
