//! Conversions between the `iggy` SDK's types and the broker's, both ways, and the one mapping
//! from `IggyError` to `BrokerError` (by variant, naming what the call was about). Nothing here
//! does I/O; the SDK's error text goes to the log, never to the caller.

use std::collections::BTreeMap;

use iggy::prelude::{
    CompressionAlgorithm, Consumer, HeaderKey, HeaderKind, HeaderValue as IggyHeaderValue,
    Identifier as IggyIdentifier, IggyByteSize, IggyDuration, IggyError, IggyExpiry, IggyMessage,
    IggyMessageHeader, IggyTimestamp, MAX_PAYLOAD_SIZE, MaxTopicSize,
    Partitioning as IggyPartitioning, PollingStrategy as IggyPollingStrategy,
};

use crate::broker::{
    BrokerError, BrokerResult, Compression, Durability, HeaderValue, Headers, Identifier,
    NewMessage, PartitionInfo, Partitioning, PolledMessages, PollingStrategy, StoredMessage,
    StreamInfo, TopicInfo, TopicRef,
};

/// Errors that mean the connection, not the request, is at fault.
pub(super) fn is_connection_error(err: &IggyError) -> bool {
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
pub(super) struct Context {
    pub(super) stream: Option<Identifier>,
    pub(super) topic: Option<Identifier>,
    pub(super) partition: Option<u32>,
    pub(super) consumer: Option<Identifier>,
    pub(super) name: Option<String>,
    /// The offset the caller asked for (a poll's start, a stored consumer offset). Iggy's
    /// "invalid offset" carries none over TCP (the SDK reads it as 0), so the refusal names
    /// this one.
    pub(super) offset: Option<u64>,
}

impl Context {
    pub(super) fn stream(stream: &Identifier) -> Self {
        Self {
            stream: Some(stream.clone()),
            ..Self::default()
        }
    }

    pub(super) fn topic(at: &TopicRef) -> Self {
        Self {
            stream: Some(at.stream.clone()),
            topic: Some(at.topic.clone()),
            ..Self::default()
        }
    }

    pub(super) fn partition(at: &TopicRef, partition: u32) -> Self {
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
pub(super) fn map_error(err: IggyError, context: &Context) -> BrokerError {
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
        IggyError::InvalidOffset(_) => {
            tracing::info!(offset = ?context.offset, partition = ?context.partition, code = err.as_code(), "Iggy refused an offset");
            BrokerError::InvalidArgument {
                field: "offset",
                reason: match context.offset {
                    Some(offset) => format!(
                        "{offset} was refused by the Iggy server (past the partition's newest \
                         message, or where its log cannot be read)"
                    ),
                    None => "was refused by the Iggy server (outside what it accepts)".into(),
                },
            }
        }
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
pub(super) fn invalid(field: &'static str, err: IggyError) -> BrokerError {
    tracing::info!(field, error = %err, code = err.as_code(), "Iggy refused a value");
    BrokerError::InvalidArgument {
        field,
        reason: "was refused by the Iggy server (outside what it accepts)".into(),
    }
}

pub(super) fn to_iggy_id(id: &Identifier) -> BrokerResult<IggyIdentifier> {
    match id {
        Identifier::Id(id) => IggyIdentifier::numeric(*id),
        // `named`, never a string conversion: those read "123" as a number.
        Identifier::Name(name) => IggyIdentifier::named(name),
    }
    .map_err(|err| invalid("id", err))
}

pub(super) fn expiry_to_iggy(micros: Option<u64>) -> IggyExpiry {
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

pub(super) fn size_to_iggy(bytes: Option<u64>) -> MaxTopicSize {
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

pub(super) fn compression_to_iggy(compression: Compression) -> CompressionAlgorithm {
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

pub(super) fn stream_info(stream: &iggy::prelude::Stream, topics: Vec<TopicInfo>) -> StreamInfo {
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

pub(super) fn topic_info(
    topic: &iggy::prelude::Topic,
    partitions: Vec<PartitionInfo>,
) -> TopicInfo {
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

pub(super) fn topic_details_info(details: &iggy::prelude::TopicDetails) -> TopicInfo {
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

/// The consumer a poll uses when the caller names none (it stores nothing).
const ANONYMOUS_CONSUMER: &str = "iggy-gateway";

/// The SDK consumer a poll names: the caller's, or the anonymous one.
pub(super) fn poll_consumer(consumer: Option<&Identifier>) -> BrokerResult<Consumer> {
    Ok(Consumer::new(match consumer {
        Some(consumer) => to_iggy_id(consumer)?,
        None => {
            IggyIdentifier::named(ANONYMOUS_CONSUMER).map_err(|err| invalid("consumer", err))?
        }
    }))
}

pub(super) fn partitioning_to_iggy(partitioning: &Partitioning) -> BrokerResult<IggyPartitioning> {
    Ok(match partitioning {
        Partitioning::Balanced => IggyPartitioning::balanced(),
        Partitioning::PartitionId(id) => IggyPartitioning::partition_id(*id),
        Partitioning::Key(key) => {
            IggyPartitioning::messages_key(key).map_err(|err| invalid("partition_key", err))?
        }
    })
}

pub(super) fn strategy_to_iggy(strategy: PollingStrategy) -> IggyPollingStrategy {
    match strategy {
        PollingStrategy::Offset(offset) => IggyPollingStrategy::offset(offset),
        PollingStrategy::Timestamp(micros) => {
            IggyPollingStrategy::timestamp(IggyTimestamp::from(micros))
        }
        PollingStrategy::First => IggyPollingStrategy::first(),
        PollingStrategy::Last => IggyPollingStrategy::last(),
        PollingStrategy::Next => IggyPollingStrategy::next(),
    }
}

pub(super) fn header_to_iggy(value: &HeaderValue) -> Result<IggyHeaderValue, IggyError> {
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
pub(super) fn header_from_iggy(value: &IggyHeaderValue) -> Option<HeaderValue> {
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

/// `message` as the SDK's, stamped with `origin_micros` (a batch's messages share the time it
/// was converted: the SDK's builder read the clock once a message, 2 % of the gateway's CPU
/// on batches). Built as the builder builds it, with its checks.
pub(super) fn message_to_iggy(
    message: NewMessage,
    origin_micros: u64,
) -> BrokerResult<IggyMessage> {
    if message.payload.is_empty() {
        return Err(invalid("messages", IggyError::InvalidMessagePayloadLength));
    }
    if message.payload.len() > MAX_PAYLOAD_SIZE as usize {
        return Err(invalid("messages", IggyError::TooBigMessagePayload));
    }
    if !message.headers.is_empty() {
        let mut headers = BTreeMap::new();
        for (key, value) in &message.headers {
            let key = HeaderKey::try_from(key.as_str()).map_err(|err| invalid("headers", err))?;
            let value = header_to_iggy(value).map_err(|err| invalid("headers", err))?;
            headers.insert(key, value);
        }
        let mut built = IggyMessage::builder()
            .id(message.id)
            .payload(message.payload)
            .user_headers(headers)
            .build()
            .map_err(|err| invalid("messages", err))?;
        built.header.origin_timestamp = origin_micros;
        return Ok(built);
    }
    Ok(IggyMessage {
        header: IggyMessageHeader {
            checksum: 0,
            id: message.id,
            offset: 0,
            timestamp: 0,
            origin_timestamp: origin_micros,
            user_headers_length: 0,
            payload_length: message.payload.len() as u32,
            reserved: 0,
        },
        payload: message.payload,
        user_headers: None,
    })
}

/// The origin time the SDK stamps a message with: now, in microseconds.
pub(super) fn origin_now() -> u64 {
    IggyTimestamp::now().as_micros()
}

/// A poll's answer as the broker's.
pub(super) fn polled_from_iggy(
    partition_id: u32,
    polled: iggy::prelude::PolledMessages,
) -> PolledMessages {
    PolledMessages {
        partition_id,
        current_offset: polled.current_offset,
        messages: polled.messages.into_iter().map(message_from_iggy).collect(),
    }
}

pub(super) fn message_from_iggy(message: IggyMessage) -> StoredMessage {
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

/// The durability settings in the text of an Iggy server's configuration (TOML, as its
/// `ServerConfig` snapshot holds it): `[system.partition]`'s `enforce_fsync` and
/// `messages_required_to_save`. Read line by line: only these two keys of one table matter.
pub(super) fn durability_from_config(text: &str) -> Option<Durability> {
    let (mut in_partition, mut fsync, mut required) = (false, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_partition = line == "[system.partition]";
            continue;
        }
        if !in_partition {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "enforce_fsync" => fsync = value.trim().parse::<bool>().ok(),
            "messages_required_to_save" => required = value.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    Some(Durability::ServerSettings {
        fsync: fsync?,
        messages_required_to_save: required?,
    })
}
