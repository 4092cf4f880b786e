//! The embedded backend: a durable store on local disk with Apache Iggy's semantics, so the
//! gateway runs and is tested with no Iggy server.
//!
//! Storage is one [redb](https://docs.rs/redb) file (`DATA_DIR/gateway.redb`): ACID write
//! transactions with copy-on-write pages and an fsync at commit, so an acknowledged batch
//! survives `kill -9` and a crash never leaves half a batch visible. The catalog (streams,
//! topics, partition heads) is also held in memory, rebuilt from its tables at start-up without
//! reading any message, so restart time does not grow with the data.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Arc, Mutex, RwLock},
};

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Broker, BrokerError, BrokerResult, Compression, ConsumerOffsetInfo, ConsumerOffsetRef,
    CreateTopic, Headers, Identifier, MAX_PARTITIONS, Name, NewMessage, PartitionInfo,
    Partitioning, PollMessages, PolledMessages, PollingStrategy, SendMessages, StoredMessage,
    StreamInfo, TopicInfo, TopicRef, UpdateTopic, now_micros, partition_for_key,
};

/// Counters (`next_stream_id`) and the on-disk format version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// stream id → [`StreamRecord`].
const STREAMS: TableDefinition<u32, &[u8]> = TableDefinition::new("streams");
/// (stream, topic) → [`TopicRecord`].
const TOPICS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("topics");
/// (stream, topic, partition) → [`PartitionRecord`]; written in the same transaction as the
/// messages it counts, so the head offset can never disagree with the log.
const PARTITIONS: TableDefinition<(u32, u32, u32), &[u8]> = TableDefinition::new("partitions");
/// (stream, topic, partition, offset) → encoded message (see [`encode_message`]).
const MESSAGES: TableDefinition<(u32, u32, u32, u64), &[u8]> = TableDefinition::new("messages");
/// (stream, topic, partition, consumer) → last processed offset.
const OFFSETS: TableDefinition<(u32, u32, u32, &str), u64> = TableDefinition::new("offsets");

const FORMAT_VERSION: u64 = 1;
/// redb's page cache. Its default (a gigabyte) lets the gateway's memory grow with the data it
/// has written; a bounded cache keeps it flat. Reads of cold data come from the OS page cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
const MESSAGE_RECORD_VERSION: u8 = 1;
/// version + timestamp + id + headers length.
const MESSAGE_FIXED_LEN: usize = 1 + 8 + 16 + 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamRecord {
    name: String,
    created_at: u64,
    next_topic_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    created_at: u64,
    message_expiry_micros: Option<u64>,
    max_topic_size_bytes: Option<u64>,
    compression: Compression,
    replication_factor: u8,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct PartitionRecord {
    created_at: u64,
    /// Offset the next message gets; also the number of messages since the last purge.
    next_offset: u64,
    size_bytes: u64,
    messages_count: u64,
    /// Timestamp of the newest message; new timestamps never go below it, so a partition's
    /// timestamps are ordered and a TIMESTAMP poll can binary-search them.
    last_timestamp: u64,
}

#[derive(Debug, Clone)]
struct StreamState {
    record: StreamRecord,
    topics: BTreeMap<u32, TopicState>,
}

#[derive(Debug, Clone)]
struct TopicState {
    record: TopicRecord,
    partitions: Vec<PartitionRecord>,
    /// Where balanced partitioning sends the next batch; not persisted, as in Iggy.
    next_balanced: u32,
}

/// The in-memory image of the metadata tables.
#[derive(Debug, Clone, Default)]
struct Catalog {
    next_stream_id: u32,
    streams: BTreeMap<u32, StreamState>,
}

impl Catalog {
    fn stream_id(&self, stream: &Identifier) -> BrokerResult<u32> {
        let found = match stream {
            Identifier::Id(id) => self.streams.contains_key(id).then_some(*id),
            Identifier::Name(name) => self
                .streams
                .iter()
                .find(|(_, s)| s.record.name == *name)
                .map(|(id, _)| *id),
        };
        found.ok_or_else(|| BrokerError::StreamNotFound(stream.clone()))
    }

    fn stream(&self, stream: &Identifier) -> BrokerResult<(u32, &StreamState)> {
        let id = self.stream_id(stream)?;
        self.streams
            .get(&id)
            .map(|s| (id, s))
            .ok_or_else(|| BrokerError::StreamNotFound(stream.clone()))
    }

    fn topic_ids(&self, at: &TopicRef) -> BrokerResult<(u32, u32)> {
        let (stream_id, stream) = self.stream(&at.stream)?;
        let found = match &at.topic {
            Identifier::Id(id) => stream.topics.contains_key(id).then_some(*id),
            Identifier::Name(name) => stream
                .topics
                .iter()
                .find(|(_, t)| t.record.name == *name)
                .map(|(id, _)| *id),
        };
        let topic_id = found.ok_or_else(|| BrokerError::TopicNotFound {
            stream: at.stream.clone(),
            topic: at.topic.clone(),
        })?;
        Ok((stream_id, topic_id))
    }

    fn topic(&self, at: &TopicRef) -> BrokerResult<(u32, u32, &TopicState)> {
        let (s, t) = self.topic_ids(at)?;
        self.streams
            .get(&s)
            .and_then(|stream| stream.topics.get(&t))
            .map(|topic| (s, t, topic))
            .ok_or_else(|| BrokerError::TopicNotFound {
                stream: at.stream.clone(),
                topic: at.topic.clone(),
            })
    }

    fn topic_mut(&mut self, s: u32, t: u32) -> BrokerResult<&mut TopicState> {
        self.streams
            .get_mut(&s)
            .and_then(|stream| stream.topics.get_mut(&t))
            .ok_or_else(|| BrokerError::Storage(format!("catalog lost topic {s}/{t}")))
    }

    fn partition(
        &self,
        at: &TopicRef,
        partition_id: u32,
    ) -> BrokerResult<(u32, u32, PartitionRecord)> {
        let (s, t, topic) = self.topic(at)?;
        let partition = topic
            .partitions
            .get(partition_id as usize)
            .copied()
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: at.topic.clone(),
                partition_id,
                partitions_count: partitions_count(topic),
            })?;
        Ok((s, t, partition))
    }

    fn stream_info(&self, id: u32, stream: &StreamState, with_topics: bool) -> StreamInfo {
        let topics: Vec<TopicInfo> = stream
            .topics
            .iter()
            .map(|(topic_id, topic)| topic_info(*topic_id, topic, false))
            .collect();
        StreamInfo {
            id,
            name: stream.record.name.clone(),
            created_at_micros: stream.record.created_at,
            topics_count: u32::try_from(stream.topics.len()).unwrap_or(u32::MAX),
            size_bytes: topics.iter().map(|t| t.size_bytes).sum(),
            messages_count: topics.iter().map(|t| t.messages_count).sum(),
            topics: if with_topics { topics } else { Vec::new() },
        }
    }
}

fn partitions_count(topic: &TopicState) -> u32 {
    u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX)
}

fn current_offset(partition: &PartitionRecord) -> u64 {
    partition.next_offset.saturating_sub(1)
}

fn topic_info(id: u32, topic: &TopicState, with_partitions: bool) -> TopicInfo {
    let partitions: Vec<PartitionInfo> = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| PartitionInfo {
            id: u32::try_from(index).unwrap_or(u32::MAX),
            created_at_micros: p.created_at,
            current_offset: current_offset(p),
            size_bytes: p.size_bytes,
            messages_count: p.messages_count,
        })
        .collect();
    TopicInfo {
        id,
        name: topic.record.name.clone(),
        created_at_micros: topic.record.created_at,
        partitions_count: partitions_count(topic),
        message_expiry_micros: topic.record.message_expiry_micros,
        max_topic_size_bytes: topic.record.max_topic_size_bytes,
        compression: topic.record.compression,
        replication_factor: topic.record.replication_factor,
        size_bytes: partitions.iter().map(|p| p.size_bytes).sum(),
        messages_count: partitions.iter().map(|p| p.messages_count).sum(),
        partitions: if with_partitions {
            partitions
        } else {
            Vec::new()
        },
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `DATA_DIR/gateway.redb`.
    Directory(std::path::PathBuf),
    /// Nothing on disk; for tests and throw-away runs (`DATA_DIR=:memory:`).
    Memory,
}

/// Why the store could not be opened; start-up turns it into exit code 69.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open store {path}: {source}")]
    Database {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("cannot start the store's writer thread: {0}")]
    Writer(std::io::Error),
    #[error("cannot read store: {0}")]
    Read(#[from] redb::Error),
    #[error("store {path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    Format { path: String, found: u64 },
}

pub struct EmbeddedBroker {
    inner: Arc<Store>,
    available: watch::Sender<bool>,
    description: String,
    /// Sends go to one writer thread, which commits whatever has queued up since its last
    /// commit in one transaction (group commit): concurrent callers share a commit (and its
    /// fsync) instead of taking turns on the writer lock. `None` only while dropping.
    queue: Option<mpsc::Sender<PendingSend>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// One send waiting for the writer thread, and where its answer goes once committed.
struct PendingSend {
    request: SendMessages,
    done: oneshot::Sender<BrokerResult<()>>,
}

impl PendingSend {
    fn payload_bytes(&self) -> usize {
        // Headers count too: a group of header-heavy sends must stay as small as any other.
        self.request.messages.iter().map(NewMessage::size).sum()
    }
}

/// Sends waiting for the writer; callers wait (backpressure) when it is full.
const QUEUE_DEPTH: usize = 1024;
/// Bounds on one group, so one transaction (and the memory it holds) stays small.
const MAX_GROUP_SENDS: usize = 256;
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// The writer thread: takes the first waiting send, adds whatever else is already queued (no
/// waiting for more), commits the group, and repeats until every sender is gone.
fn run_writer(store: Arc<Store>, mut queue: mpsc::Receiver<PendingSend>) {
    while let Some(first) = queue.blocking_recv() {
        let mut bytes = first.payload_bytes();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_SENDS && bytes < MAX_GROUP_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.payload_bytes();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        store.send_group(group);
    }
}

impl Drop for EmbeddedBroker {
    /// Closing the queue lets the writer finish what is queued; joining it means the store is
    /// closed (and its file lock released) when the broker is gone.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Store {
    db: Database,
    /// Read often, changed only after a commit, so readers never see uncommitted state.
    catalog: RwLock<Catalog>,
    /// Serialises writers: each one reads the catalog, commits, then publishes the change;
    /// redb allows one write transaction at a time anyway.
    writer: Mutex<()>,
    /// Append counters of the partitions subscribers follow, created when first asked for and
    /// moved after each commit that appends there: a write wakes only its own partition's
    /// followers.
    heads: Mutex<HashMap<(u32, u32, u32), watch::Sender<u64>>>,
}

impl EmbeddedBroker {
    pub fn open(location: &Location) -> Result<Self, OpenError> {
        let (db, description) = match location {
            Location::Memory => {
                let db = Database::builder()
                    .create_with_backend(redb::backends::InMemoryBackend::new())
                    .map_err(|source| OpenError::Database {
                        path: ":memory:".into(),
                        source,
                    })?;
                (
                    db,
                    "embedded backend, in memory (nothing is kept)".to_owned(),
                )
            }
            Location::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
                let file = dir.join("gateway.redb");
                let db = Database::builder()
                    .set_cache_size(CACHE_BYTES)
                    .create(&file)
                    .map_err(|source| OpenError::Database {
                        path: file.display().to_string(),
                        source,
                    })?;
                (db, format!("embedded backend, data in {}", file.display()))
            }
        };
        let catalog = load_catalog(&db, location)?;
        let (available, _) = watch::channel(true);
        let inner = Arc::new(Store {
            db,
            catalog: RwLock::new(catalog),
            writer: Mutex::new(()),
            heads: Mutex::new(HashMap::new()),
        });
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        let store = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(store, pending))
            .map_err(OpenError::Writer)?;
        Ok(Self {
            inner,
            available,
            description,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// Runs blocking store work off the async runtime.
    async fn blocking<T, F>(&self, work: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> BrokerResult<T> + Send + 'static,
    {
        let store = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|err| BrokerError::Storage(format!("store task failed: {err}")))?
    }
}

fn storage(err: impl Into<redb::Error>) -> BrokerError {
    BrokerError::Storage(err.into().to_string())
}

fn encode<T: Serialize>(value: &T) -> BrokerResult<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|err| BrokerError::Storage(format!("encode: {err}")))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, redb::Error> {
    postcard::from_bytes(bytes)
        .map_err(|err| redb::Error::Corrupted(format!("undecodable record: {err}")))
}

fn load_catalog(db: &Database, location: &Location) -> Result<Catalog, OpenError> {
    // Create every table once so readers never meet a missing one.
    let tx = db.begin_write().map_err(redb::Error::from)?;
    let version = {
        let mut meta = tx.open_table(META).map_err(redb::Error::from)?;
        let version = meta
            .get("format_version")
            .map_err(redb::Error::from)?
            .map(|v| v.value());
        if version.is_none() {
            meta.insert("format_version", FORMAT_VERSION)
                .map_err(redb::Error::from)?;
        }
        tx.open_table(STREAMS).map_err(redb::Error::from)?;
        tx.open_table(TOPICS).map_err(redb::Error::from)?;
        tx.open_table(PARTITIONS).map_err(redb::Error::from)?;
        tx.open_table(MESSAGES).map_err(redb::Error::from)?;
        tx.open_table(OFFSETS).map_err(redb::Error::from)?;
        version
    };
    tx.commit().map_err(redb::Error::from)?;
    if let Some(found) = version.filter(|v| *v != FORMAT_VERSION) {
        let path = match location {
            Location::Directory(dir) => dir.display().to_string(),
            Location::Memory => ":memory:".into(),
        };
        return Err(OpenError::Format { path, found });
    }

    let tx = db.begin_read().map_err(redb::Error::from)?;
    let mut catalog = Catalog {
        next_stream_id: tx
            .open_table(META)
            .map_err(redb::Error::from)?
            .get("next_stream_id")
            .map_err(redb::Error::from)?
            .map(|v| u32::try_from(v.value()).unwrap_or(u32::MAX))
            .unwrap_or(0),
        streams: BTreeMap::new(),
    };
    for row in tx
        .open_table(STREAMS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (id, value) = row.map_err(redb::Error::from)?;
        catalog.streams.insert(
            id.value(),
            StreamState {
                record: decode(value.value())?,
                topics: BTreeMap::new(),
            },
        );
    }
    for row in tx
        .open_table(TOPICS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (key, value) = row.map_err(redb::Error::from)?;
        let (s, t) = key.value();
        let record: TopicRecord = decode(value.value())?;
        if let Some(stream) = catalog.streams.get_mut(&s) {
            stream.topics.insert(
                t,
                TopicState {
                    record,
                    partitions: Vec::new(),
                    next_balanced: 0,
                },
            );
        }
    }
    // Keys are ordered (stream, topic, partition), so partitions arrive 0, 1, 2, ...
    for row in tx
        .open_table(PARTITIONS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (key, value) = row.map_err(redb::Error::from)?;
        let (s, t, _) = key.value();
        let record: PartitionRecord = decode(value.value())?;
        if let Some(topic) = catalog
            .streams
            .get_mut(&s)
            .and_then(|stream| stream.topics.get_mut(&t))
        {
            topic.partitions.push(record);
        }
    }
    Ok(catalog)
}

/// Message record layout (all integers little-endian):
/// `version:u8 | timestamp_micros:u64 | id:u128 | headers_len:u32 | headers (postcard) | payload`.
/// The payload is last and unframed so it is copied out in one piece.
fn encode_message(timestamp: u64, message: &NewMessage) -> BrokerResult<Vec<u8>> {
    let headers = if message.headers.is_empty() {
        Vec::new()
    } else {
        encode(&message.headers)?
    };
    let headers_len = u32::try_from(headers.len())
        .map_err(|_| BrokerError::Storage("headers too large to store".into()))?;
    // Written straight into the Vec the store takes, so the payload is copied once.
    let mut out = Vec::with_capacity(MESSAGE_FIXED_LEN + headers.len() + message.payload.len());
    out.put_u8(MESSAGE_RECORD_VERSION);
    out.put_u64_le(timestamp);
    out.put_u128_le(message.id);
    out.put_u32_le(headers_len);
    out.put_slice(&headers);
    out.put_slice(&message.payload);
    Ok(out)
}

fn decode_message(offset: u64, mut record: &[u8]) -> Result<StoredMessage, redb::Error> {
    let corrupt =
        |what: &str| redb::Error::Corrupted(format!("message at offset {offset}: {what}"));
    if record.len() < MESSAGE_FIXED_LEN {
        return Err(corrupt("record too short"));
    }
    if record.get_u8() != MESSAGE_RECORD_VERSION {
        return Err(corrupt("unknown record version"));
    }
    let timestamp_micros = record.get_u64_le();
    let id = record.get_u128_le();
    let headers_len = record.get_u32_le() as usize;
    if record.len() < headers_len {
        return Err(corrupt("headers cut short"));
    }
    let (header_bytes, payload) = record.split_at(headers_len);
    let headers: Headers = if header_bytes.is_empty() {
        Headers::new()
    } else {
        decode(header_bytes)?
    };
    Ok(StoredMessage {
        offset,
        timestamp_micros,
        id,
        headers,
        payload: Bytes::copy_from_slice(payload),
    })
}

impl Store {
    fn read_catalog(&self) -> BrokerResult<std::sync::RwLockReadGuard<'_, Catalog>> {
        self.catalog
            .read()
            .map_err(|_| BrokerError::Storage("catalog lock poisoned".into()))
    }

    /// Runs one metadata change: `change` edits a copy of the catalog and writes the same
    /// change to the transaction; the copy replaces the catalog only after the commit, so a
    /// failed write leaves both as they were.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Catalog, &WriteTransaction) -> BrokerResult<T>,
    ) -> BrokerResult<T> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| BrokerError::Storage("writer lock poisoned".into()))?;
        let mut next = self.read_catalog()?.clone();
        let tx = self.db.begin_write().map_err(storage)?;
        let result = change(&mut next, &tx)?;
        tx.commit().map_err(storage)?;
        *self
            .catalog
            .write()
            .map_err(|_| BrokerError::Storage("catalog lock poisoned".into()))? = next;
        Ok(result)
    }

    /// Commits a group of sends in one write transaction and answers each of them. A send the
    /// catalog refuses (unknown topic or partition, bad headers) gets its own error and the
    /// others go ahead; a storage failure fails the whole group, with nothing written.
    fn send_group(&self, group: Vec<PendingSend>) {
        // A caller that gave up while its send waited (its deadline passed, it disconnected)
        // was told nothing was stored: drop the send, so a retry does not store it twice.
        let (requests, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .filter(|pending| !pending.done.is_closed())
            .map(|p| (p.request, p.done))
            .unzip();
        if requests.is_empty() {
            return;
        }
        match self.commit_sends(&requests) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn commit_sends(&self, requests: &[SendMessages]) -> BrokerResult<Vec<BrokerResult<()>>> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| BrokerError::Storage("writer lock poisoned".into()))?;
        // Partition heads and balanced cursors as this group moves them; the catalog takes
        // them only after the commit, so readers never see offsets that are not stored.
        let mut heads: HashMap<(u32, u32, u32), PartitionRecord> = HashMap::new();
        let mut balanced: HashMap<(u32, u32), u32> = HashMap::new();
        let mut writes = Vec::with_capacity(requests.len());
        let mut results = Vec::with_capacity(requests.len());
        let now = now_micros();
        {
            let catalog = self.read_catalog()?;
            for request in requests {
                let planned = (|| {
                    let (s, t, topic) = catalog.topic(&request.topic)?;
                    let count = partitions_count(topic).max(1);
                    let p = match &request.partitioning {
                        Partitioning::Balanced => {
                            *balanced.entry((s, t)).or_insert(topic.next_balanced) % count
                        }
                        Partitioning::PartitionId(id) => *id,
                        Partitioning::Key(key) => partition_for_key(key, count),
                    };
                    let (_, _, stored) = catalog.partition(&request.topic, p)?;
                    let head = heads.entry((s, t, p)).or_insert(stored);
                    let timestamp = now.max(head.last_timestamp);
                    let records = request
                        .messages
                        .iter()
                        .map(|message| encode_message(timestamp, message))
                        .collect::<BrokerResult<Vec<_>>>()?;
                    let first = head.next_offset;
                    head.next_offset += records.len() as u64;
                    head.messages_count += records.len() as u64;
                    head.size_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
                    head.last_timestamp = timestamp;
                    if request.partitioning == Partitioning::Balanced {
                        balanced.insert((s, t), (p + 1) % count);
                    }
                    Ok(((s, t, p), first, records))
                })();
                match planned {
                    Ok(write) => {
                        writes.push(write);
                        results.push(Ok(()));
                    }
                    Err(err) => results.push(Err(err)),
                }
            }
        }
        if writes.is_empty() {
            return Ok(results);
        }

        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut messages = tx.open_table(MESSAGES).map_err(storage)?;
            for ((s, t, p), first, records) in &writes {
                for (offset, record) in (*first..).zip(records) {
                    messages
                        .insert((*s, *t, *p, offset), record.as_slice())
                        .map_err(storage)?;
                }
            }
            let mut partitions = tx.open_table(PARTITIONS).map_err(storage)?;
            for (key, head) in &heads {
                partitions
                    .insert(*key, encode(head)?.as_slice())
                    .map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;

        let mut catalog = self
            .catalog
            .write()
            .map_err(|_| BrokerError::Storage("catalog lock poisoned".into()))?;
        for ((s, t, p), head) in heads {
            let topic = catalog.topic_mut(s, t)?;
            if let Some(slot) = topic.partitions.get_mut(p as usize) {
                *slot = head;
            }
        }
        for ((s, t), next) in balanced {
            catalog.topic_mut(s, t)?.next_balanced = next;
        }
        drop(catalog);
        if let Ok(watched) = self.heads.lock() {
            for ((s, t, p), _, _) in &writes {
                if let Some(appends) = watched.get(&(*s, *t, *p)) {
                    appends.send_modify(|count| *count = count.wrapping_add(1));
                }
            }
        }
        Ok(results)
    }

    fn poll(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        let (s, t, partition) = self
            .read_catalog()?
            .partition(&request.topic, request.partition_id)?;
        let p = request.partition_id;
        let consumer_key = request.consumer.as_ref().map(Identifier::to_string);

        let tx = self.db.begin_read().map_err(storage)?;
        let messages_table = tx.open_table(MESSAGES).map_err(storage)?;
        let start = match request.strategy {
            PollingStrategy::Offset(offset) => offset,
            PollingStrategy::First => first_offset(&messages_table, s, t, p)?,
            PollingStrategy::Last => {
                let first = first_offset(&messages_table, s, t, p)?;
                partition
                    .next_offset
                    .saturating_sub(u64::from(request.count))
                    .max(first)
            }
            PollingStrategy::Next => {
                let stored = match &consumer_key {
                    Some(key) => tx
                        .open_table(OFFSETS)
                        .map_err(storage)?
                        .get((s, t, p, key.as_str()))
                        .map_err(storage)?
                        .map(|v| v.value()),
                    None => None,
                };
                stored.map_or(0, |offset| offset + 1)
            }
            PollingStrategy::Timestamp(micros) => {
                timestamp_offset(&messages_table, s, t, p, partition, micros)?
            }
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for row in messages_table
            .range((s, t, p, start)..(s, t, p, u64::MAX))
            .map_err(storage)?
            .take(request.count as usize)
        {
            let (key, value) = row.map_err(storage)?;
            let message = decode_message(key.value().3, value.value()).map_err(storage)?;
            bytes = bytes.saturating_add(message.size());
            // Reading stops at the byte budget: the rest is never loaded.
            if bytes > request.max_bytes && !messages.is_empty() {
                break;
            }
            messages.push(message);
        }
        drop(messages_table);
        drop(tx);

        if request.auto_commit
            && let (Some(last), Some(key)) = (messages.last(), consumer_key)
        {
            self.store_offset(s, t, p, &key, last.offset)?;
        }
        Ok(PolledMessages {
            partition_id: p,
            current_offset: current_offset(&partition),
            messages,
        })
    }

    fn store_offset(
        &self,
        s: u32,
        t: u32,
        p: u32,
        consumer: &str,
        offset: u64,
    ) -> BrokerResult<()> {
        let _writer = self
            .writer
            .lock()
            .map_err(|_| BrokerError::Storage("writer lock poisoned".into()))?;
        let tx = self.db.begin_write().map_err(storage)?;
        // The topic may have been deleted since the caller looked it up; storing an offset for
        // it would leave an orphan row.
        if tx
            .open_table(PARTITIONS)
            .map_err(storage)?
            .get((s, t, p))
            .map_err(storage)?
            .is_none()
        {
            return Ok(());
        }
        tx.open_table(OFFSETS)
            .map_err(storage)?
            .insert((s, t, p, consumer), offset)
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }
}

fn first_offset(
    table: &impl ReadableTable<(u32, u32, u32, u64), &'static [u8]>,
    s: u32,
    t: u32,
    p: u32,
) -> BrokerResult<u64> {
    Ok(table
        .range((s, t, p, 0)..(s, t, p, u64::MAX))
        .map_err(storage)?
        .next()
        .transpose()
        .map_err(storage)?
        .map_or(0, |(key, _)| key.value().3))
}

/// The first offset whose timestamp is at or after `micros`: a binary search, since a
/// partition's timestamps never decrease.
fn timestamp_offset(
    table: &impl ReadableTable<(u32, u32, u32, u64), &'static [u8]>,
    s: u32,
    t: u32,
    p: u32,
    partition: PartitionRecord,
    micros: u64,
) -> BrokerResult<u64> {
    let mut low = first_offset(table, s, t, p)?;
    let mut high = partition.next_offset;
    while low < high {
        let mid = low + (high - low) / 2;
        let timestamp = match table.get((s, t, p, mid)).map_err(storage)? {
            Some(value) => {
                let record = value.value();
                if record.len() < 9 {
                    return Err(BrokerError::Storage(format!("message {mid} is corrupt")));
                }
                let mut ts = &record[1..9];
                ts.get_u64_le()
            }
            None => return Err(BrokerError::Storage(format!("message {mid} is missing"))),
        };
        if timestamp < micros {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    Ok(low)
}

/// Deletes a key range of one table.
macro_rules! remove_range {
    ($tx:expr, $table:expr, $range:expr) => {{
        let mut table = $tx.open_table($table).map_err(storage)?;
        table.retain_in($range, |_, _| false).map_err(storage)?;
    }};
}

/// Consumer-offset keys end in a string, so "every key of this topic" is bounded by the first
/// key of the next topic rather than by a largest string.
fn offsets_after_topic(s: u32, t: u32) -> Bound<(u32, u32, u32, &'static str)> {
    match (t.checked_add(1), s.checked_add(1)) {
        (Some(next), _) => Bound::Excluded((s, next, 0, "")),
        (None, Some(next)) => Bound::Excluded((next, 0, 0, "")),
        (None, None) => Bound::Unbounded,
    }
}

fn remove_topic_data(tx: &WriteTransaction, s: u32, t: u32) -> BrokerResult<()> {
    remove_range!(tx, MESSAGES, (s, t, 0, 0)..=(s, t, u32::MAX, u64::MAX));
    remove_range!(
        tx,
        OFFSETS,
        (Bound::Included((s, t, 0, "")), offsets_after_topic(s, t))
    );
    Ok(())
}

fn remove_partition_data(tx: &WriteTransaction, s: u32, t: u32, p: u32) -> BrokerResult<()> {
    remove_range!(tx, MESSAGES, (s, t, p, 0)..=(s, t, p, u64::MAX));
    // p < MAX_PARTITIONS, so p + 1 cannot overflow.
    remove_range!(tx, OFFSETS, (s, t, p, "")..(s, t, p + 1, ""));
    Ok(())
}

fn purge_topic_data(
    tx: &WriteTransaction,
    s: u32,
    t: u32,
    topic: &mut TopicState,
) -> BrokerResult<()> {
    remove_topic_data(tx, s, t)?;
    let mut partitions = tx.open_table(PARTITIONS).map_err(storage)?;
    for (index, partition) in topic.partitions.iter_mut().enumerate() {
        *partition = PartitionRecord {
            created_at: partition.created_at,
            ..PartitionRecord::default()
        };
        let p = u32::try_from(index).unwrap_or(u32::MAX);
        partitions
            .insert((s, t, p), encode(partition)?.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

fn write_stream(tx: &WriteTransaction, id: u32, record: &StreamRecord) -> BrokerResult<()> {
    tx.open_table(STREAMS)
        .map_err(storage)?
        .insert(id, encode(record)?.as_slice())
        .map_err(storage)?;
    Ok(())
}

fn write_topic(tx: &WriteTransaction, s: u32, t: u32, record: &TopicRecord) -> BrokerResult<()> {
    tx.open_table(TOPICS)
        .map_err(storage)?
        .insert((s, t), encode(record)?.as_slice())
        .map_err(storage)?;
    Ok(())
}

fn add_partitions(
    tx: &WriteTransaction,
    s: u32,
    t: u32,
    topic: &mut TopicState,
    count: u32,
) -> BrokerResult<()> {
    let existing = partitions_count(topic);
    if count == 0 || existing.saturating_add(count) > MAX_PARTITIONS {
        return Err(BrokerError::InvalidArgument {
            field: "partitions_count",
            reason: format!(
                "must be between 1 and {} (the topic has {existing} of at most {MAX_PARTITIONS})",
                MAX_PARTITIONS.saturating_sub(existing)
            ),
        });
    }
    let now = now_micros();
    let mut table = tx.open_table(PARTITIONS).map_err(storage)?;
    for p in existing..existing + count {
        let record = PartitionRecord {
            created_at: now,
            ..PartitionRecord::default()
        };
        table
            .insert((s, t, p), encode(&record)?.as_slice())
            .map_err(storage)?;
        topic.partitions.push(record);
    }
    Ok(())
}

fn ensure_unique_stream(catalog: &Catalog, name: &Name, except: Option<u32>) -> BrokerResult<()> {
    let taken = catalog
        .streams
        .iter()
        .any(|(id, s)| Some(*id) != except && s.record.name == name.as_str());
    if taken {
        return Err(BrokerError::StreamAlreadyExists(name.to_string()));
    }
    Ok(())
}

fn ensure_unique_topic(
    stream: &StreamState,
    at: &Identifier,
    name: &Name,
    except: Option<u32>,
) -> BrokerResult<()> {
    let taken = stream
        .topics
        .iter()
        .any(|(id, t)| Some(*id) != except && t.record.name == name.as_str());
    if taken {
        return Err(BrokerError::TopicAlreadyExists {
            stream: at.clone(),
            topic: name.to_string(),
        });
    }
    Ok(())
}

fn stream_mut(catalog: &mut Catalog, id: u32) -> BrokerResult<&mut StreamState> {
    catalog
        .streams
        .get_mut(&id)
        .ok_or_else(|| BrokerError::Storage(format!("catalog lost stream {id}")))
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn availability(&self) -> watch::Receiver<bool> {
        self.available.subscribe()
    }

    fn partition_appends(
        &self,
        topic: &TopicRef,
        partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        let (s, t, _) = self
            .inner
            .read_catalog()
            .ok()?
            .partition(topic, partition_id)
            .ok()?;
        let mut watched = self.inner.heads.lock().ok()?;
        // Partitions nobody follows any more are forgotten here, so the map stays as small as
        // the set of followed partitions.
        watched.retain(|_, appends| appends.receiver_count() > 0);
        Some(
            watched
                .entry((s, t, partition_id))
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        )
    }

    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                ensure_unique_stream(catalog, &name, None)?;
                let id = catalog.next_stream_id;
                let record = StreamRecord {
                    name: name.to_string(),
                    created_at: now_micros(),
                    next_topic_id: 0,
                };
                write_stream(tx, id, &record)?;
                catalog.next_stream_id = id
                    .checked_add(1)
                    .ok_or_else(|| BrokerError::Storage("stream ids exhausted".into()))?;
                tx.open_table(META)
                    .map_err(storage)?
                    .insert("next_stream_id", u64::from(catalog.next_stream_id))
                    .map_err(storage)?;
                let state = StreamState {
                    record,
                    topics: BTreeMap::new(),
                };
                let info = catalog.stream_info(id, &state, true);
                catalog.streams.insert(id, state);
                Ok(info)
            })
        })
        .await
    }

    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo> {
        let catalog = self.inner.read_catalog()?;
        let (id, state) = catalog.stream(&stream)?;
        Ok(catalog.stream_info(id, state, true))
    }

    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>> {
        let catalog = self.inner.read_catalog()?;
        Ok(catalog
            .streams
            .iter()
            .map(|(id, state)| catalog.stream_info(*id, state, false))
            .collect())
    }

    async fn update_stream(&self, stream: Identifier, name: Name) -> BrokerResult<StreamInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let id = catalog.stream_id(&stream)?;
                ensure_unique_stream(catalog, &name, Some(id))?;
                let state = stream_mut(catalog, id)?;
                state.record.name = name.to_string();
                write_stream(tx, id, &state.record)?;
                let state = state.clone();
                Ok(catalog.stream_info(id, &state, true))
            })
        })
        .await
    }

    async fn delete_stream(&self, stream: Identifier) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let id = catalog.stream_id(&stream)?;
                tx.open_table(STREAMS)
                    .map_err(storage)?
                    .remove(id)
                    .map_err(storage)?;
                remove_range!(tx, TOPICS, (id, 0)..=(id, u32::MAX));
                remove_range!(tx, PARTITIONS, (id, 0, 0)..=(id, u32::MAX, u32::MAX));
                let topic_ids: Vec<u32> = catalog
                    .streams
                    .get(&id)
                    .map(|s| s.topics.keys().copied().collect())
                    .unwrap_or_default();
                for t in topic_ids {
                    remove_topic_data(tx, id, t)?;
                }
                catalog.streams.remove(&id);
                Ok(())
            })
        })
        .await
    }

    async fn purge_stream(&self, stream: Identifier) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let id = catalog.stream_id(&stream)?;
                for (t, topic) in stream_mut(catalog, id)?.topics.iter_mut() {
                    purge_topic_data(tx, id, *t, topic)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let s = catalog.stream_id(&request.stream)?;
                let stream = stream_mut(catalog, s)?;
                ensure_unique_topic(stream, &request.stream, &request.name, None)?;
                let t = stream.record.next_topic_id;
                stream.record.next_topic_id = t
                    .checked_add(1)
                    .ok_or_else(|| BrokerError::Storage("topic ids exhausted".into()))?;
                write_stream(tx, s, &stream.record)?;
                let mut topic = TopicState {
                    record: TopicRecord {
                        name: request.name.to_string(),
                        created_at: now_micros(),
                        message_expiry_micros: request.message_expiry_micros,
                        max_topic_size_bytes: request.max_topic_size_bytes,
                        compression: request.compression,
                        replication_factor: request.replication_factor,
                    },
                    partitions: Vec::new(),
                    next_balanced: 0,
                };
                write_topic(tx, s, t, &topic.record)?;
                add_partitions(tx, s, t, &mut topic, request.partitions_count)?;
                let info = topic_info(t, &topic, true);
                stream.topics.insert(t, topic);
                Ok(info)
            })
        })
        .await
    }

    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo> {
        let catalog = self.inner.read_catalog()?;
        let (_, t, state) = catalog.topic(&topic)?;
        Ok(topic_info(t, state, true))
    }

    async fn list_topics(&self, stream: Identifier) -> BrokerResult<Vec<TopicInfo>> {
        let catalog = self.inner.read_catalog()?;
        let (_, state) = catalog.stream(&stream)?;
        Ok(state
            .topics
            .iter()
            .map(|(id, topic)| topic_info(*id, topic, false))
            .collect())
    }

    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&request.topic)?;
                if let Some(name) = &request.name {
                    let stream = stream_mut(catalog, s)?;
                    ensure_unique_topic(stream, &request.topic.stream, name, Some(t))?;
                }
                let topic = catalog.topic_mut(s, t)?;
                let record = &mut topic.record;
                if let Some(name) = request.name {
                    record.name = name.to_string();
                }
                if let Some(expiry) = request.message_expiry_micros {
                    record.message_expiry_micros = expiry;
                }
                if let Some(max) = request.max_topic_size_bytes {
                    record.max_topic_size_bytes = max;
                }
                if let Some(compression) = request.compression {
                    record.compression = compression;
                }
                if let Some(factor) = request.replication_factor {
                    record.replication_factor = factor;
                }
                write_topic(tx, s, t, &topic.record)?;
                Ok(topic_info(t, topic, true))
            })
        })
        .await
    }

    async fn delete_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                tx.open_table(TOPICS)
                    .map_err(storage)?
                    .remove((s, t))
                    .map_err(storage)?;
                remove_range!(tx, PARTITIONS, (s, t, 0)..=(s, t, u32::MAX));
                remove_topic_data(tx, s, t)?;
                stream_mut(catalog, s)?.topics.remove(&t);
                Ok(())
            })
        })
        .await
    }

    async fn purge_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                purge_topic_data(tx, s, t, catalog.topic_mut(s, t)?)
            })
        })
        .await
    }

    async fn create_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                let state = catalog.topic_mut(s, t)?;
                add_partitions(tx, s, t, state, count)?;
                Ok(topic_info(t, state, true))
            })
        })
        .await
    }

    async fn delete_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                let state = catalog.topic_mut(s, t)?;
                let existing = partitions_count(state);
                if count == 0 || count >= existing {
                    return Err(BrokerError::InvalidArgument {
                        field: "partitions_count",
                        reason: format!(
                            "must be between 1 and {} (the topic has {existing} and keeps at least one)",
                            existing.saturating_sub(1)
                        ),
                    });
                }
                let mut table = tx.open_table(PARTITIONS).map_err(storage)?;
                for p in existing - count..existing {
                    table.remove((s, t, p)).map_err(storage)?;
                    remove_partition_data(tx, s, t, p)?;
                }
                drop(table);
                state.partitions.truncate((existing - count) as usize);
                state.next_balanced %= partitions_count(state).max(1);
                Ok(topic_info(t, state, true))
            })
        })
        .await
    }

    async fn send_messages(&self, request: SendMessages) -> BrokerResult<()> {
        let stopped = || BrokerError::Storage("the store's writer has stopped".into());
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        let (done, reply) = oneshot::channel();
        queue
            .send(PendingSend { request, done })
            .await
            .map_err(|_| stopped())?;
        reply.await.map_err(|_| stopped())?
    }

    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        self.blocking(move |store| store.poll(request)).await
    }

    async fn store_consumer_offset(&self, at: ConsumerOffsetRef, offset: u64) -> BrokerResult<()> {
        self.blocking(move |store| {
            let (s, t, partition) = store
                .read_catalog()?
                .partition(&at.topic, at.partition_id)?;
            if partition.messages_count == 0 || offset > current_offset(&partition) {
                return Err(BrokerError::InvalidArgument {
                    field: "offset",
                    reason: format!(
                        "{offset} is beyond the newest message of partition {} ({})",
                        at.partition_id,
                        if partition.messages_count == 0 {
                            "it is empty".to_owned()
                        } else {
                            format!("offset {}", current_offset(&partition))
                        }
                    ),
                });
            }
            store.store_offset(s, t, at.partition_id, &at.consumer.to_string(), offset)
        })
        .await
    }

    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo> {
        self.blocking(move |store| {
            let (s, t, partition) = store
                .read_catalog()?
                .partition(&at.topic, at.partition_id)?;
            let tx = store.db.begin_read().map_err(storage)?;
            let stored = tx
                .open_table(OFFSETS)
                .map_err(storage)?
                .get((s, t, at.partition_id, at.consumer.to_string().as_str()))
                .map_err(storage)?
                .map(|v| v.value());
            Ok(ConsumerOffsetInfo {
                partition_id: at.partition_id,
                current_offset: current_offset(&partition),
                stored_offset: stored,
            })
        })
        .await
    }

    async fn delete_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t, _) = catalog.partition(&at.topic, at.partition_id)?;
                let consumer = at.consumer.to_string();
                let removed = tx
                    .open_table(OFFSETS)
                    .map_err(storage)?
                    .remove((s, t, at.partition_id, consumer.as_str()))
                    .map_err(storage)?
                    .is_some();
                if removed {
                    Ok(())
                } else {
                    Err(BrokerError::ConsumerOffsetNotFound {
                        consumer: at.consumer.clone(),
                        partition_id: at.partition_id,
                    })
                }
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
