//! Shared pieces of the fuzz targets: an in-memory broker, the gateway's routers built the way
//! `startup` builds them (from the crate's public API only), and a tiny text format for HTTP
//! requests so seeds can be written by hand.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use iggy_gateway::{
    broker::{
        Broker, BrokerResult, ConsumerOffsetInfo, ConsumerOffsetRef, CreateTopic, ETag, Identifier,
        Name, PartitionInfo, PollMessages, PolledMessages, PollingStrategy, SendMessages, Sent,
        StoredMessage, StreamInfo, TopicInfo, TopicRef, UpdateStream, UpdateTopic,
    },
    connect::{Connect, ConnectSettings},
    grpc::{DefaultTopic, EventApi, Limits, MessageApi, StatsApi, StreamApi, TopicApi},
    identity::{Identity, KeyRing},
    layers::Scopes,
    metrics::Metrics,
    proto::{
        event_service_server::EventServiceServer, message_service_server::MessageServiceServer,
        stream_service_server::StreamServiceServer, topic_service_server::TopicServiceServer,
    },
    rest::{self, direct::Direct},
    startup::direct::{self, Services},
    stats::Stats,
    subscription::{CursorKeys, SubscribeSettings, Subscriptions},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The secret subscriptions sign cursors with in every target.
pub const CURSOR_SECRET: &[u8] = b"fuzzing-cursor-secret";
/// Partitions of every topic the fake broker reports.
pub const PARTITIONS: u32 = 3;
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A broker that keeps sent messages in memory and answers every metadata call with success.
pub struct FakeBroker {
    available: watch::Sender<bool>,
    messages: Mutex<Vec<StoredMessage>>,
}

impl Default for FakeBroker {
    fn default() -> Self {
        Self {
            available: watch::channel(true).0,
            messages: Mutex::new(Vec::new()),
        }
    }
}

fn name_of(id: &Identifier) -> String {
    match id {
        Identifier::Id(id) => format!("s{id}"),
        Identifier::Name(name) => name.clone(),
    }
}

fn stream_info(name: String) -> StreamInfo {
    StreamInfo {
        id: 1,
        name,
        created_at_micros: 1_700_000_000_000_000,
        topics_count: 1,
        size_bytes: 10,
        messages_count: 1,
        topics: vec![topic_info("t".into())],
    }
}

fn topic_info(name: String) -> TopicInfo {
    TopicInfo {
        id: 1,
        name,
        created_at_micros: 1_700_000_000_000_000,
        partitions_count: PARTITIONS,
        message_expiry_micros: None,
        max_topic_size_bytes: None,
        compression: iggy_gateway::broker::Compression::None,
        replication_factor: 1,
        size_bytes: 0,
        messages_count: 0,
        partitions: (0..PARTITIONS)
            .map(|id| PartitionInfo {
                id,
                created_at_micros: 1_700_000_000_000_000,
                current_offset: 0,
                size_bytes: 0,
                messages_count: 0,
            })
            .collect(),
    }
}

impl FakeBroker {
    pub fn stored(&self) -> Vec<StoredMessage> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Forgets every message, so a shared gateway starts each input as a fresh one would.
    pub fn reset(&self) {
        if let Ok(mut messages) = self.messages.lock() {
            messages.clear();
        }
    }
}

#[async_trait]
impl Broker for FakeBroker {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn availability(&self) -> watch::Receiver<bool> {
        self.available.subscribe()
    }
    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo> {
        Ok(stream_info(name.to_string()))
    }
    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo> {
        Ok(stream_info(name_of(&stream)))
    }
    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>> {
        Ok(vec![stream_info("s".into())])
    }
    async fn update_stream(&self, request: UpdateStream) -> BrokerResult<StreamInfo> {
        Ok(stream_info(request.name.to_string()))
    }
    async fn delete_stream(
        &self,
        _stream: Identifier,
        _expected: Option<ETag>,
    ) -> BrokerResult<()> {
        Ok(())
    }
    async fn purge_stream(&self, _stream: Identifier) -> BrokerResult<()> {
        Ok(())
    }
    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo> {
        let mut info = topic_info(request.name.to_string());
        info.partitions_count = request.partitions_count;
        info.message_expiry_micros = request.message_expiry_micros;
        info.max_topic_size_bytes = request.max_topic_size_bytes;
        info.compression = request.compression;
        info.replication_factor = request.replication_factor;
        Ok(info)
    }
    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo> {
        // Every partition reports the messages stored so far (they share one list), so the
        // heads match what polls return.
        let count = self.messages.lock().map(|m| m.len() as u64).unwrap_or(0);
        let mut info = topic_info(name_of(&topic.topic));
        info.messages_count = count;
        for partition in &mut info.partitions {
            partition.messages_count = count;
            partition.current_offset = count.saturating_sub(1);
        }
        Ok(info)
    }
    async fn list_topics(&self, _stream: Identifier) -> BrokerResult<Vec<TopicInfo>> {
        Ok(vec![topic_info("t".into())])
    }
    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo> {
        Ok(topic_info(request.name.map_or_else(
            || name_of(&request.topic.topic),
            |n| n.to_string(),
        )))
    }
    async fn delete_topic(&self, _topic: TopicRef, _expected: Option<ETag>) -> BrokerResult<()> {
        Ok(())
    }
    async fn purge_topic(&self, _topic: TopicRef) -> BrokerResult<()> {
        Ok(())
    }
    async fn create_partitions(&self, topic: TopicRef, _count: u32) -> BrokerResult<TopicInfo> {
        Ok(topic_info(name_of(&topic.topic)))
    }
    async fn delete_partitions(&self, topic: TopicRef, _count: u32) -> BrokerResult<TopicInfo> {
        Ok(topic_info(name_of(&topic.topic)))
    }
    async fn send_messages(&self, request: SendMessages) -> BrokerResult<Sent> {
        let mut stored = self.messages.lock().expect("lock");
        for message in request.messages {
            let offset = stored.len() as u64;
            stored.push(StoredMessage {
                offset,
                timestamp_micros: 1_700_000_000_000_000 + offset,
                id: message.id,
                headers: message.headers,
                payload: message.payload,
            });
        }
        Ok(Sent::Stored)
    }
    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        let stored = self.messages.lock().expect("lock");
        let from = match request.strategy {
            PollingStrategy::Offset(offset) => offset,
            PollingStrategy::Last => stored.len().saturating_sub(1) as u64,
            _ => 0,
        };
        let messages: Vec<StoredMessage> = stored
            .iter()
            .filter(|m| m.offset >= from)
            .take(request.count as usize)
            .cloned()
            .collect();
        Ok(PolledMessages {
            partition_id: request.partition_id,
            current_offset: stored.len().saturating_sub(1) as u64,
            messages,
        })
    }
    async fn store_consumer_offset(
        &self,
        _at: ConsumerOffsetRef,
        _offset: u64,
    ) -> BrokerResult<()> {
        Ok(())
    }
    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo> {
        Ok(ConsumerOffsetInfo {
            partition_id: at.partition_id,
            current_offset: 5,
            stored_offset: Some(2),
        })
    }
    async fn delete_consumer_offset(&self, _at: ConsumerOffsetRef) -> BrokerResult<()> {
        Ok(())
    }
}

pub fn limits() -> Limits {
    Limits {
        batch_max: 100,
        poll_max: 100,
        message_max_bytes: 16 * 1024,
        // Fields added later keep their defaults.
        ..Limits::default()
    }
}

pub fn subscribe_settings() -> SubscribeSettings {
    static SETTINGS: std::sync::OnceLock<SubscribeSettings> = std::sync::OnceLock::new();
    // Built once: reading the configuration runs clap, which was most of the time of every
    // gateway the gRPC targets built.
    SETTINGS.get_or_init(fuzz_subscribe_settings).clone()
}

fn fuzz_subscribe_settings() -> SubscribeSettings {
    // Start from the configuration's defaults, so fields added later keep theirs.
    let defaults = iggy_gateway::config::Config::for_tests(":memory:").subscribe_settings();
    SubscribeSettings {
        cursor_keys: CursorKeys::new(CURSOR_SECRET, None),
        max_subscribers: 16,
        max_subscribers_per_client: 4,
        idle_poll: Duration::from_millis(20),
        heartbeat: Duration::from_millis(50),
        slow_client: Duration::from_millis(200),
        ..defaults
    }
}

pub fn default_topic() -> DefaultTopic {
    DefaultTopic {
        stream: Name::parse("sample-stream").expect("name"),
        topic: Name::parse("events").expect("name"),
        partitions: PARTITIONS,
    }
}

/// A current-thread runtime with paused time: sleeps end as soon as nothing else can run.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// The services and routers of one gateway over a fresh [`FakeBroker`].
pub struct Gateway {
    pub broker: Arc<FakeBroker>,
    pub streams: StreamApi,
    pub topics: TopicApi,
    pub messages: MessageApi,
    pub events: EventApi,
    pub subscriptions: Subscriptions,
    pub shutdown: CancellationToken,
}

impl Gateway {
    pub fn new() -> Self {
        let broker = Arc::new(FakeBroker::default());
        let dyn_broker: Arc<dyn Broker> = broker.clone();
        let shutdown = CancellationToken::new();
        let subscriptions = Subscriptions::new(subscribe_settings(), shutdown.clone());
        Self {
            streams: StreamApi::new(dyn_broker.clone()),
            topics: TopicApi::new(dyn_broker.clone()),
            messages: MessageApi::new(dyn_broker.clone(), limits(), subscriptions.clone()),
            events: EventApi::new(dyn_broker, limits(), Some(default_topic())),
            broker,
            subscriptions,
            shutdown,
        }
    }

    /// REST (route table from the descriptor set, transcoder, and the table of direct calls it
    /// makes to the services, held to the scope policy) with the gRPC services also mounted, as
    /// `startup` does (without gRPC-Web, Connect and reflection). Below the layers (the
    /// `rest_transcode` target) a call is anonymous, as when no API key is configured; under
    /// them (the `layers` target) the API key layer's identity stands.
    pub fn http_router(&self) -> axum::Router {
        let table = route_table();
        let settings = rest::RestSettings {
            max_body_bytes: MAX_REQUEST_BYTES,
            strict_query: false,
            batch_max: 1000,
            poll_max: 1000,
        };
        let calls = self.direct_calls(&table);
        let rest = rest::router(table, calls, settings).layer(tower::util::MapRequestLayer::new(
            |mut request: http::Request<Body>| {
                if request.extensions().get::<Arc<Identity>>().is_none() {
                    request.extensions_mut().insert(Identity::anonymous());
                }
                request
            },
        ));
        tonic::service::Routes::from(rest)
            .add_service(
                StreamServiceServer::new(self.streams.clone())
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                TopicServiceServer::new(self.topics.clone())
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                MessageServiceServer::new(self.messages.clone())
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                EventServiceServer::new(self.events.clone())
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .prepare()
            .into_axum_router()
    }

    /// The direct calls to the services, as `startup` builds them (with the scope policy).
    fn direct_calls(&self, table: &rest::RouteTable) -> Direct {
        let metrics = Arc::new(Metrics::new());
        let scopes = Scopes::new(Arc::new(KeyRing::from_static(&[])), Arc::clone(&metrics))
            .expect("every RPC declares its scope");
        let broker: Arc<dyn Broker> = self.broker.clone();
        let services = Services {
            streams: Arc::new(self.streams.clone()),
            topics: Arc::new(self.topics.clone()),
            messages: Arc::new(self.messages.clone()),
            events: Arc::new(self.events.clone()),
            stats: Arc::new(StatsApi::new(Arc::new(Stats::new(broker, metrics)))),
        };
        let (calls, _) = direct::table(&scopes, &services, table).expect("the direct table");
        calls
    }

    /// The Connect translator over the same direct calls, as `startup` builds it. Calls reach
    /// it as `ConnectPaths` hands them over (`Connect::handle` with their protocol); the
    /// caller inserts the identity the layers would.
    pub fn connect(&self) -> Arc<Connect> {
        let settings = ConnectSettings {
            max_body_bytes: MAX_REQUEST_BYTES,
            compression_min_bytes: 1024,
        };
        Arc::new(Connect::new(&self.direct_calls(route_table_ref()), settings).expect("Connect"))
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

thread_local! {
    /// One gateway, its REST router and its Connect translator per fuzzing thread: building
    /// the router serialises the whole OpenAPI document, which cost the HTTP targets ~40 ms
    /// per input.
    static SHARED: (Gateway, axum::Router, Arc<Connect>) = {
        let gateway = Gateway::new();
        let router = gateway.http_router();
        let connect = gateway.connect();
        (gateway, router, connect)
    };
}

/// Runs `f` with this thread's shared gateway (its broker emptied first) and REST router.
pub fn with_shared_gateway<R>(f: impl FnOnce(&Gateway, &axum::Router) -> R) -> R {
    SHARED.with(|(gateway, router, _)| {
        gateway.broker.reset();
        f(gateway, router)
    })
}

/// This thread's shared Connect translator, its gateway's broker emptied first.
pub fn shared_connect() -> Arc<Connect> {
    SHARED.with(|(gateway, _, connect)| {
        gateway.broker.reset();
        Arc::clone(connect)
    })
}

/// The REST route table, read once per process.
pub fn route_table_ref() -> &'static rest::RouteTable {
    static TABLE: std::sync::OnceLock<rest::RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| rest::route_table().expect("route table"))
}

/// A copy of the route table (for `rest::router`, which takes one).
pub fn route_table() -> rest::RouteTable {
    route_table_ref().clone()
}

/// Parses the seed format of the HTTP targets:
///
/// ```text
/// METHOD /path?query
/// header-name: value
///
/// body
/// ```
///
/// `None` when the text is not a request `http` accepts (bad method, URI or header).
pub fn parse_request(data: &[u8]) -> Option<http::Request<Body>> {
    let (head, body) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let first = lines.next()?;
    let (method, target) = first.split_once(' ')?;
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).ok()?)
        .uri(http::Uri::try_from(target).ok()?);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(value.trim_start().as_bytes()).ok()?;
        builder = builder.header(name, value);
    }
    let mut request = builder
        .body(Body::from(Bytes::copy_from_slice(body)))
        .ok()?;
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::from((
            [10, 0, 0, 7],
            40000,
        ))));
    Some(request)
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The requests of an HTTP target's input: up to 4, separated by lines of `====`, each in
/// [`parse_request`]'s format (those it refuses left out).
pub fn requests(data: &[u8]) -> Vec<http::Request<Body>> {
    split_requests(data)
        .into_iter()
        .take(4)
        .filter_map(parse_request)
        .collect()
}

/// An answer's `Content-Type` (empty when it has none or it is not text).
pub fn content_type<B>(response: &http::Response<B>) -> String {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Splits a multi-request input on lines of `====`.
pub fn split_requests(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = find(rest, b"\n====\n") {
        out.push(&rest[..at]);
        rest = &rest[at + 6..];
    }
    out.push(rest);
    out
}

/// Reads a response body: at most `max_frames` frames (a live stream never ends by itself).
pub async fn read_body(body: Body, max_frames: usize) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    for _ in 0..max_frames {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(err.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(out)
}
