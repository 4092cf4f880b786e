//! `spawn_app()`: a gateway on a free loopback port with its own data directory, and a
//! [`TestApp`] with typed clients for it: one gRPC client per service, an HTTP/1.1 client, and
//! helpers that make a call and hand back what a test asserts on.

use std::net::SocketAddr;

use iggy_gateway::{
    config::Config,
    proto::{
        self, message_service_client::MessageServiceClient,
        stats_service_client::StatsServiceClient, stream_service_client::StreamServiceClient,
        topic_service_client::TopicServiceClient,
    },
    startup::{Application, StartupError},
};
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Streaming, transport::Channel};
use tonic_health::pb::health_client::HealthClient;

pub struct TestApp {
    pub addr: SocketAddr,
    pub channel: Channel,
    pub streams: StreamServiceClient<Channel>,
    pub topics: TopicServiceClient<Channel>,
    pub messages: MessageServiceClient<Channel>,
    pub stats: StatsServiceClient<Channel>,
    /// `grpc.health.v1.Health`, as Kubernetes probes and load balancers call it.
    pub health: HealthClient<Channel>,
    /// An HTTP/1.1-only client, as browsers and curl use for gRPC-Web and REST.
    pub http1: reqwest::Client,
    data_dir: TempDir,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), StartupError>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("temp dir")).await
}

/// Starts a gateway on an existing data directory (to test what survives a restart).
pub async fn spawn_app_in(data_dir: TempDir) -> TestApp {
    let config = Config::for_tests(data_dir.path().display().to_string());
    spawn_with(config, data_dir).await
}

/// A gateway with settings changed from the test defaults.
pub async fn spawn_configured(change: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_tests(dir.path().display().to_string());
    change(&mut config);
    spawn_with(config, dir).await
}

/// A gateway whose event routes have a default topic, as in production.
pub async fn spawn_app_with_default_topic() -> TestApp {
    spawn_configured(|c| {
        c.backend.iggy_stream = "sample-stream".into();
        c.backend.iggy_topic = "events".into();
        c.backend.iggy_partitions = 3;
    })
    .await
}

pub async fn spawn_with(config: Config, data_dir: TempDir) -> TestApp {
    let app = Application::build(config).await.expect("gateway starts");
    serve(app, data_dir).await
}

/// Starts a gateway again on the data directory of one just stopped, whose last tasks (a
/// subscription ending) may hold the store's lock a moment after it stopped serving.
pub async fn restart_with(config: Config, data_dir: TempDir) -> TestApp {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Application::build(config.clone()).await {
            Ok(app) => return serve(app, data_dir).await,
            Err(StartupError::Unavailable(why))
                if why.contains("Cannot acquire lock") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => panic!("gateway starts: {err:?}"),
        }
    }
}

async fn serve(app: Application, data_dir: TempDir) -> TestApp {
    let addr = app.local_addr();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("gRPC client connects");
    TestApp {
        addr,
        streams: StreamServiceClient::new(channel.clone()),
        topics: TopicServiceClient::new(channel.clone()),
        messages: MessageServiceClient::new(channel.clone()),
        stats: StatsServiceClient::new(channel.clone()),
        health: HealthClient::new(channel.clone()),
        channel,
        http1: reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("http client"),
        data_dir,
        shutdown,
        server,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the gateway gracefully and hands back its data directory.
    pub async fn stop(self) -> TempDir {
        // Every field named, so a gRPC client added later is dropped here too: its open HTTP/2
        // connection would hold the graceful shutdown until its deadline.
        let Self {
            addr: _,
            channel,
            streams,
            topics,
            messages,
            stats,
            health,
            http1: _http1,
            data_dir,
            shutdown,
            server,
        } = self;
        drop((streams, topics, messages, stats, health, channel));
        let _ = shutdown.send(());
        server
            .await
            .expect("server task")
            .expect("server stops cleanly");
        data_dir
    }

    /// GETs a REST path: the status and the parsed JSON answer (`Null` when empty).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        self.rest(Method::GET, path, None).await
    }

    /// POSTs a JSON body: the status and the parsed JSON answer (`Null` when empty).
    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.rest(Method::POST, path, Some(body)).await
    }

    /// PUTs a JSON body: the status and the parsed JSON answer (`Null` when empty).
    pub async fn put_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.rest(Method::PUT, path, Some(body)).await
    }

    /// PATCHes with a JSON body: the status and the parsed JSON answer (`Null` when empty).
    pub async fn patch_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.rest(Method::PATCH, path, Some(body)).await
    }

    /// DELETEs a REST path: the status and the parsed JSON answer (`Null` when empty).
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.rest(Method::DELETE, path, None).await
    }

    /// POSTs bytes as a JSON body, as sent (not JSON, or not UTF-8, at will): the status and
    /// the parsed JSON answer.
    pub async fn post_raw_json(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let request = self
            .http1
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        Self::answer(request).await
    }

    /// Sends a JSON body, if any, and returns the status and the parsed JSON answer (`Null`
    /// when empty); a non-JSON answer fails the test.
    async fn rest(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http1.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::answer(request).await
    }

    /// Sends `request`: the status and the parsed JSON answer (`Null` when empty).
    async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON answer")
        };
        (status, json)
    }

    pub async fn create_stream(&self, name: &str) -> proto::Stream {
        self.streams
            .clone()
            .create_stream(proto::CreateStreamRequest { name: name.into() })
            .await
            .expect("stream created")
            .into_inner()
            .stream
            .expect("stream in response")
    }

    /// A stream, by name or id, with its topics.
    pub async fn get_stream(&self, stream: &str) -> proto::Stream {
        self.streams
            .clone()
            .get_stream(proto::GetStreamRequest {
                stream: stream.into(),
            })
            .await
            .expect("found")
            .into_inner()
            .stream
            .expect("stream")
    }

    pub async fn list_streams(&self) -> Vec<proto::Stream> {
        self.streams
            .clone()
            .list_streams(proto::ListStreamsRequest {})
            .await
            .expect("listed")
            .into_inner()
            .streams
    }

    pub async fn create_topic(&self, stream: &str, name: &str, partitions: u32) -> proto::Topic {
        self.topics
            .clone()
            .create_topic(proto::CreateTopicRequest {
                stream: stream.into(),
                name: name.into(),
                partitions_count: partitions,
                ..Default::default()
            })
            .await
            .expect("topic created")
            .into_inner()
            .topic
            .expect("topic in response")
    }

    /// A topic, by name or id, with its partitions.
    pub async fn get_topic(&self, stream: &str, topic: &str) -> proto::Topic {
        self.topics
            .clone()
            .get_topic(proto::GetTopicRequest {
                stream: stream.into(),
                topic: topic.into(),
            })
            .await
            .expect("found")
            .into_inner()
            .topic
            .expect("topic")
    }

    pub async fn list_topics(&self, stream: &str) -> Vec<proto::Topic> {
        self.topics
            .clone()
            .list_topics(proto::ListTopicsRequest {
                stream: stream.into(),
            })
            .await
            .expect("listed")
            .into_inner()
            .topics
    }

    /// Sends text messages to one partition and returns their ids.
    pub async fn send_texts(
        &self,
        stream: &str,
        topic: &str,
        partition_id: u32,
        texts: &[&str],
    ) -> Vec<String> {
        let messages = texts.iter().map(|t| text_message(t)).collect();
        self.send_to(stream, topic, partition_id, messages).await
    }

    /// Sends messages over gRPC to one partition and returns their ids.
    pub async fn send_to(
        &self,
        stream: &str,
        topic: &str,
        partition_id: u32,
        messages: Vec<proto::Message>,
    ) -> Vec<String> {
        self.messages
            .clone()
            .send_messages(proto::SendMessagesRequest {
                stream: stream.into(),
                topic: topic.into(),
                partitioning: Some(proto::send_messages_request::Partitioning::PartitionId(
                    partition_id,
                )),
                messages,
            })
            .await
            .expect("messages sent")
            .into_inner()
            .ids
    }

    pub async fn poll(&self, request: proto::PollMessagesRequest) -> proto::PollMessagesResponse {
        self.messages
            .clone()
            .poll_messages(request)
            .await
            .expect("poll succeeds")
            .into_inner()
    }

    /// Opens a live subscription (a plain request, or one with metadata); the error is the
    /// call's status.
    pub async fn subscribe(
        &self,
        request: impl tonic::IntoRequest<proto::SubscribeRequest>,
    ) -> Result<Streaming<proto::SubscribeResponse>, tonic::Status> {
        self.messages
            .clone()
            .subscribe(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The offset a consumer has stored for a partition, if any.
    pub async fn stored_offset(
        &self,
        stream: &str,
        topic: &str,
        consumer: &str,
        partition_id: u32,
    ) -> Option<u64> {
        self.messages
            .clone()
            .get_consumer_offset(proto::GetConsumerOffsetRequest {
                stream: stream.into(),
                topic: topic.into(),
                consumer: consumer.into(),
                partition_id,
            })
            .await
            .expect("read")
            .into_inner()
            .stored_offset
    }

    /// Polls `count` messages of a partition from `offset`.
    pub async fn poll_from(
        &self,
        stream: &str,
        topic: &str,
        partition_id: u32,
        offset: u64,
        count: u32,
    ) -> proto::PollMessagesResponse {
        self.poll(proto::PollMessagesRequest {
            stream: stream.into(),
            topic: topic.into(),
            partition_id,
            strategy: proto::PollingStrategy::Offset.into(),
            offset: Some(offset),
            count,
            ..Default::default()
        })
        .await
    }
}

pub fn text_message(text: &str) -> proto::Message {
    proto::Message {
        body: Some(proto::message::Body::Text(text.into())),
        ..Default::default()
    }
}

/// The texts of polled messages, in order.
pub fn texts(response: &proto::PollMessagesResponse) -> Vec<String> {
    response
        .messages
        .iter()
        .map(|m| match &m.body {
            Some(proto::polled_message::Body::Text(text)) => text.clone(),
            other => panic!("expected a text body, got {other:?}"),
        })
        .collect()
}

/// A gRPC channel to `addr` whose HTTP/2 windows take 64 KiB, so the gateway can hand a
/// stream little more than what the client has read.
pub async fn narrow_channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .expect("connects")
}

/// `message`'s bytes as one gRPC (or gRPC-Web) message: flag 0, length, bytes.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The Python with grpcio that `.ci/run` installs (`PYTHON`, else `python3`), or `None` with a
/// line saying the test is skipped.
pub fn python_with_grpcio() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_grpcio = std::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_grpcio {
        eprintln!("SKIPPED: {python} with grpcio is not available (`pip install grpcio`)");
        return None;
    }
    Some(python)
}

/// Runs `script` with `python` and `args`; its standard output, once it has succeeded.
pub async fn run_python(python: &str, script: &str, args: &[&std::ffi::OsStr]) -> String {
    let output = tokio::process::Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Opens an HTTP/2 connection that gives each answer a window of `window` bytes and never
/// more, asks for `paths` (each accepting `accept` as its `Accept-Encoding`), and returns the connection's task once each answer has begun, with
/// what keeps the client's side open (its handle and the answers).
pub async fn window_of(
    app: &TestApp,
    window: u32,
    paths: &[&str],
    accept: &str,
) -> (
    JoinHandle<Result<(), h2::Error>>,
    (
        h2::client::SendRequest<bytes::Bytes>,
        Vec<http::Response<h2::RecvStream>>,
    ),
) {
    window_from(app, window, paths, accept, None).await
}

/// [`window_of`], each request sent as from `forwarded_for` (`X-Forwarded-For`; a client of its
/// own to a gateway that trusts loopback as a proxy).
pub async fn window_from(
    app: &TestApp,
    window: u32,
    paths: &[&str],
    accept: &str,
    forwarded_for: Option<&str>,
) -> (
    JoinHandle<Result<(), h2::Error>>,
    (
        h2::client::SendRequest<bytes::Bytes>,
        Vec<http::Response<h2::RecvStream>>,
    ),
) {
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut h2 = h2.ready().await.expect("ready");
    let mut answers = Vec::new();
    for path in paths {
        let mut request = http::Request::get(app.url(path)).header("accept-encoding", accept);
        if let Some(client) = forwarded_for {
            request = request.header("x-forwarded-for", client);
        }
        let request = request.body(()).expect("request");
        let (response, _) = h2.send_request(request, true).expect("stream opened");
        answers.push(response);
    }
    let mut begun = Vec::new();
    for response in answers {
        let response = tokio::time::timeout(std::time::Duration::from_secs(5), response)
            .await
            .expect("answered")
            .expect("a response");
        assert_eq!(response.status(), 200);
        begun.push(response);
    }
    (connection, (h2, begun))
}

/// A sample's value in the `/metrics` of the gateway at `base` (`name` whole, without labels).
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics read");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}
