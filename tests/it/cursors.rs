//! A cursor resumes exactly the subscription it came from: the same partitions, consumer and
//! strategy, on the same topic (not one deleted and created again, nor one purged since).

use std::time::Duration;

use iggy_gateway::proto;
use tonic::{Code, Streaming};

use crate::helpers::{TestApp, spawn_app};

/// Stream "rp", topic "t" with three partitions of ten messages each (`p0-0` … `p2-9`).
async fn three_partitions() -> TestApp {
    let app = spawn_app().await;
    app.create_stream("rp").await;
    app.create_topic("rp", "t", 3).await;
    for partition in 0..3 {
        let texts: Vec<String> = (0..10).map(|i| format!("p{partition}-{i}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        app.send_texts("rp", "t", partition, &texts).await;
    }
    app
}

fn request() -> proto::SubscribeRequest {
    proto::SubscribeRequest {
        stream: "rp".into(),
        topic: "t".into(),
        ..Default::default()
    }
}

/// The next `count` message texts, and the cursor of the last one.
async fn take(
    stream: &mut Streaming<proto::SubscribeResponse>,
    count: usize,
) -> (Vec<String>, String) {
    let mut texts = Vec::new();
    let mut cursor = String::new();
    while texts.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message in time")
            .expect("ok")
            .expect("open");
        if let Some(proto::subscribe_response::Event::Message(message)) = item.event {
            if let Some(proto::polled_message::Body::Text(text)) = message.body {
                texts.push(text);
            }
            cursor = item.cursor;
        }
    }
    (texts, cursor)
}

/// Nothing more arrives within a short wait (the subscription delivered all it should).
async fn nothing_more(stream: &mut Streaming<proto::SubscribeResponse>) {
    let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    if let Ok(Ok(Some(item))) = &more {
        assert!(
            !matches!(
                item.event,
                Some(proto::subscribe_response::Event::Message(_))
            ),
            "an unexpected message: {item:?}"
        );
    }
}

fn names(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn a_cursor_alone_resumes_its_one_partition_and_nothing_wider() {
    let app = three_partitions().await;
    let mut first = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(2),
            strategy: proto::PollingStrategy::First.into(),
            ..request()
        })
        .await
        .expect("subscribed");
    let (texts, cursor) = take(&mut first, 5).await;
    assert_eq!(texts, names("p2", 0..5));
    drop(first);

    let mut resumed = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            ..request()
        })
        .await
        .expect("resumed");
    assert_eq!(take(&mut resumed, 5).await.0, names("p2", 5..10));
    nothing_more(&mut resumed).await;
}

#[tokio::test]
async fn a_cursor_of_every_partition_resumes_them_all_where_each_stood() {
    let app = three_partitions().await;
    let mut first = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::First.into(),
            ..request()
        })
        .await
        .expect("subscribed");
    // The first round reads partition 0 first.
    let (texts, cursor) = take(&mut first, 4).await;
    assert_eq!(texts, names("p0", 0..4));
    drop(first);

    let mut resumed = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            ..request()
        })
        .await
        .expect("resumed");
    let (mut rest, _) = take(&mut resumed, 26).await;
    rest.sort();
    let mut expected = names("p0", 4..10);
    expected.extend(names("p1", 0..10));
    expected.extend(names("p2", 0..10));
    expected.sort();
    assert_eq!(
        rest, expected,
        "the rest of p0, and p1 and p2 from their start"
    );
    nothing_more(&mut resumed).await;
}

#[tokio::test]
async fn a_cursor_with_a_conflicting_scope_or_consumer_is_refused_naming_the_conflict() {
    let app = three_partitions().await;
    let mut one = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(2),
            consumer: "billing".into(),
            strategy: proto::PollingStrategy::First.into(),
            ..request()
        })
        .await
        .expect("subscribed");
    let (_, cursor) = take(&mut one, 1).await;
    drop(one);
    let refused = |request: proto::SubscribeRequest| {
        let app = &app;
        async move {
            app.subscribe(request)
                .await
                .expect_err("a conflicting resume is refused")
        }
    };
    let err = refused(proto::SubscribeRequest {
        cursor: cursor.clone(),
        partition_id: Some(1),
        ..request()
    })
    .await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("partition 2, not partition 1"),
        "{err:?}"
    );
    let err = refused(proto::SubscribeRequest {
        cursor: cursor.clone(),
        consumer: "shipping".into(),
        ..request()
    })
    .await;
    assert!(err.message().contains("consumer"), "{err:?}");
    let err = refused(proto::SubscribeRequest {
        cursor: cursor.clone(),
        topic: "other".into(),
        ..request()
    })
    .await;
    assert!(
        err.message().starts_with("cursor: was issued for rp/t"),
        "{err:?}"
    );

    // The consumer comes back with the cursor: naming it again, or not at all, both resume.
    let mut again = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            consumer: "billing".into(),
            partition_id: Some(2),
            commit_every: 1,
            ..request()
        })
        .await
        .expect("the same subscription resumes");
    assert_eq!(take(&mut again, 1).await.0, ["p2-1"]);
}

#[tokio::test]
async fn partitions_added_since_the_cursor_start_from_their_first_message() {
    let app = three_partitions().await;
    let mut first = app
        .subscribe(proto::SubscribeRequest {
            strategy: proto::PollingStrategy::Last.into(),
            ..request()
        })
        .await
        .expect("subscribed");
    app.send_texts("rp", "t", 1, &["p1-new"]).await;
    let (texts, cursor) = take(&mut first, 1).await;
    assert_eq!(texts, ["p1-new"]);
    drop(first);

    app.topics
        .clone()
        .create_partitions(proto::CreatePartitionsRequest {
            stream: "rp".into(),
            topic: "t".into(),
            partitions_count: 1,
        })
        .await
        .expect("a fourth partition");
    app.send_texts("rp", "t", 3, &["p3-0", "p3-1"]).await;
    let mut resumed = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            ..request()
        })
        .await
        .expect("resumed");
    assert_eq!(take(&mut resumed, 2).await.0, ["p3-0", "p3-1"]);
    nothing_more(&mut resumed).await;
}

#[tokio::test]
async fn a_cursor_is_refused_on_a_topic_created_again_or_purged_since() {
    let app = three_partitions().await;
    let mut first = app
        .subscribe(proto::SubscribeRequest {
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            ..request()
        })
        .await
        .expect("subscribed");
    let (_, cursor) = take(&mut first, 5).await;
    drop(first);

    app.topics
        .clone()
        .purge_topic(proto::PurgeTopicRequest {
            stream: "rp".into(),
            topic: "t".into(),
        })
        .await
        .expect("purged");
    let err = app
        .subscribe(proto::SubscribeRequest {
            cursor: cursor.clone(),
            ..request()
        })
        .await
        .expect_err("purged since");
    assert!(err.message().contains("purged"), "{err:?}");

    app.topics
        .clone()
        .delete_topic(proto::DeleteTopicRequest {
            stream: "rp".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect("deleted");
    app.create_topic("rp", "t", 3).await;
    let err = app
        .subscribe(proto::SubscribeRequest {
            cursor,
            ..request()
        })
        .await
        .expect_err("another topic under the same name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("deleted since"), "{err:?}");
}

#[tokio::test]
async fn over_sse_last_event_id_resumes_the_same_partition_and_conflicts_are_400() {
    let app = three_partitions().await;
    let base = "/v1/streams/rp/topics/t/messages:subscribe";
    let mut response = app
        .http1
        .get(app.url(&format!(
            "{base}?partition_id=2&strategy=POLLING_STRATEGY_FIRST"
        )))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sent");
    let mut text = String::new();
    while text.matches("event: message").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("in time")
            .expect("ok")
            .expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    let third = text
        .split("\n\n")
        .filter(|event| event.contains("event: message"))
        .nth(2)
        .expect("a third event");
    let id = third
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id")
        .to_owned();

    // Only the cursor: partition 2 resumes after p2-2, and no other partition appears.
    let mut resumed = app
        .http1
        .get(app.url(base))
        .header("accept", "text/event-stream")
        .header("last-event-id", &id)
        .send()
        .await
        .expect("sent");
    assert_eq!(resumed.status(), 200);
    let mut text = String::new();
    while text.matches("event: message").count() < 7 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resumed.chunk())
            .await
            .expect("in time")
            .expect("ok")
            .expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let delivered: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|json| json["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(delivered, names("p2", 3..10));

    let conflict = app
        .http1
        .get(app.url(&format!("{base}?partition_id=0")))
        .header("accept", "text/event-stream")
        .header("last-event-id", &id)
        .send()
        .await
        .expect("sent");
    assert_eq!(conflict.status(), 400);
    let problem: serde_json::Value = conflict.json().await.expect("a problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("partition 2, not partition 0")),
        "{problem}"
    );
}

/// Reads SSE message events from `path` until `count` have arrived; their texts and last id.
async fn sse_take(
    app: &TestApp,
    path: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> (Vec<String>, String) {
    let mut request = app
        .http1
        .get(app.url(path))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let mut response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200, "{path}");
    let mut text = String::new();
    while text.matches("event: message").count() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("in time")
            .expect("ok")
            .expect("more");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|event| event.contains("event: message"))
        .take(count)
        .collect();
    let texts = events
        .iter()
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|json| json["text"].as_str().map(str::to_owned))
        .collect();
    let id = events
        .last()
        .and_then(|event| event.lines().find_map(|l| l.strip_prefix("id: ")))
        .expect("an id")
        .to_owned();
    (texts, id)
}

async fn sse_refused(app: &TestApp, path: &str, last_event_id: &str) -> String {
    let response = app
        .http1
        .get(app.url(path))
        .header("accept", "text/event-stream")
        .header("last-event-id", last_event_id)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400, "{path}");
    let problem: serde_json::Value = response.json().await.expect("a problem");
    problem["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn over_sse_every_partition_resumes_new_partitions_start_first_and_conflicts_are_refused() {
    let app = three_partitions().await;
    let base = "/v1/streams/rp/topics/t/messages:subscribe";
    let (texts, id) = sse_take(
        &app,
        &format!("{base}?consumer=billing&strategy=POLLING_STRATEGY_FIRST"),
        None,
        4,
    )
    .await;
    assert_eq!(texts, names("p0", 0..4));

    app.topics
        .clone()
        .create_partitions(proto::CreatePartitionsRequest {
            stream: "rp".into(),
            topic: "t".into(),
            partitions_count: 1,
        })
        .await
        .expect("a fourth partition");
    app.send_texts("rp", "t", 3, &["p3-0"]).await;
    // The cursor alone: every partition, where each stood, and the new one from its start.
    let (mut rest, _) = sse_take(&app, base, Some(&id), 27).await;
    rest.sort();
    let mut expected = names("p0", 4..10);
    expected.extend(names("p1", 0..10));
    expected.extend(names("p2", 0..10));
    expected.push("p3-0".into());
    expected.sort();
    assert_eq!(rest, expected);

    let detail = sse_refused(&app, &format!("{base}?partition_id=1"), &id).await;
    assert!(
        detail.contains("every partition, not partition 1"),
        "{detail}"
    );
    let detail = sse_refused(&app, &format!("{base}?consumer=shipping"), &id).await;
    assert!(detail.contains("consumer"), "{detail}");

    app.topics
        .clone()
        .delete_topic(proto::DeleteTopicRequest {
            stream: "rp".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect("deleted");
    app.create_topic("rp", "t", 3).await;
    let detail = sse_refused(&app, base, &id).await;
    assert!(detail.contains("deleted since"), "{detail}");
}

/// Last-Event-ID is a stream's cursor only: a unary REST call that carries one (a browser's
/// fetch beside its EventSource, a proxy passing headers on) answers as it does without it.
#[tokio::test]
async fn a_unary_rest_call_with_a_last_event_id_answers_as_without_it() {
    let app = three_partitions().await;
    let (_, id) = sse_take(
        &app,
        "/v1/streams/rp/topics/t/messages:subscribe?partition_id=1&strategy=POLLING_STRATEGY_FIRST",
        None,
        2,
    )
    .await;
    let poll = "/v1/streams/rp/topics/t/messages?partition_id=1&strategy=first&count=5";
    let polled = |last_event_id: Option<&str>| {
        let mut request = app.http1.get(app.url(poll));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            (status, response.text().await.expect("a body"))
        }
    };
    let (status, without) = polled(None).await;
    assert_eq!(status, 200, "{without}");
    assert!(without.contains("p1-4"), "{without}");
    for last_event_id in [id.as_str(), "not-a-cursor"] {
        assert_eq!(polled(Some(last_event_id)).await, (200, without.clone()));
    }

    // A send with one stores its message and answers as any send does.
    for last_event_id in [id.as_str(), "not-a-cursor"] {
        let response = app
            .http1
            .post(app.url("/v1/streams/rp/topics/t/messages"))
            .header("last-event-id", last_event_id)
            .json(&serde_json::json!({
                "partition_id": 2,
                "messages": [{"text": format!("with {}", last_event_id.len())}],
            }))
            .send()
            .await
            .expect("sent");
        let status = response.status();
        let sent: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(status, 201, "{sent}");
        assert_eq!(sent["ids"].as_array().map(Vec::len), Some(1), "{sent}");
    }
    let (texts, _) = sse_take(
        &app,
        "/v1/streams/rp/topics/t/messages:subscribe?partition_id=2&strategy=POLLING_STRATEGY_OFFSET&offset=10",
        None,
        2,
    )
    .await;
    assert_eq!(texts, [format!("with {}", id.len()), "with 12".to_owned()]);
}
