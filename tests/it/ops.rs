//! Operator surfaces: /health, /ready, /stats, /metrics, and how the binary starts and stops.

use std::process::{Command, Stdio};

use iggy_gateway::proto;
use serde_json::Value;

use crate::{
    durability::Gateway,
    helpers::{TestApp, spawn_app, spawn_configured, text_message},
};

#[tokio::test]
async fn health_and_ready_keep_the_original_shapes() {
    let app = spawn_app().await;
    let health: Value = app
        .http1
        .get(app.url("/health"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["iggy_connected"], true);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        health["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let ready = app.http1.get(app.url("/ready")).send().await.expect("sent");
    assert_eq!(ready.status(), 200);
}

/// `/stats` once the cache has been refreshed after everything the test did (it is refreshed
/// every 100 ms in tests).
async fn fresh_stats(app: &TestApp) -> Value {
    let asked = std::time::SystemTime::now();
    for _ in 0..100 {
        let stats: Value = app
            .http1
            .get(app.url("/stats"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        let refreshed = stats["refreshed_at"]
            .as_str()
            .and_then(|t| t.parse::<prost_types::Timestamp>().ok())
            .and_then(|t| std::time::SystemTime::try_from(t).ok());
        if refreshed.is_some_and(|at| at > asked) {
            return stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the statistics were not refreshed within 5 s");
}

#[tokio::test]
async fn stats_count_streams_topics_and_traffic() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    app.poll_from("orders", "created", 0, 0, 2).await;
    let (status, _) = app.get_json("/v1/streams/missing").await;
    assert_eq!(status, 404);
    let stats = fresh_stats(&app).await;
    assert_eq!(stats["streams_count"], 1);
    assert_eq!(stats["topics_count"], 1);
    assert_eq!(stats["total_messages"], 3);
    assert_eq!(stats["messages_sent"], 3);
    assert_eq!(stats["messages_polled"], 2);
    assert_eq!(stats["messages_received"], 2);
    assert_eq!(stats["stale"], false);
    assert_eq!(stats["backend_reconnects"], 0);
    assert!(stats["uptime_seconds"].is_u64());
    // Four gRPC calls, and REST: the 404 and the /stats reads so far.
    assert_eq!(stats["calls_by_protocol"]["grpc"], 4);
    assert!(stats["calls_by_protocol"]["rest"].as_u64() >= Some(2));
    assert!(
        stats["errors"].as_u64() >= Some(1),
        "the 404 counts: {stats}"
    );

    // The same numbers over gRPC (GetStats) and over REST (/v1/stats, transcoded from it).
    let over_grpc = app
        .stats
        .clone()
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("GetStats")
        .into_inner();
    assert_eq!(over_grpc.streams_count, 1);
    assert_eq!(over_grpc.total_messages, 3);
    assert_eq!(over_grpc.messages_sent, 3);
    assert_eq!(over_grpc.messages_received, 2);
    assert!(!over_grpc.stale);
    assert!(over_grpc.refreshed_at.is_some());
    let (status, over_rest) = app.get_json("/v1/stats").await;
    assert_eq!(status, 200);
    assert_eq!(over_rest["streams_count"], 1);
    assert_eq!(over_rest["total_messages"], "3");
    assert_eq!(over_rest["messages_sent"], "3");
    assert_eq!(over_rest["stale"], false);
}

#[tokio::test]
async fn stats_answer_stale_while_the_backend_is_down() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let app = spawn_configured(|c| {
        c.backend.iggy_connection_string =
            Some(format!("iggy://iggy:iggy@127.0.0.1:{port}").into());
        c.backend.iggy_connect_wait_ms = 100;
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let response = app.http1.get(app.url("/stats")).send().await.expect("sent");
    assert_eq!(response.status(), 200, "no 503 while the backend is down");
    let stats: Value = response.json().await.expect("json");
    assert_eq!(stats["stale"], true);
    assert_eq!(stats["refreshed_at"], Value::Null);
    assert_eq!(stats["streams_count"], 0);
    let over_grpc = app
        .stats
        .clone()
        .get_stats(proto::GetStatsRequest {})
        .await
        .expect("GetStats answers while the backend is down")
        .into_inner();
    assert!(over_grpc.stale);
    assert_eq!(over_grpc.refreshed_at, None);
}

#[tokio::test]
async fn metrics_count_calls_by_protocol_route_and_status() {
    let app = spawn_configured(|c| {
        c.limits.rate_limit_rps = 1;
        c.limits.rate_limit_burst = 3;
    })
    .await;
    app.create_stream("orders").await;
    let _ = app
        .http1
        .get(app.url("/v1/streams/orders"))
        .send()
        .await
        .expect("sent");
    let _ = app
        .http1
        .get(app.url("/v1/streams/nope"))
        .send()
        .await
        .expect("sent");
    // Over the limit now.
    let _ = app
        .http1
        .get(app.url("/v1/streams"))
        .send()
        .await
        .expect("sent");
    let _ = app
        .http1
        .get(app.url("/v1/streams"))
        .send()
        .await
        .expect("sent");
    // Waits for the limiter to allow one more call: the scrape itself.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let text = app
        .http1
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_owned);
    assert!(
        line(r#"iggy_gateway_calls_total{protocol="grpc",route="/iggy.gateway.v1.StreamService/CreateStream",status="0"} 1"#).is_some(),
        "{text}"
    );
    assert!(
        line(r#"protocol="rest",route="GET /v1/streams/{stream}",status="200"} 1"#).is_some(),
        "{text}"
    );
    assert!(
        line(r#"protocol="rest",route="GET /v1/streams/{stream}",status="404"} 1"#).is_some(),
        "{text}"
    );
    assert!(
        line(r#"iggy_gateway_rejections_total{reason="RATE_LIMITED"}"#).is_some(),
        "{text}"
    );
    assert!(line("iggy_gateway_call_duration_seconds_bucket").is_some());
    assert!(line("iggy_gateway_backend_available 1").is_some(), "{text}");
}

#[test]
fn sigterm_stops_the_gateway_with_exit_code_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = Gateway::start(dir.path());
    let status = Command::new("kill")
        .args(["-TERM", &gateway.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    assert_eq!(gateway.wait().code(), Some(0));
}

/// SIGHUP, whose default would end the process, is taken and logged where there is nothing to
/// reload: the gateway goes on serving.
#[tokio::test]
async fn sighup_without_anything_to_reload_leaves_the_gateway_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let hup = Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    let client = reqwest::Client::new();
    let mut logged = false;
    for _ in 0..100 {
        logged = !gateway.logged("nothing to reload").is_empty();
        if logged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(logged, "the SIGHUP was logged");
    let health = client
        .get(format!("http://{}/health", gateway.addr))
        .send()
        .await
        .expect("still serving");
    assert_eq!(health.status(), 200);
    assert_eq!(gateway.terminate().await, Some(0));
}

/// A second SIGINT or SIGTERM while calls hold the drain (a health Watch, until
/// `SHUTDOWN_TIMEOUT`) ends the drain at once, with 128 + the signal's number, and still
/// closes the store.
#[tokio::test]
async fn a_second_stop_signal_exits_at_once_without_waiting_for_the_drain() {
    for (second, expected) in [("-INT", 130), ("-TERM", 143)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let gateway = Gateway::start(dir.path());
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connects");
        let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watching")
            .into_inner();
        watch.message().await.expect("first status").expect("one");
        let pid = gateway.pid().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        // The drain has begun when the watch hears NOT_SERVING.
        let not_serving = watch.message().await.expect("a status").expect("one");
        assert_eq!(
            not_serving.status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        );
        Command::new("kill")
            .args([second, &pid])
            .status()
            .expect("kill runs");
        let mut gateway = gateway;
        let code = tokio::task::spawn_blocking(move || gateway.wait().code())
            .await
            .expect("join");
        assert_eq!(code, Some(expected), "{second}");
        drop(watch);
        // The store was closed on the way out: opening it needs no repair.
        let repaired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noted = std::sync::Arc::clone(&repaired);
        redb::Database::builder()
            .set_repair_callback(move |_| noted.store(true, std::sync::atomic::Ordering::SeqCst))
            .create(dir.path().join("gateway.redb"))
            .expect("the store opens");
        assert!(
            !repaired.load(std::sync::atomic::Ordering::SeqCst),
            "{second}: the store was left to repair"
        );
    }
}

#[test]
fn help_lists_every_option_with_its_environment_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .arg("--help")
        .stdout(Stdio::piped())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for env in [
        "[env: HOST=]",
        "[env: RATE_LIMIT_RPS=]",
        "[env: API_KEY]",
        "[env: IGGY_STREAM=]",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(dir.path());
    let channel = gateway.channel_with_topic().await;

    // Four writers send until the gateway stops answering; every id it acknowledged is kept.
    let mut writers = Vec::new();
    for writer in 0..4 {
        let channel = channel.clone();
        writers.push(tokio::spawn(async move {
            let mut client = proto::message_service_client::MessageServiceClient::new(channel);
            let mut acknowledged = Vec::new();
            for batch in 0..10_000 {
                let messages = (0..20)
                    .map(|i| text_message(&format!("{writer}-{batch}-{i}")))
                    .collect();
                match client
                    .send_messages(proto::SendMessagesRequest {
                        stream: "orders".into(),
                        topic: "created".into(),
                        partitioning: None,
                        messages,
                    })
                    .await
                {
                    Ok(response) => acknowledged.extend(response.into_inner().ids),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut gateway = gateway;
    Command::new("kill")
        .args(["-TERM", &gateway.pid().to_string()])
        .status()
        .expect("kill runs");
    // Waits off the runtime: the test's client must keep answering the server's GOAWAY and
    // PING while the gateway drains, or the drain would run to SHUTDOWN_TIMEOUT.
    let exited = tokio::task::spawn_blocking(move || {
        let code = gateway.wait().code();
        (gateway, code)
    });
    let mut acknowledged = std::collections::HashSet::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    let (_gateway, code) = exited.await.expect("join");
    assert_eq!(code, Some(0), "a clean stop under load");
    assert!(!acknowledged.is_empty(), "the load ran before the stop");

    let gateway = Gateway::start(dir.path());
    let mut client = proto::message_service_client::MessageServiceClient::connect(format!(
        "http://{}",
        gateway.addr
    ))
    .await
    .expect("connects");
    let mut stored = std::collections::HashSet::new();
    let mut offset = 0;
    loop {
        let polled = client
            .poll_messages(proto::PollMessagesRequest {
                stream: "orders".into(),
                topic: "created".into(),
                strategy: proto::PollingStrategy::Offset.into(),
                offset: Some(offset),
                count: 1000,
                ..Default::default()
            })
            .await
            .expect("polled")
            .into_inner();
        if polled.messages.is_empty() {
            break;
        }
        offset += polled.messages.len() as u64;
        stored.extend(polled.messages.into_iter().map(|m| m.id));
    }
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());
    gateway.kill_hard();
}

#[tokio::test]
async fn metrics_port_serves_metrics_without_a_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = iggy_gateway::config::Config::for_tests(dir.path().display().to_string());
    config.telemetry.metrics_port = Some(0);
    config.auth.api_key = Some(iggy_gateway::config::ApiKeys::new(["k"]));
    let app = iggy_gateway::startup::Application::build(config)
        .await
        .expect("builds");
    let (main, metrics) = (
        app.local_addr(),
        app.metrics_addr().expect("a metrics port"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let scraped = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.expect("text");
    assert!(
        text.contains("iggy_gateway_backend_reconnects_total 0"),
        "{text}"
    );
    let guarded = http
        .get(format!("http://{main}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        guarded.status(),
        401,
        "the main port still asks for the key"
    );
    let _ = stop.send(());
    server.await.expect("joined").expect("stops cleanly");
}

#[tokio::test]
async fn spans_are_exported_over_otlp_as_children_of_the_callers_trace() {
    // A stand-in OTLP/HTTP collector that records what it receives.
    let (received, mut exports) = tokio::sync::mpsc::channel::<(String, bytes::Bytes)>(16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    let routes = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let received = received.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let _ = received.send((content_type, body)).await;
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, routes).await;
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_with(
        dir.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .get(format!("http://{}/v1/streams", gateway.addr))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 200);
    assert_eq!(gateway.terminate().await, Some(0));

    let (content_type, body) =
        tokio::time::timeout(std::time::Duration::from_secs(10), exports.recv())
            .await
            .expect("spans exported before exit")
            .expect("an export");
    assert_eq!(content_type, "application/x-protobuf");
    let wanted: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert!(
        body.windows(16).any(|window| window == wanted.as_slice()),
        "the exported span carries the caller's trace id"
    );
}
