//! The benchmark harness: runs the gateway binary (release build) and a load against it in one
//! run, and prints absolute numbers and ratios against what the gateway fronts, each target with
//! PASS or FAIL. Run it with `cargo bench --bench gateway -- --help`.
//!
//! Ratios, not raw numbers, are the point: both sides run on the same machine in the same run.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use iggy_gateway::{
    broker::{
        Broker, Compression, CreateTopic, Identifier, Name, NewMessage, Partitioning, SendMessages,
        TopicRef,
        embedded::{EmbeddedBroker, Location},
    },
    proto::{
        self,
        message_service_client::MessageServiceClient,
        message_service_server::{MessageService, MessageServiceServer},
        stream_service_client::StreamServiceClient,
        topic_service_client::TopicServiceClient,
    },
};
use serde_json::{Value, json};
use tonic::transport::Channel;

#[derive(Debug, Clone, Parser)]
#[command(about = "iggy-gateway benchmarks: the gateway's cost against what it fronts")]
struct Args {
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
    /// Messages per batch in the batch-produce runs.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Seconds of the open-loop latency run.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Seconds of the memory soak (the target asks for 600).
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Idle subscriptions held open while the gateway's CPU is measured.
    #[arg(long, default_value_t = 1000)]
    idle_subscribers: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Cargo passes `--bench` to bench targets.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The gateway as operators run it: its own process, release build.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("DATA_DIR", data_dir)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,iggy_gateway::startup=info")
            .env("RATE_LIMIT_RPS", "0")
            .env("MAX_SUBSCRIBERS_PER_CLIENT", "100000")
            .env("MAX_SUBSCRIBERS", "100000")
            .env("IGGY_STREAM", "")
            .env_remove("IGGY_CONNECTION_STRING")
            .env_remove("API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("a log line").expect("readable");
            let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(addr) = entry["fields"]["address"].as_str() {
                break addr.parse().expect("address");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// CPU time the process has used (user + system), in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn payload(size: usize) -> String {
    "x".repeat(size)
}

fn text_messages(count: usize, size: usize) -> Vec<proto::Message> {
    let body = payload(size);
    (0..count)
        .map(|_| proto::Message {
            body: Some(proto::message::Body::Text(body.clone())),
            ..Default::default()
        })
        .collect()
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

async fn prepare_topic(addr: SocketAddr, stream: &str) {
    let channel = channel(addr).await;
    StreamServiceClient::new(channel.clone())
        .create_stream(proto::CreateStreamRequest {
            name: stream.into(),
        })
        .await
        .expect("stream");
    TopicServiceClient::new(channel)
        .create_topic(proto::CreateTopicRequest {
            stream: stream.into(),
            name: "bench".into(),
            partitions_count: 4,
            ..Default::default()
        })
        .await
        .expect("topic");
}

#[derive(Default)]
struct Counter(AtomicU64);

/// Drives `callers` concurrent loops for `duration`, each loop calling `op` and adding the units
/// it reports; returns units per second.
async fn throughput<Op, Fut>(callers: usize, duration: Duration, op: Op) -> f64
where
    Op: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(Counter::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (op, done, stop) = (Arc::clone(&op), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let units = op().await;
                done.0.fetch_add(units, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    done.0.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A bare tonic MessageService that answers SendMessages without doing anything: the floor a
/// gRPC server on this machine can reach.
#[derive(Clone, Default)]
struct BareMessages;

#[tonic::async_trait]
impl MessageService for BareMessages {
    type SubscribeStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::SubscribeResponse, tonic::Status>>;

    async fn subscribe(
        &self,
        _: tonic::Request<proto::SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }

    async fn send_messages(
        &self,
        request: tonic::Request<proto::SendMessagesRequest>,
    ) -> Result<tonic::Response<proto::SendMessagesResponse>, tonic::Status> {
        let count = request.into_inner().messages.len();
        Ok(tonic::Response::new(proto::SendMessagesResponse {
            ids: (0..count)
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect(),
        }))
    }
    async fn poll_messages(
        &self,
        _: tonic::Request<proto::PollMessagesRequest>,
    ) -> Result<tonic::Response<proto::PollMessagesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }
    async fn store_consumer_offset(
        &self,
        _: tonic::Request<proto::StoreConsumerOffsetRequest>,
    ) -> Result<tonic::Response<proto::StoreConsumerOffsetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }
    async fn get_consumer_offset(
        &self,
        _: tonic::Request<proto::GetConsumerOffsetRequest>,
    ) -> Result<tonic::Response<proto::GetConsumerOffsetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }
    async fn delete_consumer_offset(
        &self,
        _: tonic::Request<proto::DeleteConsumerOffsetRequest>,
    ) -> Result<tonic::Response<proto::DeleteConsumerOffsetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }
}

async fn start_bare_tonic() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(MessageServiceServer::new(BareMessages))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

/// A bare axum route answering the same JSON send: the REST floor.
async fn start_bare_axum() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/streams/{stream}/topics/{topic}/messages",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            let count = body["messages"].as_array().map_or(0, Vec::len);
            let ids: Vec<String> = (0..count)
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect();
            (
                axum::http::StatusCode::CREATED,
                axum::Json(json!({ "ids": ids })),
            )
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Open-loop: calls are issued on a fixed schedule whatever the answers do, and each latency is
/// measured from the call's scheduled time, so a stall shows in the tail (no coordinated omission).
async fn open_loop_latency<Op, Fut>(rate: f64, duration: Duration, op: Op) -> Vec<Duration>
where
    Op: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = tokio::time::Instant::now();
    let total = (duration.as_secs_f64() * rate) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled).await;
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            op().await;
            scheduled.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(latency) = task.await {
            latencies.push(latency);
        }
    }
    latencies.sort();
    latencies
}

struct Report {
    rows: Vec<(String, String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn number(&mut self, name: &str, value: f64, unit: &str) {
        self.rows
            .push((name.to_owned(), format!("{value:.1} {unit}"), String::new()));
        self.json.insert(name.to_owned(), json!(value));
    }

    fn target(&mut self, name: &str, ratio: f64, at_least: f64) {
        let verdict = if ratio >= at_least { "PASS" } else { "FAIL" };
        self.rows.push((
            name.to_owned(),
            format!("{ratio:.3}"),
            format!("{verdict} (target ≥ {at_least})"),
        ));
        self.json.insert(
            name.to_owned(),
            json!({ "value": ratio, "target_at_least": at_least, "pass": ratio >= at_least }),
        );
    }

    fn ceiling(&mut self, name: &str, value: f64, unit: &str, at_most: f64) {
        let verdict = if value <= at_most { "PASS" } else { "FAIL" };
        self.rows.push((
            name.to_owned(),
            format!("{value:.3} {unit}"),
            format!("{verdict} (target ≤ {at_most} {unit})"),
        ));
        self.json.insert(name.to_owned(), json!({ "value": value, "unit": unit, "target_at_most": at_most, "pass": value <= at_most }));
    }

    fn print(&self) {
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
        for (name, value, verdict) in &self.rows {
            println!("{name:<width$}  {value:>18}  {verdict}");
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration_secs);
    let mut report = Report {
        rows: Vec::new(),
        json: serde_json::Map::new(),
    };
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(&data.path().join("gateway"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.number("rss_idle_mib", gateway.rss_kib() as f64 / 1024.0, "MiB");
    let idle_rss = gateway.rss_kib();
    prepare_topic(gateway.addr, "bench").await;
    let ch = channel(gateway.addr).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);

    // Batch produce: gRPC, REST, and the embedded backend called directly.
    let batch = text_messages(args.batch, args.message_size);
    let grpc_batch = {
        let (ch, batch) = (ch.clone(), batch.clone());
        throughput(args.concurrency, duration, move || {
            let mut client = MessageServiceClient::new(ch.clone());
            let messages = batch.clone();
            async move {
                let request = proto::SendMessagesRequest {
                    stream: "bench".into(),
                    topic: "bench".into(),
                    partitioning: None,
                    messages,
                };
                client
                    .send_messages(request)
                    .await
                    .map_or(0, |r| r.into_inner().ids.len() as u64)
            }
        })
        .await
    };
    report.number("grpc_batch_msgs_per_s", grpc_batch, "msg/s");
    let rest_body = Bytes::from(serde_json::to_vec(&json!({
        "messages": (0..args.batch).map(|_| json!({"text": payload(args.message_size)})).collect::<Vec<_>>()
    })).expect("json"));
    let rest_batch = {
        let (http, url, body, batch) = (
            http.clone(),
            format!("{base}/v1/streams/bench/topics/bench/messages"),
            rest_body.clone(),
            args.batch as u64,
        );
        throughput(args.concurrency, duration, move || {
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            async move {
                request
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 201)
                    .map_or(0, |_| batch)
            }
        })
        .await
    };
    report.number("rest_batch_msgs_per_s", rest_batch, "msg/s");
    let direct = {
        let store = Arc::new(
            EmbeddedBroker::open(&Location::Directory(data.path().join("direct"))).expect("opens"),
        );
        store
            .create_stream(Name::parse("bench").expect("name"))
            .await
            .expect("stream");
        store
            .create_topic(CreateTopic {
                stream: Identifier::Name("bench".into()),
                name: Name::parse("bench").expect("name"),
                partitions_count: 4,
                message_expiry_micros: None,
                max_topic_size_bytes: None,
                compression: Compression::None,
                replication_factor: 1,
            })
            .await
            .expect("topic");
        let size = args.message_size;
        let count = args.batch;
        throughput(args.concurrency, duration, move || {
            let store = Arc::clone(&store);
            let messages: Vec<NewMessage> = (0..count)
                .map(|_| NewMessage {
                    id: uuid::Uuid::now_v7().as_u128(),
                    headers: Default::default(),
                    payload: Bytes::from(payload(size)),
                })
                .collect();
            async move {
                let request = SendMessages {
                    topic: TopicRef {
                        stream: Identifier::Name("bench".into()),
                        topic: Identifier::Name("bench".into()),
                    },
                    partitioning: Partitioning::Balanced,
                    messages,
                };
                store
                    .send_messages(request)
                    .await
                    .map_or(0, |()| count as u64)
            }
        })
        .await
    };
    report.number("direct_backend_batch_msgs_per_s", direct, "msg/s");
    report.target("grpc_batch / direct_backend", grpc_batch / direct, 0.9);
    report.target("rest_batch / grpc_batch", rest_batch / grpc_batch, 0.8);

    // Unary single-message sends against the bare floors. The gateway here runs on an in-memory
    // store so the comparison measures the request path (layers, transcoding), not fsync.
    let memory_gateway = Gateway::start(Path::new(":memory:"));
    prepare_topic(memory_gateway.addr, "unary").await;
    let mem_ch = channel(memory_gateway.addr).await;
    let one = text_messages(1, args.message_size);
    let unary = |ch: Channel, stream: &'static str| {
        let one = one.clone();
        move || {
            let mut client = MessageServiceClient::new(ch.clone());
            let messages = one.clone();
            async move {
                let request = proto::SendMessagesRequest {
                    stream: stream.into(),
                    topic: "bench".into(),
                    partitioning: None,
                    messages,
                };
                client.send_messages(request).await.map_or(0, |_| 1)
            }
        }
    };
    let grpc_unary = throughput(args.concurrency, duration, unary(mem_ch.clone(), "unary")).await;
    let bare_addr = start_bare_tonic().await;
    let bare_ch = channel(bare_addr).await;
    let bare_unary = throughput(args.concurrency, duration, unary(bare_ch.clone(), "unary")).await;
    report.number("grpc_unary_req_per_s (all layers)", grpc_unary, "req/s");
    report.number("bare_tonic_unary_req_per_s", bare_unary, "req/s");
    report.target("grpc_unary / bare_tonic", grpc_unary / bare_unary, 0.7);
    let rest_one = Bytes::from(
        serde_json::to_vec(&json!({"messages": [{"text": payload(args.message_size)}]}))
            .expect("json"),
    );
    let rest_unary_op = |url: String| {
        let (http, body) = (http.clone(), rest_one.clone());
        move || {
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            async move {
                request
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 201)
                    .map_or(0, |_| 1)
            }
        }
    };
    let rest_unary = throughput(
        args.concurrency,
        duration,
        rest_unary_op(format!(
            "http://{}/v1/streams/unary/topics/bench/messages",
            memory_gateway.addr
        )),
    )
    .await;
    let bare_axum = start_bare_axum().await;
    let bare_rest = throughput(
        args.concurrency,
        duration,
        rest_unary_op(format!(
            "http://{bare_axum}/v1/streams/unary/topics/bench/messages"
        )),
    )
    .await;
    report.number("rest_unary_req_per_s (all layers)", rest_unary, "req/s");
    report.number("bare_axum_unary_req_per_s", bare_rest, "req/s");
    report.target("rest_unary / bare_axum", rest_unary / bare_rest, 0.5);

    // Poll throughput from the durable gateway's topic, which now holds the batches above.
    for count in [1u32, 100, 1000] {
        let ch = ch.clone();
        let polled = throughput(args.concurrency, duration, move || {
            let mut client = MessageServiceClient::new(ch.clone());
            async move {
                let request = proto::PollMessagesRequest {
                    stream: "bench".into(),
                    topic: "bench".into(),
                    partition_id: 0,
                    strategy: proto::PollingStrategy::Offset.into(),
                    offset: Some(u64::from(fastrand::u32(0..1000))),
                    count,
                    ..Default::default()
                };
                client
                    .poll_messages(request)
                    .await
                    .map_or(0, |r| r.into_inner().messages.len() as u64)
            }
        })
        .await;
        report.number(&format!("poll_count_{count}_msgs_per_s"), polled, "msg/s");
    }

    // Latency at half the measured unary maximum, gateway vs bare, open loop.
    let rate = (grpc_unary * 0.5).max(10.0);
    let latency_for = |ch: Channel| {
        let one = one.clone();
        move || {
            let mut client = MessageServiceClient::new(ch.clone());
            let messages = one.clone();
            async move {
                let request = proto::SendMessagesRequest {
                    stream: "unary".into(),
                    topic: "bench".into(),
                    partitioning: None,
                    messages,
                };
                let _ = client.send_messages(request).await;
            }
        }
    };
    let latency_secs = Duration::from_secs(args.latency_secs);
    let gateway_latency = open_loop_latency(rate, latency_secs, latency_for(mem_ch.clone())).await;
    let bare_latency = open_loop_latency(rate, latency_secs, latency_for(bare_ch.clone())).await;
    report.number("latency_offered_rate", rate, "req/s");
    for (label, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        report.number(
            &format!("gateway_latency_{label}_ms"),
            percentile(&gateway_latency, p).as_secs_f64() * 1000.0,
            "ms",
        );
        report.number(
            &format!("bare_latency_{label}_ms"),
            percentile(&bare_latency, p).as_secs_f64() * 1000.0,
            "ms",
        );
    }
    let added_p99 =
        percentile(&gateway_latency, 0.99).saturating_sub(percentile(&bare_latency, 0.99));
    report.ceiling(
        "added_p99_latency_at_50pct_load",
        added_p99.as_secs_f64() * 1000.0,
        "ms",
        1.0,
    );

    // Memory: idle, under the load above, and after a soak of mixed traffic.
    report.number(
        "rss_after_load_mib",
        gateway.rss_kib() as f64 / 1024.0,
        "MiB",
    );
    report.ceiling("rss_idle", idle_rss as f64 / 1024.0, "MiB", 20.0);
    if args.soak_secs > 0 {
        let before = gateway.rss_kib();
        let ch = ch.clone();
        let small = text_messages(10, args.message_size);
        throughput(
            args.concurrency,
            Duration::from_secs(args.soak_secs),
            move || {
                let mut client = MessageServiceClient::new(ch.clone());
                let messages = small.clone();
                async move {
                    let request = proto::SendMessagesRequest {
                        stream: "bench".into(),
                        topic: "bench".into(),
                        partitioning: None,
                        messages,
                    };
                    let sent = client
                        .send_messages(request)
                        .await
                        .map_or(0, |r| r.into_inner().ids.len() as u64);
                    let poll = proto::PollMessagesRequest {
                        stream: "bench".into(),
                        topic: "bench".into(),
                        count: 10,
                        strategy: proto::PollingStrategy::Last.into(),
                        ..Default::default()
                    };
                    let _ = client.poll_messages(poll).await;
                    sent
                }
            },
        )
        .await;
        let after = gateway.rss_kib();
        let growth = (after as f64 - before as f64) / 1024.0;
        report.number(
            &format!("rss_after_{}s_soak_mib", args.soak_secs),
            after as f64 / 1024.0,
            "MiB",
        );
        report.ceiling("rss_growth_during_soak", growth, "MiB", 2.0);
    }

    // Idle subscribers: held open on the in-memory gateway, with nothing arriving.
    if args.idle_subscribers > 0 {
        let mut streams = Vec::with_capacity(args.idle_subscribers);
        for _ in 0..args.idle_subscribers {
            let mut client = MessageServiceClient::new(mem_ch.clone());
            let request = proto::SubscribeRequest {
                stream: "unary".into(),
                topic: "bench".into(),
                ..Default::default()
            };
            if let Ok(stream) = client.subscribe(request).await {
                streams.push(stream.into_inner());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = memory_gateway.cpu_ticks();
        let window = Duration::from_secs(10);
        tokio::time::sleep(window).await;
        let ticks = memory_gateway.cpu_ticks().saturating_sub(before);
        // Linux reports CPU time in 1/100 s ticks.
        let cpu_percent = ticks as f64 / 100.0 / window.as_secs_f64() * 100.0;
        report.number("idle_subscribers_open", streams.len() as f64, "streams");
        report.ceiling(
            "cpu_with_idle_subscribers",
            cpu_percent,
            "% of one core",
            5.0,
        );
        report.number(
            "rss_with_idle_subscribers_mib",
            memory_gateway.rss_kib() as f64 / 1024.0,
            "MiB",
        );
        drop(streams);
    }

    report.print();
    if let Some(path) = &args.json {
        let doc = json!({ "args": format!("{args:?}"), "results": report.json });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).expect("json")).expect("writes JSON");
        println!("wrote {}", path.display());
    }
}
