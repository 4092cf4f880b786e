//! Faults between the gateway and Iggy, without a real server: a TCP proxy (`proxy.rs`) cuts,
//! stalls and delays the connections to a tiny fake Iggy (`fake_iggy.rs`). Readiness must
//! follow, callers must fail fast with UNAVAILABLE or DEADLINE_EXCEEDED, the pool must come
//! back within its backoff bound with no connection left behind, and polls must step past a
//! hole in Iggy's log. With `IGGY_TEST_CONNECTION_STRING`, the proxy also sits in front of the
//! real server, and no acknowledged message may be missing after the cuts.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use iggy_gateway::proto;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::{
    fake_iggy::FakeIggy,
    helpers::{TestApp, spawn_configured, text_message},
    proxy::Proxy,
};

const POOL: usize = 2;

/// A gateway on `url` with a quick pool: backoff 50–400 ms, calls bounded by 1 s, a ping
/// every 200 ms, callers waiting at most 200 ms for a connection.
async fn gateway(url: String) -> TestApp {
    let app = spawn_configured(|c| {
        c.backend.iggy_connection_string = Some(url.into());
        c.backend.iggy_pool_size = POOL as u32;
        c.backend.reconnect_base_delay_ms = 50;
        c.backend.reconnect_max_delay_ms = 400;
        c.backend.operation_timeout_ms = 1_000;
        c.backend.health_check_interval_ms = 200;
        c.backend.iggy_connect_wait_ms = 200;
    })
    .await;
    assert!(
        wait_for(Duration::from_secs(10), || async { ready(&app).await }).await,
        "the gateway connected"
    );
    app
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn ready(app: &TestApp) -> bool {
    let response = app.http1.get(app.url("/ready")).send().await.expect("sent");
    response.status() == 200
}

async fn grpc_serving(app: &TestApp) -> ServingStatus {
    app.health
        .clone()
        .check(HealthCheckRequest {
            service: "iggy.gateway.v1.MessageService".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

async fn send_one(app: &TestApp, stream: &str, text: &str) -> Result<String, tonic::Status> {
    app.messages
        .clone()
        .send_messages(proto::SendMessagesRequest {
            stream: stream.into(),
            topic: "t".into(),
            partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(0)),
            messages: vec![text_message(text)],
        })
        .await
        .map(|answer| answer.into_inner().ids.remove(0))
}

async fn stats(app: &TestApp) -> serde_json::Value {
    app.get_json("/stats").await.1
}

/// The payloads of polled messages as text (the fake stores bare bytes, no content type).
fn payloads(response: &proto::PollMessagesResponse) -> Vec<String> {
    response
        .messages
        .iter()
        .map(|m| match &m.body {
            Some(proto::polled_message::Body::Payload(bytes)) => {
                String::from_utf8_lossy(bytes).into_owned()
            }
            other => panic!("expected bytes, got {other:?}"),
        })
        .collect()
}

/// Fails a test unless the error is one a caller can retry on: the backend is away, or did
/// not answer in time.
fn retryable(status: &tonic::Status) {
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_connection_cut_mid_load_fails_callers_fast_then_the_pool_reconnects_without_leaks() {
    let fake = FakeIggy::start().await;
    let proxy = Proxy::start(fake.addr).await;
    let app = Arc::new(gateway(FakeIggy::url(proxy.addr)).await);
    assert_eq!(proxy.open(), POOL);

    // Four writers send one message at a time until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut acked, mut failed) = (0u32, Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match send_one(&app, "s", &format!("w{writer}-{n}")).await {
                        Ok(_) => acked += 1,
                        Err(status) => failed.push(status),
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(5), || async { fake.sends() >= 50 }).await,
        "load flows"
    );

    proxy.cut();
    assert!(
        wait_for(Duration::from_secs(5), || async { !ready(&app).await }).await,
        "/ready turns 503 once the connections are cut"
    );
    assert_eq!(grpc_serving(&app).await, ServingStatus::NotServing);
    let started = Instant::now();
    let refused = send_one(&app, "s", "while cut")
        .await
        .expect_err("no backend");
    let waited = started.elapsed();
    retryable(&refused);
    eprintln!(
        "a send while cut failed with {:?} after {waited:?}",
        refused.code()
    );

    let restored = Instant::now();
    proxy.pass();
    // Bound: one backoff at its ceiling (400 ms) plus a connect and a ping; generous for CI.
    assert!(
        wait_for(Duration::from_secs(5), || async { ready(&app).await }).await,
        "ready again after the proxy passes again"
    );
    eprintln!("ready again {:?} after the cut ended", restored.elapsed());
    assert_eq!(grpc_serving(&app).await, ServingStatus::Serving);

    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut failed) = (0, Vec::new());
    for writer in writers {
        let (a, f) = writer.await.expect("writer");
        acked += a;
        failed.extend(f);
    }
    assert!(acked > 0);
    failed.iter().for_each(retryable);
    eprintln!("{acked} sends acknowledged, {} refused", failed.len());
    send_one(&app, "s", "after").await.expect("sends again");

    // No connection left behind: the pool's, and only those, reach the server again.
    assert!(
        wait_for(Duration::from_secs(5), || async {
            fake.open() == POOL && proxy.open() == POOL
        })
        .await,
        "fake has {} and proxy {} connections open, pool is {POOL}",
        fake.open(),
        proxy.open()
    );
    // `/stats` is served from a cache a background task refreshes: waited for, not read once.
    assert!(
        wait_for(Duration::from_secs(5), || async {
            stats(&app).await["backend_reconnects"]
                .as_u64()
                .is_some_and(|reconnects| reconnects >= POOL as u64)
        })
        .await,
        "{}",
        stats(&app).await
    );
}

#[tokio::test]
async fn a_stalled_connection_ends_calls_with_deadline_exceeded_and_readiness_follows() {
    let fake = FakeIggy::start().await;
    let proxy = Proxy::start(fake.addr).await;
    let app = gateway(FakeIggy::url(proxy.addr)).await;
    send_one(&app, "s", "before").await.expect("sent");

    proxy.stall();
    let started = Instant::now();
    let stalled = send_one(&app, "s", "stalled").await.expect_err("held");
    retryable(&stalled);
    eprintln!(
        "a send on a stalled connection failed with {:?} after {:?}",
        stalled.code(),
        started.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(5), || async { !ready(&app).await }).await,
        "pings time out, so /ready turns 503"
    );
    let refused = send_one(&app, "s", "still stalled")
        .await
        .expect_err("held");
    retryable(&refused);

    proxy.pass();
    assert!(
        wait_for(Duration::from_secs(5), || async { ready(&app).await }).await,
        "ready again"
    );
    send_one(&app, "s", "after").await.expect("sends again");
    assert!(
        wait_for(Duration::from_secs(5), || async {
            fake.open() == POOL && proxy.open() == POOL
        })
        .await,
        "fake has {} and proxy {} connections open, pool is {POOL}",
        fake.open(),
        proxy.open()
    );
}

#[tokio::test]
async fn answers_slower_than_operation_timeout_end_in_deadline_exceeded_and_the_pool_recovers() {
    let fake = FakeIggy::start().await;
    let proxy = Proxy::start(fake.addr).await;
    let app = gateway(FakeIggy::url(proxy.addr)).await;

    fake.answer_sends_after(Duration::from_millis(1_500));
    let slow = send_one(&app, "s", "slow").await.expect_err("too slow");
    assert_eq!(slow.code(), Code::DeadlineExceeded, "{slow:?}");

    fake.answer_sends_after(Duration::ZERO);
    assert!(
        wait_for(Duration::from_secs(5), || async {
            send_one(&app, "s", "again").await.is_ok()
        })
        .await,
        "sends succeed once the server answers in time"
    );
    // The same, slowed on the way: every chunk held past the operation timeout.
    proxy.delay(Duration::from_millis(1_500));
    let slow = send_one(&app, "s", "slow").await.expect_err("too slow");
    retryable(&slow);
    proxy.pass();
    assert!(
        wait_for(Duration::from_secs(5), || async {
            send_one(&app, "s", "again").await.is_ok()
        })
        .await,
        "sends succeed once the network is quick again"
    );
    // The connections that timed out were rebuilt, not kept busy beside new ones.
    assert!(
        wait_for(Duration::from_secs(5), || async {
            fake.open() == POOL && proxy.open() == POOL
        })
        .await,
        "fake has {} and proxy {} connections open, pool is {POOL}",
        fake.open(),
        proxy.open()
    );
}

#[tokio::test]
async fn a_consumer_and_a_subscription_step_past_a_hole_iggy_cannot_read() {
    let fake = FakeIggy::start().await;
    // Ten messages; Iggy refuses to read offsets 3, 4 and 5.
    fake.hold(10, 3..6);
    let app = gateway(FakeIggy::url(fake.addr)).await;

    let next = proto::PollMessagesRequest {
        stream: "s".into(),
        topic: "t".into(),
        partition_id: 0,
        consumer: "billing".into(),
        strategy: proto::PollingStrategy::Next.into(),
        count: 100,
        auto_commit: true,
        ..Default::default()
    };
    // What lies before the hole comes first, in order, over as many polls as the backend's
    // reads split it into (a read spoiled by the hole is retried shorter).
    let mut before = Vec::new();
    let second = loop {
        let polled = app.poll(next.clone()).await;
        if polled.messages.first().is_some_and(|m| m.offset >= 3) {
            break polled;
        }
        assert!(
            !polled.messages.is_empty() && before.len() < 3,
            "polls before the hole answered {before:?}, then {:?}",
            payloads(&polled)
        );
        before.extend(payloads(&polled));
    };
    assert_eq!(before, ["m0", "m1", "m2"], "what lies before the hole");
    assert_eq!(
        payloads(&second),
        ["m6", "m7", "m8", "m9"],
        "stepped past it"
    );
    assert_eq!(
        second.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    assert_eq!(fake.stored(), Some(9), "the consumer moved past the hole");

    let stats = stats(&app).await;
    assert_eq!(stats["holes_skipped"], 1);
    assert_eq!(stats["offsets_skipped"], 3);
    let metrics = app
        .http1
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("iggy_gateway_backend_holes_skipped_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("iggy_gateway_backend_offsets_skipped_total 3"));

    // A subscription from the start reads the same messages and goes on after the hole.
    let mut stream = subscribe_first(&app).await;
    let mut offsets = Vec::new();
    while offsets.len() < 7 {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message in time")
            .expect("ok")
            .expect("open");
        if let Some(proto::subscribe_response::Event::Message(message)) = item.event {
            offsets.push(message.offset);
        }
    }
    assert_eq!(offsets, [0, 1, 2, 6, 7, 8, 9]);
}

/// A poll that commits answers what it committed past, even when the commit outlasts the
/// deadline the gateway holds it to: answering DEADLINE_EXCEEDED once the consumer has moved
/// would make its next poll skip what this one never delivered.
#[tokio::test]
async fn a_polls_commit_that_outlasts_its_deadline_still_answers_what_it_moved_past() {
    let fake = FakeIggy::start().await;
    fake.hold(6, 0..0);
    let app = spawn_configured(|c| {
        c.backend.iggy_connection_string = Some(FakeIggy::url(fake.addr).into());
        c.backend.iggy_pool_size = 1;
        // Longer than any wait below: what ends a stalled call here is the deadline.
        c.backend.operation_timeout_ms = 5_000;
        c.limits.request_timeout_ms = 400;
    })
    .await;
    assert!(
        wait_for(Duration::from_secs(10), || async { ready(&app).await }).await,
        "the gateway connected"
    );
    // Past the deadline, within REQUEST_TIMEOUT_MS more.
    fake.answer_commits_after(Duration::from_millis(600));
    // gRPC, held to the gateway's REQUEST_TIMEOUT_MS: three messages, committed.
    let poll = || async {
        let request = proto::PollMessagesRequest {
            stream: "s".into(),
            topic: "t".into(),
            partition_id: 0,
            consumer: "billing".into(),
            strategy: proto::PollingStrategy::Next.into(),
            count: 3,
            auto_commit: true,
            ..Default::default()
        };
        app.messages.clone().poll_messages(request).await
    };
    let polled = poll()
        .await
        .expect("answered with what it committed")
        .into_inner();
    assert_eq!(payloads(&polled), ["m0", "m1", "m2"]);
    assert_eq!(fake.stored(), Some(2));
    // REST, held to the `grpc-timeout` it sends: however short, a begun commit is waited for
    // the gateway's own timeout, not the client's.
    fake.answer_commits_after(Duration::from_millis(300));
    let answer = app
        .http1
        .get(app.url(
            "/v1/streams/s/topics/t/messages?partition_id=0&consumer=billing&strategy=next&count=3&auto_commit=true",
        ))
        .header("grpc-timeout", "50m")
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["messages"][0]["offset"], "3", "{body}");
    assert_eq!(fake.stored(), Some(5));
    // A poll whose deadline passes before it commits still ends with DEADLINE_EXCEEDED, and
    // moves nothing.
    fake.answer_polls_after(Duration::from_millis(600));
    fake.hold(9, 0..0);
    let late = poll().await.expect_err("past its deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fake.stored(), Some(5));
    // A commit stalled past the deadline and REQUEST_TIMEOUT_MS more is not waited for
    // without end: it is answered as any other stalled call.
    fake.answer_polls_after(Duration::ZERO);
    fake.answer_commits_after(Duration::from_millis(4_000));
    let started = std::time::Instant::now();
    let stalled = poll().await.expect_err("a stalled commit");
    assert_eq!(stalled.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_invalid_offset_refusal_names_the_offset_asked_for() {
    let fake = FakeIggy::start().await;
    fake.hold(3, 0..0);
    let app = gateway(FakeIggy::url(fake.addr)).await;
    let refused = app
        .messages
        .clone()
        .store_consumer_offset(proto::StoreConsumerOffsetRequest {
            stream: "s".into(),
            topic: "t".into(),
            consumer: "billing".into(),
            partition_id: 0,
            offset: Some(1000),
        })
        .await
        .expect_err("past the head");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("1000"), "{}", refused.message());
    assert!(
        !refused.message().contains("offset: 0"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn the_stats_say_what_the_backend_makes_of_an_acknowledgement() {
    let embedded = crate::helpers::spawn_app().await;
    let stats = stats(&embedded).await;
    assert_eq!(stats["backend_durability"], "fsync");

    // A store in memory keeps nothing, so it must not promise an fsync.
    let config = iggy_gateway::config::Config::for_tests(":memory:");
    let in_memory =
        crate::helpers::spawn_with(config, tempfile::tempdir().expect("temp dir")).await;
    let stats = self::stats(&in_memory).await;
    assert_eq!(stats["backend_durability"], "memory");
    assert!(
        stats["backend_durability_detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("lost when the gateway stops")),
        "{stats}"
    );

    // The fake does not show its configuration: the gateway says it cannot tell.
    let fake = FakeIggy::start().await;
    let app = gateway(FakeIggy::url(fake.addr)).await;
    let stats = self::stats(&app).await;
    assert_eq!(stats["backend_durability"], "unknown");
    assert!(
        stats["backend_durability_detail"]
            .as_str()
            .expect("text")
            .contains("enforce_fsync"),
        "{stats}"
    );
}

/// The real server's address and connection string, or a visible skip.
fn real_server() -> Option<(String, std::net::SocketAddr)> {
    let url = match std::env::var("IGGY_TEST_CONNECTION_STRING") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!(
                "SKIPPED: IGGY_TEST_CONNECTION_STRING is unset; no real Iggy server to test against"
            );
            return None;
        }
    };
    let host = url.rsplit('@').next().expect("host").trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .expect("resolves")
        .next()
        .expect("an address");
    let credentials = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').next());
    Some((credentials.expect("credentials").to_owned(), addr))
}

#[tokio::test]
async fn on_real_iggy_the_durability_settings_are_read_from_the_server() {
    let Some((credentials, addr)) = real_server() else {
        return;
    };
    let app = gateway(format!("iggy://{credentials}@{addr}")).await;
    let stats = stats(&app).await;
    let word = stats["backend_durability"].as_str().expect("word");
    assert!(
        ["server-fsync", "server-buffered"].contains(&word),
        "{stats}"
    );
    eprintln!("{}", stats["backend_durability_detail"]);
}

#[tokio::test]
async fn on_real_iggy_no_acknowledged_message_is_missing_after_cuts_mid_load() {
    let Some((credentials, addr)) = real_server() else {
        return;
    };
    let proxy = Proxy::start(addr).await;
    let app = Arc::new(gateway(format!("iggy://{credentials}@{}", proxy.addr)).await);
    let stream = format!("gw-faults-{}", uuid::Uuid::now_v7().simple());
    app.create_stream(&stream).await;
    app.create_topic(&stream, "t", 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (app, stop, stream) = (Arc::clone(&app), Arc::clone(&stop), stream.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match send_one(&app, &stream, &format!("w{writer}-{n}")).await {
                        Ok(id) => acked.push(id),
                        Err(status) => retryable(&status),
                    }
                }
                acked
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut();
        assert!(
            wait_for(Duration::from_secs(5), || async { !ready(&app).await }).await,
            "not ready while cut"
        );
        proxy.pass();
        assert!(
            wait_for(Duration::from_secs(10), || async { ready(&app).await }).await,
            "ready again"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = BTreeSet::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }

    let mut stored = BTreeSet::new();
    let mut offset = 0;
    loop {
        let polled = app.poll_from(&stream, "t", 0, offset, 1000).await;
        let Some(last) = polled.messages.last() else {
            break;
        };
        offset = last.offset + 1;
        stored.extend(polled.messages.iter().map(|m| m.id.clone()));
    }
    let missing: Vec<_> = acked.difference(&stored).collect();
    eprintln!(
        "{} acknowledged, {} stored (duplicates from re-sends are allowed), {} missing",
        acked.len(),
        stored.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
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
async fn idle_subscribers_of_one_topic_share_one_read_of_it_instead_of_polling_each() {
    const SUBSCRIBERS: usize = 20;
    let fake = FakeIggy::start().await;
    // Idle subscribers used to poll their partition every 20 ms, each.
    let (_app, mut streams) = parked_on_fake(&fake, SUBSCRIBERS).await;
    // Idle for fifty idle intervals: each subscriber polling on its own would poll fifty
    // times; following the topic's one read, none polls until something is appended.
    let (polls, reads) = (fake.polls(), fake.topic_reads());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (idle_polls, idle_reads) = (fake.polls() - polls, fake.topic_reads() - reads);
    assert!(
        idle_polls < SUBSCRIBERS as u64,
        "{idle_polls} polls by {SUBSCRIBERS} idle subscribers"
    );
    assert!(idle_reads > 0, "the topic is still read");
    // An append reaches every one of them.
    fake.append();
    for stream in &mut streams {
        assert_eq!(next_offset(stream).await, 1);
    }
}

#[tokio::test]
async fn a_subscriber_whose_poll_timed_out_tries_again_without_waiting_for_another_append() {
    let fake = FakeIggy::start().await;
    fake.hold(1, 0..0);
    let (_app, mut stream) =
        on_fake_subscribed(&fake, |c| c.backend.operation_timeout_ms = 200).await;
    assert_eq!(next_offset(&mut stream).await, 0);
    // The append is seen, but its poll times out; nothing is appended after it, so only a
    // retry (not a signal, and not the heartbeat 15 s away) delivers it.
    fake.answer_polls_after(Duration::from_millis(400));
    let polls = fake.polls();
    fake.append();
    assert!(
        wait_for(Duration::from_secs(5), || async { fake.polls() > polls }).await,
        "a poll was made and timed out"
    );
    fake.answer_polls_after(Duration::ZERO);
    assert_eq!(next_offset(&mut stream).await, 1);
}

#[tokio::test]
async fn a_subscription_waiting_on_its_topic_ends_when_its_partition_is_deleted() {
    let fake = FakeIggy::start().await;
    fake.hold(1, 0..0);
    let (_app, mut stream) = on_fake_subscribed(&fake, |_| {}).await;
    assert_eq!(next_offset(&mut stream).await, 0);
    // Parked, waiting on its signal; nothing is appended: only the topic's read tells the
    // partition is gone (the next check is a heartbeat, 15 s, away).
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.delete_partition();
    let ended = crate::subscribe::end_of(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
}

#[tokio::test]
async fn a_subscription_whose_topic_is_purged_elsewhere_ends_at_its_next_check() {
    let fake = FakeIggy::start().await;
    fake.hold(3, 0..0);
    let (_app, mut stream) =
        on_fake_subscribed(&fake, |c| c.subscriptions.subscribe_heartbeat_ms = 200).await;
    for offset in 0..3 {
        assert_eq!(next_offset(&mut stream).await, offset);
    }
    // Not through the gateway, so nothing announces it: the check at the next heartbeat
    // finds the partition behind where the subscription reads, though the new log has one.
    fake.purge();
    fake.append();
    let ended = crate::subscribe::end_of(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was purged"), "{ended:?}");
    assert!(ended.message().contains("before offset 3"), "{ended:?}");
}

#[tokio::test]
async fn renames_of_another_stream_cost_a_subscription_no_check() {
    const SUBSCRIBERS: usize = 10;
    const RENAMES: u64 = 5;
    let fake = FakeIggy::start().await;
    let (app, _streams) = parked_on_fake(&fake, SUBSCRIBERS).await;
    // Each rename of a stream these subscriptions do not follow reads the stream once (the
    // rename's answer); a check by every subscription would read it once more each.
    let reads = fake.stream_reads();
    for round in 0..RENAMES {
        app.streams
            .clone()
            .update_stream(proto::UpdateStreamRequest {
                stream: format!("other-{round}"),
                name: format!("other-{}", round + 1),
                ..Default::default()
            })
            .await
            .expect("renamed");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.stream_reads() - reads, RENAMES);
    // A rename of their own stream is checked by every one of them.
    let reads = fake.stream_reads();
    app.streams
        .clone()
        .update_stream(proto::UpdateStreamRequest {
            stream: "s".into(),
            name: "s".into(),
            ..Default::default()
        })
        .await
        .expect("renamed");
    assert!(
        wait_for(Duration::from_secs(5), || async {
            fake.stream_reads() - reads > SUBSCRIBERS as u64
        })
        .await,
        "{} stream reads",
        fake.stream_reads() - reads
    );
}

#[tokio::test]
async fn a_subscription_whose_topic_is_renamed_between_its_scope_check_and_its_start_is_refused() {
    let fake = FakeIggy::start().await;
    fake.hold(1, 0..0);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nname = \"t-reader\"\nsha256 = \"{}\"\nscopes = [\"read:s/t\"]\n",
            iggy_gateway::identity::hash_key("t-key")
        ),
    )
    .expect("keys");
    let url = FakeIggy::url(fake.addr);
    let app = spawn_configured(move |c| {
        c.backend.iggy_connection_string = Some(url.into());
        c.backend.iggy_pool_size = POOL as u32;
        c.backend.iggy_connect_wait_ms = 2_000;
        c.auth.api_keys_file = Some(file);
    })
    .await;
    assert!(
        wait_for(Duration::from_secs(10), || async { ready(&app).await }).await,
        "the gateway connected"
    );
    let subscribe = || {
        app.subscribe(crate::keys::keyed(
            "t-key",
            proto::SubscribeRequest {
                stream: "s".into(),
                topic: "t".into(),
                partition_id: Some(0),
                strategy: proto::PollingStrategy::First.into(),
                ..Default::default()
            },
        ))
    };
    let mut stream = subscribe().await.expect("in scope");
    assert_eq!(next_offset(&mut stream).await, 0);
    // The key's scope matches s/t by the names the request gives; the topic found by them is
    // now named u (renamed between the check and the subscription's reads, as in a race).
    fake.name_topic("u");
    let refused = subscribe().await.expect_err("renamed out of scope");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("renamed"), "{refused:?}");
}

/// The offset of the next message a subscription delivers.
async fn next_offset(stream: &mut tonic::Streaming<proto::SubscribeResponse>) -> u64 {
    crate::subscribe::next_message(stream).await.1.offset
}

/// A gateway on the fake with subscriptions that back off to 20 ms when idle, and a
/// subscription to its one partition from the first message.
async fn on_fake_subscribed(
    fake: &FakeIggy,
    change: impl FnOnce(&mut iggy_gateway::config::Config),
) -> (TestApp, tonic::Streaming<proto::SubscribeResponse>) {
    let url = FakeIggy::url(fake.addr);
    let app = spawn_configured(move |c| {
        c.backend.iggy_connection_string = Some(url.into());
        c.backend.iggy_pool_size = POOL as u32;
        c.backend.iggy_connect_wait_ms = 2_000;
        c.subscriptions.subscribe_idle_poll_ms = 20;
        change(c);
    })
    .await;
    assert!(
        wait_for(Duration::from_secs(10), || async { ready(&app).await }).await,
        "the gateway connected"
    );
    let stream = subscribe_first(&app).await;
    (app, stream)
}

/// `count` subscriptions to the fake's one message, each past it (so parked, waiting).
async fn parked_on_fake(
    fake: &FakeIggy,
    count: usize,
) -> (TestApp, Vec<tonic::Streaming<proto::SubscribeResponse>>) {
    fake.hold(1, 0..0);
    let (app, first) = on_fake_subscribed(fake, |_| {}).await;
    let mut streams = vec![first];
    while streams.len() < count {
        streams.push(subscribe_first(&app).await);
    }
    for stream in &mut streams {
        assert_eq!(next_offset(stream).await, 0);
    }
    (app, streams)
}

async fn subscribe_first(app: &TestApp) -> tonic::Streaming<proto::SubscribeResponse> {
    app.subscribe(proto::SubscribeRequest {
        stream: "s".into(),
        topic: "t".into(),
        partition_id: Some(0),
        strategy: proto::PollingStrategy::First.into(),
        ..Default::default()
    })
    .await
    .expect("subscribed")
}
