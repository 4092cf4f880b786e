//! Optimistic concurrency: streams and topics carry an etag (AIP-154); a change or delete
//! given a stale one is refused with FAILED_PRECONDITION (reason ETAG_MISMATCH) and changes
//! nothing.

use iggy_gateway::proto;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::spawn_app;

fn assert_grpc_etag_mismatch(status: &tonic::Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "ETAG_MISMATCH");
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
