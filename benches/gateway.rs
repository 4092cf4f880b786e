//! The benchmark harness: runs the gateway binary (release build) and a load against it in one
//! run, and prints absolute numbers and ratios against what the gateway fronts, each target with
//! PASS or FAIL. Run it with `cargo bench --bench gateway -- --help`.
//!
//! Ratios, not raw numbers, are the point: both sides run on the same machine in the same run.

/// The load generator allocates as the gateway does (jemalloc, `src/main.rs`), so a line whose
/// client runs in this process (the direct SDK line) is not slowed by a different allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
use prost::Message;
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
    /// Concurrent callers for the unary sends, one run each; the target is read at the last.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 64])]
    unary_concurrency: Vec<usize>,
    /// Concurrent callers of the unary sends stored by Iggy (gRPC, REST, and the SDK sending
    /// one message per call, one client per caller).
    #[arg(long, default_value_t = 16)]
    iggy_unary_concurrency: usize,
    /// Iggy's own HTTP API, for the batch line that sends the same batches through it; by
    /// default the host of IGGY_CONNECTION_STRING on port 3000.
    #[arg(long, env = "IGGY_HTTP_URL")]
    iggy_http_url: Option<String>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Slices each batch line's time is cut into, run in rotating order with the other lines,
    /// so every line meets the backend in the same states (see `interleave`).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds of the open-loop latency run.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Seconds of the memory soak (the target asks for 600).
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// Calls per second during the soak (each sends 10 messages and polls 10).
    #[arg(long, default_value_t = 200.0)]
    soak_rate: f64,
    /// Concurrent attackers in the hostile part.
    #[arg(long, default_value_t = 64)]
    attackers: usize,
    /// Random paths sent in the hostile part's /metrics check.
    #[arg(long, default_value_t = 10_000)]
    random_paths: usize,
    /// Connections of the hostile part's HPACK flood (each keeps 190 requests open).
    #[arg(long, default_value_t = 40)]
    flood_connections: usize,
    /// How long each of the HPACK flood's two runs lasts.
    #[arg(long, default_value_t = 10)]
    flood_secs: u64,
    /// Connections of the flood that the honest clients meet (`honest_beside_a_flood`).
    #[arg(long, default_value_t = 200)]
    honest_flood_connections: usize,
    /// Calls counted per line in the instructions part (a quarter as many warm it up first).
    #[arg(long, default_value_t = 2000)]
    instruction_calls: u64,
    /// Idle subscriptions held open while the gateway's CPU is measured.
    #[arg(long, default_value_t = 1000)]
    idle_subscribers: usize,
    /// Run only these parts (comma-separated); all of them when empty.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: serve the bare floors in this process (the harness starts itself with it).
    #[arg(long, hide = true)]
    serve_bare: bool,
    /// Cargo passes `--bench` to bench targets.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The parts of a run, for `--only` (profiling one path, or a long soak on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Batch,
    Unary,
    Poll,
    Latency,
    Soak,
    Subscribers,
    /// Amplification bodies from many attackers at once, and random paths against /metrics.
    Hostile,
    /// Small HTTP/2 frames that HPACK decodes to large header lists, on many connections.
    Flood,
    /// The cost of TLS and of gzip on gRPC batch produce, against cleartext and uncompressed.
    Wire,
    /// Unary sends counted in instructions under callgrind (only when named: it needs valgrind).
    Instructions,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        if part == Part::Instructions {
            return self.only.contains(&part);
        }
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// The gateway as operators run it: its own process, release build.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    /// Starts the gateway on the embedded store at `data_dir`, or on a real Iggy server when
    /// `iggy` holds its connection string.
    fn start(data_dir: &Path, iggy: Option<&str>, pool_size: usize) -> Self {
        Self::start_with(data_dir, iggy, pool_size, &[])
    }

    /// As [`Gateway::start`], with more settings (TLS files) in its environment.
    fn start_with(
        data_dir: &Path,
        iggy: Option<&str>,
        pool_size: usize,
        settings: &[(&str, &Path)],
    ) -> Self {
        let mut command = Command::new(Self::binary());
        // The default host, said for the reader: 127.0.0.1.
        command.env("HOST", "127.0.0.1");
        Self::start_command(command, data_dir, iggy, pool_size, settings)
    }

    /// `GATEWAY_BIN` runs another build (an earlier commit's) under the same load.
    fn binary() -> std::ffi::OsString {
        std::env::var_os("GATEWAY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_iggy-gateway").into())
    }

    fn start_command(
        mut command: Command,
        data_dir: &Path,
        iggy: Option<&str>,
        pool_size: usize,
        settings: &[(&str, &Path)],
    ) -> Self {
        match iggy {
            Some(connection) => command
                .env("IGGY_CONNECTION_STRING", connection)
                .env("IGGY_POOL_SIZE", pool_size.to_string()),
            None => command.env_remove("IGGY_CONNECTION_STRING"),
        };
        let mut child = command
            .env("PORT", "0")
            .env("DATA_DIR", data_dir)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,iggy_gateway::startup=info")
            .env("RATE_LIMIT_RPS", "0")
            .env("MAX_SUBSCRIBERS_PER_CLIENT", "100000")
            .env("MAX_SUBSCRIBERS", "100000")
            // The load comes from one address: the per-client caps would shape it, not the gateway.
            .env("MAX_CONNECTIONS_PER_CLIENT", "100000")
            .env("IGGY_STREAM", "")
            .env_remove("API_KEY")
            .envs(settings.iter().map(|(name, value)| (*name, *value)))
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

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.child.id())
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the process has had.
    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// CPU time a process has used (user + system), in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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

/// Runs `load` (which reports units — calls or messages — per second over `duration`) and also
/// returns the CPU time process `pid` spent per unit, in microseconds: the server's own cost,
/// whatever the latency.
async fn with_cpu(pid: u32, duration: Duration, load: impl Future<Output = f64>) -> (f64, f64) {
    let before = cpu_ticks(pid);
    let rate = load.await;
    let ticks = cpu_ticks(pid).saturating_sub(before) as f64;
    let calls = rate * duration.as_secs_f64();
    (rate, ticks * 10_000.0 / calls.max(1.0))
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

fn binary_messages(count: usize, size: usize) -> Vec<proto::Message> {
    let body = Bytes::from(payload(size));
    (0..count)
        .map(|_| proto::Message {
            body: Some(proto::message::Body::Payload(body.clone())),
            ..Default::default()
        })
        .collect()
}

fn base64_payload(size: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(payload(size))
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
    throughput_by_caller(callers, duration, move |_| op()).await
}

/// Like [`throughput`], but `op` is told which caller it serves (0 to `callers - 1`), so each
/// caller can keep a connection of its own for its whole run: a client shared by callers
/// queues them behind each other wherever the client serves one request at a time.
async fn throughput_by_caller<Op, Fut>(callers: usize, duration: Duration, op: Op) -> f64
where
    Op: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(Counter::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let (op, done, stop) = (Arc::clone(&op), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let units = op(caller).await;
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

/// Like [`throughput`], but the callers together make at most `rate` calls per second: a
/// steady load for a soak, which would otherwise fill the disk at full speed.
async fn paced<Op, Fut>(callers: usize, rate: f64, duration: Duration, op: Op) -> f64
where
    Op: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let callers = callers.max(1);
    let period = Duration::from_secs_f64(callers as f64 / rate.max(0.001));
    let op = Arc::new(op);
    throughput(callers, duration, move || {
        let op = Arc::clone(&op);
        async move {
            let next = tokio::time::Instant::now() + period;
            let units = op().await;
            tokio::time::sleep_until(next).await;
            units
        }
    })
    .await
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

/// The bare floors run in a process of their own, like the gateway, so neither side shares a
/// runtime with the load generator.
struct BareServers {
    child: Child,
    tonic: SocketAddr,
    axum: SocketAddr,
}

impl BareServers {
    fn start() -> Self {
        let exe = std::env::current_exe().expect("the harness's own path");
        Self::start_command(Command::new(exe))
    }

    /// The harness itself, serving the floors, run by `command`.
    fn start_command(mut command: Command) -> Self {
        let mut child = command
            .arg("--serve-bare")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the bare servers start");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut next_addr = || -> SocketAddr {
            let line = lines.next().expect("an address").expect("readable");
            line.trim().parse().expect("address")
        };
        let (tonic, axum) = (next_addr(), next_addr());
        Self { child, tonic, axum }
    }
}

impl Drop for BareServers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--serve-bare`: prints the two floors' addresses and serves until killed.
async fn serve_bare() {
    let tonic = start_bare_tonic().await;
    let axum = start_bare_axum().await;
    println!("{tonic}\n{axum}");
    std::future::pending::<()>().await;
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

    /// A ratio with no target.
    fn ratio(&mut self, name: &str, value: f64) {
        self.rows
            .push((name.to_owned(), format!("{value:.3}"), String::new()));
        self.json.insert(name.to_owned(), json!(value));
    }

    fn text(&mut self, name: &str, value: &str) {
        self.rows
            .push((name.to_owned(), value.to_owned(), String::new()));
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

/// The embedded backend opened in process for the direct line, no gateway in between.
async fn open_direct_embedded(dir: &Path) -> Arc<EmbeddedBroker> {
    let store = Arc::new(EmbeddedBroker::open(&Location::Directory(dir.into())).expect("opens"));
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
    store
}

/// The same batches sent straight to the embedded backend for `duration`; messages per second.
async fn direct_embedded(store: &Arc<EmbeddedBroker>, args: &Args, duration: Duration) -> f64 {
    // One payload shared by every message, as the gRPC line's prebuilt batch is: the load
    // generator shares the machine, so it must not do more work on one side than the other.
    let (body, count) = (Bytes::from(payload(args.message_size)), args.batch);
    let store = Arc::clone(store);
    throughput(args.concurrency, duration, move || {
        let store = Arc::clone(&store);
        let messages: Vec<NewMessage> = (0..count)
            .map(|_| NewMessage {
                id: uuid::Uuid::now_v7().as_u128(),
                headers: Default::default(),
                payload: body.clone(),
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
                idempotency: None,
            };
            store
                .send_messages(request)
                .await
                .map_or(0, |_| count as u64)
        }
    })
    .await
}

/// One `iggy` SDK client per caller of a direct line, connected once for the whole run.
async fn connect_direct_iggy(
    connection: &str,
    callers: usize,
) -> Arc<Vec<iggy::prelude::IggyClient>> {
    use iggy::prelude::{Client, IggyClient};
    let mut clients = Vec::with_capacity(callers);
    for _ in 0..callers {
        let client = IggyClient::from_connection_string(connection).expect("connection string");
        client.connect().await.expect("connects to Iggy");
        clients.push(client);
    }
    Arc::new(clients)
}

/// Batches of `count` messages sent straight to a real Iggy server through the `iggy` SDK by
/// one caller per client for `duration` (the SDK runs one request at a time per connection, as
/// in the gateway's pool). Messages per second.
async fn direct_iggy(
    clients: &Arc<Vec<iggy::prelude::IggyClient>>,
    args: &Args,
    stream: &str,
    count: usize,
    duration: Duration,
) -> f64 {
    use iggy::prelude::{
        Identifier as IggyId, IggyMessage, MessageClient, Partitioning as IggyPartitioning,
    };
    let clients = Arc::clone(clients);
    let body = Bytes::from(payload(args.message_size));
    let (stream_id, topic_id) = (
        IggyId::named(stream).expect("stream id"),
        IggyId::named("bench").expect("topic id"),
    );
    // Caller i keeps client i for its whole run: the SDK serves one request at a time per
    // connection, so a client shared by two callers would make one wait for the other.
    throughput_by_caller(clients.len(), duration, move |caller| {
        let clients = Arc::clone(&clients);
        let (stream_id, topic_id) = (stream_id.clone(), topic_id.clone());
        let mut messages: Vec<IggyMessage> = (0..count)
            .map(|_| {
                IggyMessage::builder()
                    .id(uuid::Uuid::now_v7().as_u128())
                    .payload(body.clone())
                    .build()
                    .expect("message")
            })
            .collect();
        async move {
            clients[caller]
                .send_messages(
                    &stream_id,
                    &topic_id,
                    &IggyPartitioning::balanced(),
                    &mut messages,
                )
                .await
                .map_or(0, |()| count as u64)
        }
    })
    .await
}

/// One line of a side-by-side comparison: runs its load for the given time, returns units per
/// second.
type Line<'a> = Box<dyn FnMut(Duration) -> std::pin::Pin<Box<dyn Future<Output = f64> + 'a>> + 'a>;

/// Runs `lines` side by side, `rounds` slices of `slice` each, the order rotated every round so
/// each line takes each position once. The backend's state moves under a load (a log growing by
/// gigabytes, dirty pages being written back): against Iggy, a line run first into a fresh
/// server measured 2.7 times what the same line did right after two others. Returns each line's
/// units per second and process `pid`'s CPU µs per unit over its slices.
async fn interleave(
    rounds: usize,
    slice: Duration,
    pid: u32,
    lines: &mut [Line<'_>],
) -> Vec<(f64, f64)> {
    let rounds = rounds.max(1);
    let mut totals = vec![(0.0f64, 0u64); lines.len()];
    for round in 0..rounds {
        for k in 0..lines.len() {
            let i = (k + round) % lines.len();
            let before = cpu_ticks(pid);
            let rate = (lines[i])(slice).await;
            totals[i].0 += rate * slice.as_secs_f64();
            totals[i].1 += cpu_ticks(pid).saturating_sub(before);
        }
    }
    let seconds = slice.as_secs_f64() * rounds as f64;
    totals
        .into_iter()
        .map(|(units, ticks)| (units / seconds, ticks as f64 * 10_000.0 / units.max(1.0)))
        .collect()
}

fn send_request(
    stream: &str,
    partition_id: Option<u32>,
    messages: Vec<proto::Message>,
) -> proto::SendMessagesRequest {
    proto::SendMessagesRequest {
        stream: stream.into(),
        topic: "bench".into(),
        partitioning: partition_id.map(proto::send_messages_request::Partitioning::PartitionId),
        messages,
    }
}

/// Single-message gRPC sends to `stream` over `ch`.
fn unary_op(
    ch: Channel,
    stream: &'static str,
    one: Vec<proto::Message>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> + Send + Sync + 'static
{
    move || {
        let mut client = MessageServiceClient::new(ch.clone());
        let request = send_request(stream, None, one.clone());
        Box::pin(async move { client.send_messages(request).await.map_or(0, |_| 1) })
    }
}

/// Single-message REST sends to `url`.
fn rest_unary_op(
    http: reqwest::Client,
    url: String,
    body: Bytes,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> + Send + Sync + 'static
{
    move || {
        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        Box::pin(async move {
            request
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 201)
                .map_or(0, |_| 1)
        })
    }
}

/// Iggy's own HTTP API, logged in (`POST /users/login`) with the connection string's user.
struct IggyHttp {
    base: String,
    token: String,
}

impl IggyHttp {
    async fn login(http: &reqwest::Client, connection: &str, url: Option<&str>) -> Self {
        // iggy://user:password@host:port
        let rest = connection
            .split_once("://")
            .map_or(connection, |(_, rest)| rest);
        let (credentials, address) = rest.rsplit_once('@').expect("credentials in the string");
        let (username, password) = credentials.split_once(':').expect("user:password");
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let base = url.map_or_else(|| format!("http://{host}:3000"), str::to_owned);
        let answer: Value = http
            .post(format!("{base}/users/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("Iggy's HTTP API answers (set IGGY_HTTP_URL)")
            .json()
            .await
            .expect("a login answer");
        let token = answer["access_token"]["token"]
            .as_str()
            .expect("an access token")
            .to_owned();
        Self { base, token }
    }

    fn messages_url(&self, stream: &str) -> String {
        format!("{}/streams/{stream}/topics/bench/messages", self.base)
    }
}

/// The backend's sends and the calls they carried so far, from the gateway's `/metrics`.
async fn backend_send_counts(http: &reqwest::Client, addr: SocketAddr) -> (f64, f64) {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("iggy_gateway_backend_sends_total"),
        value("iggy_gateway_backend_send_calls_total"),
    )
}

/// Single-message sends stored by Iggy: gRPC and REST through the gateway against the `iggy`
/// SDK sending one message per call, `--iggy-unary-concurrency` callers each (one SDK client
/// per caller), the three lines interleaved; and how many calls one Iggy send carried.
async fn iggy_unary(
    args: &Args,
    gateway: &Gateway,
    connection: &str,
    stream: &'static str,
    http: &reqwest::Client,
    report: &mut Report,
) {
    let callers = args.iggy_unary_concurrency;
    let ch = channel(gateway.addr).await;
    // Binary payloads, as the SDK line sends (a text body adds a header to each message).
    let one = binary_messages(1, args.message_size);
    let rest_one = Bytes::from(
        serde_json::to_vec(&json!({"messages": [{"payload": base64_payload(args.message_size)}]}))
            .expect("json"),
    );
    let url = format!(
        "http://{}/v1/streams/{stream}/topics/bench/messages",
        gateway.addr
    );
    let clients = connect_direct_iggy(connection, callers).await;
    let before = backend_send_counts(http, gateway.addr).await;
    let mut lines: Vec<Line<'_>> = vec![
        Box::new(|slice| {
            Box::pin(throughput(
                callers,
                slice,
                unary_op(ch.clone(), stream, one.clone()),
            ))
        }),
        Box::new(|slice| {
            Box::pin(throughput(
                callers,
                slice,
                rest_unary_op(http.clone(), url.clone(), rest_one.clone()),
            ))
        }),
        Box::new(|slice| Box::pin(direct_iggy(&clients, args, stream, 1, slice))),
    ];
    let rounds = args.rounds.max(1);
    let slice = Duration::from_secs(args.duration_secs) / rounds;
    let measured = interleave(rounds as usize, slice, gateway.child.id(), &mut lines).await;
    drop(lines);
    let after = backend_send_counts(http, gateway.addr).await;
    let [(grpc, grpc_cpu), (rest, rest_cpu), (direct, _)] = measured[..] else {
        unreachable!("three lines")
    };
    let at = format!("{callers} callers");
    report.number(
        &format!("grpc_unary_on_iggy_req_per_s, {at}"),
        grpc,
        "req/s",
    );
    report.number(
        &format!("rest_unary_on_iggy_req_per_s, {at}"),
        rest,
        "req/s",
    );
    report.number(
        &format!("iggy_sdk_one_message_per_call_req_per_s, {at}"),
        direct,
        "req/s",
    );
    report.number(
        &format!("grpc_unary_on_iggy_gateway_cpu_per_call, {at}"),
        grpc_cpu,
        "µs",
    );
    report.number(
        &format!("rest_unary_on_iggy_gateway_cpu_per_call, {at}"),
        rest_cpu,
        "µs",
    );
    let (sends, calls) = (after.0 - before.0, after.1 - before.1);
    if sends > 0.0 {
        report.number("calls per Iggy send (unary lines)", calls / sends, "calls");
    } else {
        // A gateway built before the counters (`GATEWAY_BIN`) sends each call alone.
        report.text(
            "calls per Iggy send (unary lines)",
            "not counted by this gateway",
        );
    }
    report.target(
        &format!(
            "unary gRPC sends / iggy SDK direct ({callers}), gateway pool {}",
            args.concurrency
        ),
        grpc / direct,
        1.0,
    );
    report.target(
        &format!(
            "unary REST sends / iggy SDK direct ({callers}), gateway pool {}",
            args.concurrency
        ),
        rest / direct,
        0.9,
    );
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if args.serve_bare {
        runtime.block_on(serve_bare());
    } else {
        runtime.block_on(run(args));
    }
}

async fn run(args: Args) {
    let duration = Duration::from_secs(args.duration_secs);
    let mut report = Report {
        rows: Vec::new(),
        json: serde_json::Map::new(),
    };
    let iggy = std::env::var("IGGY_CONNECTION_STRING")
        .ok()
        .filter(|v| !v.trim().is_empty());
    report.text(
        "backend",
        if iggy.is_some() {
            "Iggy server (IGGY_CONNECTION_STRING)"
        } else {
            "embedded"
        },
    );
    if iggy.is_some() {
        // The batch callers each have a pool client of their own; unary callers outnumber it.
        report.text(
            "gateway IGGY_POOL_SIZE",
            &format!("{} (= batch callers)", args.concurrency),
        );
    }
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(
        &data.path().join("gateway"),
        iggy.as_deref(),
        args.concurrency,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.number("rss_idle_mib", gateway.rss_kib() as f64 / 1024.0, "MiB");
    let idle_rss = gateway.rss_kib();

    // A stream of this run's own, so runs against a shared Iggy server do not mix.
    let stream: &'static str = Box::leak(format!("bench-{}", std::process::id()).into_boxed_str());
    prepare_topic(gateway.addr, stream).await;
    let ch = channel(gateway.addr).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);

    // Batch produce: gRPC, REST, and the backend called directly through its own client.
    if args.runs(Part::Batch) {
        // Binary payloads, the same bytes the direct line sends (a text body would add a
        // body-form header to every message); REST carries them base64-encoded, as proto3
        // JSON does bytes.
        let batch = binary_messages(args.batch, args.message_size);
        // One HTTP/2 connection per caller, as the direct line has one SDK connection each.
        let mut channels = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            channels.push(channel(gateway.addr).await);
        }
        let rest_body = Bytes::from(serde_json::to_vec(&json!({
            "messages": (0..args.batch).map(|_| json!({"payload": base64_payload(args.message_size)})).collect::<Vec<_>>()
        })).expect("json"));
        let (channels, url) = (
            Arc::new(channels),
            format!("{base}/v1/streams/{stream}/topics/bench/messages"),
        );
        // The direct line's client (or store) is opened once, outside its slices.
        let direct_store = match &iggy {
            None => Some(open_direct_embedded(&data.path().join("direct")).await),
            Some(_) => None,
        };
        let direct_clients = match &iggy {
            Some(connection) => Some(connect_direct_iggy(connection, args.concurrency).await),
            None => None,
        };
        let iggy_http = match &iggy {
            Some(connection) => {
                Some(IggyHttp::login(&http, connection, args.iggy_http_url.as_deref()).await)
            }
            None => None,
        };
        // Iggy's JSON for the same batch: balanced, server-assigned ids (its JSON cannot carry
        // a 128-bit id), the payloads base64-encoded.
        let iggy_http_body = Bytes::from(serde_json::to_vec(&json!({
            "partitioning": {"kind": "balanced", "value": ""},
            "messages": (0..args.batch).map(|_| json!({"id": 0, "payload": base64_payload(args.message_size)})).collect::<Vec<_>>()
        })).expect("json"));
        let args_ref = &args;
        let mut lines: Vec<Line<'_>> = vec![
            Box::new(|slice| {
                let (channels, batch) = (Arc::clone(&channels), batch.clone());
                Box::pin(throughput_by_caller(
                    args_ref.concurrency,
                    slice,
                    move |caller| {
                        let mut client = MessageServiceClient::new(channels[caller].clone());
                        let request = send_request(stream, None, batch.clone());
                        async move {
                            client
                                .send_messages(request)
                                .await
                                .map_or(0, |r| r.into_inner().ids.len() as u64)
                        }
                    },
                ))
            }),
            Box::new(|slice| {
                let (http, url, body, batch) = (
                    http.clone(),
                    url.clone(),
                    rest_body.clone(),
                    args_ref.batch as u64,
                );
                Box::pin(throughput(args_ref.concurrency, slice, move || {
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
                }))
            }),
            Box::new(|slice| match (&direct_store, &direct_clients) {
                (Some(store), _) => Box::pin(direct_embedded(store, args_ref, slice)),
                (None, Some(clients)) => Box::pin(direct_iggy(
                    clients,
                    args_ref,
                    stream,
                    args_ref.batch,
                    slice,
                )),
                (None, None) => Box::pin(std::future::ready(0.0)),
            }),
        ];
        if let Some(api) = &iggy_http {
            lines.push(Box::new(|slice| {
                let (http, url, token, body, batch) = (
                    http.clone(),
                    api.messages_url(stream),
                    api.token.clone(),
                    iggy_http_body.clone(),
                    args_ref.batch as u64,
                );
                Box::pin(throughput(args_ref.concurrency, slice, move || {
                    let request = http
                        .post(&url)
                        .bearer_auth(&token)
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
                }))
            }));
        }
        let rounds = args.rounds.max(1);
        let slice = duration / rounds;
        let measured = interleave(rounds as usize, slice, gateway.child.id(), &mut lines).await;
        drop(lines);
        let [(grpc_batch, grpc_cpu), (rest_batch, rest_cpu), (direct, _)] = measured[..3] else {
            unreachable!("three lines")
        };
        report.text(
            "batch lines",
            &format!("interleaved: {rounds} rounds of {slice:?} each, order rotated"),
        );
        report.number("grpc_batch_msgs_per_s", grpc_batch, "msg/s");
        report.number("rest_batch_msgs_per_s", rest_batch, "msg/s");
        // The gateway's own CPU per message over the line's slices.
        report.number("grpc_batch_gateway_cpu_per_msg", grpc_cpu, "µs");
        report.number("rest_batch_gateway_cpu_per_msg", rest_cpu, "µs");
        report.number("direct_backend_batch_msgs_per_s", direct, "msg/s");
        report.target("grpc_batch / direct_backend", grpc_batch / direct, 0.9);
        // Against a separate server the gateway's CPU is what runs out; on the embedded store
        // the store's work is shared by both protocols, so the bar is higher.
        let rest_floor = if iggy.is_some() { 0.9 } else { 0.95 };
        report.target(
            "rest_batch / grpc_batch",
            rest_batch / grpc_batch,
            rest_floor,
        );
        report.ceiling(
            "rest_batch_cpu / grpc_batch_cpu (gateway CPU per message)",
            rest_cpu / grpc_cpu,
            "×",
            1.5,
        );
        if let Some(&(iggy_http_batch, _)) = measured.get(3) {
            report.number("iggy_http_api_batch_msgs_per_s", iggy_http_batch, "msg/s");
            report.target(
                "rest_batch / iggy_http_api (same server, same batches)",
                rest_batch / iggy_http_batch,
                1.5,
            );
        }
    }

    // Unary single-message sends against the bare floors. This gateway runs on an in-memory
    // store so the comparison measures the request path (layers, transcoding), not fsync.
    let needs_memory = args.runs(Part::Unary) || args.runs(Part::Latency);
    let memory_gateway = (needs_memory || args.runs(Part::Subscribers))
        .then(|| Gateway::start(Path::new(":memory:"), None, args.concurrency));
    let bare = needs_memory.then(BareServers::start);
    let mut grpc_unary = None;
    if let (Some(memory), Some(bare)) = (&memory_gateway, &bare) {
        prepare_topic(memory.addr, "unary").await;
        let mem_ch = channel(memory.addr).await;
        let bare_ch = channel(bare.tonic).await;
        let one = text_messages(1, args.message_size);
        if args.runs(Part::Unary) {
            let rest_one = Bytes::from(
                serde_json::to_vec(&json!({"messages": [{"text": payload(args.message_size)}]}))
                    .expect("json"),
            );
            let path = "v1/streams/unary/topics/bench/messages";
            let mut last = None;
            for &callers in &args.unary_concurrency {
                let (gateway_rate, gateway_cpu) = with_cpu(
                    memory.child.id(),
                    duration,
                    throughput(
                        callers,
                        duration,
                        unary_op(mem_ch.clone(), "unary", one.clone()),
                    ),
                )
                .await;
                let (bare_rate, bare_cpu) = with_cpu(
                    bare.child.id(),
                    duration,
                    throughput(
                        callers,
                        duration,
                        unary_op(bare_ch.clone(), "unary", one.clone()),
                    ),
                )
                .await;
                let (rest_rate, rest_cpu) = with_cpu(
                    memory.child.id(),
                    duration,
                    throughput(
                        callers,
                        duration,
                        rest_unary_op(
                            http.clone(),
                            format!("http://{}/{path}", memory.addr),
                            rest_one.clone(),
                        ),
                    ),
                )
                .await;
                let (bare_rest, bare_rest_cpu) = with_cpu(
                    bare.child.id(),
                    duration,
                    throughput(
                        callers,
                        duration,
                        rest_unary_op(
                            http.clone(),
                            format!("http://{}/{path}", bare.axum),
                            rest_one.clone(),
                        ),
                    ),
                )
                .await;
                let at = format!("{callers} callers");
                report.number(
                    &format!("grpc_unary_req_per_s, {at}"),
                    gateway_rate,
                    "req/s",
                );
                report.number(&format!("bare_tonic_req_per_s, {at}"), bare_rate, "req/s");
                report.ratio(
                    &format!("grpc_unary / bare_tonic, {at}"),
                    gateway_rate / bare_rate,
                );
                report.number(&format!("grpc_unary_cpu_per_call, {at}"), gateway_cpu, "µs");
                report.number(&format!("bare_tonic_cpu_per_call, {at}"), bare_cpu, "µs");
                report.number(&format!("rest_unary_req_per_s, {at}"), rest_rate, "req/s");
                report.number(&format!("bare_axum_req_per_s, {at}"), bare_rest, "req/s");
                report.ratio(
                    &format!("rest_unary / bare_axum, {at}"),
                    rest_rate / bare_rest,
                );
                report.number(&format!("rest_unary_cpu_per_call, {at}"), rest_cpu, "µs");
                report.number(
                    &format!("bare_axum_cpu_per_call, {at}"),
                    bare_rest_cpu,
                    "µs",
                );
                if callers == 4 {
                    report.target(
                        "grpc_unary / bare_tonic, 4 callers (all layers)",
                        gateway_rate / bare_rate,
                        0.8,
                    );
                }
                last = Some((
                    gateway_rate,
                    bare_rate,
                    gateway_cpu / bare_cpu,
                    rest_rate / bare_rest,
                ));
            }
            // The targets are read at the last (highest) concurrency: the floor is what a bare
            // server can do at most, and a few closed-loop callers measure latency, not that.
            if let Some((gateway_rate, bare_rate, cpu_ratio, rest_ratio)) = last {
                grpc_unary = Some(gateway_rate);
                report.target(
                    "grpc_unary / bare_tonic (all layers)",
                    gateway_rate / bare_rate,
                    0.7,
                );
                report.ceiling(
                    "grpc_unary_cpu / bare_tonic_cpu (per call, all layers)",
                    cpu_ratio,
                    "×",
                    1.3,
                );
                report.target("rest_unary / bare_axum (all layers)", rest_ratio, 0.7);
            }
            // The same single sends, stored by the backend the gateway runs on (fsync'd
            // embedded store, or Iggy): what a durable acknowledgement costs. No target.
            let callers = args
                .unary_concurrency
                .last()
                .copied()
                .unwrap_or(args.concurrency);
            let stored =
                throughput(callers, duration, unary_op(ch.clone(), stream, one.clone())).await;
            report.number(
                &format!("grpc_unary_stored_req_per_s, {callers} callers"),
                stored,
                "req/s",
            );
            if let Some(connection) = &iggy {
                iggy_unary(&args, &gateway, connection, stream, &http, &mut report).await;
            }
        }

        // Latency at half the measured unary maximum, gateway vs bare, open loop.
        if args.runs(Part::Latency) {
            let max = match grpc_unary {
                Some(rate) => rate,
                None => {
                    throughput(
                        args.unary_concurrency
                            .last()
                            .copied()
                            .unwrap_or(args.concurrency),
                        duration,
                        unary_op(mem_ch.clone(), "unary", one.clone()),
                    )
                    .await
                }
            };
            let rate = (max * 0.5).max(10.0);
            let latency_op = |ch: Channel| {
                let op = unary_op(ch, "unary", one.clone());
                move || {
                    let call = op();
                    async move {
                        call.await;
                    }
                }
            };
            let latency_secs = Duration::from_secs(args.latency_secs);
            let gateway_latency =
                open_loop_latency(rate, latency_secs, latency_op(mem_ch.clone())).await;
            let bare_latency =
                open_loop_latency(rate, latency_secs, latency_op(bare_ch.clone())).await;
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
        }
    }

    // Poll throughput from partition 0 of the gateway's topic.
    if args.runs(Part::Poll) {
        if !args.runs(Part::Batch) {
            // Without the batch part, fill partition 0 with what the polls below read.
            let mut client = MessageServiceClient::new(ch.clone());
            let size = args.batch.clamp(1, 1000);
            for _ in 0..1000usize.div_ceil(size) {
                client
                    .send_messages(send_request(
                        stream,
                        Some(0),
                        text_messages(size, args.message_size),
                    ))
                    .await
                    .expect("seed messages");
            }
        }
        for count in [1u32, 100, 1000] {
            let ch = ch.clone();
            let polled = throughput(args.concurrency, duration, move || {
                poll_grpc(ch.clone(), stream, count)
            })
            .await;
            report.number(&format!("poll_count_{count}_msgs_per_s"), polled, "msg/s");
        }
        // The same polls of 1000 over gRPC and over REST, interleaved: what writing each
        // message as JSON (base64 payloads, timestamps) costs the gateway.
        let count = 1000u32;
        let url = format!("{base}/v1/streams/{stream}/topics/bench/messages");
        let mut lines: Vec<Line<'_>> = vec![
            Box::new(|slice| {
                let ch = ch.clone();
                Box::pin(throughput(args.concurrency, slice, move || {
                    poll_grpc(ch.clone(), stream, count)
                }))
            }),
            Box::new(|slice| {
                let (http, url) = (http.clone(), url.clone());
                Box::pin(throughput(args.concurrency, slice, move || {
                    let offset = fastrand::u32(0..1000).to_string();
                    let request = http.get(&url).query(&[
                        ("partition_id", "0"),
                        ("strategy", "offset"),
                        ("offset", offset.as_str()),
                        ("count", "1000"),
                    ]);
                    async move {
                        let Ok(response) = request.send().await else {
                            return 0;
                        };
                        if response.status() != 200 {
                            return 0;
                        }
                        // Each polled message's object starts with its offset.
                        response.bytes().await.map_or(0, |body| {
                            memchr::memmem::find_iter(&body, b"{\"offset\":").count() as u64
                        })
                    }
                }))
            }),
        ];
        let rounds = args.rounds.max(1);
        let slice = duration / rounds;
        let measured = interleave(rounds as usize, slice, gateway.child.id(), &mut lines).await;
        drop(lines);
        let [(grpc_poll, grpc_cpu), (rest_poll, rest_cpu)] = measured[..2] else {
            unreachable!("two lines")
        };
        report.number("grpc_poll_1000_msgs_per_s", grpc_poll, "msg/s");
        report.number("rest_poll_1000_msgs_per_s", rest_poll, "msg/s");
        report.number("grpc_poll_gateway_cpu_per_msg", grpc_cpu, "µs");
        report.number("rest_poll_gateway_cpu_per_msg", rest_cpu, "µs");
        report.ratio("rest_poll / grpc_poll", rest_poll / grpc_poll);

        // Subscriptions catching up: each opens at offset 0, reads 1000 messages and leaves,
        // over gRPC and over REST's Server-Sent Events, interleaved.
        const CAUGHT_UP: u64 = 1000;
        let url = format!(
            "{base}/v1/streams/{stream}/topics/bench/messages:subscribe?partition_id=0&offset=0"
        );
        let mut lines: Vec<Line<'_>> = vec![
            Box::new(|slice| {
                let ch = ch.clone();
                Box::pin(throughput(args.concurrency, slice, move || {
                    let mut client = MessageServiceClient::new(ch.clone());
                    async move {
                        let request = proto::SubscribeRequest {
                            stream: stream.into(),
                            topic: "bench".into(),
                            partition_id: Some(0),
                            offset: Some(0),
                            ..Default::default()
                        };
                        let Ok(response) = client.subscribe(request).await else {
                            return 0;
                        };
                        let mut items = response.into_inner();
                        let mut read = 0;
                        while read < CAUGHT_UP {
                            match items.message().await {
                                Ok(Some(item)) => {
                                    if matches!(
                                        item.event,
                                        Some(proto::subscribe_response::Event::Message(_))
                                    ) {
                                        read += 1;
                                    }
                                }
                                _ => break,
                            }
                        }
                        read
                    }
                }))
            }),
            Box::new(|slice| {
                let (http, url) = (http.clone(), url.clone());
                Box::pin(throughput(args.concurrency, slice, move || {
                    let request = http.get(&url).header("accept", "text/event-stream");
                    async move {
                        let Ok(mut response) = request.send().await else {
                            return 0;
                        };
                        // Each message is one event; the stream opens with a `retry:` hint
                        // and (within the run) no heartbeat, so events = blank lines - 1.
                        let (mut ends, mut last) = (0u64, 0u8);
                        while ends < CAUGHT_UP + 1 {
                            let Ok(Some(chunk)) = response.chunk().await else {
                                break;
                            };
                            ends += memchr::memmem::find_iter(&chunk, b"\n\n").count() as u64;
                            if last == b'\n' && chunk.first() == Some(&b'\n') {
                                ends += 1;
                            }
                            last = chunk.last().copied().unwrap_or(last);
                        }
                        ends.saturating_sub(1).min(CAUGHT_UP)
                    }
                }))
            }),
        ];
        let measured = interleave(rounds as usize, slice, gateway.child.id(), &mut lines).await;
        drop(lines);
        let [(grpc_sub, grpc_cpu), (rest_sub, rest_cpu)] = measured[..2] else {
            unreachable!("two lines")
        };
        report.number("grpc_subscribe_catch_up_msgs_per_s", grpc_sub, "msg/s");
        report.number("rest_sse_catch_up_msgs_per_s", rest_sub, "msg/s");
        report.number("grpc_subscribe_gateway_cpu_per_msg", grpc_cpu, "µs");
        report.number("rest_sse_gateway_cpu_per_msg", rest_cpu, "µs");
        report.ratio("rest_sse / grpc_subscribe", rest_sub / grpc_sub);
    }

    // Memory: idle, under the load above, and after a soak of mixed traffic.
    report.number(
        "rss_after_load_mib",
        gateway.rss_kib() as f64 / 1024.0,
        "MiB",
    );
    report.ceiling("rss_idle", idle_rss as f64 / 1024.0, "MiB", 20.0);
    if args.runs(Part::Soak) && args.soak_secs > 0 {
        soak(&args, &gateway, ch.clone(), stream, &mut report).await;
    }

    // Idle subscribers: held open on the in-memory gateway, with nothing arriving.
    if let Some(memory) = memory_gateway
        .as_ref()
        .filter(|_| args.runs(Part::Subscribers))
    {
        idle_subscribers(&args, memory, &mut report).await;
    }

    if args.runs(Part::Hostile) {
        hostile(&args, &data.path().join("hostile"), &mut report).await;
    }
    if args.runs(Part::Flood) {
        hpack_flood(&args, &data.path().join("flood"), &mut report).await;
    }

    if args.runs(Part::Instructions) {
        instructions(&args, &data.path().join("instructions"), &mut report).await;
    }

    if args.runs(Part::Wire) {
        wire(
            &args,
            &data.path().join("wire"),
            iggy.as_deref(),
            &mut report,
        )
        .await;
    }

    if iggy.is_some() {
        // Leave the shared server as it was.
        let _ = StreamServiceClient::new(ch.clone())
            .delete_stream(proto::DeleteStreamRequest {
                stream: stream.into(),
                ..Default::default()
            })
            .await;
    }
    report.print();
    if let Some(path) = &args.json {
        let doc = json!({ "args": format!("{args:?}"), "results": report.json });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).expect("json")).expect("writes JSON");
        println!("wrote {}", path.display());
    }
}

/// Messages shaped like the JSON documents applications send (keys repeat, values vary), so
/// gzip meets a realistic ratio rather than a run of one byte.
fn json_like_messages(count: usize, size: usize) -> Vec<proto::Message> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..count)
        .map(|_| {
            let mut text = String::with_capacity(size + 128);
            text.push('[');
            while text.len() < size {
                text.push_str(&format!(
                    r#"{{"order_id":{},"customer":"c-{:05}","sku":"SKU-{:04}","quantity":{},"total":{}.{:02},"status":"{}"}},"#,
                    rng.u32(..),
                    rng.u32(..100_000),
                    rng.u32(..10_000),
                    rng.u32(1..20),
                    rng.u32(..1000),
                    rng.u32(..100),
                    ["created", "paid", "shipped"][rng.usize(..3)],
                ));
            }
            text.truncate(size.saturating_sub(1));
            text.push(']');
            proto::Message {
                body: Some(proto::message::Body::Payload(Bytes::from(text))),
                ..Default::default()
            }
        })
        .collect()
}

/// TLS files for the wire part: a CA and a certificate for 127.0.0.1 that it signed.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).expect("TLS directory");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).expect("cert written");
    std::fs::write(&key_path, key.serialize_pem()).expect("key written");
    (cert_path, key_path, ca_pem)
}

/// gRPC batch produce three ways, interleaved in one run: cleartext and uncompressed (the
/// base), over TLS (a second gateway, the same build, with a certificate), and gzip-compressed
/// both ways over cleartext. Each gateway's CPU per message is measured over its own slices.
async fn wire(args: &Args, dir: &Path, iggy: Option<&str>, report: &mut Report) {
    use tonic::{
        codec::CompressionEncoding,
        transport::{Certificate, ClientTlsConfig},
    };
    let (cert, key, ca) = tls_files(&dir.join("tls"));
    let plain = Gateway::start(&dir.join("plain"), iggy, args.concurrency);
    let tls = Gateway::start_with(
        &dir.join("tls-data"),
        iggy,
        args.concurrency,
        &[("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &key)],
    );
    let stream: &'static str = Box::leak(format!("wire-{}", std::process::id()).into_boxed_str());
    prepare_topic(plain.addr, stream).await;
    let tls_channel = || async {
        Channel::from_shared(format!("https://127.0.0.1:{}", tls.addr.port()))
            .expect("uri")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca))
                    .domain_name("localhost"),
            )
            .expect("TLS settings")
            .connect()
            .await
            .expect("connects over TLS")
    };
    if iggy.is_none() {
        // Its own store: the topic is created there too.
        let channel = tls_channel().await;
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
    let batch = json_like_messages(args.batch, args.message_size);
    let encoded = send_request(stream, None, batch.clone()).encode_to_vec();
    let gzipped = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&encoded).expect("compressed");
        encoder.finish().expect("compressed").len()
    };
    let (mut plain_channels, mut tls_channels) = (Vec::new(), Vec::new());
    for _ in 0..args.concurrency {
        plain_channels.push(channel(plain.addr).await);
        tls_channels.push(tls_channel().await);
    }
    let (plain_channels, tls_channels) = (Arc::new(plain_channels), Arc::new(tls_channels));
    let line = |channels: Arc<Vec<Channel>>, gzip: bool| -> Line<'_> {
        let batch = batch.clone();
        Box::new(move |slice| {
            let (channels, batch) = (Arc::clone(&channels), batch.clone());
            Box::pin(throughput_by_caller(
                args.concurrency,
                slice,
                move |caller| {
                    let mut client = MessageServiceClient::new(channels[caller].clone());
                    if gzip {
                        client = client
                            .send_compressed(CompressionEncoding::Gzip)
                            .accept_compressed(CompressionEncoding::Gzip);
                    }
                    let request = send_request(stream, None, batch.clone());
                    async move {
                        client
                            .send_messages(request)
                            .await
                            .map_or(0, |r| r.into_inner().ids.len() as u64)
                    }
                },
            ))
        })
    };
    // The TLS gateway is another process: each line's CPU is read from the gateway it loads.
    let rounds = args.rounds.max(1);
    let slice = Duration::from_secs(args.duration_secs) / rounds;
    let mut totals = [(0.0f64, 0u64); 3];
    let mut lines = [
        (line(Arc::clone(&plain_channels), false), plain.child.id()),
        (line(Arc::clone(&tls_channels), false), tls.child.id()),
        (line(Arc::clone(&plain_channels), true), plain.child.id()),
    ];
    for round in 0..rounds as usize {
        for k in 0..lines.len() {
            let i = (k + round) % lines.len();
            let before = cpu_ticks(lines[i].1);
            let rate = (lines[i].0)(slice).await;
            totals[i].0 += rate * slice.as_secs_f64();
            totals[i].1 += cpu_ticks(lines[i].1).saturating_sub(before);
        }
    }
    drop(lines);
    let seconds = slice.as_secs_f64() * f64::from(rounds);
    let [(clear, clear_cpu), (over_tls, tls_cpu), (gzip, gzip_cpu)] =
        totals.map(|(units, ticks)| (units / seconds, ticks as f64 * 10_000.0 / units.max(1.0)));
    report.text(
        "wire lines",
        &format!(
            "gRPC batch produce of JSON-like payloads, interleaved: {rounds} rounds of {slice:?}; \
             one batch is {} bytes, {} gzipped",
            encoded.len(),
            gzipped
        ),
    );
    report.number("wire_cleartext_batch_msgs_per_s", clear, "msg/s");
    report.number("wire_tls_batch_msgs_per_s", over_tls, "msg/s");
    report.number("wire_gzip_batch_msgs_per_s", gzip, "msg/s");
    report.number("wire_cleartext_gateway_cpu_per_msg", clear_cpu, "µs");
    report.number("wire_tls_gateway_cpu_per_msg", tls_cpu, "µs");
    report.number("wire_gzip_gateway_cpu_per_msg", gzip_cpu, "µs");
    report.ratio("wire tls / cleartext (throughput)", over_tls / clear);
    report.ratio("wire gzip / uncompressed (throughput)", gzip / clear);
    report.ratio(
        "wire tls / cleartext (gateway CPU per msg)",
        tls_cpu / clear_cpu.max(f64::MIN_POSITIVE),
    );
    report.ratio(
        "wire gzip / uncompressed (gateway CPU per msg)",
        gzip_cpu / clear_cpu.max(f64::MIN_POSITIVE),
    );
    report.ratio(
        "wire gzip / uncompressed (request bytes)",
        gzipped as f64 / encoded.len() as f64,
    );
}

/// Amplification attacks against a fresh gateway at its default limits (rate limiting off, so
/// the memory budget alone holds them): each attacker sends 15 MiB bodies that decode to
/// millions of structs, half over gRPC (`2a 00` repeated) and half over REST (`{},` repeated).
/// Then `--random-paths` requests on paths no route has, with /metrics measured around them.
async fn hostile(args: &Args, dir: &Path, report: &mut Report) {
    let gateway = Gateway::start(dir, None, 1);
    prepare_topic(gateway.addr, "hostile").await;
    let base = format!("http://{}", gateway.addr);
    let mut grpc_body = proto::SendMessagesRequest {
        stream: "hostile".into(),
        topic: "bench".into(),
        ..Default::default()
    }
    .encode_to_vec();
    grpc_body.extend([0x2a, 0x00].repeat(15 * 1024 * 1024 / 2));
    let mut framed = vec![0u8];
    framed.extend(u32::try_from(grpc_body.len()).expect("fits").to_be_bytes());
    framed.extend(grpc_body);
    let grpc_body = Bytes::from(framed);
    let rest_body = Bytes::from(format!(
        "{{\"messages\":[{}{{}}]}}",
        "{},".repeat(15 * 1024 * 1024 / 3)
    ));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut attackers = Vec::new();
    for attacker in 0..args.attackers {
        let (base, refused) = (base.clone(), Arc::clone(&refused));
        let (grpc_body, rest_body) = (grpc_body.clone(), rest_body.clone());
        attackers.push(tokio::spawn(async move {
            let grpc = attacker % 2 == 0;
            let client = if grpc {
                reqwest::Client::builder().http2_prior_knowledge().build()
            } else {
                reqwest::Client::builder().build()
            }
            .expect("client");
            for _ in 0..3 {
                let request = if grpc {
                    client
                        .post(format!(
                            "{base}/iggy.gateway.v1.MessageService/SendMessages"
                        ))
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(grpc_body.clone())
                } else {
                    client
                        .post(format!("{base}/v1/streams/hostile/topics/bench/messages"))
                        .header("content-type", "application/json")
                        .body(rest_body.clone())
                };
                // A refusal before the upload ends shows up as a cut-off write: refused too.
                let accepted = request.send().await.is_ok_and(|response| {
                    response.status().is_success()
                        && response
                            .headers()
                            .get("grpc-status")
                            .is_none_or(|status| status == "0")
                });
                if !accepted {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for attacker in attackers {
        let _ = attacker.await;
    }
    report.number(
        "hostile_attack_requests_refused",
        refused.load(Ordering::Relaxed) as f64,
        &format!("of {}", args.attackers * 3),
    );
    report.number("hostile_attack_secs", started.elapsed().as_secs_f64(), "s");
    report.ceiling(
        "hostile_peak_rss",
        gateway.peak_rss_kib() as f64 / 1024.0,
        "MiB",
        256.0,
    );

    let http = reqwest::Client::new();
    let metrics_len = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
            .len()
    };
    let before = metrics_len().await;
    let prefixes = [
        "/grpc.health.v1.Health/",
        "/",
        "/v1/streams/x/",
        "/streams/",
    ];
    for i in 0..args.random_paths {
        let noise: String = (0..200)
            .map(|j| char::from(b'a' + u8::try_from((i * 31 + j * 7) % 26).unwrap_or(0)))
            .collect();
        let path = format!("{}{noise}{i}", prefixes[i % prefixes.len()]);
        let mut request = http.post(format!("{base}{path}"));
        if i % 3 == 0 {
            request = request.header("content-type", "application/grpc");
        }
        let _ = request.send().await;
    }
    let after = metrics_len().await;
    report.number("hostile_metrics_bytes_before", before as f64, "bytes");
    report.ceiling(
        "hostile_metrics_growth",
        after.saturating_sub(before) as f64,
        "bytes",
        1024.0,
    );
}

/// HPACK lets a HEADERS frame of a few hundred bytes decode to a header list of 16 KiB: one
/// literal field `x: v` enters the connection's table, and every request then refers to it
/// `refs` times, one byte each. `--flood-connections` connections each keep 190 such requests
/// open (bodies never sent) for `--flood-secs`, against a fresh gateway each time: with 400
/// references (a 13.9 KB list, under the limit: a call is served and waits for its body, up
/// to `MAX_CONCURRENT_REQUESTS_PER_CLIENT` at once, the rest shed) and with 480 (16.6 KB, over
/// it: each is refused). Reports the gateway's peak RSS.
async fn hpack_flood(args: &Args, dir: &Path, report: &mut Report) {
    for (refs, line) in [
        (400, "hpack_flood_peak_rss_served"),
        (480, "hpack_flood_peak_rss_refused"),
    ] {
        let gateway = Gateway::start(&dir.join(refs.to_string()), None, 1);
        let until = Instant::now() + Duration::from_secs(args.flood_secs);
        let floods: Vec<_> = (0..args.flood_connections)
            .map(|_| tokio::spawn(flood_connection(gateway.addr, refs, 190, until)))
            .collect();
        let mut sent = 0;
        for flood in floods {
            sent += flood.await.unwrap_or(0);
        }
        report.number(&format!("{line}_requests"), sent as f64, "sent");
        report.number(line, gateway.peak_rss_kib() as f64 / 1024.0, "MiB");
    }
    honest_beside_a_flood(args, &dir.join("honest"), report).await;
}

/// Honest HTTP/2 clients beside a flood of `--honest-flood-connections` (refused lists), from
/// another address than the flood's (`127.0.0.2`, this machine's loopback too): one connection sending one
/// `GET /v1/streams` at a time, then one keeping 100 in flight, each for half of
/// `--flood-secs`, first on a quiet gateway and then during the flood. Reports their rates, the
/// one-at-a-time client's slowest call, and each rate during the flood ÷ without it.
async fn honest_beside_a_flood(args: &Args, dir: &Path, report: &mut Report) {
    let gateway = Gateway::start(dir, None, 1);
    let url = format!("http://{}/v1/streams", gateway.addr);
    let Ok(client) = reqwest::Client::builder()
        .http2_prior_knowledge()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
    else {
        report.text(
            "hpack_flood_honest",
            "skipped: no client bound to 127.0.0.2",
        );
        return;
    };
    let phase = Duration::from_secs(args.flood_secs.max(2) / 2);
    let mut quiet = Vec::new();
    for in_flight in [1, 100] {
        quiet.push(honest_gets(&client, &url, in_flight, phase).await);
    }
    let until = Instant::now() + phase * 2 + Duration::from_secs(1);
    let floods: Vec<_> = (0..args.honest_flood_connections)
        .map(|_| tokio::spawn(flood_connection(gateway.addr, 480, 190, until)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ((in_flight, name), (quiet_rate, _)) in [(1, "one_stream"), (100, "100_streams")]
        .into_iter()
        .zip(quiet)
    {
        let (rate, slowest) = honest_gets(&client, &url, in_flight, phase).await;
        let line = format!("hpack_flood_honest_{name}");
        report.number(&format!("{line}_quiet"), quiet_rate, "req/s");
        report.number(&format!("{line}_flooded"), rate, "req/s");
        if in_flight == 1 {
            report.number(
                &format!("{line}_flooded_slowest"),
                slowest.as_secs_f64() * 1000.0,
                "ms",
            );
        }
        report.ratio(&format!("{line}_flooded_vs_quiet"), rate / quiet_rate);
    }
    for flood in floods {
        let _ = flood.await;
    }
}

/// `in_flight` callers sharing `client`'s connection, each sending one GET after another for
/// `span`: answers with status 200 a second, and the slowest call.
async fn honest_gets(
    client: &reqwest::Client,
    url: &str,
    in_flight: usize,
    span: Duration,
) -> (f64, Duration) {
    let until = Instant::now() + span;
    let callers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let (mut answered, mut slowest) = (0u64, Duration::ZERO);
                while Instant::now() < until {
                    let started = Instant::now();
                    let ok = client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|answer| answer.status() == 200);
                    slowest = slowest.max(started.elapsed());
                    answered += u64::from(ok);
                }
                (answered, slowest)
            })
        })
        .collect();
    let (mut answered, mut slowest) = (0, Duration::ZERO);
    for caller in callers {
        if let Ok((count, longest)) = caller.await {
            answered += count;
            slowest = slowest.max(longest);
        }
    }
    (answered as f64 / span.as_secs_f64(), slowest)
}

/// One flooding connection (see [`hpack_flood`]): how many requests it sent.
async fn flood_connection(addr: SocketAddr, refs: usize, window: usize, until: Instant) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }
    fn literal(text: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(text.len()).unwrap_or(0)];
        out.extend(text);
        out
    }
    let Ok(socket) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let _ = socket.set_nodelay(true);
    let (mut read, mut write) = socket.into_split();
    // :method POST, :scheme http, :path, :authority, content-type, te: trailers.
    let mut base = vec![0x83, 0x86, 0x04];
    base.extend(literal(b"/iggy.gateway.v1.StreamService/ListStreams"));
    base.push(0x01);
    base.extend(literal(addr.to_string().as_bytes()));
    base.extend([0x0f, 0x10]);
    base.extend(literal(b"application/grpc"));
    base.push(0x00);
    base.extend(literal(b"te"));
    base.extend(literal(b"trailers"));
    // The first request enters `x: v` in the table (index 62); every reference is 0xbe.
    let mut first = base.clone();
    first.push(0x40);
    first.extend(literal(b"x"));
    first.extend(literal(b"v"));
    first.extend(vec![0xbe; refs - 1]);
    let mut rest = base;
    rest.extend(vec![0xbe; refs]);

    let open = Arc::new(tokio::sync::Semaphore::new(window));
    let acks = Arc::new(tokio::sync::Mutex::new(Vec::<u8>::new()));
    let reader = {
        let (open, acks) = (Arc::clone(&open), Arc::clone(&acks));
        tokio::spawn(async move {
            let mut streams = std::collections::HashSet::new();
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65536];
            while let Ok(n) = read.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                while buf.len() - at >= 9 {
                    let len = usize::from(buf[at]) << 16
                        | usize::from(buf[at + 1]) << 8
                        | usize::from(buf[at + 2]);
                    if buf.len() - at < 9 + len {
                        break;
                    }
                    let (kind, flags) = (buf[at + 3], buf[at + 4]);
                    let id =
                        u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]])
                            & 0x7fff_ffff;
                    let payload = &buf[at + 9..at + 9 + len];
                    match kind {
                        0x4 if flags & 1 == 0 => acks.lock().await.extend(frame(0x4, 1, 0, &[])),
                        0x6 if flags & 1 == 0 => {
                            acks.lock().await.extend(frame(0x6, 1, 0, payload))
                        }
                        0x7 => {
                            open.close();
                            return;
                        }
                        // A stream ends once, by END_STREAM or RST_STREAM, whichever comes first.
                        0x0 | 0x1 | 0x3
                            if (kind == 0x3 || flags & 1 == 1) && streams.insert(id) =>
                        {
                            open.add_permits(1);
                        }
                        _ => {}
                    }
                    at += 9 + len;
                }
                buf.drain(..at);
            }
            open.close();
        })
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut sent = 0u64;
    let mut id = 1u32;
    while Instant::now() < until {
        let Ok(Ok(permits)) =
            tokio::time::timeout(Duration::from_millis(200), open.acquire()).await
        else {
            if open.is_closed() {
                break;
            }
            continue;
        };
        permits.forget();
        let mut more = 1;
        while open.try_acquire().map(|permit| permit.forget()).is_ok() {
            more += 1;
        }
        out.extend(acks.lock().await.drain(..));
        for _ in 0..more {
            out.extend(frame(0x1, 0x4, id, if id == 1 { &first } else { &rest }));
            id += 2;
            sent += 1;
        }
        if write.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    reader.abort();
    sent
}

/// Mixed sends and polls for `--soak-secs`; RSS is read each minute (and at the end) so the
/// report shows the trend, not only two points.
async fn soak(
    args: &Args,
    gateway: &Gateway,
    ch: Channel,
    stream: &'static str,
    report: &mut Report,
) {
    let small = text_messages(10, args.message_size);
    let traffic = paced(
        args.concurrency,
        args.soak_rate,
        Duration::from_secs(args.soak_secs),
        move || {
            let mut client = MessageServiceClient::new(ch.clone());
            let request = send_request(stream, None, small.clone());
            async move {
                let sent = client
                    .send_messages(request)
                    .await
                    .map_or(0, |r| r.into_inner().ids.len() as u64);
                let poll = proto::PollMessagesRequest {
                    stream: stream.into(),
                    topic: "bench".into(),
                    count: 10,
                    strategy: proto::PollingStrategy::Last.into(),
                    ..Default::default()
                };
                let _ = client.poll_messages(poll).await;
                sent
            }
        },
    );
    tokio::pin!(traffic);
    // The first minute (or tenth of a short soak) warms allocator pools and caches; growth is
    // measured from there to the end.
    let warm_up = Duration::from_secs((args.soak_secs / 10).clamp(1, 60));
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + warm_up,
        Duration::from_secs(60),
    );
    let rate = loop {
        tokio::select! {
            rate = &mut traffic => break rate,
            _ = ticker.tick() => samples.push(gateway.rss_kib()),
        }
    };
    let after = gateway.rss_kib();
    let before = samples.first().copied().unwrap_or(after);
    report.number("soak_msgs_per_s", rate, "msg/s");
    report.text(
        "rss_during_soak_mib",
        &samples
            .iter()
            .chain([&after])
            .map(|kib| format!("{:.1}", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" "),
    );
    report.number(
        &format!("rss_after_{}s_soak_mib", args.soak_secs),
        after as f64 / 1024.0,
        "MiB",
    );
    report.ceiling(
        "rss_growth_after_warm_up",
        (after as f64 - before as f64) / 1024.0,
        "MiB",
        2.0,
    );
}

/// One gRPC poll of `count` messages of partition 0 from an offset below 1000; how many came.
async fn poll_grpc(ch: Channel, stream: &'static str, count: u32) -> u64 {
    let request = proto::PollMessagesRequest {
        stream: stream.into(),
        topic: "bench".into(),
        partition_id: 0,
        strategy: proto::PollingStrategy::Offset.into(),
        offset: Some(u64::from(fastrand::u32(0..1000))),
        count,
        ..Default::default()
    };
    MessageServiceClient::new(ch)
        .poll_messages(request)
        .await
        .map_or(0, |r| r.into_inner().messages.len() as u64)
}

async fn idle_subscribers(args: &Args, memory: &Gateway, report: &mut Report) {
    if args.idle_subscribers == 0 {
        return;
    }
    prepare_topic(memory.addr, "idle").await;
    let mem_ch = channel(memory.addr).await;
    // The in-memory store holds the unary part's messages; only the growth is the subscribers'.
    let rss_before = memory.rss_kib();
    let mut streams = Vec::with_capacity(args.idle_subscribers);
    for _ in 0..args.idle_subscribers {
        let mut client = MessageServiceClient::new(mem_ch.clone());
        let request = proto::SubscribeRequest {
            stream: "idle".into(),
            topic: "bench".into(),
            ..Default::default()
        };
        match client.subscribe(request).await {
            Ok(stream) => streams.push(stream.into_inner()),
            Err(status) => panic!("subscription refused: {status}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = memory.cpu_ticks();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let ticks = memory.cpu_ticks().saturating_sub(before);
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
        "rss_per_idle_subscriber_kib",
        memory.rss_kib().saturating_sub(rss_before) as f64 / streams.len().max(1) as f64,
        "KiB",
    );
}

/// A server run under callgrind, whose instruction counters the harness zeroes and dumps
/// around a number of calls.
struct Counted {
    pid: u32,
    /// Where callgrind writes its dumps: `<out>.<n>`, numbered from 1.
    out: PathBuf,
    dumps: usize,
}

impl Counted {
    /// `valgrind --tool=callgrind` before `program`; valgrind's own lines go to a file, so
    /// the program's output (its address) reads as usual.
    fn command(dir: &Path, name: &str, program: impl AsRef<std::ffi::OsStr>) -> (Command, PathBuf) {
        let out = dir.join(format!("{name}.callgrind"));
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(format!(
                "--log-file={}",
                dir.join(format!("{name}.valgrind.log")).display()
            ))
            .arg("--dump-instr=no")
            .arg(program);
        // valgrind names the pipes `callgrind_control` talks through after $HOST, which the
        // gateway also reads: unset here, it binds its default (127.0.0.1) and both agree.
        command.env_remove("HOST");
        (command, out)
    }

    fn new(pid: u32, out: PathBuf) -> Self {
        Self { pid, out, dumps: 0 }
    }

    fn control(&self, what: &str) {
        let status = Command::new("callgrind_control")
            .arg(what)
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("callgrind_control runs");
        assert!(status.success(), "callgrind_control {what} failed");
    }

    /// Instructions counted since `zero`, read from the dump this call writes.
    async fn since_zero(&mut self) -> u64 {
        self.control("-d");
        self.dumps += 1;
        let file = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(total) = text
                    .lines()
                    .find_map(|line| {
                        line.strip_prefix("totals:")
                            .or(line.strip_prefix("summary:"))
                    })
                    .and_then(|value| value.trim().parse().ok())
            {
                return total;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no callgrind dump at {}", file.display());
    }

    /// Instructions per call of `calls` calls of `op`, one at a time, after `warm_up` calls.
    async fn per_call<Op, Fut>(&mut self, warm_up: u64, calls: u64, op: Op) -> f64
    where
        Op: Fn() -> Fut,
        Fut: Future<Output = u64>,
    {
        for _ in 0..warm_up {
            assert_eq!(op().await, 1, "a warm-up call failed");
        }
        self.control("-z");
        for _ in 0..calls {
            assert_eq!(op().await, 1, "a counted call failed");
        }
        self.since_zero().await as f64 / calls as f64
    }
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Unary sends counted in instructions: the gateway (in-memory store) and the bare floors each
/// run under callgrind, one caller sends `--instruction-calls` calls after a warm-up, and the
/// counters cover exactly those calls. Instruction counts are the same run after run whatever
/// else the machine does, where the CPU-time lines move with it. One caller means one store
/// commit per call.
async fn instructions(args: &Args, dir: &Path, report: &mut Report) {
    if !on_path("valgrind") || !on_path("callgrind_control") {
        report.text(
            "instructions",
            "skipped: valgrind (callgrind) is not installed",
        );
        return;
    }
    std::fs::create_dir_all(dir).expect("a directory for callgrind");
    let (command, out) = Counted::command(dir, "gateway", Gateway::binary());
    let gateway = Gateway::start_command(command, Path::new(":memory:"), None, 1, &[]);
    let mut counted_gateway = Counted::new(gateway.child.id(), out);
    let (command, out) = Counted::command(
        dir,
        "bare",
        std::env::current_exe().expect("the harness's own path"),
    );
    let bare = BareServers::start_command(command);
    let mut counted_bare = Counted::new(bare.child.id(), out);

    prepare_topic(gateway.addr, "unary").await;
    let one = text_messages(1, args.message_size);
    let rest_one = Bytes::from(
        serde_json::to_vec(&json!({"messages": [{"text": payload(args.message_size)}]}))
            .expect("json"),
    );
    let path = "v1/streams/unary/topics/bench/messages";
    let http = reqwest::Client::new();
    let (warm_up, calls) = (args.instruction_calls / 4, args.instruction_calls);
    let grpc = counted_gateway
        .per_call(
            warm_up,
            calls,
            unary_op(channel(gateway.addr).await, "unary", one.clone()),
        )
        .await;
    let rest = counted_gateway
        .per_call(
            warm_up,
            calls,
            rest_unary_op(
                http.clone(),
                format!("http://{}/{path}", gateway.addr),
                rest_one.clone(),
            ),
        )
        .await;
    let tonic = counted_bare
        .per_call(
            warm_up,
            calls,
            unary_op(channel(bare.tonic).await, "unary", one),
        )
        .await;
    let axum = counted_bare
        .per_call(
            warm_up,
            calls,
            rest_unary_op(http, format!("http://{}/{path}", bare.axum), rest_one),
        )
        .await;
    report.text(
        "instructions",
        &format!("callgrind, 1 caller, {calls} calls each, in-memory store"),
    );
    report.number("grpc_unary_instructions_per_call", grpc, "instr");
    report.number("bare_tonic_instructions_per_call", tonic, "instr");
    report.ratio(
        "grpc_unary / bare_tonic instructions per call",
        grpc / tonic,
    );
    report.number("rest_unary_instructions_per_call", rest, "instr");
    report.number("bare_axum_instructions_per_call", axum, "instr");
    report.ratio("rest_unary / bare_axum instructions per call", rest / axum);
}
