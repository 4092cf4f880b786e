//! The real Apache Iggy backend: the `iggy` SDK (0.10, for server 0.8) behind the broker seam.
//!
//! The SDK runs one request at a time per client, has no call timeout, and after a connection
//! error reconnects and re-sends the request once. So the gateway keeps a pool of clients
//! (`IGGY_POOL_SIZE`), each watched by a supervisor task that connects with exponential backoff
//! and full jitter, pings it, and rebuilds it from scratch when a ping or a call fails or times
//! out (a client whose auto-login failed can stay stuck otherwise). Every call has a timeout.
//! Callers arriving while no client is connected wait a bounded time, then get UNAVAILABLE.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use iggy::prelude::{
    Client, CompressionAlgorithm, Consumer, ConsumerOffsetClient, HeaderKey, HeaderKind,
    HeaderValue as IggyHeaderValue, Identifier as IggyIdentifier, IggyByteSize, IggyClient,
    IggyDuration, IggyError, IggyExpiry, IggyMessage, IggyTimestamp, MaxTopicSize, MessageClient,
    PartitionClient, Partitioning as IggyPartitioning, PollingStrategy as IggyPollingStrategy,
    StreamClient, SystemClient, TopicClient,
};
use iggy_common::DiagnosticEvent;
use tokio::sync::{Notify, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Broker, BrokerError, BrokerResult, Compression, ConsumerOffsetInfo, ConsumerOffsetRef,
    CreateTopic, HeaderValue, Headers, Identifier, Name, NewMessage, PartitionInfo, Partitioning,
    PollMessages, PolledMessages, PollingStrategy, SendMessages, StoredMessage, StreamInfo,
    TopicInfo, TopicRef, UpdateTopic, within_bytes,
};

/// The consumer a poll uses when the caller names none (it stores nothing).
const ANONYMOUS_CONSUMER: &str = "iggy-gateway";

/// How the pool connects and recovers.
#[derive(Debug, Clone)]
pub struct IggySettings {
    pub connection_string: String,
    pub pool_size: usize,
    pub reconnect_base_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// 0: keep trying forever.
    pub max_reconnect_attempts: u32,
    pub operation_timeout: Duration,
    pub health_check_interval: Duration,
    /// How long a call waits for a connection before answering UNAVAILABLE.
    pub connect_wait: Duration,
}

#[derive(Clone)]
enum SlotState {
    /// Connecting or reconnecting (backing off between attempts).
    Reconnecting,
    Connected(Arc<IggyClient>),
    /// Gave up after `MAX_RECONNECT_ATTEMPTS`.
    Failed,
}

struct Slot {
    state: Mutex<SlotState>,
    /// Wakes the supervisor to rebuild the client after a failed or timed-out call.
    broken: Notify,
    /// Calls on this client now. The SDK runs one request at a time per connection, so a call
    /// given a busy client queues behind it while another may sit idle.
    in_flight: AtomicUsize,
}

/// A call's claim on one pooled client; counted in the slot's `in_flight` until dropped.
struct Lease<'a> {
    slot: &'a Slot,
    index: usize,
    client: Arc<IggyClient>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Pool {
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Signalled whenever a slot changes state, for callers waiting for a connection.
    changed: Notify,
    /// Successful reconnections since start-up, for metrics.
    reconnects: std::sync::atomic::AtomicU64,
    /// Signalled when one connection is found dead: the others check themselves at once, since
    /// a server that went away took them all.
    check_now: Notify,
    available: watch::Sender<bool>,
    settings: IggySettings,
}

impl Pool {
    /// `size` slots, all reconnecting until their supervisors connect them.
    fn new(size: usize, available: watch::Sender<bool>, settings: IggySettings) -> Self {
        Self {
            slots: (0..size)
                .map(|_| Slot {
                    state: Mutex::new(SlotState::Reconnecting),
                    broken: Notify::new(),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            changed: Notify::new(),
            check_now: Notify::new(),
            reconnects: std::sync::atomic::AtomicU64::new(0),
            available,
            settings,
        }
    }

    fn set_state(&self, index: usize, state: SlotState) {
        if let Some(slot) = self.slots.get(index)
            && let Ok(mut current) = slot.state.lock()
        {
            *current = state;
        }
        let any_connected = self.slots.iter().any(|slot| {
            slot.state
                .lock()
                .is_ok_and(|state| matches!(*state, SlotState::Connected(_)))
        });
        self.available.send_if_modified(|available| {
            let changed = *available != any_connected;
            *available = any_connected;
            changed
        });
        self.changed.notify_waiters();
    }

    /// The connected client with the fewest calls in flight (ties go round-robin); `Err` when
    /// every slot has given up.
    fn pick(&self) -> Result<Option<Lease<'_>>, BrokerError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut all_failed = true;
        let mut best: Option<(usize, usize, Arc<IggyClient>)> = None;
        for offset in 0..self.slots.len() {
            let index = (start + offset) % self.slots.len();
            let slot = &self.slots[index];
            let Ok(state) = slot.state.lock() else {
                continue;
            };
            match &*state {
                SlotState::Connected(client) => {
                    all_failed = false;
                    let busy = slot.in_flight.load(Ordering::Relaxed);
                    if best.as_ref().is_none_or(|(_, fewest, _)| busy < *fewest) {
                        best = Some((index, busy, Arc::clone(client)));
                    }
                    if busy == 0 {
                        break;
                    }
                }
                SlotState::Reconnecting => all_failed = false,
                SlotState::Failed => {}
            }
        }
        if let Some((index, _, client)) = best {
            let slot = &self.slots[index];
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Lease {
                slot,
                index,
                client,
            }));
        }
        if all_failed {
            return Err(BrokerError::Unavailable(format!(
                "gave up reconnecting to Iggy after {} attempts (MAX_RECONNECT_ATTEMPTS)",
                self.settings.max_reconnect_attempts
            )));
        }
        Ok(None)
    }

    async fn client(&self) -> BrokerResult<Lease<'_>> {
        let deadline = tokio::time::Instant::now() + self.settings.connect_wait;
        loop {
            // Registered before looking, so a state change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = self.pick()? {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(BrokerError::Unavailable(
                    "not connected to Iggy; the gateway is reconnecting, retry later".into(),
                ));
            }
        }
    }

    fn mark_broken(&self, index: usize) {
        if let Some(slot) = self.slots.get(index) {
            slot.broken.notify_one();
        }
    }
}

/// Full-jitter exponential backoff: a random delay in `[0, min(max, base · 2^attempt)]`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .checked_mul(2u32.saturating_pow(attempt.min(20)))
        .unwrap_or(max)
        .min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=millis))
}

/// Errors that mean the connection, not the request, is at fault.
fn is_connection_error(err: &IggyError) -> bool {
    matches!(
        err,
        IggyError::Disconnected
            | IggyError::CannotEstablishConnection
            | IggyError::StaleClient
            | IggyError::TcpError
            | IggyError::NotConnected
            | IggyError::ClientShutdown
            | IggyError::ConnectionClosed
            | IggyError::EmptyResponse
            | IggyError::Unauthenticated
    )
}

/// What a call was about, so "not found" names the right thing.
#[derive(Debug, Clone, Default)]
struct Context {
    stream: Option<Identifier>,
    topic: Option<Identifier>,
    partition: Option<u32>,
    consumer: Option<Identifier>,
    name: Option<String>,
}

impl Context {
    fn stream(stream: &Identifier) -> Self {
        Self {
            stream: Some(stream.clone()),
            ..Self::default()
        }
    }

    fn topic(at: &TopicRef) -> Self {
        Self {
            stream: Some(at.stream.clone()),
            topic: Some(at.topic.clone()),
            ..Self::default()
        }
    }

    fn partition(at: &TopicRef, partition: u32) -> Self {
        Self {
            partition: Some(partition),
            ..Self::topic(at)
        }
    }
}

fn unknown() -> Identifier {
    Identifier::Name("?".into())
}

/// One mapping from the SDK's errors to the broker's, by variant.
fn map_error(err: IggyError, context: &Context) -> BrokerError {
    let stream = || context.stream.clone().unwrap_or_else(unknown);
    let topic = || context.topic.clone().unwrap_or_else(unknown);
    match err {
        IggyError::StreamIdNotFound(_) | IggyError::StreamNameNotFound(_) => {
            BrokerError::StreamNotFound(stream())
        }
        IggyError::TopicIdNotFound(..) | IggyError::TopicNameNotFound(..) => {
            BrokerError::TopicNotFound {
                stream: stream(),
                topic: topic(),
            }
        }
        IggyError::PartitionNotFound(..) | IggyError::NoPartitions(..) => {
            BrokerError::PartitionNotFound {
                topic: topic(),
                partition_id: context.partition.unwrap_or(0),
                partitions_count: 0,
            }
        }
        IggyError::ConsumerOffsetNotFound(_) => BrokerError::ConsumerOffsetNotFound {
            consumer: context.consumer.clone().unwrap_or_else(unknown),
            partition_id: context.partition.unwrap_or(0),
        },
        IggyError::StreamNameAlreadyExists(_) => {
            BrokerError::StreamAlreadyExists(context.name.clone().unwrap_or_default())
        }
        IggyError::TopicNameAlreadyExists(..) => BrokerError::TopicAlreadyExists {
            stream: stream(),
            topic: context.name.clone().unwrap_or_default(),
        },
        IggyError::InvalidStreamName | IggyError::InvalidTopicName | IggyError::InvalidFormat => {
            invalid("name", err)
        }
        IggyError::TooManyPartitions | IggyError::InvalidPartitionsCount => {
            invalid("partitions_count", err)
        }
        IggyError::InvalidReplicationFactor => invalid("replication_factor", err),
        IggyError::InvalidOffset(_) => invalid("offset", err),
        IggyError::InvalidMessagesCount => invalid("count", err),
        IggyError::InvalidHeaderKey
        | IggyError::InvalidHeaderValue
        | IggyError::TooBigUserHeaders => invalid("headers", err),
        IggyError::TooBigMessagePayload | IggyError::InvalidMessagePayloadLength => {
            invalid("payload", err)
        }
        IggyError::InvalidIdentifier | IggyError::InvalidStreamId => invalid("id", err),
        IggyError::Unauthorized | IggyError::InvalidCredentials => {
            BrokerError::Unauthenticated(err.to_string())
        }
        ref connection if is_connection_error(connection) => {
            // The SDK's words are for the operator's log; the caller hears the gateway's.
            tracing::warn!(error = %err, code = err.as_code(), "Iggy connection error");
            BrokerError::Unavailable("the connection to Iggy failed; retry".into())
        }
        // The SDK has some 240 errors; those the gateway cannot act on are internal, with the
        // SDK's code kept for the operator's log.
        other => BrokerError::Storage(format!("iggy error {}: {other}", other.as_code())),
    }
}

/// A value Iggy refused. Its text (which may name internals, or the wrong value) goes to the
/// log; the caller is told which field, in the gateway's words.
fn invalid(field: &'static str, err: IggyError) -> BrokerError {
    tracing::info!(field, error = %err, code = err.as_code(), "Iggy refused a value");
    BrokerError::InvalidArgument {
        field,
        reason: "was refused by the Iggy server (outside what it accepts)".into(),
    }
}

fn to_iggy_id(id: &Identifier) -> BrokerResult<IggyIdentifier> {
    match id {
        Identifier::Id(id) => IggyIdentifier::numeric(*id),
        // `named`, never a string conversion: those read "123" as a number.
        Identifier::Name(name) => IggyIdentifier::named(name),
    }
    .map_err(|err| invalid("id", err))
}

fn expiry_to_iggy(micros: Option<u64>) -> IggyExpiry {
    match micros {
        Some(micros) => IggyExpiry::ExpireDuration(IggyDuration::from(micros)),
        None => IggyExpiry::NeverExpire,
    }
}

fn expiry_from_iggy(expiry: IggyExpiry) -> Option<u64> {
    match expiry {
        IggyExpiry::ExpireDuration(duration) => Some(duration.as_micros()),
        IggyExpiry::NeverExpire | IggyExpiry::ServerDefault => None,
    }
}

fn size_to_iggy(bytes: Option<u64>) -> MaxTopicSize {
    match bytes {
        Some(bytes) => MaxTopicSize::Custom(IggyByteSize::from(bytes)),
        None => MaxTopicSize::Unlimited,
    }
}

fn size_from_iggy(size: MaxTopicSize) -> Option<u64> {
    match size {
        MaxTopicSize::Custom(bytes) => Some(bytes.as_bytes_u64()),
        MaxTopicSize::Unlimited | MaxTopicSize::ServerDefault => None,
    }
}

fn compression_to_iggy(compression: Compression) -> CompressionAlgorithm {
    match compression {
        Compression::None => CompressionAlgorithm::None,
        Compression::Gzip => CompressionAlgorithm::Gzip,
    }
}

fn compression_from_iggy(compression: CompressionAlgorithm) -> Compression {
    match compression {
        CompressionAlgorithm::None => Compression::None,
        CompressionAlgorithm::Gzip => Compression::Gzip,
    }
}

fn stream_info(stream: &iggy::prelude::Stream, topics: Vec<TopicInfo>) -> StreamInfo {
    StreamInfo {
        id: stream.id,
        name: stream.name.clone(),
        created_at_micros: stream.created_at.as_micros(),
        topics_count: stream.topics_count,
        size_bytes: stream.size.as_bytes_u64(),
        messages_count: stream.messages_count,
        topics,
    }
}

fn topic_info(topic: &iggy::prelude::Topic, partitions: Vec<PartitionInfo>) -> TopicInfo {
    TopicInfo {
        id: topic.id,
        name: topic.name.clone(),
        created_at_micros: topic.created_at.as_micros(),
        partitions_count: topic.partitions_count,
        message_expiry_micros: expiry_from_iggy(topic.message_expiry),
        max_topic_size_bytes: size_from_iggy(topic.max_topic_size),
        compression: compression_from_iggy(topic.compression_algorithm),
        replication_factor: topic.replication_factor,
        size_bytes: topic.size.as_bytes_u64(),
        messages_count: topic.messages_count,
        partitions,
    }
}

fn topic_details_info(details: &iggy::prelude::TopicDetails) -> TopicInfo {
    let topic = iggy::prelude::Topic {
        id: details.id,
        created_at: details.created_at,
        name: details.name.clone(),
        size: details.size,
        message_expiry: details.message_expiry,
        compression_algorithm: details.compression_algorithm,
        max_topic_size: details.max_topic_size,
        replication_factor: details.replication_factor,
        messages_count: details.messages_count,
        partitions_count: details.partitions_count,
    };
    let partitions = details
        .partitions
        .iter()
        .map(|p| PartitionInfo {
            id: p.id,
            created_at_micros: p.created_at.as_micros(),
            current_offset: p.current_offset,
            size_bytes: p.size.as_bytes_u64(),
            messages_count: p.messages_count,
        })
        .collect();
    topic_info(&topic, partitions)
}

fn header_to_iggy(value: &HeaderValue) -> Result<IggyHeaderValue, IggyError> {
    match value {
        HeaderValue::String(v) => IggyHeaderValue::try_from(v.as_str()),
        HeaderValue::Bytes(v) => IggyHeaderValue::try_from(v.as_slice()),
        HeaderValue::Int64(v) => Ok(IggyHeaderValue::from(*v)),
        HeaderValue::Uint64(v) => Ok(IggyHeaderValue::from(*v)),
        HeaderValue::Bool(v) => Ok(IggyHeaderValue::from(*v)),
        HeaderValue::Double(v) => Ok(IggyHeaderValue::from(*v)),
    }
}

/// Iggy headers as the gateway's kinds; narrower integers widen, 128-bit ones become text.
fn header_from_iggy(value: &IggyHeaderValue) -> Option<HeaderValue> {
    Some(match value.kind() {
        HeaderKind::Raw => HeaderValue::Bytes(value.as_raw().ok()?.to_vec()),
        HeaderKind::String => HeaderValue::String(value.as_str().ok()?.to_owned()),
        HeaderKind::Bool => HeaderValue::Bool(value.as_bool().ok()?),
        HeaderKind::Int8 => HeaderValue::Int64(i64::from(value.as_int8().ok()?)),
        HeaderKind::Int16 => HeaderValue::Int64(i64::from(value.as_int16().ok()?)),
        HeaderKind::Int32 => HeaderValue::Int64(i64::from(value.as_int32().ok()?)),
        HeaderKind::Int64 => HeaderValue::Int64(value.as_int64().ok()?),
        HeaderKind::Uint8 => HeaderValue::Uint64(u64::from(value.as_uint8().ok()?)),
        HeaderKind::Uint16 => HeaderValue::Uint64(u64::from(value.as_uint16().ok()?)),
        HeaderKind::Uint32 => HeaderValue::Uint64(u64::from(value.as_uint32().ok()?)),
        HeaderKind::Uint64 => HeaderValue::Uint64(value.as_uint64().ok()?),
        HeaderKind::Float32 => HeaderValue::Double(f64::from(value.as_float32().ok()?)),
        HeaderKind::Float64 => HeaderValue::Double(value.as_float64().ok()?),
        HeaderKind::Int128 | HeaderKind::Uint128 => HeaderValue::String(value.to_string_value()),
    })
}

fn message_to_iggy(message: &NewMessage) -> BrokerResult<IggyMessage> {
    let mut headers = BTreeMap::new();
    for (key, value) in &message.headers {
        let key = HeaderKey::try_from(key.as_str()).map_err(|err| invalid("headers", err))?;
        let value = header_to_iggy(value).map_err(|err| invalid("headers", err))?;
        headers.insert(key, value);
    }
    let builder = IggyMessage::builder()
        .id(message.id)
        .payload(message.payload.clone());
    let built = if headers.is_empty() {
        builder.build()
    } else {
        builder.user_headers(headers).build()
    };
    built.map_err(|err| invalid("messages", err))
}

fn message_from_iggy(message: IggyMessage) -> StoredMessage {
    let headers: Headers = message
        .user_headers_map()
        .ok()
        .flatten()
        .unwrap_or_default()
        .iter()
        .filter_map(|(key, value)| Some((key.to_string_value(), header_from_iggy(value)?)))
        .collect();
    StoredMessage {
        offset: message.header.offset,
        timestamp_micros: message.header.timestamp,
        id: message.header.id,
        headers,
        payload: message.payload,
    }
}

pub struct IggyBroker {
    pool: Arc<Pool>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    description: String,
}

impl IggyBroker {
    /// Starts the pool's supervisors and returns at once: the gateway serves (not ready) while
    /// Iggy is unreachable, and becomes ready when a connection is up.
    pub fn start(settings: IggySettings) -> Self {
        let (available, _) = watch::channel(false);
        let pool_size = settings.pool_size.max(1);
        let description = format!(
            "Iggy backend at {} ({pool_size} connections)",
            redact(&settings.connection_string)
        );
        let pool = Arc::new(Pool::new(pool_size, available, settings));
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        for index in 0..pool_size {
            tasks.spawn(supervise(Arc::clone(&pool), index, cancel.clone()));
        }
        tasks.close();
        Self {
            pool,
            tasks,
            cancel,
            description,
        }
    }

    async fn call<T, F, Fut>(&self, context: &Context, op: F) -> BrokerResult<T>
    where
        F: FnOnce(Arc<IggyClient>) -> Fut,
        Fut: Future<Output = Result<T, IggyError>>,
    {
        let lease = self.pool.client().await?;
        let (slot, client) = (lease.index, Arc::clone(&lease.client));
        let timeout = self.pool.settings.operation_timeout;
        match tokio::time::timeout(timeout, op(client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if is_connection_error(&err) {
                    self.pool.mark_broken(slot);
                }
                Err(map_error(err, context))
            }
            Err(_) => {
                // The SDK keeps the connection busy until the server answers; start afresh.
                self.pool.mark_broken(slot);
                Err(BrokerError::Timeout(timeout))
            }
        }
    }

    async fn topic_details(&self, at: &TopicRef) -> BrokerResult<TopicInfo> {
        let (stream, topic) = (to_iggy_id(&at.stream)?, to_iggy_id(&at.topic)?);
        let context = Context::topic(at);
        let details = self
            .call(
                &context,
                |c| async move { c.get_topic(&stream, &topic).await },
            )
            .await?;
        match details {
            Some(details) => Ok(topic_details_info(&details)),
            None => {
                // Missing stream and missing topic both answer None; tell them apart.
                self.get_stream(at.stream.clone()).await?;
                Err(BrokerError::TopicNotFound {
                    stream: at.stream.clone(),
                    topic: at.topic.clone(),
                })
            }
        }
    }
}

/// The connection string without its password, for logs.
fn redact(connection_string: &str) -> String {
    match (connection_string.find("://"), connection_string.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &connection_string[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!(
                "{}{user}:***{}",
                &connection_string[..scheme_end + 3],
                &connection_string[at..]
            )
        }
        _ => connection_string.to_owned(),
    }
}

/// Connects one client: build, connect (which logs in with the string's credentials), ping.
async fn connect_once(settings: &IggySettings) -> Result<Arc<IggyClient>, String> {
    let client = IggyClient::from_connection_string(&settings.connection_string)
        .map_err(|err| format!("bad IGGY_CONNECTION_STRING: {err}"))?;
    let client = Arc::new(client);
    let timeout = settings.operation_timeout;
    let attempt = async {
        client.connect().await?;
        client.ping().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(err)) => {
            shut_down(Arc::clone(&client), timeout);
            Err(err.to_string())
        }
        Err(_) => {
            shut_down(Arc::clone(&client), timeout);
            Err(format!("no answer within {timeout:?}"))
        }
    }
}

/// Stops a client for good (its heartbeat task would otherwise reconnect it), off the caller's path.
fn shut_down(client: Arc<IggyClient>, timeout: Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, client.shutdown()).await;
    });
}

async fn supervise(pool: Arc<Pool>, index: usize, cancel: CancellationToken) {
    let settings = pool.settings.clone();
    let mut attempt: u32 = 0;
    // Set once a connection has been up, so the next success counts as a reconnection.
    let mut lost_before = false;
    loop {
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            result = connect_once(&settings) => result,
        };
        match connected {
            Ok(client) => {
                if attempt > 0 || lost_before {
                    pool.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(connection = index, "reconnected to Iggy");
                }
                lost_before = true;
                attempt = 0;
                pool.set_state(index, SlotState::Connected(Arc::clone(&client)));
                watch_connection(&pool, index, &client, &cancel).await;
                shut_down(client, settings.operation_timeout);
                if cancel.is_cancelled() {
                    return;
                }
                tracing::warn!(
                    connection = index,
                    "lost the connection to Iggy; reconnecting"
                );
            }
            Err(err) => {
                tracing::warn!(connection = index, attempt, error = %err, "cannot connect to Iggy");
                attempt = attempt.saturating_add(1);
            }
        }
        if settings.max_reconnect_attempts > 0 && attempt >= settings.max_reconnect_attempts {
            tracing::error!(
                connection = index,
                attempts = attempt,
                "giving up on Iggy (MAX_RECONNECT_ATTEMPTS)"
            );
            pool.set_state(index, SlotState::Failed);
            return;
        }
        pool.set_state(index, SlotState::Reconnecting);
        let delay = backoff(
            settings.reconnect_base_delay,
            settings.reconnect_max_delay,
            attempt,
        );
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Returns when the connection should be rebuilt: a ping failed or timed out, a call reported it
/// broken, or the gateway is stopping.
async fn watch_connection(
    pool: &Pool,
    index: usize,
    client: &Arc<IggyClient>,
    cancel: &CancellationToken,
) {
    let settings = &pool.settings;
    // A healthy server answers a ping in well under a millisecond; a ping the SDK holds while
    // it tries to reconnect must not keep the slot "connected" for a whole operation timeout.
    let ping_timeout = settings
        .operation_timeout
        .min(settings.health_check_interval)
        .min(Duration::from_secs(1));
    // The SDK announces a lost connection when it notices one; pings catch what it does not.
    let mut events = client.subscribe_events().await;
    loop {
        let check = tokio::select! {
            () = cancel.cancelled() => return,
            () = pool.slots[index].broken.notified() => false,
            () = pool.check_now.notified() => true,
            () = tokio::time::sleep(settings.health_check_interval) => true,
            event = events.recv() => match event {
                Ok(DiagnosticEvent::Connected | DiagnosticEvent::SignedIn) => continue,
                // Disconnected, shut down, signed out, or the event channel closed with the client.
                Ok(DiagnosticEvent::Disconnected | DiagnosticEvent::Shutdown | DiagnosticEvent::SignedOut)
                | Err(_) => false,
            },
        };
        if check {
            match tokio::time::timeout(ping_timeout, client.ping()).await {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => {
                    tracing::warn!(connection = index, error = %err, "Iggy ping failed")
                }
                Err(_) => tracing::warn!(connection = index, "Iggy ping timed out"),
            }
        }
        pool.check_now.notify_waiters();
        return;
    }
}

#[async_trait]
impl Broker for IggyBroker {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn availability(&self) -> watch::Receiver<bool> {
        self.pool.available.subscribe()
    }

    fn reconnects(&self) -> u64 {
        self.pool.reconnects.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(self.pool.settings.operation_timeout, self.tasks.wait()).await;
    }

    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo> {
        let context = Context {
            name: Some(name.to_string()),
            ..Context::default()
        };
        let created = self
            .call(
                &context,
                |c| async move { c.create_stream(name.as_str()).await },
            )
            .await?;
        let stream = iggy::prelude::Stream {
            id: created.id,
            created_at: created.created_at,
            name: created.name.clone(),
            size: created.size,
            messages_count: created.messages_count,
            topics_count: created.topics_count,
        };
        Ok(stream_info(&stream, Vec::new()))
    }

    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo> {
        let id = to_iggy_id(&stream)?;
        let details = self
            .call(&Context::stream(&stream), |c| async move {
                c.get_stream(&id).await
            })
            .await?
            .ok_or_else(|| BrokerError::StreamNotFound(stream.clone()))?;
        let summary = iggy::prelude::Stream {
            id: details.id,
            created_at: details.created_at,
            name: details.name.clone(),
            size: details.size,
            messages_count: details.messages_count,
            topics_count: details.topics_count,
        };
        let topics = details
            .topics
            .iter()
            .map(|topic| topic_info(topic, Vec::new()))
            .collect();
        Ok(stream_info(&summary, topics))
    }

    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>> {
        let streams = self
            .call(
                &Context::default(),
                |c| async move { c.get_streams().await },
            )
            .await?;
        let mut streams: Vec<StreamInfo> = streams
            .iter()
            .map(|stream| stream_info(stream, Vec::new()))
            .collect();
        streams.sort_by_key(|s| s.id);
        Ok(streams)
    }

    async fn update_stream(&self, stream: Identifier, name: Name) -> BrokerResult<StreamInfo> {
        let id = to_iggy_id(&stream)?;
        let context = Context {
            name: Some(name.to_string()),
            ..Context::stream(&stream)
        };
        let new_name = name.clone();
        self.call(&context, |c| async move {
            c.update_stream(&id, new_name.as_str()).await
        })
        .await?;
        // A stream is found again by its new name (the old one may now be gone).
        match stream {
            Identifier::Id(_) => self.get_stream(stream).await,
            Identifier::Name(_) => self.get_stream(Identifier::Name(name.to_string())).await,
        }
    }

    async fn delete_stream(&self, stream: Identifier) -> BrokerResult<()> {
        let id = to_iggy_id(&stream)?;
        self.call(&Context::stream(&stream), |c| async move {
            c.delete_stream(&id).await
        })
        .await
    }

    async fn purge_stream(&self, stream: Identifier) -> BrokerResult<()> {
        let id = to_iggy_id(&stream)?;
        self.call(&Context::stream(&stream), |c| async move {
            c.purge_stream(&id).await
        })
        .await
    }

    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo> {
        let stream = to_iggy_id(&request.stream)?;
        let context = Context {
            name: Some(request.name.to_string()),
            ..Context::stream(&request.stream)
        };
        let details = self
            .call(&context, |c| async move {
                c.create_topic(
                    &stream,
                    request.name.as_str(),
                    request.partitions_count,
                    compression_to_iggy(request.compression),
                    Some(request.replication_factor),
                    match request.message_expiry_micros {
                        Some(_) => expiry_to_iggy(request.message_expiry_micros),
                        None => IggyExpiry::ServerDefault,
                    },
                    match request.max_topic_size_bytes {
                        Some(_) => size_to_iggy(request.max_topic_size_bytes),
                        None => MaxTopicSize::ServerDefault,
                    },
                )
                .await
            })
            .await?;
        Ok(topic_details_info(&details))
    }

    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo> {
        self.topic_details(&topic).await
    }

    async fn list_topics(&self, stream: Identifier) -> BrokerResult<Vec<TopicInfo>> {
        // A missing stream answers an empty list; ask for the stream to tell.
        let details = self.get_stream(stream).await?;
        Ok(details.topics)
    }

    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo> {
        // Iggy replaces every setting at once: start from the current ones.
        let current = self.topic_details(&request.topic).await?;
        let (stream, topic) = (
            to_iggy_id(&request.topic.stream)?,
            to_iggy_id(&request.topic.topic)?,
        );
        let name = request
            .name
            .as_ref()
            .map_or_else(|| current.name.clone(), Name::to_string);
        let context = Context {
            name: Some(name.clone()),
            ..Context::topic(&request.topic)
        };
        let expiry = request
            .message_expiry_micros
            .unwrap_or(current.message_expiry_micros);
        let size = request
            .max_topic_size_bytes
            .unwrap_or(current.max_topic_size_bytes);
        let compression = request.compression.unwrap_or(current.compression);
        let factor = request
            .replication_factor
            .unwrap_or(current.replication_factor);
        let new_name = name.clone();
        self.call(&context, |c| async move {
            c.update_topic(
                &stream,
                &topic,
                &new_name,
                compression_to_iggy(compression),
                Some(factor),
                expiry_to_iggy(expiry),
                size_to_iggy(size),
            )
            .await
        })
        .await?;
        let at = TopicRef {
            stream: request.topic.stream.clone(),
            topic: Identifier::Id(current.id),
        };
        self.topic_details(&at).await
    }

    async fn delete_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.delete_topic(&stream, &id).await
        })
        .await
    }

    async fn purge_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.purge_topic(&stream, &id).await
        })
        .await
    }

    async fn create_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.create_partitions(&stream, &id, count).await
        })
        .await?;
        self.topic_details(&topic).await
    }

    async fn delete_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        let current = self.topic_details(&topic).await?;
        if count >= current.partitions_count {
            return Err(BrokerError::InvalidArgument {
                field: "partitions_count",
                reason: format!(
                    "must be between 1 and {} (the topic has {} and keeps at least one)",
                    current.partitions_count.saturating_sub(1),
                    current.partitions_count
                ),
            });
        }
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.delete_partitions(&stream, &id, count).await
        })
        .await?;
        self.topic_details(&topic).await
    }

    async fn send_messages(&self, request: SendMessages) -> BrokerResult<()> {
        let (stream, topic) = (
            to_iggy_id(&request.topic.stream)?,
            to_iggy_id(&request.topic.topic)?,
        );
        let partitioning = match &request.partitioning {
            Partitioning::Balanced => IggyPartitioning::balanced(),
            Partitioning::PartitionId(id) => IggyPartitioning::partition_id(*id),
            Partitioning::Key(key) => {
                IggyPartitioning::messages_key(key).map_err(|err| invalid("partition_key", err))?
            }
        };
        let context = match request.partitioning {
            Partitioning::PartitionId(id) => Context::partition(&request.topic, id),
            Partitioning::Balanced | Partitioning::Key(_) => Context::topic(&request.topic),
        };
        let mut messages = request
            .messages
            .iter()
            .map(message_to_iggy)
            .collect::<BrokerResult<Vec<_>>>()?;
        self.call(&context, |c| async move {
            c.send_messages(&stream, &topic, &partitioning, &mut messages)
                .await
        })
        .await
    }

    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        let (stream, topic) = (
            to_iggy_id(&request.topic.stream)?,
            to_iggy_id(&request.topic.topic)?,
        );
        let consumer = Consumer::new(match &request.consumer {
            Some(consumer) => to_iggy_id(consumer)?,
            None => {
                IggyIdentifier::named(ANONYMOUS_CONSUMER).map_err(|err| invalid("consumer", err))?
            }
        });
        let strategy = match request.strategy {
            PollingStrategy::Offset(offset) => IggyPollingStrategy::offset(offset),
            PollingStrategy::Timestamp(micros) => {
                IggyPollingStrategy::timestamp(IggyTimestamp::from(micros))
            }
            PollingStrategy::First => IggyPollingStrategy::first(),
            PollingStrategy::Last => IggyPollingStrategy::last(),
            PollingStrategy::Next => IggyPollingStrategy::next(),
        };
        let context = Context {
            consumer: request.consumer.clone(),
            ..Context::partition(&request.topic, request.partition_id)
        };
        let (partition, count) = (request.partition_id, request.count);
        // Iggy polls by count only: the answer is cut to the byte budget here, so Iggy must not
        // commit what is cut; the gateway commits the last message it returns.
        let poll_consumer = consumer.clone();
        let polled = self
            .call(&context, |c| async move {
                c.poll_messages(
                    &stream,
                    &topic,
                    Some(partition),
                    &poll_consumer,
                    &strategy,
                    count,
                    false,
                )
                .await
            })
            .await?;
        let mut messages: Vec<StoredMessage> =
            polled.messages.into_iter().map(message_from_iggy).collect();
        within_bytes(&mut messages, request.max_bytes);
        if request.auto_commit
            && let (Some(last), Some(at_consumer)) = (messages.last(), request.consumer.clone())
        {
            self.store_consumer_offset(
                ConsumerOffsetRef {
                    topic: request.topic.clone(),
                    partition_id: request.partition_id,
                    consumer: at_consumer,
                },
                last.offset,
            )
            .await?;
        }
        Ok(PolledMessages {
            partition_id: request.partition_id,
            current_offset: polled.current_offset,
            messages,
        })
    }

    async fn store_consumer_offset(&self, at: ConsumerOffsetRef, offset: u64) -> BrokerResult<()> {
        let (stream, topic) = (to_iggy_id(&at.topic.stream)?, to_iggy_id(&at.topic.topic)?);
        let consumer = Consumer::new(to_iggy_id(&at.consumer)?);
        let context = Context {
            consumer: Some(at.consumer.clone()),
            ..Context::partition(&at.topic, at.partition_id)
        };
        let partition = at.partition_id;
        self.call(&context, |c| async move {
            c.store_consumer_offset(&consumer, &stream, &topic, Some(partition), offset)
                .await
        })
        .await
    }

    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo> {
        let topic_info = self.topic_details(&at.topic).await?;
        let partition = topic_info
            .partitions
            .iter()
            .find(|p| p.id == at.partition_id)
            .copied()
            .ok_or(BrokerError::PartitionNotFound {
                topic: at.topic.topic.clone(),
                partition_id: at.partition_id,
                partitions_count: topic_info.partitions_count,
            })?;
        let (stream, topic) = (to_iggy_id(&at.topic.stream)?, to_iggy_id(&at.topic.topic)?);
        let consumer = Consumer::new(to_iggy_id(&at.consumer)?);
        let context = Context {
            consumer: Some(at.consumer.clone()),
            ..Context::partition(&at.topic, at.partition_id)
        };
        let partition_id = at.partition_id;
        let stored = self
            .call(&context, |c| async move {
                c.get_consumer_offset(&consumer, &stream, &topic, Some(partition_id))
                    .await
            })
            .await?;
        Ok(ConsumerOffsetInfo {
            partition_id: at.partition_id,
            current_offset: partition.current_offset,
            stored_offset: stored.map(|info| info.stored_offset),
        })
    }

    async fn delete_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<()> {
        let (stream, topic) = (to_iggy_id(&at.topic.stream)?, to_iggy_id(&at.topic.topic)?);
        let consumer = Consumer::new(to_iggy_id(&at.consumer)?);
        let context = Context {
            consumer: Some(at.consumer.clone()),
            ..Context::partition(&at.topic, at.partition_id)
        };
        let partition = at.partition_id;
        self.call(&context, |c| async move {
            c.delete_consumer_offset(&consumer, &stream, &topic, Some(partition))
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests;
