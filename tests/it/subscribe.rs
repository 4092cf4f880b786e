//! Live subscriptions over gRPC, gRPC-Web, SSE and NDJSON, resumed with the one cursor.

use std::time::Duration;

use iggy_gateway::proto;
use prost::Message;
use serde_json::json;
use tonic::{Code, Streaming};

use crate::helpers::{TestApp, spawn_app, spawn_configured, texts};

async fn app_with_topic(app: TestApp) -> TestApp {
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    app
}

fn subscribe_request() -> proto::SubscribeRequest {
    proto::SubscribeRequest {
        stream: "orders".into(),
        topic: "created".into(),
        ..Default::default()
    }
}

/// The next message a subscription delivers, with its cursor (heartbeats passed over).
pub async fn next_message(
    stream: &mut Streaming<proto::SubscribeResponse>,
) -> (String, proto::PolledMessage) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message in time")
            .expect("ok")
            .expect("open");
        if let Some(proto::subscribe_response::Event::Message(message)) = item.event {
            return (item.cursor, message);
        }
    }
}

/// How a subscription ends, within `limit`: the status it ends with (messages and heartbeats
/// before it passed over; an end without a status fails the test).
pub async fn end_of(
    stream: &mut Streaming<proto::SubscribeResponse>,
    limit: Duration,
) -> tonic::Status {
    tokio::time::timeout(limit, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended without saying why"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("ends in time")
}

/// The next piece of a streamed HTTP answer, within five seconds.
async fn next_chunk(response: &mut reqwest::Response) -> bytes::Bytes {
    tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("in time")
        .expect("ok")
        .expect("more")
}

fn text_of(message: &proto::PolledMessage) -> String {
    match &message.body {
        Some(proto::polled_message::Body::Text(text)) => text.clone(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_sent_after_subscribing_arrive_in_order_and_resume_without_gaps_or_repeats() {
    let app = app_with_topic(spawn_app().await).await;
    let mut stream = app
        .subscribe(subscribe_request())
        .await
        .expect("subscribed");
    app.send_texts("orders", "created", 1, &["a", "b", "c"])
        .await;
    let mut cursor = String::new();
    for expected in ["a", "b"] {
        let (next_cursor, message) = next_message(&mut stream).await;
        assert_eq!(text_of(&message), expected);
        assert_eq!(message.partition_id, 1);
        cursor = next_cursor;
    }
    drop(stream); // a forced disconnect after "b"

    app.send_texts("orders", "created", 0, &["d"]).await;
    app.send_texts("orders", "created", 1, &["e"]).await;
    let mut resumed = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            ..subscribe_request()
        })
        .await
        .expect("resumed");
    let mut got = Vec::new();
    for _ in 0..3 {
        let (_, message) = next_message(&mut resumed).await;
        got.push((message.partition_id, text_of(&message)));
    }
    got.sort();
    assert_eq!(
        got,
        [
            (0, "d".to_owned()),
            (1, "c".to_owned()),
            (1, "e".to_owned())
        ]
    );
}

#[tokio::test]
async fn tampered_or_foreign_cursors_are_refused() {
    let app = app_with_topic(spawn_app().await).await;
    let err = app
        .subscribe(proto::SubscribeRequest {
            cursor: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ..subscribe_request()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    let other = spawn_configured(|c| {
        c.subscriptions.cursor_secret = Some("another-secret-also-32-bytes-long!".into())
    })
    .await;
    let other = app_with_topic(other).await;
    let mut stream = other
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    other.send_texts("orders", "created", 0, &["x"]).await;
    let (foreign, _) = next_message(&mut stream).await;
    let err = app
        .subscribe(proto::SubscribeRequest {
            cursor: foreign.clone(),
            ..subscribe_request()
        })
        .await
        .expect_err("signed with another key");
    assert_eq!(err.code(), Code::InvalidArgument);
    let rest = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages:subscribe"))
        .query(&[("cursor", foreign.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(rest.status(), 400);
}

#[tokio::test]
async fn heartbeats_report_where_each_partition_stands() {
    let app =
        app_with_topic(spawn_configured(|c| c.subscriptions.subscribe_heartbeat_ms = 100).await)
            .await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    let heartbeat = loop {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        if let Some(proto::subscribe_response::Event::Heartbeat(heartbeat)) = item.event {
            break heartbeat;
        }
    };
    let p0 = heartbeat
        .partitions
        .iter()
        .find(|p| p.partition_id == 0)
        .expect("partition 0");
    assert_eq!((p0.next_offset, p0.lag), (3, 0));
}

#[tokio::test]
async fn a_subscription_whose_topic_is_deleted_ends_with_not_found() {
    let app =
        app_with_topic(spawn_configured(|c| c.subscriptions.subscribe_heartbeat_ms = 100).await)
            .await;
    app.send_texts("orders", "created", 0, &["a"]).await;
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    let (_, message) = next_message(&mut stream).await;
    assert_eq!(message.offset, 0);
    let (status, body) = app.delete("/v1/streams/orders/topics/created").await;
    assert_eq!(status, 204, "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_heartbeat)) => {}
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream ends in time, not with heartbeats forever");
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("created"), "{ended:?}");
}

/// Reads the stream until it ends with an error, within a few seconds; no item it reads on the
/// way may mention `never`.
async fn ends_with(stream: &mut Streaming<proto::SubscribeResponse>, never: &str) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(item)) => {
                    let text = format!("{item:?}");
                    assert!(!text.contains(never), "delivered: {text}");
                }
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream ends in time")
}

#[tokio::test]
async fn a_topic_deleted_and_created_again_is_another_log_its_subscription_neither_reads_nor_commits()
 {
    let app =
        app_with_topic(spawn_configured(|c| c.subscriptions.subscribe_heartbeat_ms = 100).await)
            .await;
    app.send_texts("orders", "created", 0, &["old-1", "old-2"])
        .await;
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            consumer: "c1".into(),
            commit_every: 1,
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut stream).await.1.offset, 0);
    assert_eq!(next_message(&mut stream).await.1.offset, 1);
    let (status, body) = app.delete("/v1/streams/orders/topics/created").await;
    assert_eq!(status, 204, "{body}");
    app.create_topic("orders", "created", 2).await;
    // The new log fills up at once, past where the old one stood, and keeps moving, so the
    // subscription is never idle long enough for a heartbeat.
    let sending = async {
        for n in 0..40 {
            app.send_texts("orders", "created", 0, &[&format!("new-{n}")])
                .await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let ((), ended) = tokio::join!(sending, ends_with(&mut stream, "new-"));
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    // Followed by its ids, the topic it opened on is gone: the new one is never read.
    assert!(ended.message().contains("was deleted"), "{ended:?}");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing of the old subscription's was committed on the new topic.
    let (status, body) = app
        .get_json("/v1/streams/orders/topics/created/consumers/c1/offsets/0")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("stored_offset").is_none(), "{body}");
}

#[tokio::test]
async fn a_subscription_ends_when_its_stream_is_renamed_as_scopes_follow_names() {
    let app =
        app_with_topic(spawn_configured(|c| c.subscriptions.subscribe_heartbeat_ms = 100).await)
            .await;
    app.send_texts("orders", "created", 0, &["a"]).await;
    let id = app.get_json("/v1/streams/orders").await.1["stream"]["id"].to_string();
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            stream: id.clone(),
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut stream).await.1.offset, 0);
    // And one by name: it ends the same way, not as a stream not found.
    let mut by_name = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut by_name).await.1.offset, 0);
    let (status, body) = app
        .patch_json("/v1/streams/orders", serde_json::json!({"name": "finance"}))
        .await;
    assert_eq!(status, 200, "{body}");
    // (What is sent under the new name is never delivered: see the next test.)
    for stream in [&mut stream, &mut by_name] {
        let ended = ends_with(stream, "offset: 1").await;
        assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
        assert!(ended.message().contains("was renamed"), "{ended:?}");
    }
}

/// A rename or deletion made through this gateway is seen before the subscription delivers
/// anything more, not at its next periodic check (15 s by default here): what is sent under
/// the new name, or to a topic created again under the old one, is never delivered.
#[tokio::test]
async fn a_rename_through_the_gateway_ends_its_subscriptions_before_they_deliver_more() {
    let app = app_with_topic(spawn_app().await).await;
    app.send_texts("orders", "created", 0, &["a"]).await;
    let mut renamed = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut renamed).await.1.offset, 0);
    let started = std::time::Instant::now();
    let (status, body) = app
        .patch_json("/v1/streams/orders", serde_json::json!({"name": "finance"}))
        .await;
    assert_eq!(status, 200, "{body}");
    app.send_texts("finance", "created", 0, &["after-rename"])
        .await;
    let ended = ends_with(&mut renamed, "after-rename").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was renamed"), "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended at its check, not at once: {:?}",
        started.elapsed()
    );

    // A topic deleted and created again under its name, through the gateway.
    let (status, body) = app
        .post_json(
            "/v1/streams/finance/topics",
            serde_json::json!({"name": "ledger", "partitions_count": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    app.send_texts("finance", "ledger", 0, &["old"]).await;
    let mut recreated = app
        .subscribe(proto::SubscribeRequest {
            stream: "finance".into(),
            topic: "ledger".into(),
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut recreated).await.1.offset, 0);
    let (status, _) = app.delete("/v1/streams/finance/topics/ledger").await;
    assert_eq!(status, 204);
    let (status, body) = app
        .post_json(
            "/v1/streams/finance/topics",
            serde_json::json!({"name": "ledger", "partitions_count": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    app.send_texts("finance", "ledger", 0, &["new-log"]).await;
    let ended = ends_with(&mut recreated, "new-log").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
}

/// A purge starts the topic's offsets again at 0: a subscription reading on from where it
/// stood would skip the new log's first messages without a word, so it ends instead, as a
/// cursor from before a purge is refused.
#[tokio::test]
async fn a_purge_ends_the_subscriptions_of_its_topic_instead_of_letting_them_skip_the_new_log() {
    let app = app_with_topic(spawn_app().await).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    for offset in 0..3 {
        assert_eq!(next_message(&mut stream).await.1.offset, offset);
    }
    let purge = |path: &'static str| {
        let request = app.http1.post(app.url(path));
        async move { request.send().await.expect("sent").status().as_u16() }
    };
    assert_eq!(purge("/v1/streams/orders/topics/created:purge").await, 204);
    app.send_texts(
        "orders",
        "created",
        0,
        &["new-0", "new-1", "new-2", "new-3", "new-4"],
    )
    .await;
    let ended = ends_with(&mut stream, "new-").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was purged"), "{ended:?}");

    // A purge of the whole stream, too; one that finds the subscription at offset 0 skips
    // nothing, so that one reads on.
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut stream).await.1.offset, 0);
    let mut fresh = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(1),
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(purge("/v1/streams/orders:purge").await, 204);
    app.send_texts("orders", "created", 0, &["later-0", "later-1"])
        .await;
    let ended = ends_with(&mut stream, "later-").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was purged"), "{ended:?}");
    app.send_texts("orders", "created", 1, &["one"]).await;
    assert_eq!(next_message(&mut fresh).await.1.offset, 0);
}

/// Partitions deleted and created again start from offset 0 under the same ids. A
/// subscription that had read one ends rather than skip the new log's start, and commits
/// nothing into it; one that followed an empty one ends too, as the partition it followed is
/// gone. One of a partition that stays reads and commits on, and a deletion refused ends
/// nothing.
#[tokio::test]
async fn partitions_deleted_and_created_again_end_the_subscriptions_that_followed_them() {
    let app = app_with_topic(spawn_app().await).await;
    app.create_topic("orders", "audit", 2).await;
    app.send_texts("orders", "created", 1, &["old-0", "old-1", "old-2"])
        .await;
    app.send_texts("orders", "created", 0, &["kept-0"]).await;
    let mut reader = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(1),
            strategy: proto::PollingStrategy::First.into(),
            consumer: "cdp".into(),
            commit_every: 1,
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    for offset in 0..3 {
        assert_eq!(next_message(&mut reader).await.1.offset, offset);
    }
    let mut kept = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            consumer: "keep".into(),
            commit_every: 1,
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut kept).await.1.offset, 0);
    let mut idle = app
        .subscribe(proto::SubscribeRequest {
            topic: "audit".into(),
            partition_id: Some(1),
            strategy: proto::PollingStrategy::Last.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    let path = |topic: &str| format!("/v1/streams/orders/topics/{topic}/partitions");
    // Creation times within a second are one creation (Iggy's restarts move them): a partition
    // is told from one created again only later than that.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Refused (at least one partition must stay): nothing ends.
    for count in [0, 2, 5] {
        let (status, body) = app
            .delete(&format!("{}?partitions_count={count}", path("created")))
            .await;
        assert_eq!(status, 400, "{body}");
    }
    app.send_texts("orders", "created", 1, &["old-3"]).await;
    let (cursor, message) = next_message(&mut reader).await;
    assert_eq!(message.offset, 3);
    for topic in ["created", "audit"] {
        let (status, body) = app
            .delete(&format!("{}?partitions_count=1", path(topic)))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .post_json(&path(topic), json!({"partitions_count": 1}))
            .await;
        assert_eq!(status, 200, "{body}");
        let news: Vec<String> = (0..5).map(|n| format!("new-{n}")).collect();
        let news: Vec<&str> = news.iter().map(String::as_str).collect();
        app.send_texts("orders", topic, 1, &news).await;
    }
    let ended = ends_with(&mut reader, "new-").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(
        ended
            .message()
            .contains("had its partitions from 1 on deleted"),
        "{ended:?}"
    );
    let ended = ends_with(&mut idle, "new-").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(
        ended.message().contains("had partition 1 deleted"),
        "{ended:?}"
    );
    // Partition 0 stayed: its subscription reads on and commits what it delivers.
    app.send_texts("orders", "created", 0, &["kept-1"]).await;
    assert_eq!(next_message(&mut kept).await.1.offset, 1);
    drop((reader, kept));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.stored_offset("orders", "created", "cdp", 1).await, None);
    assert_eq!(
        app.stored_offset("orders", "created", "keep", 0).await,
        Some(1)
    );
    // Its cursor does not resume in the new partition 1, which would skip new-0 to new-3.
    let refused = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            ..subscribe_request()
        })
        .await
        .expect_err("another log");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("partition 1"), "{refused:?}");
}

#[tokio::test]
async fn sse_clients_get_events_with_the_cursor_as_id_and_resume_with_last_event_id() {
    let app = app_with_topic(spawn_app().await).await;
    app.send_texts("orders", "created", 0, &["a", "b"]).await;
    let url = app.url("/v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=POLLING_STRATEGY_FIRST");
    let mut response = app
        .http1
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while text.matches("event: message").count() < 2 {
        let chunk = next_chunk(&mut response).await;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    // The stream opens with its retry hint; the events follow.
    assert!(text.starts_with("retry: 2000\n\n"), "{text}");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|event| event.contains("event: message"))
        .collect();
    let first = events[0];
    let id_of = |event: &str| {
        event
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .expect("an id")
            .to_owned()
    };
    let (id, second_id) = (id_of(first), id_of(events[1]));
    let data: serde_json::Value = serde_json::from_str(
        first
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data"),
    )
    .expect("JSON data");
    assert_eq!(data["text"], "a");
    assert_eq!(data["offset"], "0");

    // Resuming after "a" with Last-Event-ID delivers "b" next.
    let mut resumed = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages:subscribe?partition_id=0"))
        .header("accept", "text/event-stream")
        .header("last-event-id", &id)
        .send()
        .await
        .expect("sent");
    let mut text = String::new();
    while !text.contains("event: message") {
        let chunk = next_chunk(&mut resumed).await;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("\"text\":\"b\""), "{text}");
    drop(resumed);

    // An EventSource reconnects to the URL it was opened with, which may name the cursor it
    // started from, and sends the newest id it saw: that one counts, so nothing is repeated.
    app.send_texts("orders", "created", 0, &["c"]).await;
    let opened_with = reqwest::Url::parse_with_params(
        &app.url("/v1/streams/orders/topics/created/messages:subscribe"),
        &[("partition_id", "0"), ("cursor", id.as_str())],
    )
    .expect("url");
    let mut reconnected = app
        .http1
        .get(opened_with)
        .header("accept", "text/event-stream")
        .header("last-event-id", &second_id)
        .send()
        .await
        .expect("sent");
    assert_eq!(reconnected.status(), 200);
    let mut text = String::new();
    while !text.contains("event: message") {
        let chunk = next_chunk(&mut reconnected).await;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("\"text\":\"c\""),
        "after b, not b again: {text}"
    );
}

#[tokio::test]
async fn ndjson_clients_get_one_json_object_per_line() {
    let app = app_with_topic(spawn_app().await).await;
    let mut response = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages:subscribe?partition_id=1"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    app.send_texts("orders", "created", 1, &["x", "y"]).await;
    let mut text = String::new();
    while text.lines().filter(|l| l.contains("\"message\"")).count() < 2 {
        let chunk = next_chunk(&mut response).await;
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|v: &serde_json::Value| v.get("message").is_some())
        .collect();
    assert_eq!(lines[0]["message"]["text"], "x");
    assert_eq!(lines[1]["message"]["text"], "y");
    assert!(lines[1]["cursor"].is_string());
}

#[tokio::test]
async fn grpc_web_clients_receive_the_stream_over_http1() {
    let app = app_with_topic(spawn_app().await).await;
    app.send_texts("orders", "created", 0, &["web"]).await;
    let body = proto::SubscribeRequest {
        partition_id: Some(0),
        strategy: proto::PollingStrategy::First.into(),
        ..subscribe_request()
    }
    .encode_to_vec();
    let framed = crate::helpers::grpc_frame(&body);
    let mut response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/Subscribe"))
        .header("content-type", "application/grpc-web+proto")
        .body(framed)
        .send()
        .await
        .expect("sent");
    let mut buffer = Vec::new();
    while buffer.len() < 5
        || buffer.len()
            < 5 + u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize
    {
        let chunk = next_chunk(&mut response).await;
        buffer.extend_from_slice(&chunk);
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    let item = proto::SubscribeResponse::decode(&buffer[5..5 + length]).expect("decodes");
    match item.event {
        Some(proto::subscribe_response::Event::Message(message)) => {
            assert_eq!(text_of(&message), "web")
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribers_beyond_the_limit_are_refused_and_shutdown_ends_streams() {
    let app = app_with_topic(spawn_configured(|c| c.subscriptions.max_subscribers = 1).await).await;
    let mut first = app
        .subscribe(subscribe_request())
        .await
        .expect("subscribed");
    let err = app
        .subscribe(subscribe_request())
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let rest = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages:subscribe"))
        .send()
        .await
        .expect("sent");
    assert_eq!(rest.status(), 429);

    let stopping = tokio::spawn(app.stop());
    let end = tokio::time::timeout(Duration::from_secs(5), first.message())
        .await
        .expect("the stream ends in time");
    let status = end.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    // With its reason, and when to come back.
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|info| info.reason.as_str()),
        Some("SHUTTING_DOWN")
    );
    assert!(details.retry_info().is_some(), "{status:?}");
    stopping.await.expect("stopped");
    let _ = texts;
}

#[tokio::test]
async fn one_client_cannot_take_every_subscription() {
    let app =
        app_with_topic(spawn_configured(|c| c.subscriptions.max_subscribers_per_client = 1).await)
            .await;
    let _first = app
        .subscribe(subscribe_request())
        .await
        .expect("subscribed");
    let err = app
        .subscribe(subscribe_request())
        .await
        .expect_err("second from the same IP");
    assert_eq!(err.code(), Code::ResourceExhausted);
    drop(_first);
    // The slot comes back once the first stream is gone.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(stream) = app.subscribe(subscribe_request()).await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some());
}

/// By count or by interval alone (one too long to come round): what was delivered is stored
/// when the subscriber leaves.
#[tokio::test]
async fn what_was_delivered_is_committed_when_the_subscriber_leaves() {
    let app = app_with_topic(spawn_app().await).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    for (consumer, commit_every, commit_interval_ms) in
        [("billing", 1000, 0), ("audit", 0, 3_600_000)]
    {
        let mut stream = app
            .subscribe(proto::SubscribeRequest {
                partition_id: Some(0),
                consumer: consumer.into(),
                strategy: proto::PollingStrategy::First.into(),
                commit_every,
                commit_interval_ms,
                ..subscribe_request()
            })
            .await
            .expect("subscribed");
        for _ in 0..3 {
            next_message(&mut stream).await;
        }
        drop(stream);
        let mut stored = None;
        for _ in 0..100 {
            let offset = app.stored_offset("orders", "created", consumer, 0).await;
            if offset.is_some() {
                stored = offset;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stored, Some(2), "{consumer}");
    }
}

/// `commit_every` counted end to end, at the broker seam: a subscription of both partitions
/// that is handed 100 messages of partition 0 stores partition 0's offset at most once every
/// 10 messages and once more when it ends (fewer when the pump ran ahead of its client, whose
/// position had not moved), and never partition 1's, where it read nothing.
#[tokio::test]
async fn a_subscription_stores_an_offset_at_most_once_every_commit_every_messages() {
    let app = app_with_topic(spawn_app().await).await;
    let bodies: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    app.send_texts("orders", "created", 0, &bodies).await;
    let stored_total = || async {
        crate::helpers::metric(
            &app.http1,
            &app.url(""),
            "iggy_gateway_backend_offsets_stored_total",
        )
        .await
    };
    let before = stored_total().await;
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            partition_id: None,
            consumer: "billing".into(),
            strategy: proto::PollingStrategy::First.into(),
            commit_every: 10,
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    for expected in 0..100 {
        let (_, message) = next_message(&mut stream).await;
        assert_eq!((message.partition_id, message.offset), (0, expected));
    }
    drop(stream);
    let mut stored = None;
    for _ in 0..100 {
        stored = app.stored_offset("orders", "created", "billing", 0).await;
        if stored == Some(99) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, Some(99), "all it was handed, stored when it ended");
    let stores = stored_total().await - before;
    assert!(
        (1.0..=11.0).contains(&stores),
        "{stores} offsets stored for 100 messages at commit_every 10"
    );
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 1).await,
        None,
        "nothing read on partition 1, nothing stored"
    );
}

#[tokio::test]
async fn an_sse_subscriber_that_hangs_up_gives_its_slot_back_at_once() {
    let app = app_with_topic(
        spawn_configured(|c| {
            c.subscriptions.max_subscribers_per_client = 1;
            // No heartbeat to find out the client is gone.
            c.subscriptions.subscribe_heartbeat_ms = 600_000;
        })
        .await,
    )
    .await;
    let url = app
        .url("/v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=first");
    let open = || {
        app.http1
            .get(url.clone())
            .header("accept", "text/event-stream")
            .send()
    };
    let mut first = open().await.expect("answered");
    assert_eq!(first.status(), 200);
    assert!(String::from_utf8_lossy(&next_chunk(&mut first).await).starts_with("retry:"));
    // An EventSource that lost its connection comes back at once; its old subscription must
    // not hold the client's only slot.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let response = open().await.expect("answered");
        if response.status() == 200 {
            again = Some(response);
            break;
        }
        assert_eq!(response.status(), 429);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot came back within a second");
}

/// Sixty-four messages of 100 KiB on partition 0, and `billing`'s subscription to them
/// (`commit_every` as given) from a client whose HTTP/2 windows hold less than one message, so
/// what the gateway has handed on is about what the client has read; it has read two.
async fn slow_reader(app: &TestApp, commit_every: u32) -> Streaming<proto::SubscribeResponse> {
    let big = "x".repeat(100 * 1024);
    let batch: Vec<&str> = (0..16).map(|_| big.as_str()).collect();
    for _ in 0..4 {
        app.send_texts("orders", "created", 0, &batch).await;
    }
    let channel = crate::helpers::narrow_channel(app.addr).await;
    let mut stream = proto::message_service_client::MessageServiceClient::new(channel)
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            consumer: "billing".into(),
            strategy: proto::PollingStrategy::First.into(),
            commit_every,
            ..subscribe_request()
        })
        .await
        .expect("subscribed")
        .into_inner();
    for expected in 0..2 {
        assert_eq!(next_message(&mut stream).await.1.offset, expected);
    }
    stream
}

#[tokio::test]
async fn commits_store_what_was_handed_to_the_client_not_what_waits_for_it() {
    let app = app_with_topic(spawn_app().await).await;
    let stream = slow_reader(&app, 1).await;
    // The client stops reading; the gateway reads ahead only as far as its buffer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = app
        .stored_offset("orders", "created", "billing", 0)
        .await
        .expect("committed while streaming");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_end = app
        .stored_offset("orders", "created", "billing", 0)
        .await
        .expect("committed at the end");
    // Two read, and what the connection holds between gateway and client; never the messages
    // still waiting in the subscription for the client to take them.
    assert!(
        stored >= 1 && stored <= at_end && at_end < 6,
        "stored {stored} while streaming, {at_end} at the end"
    );
    // The consumer's next subscription resumes after that, not after what it never got.
    let mut resumed = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            consumer: "billing".into(),
            strategy: proto::PollingStrategy::Next.into(),
            ..subscribe_request()
        })
        .await
        .expect("resubscribed");
    assert_eq!(next_message(&mut resumed).await.1.offset, at_end + 1);
}

/// A slow reader's subscription (`commit_every` as given) with the gateway's buffer full of the
/// old log when the topic is purged; the new log then grows past every old offset.
async fn purged_under_a_slow_reader(
    app: &TestApp,
    commit_every: u32,
) -> Streaming<proto::SubscribeResponse> {
    let stream = slow_reader(app, commit_every).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let purged = app
        .http1
        .post(app.url("/v1/streams/orders/topics/created:purge"))
        .send()
        .await
        .expect("sent");
    assert_eq!(purged.status(), 204);
    let small: Vec<String> = (0..80).map(|n| format!("new-{n}")).collect();
    let small: Vec<&str> = small.iter().map(String::as_str).collect();
    app.send_texts("orders", "created", 0, &small).await;
    stream
}

/// What a subscription read before a purge may still be on its way to a slow reader when the
/// purge comes: handed on after it, it is not committed, as its offsets are the old log's and
/// would make the consumer's next read skip the new log's start.
#[tokio::test]
async fn what_a_slow_reader_takes_after_a_purge_is_not_committed_into_the_new_log() {
    let app = app_with_topic(spawn_app().await).await;
    let mut stream = purged_under_a_slow_reader(&app, 1).await;
    // The client reads on: what was buffered may still come, then the end.
    let ended = ends_with(&mut stream, "new-").await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was purged"), "{ended:?}");
    drop(stream);
    nothing_committed(&app).await;
}

/// The same, with a client that goes before its subscription heard of the purge: the end's
/// own commit hears of it and stores nothing.
#[tokio::test]
async fn a_slow_reader_gone_after_a_purge_commits_nothing_into_the_new_log() {
    let app = app_with_topic(spawn_app().await).await;
    let stream = purged_under_a_slow_reader(&app, 1000).await;
    drop(stream);
    nothing_committed(&app).await;
}

/// Once the subscription's end has had time to commit, `billing` has no offset on the new log.
async fn nothing_committed(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 0).await,
        None,
        "an old log's offset was committed into the new one"
    );
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_instead_of_buffered() {
    let app = app_with_topic(
        spawn_configured(|c| {
            c.subscriptions.subscribe_slow_client_ms = 200;
            c.subscriptions.max_subscribers = 1;
        })
        .await,
    )
    .await;
    let big = "x".repeat(16 * 1024);
    let batch: Vec<&str> = (0..50).map(|_| big.as_str()).collect();
    for _ in 0..4 {
        app.send_texts("orders", "created", 0, &batch).await;
    }
    // Opens a stream and never reads from it.
    let stalled = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    // The only slot frees up once the gateway gives up on the reader.
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if app.subscribe(subscribe_request()).await.is_ok() {
            freed = true;
            break;
        }
    }
    assert!(freed, "the stalled subscription was dropped");
    drop(stalled);
}

#[tokio::test]
async fn commits_happen_on_a_timer_while_messages_flow() {
    let app = app_with_topic(spawn_app().await).await;
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            consumer: "timer".into(),
            strategy: proto::PollingStrategy::Next.into(),
            commit_interval_ms: 1,
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    app.send_texts("orders", "created", 0, &["a"]).await;
    next_message(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.send_texts("orders", "created", 0, &["b"]).await;
    next_message(&mut stream).await;
    // The stream is still open: the offset is stored while it runs, not at its end (once
    // the pump has buffered `b`, for `a` the client has taken).
    let mut stored = None;
    for _ in 0..50 {
        stored = app.stored_offset("orders", "created", "timer", 0).await;
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, Some(0), "committed while streaming");
    drop(stream);
}

#[tokio::test]
async fn streams_pass_the_same_auth_and_end_cleanly_over_sse_at_shutdown() {
    let app =
        spawn_configured(|c| c.auth.api_key = Some(iggy_gateway::config::ApiKeys::new(["k"])))
            .await;
    for (path, body) in [
        ("/v1/streams", serde_json::json!({"name": "orders"})),
        (
            "/v1/streams/orders/topics",
            serde_json::json!({"name": "created", "partitions_count": 1}),
        ),
    ] {
        let created = app
            .http1
            .post(app.url(path))
            .header("x-api-key", "k")
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(created.status(), 201);
    }
    let url = app.url("/v1/streams/orders/topics/created/messages:subscribe");
    let refused = app
        .http1
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 401);
    let mut request = tonic::Request::new(subscribe_request());
    let status = app.subscribe(request).await.expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    request = tonic::Request::new(subscribe_request());
    request.metadata_mut().insert(
        "x-api-key",
        tonic::metadata::MetadataValue::from_static("k"),
    );
    let _grpc = app.subscribe(request).await.expect("with the key");

    let mut sse = app
        .http1
        .get(&url)
        .header("accept", "text/event-stream")
        .header("x-api-key", "k")
        .header("x-request-id", "sse-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["x-request-id"], "sse-1");
    let stopping = tokio::spawn(app.stop());
    let mut text = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
        .await
        .expect("in time")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Named `problem`, not `error` (which EventSource would hand to onerror, unreadable), and
    // carrying the call's request id.
    assert!(text.starts_with("retry: 2000\n\n"), "{text}");
    assert!(!text.contains("event: error"), "{text}");
    let problem = text
        .split("\n\n")
        .find_map(|event| event.strip_prefix("event: problem\ndata: "))
        .unwrap_or_else(|| panic!("no problem event: {text}"));
    let problem: serde_json::Value = serde_json::from_str(problem).expect("a problem body");
    assert_eq!(problem["code"], "UNAVAILABLE", "{problem}");
    assert_eq!(problem["reason"], "SHUTTING_DOWN", "{problem}");
    assert_eq!(problem["request_id"], "sse-1", "{problem}");
    stopping.await.expect("stopped");
}

/// One 64 KiB text message for each of `count`, on partition 0 of orders/created.
async fn send_large(app: &TestApp, count: usize) {
    let text = "x".repeat(64 * 1024);
    let texts: Vec<&str> = (0..count).map(|_| text.as_str()).collect();
    app.send_texts("orders", "created", 0, &texts).await;
}

/// A gRPC `Subscribe` from partition 0's first message, framed for a raw HTTP/2 client.
fn subscribe_frame() -> Vec<u8> {
    let message = proto::SubscribeRequest {
        partition_id: Some(0),
        strategy: proto::PollingStrategy::First.into(),
        ..subscribe_request()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// An HTTP/2 subscriber that opens no window beyond the first 64 KiB (it never reads) is
/// given up on after `SUBSCRIBE_SLOW_CLIENT_MS`, and so is its connection: over HTTP/2
/// nothing else ends a stream whose client takes nothing, and a stream left open would keep
/// its buffer after its subscriber place was given back, so places could be taken again and
/// again while the memory stayed.
#[tokio::test]
async fn a_subscriber_that_opens_no_window_loses_its_connection_not_only_its_place() {
    let app = app_with_topic(
        spawn_configured(|c| {
            c.subscriptions.subscribe_slow_client_ms = 300;
            c.subscriptions.max_subscribers = 1;
        })
        .await,
    )
    .await;
    send_large(&app, 12).await;
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut h2 = h2.ready().await.expect("ready");
    let request = http::Request::post(app.url("/iggy.gateway.v1.MessageService/Subscribe"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = h2.send_request(request, false).expect("stream opened");
    body.send_data(subscribe_frame().into(), true)
        .expect("request sent");
    // Its answer starts; its body is never read, so its window stays shut.
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered")
        .expect("a response");
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the connection is closed once the subscriber is given up on");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Its place is free again, and nothing else was held: a new subscriber reads.
    let mut stream = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            partition_id: Some(0),
            ..subscribe_request()
        })
        .await
        .expect("subscribed");
    assert_eq!(next_message(&mut stream).await.1.offset, 0);
}

/// A streamed HTTP answer read to its end, within five seconds.
async fn read_to_end(mut response: reqwest::Response) -> String {
    let mut text = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = response.chunk().await.expect("ok") {
            text.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("ends in time");
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn a_subscription_ends_at_the_deadline_its_client_asked_for_on_every_protocol() {
    let app = app_with_topic(spawn_app().await).await;
    let opened = std::time::Instant::now();
    let mut request = tonic::Request::new(subscribe_request());
    request.set_timeout(Duration::from_millis(700));
    let mut grpc = app.subscribe(request).await.expect("subscribed");
    let ended = end_of(&mut grpc, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::DeadlineExceeded, "{ended:?}");
    assert!(
        ended.message().contains("deadline its client asked for"),
        "{ended:?}"
    );
    assert!(opened.elapsed() >= Duration::from_millis(650));

    let body = subscribe_request().encode_to_vec();
    let framed = crate::helpers::grpc_frame(&body);
    let web = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/Subscribe"))
        .header("content-type", "application/grpc-web+proto")
        .header("grpc-timeout", "700m")
        .body(framed)
        .send()
        .await
        .expect("sent");
    let text = read_to_end(web).await;
    assert!(text.contains("grpc-status:4"), "{text:?}");

    for accept in ["application/x-ndjson", "text/event-stream"] {
        let rest = app
            .http1
            .get(app.url("/v1/streams/orders/topics/created/messages:subscribe"))
            .header("accept", accept)
            .header("grpc-timeout", "700m")
            .send()
            .await
            .expect("sent");
        assert_eq!(rest.status(), 200);
        let text = read_to_end(rest).await;
        assert!(text.contains("DEADLINE_EXCEEDED"), "{accept}: {text}");
        assert!(text.contains("\"status\":504"), "{accept}: {text}");
    }
}
