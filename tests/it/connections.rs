//! Connection-level limits: the connection cap, idle connections, and running out of file
//! descriptors, tried with real sockets against the real binary where the limit is the process's.

use std::time::Duration;

use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::{
    durability::Gateway,
    helpers::{metric, spawn_configured},
};

/// Opens `count` TCP connections and holds them without sending anything.
async fn hold_connections(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(
            TcpStream::connect(addr)
                .await
                .expect("the kernel completes the handshake"),
        );
    }
    held
}

/// Whether the server closed the connection (read returns end of file) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn running_out_of_descriptors_backs_off_logs_counts_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A connection cap above what 256 descriptors allow, so the kernel refuses first.
    let gateway = Gateway::start_with_open_files(
        256,
        dir.path(),
        &[
            ("MAX_CONNECTIONS", "100000".into()),
            ("CONNECTION_IDLE_TIMEOUT_MS", "600000".into()),
        ],
    );
    assert!(
        !gateway.logged("\"open_files_limit\":256").is_empty(),
        "the limit in force is logged at start-up"
    );
    // About 240 are accepted before descriptors run out; the rest wait in the backlog.
    let held = hold_connections(gateway.addr, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = gateway.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = gateway.cpu_ticks() - before;
    // A busy accept loop burns the whole 2 s (200 ticks); backing off uses almost nothing.
    assert!(
        used < 40,
        "{used} ticks of CPU in 2 s while out of descriptors"
    );
    let logged = gateway.logged("cannot accept connections");
    assert!(!logged.is_empty(), "the failure is logged");
    assert!(logged[0].contains("Too many open files"), "{}", logged[0]);
    assert!(
        logged.len() <= 2,
        "logged at most once per interval: {logged:?}"
    );

    drop(held);
    let client = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(response) = client.get(format!("{base}/health")).send().await {
            answered = response.status().is_success();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "serves again once the connections are gone");
    assert!(metric(&client, &base, "iggy_gateway_accept_errors_total").await > 0.0);
    gateway.kill_hard();
}

#[tokio::test]
async fn the_default_connection_cap_keeps_descriptors_for_the_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_with_open_files(
        256,
        dir.path(),
        &[
            ("CONNECTION_IDLE_TIMEOUT_MS", "600000".into()),
            // Every connection here comes from one client.
            ("MAX_CONNECTIONS_PER_CLIENT", "1000".into()),
        ],
    );
    assert!(
        !gateway.logged("\"max_connections\":192").is_empty(),
        "a quarter of 256 descriptors is kept back"
    );
    let mut held = hold_connections(gateway.addr, 300).await;
    // The last ones were over the cap: closed on arrival.
    let mut refused = 0;
    for stream in held.iter_mut().rev().take(100) {
        if closed_within(stream, Duration::from_secs(2)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 100, "every connection over the cap is closed");
    assert!(
        gateway.logged("cannot accept connections").is_empty(),
        "never out of descriptors"
    );
    assert!(
        !gateway
            .logged("MAX_CONNECTIONS connections are open")
            .is_empty()
    );

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);
    assert!(metric(&client, &base, "iggy_gateway_connections_refused_total").await >= 100.0);
    gateway.kill_hard();
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_on_arrival() {
    let app = spawn_configured(|config| config.limits.max_connections = Some(3)).await;
    // The test app's own gRPC channel holds one connection.
    let mut held = hold_connections(app.addr, 2).await;
    let mut over = TcpStream::connect(app.addr).await.expect("handshake");
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(100)).await);
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let base = app.url("");
    assert_eq!(
        metric(&app.http1, &base, "iggy_gateway_connections_refused_total").await,
        1.0
    );
}

/// A connection to `addr` from `source` (any 127/8 address is this machine's loopback, so
/// each stands for another client).
async fn connect_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("a loopback source address");
    socket.connect(addr).await.expect("handshake")
}

/// Whether `stream` is served: a plain HTTP/1.1 `/health` answered 200.
async fn answers_health(stream: &mut TcpStream) -> bool {
    tokio::io::AsyncWriteExt::write_all(stream, b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("request written");
    let mut answer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await;
    matches!(read, Ok(Ok(n)) if answer[..n].starts_with(b"HTTP/1.1 200"))
}

// One client opening connections until every place is taken shuts every other client out:
// past its own cap, its connections are closed on arrival while others still get in.
#[tokio::test]
async fn a_client_over_its_connection_cap_is_closed_on_arrival_while_others_connect() {
    let app = spawn_configured(|config| {
        config.limits.max_connections = Some(100);
        config.limits.max_connections_per_client = Some(3);
        config.edge.trusted_proxies = vec!["127.0.0.4/32".parse().expect("net")];
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", app.addr).await);
    }
    let mut over = connect_from("127.0.0.2", app.addr).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "the fourth from one client is closed"
    );
    for stream in &mut held {
        assert!(answers_health(stream).await, "the first three are served");
    }
    let mut other = connect_from("127.0.0.3", app.addr).await;
    assert!(answers_health(&mut other).await, "another client gets in");
    // A trusted proxy carries many clients: its connections are not counted.
    let mut proxied = Vec::new();
    for _ in 0..5 {
        proxied.push(connect_from("127.0.0.4", app.addr).await);
    }
    for stream in &mut proxied {
        assert!(answers_health(stream).await, "a trusted proxy's connection");
    }
    // A closed connection gives its client's place back.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.2", app.addr).await;
    assert!(answers_health(&mut again).await, "a place came back");
    let mut over = connect_from("127.0.0.2", app.addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(2)).await);

    let base = app.url("");
    assert_eq!(
        metric(
            &app.http1,
            &base,
            "iggy_gateway_connections_refused_per_client_total"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&app.http1, &base, "iggy_gateway_connections_refused_total").await,
        0.0,
        "none refused for want of a place under MAX_CONNECTIONS"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    let app = spawn_configured(|config| config.limits.connection_idle_timeout_ms = 300).await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;

    // A connection that never sends a byte (slowloris before the first request).
    let mut silent = TcpStream::connect(app.addr).await.expect("handshake");
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);

    // A keep-alive connection after its request was answered.
    let mut kept_alive = TcpStream::connect(app.addr).await.expect("handshake");
    tokio::io::AsyncWriteExt::write_all(
        &mut kept_alive,
        b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n",
    )
    .await
    .expect("request sent");
    let mut answer = vec![0u8; 4096];
    let read = kept_alive.read(&mut answer).await.expect("answer");
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut kept_alive, Duration::from_secs(3)).await);

    // A live subscription is a call in flight: its connection stays open past the timeout.
    let mut subscription = app
        .http1
        .get(app.url(
            "/v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=POLLING_STRATEGY_FIRST",
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("subscribed");
    assert!(subscription.status().is_success());
    tokio::time::sleep(Duration::from_millis(900)).await;
    app.send_texts("orders", "created", 0, &["after the idle timeout"])
        .await;
    // The stream opens with its retry hint; the message follows.
    let mut text = String::new();
    while !text.contains("after the idle timeout") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), subscription.chunk())
            .await
            .expect("the subscription still delivers")
            .expect("a chunk")
            .expect("not the end");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn headers_that_trickle_in_are_cut_off_at_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_configured(|config| config.limits.header_read_timeout_ms = 300).await;
    let mut slow = TcpStream::connect(app.addr).await.expect("handshake");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .expect("first lines");
    // One more byte every 100 ms: never idle, never a whole request.
    let dripping = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), dripping)
        .await
        .expect("the gateway stops reading before the drip ends");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_) | Err(_))),
        "the connection is closed"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "no answer to a request that never arrived"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout_not_the_idle_one() {
    let app = spawn_configured(|config| config.limits.header_read_timeout_ms = 300).await;
    let mut silent = TcpStream::connect(app.addr).await.expect("connects");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("closed well before the idle timeout (60 s)");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the header read timeout: {:?}",
        started.elapsed()
    );
    // Part of the HTTP/2 preface says nothing yet: the same deadline holds.
    use tokio::io::AsyncWriteExt;
    let mut partial = TcpStream::connect(app.addr).await.expect("connects");
    partial
        .write_all(b"PRI * HT")
        .await
        .expect("part of a preface");
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), partial.read_to_end(&mut rest))
        .await
        .expect("closed well before the idle timeout (60 s)");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A client that speaks, however late within the timeout, is served.
    let mut late = TcpStream::connect(app.addr).await.expect("connects");
    tokio::time::sleep(Duration::from_millis(150)).await;
    late.write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    late.read_to_end(&mut answer).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_request_body_that_never_ends_is_cut_off_at_the_request_timeout() {
    let app = spawn_configured(|config| config.limits.request_timeout_ms = 500).await;
    let tcp = TcpStream::connect(app.addr).await.expect("connects");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.expect("ready");
    let request = http::Request::post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    // Headers sent, body left open: the slowloris of HTTP/2.
    let (response, _body) = h2.send_request(request, false).expect("stream opened");
    let response = tokio::time::timeout(Duration::from_secs(3), response)
        .await
        .expect("answered before the client gives up")
        .expect("a response");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("4"),
        "DEADLINE_EXCEEDED: {response:?}"
    );
}

#[tokio::test]
async fn a_call_that_outlives_the_idle_timeout_costs_no_cpu_while_it_waits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_with(dir.path(), &[("CONNECTION_IDLE_TIMEOUT_MS", "100".into())]);
    gateway.channel_with_topic().await;
    let client = reqwest::Client::new();
    // Two live subscriptions, each a call in flight far longer than the idle timeout.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(format!(
                "http://{}/v1/streams/orders/topics/created/messages:subscribe",
                gateway.addr
            ))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("subscribed");
        assert!(response.status().is_success());
        streams.push(response);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gateway.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = gateway.cpu_ticks() - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in 2 s with two idle streams open"
    );
    drop(streams);
    gateway.kill_hard();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_at_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_configured(|config| config.limits.connection_write_timeout_ms = 300).await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    // Far more than the kernel's socket buffers hold on both sides.
    let big = "x".repeat(256 * 1024);
    let batch: Vec<&str> = (0..8).map(|_| big.as_str()).collect();
    for _ in 0..8 {
        app.send_texts("orders", "created", 0, &batch).await;
    }
    let base = app.url("");
    let open = || metric(&app.http1, &base, "iggy_gateway_connections_open");
    let before = open().await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stalled = socket.connect(app.addr).await.expect("connects");
    stalled
        .write_all(
            b"GET /v1/streams/orders/topics/created/messages:subscribe?partition_id=0&strategy=first HTTP/1.1\r\n\
              Host: gateway\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .expect("request sent");
    // Never read: the gateway's writes stall once the buffers between are full.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(open().await, before + 1.0, "the stalled connection is open");
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if open().await == before {
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection was closed once its writes stalled");
    drop(stalled);
}

#[tokio::test]
async fn a_connection_whose_client_opens_no_window_for_its_answers_is_closed() {
    let app = spawn_configured(|c| {
        c.limits.connection_write_timeout_ms = 400;
    })
    .await;
    // Whatever their size: an answer is never reported ended before it was asked for its end,
    // which a stream without a window never is.
    for paths in [
        &["/openapi.json"][..],
        &["/health", "/health", "/ready"][..],
    ] {
        let started = std::time::Instant::now();
        // No window: the gateway may send headers, never a byte of a body.
        let (connection, _open) = crate::helpers::window_of(&app, 0, paths, "zstd").await;
        let ended = tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .unwrap_or_else(|_| panic!("{paths:?}: still open"));
        assert!(ended.is_ok(), "{ended:?}");
        assert!(started.elapsed() >= Duration::from_millis(350), "{paths:?}");
    }
    // A client that reads is served as before.
    let (status, _) = (
        app.http1
            .get(app.url("/openapi.json"))
            .send()
            .await
            .expect("sent")
            .status(),
        (),
    );
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_request_head_past_64_kib_is_refused_as_it_arrives() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_configured(|_| {}).await;
    let mut stream = TcpStream::connect(app.addr).await.expect("connected");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nx-padding: ")
        .await
        .expect("sent");
    // A head that never ends, 100 KiB of one header: refused once past the buffer, not held
    // until the header read timeout.
    let _ = stream.write_all(&vec![b'a'; 100 * 1024]).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
        .await
        .expect("answered or closed at once");
    let head = String::from_utf8_lossy(&answer);
    assert!(
        read.is_err() || head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "{head}"
    );
}

#[tokio::test]
async fn the_metrics_port_holds_its_own_few_connections_to_the_same_timeouts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = iggy_gateway::config::Config::for_tests(dir.path().display().to_string());
    config.telemetry.metrics_port = Some(0);
    config.limits.header_read_timeout_ms = 300;
    let app = iggy_gateway::startup::Application::build(config)
        .await
        .expect("builds");
    let metrics = app.metrics_addr().expect("a metrics port");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let places = iggy_gateway::startup::METRICS_MAX_CONNECTIONS;
    let mut held = hold_connections(metrics, places + 4).await;
    // Past its places, closed on arrival; the rest, saying nothing, at the header timeout.
    let mut over = held.split_off(places);
    for stream in &mut over {
        assert!(closed_within(stream, Duration::from_millis(200)).await);
    }
    let started = std::time::Instant::now();
    for stream in &mut held {
        assert!(closed_within(stream, Duration::from_secs(3)).await);
    }
    assert!(started.elapsed() >= Duration::from_millis(50));
    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("sent");
    assert_eq!(scraped.status(), 200);
    let _ = stop.send(());
    server.await.expect("joined").expect("stops cleanly");
}

#[tokio::test]
async fn an_answer_given_before_the_body_is_read_closes_the_connection_without_cutting_off_the_client()
 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let app = spawn_configured(|c| {
        c.auth.api_key = Some(iggy_gateway::config::ApiKeys::new(["right"]));
    })
    .await;
    for path in ["/v1/streams", "/iggy.gateway.v1.StreamService/CreateStream"] {
        let stream = TcpStream::connect(app.addr).await.expect("connected");
        let (read, mut write) = stream.into_split();
        let mut read = tokio::io::BufReader::new(read);
        let body = vec![b'x'; 64 * 1024];
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: wrong\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        write.write_all(head.as_bytes()).await.expect("head sent");
        // Refused from its head alone, before any of the body is sent.
        let mut answer = Vec::new();
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line))
                .await
                .expect("an answer in time")
                .expect("read");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            answer.push(line.trim_end().to_ascii_lowercase());
        }
        assert_eq!(answer[0], "http/1.1 401 unauthorized", "{path}");
        assert!(
            answer.contains(&"connection: close".to_owned()),
            "{path}: the client is told not to send another request here: {answer:?}"
        );
        // The client goes on sending its body, as Node's does: each write lands, not on a
        // closed socket.
        for piece in body.chunks(16 * 1024) {
            write
                .write_all(piece)
                .await
                .unwrap_or_else(|err| panic!("{path}: sending the body: {err}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        write.shutdown().await.expect("done sending");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .unwrap_or_else(|err| panic!("{path}: the close was a reset: {err}"));
    }
}

#[tokio::test]
async fn a_refusal_whose_small_body_has_arrived_keeps_the_connection_for_the_next_request() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let app = spawn_configured(|c| {
        c.auth.api_key = Some(iggy_gateway::config::ApiKeys::new(["right"]));
    })
    .await;
    let stream = TcpStream::connect(app.addr).await.expect("connected");
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    for key in ["wrong", "right"] {
        // Head and a small body in one write, as most clients send them.
        let body = r#"{"name":"kept"}"#;
        let request = format!(
            "POST /v1/streams HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        write.write_all(request.as_bytes()).await.expect("sent");
        let mut head = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line))
                .await
                .expect("an answer in time")
                .expect("read");
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("content-length: ") {
                length = value.parse().expect("a length");
            }
            head.push(line);
        }
        let mut answer = vec![0; length];
        tokio::io::AsyncReadExt::read_exact(&mut read, &mut answer)
            .await
            .expect("the answer's body");
        assert!(
            !head.contains(&"connection: close".to_owned()),
            "{key}: {head:?}"
        );
        let expected = if key == "wrong" { "401" } else { "201" };
        assert!(head[0].contains(expected), "{key}: {head:?}");
    }
}

#[tokio::test]
async fn an_idle_connection_whose_small_answers_never_leave_is_dropped() {
    let app = spawn_configured(|c| {
        c.limits.connection_write_timeout_ms = 300;
        c.limits.connection_idle_timeout_ms = 300;
    })
    .await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let text = "x".repeat(1000);
    let texts: Vec<&str> = (0..40).map(|_| text.as_str()).collect();
    app.send_texts("orders", "created", 0, &texts).await;
    // A window of one byte, and answers of about 55 KB, less than a slice: each is handed
    // over whole into HTTP/2's buffers and ends, and one byte of each ever leaves.
    let poll = "/v1/streams/orders/topics/created/messages?partition_id=0&count=40&strategy=first";
    let polls = [poll; 5];
    let (connection, _open) = crate::helpers::window_of(&app, 1, &polls, "zstd").await;
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("dropped once idle and not closed within the write timeout");
    assert!(ended.is_ok(), "{ended:?}");
}
