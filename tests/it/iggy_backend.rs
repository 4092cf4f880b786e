//! The real Iggy backend. Without a server: the gateway starts anyway, reports not ready and
//! answers UNAVAILABLE at once. With `IGGY_TEST_CONNECTION_STRING` set (e.g.
//! `iggy://iggy:iggy@127.0.0.1:8090`), the same scenarios as the embedded backend run against it.

use std::time::{Duration, Instant};

use iggy_gateway::proto;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::{TestApp, spawn_configured, text_message};

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[tokio::test]
async fn without_iggy_the_gateway_serves_but_is_not_ready_and_fails_fast() {
    let port = closed_port();
    let app = spawn_configured(|c| {
        c.backend.iggy_connection_string =
            Some(format!("iggy://iggy:iggy@127.0.0.1:{port}").into());
        c.backend.iggy_connect_wait_ms = 300;
    })
    .await;

    let ready = app.http1.get(app.url("/ready")).send().await.expect("sent");
    assert_eq!(ready.status(), 503);
    let health: serde_json::Value = app
        .http1
        .get(app.url("/health"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(health["iggy_connected"], false);
    assert_eq!(health["status"], "degraded");
    let status = app
        .health
        .clone()
        .check(HealthCheckRequest {
            service: "iggy.gateway.v1.MessageService".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::NotServing);

    let started = Instant::now();
    let err = app
        .streams
        .clone()
        .list_streams(proto::ListStreamsRequest {})
        .await
        .expect_err("no backend");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    let rest = app
        .http1
        .get(app.url("/v1/streams"))
        .send()
        .await
        .expect("sent");
    assert_eq!(rest.status(), 503);
    assert!(rest.headers().get("retry-after").is_some());
}

#[test]
fn a_malformed_connection_string_exits_78() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .env("IGGY_CONNECTION_STRING", "http://not-iggy")
        .env("PORT", "0")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78));
}

/// Runs the real binary against `port` (nothing listening) with `env` on top, and returns its
/// exit code and output once it exits by itself (killed, and failed, after 20 s).
fn run_until_exit(port: u16, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_iggy-gateway"));
    command
        .env(
            "IGGY_CONNECTION_STRING",
            format!("iggy://iggy:iggy@127.0.0.1:{port}"),
        )
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("DATA_DIR", dir.path())
        .env("RECONNECT_BASE_DELAY_MS", "10")
        .env("RECONNECT_MAX_DELAY_MS", "20")
        .env("OPERATION_TIMEOUT_MS", "300")
        .env_remove("API_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waits").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[test]
fn a_backend_that_gave_up_for_good_stops_the_gateway_with_exit_69() {
    let (code, log) = run_until_exit(closed_port(), &[("MAX_RECONNECT_ATTEMPTS", "2")]);
    assert_eq!(code, Some(69), "{log}");
    assert!(log.contains("lost the backend for good"), "{log}");
    assert!(log.contains("MAX_RECONNECT_ATTEMPTS"), "{log}");
}

#[test]
fn an_unreachable_iggy_with_iggy_require_at_startup_exits_69_at_once() {
    let started = Instant::now();
    let (code, log) = run_until_exit(closed_port(), &[("IGGY_REQUIRE_AT_STARTUP", "true")]);
    assert_eq!(code, Some(69), "{log}");
    assert!(log.contains("IGGY_REQUIRE_AT_STARTUP"), "{log}");
    // Bounded by OPERATION_TIMEOUT_MS (300 ms here), not by any reconnection schedule.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn health_is_503_unavailable_once_the_backend_gave_up() {
    use iggy_gateway::{
        broker::{
            Broker,
            iggy::{IggyBroker, IggySettings},
        },
        metrics::Metrics,
        ops,
        stats::Stats,
    };
    use tower::ServiceExt;

    let broker = IggyBroker::start(IggySettings {
        connection_string: format!("iggy://iggy:iggy@127.0.0.1:{}", closed_port()),
        pool_size: 2,
        reconnect_base_delay: Duration::from_millis(10),
        reconnect_max_delay: Duration::from_millis(20),
        max_reconnect_attempts: 1,
        operation_timeout: Duration::from_millis(300),
        health_check_interval: Duration::from_secs(1),
        connect_wait: Duration::from_millis(100),
        send_batching: iggy_gateway::broker::iggy::SendBatching::default(),
        appends_idle: Duration::from_millis(500),
    });
    let mut gave_up = broker.gave_up();
    tokio::time::timeout(Duration::from_secs(10), gave_up.wait_for(|g| *g))
        .await
        .expect("gives up within 10 s")
        .expect("signal stays");
    let (broker, metrics): (std::sync::Arc<dyn Broker>, _) = (
        std::sync::Arc::new(broker),
        std::sync::Arc::new(Metrics::new()),
    );
    let stats = std::sync::Arc::new(Stats::new(
        std::sync::Arc::clone(&broker),
        std::sync::Arc::clone(&metrics),
    ));
    let router = ops::router(broker, metrics, stats);
    let response = router
        .oneshot(
            axum::http::Request::get("/health")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("answers");
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    let health: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(health["status"], "unavailable");
    assert_eq!(health["iggy_connected"], false);
}

/// The connection string of a real server for these tests, or a visible skip.
fn real_server() -> Option<String> {
    match std::env::var("IGGY_TEST_CONNECTION_STRING") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED: IGGY_TEST_CONNECTION_STRING is unset; no real Iggy server to test against"
            );
            None
        }
    }
}

async fn spawn_on_iggy(url: String) -> TestApp {
    spawn_on_iggy_with(url, |_| {}).await
}

async fn spawn_on_iggy_with(
    url: String,
    change: impl FnOnce(&mut iggy_gateway::config::Config),
) -> TestApp {
    let app = spawn_configured(|c| {
        c.backend.iggy_connection_string = Some(url.into());
        c.backend.iggy_connect_wait_ms = 10_000;
        change(c);
    })
    .await;
    let mut ready = false;
    for _ in 0..100 {
        if app
            .http1
            .get(app.url("/ready"))
            .send()
            .await
            .expect("sent")
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway connected to Iggy");
    app
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test]
async fn on_real_iggy_streams_topics_messages_and_offsets_behave_as_embedded() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy(url).await;
    let stream = unique("gw-test");
    let created = app.create_stream(&stream).await;
    assert_eq!(created.name, stream);
    let topic = app.create_topic(&stream, "created", 3).await;
    assert_eq!(topic.partitions_count, 3);
    assert_eq!(
        topic.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
        [0, 1, 2]
    );

    let dup = app
        .streams
        .clone()
        .create_stream(proto::CreateStreamRequest {
            name: stream.clone(),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(dup.code(), Code::AlreadyExists);
    let missing = app
        .streams
        .clone()
        .get_stream(proto::GetStreamRequest {
            stream: unique("missing"),
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);

    let ids = app
        .send_texts(&stream, "created", 1, &["m0", "m1", "m2"])
        .await;
    let polled = app.poll_from(&stream, "created", 1, 0, 10).await;
    assert_eq!(
        polled
            .messages
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(crate::helpers::texts(&polled), ["m0", "m1", "m2"]);
    assert_eq!(
        polled.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );

    let mut next = proto::PollMessagesRequest {
        stream: stream.clone(),
        topic: "created".into(),
        partition_id: 1,
        consumer: "billing".into(),
        strategy: proto::PollingStrategy::Next.into(),
        count: 2,
        auto_commit: true,
        ..Default::default()
    };
    assert_eq!(
        crate::helpers::texts(&app.poll(next.clone()).await),
        ["m0", "m1"]
    );
    next.count = 10;
    assert_eq!(crate::helpers::texts(&app.poll(next).await), ["m2"]);

    let offset = app
        .messages
        .clone()
        .get_consumer_offset(proto::GetConsumerOffsetRequest {
            stream: stream.clone(),
            topic: "created".into(),
            consumer: "billing".into(),
            partition_id: 1,
        })
        .await
        .expect("offset")
        .into_inner();
    assert_eq!(offset.stored_offset, Some(2));

    let mut keyed = proto::SendMessagesRequest {
        stream: stream.clone(),
        topic: "created".into(),
        partitioning: Some(proto::send_messages_request::Partitioning::PartitionKey(
            "k".into(),
        )),
        messages: vec![text_message("keyed")],
    };
    app.messages
        .clone()
        .send_messages(keyed.clone())
        .await
        .expect("keyed send");
    keyed.messages = vec![text_message("keyed again")];
    app.messages
        .clone()
        .send_messages(keyed)
        .await
        .expect("keyed send");

    app.streams
        .clone()
        .delete_stream(proto::DeleteStreamRequest {
            stream: stream.clone(),
            ..Default::default()
        })
        .await
        .expect("deleted");
}

#[tokio::test]
async fn on_real_iggy_a_poll_reads_within_poll_max_bytes_in_chunks_and_keeps_order() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy_with(url, crate::hostile::small_polls).await;
    let stream = unique("gw-chunks");
    crate::hostile::poll_within_budget(&app, &stream).await;
    app.streams
        .clone()
        .delete_stream(proto::DeleteStreamRequest {
            stream,
            ..Default::default()
        })
        .await
        .expect("deleted");
}

#[tokio::test]
async fn on_real_iggy_rest_and_events_work_too() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy(url).await;
    let stream = unique("gw-rest");
    let response = app
        .http1
        .post(app.url("/v1/streams"))
        .json(&serde_json::json!({"name": stream}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let response = app
        .http1
        .post(app.url(&format!("/v1/streams/{stream}/topics")))
        .json(&serde_json::json!({"name": "events", "partitions_count": 1}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let event = serde_json::json!({"id": "6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "event_type": "x",
        "timestamp": "2026-01-01T00:00:00Z", "payload": {"type": "Generic", "data": {"n": 1}}});
    let response = app
        .http1
        .post(app.url(&format!("/streams/{stream}/topics/events/messages")))
        .json(&serde_json::json!({"event": event}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let polled: serde_json::Value = app
        .http1
        .get(app.url(&format!(
            "/streams/{stream}/topics/events/messages?offset=0"
        )))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(polled["count"], 1);
    assert_eq!(polled["messages"][0]["event"], event);
    app.streams
        .clone()
        .delete_stream(proto::DeleteStreamRequest {
            stream,
            ..Default::default()
        })
        .await
        .expect("deleted");
}

#[tokio::test]
async fn on_real_iggy_etags_guard_changes_as_on_embedded() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy(url).await;
    let stream = unique("gw-etags");
    let created = app.create_stream(&stream).await;
    assert_eq!(
        created.etag,
        app.get_stream(&stream).await.etag,
        "a create answers the etag a read gives"
    );
    let topic = app.create_topic(&stream, "t", 1).await;
    assert_eq!(topic.etag, app.get_topic(&stream, "t").await.etag);
    app.send_texts(&stream, "t", 0, &["a"]).await;
    assert_eq!(
        topic.etag,
        app.get_topic(&stream, "t").await.etag,
        "counters are not in it"
    );

    let mut topics = app.topics.clone();
    let stale = topics
        .update_topic(proto::UpdateTopicRequest {
            stream: stream.clone(),
            topic: "t".into(),
            name: "mine".into(),
            etag: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(app.get_topic(&stream, "t").await.etag, topic.etag);
    let renamed = topics
        .update_topic(proto::UpdateTopicRequest {
            stream: stream.clone(),
            topic: "t".into(),
            name: "t2".into(),
            etag: topic.etag.clone(),
            ..Default::default()
        })
        .await
        .expect("current")
        .into_inner()
        .topic
        .expect("topic");
    assert_ne!(renamed.etag, topic.etag);
    let stale = topics
        .delete_topic(proto::DeleteTopicRequest {
            stream: stream.clone(),
            topic: "t2".into(),
            etag: topic.etag.clone(),
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    topics
        .delete_topic(proto::DeleteTopicRequest {
            stream: stream.clone(),
            topic: "t2".into(),
            etag: renamed.etag,
        })
        .await
        .expect("current");

    let mut streams = app.streams.clone();
    let stale = streams
        .delete_stream(proto::DeleteStreamRequest {
            stream: stream.clone(),
            etag: "nope".into(),
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    streams
        .delete_stream(proto::DeleteStreamRequest {
            stream,
            etag: created.etag,
        })
        .await
        .expect("current");
}

#[tokio::test]
async fn on_real_iggy_concurrent_unary_sends_share_sends_and_each_lands_once_in_its_callers_order()
{
    let Some(url) = real_server() else { return };
    // One connection, so calls queue behind the send on its way and coalesce.
    let app = spawn_on_iggy_with(url, |c| c.backend.iggy_pool_size = 1).await;
    let stream = unique("gw-coalesce");
    app.create_stream(&stream).await;
    app.create_topic(&stream, "unary", 1).await;
    let (callers, sends) = (16u32, 25u32);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let (mut client, stream) = (app.messages.clone(), stream.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for seq in 0..sends {
                let answer = client
                    .send_messages(proto::SendMessagesRequest {
                        stream: stream.clone(),
                        topic: "unary".into(),
                        partitioning: None,
                        messages: vec![text_message(&format!("{caller}/{seq}"))],
                    })
                    .await
                    .expect("sent")
                    .into_inner();
                assert_eq!(answer.ids.len(), 1);
                ids.push((format!("{caller}/{seq}"), answer.ids[0].clone()));
            }
            ids
        }));
    }
    let mut answered = std::collections::HashMap::new();
    for task in tasks {
        answered.extend(task.await.expect("caller ran"));
    }
    let total = (callers * sends) as usize;
    assert_eq!(answered.len(), total);

    let polled = app.poll_from(&stream, "unary", 0, 0, 1000).await;
    let texts = crate::helpers::texts(&polled);
    assert_eq!(texts.len(), total, "every call stored exactly once");
    let mut next_seq = vec![0u32; callers as usize];
    for (message, text) in polled.messages.iter().zip(&texts) {
        let (caller, seq) = text.split_once('/').expect("caller/seq");
        let (caller, seq): (usize, u32) =
            (caller.parse().expect("caller"), seq.parse().expect("seq"));
        assert_eq!(
            seq, next_seq[caller],
            "caller {caller}'s sends keep their order"
        );
        next_seq[caller] += 1;
        assert_eq!(
            answered[text], message.id,
            "each caller was answered its own id"
        );
    }

    let sends_made =
        crate::helpers::metric(&app.http1, &app.url(""), "iggy_gateway_backend_sends_total").await;
    let calls = crate::helpers::metric(
        &app.http1,
        &app.url(""),
        "iggy_gateway_backend_send_calls_total",
    )
    .await;
    assert!(calls >= total as f64, "calls {calls}");
    assert!(
        calls / sends_made > 1.0,
        "an Iggy send carried more than one call: {calls} calls in {sends_made} sends"
    );
    eprintln!("calls per Iggy send: {:.2}", calls / sends_made);
    app.streams
        .clone()
        .delete_stream(proto::DeleteStreamRequest {
            stream,
            ..Default::default()
        })
        .await
        .expect("deleted");
}

/// Iggy gives a deleted topic's id to the next topic created: a subscription that follows
/// the old one by id ends at its next check, and its commits never land on the new topic.
#[tokio::test]
async fn on_real_iggy_a_topic_created_again_under_its_id_ends_its_subscription_and_gets_no_commits()
{
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy_with(url, |c| c.subscriptions.subscribe_heartbeat_ms = 2_000).await;
    let stream = unique("gw-again");
    app.create_stream(&stream).await;
    app.create_topic(&stream, "t", 1).await;
    app.send_texts(&stream, "t", 0, &["old-1", "old-2"]).await;
    let mut subscription = app
        .subscribe(proto::SubscribeRequest {
            stream: stream.clone(),
            topic: "t".into(),
            partition_id: Some(0),
            strategy: proto::PollingStrategy::First.into(),
            consumer: "c1".into(),
            commit_every: 1,
            ..Default::default()
        })
        .await
        .expect("subscribed");
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), subscription.message())
            .await
            .expect("in time")
            .expect("a message")
            .expect("not the end");
    }
    let (status, body) = app.delete(&format!("/v1/streams/{stream}/topics/t")).await;
    assert_eq!(status, 204, "{body}");
    let again = app.create_topic(&stream, "t", 1).await;
    app.send_texts(&stream, "t", 0, &["new-0", "new-1", "new-2", "new-3"])
        .await;
    let ended = crate::subscribe::end_of(&mut subscription, Duration::from_secs(10)).await;
    assert_eq!(
        ended.code(),
        Code::NotFound,
        "{ended:?} (new id {})",
        again.id
    );
    drop(subscription);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, offset) = app
        .get_json(&format!(
            "/v1/streams/{stream}/topics/t/consumers/c1/offsets/0"
        ))
        .await;
    assert_eq!(status, 200, "{offset}");
    assert!(offset.get("stored_offset").is_none(), "{offset}");
    let (status, body) = app.delete(&format!("/v1/streams/{stream}")).await;
    assert_eq!(status, 204, "{body}");
}

/// Idle subscribers of a wide topic wait on the gateway's reads of the topic (Iggy announces
/// no appends) and still get every message sent while they were idle, on any partition.
#[tokio::test]
async fn on_real_iggy_idle_subscribers_of_a_wide_topic_get_what_is_sent_to_any_partition() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy_with(url, |c| c.subscriptions.subscribe_idle_poll_ms = 100).await;
    let stream = unique("gw-wide");
    app.create_stream(&stream).await;
    app.create_topic(&stream, "t", 16).await;
    let mut subscriptions = Vec::new();
    for _ in 0..5 {
        subscriptions.push(
            app.subscribe(proto::SubscribeRequest {
                stream: stream.clone(),
                topic: "t".into(),
                strategy: proto::PollingStrategy::First.into(),
                ..Default::default()
            })
            .await
            .expect("subscribed"),
        );
    }
    for (partition, text) in [(3, "three"), (11, "eleven"), (15, "fifteen")] {
        // Idle past the longest wait, so each message is seen by a read of the topic.
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.send_texts(&stream, "t", partition, &[text]).await;
    }
    for subscription in &mut subscriptions {
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(
                crate::subscribe::next_message(subscription)
                    .await
                    .1
                    .partition_id,
            );
        }
        got.sort_unstable();
        assert_eq!(got, [3, 11, 15]);
    }
    drop(subscriptions);
    let (status, body) = app.delete(&format!("/v1/streams/{stream}")).await;
    assert_eq!(status, 204, "{body}");
}

/// A new stream with topic `t` of `partitions`, two messages in `partition`, and a
/// subscription to that partition that has read them.
async fn reading_partition(
    app: &TestApp,
    prefix: &str,
    partitions: u32,
    partition: u32,
) -> (String, tonic::Streaming<proto::SubscribeResponse>) {
    let stream = unique(prefix);
    app.create_stream(&stream).await;
    app.create_topic(&stream, "t", partitions).await;
    app.send_texts(&stream, "t", partition, &["a", "b"]).await;
    let mut subscription = app
        .subscribe(proto::SubscribeRequest {
            stream: stream.clone(),
            topic: "t".into(),
            partition_id: Some(partition),
            strategy: proto::PollingStrategy::First.into(),
            ..Default::default()
        })
        .await
        .expect("subscribed");
    for _ in 0..2 {
        crate::subscribe::next_message(&mut subscription).await;
    }
    (stream, subscription)
}

/// A partition deleted under a subscription that waits on the topic's reads still ends it,
/// as a poll of the partition did before.
#[tokio::test]
async fn on_real_iggy_a_subscription_whose_partition_is_deleted_ends_not_found() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy_with(url, |c| c.subscriptions.subscribe_heartbeat_ms = 60_000).await;
    let (stream, mut subscription) = reading_partition(&app, "gw-shrink", 2, 1).await;
    app.topics
        .clone()
        .delete_partitions(proto::DeletePartitionsRequest {
            stream: stream.clone(),
            topic: "t".into(),
            partitions_count: 1,
        })
        .await
        .expect("deleted");
    let ended = crate::subscribe::end_of(&mut subscription, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    let (status, body) = app.delete(&format!("/v1/streams/{stream}")).await;
    assert_eq!(status, 204, "{body}");
}

/// A purge through the gateway ends a subscription that has read past offset 0 on Iggy too,
/// at once (its heartbeat, and so its periodic check, is a minute away).
#[tokio::test]
async fn on_real_iggy_a_purge_through_the_gateway_ends_the_subscriptions_that_read_past_0() {
    let Some(url) = real_server() else { return };
    let app = spawn_on_iggy_with(url, |c| c.subscriptions.subscribe_heartbeat_ms = 60_000).await;
    let (stream, mut subscription) = reading_partition(&app, "gw-purge", 1, 0).await;
    app.topics
        .clone()
        .purge_topic(proto::PurgeTopicRequest {
            stream: stream.clone(),
            topic: "t".into(),
        })
        .await
        .expect("purged");
    let ended = crate::subscribe::end_of(&mut subscription, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was purged"), "{ended:?}");
    let (status, body) = app.delete(&format!("/v1/streams/{stream}")).await;
    assert_eq!(status, 204, "{body}");
}
