//! The broker seam: the one interface through which the gateway reaches a message store.
//!
//! gRPC services (and, through them, REST) speak only to [`Broker`]. Two backends implement it:
//! [`embedded::EmbeddedBroker`], a durable store on local disk with Iggy's semantics, and the real
//! Iggy server through the `iggy` SDK. Input reaching the seam is already validated into the
//! types below (`Name`, `Identifier`, ...), so every backend sees the same well-formed requests.

pub mod embedded;
pub mod iggy;
pub mod metered;

use std::{collections::BTreeMap, fmt};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, watch};

/// Most partitions a topic may have, as in Iggy.
pub const MAX_PARTITIONS: u32 = 1000;
/// Longest stream, topic, consumer or header name, in bytes, as in Iggy.
pub const MAX_NAME_LEN: usize = 255;

/// A stream or topic name: 1 to 255 bytes, not made only of digits (such a value would be
/// read back as a numeric id, so it could never be addressed by name), and not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > MAX_NAME_LEN {
            return Err(format!(
                "must be at most {MAX_NAME_LEN} bytes, got {}",
                value.len()
            ));
        }
        if value.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must not be made only of digits (that is read as a numeric id)".into());
        }
        // Dot-segments: clients and proxies remove them from URLs (RFC 3986 §5.2.4), so a
        // stream or topic so named could not be reached over REST.
        if value == "." || value == ".." {
            return Err("must not be . or .. (URLs drop those path segments)".into());
        }
        if value.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a stream, topic or consumer is addressed: by numeric id or by name, as in Iggy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identifier {
    Id(u32),
    Name(String),
}

impl Identifier {
    /// Reads an all-digit value as an id and anything else as a name.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.bytes().all(|b| b.is_ascii_digit()) {
            return value
                .parse()
                .map(Identifier::Id)
                .map_err(|_| format!("id {value} is out of range (at most {})", u32::MAX));
        }
        if value.len() > MAX_NAME_LEN {
            return Err(format!("must be at most {MAX_NAME_LEN} bytes"));
        }
        Ok(Identifier::Name(value.to_owned()))
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Id(id) => write!(f, "{id}"),
            Identifier::Name(name) => f.write_str(name),
        }
    }
}

/// A rename, deletion or purge made through the gateway, named as its request named it: a
/// stream (and so every topic in it) or one topic of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogChange {
    pub stream: Identifier,
    pub topic: Option<Identifier>,
    /// Messages are gone and offsets may start again at 0.
    pub reset: Option<Reset>,
}

/// How a change starts offsets again at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// A purge of the stream or topic: every partition.
    Purged,
    /// The partitions from this id on deleted: one created again under such an id is a new
    /// log.
    PartitionsDeleted { from: u32 },
}

impl Reset {
    /// What happened to the topic, as a subscription's end says it.
    pub fn said(self) -> String {
        match self {
            Self::Purged => "was purged".into(),
            Self::PartitionsDeleted { from } => {
                format!("had its partitions from {from} on deleted")
            }
        }
    }

    /// Whether it reset `partition`.
    pub fn resets(self, partition: u32) -> bool {
        match self {
            Self::Purged => true,
            Self::PartitionsDeleted { from } => partition >= from,
        }
    }

    /// Both resets as one: what either reset.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::PartitionsDeleted { from: a }, Self::PartitionsDeleted { from: b }) => {
                Self::PartitionsDeleted { from: a.min(b) }
            }
            _ => Self::Purged,
        }
    }
}

/// A topic within a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicRef {
    pub stream: Identifier,
    pub topic: Identifier,
}

/// Compression at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    None,
    Gzip,
}

/// A typed header value; the types Iggy headers carry that a JSON client can express.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum HeaderValue {
    String(String),
    Bytes(Vec<u8>),
    Int64(i64),
    Uint64(u64),
    Bool(bool),
    Double(f64),
}

pub type Headers = BTreeMap<String, HeaderValue>;

impl HeaderValue {
    /// Bytes the value takes as stored.
    pub fn size(&self) -> usize {
        match self {
            HeaderValue::String(v) => v.len(),
            HeaderValue::Bytes(v) => v.len(),
            HeaderValue::Int64(_) | HeaderValue::Uint64(_) | HeaderValue::Double(_) => 8,
            HeaderValue::Bool(_) => 1,
        }
    }
}

/// Bytes the headers take as stored: keys and values.
pub fn headers_size(headers: &Headers) -> usize {
    headers
        .iter()
        .map(|(key, value)| key.len() + value.size())
        .sum()
}

/// A message as the client hands it to the broker: the id is always set (by the client or
/// the gateway), so a re-sent batch can be recognised.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub id: u128,
    pub headers: Headers,
    pub payload: Bytes,
}

impl NewMessage {
    /// Bytes the message takes as stored: payload and headers.
    pub fn size(&self) -> usize {
        self.payload.len() + headers_size(&self.headers)
    }
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub offset: u64,
    /// Microseconds since the Unix epoch, assigned by the backend when it stored the message.
    pub timestamp_micros: u64,
    pub id: u128,
    pub headers: Headers,
    pub payload: Bytes,
}

impl StoredMessage {
    /// Bytes the message takes: payload and headers.
    pub fn size(&self) -> usize {
        self.payload.len() + headers_size(&self.headers)
    }
}

/// Which partition receives a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Partitioning {
    /// Round-robin over the topic's partitions, one partition per batch.
    Balanced,
    PartitionId(u32),
    /// A stable hash of the key picks the partition, so one key always lands in one partition
    /// while the partition count is unchanged.
    Key(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SendMessages {
    pub topic: TopicRef,
    pub partitioning: Partitioning,
    pub messages: Vec<NewMessage>,
    /// With an idempotency key: the record a backend that can keeps with the batch (see
    /// [`Broker::send_messages`]).
    pub idempotency: Option<IdempotencyRecord>,
}

/// What a send under an idempotency key leaves behind: the key (a digest of the caller's
/// identity and `Idempotency-Key`), a digest of the request, and until when it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: [u8; 32],
    pub fingerprint: [u8; 32],
    /// Microseconds since the epoch.
    pub expires_at_micros: u64,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The batch is stored.
    Stored,
    /// The idempotency key's record was there, for the same request: the batch was stored by an
    /// earlier call and nothing was stored now.
    Replayed,
}

/// Where a poll starts, as Iggy defines its polling strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollingStrategy {
    Offset(u64),
    /// The first message stored at or after this time (microseconds since the epoch).
    Timestamp(u64),
    First,
    /// The newest `count` messages.
    Last,
    /// After the consumer's stored offset, or from 0 when it has none.
    Next,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PollMessages {
    pub topic: TopicRef,
    pub partition_id: u32,
    /// Required for `Next` and `auto_commit` (checked before the broker is called).
    pub consumer: Option<Identifier>,
    pub strategy: PollingStrategy,
    pub count: u32,
    /// Stop after the message that brings the answer to this many bytes (payloads and
    /// headers); at least one message is returned whatever its size.
    pub max_bytes: usize,
    /// Store the consumer's offset of the last message returned (not of the last read).
    pub auto_commit: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolledMessages {
    pub partition_id: u32,
    pub current_offset: u64,
    pub messages: Vec<StoredMessage>,
}

/// A consumer's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOffsetRef {
    pub topic: TopicRef,
    pub consumer: Identifier,
    pub partition_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerOffsetInfo {
    pub partition_id: u32,
    pub current_offset: u64,
    pub stored_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTopic {
    pub stream: Identifier,
    pub name: Name,
    pub partitions_count: u32,
    /// `None`: the backend's default (never, for the embedded backend).
    pub message_expiry_micros: Option<u64>,
    /// `None`: the backend's default (unlimited, for the embedded backend).
    pub max_topic_size_bytes: Option<u64>,
    pub compression: Compression,
    pub replication_factor: u8,
}

/// A stream's new name.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStream {
    pub stream: Identifier,
    pub name: Name,
    /// Rename only if the stream still has this etag (see [`ETag`]); `None`: whatever its state.
    pub expected: Option<ETag>,
}

/// Changes to a topic; `None` keeps the current value.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateTopic {
    pub topic: TopicRef,
    /// Change only if the topic still has this etag (see [`ETag`]); `None`: whatever its state.
    pub expected: Option<ETag>,
    pub name: Option<Name>,
    /// `Some(None)` sets "never expire".
    pub message_expiry_micros: Option<Option<u64>>,
    /// `Some(None)` sets "unlimited".
    pub max_topic_size_bytes: Option<Option<u64>>,
    pub compression: Option<Compression>,
    pub replication_factor: Option<u8>,
}

/// A resource's version, as AIP-154's `etag` field and HTTP's `ETag` carry it: a hash of what
/// identifies the resource (kind, id, creation time) and of the settings a call can change. Not
/// of its counters: a send must not make a rename or a delete fail, or a busy topic could never
/// be changed conditionally. A hash rather than a stored version, so it needs nothing on disk,
/// works the same over Iggy (which keeps no version), and every gateway in front of one store
/// computes the same value. Creation time is in it, so a resource deleted and created again
/// with the same name and settings has another etag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// An etag a client sent back; empty means none. Any other text is taken as it is: one
    /// that was never ours simply does not match.
    pub fn given(value: &str) -> Option<Self> {
        (!value.is_empty()).then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// SHA-256 over a fixed, length-prefixed encoding (never `std`'s hasher, whose output may
    /// change between releases), cut to 128 bits and written in unpadded base64url, which is
    /// valid inside an HTTP entity tag.
    fn of(fields: &[&[u8]]) -> Self {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        for field in fields {
            hash.update(u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
            hash.update(field);
        }
        let digest = hash.finalize();
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]))
    }

    /// Fails with [`BrokerError::EtagMismatch`] unless `expected` (when given) is `self`.
    pub fn ensure(
        &self,
        expected: Option<&ETag>,
        resource: impl FnOnce() -> String,
    ) -> BrokerResult<()> {
        match expected {
            Some(expected) if expected != self => Err(BrokerError::EtagMismatch {
                resource: resource(),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn optional(value: Option<u64>) -> Vec<u8> {
    value.map_or_else(Vec::new, |v| v.to_be_bytes().to_vec())
}

/// How far apart two readings of one stream's, topic's or partition's creation time may be:
/// Iggy 0.8, once restarted, reports the time its log recorded the creation, some tens to
/// hundreds of microseconds from the time it reported before. Something deleted and created
/// again within this of the first's creation cannot be told from it.
pub const CREATION_SLACK_MICROS: u64 = 1_000_000;

/// Whether two creation times are one creation, read twice (see [`CREATION_SLACK_MICROS`]).
pub fn same_creation(a_micros: u64, b_micros: u64) -> bool {
    a_micros.abs_diff(b_micros) <= CREATION_SLACK_MICROS
}

/// A creation time as an etag holds it: to the second, so a backend's restart keeps it.
fn creation_second(micros: u64) -> [u8; 8] {
    (micros / 1_000_000).to_be_bytes()
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub id: u32,
    pub name: String,
    pub created_at_micros: u64,
    pub topics_count: u32,
    pub size_bytes: u64,
    pub messages_count: u64,
    /// Filled by `get_stream` only.
    pub topics: Vec<TopicInfo>,
}

impl StreamInfo {
    /// The stream's etag: its id, creation time and name; not its counters nor its topics
    /// (each topic has its own), so a change to a topic does not fail a rename of the stream.
    pub fn etag(&self) -> ETag {
        ETag::of(&[
            b"stream/v2",
            &self.id.to_be_bytes(),
            &creation_second(self.created_at_micros),
            self.name.as_bytes(),
        ])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicInfo {
    pub id: u32,
    pub name: String,
    pub created_at_micros: u64,
    pub partitions_count: u32,
    pub message_expiry_micros: Option<u64>,
    pub max_topic_size_bytes: Option<u64>,
    pub compression: Compression,
    pub replication_factor: u8,
    pub size_bytes: u64,
    pub messages_count: u64,
    /// Filled by `get_topic` and the partition calls only.
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    /// The topic's etag: its id, creation time, name, partition count and settings; not its
    /// counters (messages, sizes, offsets), which every send changes.
    pub fn etag(&self) -> ETag {
        let compression: &[u8] = match self.compression {
            Compression::None => b"none",
            Compression::Gzip => b"gzip",
        };
        ETag::of(&[
            b"topic/v2",
            &self.id.to_be_bytes(),
            &creation_second(self.created_at_micros),
            self.name.as_bytes(),
            &self.partitions_count.to_be_bytes(),
            &optional(self.message_expiry_micros),
            &optional(self.max_topic_size_bytes),
            compression,
            &[self.replication_factor],
        ])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub id: u32,
    pub created_at_micros: u64,
    pub current_offset: u64,
    pub size_bytes: u64,
    pub messages_count: u64,
}

impl PartitionInfo {
    /// The offset the partition's next message will get: one past `current_offset`, or 0 while
    /// the partition is empty. `current_offset` reads 0 both for an empty partition and for one
    /// holding only offset 0, so the count tells them apart. The one place this is worked out.
    pub fn next_offset(&self) -> u64 {
        if self.messages_count == 0 {
            0
        } else {
            self.current_offset + 1
        }
    }
}

/// What a backend can fail with. Each variant says whether retrying the same call can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerError {
    #[error("stream '{0}' not found")]
    StreamNotFound(Identifier),
    #[error("topic '{topic}' not found in stream '{stream}'")]
    TopicNotFound {
        stream: Identifier,
        topic: Identifier,
    },
    #[error("partition {partition_id} not found in topic '{topic}' (it has {partitions_count})")]
    PartitionNotFound {
        topic: Identifier,
        partition_id: u32,
        partitions_count: u32,
    },
    #[error("no offset stored for consumer '{consumer}' on partition {partition_id}")]
    ConsumerOffsetNotFound {
        consumer: Identifier,
        partition_id: u32,
    },
    #[error("stream '{0}' already exists")]
    StreamAlreadyExists(String),
    #[error("topic '{topic}' already exists in stream '{stream}'")]
    TopicAlreadyExists { stream: Identifier, topic: String },
    /// The request is well-formed but not valid for the current state (e.g. too many partitions).
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The backend cannot be reached right now; retrying later can succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time; the call may or may not have taken effect.
    #[error("backend did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The backend refused the gateway's credentials.
    #[error("backend refused the gateway's credentials: {0}")]
    Unauthenticated(String),
    /// A conditional change named an etag the resource no longer has: it changed since the
    /// caller read it. Nothing was changed; read it again and decide.
    #[error("{resource} has changed since it was read (the etag given is not its current one)")]
    EtagMismatch { resource: String },
    /// A fault inside the backend (I/O, corruption); not the caller's doing.
    #[error("backend storage error: {0}")]
    Storage(String),
    /// The idempotency key was used before, by a request with another body; nothing was stored.
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
}

impl BrokerError {
    /// Whether the same call, repeated later, can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            BrokerError::Unavailable(_) | BrokerError::Timeout(_) => true,
            BrokerError::StreamNotFound(_)
            | BrokerError::TopicNotFound { .. }
            | BrokerError::PartitionNotFound { .. }
            | BrokerError::ConsumerOffsetNotFound { .. }
            | BrokerError::StreamAlreadyExists(_)
            | BrokerError::TopicAlreadyExists { .. }
            | BrokerError::InvalidArgument { .. }
            | BrokerError::EtagMismatch { .. }
            | BrokerError::IdempotencyKeyReused
            | BrokerError::Unauthenticated(_)
            | BrokerError::Storage(_) => false,
        }
    }
}

pub type BrokerResult<T> = Result<T, BrokerError>;

/// What a backend's acknowledgement of a send is worth after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged batch was fsynced before the answer (the embedded store commits a
    /// group with an fsync, then answers it).
    FsyncedBeforeAck,
    /// Nothing outlives the process: the embedded store runs in memory (`DATA_DIR=:memory:`).
    InMemory,
    /// The server decides by its own settings, which the gateway read: `fsync` is its
    /// `[system.partition] enforce_fsync`, `messages_required_to_save` how many messages it
    /// buffers before writing them.
    ServerSettings {
        fsync: bool,
        messages_required_to_save: u64,
    },
    /// The server decides by settings the gateway cannot read (see README, "Durability with
    /// Iggy").
    Unknown,
}

impl Durability {
    /// One word for `/stats` and logs: `fsync`, `memory`, `server-fsync`, `server-buffered` or
    /// `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Durability::FsyncedBeforeAck => "fsync",
            Durability::InMemory => "memory",
            Durability::ServerSettings {
                fsync: true,
                messages_required_to_save: 1,
            } => "server-fsync",
            Durability::ServerSettings { .. } => "server-buffered",
            Durability::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::FsyncedBeforeAck => {
                f.write_str("durably: each batch is fsynced before it is acknowledged")
            }
            Durability::InMemory => {
                f.write_str("in memory only: everything is lost when the gateway stops")
            }
            Durability::ServerSettings {
                fsync,
                messages_required_to_save,
            } => write!(
                f,
                "as the Iggy server's settings make it: enforce_fsync = {fsync}, \
                 messages_required_to_save = {messages_required_to_save}"
            ),
            Durability::Unknown => f.write_str(
                "as the Iggy server's settings make it (enforce_fsync and \
                 messages_required_to_save; the gateway cannot read them)",
            ),
        }
    }
}

/// Holes stepped past: a poll at an offset below the partition's head that the backend could
/// not read (Iggy answers "invalid offset" where a crash left its log torn) went on from the
/// next offset it could read, instead of failing the same way forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkippedHoles {
    /// Times a poll stepped past a hole.
    pub holes: u64,
    /// Offsets passed over in all.
    pub offsets: u64,
}

/// Sends made to the backend and the calls they carried, since start-up: a backend that
/// coalesces concurrent calls into one send (Iggy) makes fewer sends than it answers calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendCounts {
    pub sends: u64,
    pub calls: u64,
}

/// The message store behind the gateway.
///
/// Contract, for every backend:
/// - **Durability:** when `send_messages` returns `Ok`, every message of the batch is stored and
///   survives a restart of the gateway (and, for the embedded backend, a crash of the machine).
///   Iggy keeps an acknowledged message through a crash of its server only as its own settings
///   make it ([`Broker::durability`]).
/// - **Atomicity:** a batch goes to one partition and is stored whole or not at all; a reader
///   never sees part of a batch.
/// - **Ordering:** within a partition, messages get consecutive offsets from 0 in the order
///   sent; batches sent one after another by one caller keep that order.
/// - **Coalescing:** a backend may store concurrent calls to the same topic with the same
///   partitioning as one batch (Iggy does: one round trip instead of one per call). Each call's
///   messages stay contiguous and in order, and with balanced partitioning the whole batch goes
///   to one partition. Such a batch is stored whole or refused whole: when it is refused, every
///   call in it fails with the same error and none of them is stored. A call dropped before
///   its batch leaves (its caller gave up) is never sent; once it has left, the call's outcome
///   is the batch's.
/// - **Idempotence:** none without an idempotency record. A call that fails with a retryable
///   error may still have stored the batch; a retry can store it again. Ids let a consumer tell
///   duplicates (at-least-once). With [`SendMessages::idempotency`], a backend that keeps
///   records (the embedded one) stores the record in the batch's transaction and answers a later
///   send with the same key `Replayed` (same fingerprint, nothing stored) or
///   `IdempotencyKeyReused` (another fingerprint) until it expires; one that cannot (Iggy) stores
///   the batch, whose ids the caller made deterministic for the server's deduplication.
/// - Metadata calls (create, update, delete, purge) are atomic: they take effect whole or not.
/// - **Conditional changes:** an update or delete given an expected [`ETag`] fails with
///   `EtagMismatch`, changing nothing, when the resource's current etag differs. The embedded
///   backend checks and changes under one lock; Iggy has no conditional call, so there the
///   check is a read just before the change, and a change by another client in between (a
///   round trip) is not detected.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// One line for the start-up log: which backend this is and where its data lives.
    fn describe(&self) -> String;

    /// Whether the backend can serve calls now; health and readiness follow it.
    fn availability(&self) -> watch::Receiver<bool>;

    /// Becomes `true` once the backend has given up for good (every connection used up its
    /// `MAX_RECONNECT_ATTEMPTS`): nothing but a restart brings it back, so the gateway reports
    /// itself dead and exits. A backend that never gives up keeps this default, whose sender is
    /// gone at once (waiting on it ends with an error, never with `true`).
    fn gave_up(&self) -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    /// A signal that changes whenever messages are appended to one partition (its value
    /// means nothing), for backends that can tell: subscribers sleep until a partition of
    /// theirs changes and poll only that one. Appends before the call are not signalled: poll
    /// once after subscribing. A backend that learns of appends by reading (Iggy) moves it a
    /// round later, and closes it when the topic is gone. `None` when the backend cannot tell
    /// (or the partition does not exist); callers then poll on a timer.
    fn partition_appends(
        &self,
        _topic: &TopicRef,
        _partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        None
    }

    /// How many times the backend has reconnected since start-up (0 for the embedded one).
    fn reconnects(&self) -> u64 {
        0
    }

    /// What "acknowledged" means for this backend, as far as the gateway can tell, for the
    /// start-up log and `/stats`.
    fn durability(&self) -> Durability {
        Durability::Unknown
    }

    /// Every rename or deletion of a stream or topic made through this gateway, so a
    /// subscription of what it names can check what it follows before it delivers more,
    /// rather than at its next periodic check. A receiver that lags missed some: it checks.
    /// `None` when nothing announces them.
    fn catalog_changes(&self) -> Option<broadcast::Receiver<CatalogChange>> {
        None
    }

    /// Whether a topic created after another's deletion may get its id: then an id alone does
    /// not name one log (Iggy gives the lowest free id again; the embedded store never does).
    fn reuses_topic_ids(&self) -> bool {
        true
    }

    /// Holes in a partition's log that polls have stepped past since start-up (see
    /// [`SkippedHoles`]); none for a backend whose log has none.
    fn skipped_holes(&self) -> SkippedHoles {
        SkippedHoles::default()
    }

    /// Backend sends and the calls they carried (see [`SendCounts`]); none for a backend that
    /// does not count them.
    fn send_counts(&self) -> SendCounts {
        SendCounts::default()
    }

    /// Stops background work (connections, health checks) at shutdown. Everything already
    /// acknowledged is durable before this is called.
    async fn close(&self) {}

    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo>;
    /// The stream with its topics.
    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo>;
    /// All streams, by id, without their topics.
    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>>;
    async fn update_stream(&self, request: UpdateStream) -> BrokerResult<StreamInfo>;
    /// With `expected`, only while the stream has that etag.
    async fn delete_stream(&self, stream: Identifier, expected: Option<ETag>) -> BrokerResult<()>;
    /// Removes every message in the stream; offsets restart at 0, consumer offsets are cleared.
    async fn purge_stream(&self, stream: Identifier) -> BrokerResult<()>;

    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo>;
    /// The topic with its partitions.
    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo>;
    /// The stream's topics, by id, without their partitions.
    async fn list_topics(&self, stream: Identifier) -> BrokerResult<Vec<TopicInfo>>;
    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo>;
    /// With `expected`, only while the topic has that etag.
    async fn delete_topic(&self, topic: TopicRef, expected: Option<ETag>) -> BrokerResult<()>;
    /// Removes every message in the topic; offsets restart at 0, consumer offsets are cleared.
    async fn purge_topic(&self, topic: TopicRef) -> BrokerResult<()>;
    /// Appends `count` partitions; the total stays within [`MAX_PARTITIONS`].
    async fn create_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo>;
    /// Removes the last `count` partitions and their messages; at least one remains.
    async fn delete_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo>;

    /// Stores a non-empty batch in one partition (see the trait's contract).
    async fn send_messages(&self, request: SendMessages) -> BrokerResult<Sent>;
    /// Reads up to `count` messages in offset order; with `auto_commit`, stores the offset of
    /// the last one returned for the consumer.
    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages>;
    /// Stores `offset` (inclusive) as processed; it must not pass the newest message.
    async fn store_consumer_offset(&self, at: ConsumerOffsetRef, offset: u64) -> BrokerResult<()>;
    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo>;
    /// Fails with `ConsumerOffsetNotFound` when nothing is stored.
    async fn delete_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<()>;
}

/// Microseconds since the Unix epoch, the unit of Iggy's timestamps.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The partition a key maps to. A fixed algorithm (FNV-1a), never `std`'s hasher, whose
/// output may change between Rust releases and would move keys after an upgrade.
pub fn partition_for_key(key: &[u8], partitions_count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // partitions_count is at least 1 for any existing topic.
    u32::try_from(hash % u64::from(partitions_count.max(1))).unwrap_or(0)
}

/// Creates a stream and a topic in it unless they exist, as start-up does for the event routes'
/// default topic. Creating and accepting "already exists" is safe when several gateways start at
/// once; an existing topic is left as it is, whatever its partitions.
pub async fn ensure_default_topic(
    broker: &dyn Broker,
    stream: &Name,
    topic: &Name,
    partitions: u32,
) -> BrokerResult<()> {
    match broker.create_stream(stream.clone()).await {
        Ok(_) => tracing::info!(stream = %stream, "created the default stream"),
        Err(BrokerError::StreamAlreadyExists(_)) => {}
        Err(err) => return Err(err),
    }
    let create = CreateTopic {
        stream: Identifier::Name(stream.to_string()),
        name: topic.clone(),
        partitions_count: partitions,
        message_expiry_micros: None,
        max_topic_size_bytes: None,
        compression: Compression::None,
        replication_factor: 1,
    };
    match broker.create_topic(create).await {
        Ok(_) => {
            tracing::info!(topic = %topic, partitions, "created the default topic")
        }
        Err(BrokerError::TopicAlreadyExists { .. }) => {}
        Err(err) => return Err(err),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
