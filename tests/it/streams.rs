use iggy_gateway::proto;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::spawn_app;

#[tokio::test]
async fn streams_get_sequential_ids_from_zero_and_are_found_by_name_or_id() {
    let app = spawn_app().await;
    let first = app.create_stream("orders").await;
    let second = app.create_stream("payments").await;
    assert_eq!((first.id, first.name.as_str()), (0, "orders"));
    assert_eq!((second.id, second.name.as_str()), (1, "payments"));
    assert!(first.created_at.is_some());

    for key in ["payments", "1"] {
        let got = app.get_stream(key).await;
        assert_eq!((got.id, got.name.as_str()), (1, "payments"));
    }

    let listed = app.list_streams().await;
    let names: Vec<_> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["orders", "payments"]);
}

#[tokio::test]
async fn get_stream_reports_its_topics_and_totals() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    app.send_texts("orders", "created", 1, &["a", "bb"]).await;

    let stream = app.get_stream("orders").await;
    assert_eq!(stream.topics_count, 1);
    assert_eq!(stream.messages_count, 2);
    assert!(stream.size_bytes > 3, "sizes count stored bytes");
    assert_eq!(stream.topics.len(), 1);
    assert_eq!(stream.topics[0].name, "created");
}

#[tokio::test]
async fn a_stream_can_be_renamed_but_not_onto_a_taken_name() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_stream("payments").await;
    let mut client = app.streams.clone();

    let renamed = client
        .update_stream(proto::UpdateStreamRequest {
            stream: "orders".into(),
            name: "orders-v2".into(),
            ..Default::default()
        })
        .await
        .expect("renamed")
        .into_inner()
        .stream
        .expect("stream");
    assert_eq!((renamed.id, renamed.name.as_str()), (0, "orders-v2"));

    let clash = client
        .update_stream(proto::UpdateStreamRequest {
            stream: "orders-v2".into(),
            name: "payments".into(),
            ..Default::default()
        })
        .await
        .expect_err("name taken");
    assert_eq!(clash.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn a_deleted_stream_is_gone_with_its_topics() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let mut client = app.streams.clone();
    client
        .delete_stream(proto::DeleteStreamRequest {
            stream: "orders".into(),
            ..Default::default()
        })
        .await
        .expect("deleted");

    let missing = client
        .get_stream(proto::GetStreamRequest {
            stream: "orders".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.get_details_error_info().expect("reason").reason,
        "STREAM_NOT_FOUND"
    );

    // The name is free again, and the new stream starts empty.
    app.create_stream("orders").await;
    assert!(app.list_topics("orders").await.is_empty());
}

#[tokio::test]
async fn purging_a_stream_empties_its_topics_and_restarts_offsets() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;

    app.streams
        .clone()
        .purge_stream(proto::PurgeStreamRequest {
            stream: "orders".into(),
        })
        .await
        .expect("purged");
    assert!(
        app.poll_from("orders", "created", 0, 0, 10)
            .await
            .messages
            .is_empty()
    );

    app.send_texts("orders", "created", 0, &["d"]).await;
    let polled = app.poll_from("orders", "created", 0, 0, 10).await;
    assert_eq!(polled.messages.len(), 1);
    assert_eq!(polled.messages[0].offset, 0);
}

#[tokio::test]
async fn bad_stream_names_are_refused_with_the_field_named() {
    let app = spawn_app().await;
    let mut client = app.streams.clone();
    for bad in [String::new(), "x".repeat(256), "123".into()] {
        let err = client
            .create_stream(proto::CreateStreamRequest { name: bad.clone() })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "name {bad:?}");
        let violations = err.get_details_bad_request().expect("field violation");
        assert_eq!(violations.field_violations[0].field, "name");
    }
    assert!(app.list_streams().await.is_empty(), "nothing half-created");
}

#[tokio::test]
async fn duplicate_stream_names_are_refused() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    let err = app
        .streams
        .clone()
        .create_stream(proto::CreateStreamRequest {
            name: "orders".into(),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        err.get_details_error_info().expect("reason").reason,
        "STREAM_ALREADY_EXISTS"
    );
}

#[tokio::test]
async fn unknown_streams_are_not_found_for_every_call() {
    let app = spawn_app().await;
    let mut client = app.streams.clone();
    let codes = [
        client
            .get_stream(proto::GetStreamRequest {
                stream: "nope".into(),
            })
            .await
            .expect_err("missing")
            .code(),
        client
            .update_stream(proto::UpdateStreamRequest {
                stream: "7".into(),
                name: "x".into(),
                ..Default::default()
            })
            .await
            .expect_err("missing")
            .code(),
        client
            .delete_stream(proto::DeleteStreamRequest {
                stream: "nope".into(),
                ..Default::default()
            })
            .await
            .expect_err("missing")
            .code(),
        client
            .purge_stream(proto::PurgeStreamRequest {
                stream: "nope".into(),
            })
            .await
            .expect_err("missing")
            .code(),
    ];
    assert_eq!(codes, [Code::NotFound; 4]);
}
